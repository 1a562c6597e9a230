"""The manual's reference tables (docs/*.md), generated from the code that defines what they list.

tables.py renders each table from its source, pages.py finds the marked places in the pages and
checks or rewrites them; scripts/docs_tables.py is the command, tests/unit/test_reference_tables.py
the check.
"""
