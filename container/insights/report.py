"""The evaluation report: overall and per-class accuracy, confusion matrix (JSON + PNG), the most
confused pairs and the classes with the lowest recall."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from contract.artifact import atomic_write_bytes

CELL_TEXT_CLASSES = 20  # counts in the cells up to this many classes; beyond, tables beside the matrix
AXIS_NAMES_CLASSES = 60
MOST_CONFUSED = 12  # rows in each table


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
        "most_confused": most_confused(confusion, class_names),
        "worst_recall": worst_recall(confusion, class_names),
        "skipped_images": {"count": sum(len(v) for v in skipped.values()), "by_split": skipped},
    }


def write(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "evaluation.json", json.dumps(report, indent=2).encode())
    plot_confusion(
        np.asarray(report["confusion_matrix"]),
        report["class_names"],
        f"{report['split']}: accuracy {report['accuracy']:.3f} on {report['images']} images",
        out_dir / "confusion_matrix.png",
    )


def most_confused(confusion: np.ndarray, class_names: list[str], limit: int = MOST_CONFUSED) -> list[dict]:
    """The largest off-diagonal cells: (true, predicted, images, share of the true class)."""
    off = confusion.astype(float).copy()
    np.fill_diagonal(off, 0)
    rows = confusion.sum(axis=1)
    order = np.argsort(off, axis=None)[::-1][:limit]
    pairs = [np.unravel_index(i, off.shape) for i in order]
    return [
        {
            "true": class_names[t],
            "predicted": class_names[p],
            "images": int(off[t, p]),
            "share_of_true": float(off[t, p] / rows[t]) if rows[t] else 0.0,
        }
        for t, p in pairs
        if off[t, p] > 0
    ]


def worst_recall(confusion: np.ndarray, class_names: list[str], limit: int = MOST_CONFUSED) -> list[dict]:
    rows = confusion.sum(axis=1)
    recall = np.where(rows > 0, np.diag(confusion) / np.maximum(rows, 1), np.nan)
    order = [i for i in np.argsort(recall) if rows[i] > 0][:limit]
    return [{"class": class_names[i], "recall": float(recall[i]), "images": int(rows[i])} for i in order]


def confusion_figure(confusion: np.ndarray, class_names: list[str], title: str):
    """Row-normalised colours (each true class's share), counts in the cells up to CELL_TEXT_CLASSES
    classes; beyond, no cell text and two tables beside the matrix: the most confused pairs and
    the classes with the lowest recall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    rows = confusion.sum(axis=1, keepdims=True)
    shares = confusion / rows.clip(min=1)
    few = n <= CELL_TEXT_CLASSES
    side = min(3 + n * (0.45 if few else 0.12), 24)
    if few:
        fig, ax = plt.subplots(figsize=(side + 1.5, side))
    else:
        fig, (ax, tables) = plt.subplots(1, 2, figsize=(side + 9, side), width_ratios=[side, 9])
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if few:
        for t in range(n):
            for p in range(n):
                ax.text(
                    p,
                    t,
                    f"{int(confusion[t, p])}\n{100 * shares[t, p]:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shares[t, p] > 0.5 else "black",
                    gid="cell",
                )
    if n <= AXIS_NAMES_CLASSES:  # beyond, names overlap; the JSON and the tables have them
        fontsize = 9 if few else 6
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), class_names, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if not few:
        tables.axis("off")
        pairs = most_confused(confusion, class_names)
        worst = worst_recall(confusion, class_names)

        def cell(text: str) -> str:
            return text if len(text) <= 28 else text[:27] + "…"

        if pairs:
            table = tables.table(
                cellText=[
                    [cell(p["true"]), cell(p["predicted"]), p["images"], f"{100 * p['share_of_true']:.0f}%"]
                    for p in pairs
                ],
                colLabels=["true", "predicted as", "images", "of true"],
                bbox=[0, 0.52, 1, 0.42],
                gid="most_confused",
            )
            table.auto_set_font_size(False)
            table.set_fontsize(8)
            tables.text(0, 0.96, "Most confused pairs", fontsize=11, weight="bold", transform=tables.transAxes)
        table = tables.table(
            cellText=[[cell(w["class"]), f"{100 * w['recall']:.0f}%", w["images"]] for w in worst],
            colLabels=["class", "recall", "images"],
            bbox=[0, 0.02, 1, 0.42],
            gid="worst_recall",
        )
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        tables.text(0, 0.46, "Lowest recall", fontsize=11, weight="bold", transform=tables.transAxes)
    fig.tight_layout()
    return fig


def plot_confusion(confusion: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = confusion_figure(confusion, class_names, title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
