"""A tiny Loop over in-memory features, built in milliseconds: what the unit tests of the trainer run."""

from __future__ import annotations

import torch
from torch import nn

from contract.spec import hyperparameters
from trainer import distributed
from trainer.feature_cache import FeatureDataset
from trainer.loop import Loop
from trainer.optim import make_optimizer, make_schedule
from trainer.reporting import Reporter


class RecordingReporter(Reporter):
    """Reporter that also keeps what the loop reported."""

    def __init__(self):
        super().__init__(distributed.Distributed())
        self.steps, self.epochs = [], []

    def report_step(self, global_step, lr, loss, epoch=0):
        self.steps.append((global_step, lr, loss))

    def report_epoch(self, epoch, train, val_loss, val_accuracy):
        self.epochs.append((epoch, train, val_loss, val_accuracy))


def blobs(n: int = 48, seed: int = 0, unreadable: tuple = ()) -> FeatureDataset:
    """Two Gaussian blobs in 4-d, labels 0/1; items in `unreadable` have no features (a corrupt file)."""
    g = torch.Generator().manual_seed(seed)
    labels = [i % 2 for i in range(n)]
    features = [torch.randn(4, generator=g) + (2.0 if y else -2.0) for y in labels]
    features = [None if i in unreadable else f for i, f in enumerate(features)]
    return FeatureDataset([(f"img{i}.png", y) for i, y in enumerate(labels)], features)


def hp_for(*args: str):
    return hyperparameters.parse(
        [
            "--batch-size",
            "8",
            "--epochs",
            "3",
            "--lr",
            "0.05",
            "--num-workers",
            "0",
            "--amp",
            "false",
            "--seed",
            "0",
            *args,
        ]
    )


def make_loop(hp, model: nn.Module | None = None, steps_per_epoch: int = 6) -> Loop:
    torch.manual_seed(hp.seed)
    model = model or nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
    optimizer = make_optimizer(hp, [p for p in model.parameters() if p.requires_grad])
    return Loop(
        hp=hp,
        dist=distributed.Distributed(),
        device=torch.device("cpu"),
        model=model,
        frozen=[],
        forward_model=model,
        train_model=model,
        criterion=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        schedule=make_schedule(hp, optimizer, steps_per_epoch),
        scaler=torch.amp.GradScaler(enabled=False),
        steps_per_epoch=steps_per_epoch,
        class_names=["a", "b"],
        reporter=RecordingReporter(),
    )
