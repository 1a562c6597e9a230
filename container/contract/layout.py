"""The model directory's file names: what training writes, what serving reads.

Stdlib only, so the server's settings (read before any torch import) and host
tools can name the files without loading torch; contract/artifact.py reads and
writes them.
"""

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "model_config.json"
CODE_DIR = "code"
