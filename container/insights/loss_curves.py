"""Loss curves from the trainer's scalars file: losses.png, with the plotted numbers beside it.

    python -m insights.loss_curves /opt/ml/output/data/scalars.jsonl [--out DIR]

Top: the training loss at every optimiser step (raw, light; smoothed, dark), the validation
loss per epoch (at the step that ended the epoch) and the learning rate on a second axis.
Bottom: training and validation accuracy per epoch. losses.json holds every plotted series
(x and y), losses.csv the same as rows (series, x, y): what the picture shows, as numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

PNG, JSON, CSV = "losses.png", "losses.json", "losses.csv"
# series name -> (axis, label); the axis is "loss", "lr" or "accuracy"
SERIES = {
    "train_step_loss": ("loss", "training loss per step"),
    "train_step_loss_smoothed": ("loss", "training loss per step, smoothed"),
    "validation_loss": ("loss", "validation loss per epoch"),
    "learning_rate": ("lr", "learning rate"),
    "train_accuracy": ("accuracy", "training accuracy"),
    "validation_accuracy": ("accuracy", "validation accuracy"),
}


def read(path: Path) -> list[dict]:
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut short by a killed job
            pass
    return records


def smooth(values: list[float]) -> list[float]:
    """Debiased exponential moving average over about a tenth of the points (TensorBoard's kind)."""
    span = min(max(len(values) / 10, 1.0), 50.0)
    weight = 1 - 2 / (span + 1)
    out, average, norm = [], 0.0, 0.0
    for value in values:
        average = weight * average + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(average / norm)
    return out


def series(records: list[dict]) -> dict[str, dict]:
    """Every series the figure plots: {name: {"x": [...], "y": [...], "x_unit": ...}}."""
    steps = [r for r in records if r.get("kind") == "step" and "loss" in r]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    last_step: dict[int, int] = {}  # epoch -> the global step that ended it
    for r in steps:
        last_step[r["epoch"]] = max(last_step.get(r["epoch"], 0), r["step"])
    out: dict[str, dict[str, Any]] = {}
    if steps:
        x = [r["step"] for r in steps]
        out["train_step_loss"] = {"x": x, "y": [r["loss"] for r in steps]}
        out["train_step_loss_smoothed"] = {"x": x, "y": smooth([r["loss"] for r in steps])}
        rates = [r for r in steps if "learning_rate" in r]
        if rates:
            out["learning_rate"] = {"x": [r["step"] for r in rates], "y": [r["learning_rate"] for r in rates]}
    validation = [r for r in epochs if "validation_loss" in r and r["epoch"] in last_step]
    if validation:
        out["validation_loss"] = {
            "x": [last_step[r["epoch"]] for r in validation],
            "y": [r["validation_loss"] for r in validation],
        }
    for name in ("train_accuracy", "validation_accuracy"):
        points = [r for r in epochs if name in r]
        if points:
            out[name] = {"x": [r["epoch"] for r in points], "y": [r[name] for r in points]}
    for name, values in out.items():
        values["x_unit"] = "epoch" if SERIES[name][0] == "accuracy" else "global step"
    return out


def figure(plotted: dict[str, dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), height_ratios=[2, 1])
    steps = len(plotted.get("train_step_loss", {}).get("x", []))
    styles: dict[str, dict[str, Any]] = {
        "train_step_loss": dict(color="tab:blue", alpha=0.3, linewidth=0.8),
        "train_step_loss_smoothed": dict(color="tab:blue", linewidth=2),
        "validation_loss": dict(color="tab:orange", marker="o", linewidth=2),
        "train_accuracy": dict(color="tab:blue", marker="o"),
        "validation_accuracy": dict(color="tab:orange", marker="o"),
    }
    for name, values in plotted.items():
        axis, label = SERIES[name]
        if axis == "loss":
            top.plot(values["x"], values["y"], label=label, **styles[name])
        elif axis == "accuracy":
            bottom.plot(values["x"], values["y"], label=label, **styles[name])
    top.set(
        xlabel="global step (optimiser steps)",
        ylabel="cross-entropy loss",
        title=f"Loss: {steps} training steps, {len(plotted.get('validation_loss', {}).get('x', []))} epochs",
    )
    top.grid(alpha=0.3)
    lines, labels = top.get_legend_handles_labels()
    if "learning_rate" in plotted:
        rate = top.twinx()
        rate.plot(
            plotted["learning_rate"]["x"],
            plotted["learning_rate"]["y"],
            color="tab:gray",
            linestyle="--",
            linewidth=1,
            label=SERIES["learning_rate"][1],
        )
        rate.set_ylabel("learning rate")
        rate.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        more, more_labels = rate.get_legend_handles_labels()
        lines, labels = lines + more, labels + more_labels
    top.legend(lines, labels, fontsize=8, loc="upper right")
    bottom.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    bottom.grid(alpha=0.3)
    if bottom.lines:
        epochs = (plotted.get("validation_accuracy") or plotted["train_accuracy"])["x"]
        bottom.set_xticks(epochs if len(epochs) <= 30 else epochs[:: max(len(epochs) // 15, 1)])
        bottom.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def write(scalars: Path, out_dir: Path) -> dict[str, int]:
    """losses.png, .json and .csv in `out_dir`; returns {series: points}."""
    plotted = series(read(scalars))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JSON).write_text(json.dumps(plotted))
    with open(out_dir / CSV, "w", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(["series", "x_unit", "x", "y"])
        for name, values in plotted.items():
            rows.writerows([name, values["x_unit"], x, y] for x, y in zip(values["x"], values["y"], strict=True))
    import matplotlib.pyplot as plt

    fig = figure(plotted)
    fig.savefig(out_dir / PNG, dpi=100)
    plt.close(fig)
    return {name: len(values["x"]) for name, values in plotted.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m insights.loss_curves", description=__doc__.split("\n\n")[0])
    parser.add_argument("scalars", type=Path, help="the trainer's scalars.jsonl (output/data)")
    parser.add_argument("--out", type=Path, help="folder for losses.png/.json/.csv (default: beside the file)")
    args = parser.parse_args(argv)
    counts = write(args.scalars, args.out or args.scalars.parent)
    print(", ".join(f"{name}: {n} points" for name, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
