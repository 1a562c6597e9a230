"""Copy a data set's held-out images out, one folder per class: what scripts/run_local.py classifies.

    python -m trainer.heldout OUT [--limit 200] [hyperparameters, e.g. --val-fraction 0.2 --seed 1]

The channels are read as the trainer reads them (SM_CHANNEL_* or
/opt/ml/input/data/*; archives unpacked, every layout of trainer.data). The
held-out images are the test split, else the validation split: a channel or
folder of its own, or the share of training the trainer held out with the same
`val-fraction` and `seed`. Up to LIMIT of them, taken from the classes in turn,
go to OUT/<class name>/, and OUT/heldout.json says which split they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from itertools import chain, zip_longest
from pathlib import Path

from contract.spec import hyperparameters
from trainer import data


def spread(samples: list[tuple[Path, int]], limit: int) -> list[tuple[Path, int]]:
    """Up to `limit` samples, taking from each class in turn (a sorted cut would see only the first classes)."""
    by_class: dict[int, list] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    interleaved = chain.from_iterable(zip_longest(*(by_class[k] for k in sorted(by_class))))
    return [s for s in interleaved if s is not None][:limit]


def export(out: Path, limit: int, val_fraction: float, seed: int, scratch: Path) -> dict:
    splits = data.discover(scratch, val_fraction, seed)
    split, samples = ("test", splits.test) if splits.test else ("validation", splits.validation)
    chosen = spread(samples, limit)
    for number, (path, label) in enumerate(chosen):
        folder = out / splits.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / f"{number:05d}_{path.name}")
    summary = {"split": split, "images": len(chosen), "of": len(samples), "classes": len(splits.class_names)}
    (out / "heldout.json").write_text(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    # no abbreviations: the hyperparameters that follow are the trainer's, not ours
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=200)
    args, rest = parser.parse_known_args(argv)
    try:
        hp = hyperparameters.parse(rest)
        scratch = Path(os.environ.get("TRAINER_SCRATCH", "/tmp/heldout-scratch"))
        summary = export(args.out, args.limit, hp.val_fraction, hp.seed, scratch)
    except (hyperparameters.HyperparameterError, data.DataError) as exc:
        print(f"heldout: {exc}", file=sys.stderr)
        return 1
    print(f"{summary['images']} of {summary['of']} {summary['split']} images copied to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
