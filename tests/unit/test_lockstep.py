"""What keeps DDP ranks in step and GPUs in the right modes, as pure functions (issue 23, point 5)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from contract.model import Architecture, build_classifier
from contract.preprocess import Preprocessing
from helpers.tiny_loop import blobs
from helpers.training import ROOT
from trainer import data, distributed, lockstep
from trainer.optim import cuda_amp_dtype


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
)
def test_bf16_only_where_the_gpu_computes_it_natively(capability, dtype):
    """V100 (7.0) and T4 (7.5) emulate bf16, though torch.cuda.is_bf16_supported() says yes: fp16 there."""
    assert cuda_amp_dtype(capability) == dtype


def test_a_gpu_host_without_cuda_is_refused():
    with pytest.raises(distributed.LaunchError, match=r"^SM_NUM_GPUS=1 but CUDA is unavailable"):
        distributed.check_devices(gpus=1, cuda_available=False, processes_per_host=0)


def test_more_processes_than_gpus_are_refused():
    with pytest.raises(distributed.LaunchError, match="processes-per-host: 3 processes on a host with 2 GPU"):
        distributed.check_devices(gpus=2, cuda_available=True, processes_per_host=3)
    distributed.check_devices(gpus=2, cuda_available=True, processes_per_host=2)
    distributed.check_devices(gpus=0, cuda_available=False, processes_per_host=4, cpus=4)  # CPU ranks: gloo


def test_more_cpu_processes_than_cores_are_refused():
    """500 CPU processes each loaded torch and the model: an OOM kill and no reason written."""
    with pytest.raises(distributed.LaunchError, match="500 processes on a host with 16 CPU core"):
        distributed.check_devices(gpus=0, cuda_available=False, processes_per_host=500, cpus=16)
    distributed.check_devices(gpus=0, cuda_available=False, processes_per_host=16, cpus=16)


def test_a_rank_writes_its_line_in_one_write(monkeypatch):
    """The ranks of a host share one pipe; under PYTHONUNBUFFERED each write reaches it at once. A line
    written as text then newline (what `print` does) let another rank's line in between (CI, 2026-12-06)."""
    writes: list[str] = []

    class Pipe:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr("sys.stdout", Pipe())
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-2")
    monkeypatch.setenv("SM_HOSTS", '["algo-1", "algo-2"]')
    distributed.rank_says(distributed.Distributed(rank=3, world_size=4), "epoch 1: trained on 8 images")
    assert writes == ["[rank 3/4 on algo-2] epoch 1: trained on 8 images\n"]


def test_a_batch_smaller_than_the_fewest_images_is_not_trained_on():
    two, one = torch.zeros(2, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    assert lockstep.trainable(two, 2) and lockstep.trainable(one, 1)
    assert not lockstep.trainable(one, 2) and not lockstep.trainable(None, 1)


def test_one_image_is_too_few_only_where_batch_norm_would_see_one_value_per_channel():
    """ResNet's last stage is 1x1 at 32 px: one image cannot train there, but can at 64 px, and a frozen
    (eval-mode) last stage takes one at any size. The trial pass leaves the buffers as they were."""
    model = build_classifier(Architecture("resnet18", 4)).train()
    before = [b.clone() for b in model.buffers()]
    assert lockstep.fewest_images(model, (3, 32, 32), torch.device("cpu")) == 2
    assert lockstep.fewest_images(model, (3, 64, 64), torch.device("cpu")) == 1
    assert all(torch.equal(b, saved) for b, saved in zip(model.buffers(), before, strict=True))
    assert lockstep.fewest_images(model.eval(), (3, 32, 32), torch.device("cpu")) == 1


def test_the_stand_in_batch_has_the_shape_of_real_input():
    images = data.ImageDataset([], Preprocessing.for_image_size(32), train=False)
    assert lockstep.stand_in(images, torch.device("cpu"), torch.channels_last).shape == (2, 3, 32, 32)
    features = blobs(8, unreadable=(0,))
    assert lockstep.stand_in(features, torch.device("cpu"), torch.contiguous_format).shape == (2, 4)


def test_buffers_are_put_back_after_a_stand_in_pass():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    before = [b.clone() for b in model.buffers()]
    with lockstep.buffers_kept(model):
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        assert not torch.equal(model[1].running_mean, before[0])  # the pass did move them
    assert all(torch.equal(b, saved) for b, saved in zip(model.buffers(), before, strict=True))


@pytest.mark.parametrize("dockerfile", ["Dockerfile.train", "Dockerfile.serve"])
def test_both_images_ask_the_nvidia_runtime_for_the_gpus(dockerfile):
    text = (ROOT / dockerfile).read_text()
    assert re.search(r"^ENV NVIDIA_VISIBLE_DEVICES=all \\\n\s+NVIDIA_DRIVER_CAPABILITIES=compute,utility$", text, re.M)


def test_loader_workers_are_bounded_by_the_cores():
    from contract.spec.hyperparameters import HyperparameterError

    with pytest.raises(HyperparameterError, match="num-workers: 500 loader processes on 2 CPU core"):
        data.worker_count(500, cores=2)
    assert data.worker_count(8, cores=2) == 8 and data.worker_count(-1, cores=2) == 2
