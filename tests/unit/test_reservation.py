"""An inference component's reservation (server/reservation.py) against the server's own sizing
(server/settings.py): a server given that many cores and that much memory runs the reserved workers
with the reserved decode budget, and the component's environment makes it do so on any host."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import settings as server_settings
from server.reservation import COMPONENT_DECODE_PIXELS, reservation
from server.settings import Settings, cpu_workers, decode_pixels_per_worker

pytestmark = pytest.mark.unit


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 192), st.integers(0, 4 << 30))
def test_a_server_inside_the_reservation_sizes_itself_as_reserved(cores, weights):
    held = reservation(cores, weights)
    assert held.workers == max(1, cores // 2)  # two or more torch threads per worker, as on a whole host
    # the cgroup view: exactly the reserved cores and memory
    assert cpu_workers(cores, held.memory_bytes, weights) == held.workers
    assert decode_pixels_per_worker(held.workers, weights, held.memory_bytes) >= COMPONENT_DECODE_PIXELS
    assert held.decode_pixels_per_worker >= COMPONENT_DECODE_PIXELS
    assert held.memory_mb << 20 >= held.memory_bytes > (held.memory_mb - 1) << 20
    assert held.torch_threads * held.workers <= cores


def test_the_environment_holds_the_server_to_the_reservation_on_a_larger_host(tmp_path, monkeypatch):
    # a host of 64 cores and 256 GiB: the server alone would run 32 workers, each decoding half a gigapixel
    monkeypatch.setattr(server_settings, "cpu_cores", lambda: 64)
    monkeypatch.setattr(server_settings, "memory_bytes", lambda: 256 << 30)
    (tmp_path / "model.pt").write_bytes(bytes(1000))
    base = {"SM_MODEL_DIR": str(tmp_path), "SAGEMAKER_CPU_FLAGS": ""}
    alone = Settings.from_env(base)
    assert alone.workers == 32 and alone.decode_pixels_per_worker > 400_000_000
    held = reservation(4, 1000)
    inside = Settings.from_env({**base, **held.environment()})
    assert (inside.workers, inside.torch_threads) == (2, 2)
    assert inside.decode_pixels_per_worker == held.decode_pixels_per_worker == COMPONENT_DECODE_PIXELS


def test_a_resnet50_copy_on_two_cores():
    held = reservation(2, 94_000_000)  # ResNet50's model.pt
    assert (held.workers, held.torch_threads, held.memory_mb) == (1, 2, 1115)


@pytest.mark.parametrize("cores, weights", [(0, 1), (-2, 1), (2, -1)])
def test_nonsense_is_refused(cores, weights):
    with pytest.raises(ValueError):
        reservation(cores, weights)
