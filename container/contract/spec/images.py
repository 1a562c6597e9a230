"""The local image names: what scripts/build_image.sh tags and every local tool runs.

    byoc-train:latest               the training image
    byoc-serve:cpu, byoc-serve:gpu  the serving image's variants

BYOC_IMAGE_TAG=NAME tags them byoc-train:NAME, byoc-serve:NAME-cpu, byoc-serve:NAME-gpu instead, so
two checkouts on one machine need not overwrite each other's images.
build_image.sh asks this module (`python3 -m contract.spec.images train|serve VARIANT`).
"""

from __future__ import annotations

import os
import sys

TAG_ENV = "BYOC_IMAGE_TAG"
TRAIN_REPOSITORY = "byoc-train"
SERVE_REPOSITORY = "byoc-serve"
SERVE_VARIANTS = ("cpu", "gpu")


def _tag(environ) -> str:
    return environ.get(TAG_ENV, "").strip()


def train_image(environ=os.environ) -> str:
    return f"{TRAIN_REPOSITORY}:{_tag(environ) or 'latest'}"


def serve_image(variant: str = "cpu", environ=os.environ) -> str:
    if variant not in SERVE_VARIANTS:
        raise ValueError(f"serving variant must be one of {', '.join(SERVE_VARIANTS)}; got {variant!r}")
    tag = _tag(environ)
    return f"{SERVE_REPOSITORY}:{tag}-{variant}" if tag else f"{SERVE_REPOSITORY}:{variant}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["train"] and len(argv) == 1:
        print(train_image())
    elif argv[:1] == ["serve"] and len(argv) <= 2:
        print(serve_image(*argv[1:]))
    else:
        print("usage: python3 -m contract.spec.images train | serve [cpu|gpu]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
