"""The script the sagemaker-training toolkit runs (SAGEMAKER_PROGRAM=toolkit_entry_point.py), as
`python toolkit_entry_point.py --name value ...` with the job's hyperparameters; run it the same way
outside a container on a local /opt/ml tree (SAGEMAKER_BASE_DIR). The job itself is trainer/job.py."""

# Python puts this file's folder on the path (/opt/program, or container/ of a checkout), and the
# image's PYTHONPATH names /opt/program for the copy in /opt/ml/code: `trainer` imports from either.
from trainer.job import run_and_exit

if __name__ == "__main__":
    run_and_exit()
