"""Shared test fixtures: paths, sample data, a trainer runner, the container engine."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# as scripts/test.sh and the training image set them: smdebug's protobuf code
# needs the pure-Python protobuf
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

ROOT = Path(__file__).resolve().parent.parent
SDK_V2_PYTHON = ROOT / ".venv-sdk-v2" / "bin" / "python"  # scripts/test.sh's SageMaker SDK v2 environment
CONTAINER = ROOT / "container"
sys.path.insert(0, str(CONTAINER))
sys.path.insert(0, str(ROOT / "scripts"))

import container_engine  # noqa: E402


def pytest_configure(config):
    # scripts/test.sh runs these in .venv-sdk-v2 (sagemaker 2.x) and the rest in .venv (SDK v3)
    config.addinivalue_line("markers", "sdk_v2: needs SageMaker SDK v2 (the .venv-sdk-v2 environment)")

# Small and fast, yet learns the sample data to well above chance in seconds.
FAST_HPS = {"backbone": "resnet18", "pretrained": "none", "image-size": "64", "epochs": "5",
            "batch-size": "16", "trainable-layers": "5", "lr": "0.001"}


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    import make_sample_data

    return make_sample_data.make(tmp_path_factory.mktemp("sample") / "dogImages")


def hp_args(hps: dict) -> list[str]:
    return [item for name, value in hps.items() for item in (f"--{name}", str(value))]


def trainer_env(opt_ml: Path, channels: dict[str, Path], extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update({"OPT_ML": str(opt_ml), "TRAINER_SCRATCH": str(opt_ml / "scratch"),
                "TRAINER_REASON_FILE": str(opt_ml / "reason"), "PYTHONUNBUFFERED": "1",
                "TORCH_HOME": str(opt_ml / "torch-home"), "MASTER_PORT": str(29500 + os.getpid() % 1000)})
    env.update({f"SM_CHANNEL_{name.upper()}": str(path) for name, path in channels.items()})
    env.update(extra or {})
    return env


def run_trainer(opt_ml: Path, channels: dict[str, Path], hps: dict, extra_env: dict | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run container/train.py as SageMaker's toolkit would, on a local /opt/ml tree."""
    return subprocess.run([sys.executable, str(CONTAINER / "train.py"), *hp_args(hps)],
                          env=trainer_env(opt_ml, channels, extra_env), capture_output=True, text=True,
                          timeout=timeout)


def failure_reason(opt_ml: Path) -> str:
    return (opt_ml / "output" / "failure").read_text()


@pytest.fixture(scope="session")
def engine() -> container_engine.Engine:
    """The container engine as scripts/engine.sh sets it up; BASE_IMAGE in its env for build_image.sh."""
    found = container_engine.setup()
    return dataclasses.replace(found, env=dict(found.env, BASE_IMAGE=found.base_image))


def build_image(engine: container_engine.Engine, *args: str) -> None:
    out = subprocess.run(["bash", "scripts/build_image.sh", *args], cwd=ROOT, env=engine.env,
                         capture_output=True, text=True, timeout=3000)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def write_sagemaker_config(opt_ml: Path, hps: dict, channels: list[str]) -> None:
    """The files SageMaker writes into /opt/ml/input/config before `train`."""
    config = opt_ml / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hps.items()}))
    (config / "inputdataconfig.json").write_text(json.dumps(
        {c: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
         for c in channels}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
