"""The feature cache: same head as without it, rebuilt when inputs change, corrupt files refused."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision

from contract import artifact
from helpers.training import FAST_HPS, run_trainer

# Frozen backbone, deterministic preprocessing, fp32 and no loader workers, so
# the run with the cache and the one without see the very same features.
FROZEN = dict(
    FAST_HPS,
    epochs=3,
    pretrained="imagenet",
    augment="false",
    amp="false",
    **{"trainable-layers": 0, "num-workers": 0, "head": "32"},
)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), folder / "resnet18.pth")
    return folder


def train(tmp_path, name, sample_data, weights_dir, **hps):
    opt_ml = tmp_path / name
    result = run_trainer(opt_ml, {"training": sample_data, "pretrained": weights_dir}, dict(FROZEN, **hps))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    model, _ = artifact.load(opt_ml / "model")
    return model.fc.state_dict(), result.stdout


def computed(log: str) -> int:
    return int(re.search(r"feature cache \S+: (\d+) images computed", log).group(1))


def test_cache_gives_the_uncached_head_and_is_reused(sample_data, weights_dir, tmp_path):
    cache = tmp_path / "cache"
    plain, _ = train(tmp_path, "plain", sample_data, weights_dir)
    first, log1 = train(tmp_path, "first", sample_data, weights_dir, **{"feature-cache": str(cache)})
    second, log2 = train(tmp_path, "second", sample_data, weights_dir, **{"feature-cache": str(cache)})
    for name, tensor in plain.items():
        assert torch.allclose(first[name], tensor, atol=1e-4), name
        assert torch.equal(first[name], second[name]), name
    assert computed(log1) == 144  # every readable image of train/valid/test, once
    assert computed(log2) == 0
    assert len(list(cache.glob("features-*.pt"))) == 1


def test_rebuilt_when_image_size_or_weights_change(sample_data, weights_dir, tmp_path):
    cache = tmp_path / "cache"
    train(tmp_path, "a", sample_data, weights_dir, **{"feature-cache": str(cache)})
    _, resized = train(tmp_path, "b", sample_data, weights_dir, **{"feature-cache": str(cache), "image-size": "72"})
    assert computed(resized) == 144
    other = tmp_path / "other-weights"
    other.mkdir()
    torch.manual_seed(2)
    torch.save(torchvision.models.resnet18().state_dict(), other / "resnet18.pth")
    opt_ml = tmp_path / "c"
    result = run_trainer(
        opt_ml, {"training": sample_data, "pretrained": other}, dict(FROZEN, **{"feature-cache": str(cache)})
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert computed(result.stdout) == 144
    assert len(list(cache.glob("features-*.pt"))) == 3


def test_corrupt_cache_file_is_refused(sample_data, weights_dir, tmp_path):
    cache = tmp_path / "cache"
    good, _ = train(tmp_path, "a", sample_data, weights_dir, **{"feature-cache": str(cache)})
    (path,) = cache.glob("features-*.pt")
    saved = torch.load(path, weights_only=True)
    saved["features"][3, 7] += 1.0  # a flipped value: the checksum no longer matches
    torch.save(saved, path)
    again, log = train(tmp_path, "b", sample_data, weights_dir, **{"feature-cache": str(cache)})
    assert "refusing feature cache" in log and "checksum" in log
    assert computed(log) == 144
    for name in good:
        assert torch.equal(good[name], again[name])
    path.write_bytes(b"garbage")
    _, log = train(tmp_path, "c", sample_data, weights_dir, **{"feature-cache": str(cache)})
    assert "refusing feature cache" in log and computed(log) == 144


def test_cache_needs_a_frozen_backbone(sample_data, weights_dir, tmp_path):
    opt_ml = tmp_path / "opt_ml"
    result = run_trainer(
        opt_ml,
        {"training": sample_data, "pretrained": weights_dir},
        dict(FROZEN, **{"feature-cache": str(tmp_path / "c"), "trainable-layers": 1}),
    )
    assert result.returncode != 0
    assert "feature-cache needs trainable-layers 0" in (opt_ml / "output" / "failure").read_text()


def test_checkpoint_keeps_only_what_trains_and_is_tied_to_the_frozen_weights(sample_data, weights_dir, tmp_path):
    opt_ml = tmp_path / "job"
    channels = {"training": sample_data, "pretrained": weights_dir}
    first = run_trainer(opt_ml, channels, dict(FROZEN, epochs=2))
    assert first.returncode == 0, first.stderr[-3000:]
    saved = torch.load(opt_ml / "checkpoints" / "checkpoint.pt", weights_only=True)
    # the head only: the frozen backbone is rebuilt from the pretrained weights on a restart
    assert saved["model"] and all(name.startswith("fc.") for name in saved["model"]), sorted(saved["model"])
    assert set(saved["best_state"]) == set(saved["model"])
    assert (opt_ml / "checkpoints" / "checkpoint.pt").stat().st_size < 1_000_000  # resnet18 whole: ~45 MB

    longer = run_trainer(opt_ml, channels, dict(FROZEN, epochs=3))
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "resuming from checkpoint after epoch 2" in longer.stdout
    assert "#metric epoch=3 split=train" in longer.stdout and "#metric epoch=2 split=train" not in longer.stdout
    model, _ = artifact.load(opt_ml / "model")  # the whole model, frozen stages included
    reference = torch.load(weights_dir / "resnet18.pth", weights_only=True)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], reference["layer1.0.conv1.weight"])

    other = tmp_path / "other-weights"
    other.mkdir()
    torch.manual_seed(3)
    torch.save(torchvision.models.resnet18().state_dict(), other / "resnet18.pth")
    moved = run_trainer(opt_ml, {"training": sample_data, "pretrained": other}, dict(FROZEN, epochs=4))
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert "not resuming from checkpoint" in moved.stdout and "resuming from checkpoint after" not in moved.stdout
    assert "#metric epoch=1 split=train" in moved.stdout
