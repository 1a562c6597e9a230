"""Checkpoints in /opt/ml/checkpoints, which SageMaker syncs with checkpoint_s3_uri.

Written atomically after every epoch and on SIGTERM; read back on start, so a
managed-spot job that is interrupted and restarted continues where it was.
Everything in the file is tensors and plain values: it loads with
torch.load(weights_only=True).

Only what trains is saved: the head and the unfrozen stages, with their
buffers. The frozen stages are rebuilt from the pretrained weights at start,
before the restore, and a digest of them in the fingerprint makes sure they
are the ones the checkpoint was trained on. For a frozen ResNet50 with 133
classes that is about 4 MB per epoch (head weights, best weights, AdamW's two
moments) instead of 200 MB, which matters for short tuning trials.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from contract.artifact import atomic_torch_save

FILE_NAME = "checkpoint.pt"


def frozen_keys(model: nn.Module, frozen: list[nn.Module]) -> set[str]:
    """State-dict keys (parameters and buffers) that belong to frozen modules."""
    frozen_ids = {id(module) for module in frozen}
    keys: set[str] = set()
    for name, module in model.named_modules():
        if id(module) in frozen_ids:
            keys.update(module.state_dict(prefix=f"{name}." if name else "").keys())
    return keys


def state_digest(state: dict) -> str:
    """A digest of tensors' names, dtypes, shapes and bytes."""
    h = hashlib.sha1()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class TrainingState:
    epoch: int = 0  # last completed epoch
    best_loss: float = float("inf")
    best_epoch: int = 0
    best_state: dict | None = None  # trainable part only, like the checkpoint
    history: list = field(default_factory=list)


class Checkpointer:
    def __init__(self, directory: Path, writer: bool):
        self.path = Path(directory) / FILE_NAME
        self.writer = writer  # only rank 0 writes

    @staticmethod
    def fingerprint(trainer) -> dict:
        """What must match for a checkpoint to be this job's."""
        return {"architecture": trainer.arch.to_dict(), "class_names": trainer.splits.class_names,
                "image_size": trainer.hp.image_size, "trainable_layers": trainer.hp.trainable_layers,
                "optimizer": trainer.hp.optimizer, "frozen_weights": trainer.frozen_digest}

    def save(self, trainer, state: TrainingState) -> None:
        if not self.writer:
            return
        atomic_torch_save({
            "fingerprint": self.fingerprint(trainer),
            "model": trainer.trainable_state(),
            "optimizer": trainer.optimizer.state_dict(),
            "schedule": trainer.schedule.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "epoch": state.epoch,
            "best_loss": state.best_loss,
            "best_epoch": state.best_epoch,
            "best_state": state.best_state,
            "history": state.history,
        }, self.path)

    def restore(self, trainer) -> TrainingState:
        if not self.path.is_file():
            return TrainingState()
        try:
            saved = torch.load(self.path, map_location=trainer.device, weights_only=True)
        except Exception as exc:
            print(f"ignoring unreadable checkpoint {self.path}: {str(exc).splitlines()[0]}", flush=True)
            return TrainingState()
        if saved.get("fingerprint") != self.fingerprint(trainer):
            print(f"ignoring checkpoint {self.path}: it was written by a job with other data or settings", flush=True)
            return TrainingState()
        if set(saved["model"]) != set(trainer.trainable_state()):
            print(f"ignoring checkpoint {self.path}: it holds other parameters than this job trains", flush=True)
            return TrainingState()
        trainer.model.load_state_dict(saved["model"], strict=False)
        trainer.optimizer.load_state_dict(saved["optimizer"])
        trainer.schedule.load_state_dict(saved["schedule"])
        trainer.scaler.load_state_dict(saved["scaler"])
        best = saved["best_state"]
        state = TrainingState(saved["epoch"], saved["best_loss"], saved["best_epoch"],
                              {k: v.cpu() for k, v in best.items()} if best else None, saved["history"])
        if trainer.dist.is_main:
            print(f"resuming from checkpoint after epoch {state.epoch}", flush=True)
        return state
