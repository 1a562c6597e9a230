"""The contract shared by training and serving: network, preprocessing, artifact."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from contract import artifact
from contract.model import BACKBONES, Architecture, build_classifier
from contract.preprocess import ImageDecodeError, ImageTooLarge, Preprocessing, decode_image, eval_transform
from helpers.serving import palette_png_with_overlong_transparency


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_backbone_is_torchvisions_network(name):
    ours = build_classifier(Architecture(name, num_classes=1000))
    ours.fc = torch.nn.Linear(ours.num_features, 1000)
    theirs = getattr(torchvision.models, name)()
    theirs_state = theirs.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs_state.items()}
    ours.load_state_dict(theirs_state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), theirs.eval()(x), atol=1e-5)


def test_every_backbone_builds_with_a_head():
    for name in BACKBONES:
        model = build_classifier(Architecture(name, num_classes=7, head=[32], dropout=0.1))
        assert isinstance(model.fc[0], torch.nn.Linear) and model.fc[-1].out_features == 7


def test_eval_transform_matches_torchvisions_eval_transform():
    """Our PIL+numpy transform is torchvision's Resize/CenterCrop/Normalize, up to
    rounding: it resizes only the box the crop keeps, so a pixel may differ by
    one 8-bit level (of 255), and on average by far less."""
    from torchvision import transforms

    prep = Preprocessing()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8))
    reference = transforms.Compose(
        [
            transforms.Resize(prep.resize_size),
            transforms.CenterCrop(prep.image_size),
            transforms.ToTensor(),
            transforms.Normalize(prep.mean, prep.std),
        ]
    )(img)
    levels = np.abs(eval_transform(img, prep) - reference.numpy()) * np.asarray(prep.std).reshape(3, 1, 1) * 255
    assert levels.max() < 1.0 + 1e-3
    assert levels.mean() < 0.01


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16"])
def test_any_mode_decodes_to_rgb(mode):
    img = (
        Image.new("RGB", (40, 30), (200, 30, 30)).convert(mode) if mode != "I;16" else Image.new("I;16", (40, 30), 900)
    )
    buf = io.BytesIO()
    img.save(buf, "TIFF" if mode in ("CMYK", "I;16") else "PNG")
    decoded = decode_image(buf.getvalue())
    assert decoded.mode == "RGB" and decoded.size == (40, 30)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to view
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue()).size == (20, 60)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty"),
        (b"definitely not an image", "not a readable image"),
    ],
)
def test_bad_bytes_are_refused_with_a_reason(payload, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(payload)


def test_decompression_bomb_is_refused():
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 200_000
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(buf.getvalue())


def test_a_conversion_that_fails_is_an_image_decode_error():
    with pytest.raises(ImageDecodeError, match="palette index out of range"):
        decode_image(palette_png_with_overlong_transparency())


def test_a_strip_the_resize_would_blow_up_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (1, 300_000)).save(buf, "PNG")  # resized for 224 px: 256 x 76,800,000
    decode_image(buf.getvalue())  # without preprocessing it is a small image
    with pytest.raises(ImageTooLarge, match="resized"):
        decode_image(buf.getvalue(), Preprocessing.for_image_size(224))


def test_training_skips_and_counts_a_file_whose_conversion_fails(tmp_path):
    from trainer.data import ImageDataset, SkipTracker, collate

    (tmp_path / "bad.png").write_bytes(palette_png_with_overlong_transparency())
    Image.new("RGB", (40, 30), "red").save(tmp_path / "good.png")
    dataset = ImageDataset(
        [(tmp_path / "bad.png", 0), (tmp_path / "good.png", 1)], Preprocessing.for_image_size(32), train=False
    )
    images, labels, unreadable = collate([dataset[0], dataset[1]])
    assert images.shape == (1, 3, 32, 32) and labels.tolist() == [1] and unreadable == [0]
    skipped = SkipTracker()
    skipped.add("train", dataset, unreadable)
    assert skipped.total == 1 and skipped.paths["train"] == {str(tmp_path / "bad.png")}


def test_artifact_round_trip_and_mismatch(tmp_path):
    arch = Architecture("resnet18", num_classes=3, head=[16])
    model = build_classifier(arch)
    artifact.save(tmp_path, model.state_dict(), arch, Preprocessing.for_image_size(96), ["a", "b", "c"])
    loaded, config = artifact.load(tmp_path)
    assert config["preprocessing"]["resize_size"] == 110
    assert torch.equal(loaded.state_dict()["fc.0.weight"], model.state_dict()["fc.0.weight"])
    with pytest.raises(artifact.ArtifactError, match="class names"):
        artifact.save(tmp_path, model.state_dict(), arch, Preprocessing(), ["a", "b"])
    config["architecture"]["head"] = [32]
    (tmp_path / artifact.CONFIG_FILE).write_text(__import__("json").dumps(config))
    with pytest.raises(artifact.ArtifactError, match="does not match"):
        artifact.load(tmp_path)


def test_artifact_refuses_pickled_code(tmp_path):
    """weights_only=True: a model.pt that would run code on load is refused."""
    arch = Architecture("resnet18", num_classes=2)
    artifact.save(tmp_path, build_classifier(arch).state_dict(), arch, Preprocessing(), ["a", "b"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / artifact.WEIGHTS_FILE)
    with pytest.raises(artifact.ArtifactError, match="cannot be loaded safely"):
        artifact.load(tmp_path)


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    """A save that fails half-way (here: an object that refuses to be pickled) keeps what was there and
    leaves no `.name.*` temporary beside it; one that succeeds replaces it whole."""

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot be saved")

    weights = tmp_path / "model" / "weights.pt"
    artifact.atomic_torch_save({"w": torch.ones(2)}, weights)
    with pytest.raises(RuntimeError, match="cannot be saved"):
        artifact.atomic_torch_save({"w": torch.zeros(2), "f": Unpicklable()}, weights)
    assert torch.equal(torch.load(weights, weights_only=True)["w"], torch.ones(2))
    artifact.atomic_write_bytes(tmp_path / "model" / "config.json", b"{}")
    assert sorted(p.name for p in weights.parent.iterdir()) == ["config.json", "weights.pt"]
    assert (tmp_path / "model" / "config.json").read_bytes() == b"{}"
