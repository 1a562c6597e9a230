"""The evaluation report: overall and per-class accuracy, confusion matrix (JSON + PNG)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from contract.artifact import atomic_write_bytes


def build(split: str, confusion: np.ndarray, class_names: list[str], loss: float, skipped: dict) -> dict:
    totals = confusion.sum(axis=1)
    correct = np.diag(confusion)
    per_class = {
        name: {"accuracy": float(correct[i] / totals[i]) if totals[i] else None, "images": int(totals[i])}
        for i, name in enumerate(class_names)
    }
    return {
        "split": split,
        "images": int(totals.sum()),
        "loss": float(loss),
        "accuracy": float(correct.sum() / max(totals.sum(), 1)),
        "per_class": per_class,
        "class_names": class_names,
        "confusion_matrix": confusion.astype(int).tolist(),  # rows: true class, columns: predicted
        "skipped_images": {"count": sum(len(v) for v in skipped.values()), "by_split": skipped},
    }


def write(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "evaluation.json", json.dumps(report, indent=2).encode())
    plot_confusion(np.asarray(report["confusion_matrix"]), report["class_names"],
                   f"{report['split']} accuracy {report['accuracy']:.3f}", out_dir / "confusion_matrix.png")


def plot_confusion(confusion: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    size = min(4 + n * 0.25, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = confusion.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(confusion / rows, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:  # names are unreadable beyond that; the JSON has them
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
