"""Makes container/'s packages (contract, trainer, insights) importable by the host scripts: import it first.

The one place that edits sys.path. Why here and not an install: a newcomer runs
`python3 scripts/run_local.py` with the system python and no install step, and the
shared test environment must not point at one checkout (`pip install -e .` into it
would). Python already puts scripts/ on the path for a script run from it, which is
how scripts/' own packages (launch, workflow, ...) import; container/ is the only
other root. Tests get both from pyproject.toml's pytest `pythonpath`; the images
have them in /opt/program; after `pip install -e .` this changes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONTAINER = Path(__file__).resolve().parent.parent / "container"

if str(CONTAINER) not in sys.path:
    sys.path.insert(1, str(CONTAINER))  # after the script's own folder, before site-packages
