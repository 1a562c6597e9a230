"""What many tests share: the repository's paths, fast hyperparameters, a trainer run as SageMaker's
toolkit starts it, image builds, the files SageMaker writes before `train`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import container_engine
from contract.spec import hyperparameters, paths, presets

ROOT = Path(__file__).resolve().parents[2]
CONTAINER = ROOT / "container"
# what the toolkit runs: `python TRAINER_SCRIPT --name value ...`
TRAINER_SCRIPT = CONTAINER / paths.TOOLKIT_ENTRY_POINT
SDK_V2_PYTHON = ROOT / ".venv-sdk-v2" / "bin" / "python"  # scripts/test.sh's SageMaker SDK v2 environment

# Small and fast, yet learns the sample data to well above chance in seconds (as SageMaker passes them: strings).
FAST_HPS = hyperparameters.as_strings(presets.DEMO)
# Trained until it is sure of most images: 10 epochs of 3 steps from scratch, unaugmented, fp32 on every
# CPU (about 20 s; validation loss 0.03 to 0.13 over four seeds). For tests that judge rounding against
# a trained model's decision margins rather than a random-weight network's, which are close everywhere.
CONVERGED_HPS = dict(
    FAST_HPS,
    amp="false",
    epochs="10",
    lr="0.003",
    augment="false",
    **{"batch-size": "32", "max-steps-per-epoch": "3", "debugger": "false", "profiler": "false"},
)


def hp_args(hps: dict) -> list[str]:
    return hyperparameters.to_argv(hps)


def trainer_env(opt_ml: Path, channels: dict[str, Path], extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(
        {
            paths.BASE_DIR_ENV: str(opt_ml),
            "TRAINER_SCRATCH": str(opt_ml / "scratch"),
            "PYTHONUNBUFFERED": "1",
            "TORCH_HOME": str(opt_ml / "torch-home"),
            "MASTER_PORT": str(29500 + os.getpid() % 1000),
        }
    )
    env.update({f"SM_CHANNEL_{name.upper()}": str(path) for name, path in channels.items()})
    env.update(extra or {})
    return env


def run_trainer(
    opt_ml: Path, channels: dict[str, Path], hps: dict, extra_env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run container/toolkit_entry_point.py as SageMaker's toolkit would, on a local /opt/ml tree."""
    return subprocess.run(
        [sys.executable, str(TRAINER_SCRIPT), *hp_args(hps)],
        env=trainer_env(opt_ml, channels, extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_converged_model(opt_ml: Path, data: Path) -> Path:
    """The model directory of a CONVERGED_HPS run on `data`."""
    result = run_trainer(opt_ml, {"training": data}, CONVERGED_HPS)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return opt_ml / "model"


def failure_reason(opt_ml: Path) -> str:
    return (opt_ml / "output" / "failure").read_text()


def build_image(engine: container_engine.Engine, *args: str) -> None:
    out = subprocess.run(
        ["bash", "scripts/build_image.sh", *args],
        cwd=ROOT,
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def write_sagemaker_config(opt_ml: Path, hps: dict, channels: list[str]) -> None:
    """The files SageMaker writes into /opt/ml/input/config before `train`."""
    paths.write_input_config(opt_ml, hyperparameters.as_strings(hps), channels)
