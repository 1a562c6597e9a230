"""The feature cache: computed once per image, reused, and refused when it is not this backbone's."""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from contract.preprocess import Preprocessing
from trainer import feature_cache as fc


class Backbone(nn.Module):
    """Counts the images it sees; features are the channel means."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def features(self, images):
        self.seen += len(images)
        return images.mean(dim=(2, 3))


def images(folder, count, corrupt=()):
    folder.mkdir(exist_ok=True)
    samples = []
    for i in range(count):
        path = folder / f"{i}.png"
        if i in corrupt:
            path.write_bytes(b"not a png")
        else:
            Image.new("RGB", (40, 40), (10 * i, 100, 200 - 10 * i)).save(path)
        samples.append((path, i % 2))
    return samples


def build(samples, cache, model):
    return fc.build(
        samples,
        model,
        Preprocessing.for_image_size(32),
        cache,
        torch.device("cpu"),
        batch_size=4,
        workers=0,
        autocast=_no_autocast,
        memory_format=torch.contiguous_format,
    )


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def test_features_are_computed_once_and_reused_from_the_file(tmp_path):
    samples = images(tmp_path / "img", 6, corrupt=(2,))
    model = Backbone()
    dataset, computed = build(samples, fc.FeatureCache(tmp_path, "key"), model)
    assert computed == 5 and model.seen == 5 and dataset[2][0] is None  # the corrupt file: skipped later
    assert dataset[0][0].shape == (3,) and dataset[3][1] == 1
    again = Backbone()
    reused, computed = build(samples, fc.FeatureCache(tmp_path, "key"), again)  # read back from the file
    assert computed == 0 and again.seen == 0
    assert all(torch.equal(a[0], b[0]) for a, b in zip(dataset, reused, strict=True) if a[0] is not None)
    # a new image: only it is computed
    more = images(tmp_path / "more", 1)
    Image.new("RGB", (40, 40), (1, 2, 3)).save(more[0][0])
    _, computed = build(samples + more, fc.FeatureCache(tmp_path, "key"), Backbone())
    assert computed == 1


def test_another_key_or_a_damaged_file_is_refused(tmp_path):
    samples = images(tmp_path / "img", 3)
    build(samples, fc.FeatureCache(tmp_path, "key"), Backbone())
    other = fc.FeatureCache(tmp_path, "other-key")
    assert not other.entries and not other.refused  # another file altogether
    path = tmp_path / "features-key.pt"
    saved = torch.load(path, weights_only=True)
    saved["features"][0, 0] += 1  # the bytes no longer match their checksum
    torch.save(saved, path)
    messages = []
    damaged = fc.FeatureCache(tmp_path, "key", log=messages.append)
    assert damaged.refused and not damaged.entries and "checksum" in messages[0]
    saved["key"] = "other-key"
    torch.save(saved, path)
    assert fc.FeatureCache(tmp_path, "key", log=messages.append).refused


def test_the_key_changes_with_backbone_weights_and_preprocessing():
    prep = Preprocessing.for_image_size(32)
    key = fc.cache_key("resnet18", "digest", prep)
    assert key == fc.cache_key("resnet18", "digest", Preprocessing.for_image_size(32))
    assert (
        len(
            {
                key,
                fc.cache_key("resnet50", "digest", prep),
                fc.cache_key("resnet18", "other", prep),
                fc.cache_key("resnet18", "digest", Preprocessing.for_image_size(64)),
            }
        )
        == 4
    )
