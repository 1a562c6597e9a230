"""The model artifact's layout, what training writes to /opt/ml/model and serving reads, without torch.

    model.pt            state dict of contract.model.build_classifier(...),
                        plain tensors only: loads with torch.load(weights_only=True)
    model_config.json   {"format_version", "architecture", "preprocessing",
                         "class_names", "training": TrainingSummary}
    code/inference.py   optional handler overrides for serving (model_fn, ...)
    calibration/*.jpg   a few training images, shorter side at the resize size:
                        serving calibrates int8 on them and checks every
                        precision against fp32 on them (server/precision.py)

SageMaker tars this directory into model.tar.gz and extracts it again into
/opt/ml/model of the serving container. contract/artifact.py writes and loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "model_config.json"
CODE_DIR = "code"
CALIBRATION_DIR = "calibration"
CALIBRATION_IMAGES = 16  # enough for int8's activation ranges; the server calibrates on all of them
EVALUATED_SPLITS = ("test", "validation")


@dataclass
class TrainingSummary:
    """How the model was trained: model_config.json's `training` block.

    On disk the evaluation is keyed by its split, `test_accuracy`/`test_loss` when a test set
    was given, else `validation_accuracy`/`validation_loss`, as the tools reading it expect."""

    hyperparameters: dict = field(default_factory=dict)
    best_epoch: int = 0  # the epoch whose weights were kept (lowest validation loss)
    history: list = field(default_factory=list)  # per epoch: losses, accuracies, seconds
    split: str = "validation"  # the split `accuracy` and `loss` were measured on
    accuracy: float = 0.0
    loss: float = 0.0
    skipped_images: int = 0  # unreadable images skipped in every split
    world_size: int = 1  # training processes
    hosts: list = field(default_factory=list)  # the job's host names (algo-1, ...)

    def __post_init__(self):
        if self.split not in EVALUATED_SPLITS:
            raise ValueError(f"split must be one of {', '.join(EVALUATED_SPLITS)}; got {self.split!r}")

    def to_dict(self) -> dict:
        return {
            "hyperparameters": dict(self.hyperparameters),
            "best_epoch": self.best_epoch,
            "history": list(self.history),
            f"{self.split}_accuracy": self.accuracy,
            f"{self.split}_loss": self.loss,
            "skipped_images": self.skipped_images,
            "world_size": self.world_size,
            "hosts": self.hosts,
        }

    @classmethod
    def from_dict(cls, data: dict) -> TrainingSummary:
        split = next((s for s in EVALUATED_SPLITS if f"{s}_accuracy" in data), None)
        if split is None:
            raise ValueError(f"no test_accuracy or validation_accuracy in the training summary: {sorted(data)}")
        return cls(
            dict(data.get("hyperparameters", {})),
            int(data.get("best_epoch", 0)),
            list(data.get("history", [])),
            split,
            float(data[f"{split}_accuracy"]),
            float(data.get(f"{split}_loss", 0.0)),
            int(data.get("skipped_images", 0)),
            int(data.get("world_size", 1)),
            list(data.get("hosts", [])),
        )
