"""Entry point the sagemaker-training toolkit runs (SAGEMAKER_PROGRAM=train.py)."""

# Python puts this file's folder on the path (/opt/program, or container/ of a checkout), and the
# image's PYTHONPATH names /opt/program for the copy in /opt/ml/code: `trainer` imports from either.
from trainer.train import run_and_exit

if __name__ == "__main__":
    run_and_exit()
