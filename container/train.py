"""Entry point the sagemaker-training toolkit runs (SAGEMAKER_PROGRAM=train.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from trainer.train import run_and_exit  # noqa: E402

if __name__ == "__main__":
    run_and_exit()
