"""What the SDK v2 and v3 local-mode tests (tests/container/test_sagemaker_local*.py) check alike, once a
job has trained: the images they send, the endpoint's answers, and a batch transform over the same model."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from helpers.serving import labels_from_archive, transform_labels
from helpers.training import ROOT

# a small job that learns the sample data in a minute on two cores
HPS = {
    "backbone": "resnet18",
    "pretrained": "none",
    "image-size": "64",
    "epochs": "4",
    "batch-size": "16",
    "trainable-layers": "5",
    "amp": "false",
}
HP_FLAGS = [item for name, value in HPS.items() for item in ("--hp", f"{name}={value}")]

# `sm.py` with the given arguments, in local mode, for one SDK: its finished process
SmRun = Callable[..., object]


def sm_env(engine, workdir: Path) -> dict[str, str]:
    """The engine's environment without AWS credentials or settings of ours; HOME a fresh folder, so there
    is no ~/.aws to find credentials in."""
    env = {k: v for k, v in engine.env.items() if not k.startswith(("AWS_", "BYOC_", "SAGEMAKER_"))}
    env.update(HOME=str(workdir), PYTHONUNBUFFERED="1", SAGEMAKER_SUPPRESS_V2_WARNING="1")
    return env


def sm(engine, workdir: Path, *args: str, python: str = sys.executable, timeout: float = 900):
    """`scripts/sm.py ARGS --local` with `python` (the SDK v2 one adds `--sdk v2` to ARGS); it must succeed."""
    result = subprocess.run(
        [python, "scripts/sm.py", *args, "--local", "--workdir", str(workdir)],
        cwd=ROOT,
        env=sm_env(engine, workdir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@dataclass
class Probe:
    """A red disc and a blue square to invoke one by one, 8 test images for a batch, and the label the
    trained model gives each in-process: what every answer must be, however well the run learnt."""

    red: Path
    blue: Path
    batch: list[Path]
    expected: dict[str, str]


def probe(sample_data: Path, model_data: str, scratch: Path) -> Probe:
    red, blue = (
        sorted((sample_data / "test" / folder).glob("*.jpg"))[0] for folder in ("001.red_disc", "003.blue_square")
    )
    batch = sorted((sample_data / "test").rglob("*_000[01].*"))
    expected = labels_from_archive(Path(model_data.removeprefix("file://")), [red, blue, *batch], scratch)
    return Probe(red, blue, batch, expected)


def assert_invoked(deploy_stdout: str, probe: Probe) -> None:
    """`sm.py deploy --invoke RED BLUE` printed each file with the model's own label."""
    predictions = re.findall(r"^(\S+): (\S+) ([0-9.]+)", deploy_stdout, re.MULTILINE)
    assert [(path, label) for path, label, _ in predictions] == [
        (str(probe.red), probe.expected[probe.red.name]),
        (str(probe.blue), probe.expected[probe.blue.name]),
    ], deploy_stdout


def assert_transform(sm: SmRun, model_data: str, probe: Probe, workdir: Path) -> None:
    """A batch transform of the probe's 8 images answers each with the model's own label, and the job learnt
    (chance is 2 of 8; the trainer's own tests hold how well)."""
    folder = workdir / "batch"
    folder.mkdir()
    for path in probe.batch:
        shutil.copy(path, folder / path.name)
    sm("transform", "--model-data", model_data, "--input", str(folder), "--output", str(workdir / "predictions"))
    outputs = sorted((workdir / "predictions").glob("*.out"))
    assert len(outputs) == len(probe.batch) == 8
    answers = transform_labels(outputs)
    assert answers == {path.name: probe.expected[path.name] for path in probe.batch}
    assert sum(label.split(".")[1] in name for name, label in answers.items()) >= 4, answers


def assert_no_job_containers_left(containers: list[str]) -> None:
    """This project's containers only (they carry its label; another user's may be named alike), and only
    those this test made: another run's leftovers are not its failure. v2 names a job's containers
    <random>-algo-N-<random>, v3 <job>_algo-N_1."""
    leftovers = " ".join(containers)
    assert "algo-" not in leftovers, leftovers
