"""Checkpoints in /opt/ml/checkpoints, which SageMaker syncs with checkpoint_s3_uri.

Written atomically after every epoch and on SIGTERM; read back on start, so a
managed-spot job that is interrupted and restarted continues where it was.
Everything in the file is tensors and plain values: it loads with
torch.load(weights_only=True).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from contract.artifact import atomic_torch_save

FILE_NAME = "checkpoint.pt"


@dataclass
class TrainingState:
    epoch: int = 0  # last completed epoch
    best_loss: float = float("inf")
    best_epoch: int = 0
    best_state: dict | None = None
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
                "optimizer": trainer.hp.optimizer}

    def save(self, trainer, state: TrainingState) -> None:
        if not self.writer:
            return
        atomic_torch_save({
            "fingerprint": self.fingerprint(trainer),
            "model": trainer.model.state_dict(),
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
        trainer.model.load_state_dict(saved["model"])
        trainer.optimizer.load_state_dict(saved["optimizer"])
        trainer.schedule.load_state_dict(saved["schedule"])
        trainer.scaler.load_state_dict(saved["scaler"])
        best = saved["best_state"]
        state = TrainingState(saved["epoch"], saved["best_loss"], saved["best_epoch"],
                              {k: v.cpu() for k, v in best.items()} if best else None, saved["history"])
        if trainer.dist.is_main:
            print(f"resuming from checkpoint after epoch {state.epoch}", flush=True)
        return state
