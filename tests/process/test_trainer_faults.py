"""Platform faults on the real trainer process: SIGKILL mid-artifact, SIGTERM in validation or at the end,
SIGINT, a failure on a DDP rank other than 0. Each leaves a consistent state and a one-line reason."""

from __future__ import annotations

from pathlib import Path

import pytest

import make_sample_data  # noqa: E402  (scripts/, on the path through conftest)
from contract import artifact
from helpers.training import FAST_HPS, run_trainer

ONE_STEP = dict(FAST_HPS, epochs=1, **{"max-steps-per-epoch": 1, "num-workers": 0})
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory) -> Path:
    """The sample data with one class fewer: an artifact of other shape than the sample data's."""
    return make_sample_data.make(tmp_path_factory.mktemp("three") / "dogImages", classes=3, per_class=8)


def consistent_artifact(model_dir: Path) -> list | None:
    """The class names of the artifact in `model_dir`, None if it holds none; fails on a mix."""
    try:
        model, config = artifact.load(model_dir)
    except artifact.ArtifactError as exc:
        assert f"{artifact.CONFIG_FILE} not found" in str(exc), str(exc)  # none, not a broken one
        return None
    head_bias = [v for k, v in model.state_dict().items() if k.startswith("fc.") and k.endswith("bias")][-1]
    assert len(head_bias) == len(config["class_names"])  # load() checked the weights against the config
    return config["class_names"]


def test_sigkill_between_weights_and_config_leaves_no_mix(sample_data, three_classes, tmp_path):
    """A first job writes a 4-class artifact; a second, of 3 classes, is SIGKILLed right after its weights
    are in place (the test hook). Then the folder holds the old artifact or none; a rerun writes the new."""
    first = run_trainer(tmp_path, {"training": sample_data}, ONE_STEP, ENV)
    assert first.returncode == 0, first.stderr[-3000:]
    old_classes = consistent_artifact(tmp_path / "model")
    assert old_classes is not None and len(old_classes) == 4

    killed = run_trainer(
        tmp_path, {"training": three_classes}, ONE_STEP, dict(ENV, **{artifact.SIGKILL_AFTER_WEIGHTS_ENV: "1"})
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert consistent_artifact(tmp_path / "model") in (old_classes, None)

    rerun = run_trainer(tmp_path, {"training": three_classes}, ONE_STEP, ENV)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    new_classes = consistent_artifact(tmp_path / "model")
    assert new_classes is not None and len(new_classes) == 3
    assert len(artifact.calibration_files(tmp_path / "model")) == artifact.CALIBRATION_IMAGES
    assert not list(tmp_path.glob(f"{artifact.STAGING_PREFIX}*"))  # the killed job's staging is gone too
