"""Starting weights from a file: read safely, fitted to the backbone, refused with a reason otherwise."""

from __future__ import annotations

import pytest
import torch

from contract.model import Architecture, build_classifier
from trainer import weights


def resnet18(classes=4):
    torch.manual_seed(0)
    return build_classifier(Architecture("resnet18", classes))


def test_a_weights_file_initialises_the_backbone_and_not_the_head(tmp_path):
    source = resnet18(classes=1000)
    path = tmp_path / "backbone.pth"
    # a wrapped state dict saved from DDP ("module." prefixes), as training scripts often save them
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = resnet18()
    head_before = model.fc.state_dict()
    weights.load_backbone(model, path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    for key, value in model.fc.state_dict().items():
        assert torch.equal(value, head_before[key])


def test_a_file_for_another_backbone_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    state = resnet18().state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.")}, path)
    with pytest.raises(weights.WeightsError, match="tensors missing"):
        weights.load_backbone(resnet18(), path)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(weights.WeightsError, match="conv1.weight has shape"):
        weights.load_backbone(resnet18(), path)


class Payload:
    def __reduce__(self):
        return (exec, ("raise SystemExit('code ran')",))


def test_unsafe_or_foreign_files_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Payload()}, path)
    with pytest.raises(weights.WeightsError, match="cannot be loaded safely"):
        weights.read_state_dict(path)
    torch.save({"conv1.weight": [1, 2]}, path)
    with pytest.raises(weights.WeightsError, match="not a state dict of tensors"):
        weights.read_state_dict(path)


def test_resolve_none_a_file_or_the_channel(tmp_path):
    assert weights.resolve("none", "resnet18", None) is None
    with pytest.raises(weights.WeightsError, match="does not exist"):
        weights.resolve(str(tmp_path / "missing.pth"), "resnet18", None)
    (tmp_path / "a.pth").write_bytes(b"x")
    assert weights.resolve(str(tmp_path / "a.pth"), "resnet18", None) == tmp_path / "a.pth"
    assert weights.resolve("imagenet", "resnet18", tmp_path) == tmp_path / "a.pth"
    (tmp_path / "b.pt").write_bytes(b"x")
    with pytest.raises(weights.WeightsError, match="exactly one"):
        weights.resolve("imagenet", "resnet18", tmp_path)
