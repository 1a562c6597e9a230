"""Training and validation loss per step from a debugger trial, as PNG (the second seed's plot).

python -m insights.loss_plot TRIAL_DIR_OR_S3_URI [--out losses.png]
"""

from __future__ import annotations

import argparse
import os
import sys

if "google.protobuf" not in sys.modules:  # smdebug's protobuf code needs the pure-Python implementation
    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
os.environ.setdefault("SMDEBUG_LOG_LEVEL", "warning")


def plot(trial_path: str, out: str, tensor: str = "CrossEntropyLoss_output_0") -> dict:
    """Write the PNG; return {mode: number of points} (TRAIN, EVAL)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from smdebug import modes

    from insights.trial import open_trial

    trial = open_trial(trial_path)
    loss = trial.tensor(tensor)
    fig, ax = plt.subplots(figsize=(8, 4))
    counts = {}
    for mode, label in ((modes.TRAIN, "training"), (modes.EVAL, "validation")):
        values = loss.values(mode=mode)
        counts[mode.name] = len(values)
        if values:
            steps = sorted(values)
            ax.plot(steps, [float(values[s]) for s in steps], label=label, marker="." if len(steps) < 50 else None)
    ax.set(xlabel="step (within its mode)", ylabel="cross-entropy loss", title=f"{tensor} per step")
    ax.legend()
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m insights.loss_plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("trial", help="smdebug trial folder or s3:// URI")
    parser.add_argument("--out", default="losses.png")
    parser.add_argument("--tensor", default="CrossEntropyLoss_output_0")
    args = parser.parse_args(argv)
    counts = plot(args.trial, args.out, args.tensor)
    print(f"{args.out}: {counts.get('TRAIN', 0)} training and {counts.get('EVAL', 0)} validation points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
