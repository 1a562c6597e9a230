#!/usr/bin/env bash
# Build one of the project's images with the local engine (Docker or podman).
#
#   scripts/build_image.sh train            -> byoc-train:latest
#   scripts/build_image.sh serve [cpu|gpu]  -> byoc-serve:cpu / byoc-serve:gpu
# (names from container/contract/spec/images.py; BYOC_IMAGE_TAG=NAME gives byoc-train:NAME,
# byoc-serve:NAME-cpu, ... so two checkouts need not share images)
#
# Environment: BASE_IMAGE (default: see scripts/engine.sh), IMAGE_TAG (overrides
# the whole name), BAKE_WEIGHTS (train: e.g. resnet50), EXTRA_BUILD_ARGS, and for the
# CPU serving variant TORCH_CPU_INDEX (default PyTorch's CPU wheel index) or
# TORCH_CPU_WHEELS, a folder holding a torch +cpu wheel for Python 3.11 (used
# automatically when /opt/wheels has one, as on the project's CI machines,
# which cannot reach PyTorch's index).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/engine.sh

kind=${1:?usage: build_image.sh train|serve [cpu|gpu]}
variant=${2:-cpu}
engine_setup

args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
if [ "$ENGINE" = podman ]; then
    # pip inside the build trusts the host's CA bundle (a TLS proxy may sit in front of PyPI)
    args+=(--network host --layers -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro
           --build-arg PIP_CERT=/run/host-ca.crt)
fi

case "$kind" in
train)
    tag=${IMAGE_TAG:-$(PYTHONPATH=container python3 -m contract.spec.images train)}
    args+=(-f Dockerfile.train --build-arg "BAKE_WEIGHTS=${BAKE_WEIGHTS:-}")
    ;;
serve)
    tag=${IMAGE_TAG:-$(PYTHONPATH=container python3 -m contract.spec.images serve "$variant")}
    args+=(-f Dockerfile.serve --build-arg "VARIANT=$variant")
    if [ "$variant" = cpu ]; then
        wheels=${TORCH_CPU_WHEELS:-}
        if [ -z "$wheels" ] && [ -z "${TORCH_CPU_INDEX:-}" ] && ls /opt/wheels/torch-*+cpu-cp311-*.whl >/dev/null 2>&1; then
            wheels=/opt/wheels
        fi
        if [ -n "$wheels" ]; then
            # a build's -v is the only mount podman build has: it splits on ':'
            case "$wheels" in *:*) echo "TORCH_CPU_WHEELS=$wheels: a folder whose path holds no ':', please" >&2; exit 2 ;; esac
            whl=$(ls "$wheels"/torch-*+cpu-cp311-*.whl | sort -V | tail -n 1)
            version=$(basename "$whl" | cut -d- -f2)
            [ "$ENGINE" = podman ] || { echo "TORCH_CPU_WHEELS needs podman (build-time mount)" >&2; exit 1; }
            args+=(-v "$wheels:/run/torch-wheels:ro" --build-arg "TORCH_REQUIREMENT=torch==$version"
                   --build-arg TORCH_FIND_LINKS=/run/torch-wheels)
        else
            args+=(--build-arg "TORCH_INDEX_URL=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}")
        fi
    fi
    ;;
*) echo "unknown image kind: $kind (train or serve)" >&2; exit 2 ;;
esac

# the project's label (container_engine.PROJECT_LABEL): containers of these images inherit it, and the
# scripts find their containers by it
args+=(--label "$(python3 scripts/container_engine.py label)")

# shellcheck disable=SC2206
extra=(${EXTRA_BUILD_ARGS:-})
echo "[build] $ENGINE build $kind -> $tag" >&2
start=$(date +%s)
# one image build at a time on this machine (2 cores): parallel callers queue here. The lock lives in
# the user's cache, not the shared /tmp (where another user's symbolic link could stand), and is opened
# to append: nothing is ever written through it.
lock_dir=${XDG_CACHE_HOME:-$HOME/.cache}
mkdir -p "$lock_dir"
exec 9>>"$lock_dir/byoc-build.lock"
flock 9
# Enough disk for this build? A fresh machine with other images on it failed deep inside the build
# with "no space left on device"; this says how much it needs before starting (container_engine.py).
build=$kind; [ "$kind" = serve ] && build=serve-$variant
python3 scripts/container_engine.py check-space "$ENGINE" "$build" "$tag" || exit 1
"$ENGINE" build "${args[@]}" "${extra[@]}" -t "$tag" .
echo "[build] $tag built in $(( $(date +%s) - start )) s" >&2
