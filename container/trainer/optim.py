"""The optimiser, its learning-rate schedule (stepped once per optimizer step) and the autocast dtype."""

from __future__ import annotations

import math

import torch


def make_optimizer(hp, params) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=hp.momentum > 0
        )
    return torch.optim.AdamW(params, lr=hp.lr, eps=hp.eps, weight_decay=hp.weight_decay)


def make_schedule(hp, optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` epochs, then cosine to 0 at the last step (or constant)."""
    warmup = hp.warmup * steps_per_epoch
    total = max(hp.epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if hp.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def amp_dtype(hp, device) -> torch.dtype | None:
    """Mixed precision: fp16/bf16 on CUDA by default, bf16 on CPUs that do it natively."""
    if hp.amp is False:
        return None
    if device.type == "cuda":
        return cuda_amp_dtype(torch.cuda.get_device_capability(device))
    native_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if hp.amp is True or native_bf16:
        return torch.bfloat16
    return None


# Ampere (8.0) and later do bf16 in their tensor cores; torch.cuda.is_bf16_supported() also says yes
# for Turing and Volta (T4, V100), which only emulate it: slowly, and without fp16's GradScaler
NATIVE_BF16_CAPABILITY = (8, 0)


def cuda_amp_dtype(capability: tuple[int, int]) -> torch.dtype:
    """bf16 on GPUs that compute it natively, else fp16 (which the loop's GradScaler then scales)."""
    return torch.bfloat16 if tuple(capability) >= NATIVE_BF16_CAPABILITY else torch.float16
