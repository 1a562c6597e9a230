"""Starting weights from a file: read safely, fitted to the backbone, refused with a reason otherwise."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
import time

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


# -- downloads (WEIGHTS_MIRROR_URL): a real HTTP server on 127.0.0.1 ----------------

GOOD = b"weights " * 4096
GOOD_NAME = f"resnet18-{hashlib.sha256(GOOD).hexdigest()[:8]}.pth"
ENDLESS_LIMIT = 256 << 20  # the endless body's own bound, so a broken client cannot keep the server busy


class Mirror(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()  # no Content-Length: the body ends when the server closes
        if self.path == f"/{GOOD_NAME}":
            self.wfile.write(GOOD)
        elif self.path.startswith("/wrong/"):  # another file under the good name
            self.wfile.write(GOOD + b"tampered")
        elif self.path.startswith("/endless/"):
            sent = 0
            with contextlib.suppress(OSError):  # the client hangs up at its cap
                while sent < ENDLESS_LIMIT:
                    self.wfile.write(bytes(1 << 16))
                    sent += 1 << 16

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_a_download_whose_hash_matches_its_name_is_kept(mirror, tmp_path):
    dest = tmp_path / "hub" / GOOD_NAME
    weights.download(f"{mirror}/{GOOD_NAME}", dest)
    assert dest.read_bytes() == GOOD
    assert [p.name for p in dest.parent.iterdir()] == [GOOD_NAME]  # no temporary file left


def test_a_download_with_another_hash_is_refused_and_not_cached(mirror, tmp_path, monkeypatch):
    """Through resolve(), as the trainer downloads: the mirror serves other bytes under torchvision's name."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("WEIGHTS_MIRROR_URL", f"{mirror}/wrong/")
    with pytest.raises(weights.WeightsError) as refused:
        weights.resolve("imagenet", "resnet18", None)
    assert str(refused.value) == (
        f"download of {mirror}/wrong/resnet18-f37072fd.pth does not match the sha256 prefix f37072fd in its "
        f"name (got {hashlib.sha256(GOOD + b'tampered').hexdigest()[:8]}); refusing it"
    )
    assert not list((tmp_path / "torch").rglob("*.pth*"))


def test_an_endless_download_stops_at_the_cap(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("WEIGHTS_MAX_BYTES", "4M")
    started = time.monotonic()
    with pytest.raises(weights.WeightsError, match=r"larger than the 4,194,304 bytes allowed \(WEIGHTS_MAX_BYTES\)"):
        weights.download(f"{mirror}/endless/{GOOD_NAME}", tmp_path / GOOD_NAME)
    assert time.monotonic() - started < 10
    assert not list(tmp_path.iterdir())


def test_a_name_without_a_hash_is_not_downloaded(mirror, tmp_path):
    with pytest.raises(weights.WeightsError, match="carries no sha256 prefix"):
        weights.download(f"{mirror}/resnet18.pth", tmp_path / "resnet18.pth")
