"""The /opt/ml tree SageMaker gives a training container, and the files it writes into input/config.

    /opt/ml/input/config/hyperparameters.json   {"name": "value", ...}: every value a string
    /opt/ml/input/config/inputdataconfig.json   {"training": {"TrainingInputMode": "File", ...}, ...}
    /opt/ml/input/config/resourceconfig.json    {"current_host": "algo-1", "hosts": [...], ...}
    /opt/ml/input/data/<channel>/               each channel's files
    /opt/ml/model/                              what training leaves for serving (contract/spec/artifact.py)
    /opt/ml/output/failure                      the one-line reason of a failed job
    /opt/ml/output/data/                        other outputs (evaluation report)
    /opt/ml/checkpoints/                        checkpoints SageMaker syncs to S3

Outside a container the root is another folder: SAGEMAKER_BASE_DIR, the
variable the sagemaker-training toolkit itself reads, so the toolkit, the
image's entry point and the trainer agree on one tree.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"
DEFAULT_BASE_DIR = Path("/opt/ml")
CONFIG_DIR = Path("input") / "config"
CHANNELS_DIR = Path("input") / "data"
HYPERPARAMETERS_FILE = "hyperparameters.json"
INPUT_DATA_CONFIG_FILE = "inputdataconfig.json"
RESOURCE_CONFIG_FILE = "resourceconfig.json"
MODEL_DIR = "model"
OUTPUT_DIR = "output"
FAILURE_FILE = Path(OUTPUT_DIR) / "failure"
OUTPUT_DATA_DIR = Path(OUTPUT_DIR) / "data"
CHECKPOINTS_DIR = "checkpoints"
CODE_DIR = "code"
# The script the sagemaker-training toolkit runs (SAGEMAKER_PROGRAM): in the image /opt/program/ and
# /opt/ml/code/ hold it, in a checkout container/; torchrun starts it again for each process of a job.
TOOLKIT_ENTRY_POINT = "toolkit_entry_point.py"
TRAINING_CHANNEL = "training"
LOCAL_HOST = "algo-1"  # SageMaker's name for the first host of a job


def base_dir(environ=os.environ) -> Path:
    """The /opt/ml root: SAGEMAKER_BASE_DIR where set (a local tree), else /opt/ml. Read when called:
    a pre-started trial process gets its environment late."""
    return Path(environ.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR)


def channel(name: str, root: Path = DEFAULT_BASE_DIR) -> Path:
    return Path(root) / CHANNELS_DIR / name


def write_input_config(
    root: Path, hyperparameters: dict[str, str], channels=(TRAINING_CHANNEL,), host: str = LOCAL_HOST
) -> Path:
    """The files SageMaker writes into <root>/input/config before `train`, for a one-host File-mode job;
    the channels' folders are made too (an archive is mounted into one). `hyperparameters` are the
    strings SageMaker passes (contract.spec.hyperparameters.as_strings). Returns the config folder."""
    config = Path(root) / CONFIG_DIR
    config.mkdir(parents=True, exist_ok=True)
    for name in channels:
        channel(name, root).mkdir(parents=True, exist_ok=True)
    (config / HYPERPARAMETERS_FILE).write_text(json.dumps(dict(hyperparameters)))
    (config / INPUT_DATA_CONFIG_FILE).write_text(
        json.dumps(
            {
                name: {
                    "TrainingInputMode": "File",
                    "S3DistributionType": "FullyReplicated",
                    "RecordWrapperType": "None",
                }
                for name in channels
            }
        )
    )
    (config / RESOURCE_CONFIG_FILE).write_text(
        json.dumps({"current_host": host, "hosts": [host], "network_interface_name": "eth0"})
    )
    return config
