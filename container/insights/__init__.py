"""What training saved, read back: the Debugger rules, the profiler report, the loss plot, the evaluation report.

Runs after (or beside) a training job, in the training image or on the host. The training loop
never imports it; the trainer's last step hands the evaluation report (report.py) plain numbers.
"""

import os
import sys

# smdebug's generated protobuf code needs the pure-Python implementation, chosen when protobuf is first
# imported: set here, before any module of the package imports smdebug
if "google.protobuf" not in sys.modules:
    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
os.environ.setdefault("SMDEBUG_LOG_LEVEL", "warning")  # it logs every parameter at INFO
