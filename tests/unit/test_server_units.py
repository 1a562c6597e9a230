"""The serving parts that need no server: the dynamic batcher and the settings."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from server.batching import DynamicBatcher
from server.settings import WORKER_BASE_BYTES, Settings, cpu_workers


class RecordingForward:
    """A real forward function (doubling) that records the batch sizes it was given."""

    def __init__(self, fail_on: float | None = None):
        self.sizes: list[int] = []
        self.fail_on = fail_on

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(inputs))
        if self.fail_on is not None and (inputs == self.fail_on).any():
            raise RuntimeError("forward failed")
        return inputs * 2


def submit_concurrently(batcher: DynamicBatcher, count: int) -> dict[int, torch.Tensor]:
    results: dict[int, torch.Tensor] = {}
    start = threading.Barrier(count)

    def request(i: int) -> None:
        start.wait(timeout=10)
        with batcher.upcoming():
            results[i] = batcher.submit(torch.full((1, 3), float(i)))

    threads = [threading.Thread(target=request, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.mark.parametrize("max_wait_ms", [0, 200])
def test_concurrent_requests_share_forward_passes_and_get_their_own_answers(max_wait_ms):
    forward = RecordingForward()
    batcher = DynamicBatcher(forward, max_batch_size=8, max_wait_ms=max_wait_ms)
    results = submit_concurrently(batcher, 16)
    assert sorted(results) == list(range(16))
    for i, result in results.items():
        assert torch.equal(result, torch.full((1, 3), 2.0 * i))
    assert sum(forward.sizes) == 16 and max(forward.sizes) <= 8
    if max_wait_ms:
        assert len(forward.sizes) < 16  # batched, not one pass per request


def test_a_lone_request_does_not_wait():
    batcher = DynamicBatcher(RecordingForward(), max_batch_size=8, max_wait_ms=5000)
    started = time.monotonic()
    with batcher.upcoming():
        batcher.submit(torch.ones(1, 3))
    assert time.monotonic() - started < 1.0


def test_waiting_for_an_announced_request_is_bounded_by_the_wait():
    batcher = DynamicBatcher(RecordingForward(), max_batch_size=8, max_wait_ms=1000)
    announced, release = threading.Event(), threading.Event()

    def slow_request():  # announces itself, then fails before submitting
        with pytest.raises(ValueError), batcher.upcoming():
            announced.set()
            release.wait(timeout=10)
            raise ValueError("bad image")

    other = threading.Thread(target=slow_request)
    other.start()
    announced.wait(timeout=10)
    started = time.monotonic()
    batcher.submit(torch.ones(1, 3))
    assert 0.9 < time.monotonic() - started < 5.0  # waited for the announced one, but only max_wait_ms
    release.set()
    other.join(timeout=10)
    started = time.monotonic()
    batcher.submit(torch.ones(1, 3))
    assert time.monotonic() - started < 0.5  # the failed request's announcement is gone: no wait


def test_a_request_larger_than_a_batch_is_split_and_reassembled():
    forward = RecordingForward()
    batcher = DynamicBatcher(forward, max_batch_size=8, max_wait_ms=5)
    inputs = torch.arange(20.0).reshape(20, 1)
    assert torch.equal(batcher.submit(inputs), inputs * 2)
    assert forward.sizes == [8, 8, 4]


def test_each_request_thread_learns_the_size_of_its_forward_pass():
    batcher = DynamicBatcher(RecordingForward(), max_batch_size=8, max_wait_ms=5)
    with batcher.upcoming():
        batcher.submit(torch.ones(3, 3))
    assert batcher.last_batch_size() == 3
    with batcher.upcoming():  # announced, submitted nothing (a bad request): no stale size
        pass
    assert batcher.last_batch_size() is None
    assert (batcher.forward_passes, batcher.images) == (1, 3)


@pytest.mark.parametrize("model_threads", [1, 2])
def test_model_threads_run_that_many_forward_passes_at_once(model_threads):
    """Each pass waits until `model_threads` passes are running: with fewer threads than
    that (the batcher serialising its passes) every pass would time out and fail."""
    together = threading.Barrier(model_threads)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        together.wait(timeout=5)
        return inputs * 2

    batcher = DynamicBatcher(forward, max_batch_size=1, max_wait_ms=0, model_threads=model_threads)
    results = submit_concurrently(batcher, 4)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(torch.equal(result, torch.full((1, 3), 2.0 * i)) for i, result in results.items())
    assert (batcher.forward_passes, batcher.images) == (4, 4)


def test_close_ends_every_model_thread():
    batcher = DynamicBatcher(RecordingForward(), max_batch_size=8, max_wait_ms=0, model_threads=3)
    assert torch.equal(batcher.submit(torch.ones(2, 3)), torch.full((2, 3), 2.0))
    assert len(batcher.model_threads) == 3
    batcher.close()
    for thread in batcher.model_threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in batcher.model_threads)


def test_a_failing_forward_fails_its_requests_only():
    batcher = DynamicBatcher(RecordingForward(fail_on=-1.0), max_batch_size=8, max_wait_ms=5)
    with pytest.raises(RuntimeError, match="forward failed"):
        batcher.submit(torch.full((1, 3), -1.0))
    assert torch.equal(batcher.submit(torch.ones(1, 3)), torch.full((1, 3), 2.0))


def test_settings_from_the_environment(tmp_path):
    settings = Settings.from_env(
        {
            "SM_MODEL_DIR": str(tmp_path),
            "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "100",
            "SAGEMAKER_BATCH_SIZE": "32",
            "SM_NUM_GPUS": "0",
            "SAGEMAKER_MAX_IMAGES_PER_REQUEST": "500",
        }
    )
    assert (settings.workers, settings.max_payload_bytes, settings.request_threads) == (3, 100 << 20, 64)
    assert (settings.max_images_per_request, settings.max_pixels_per_request) == (500, 64_000_000)
    assert (settings.port, settings.host, settings.timeout, settings.batch_wait_ms) == (8080, "0.0.0.0", 60, 5)
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings.from_env({"SM_NUM_GPUS": "4"}).workers == 4  # one per GPU


@pytest.mark.parametrize(
    "name, value",
    [
        ("SAGEMAKER_BATCH_SIZE", "many"),
        ("SAGEMAKER_MODEL_SERVER_WORKERS", "0"),
        ("SAGEMAKER_BIND_TO_PORT", "-1"),
        ("SAGEMAKER_MAX_PIXELS_PER_REQUEST", "0"),
    ],
)
def test_settings_name_the_variable_that_is_wrong(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value, "SM_NUM_GPUS": "0"})


def test_cpu_workers_fit_cores_and_memory():
    model = 100 << 20
    assert cpu_workers(cores=2, memory=64 << 30, weights=model) == 1
    assert cpu_workers(cores=16, memory=64 << 30, weights=model) == 8
    assert cpu_workers(cores=16, memory=2 * (WORKER_BASE_BYTES + 4 * model), weights=model) == 2
    assert cpu_workers(cores=16, memory=1 << 20, weights=model) == 1


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2, --cpus 1.5
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # v1 (podman here, AL2)
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_the_cpu_quota_is_read_on_cgroup_v2_and_v1(tmp_path, files, expected):
    """Workers and torch threads are sized by the container's CPUs: a v1 host's quota was ignored."""
    from server.settings import cgroup_cpu_quota

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(str(tmp_path)) == expected
