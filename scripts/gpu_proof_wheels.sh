#!/usr/bin/env bash
# The wheels a bare CUDA machine (PyTorch and its usual company, no network, no container engine)
# lacks to run scripts/gpu_proof.py: the serving image's flask, gunicorn and prometheus-client at
# container/requirements-serve.txt's pins, and the parts of flask such a machine does not have
# (werkzeug, itsdangerous, blinker), as pip resolves them for CPython 3.12 on x86-64 Linux.
# The trainer needs nothing more there (the proof runs it without smdebug and without the toolkit).
#
#     bash scripts/gpu_proof_wheels.sh [DEST]     # DEST defaults to .whl/ (git ignores it)
#
# docs/benchmarks.md ("GPU proof") has the command that carries DEST to the GPU machine.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/.whl}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
# The distributions to carry; whatever else flask and gunicorn need, the machine has (jinja2, click,
# markupsafe, packaging): carrying them too would shadow its own copies for no reason.
CARRIED="flask werkzeug itsdangerous blinker gunicorn prometheus_client"

pin() {  # the line NAME==VERSION of the serving image's requirements: the pins live there, once
    grep -iE "^$1==" "$ROOT/container/requirements-serve.txt" | cut -d' ' -f1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp" "$(pin flask)" "$(pin gunicorn)" "$(pin prometheus-client)"
rm -rf "$DEST"
mkdir -p "$DEST"
shopt -s nocaseglob
for name in $CARRIED; do
    wheels=("$tmp"/"$name"-*.whl)
    [ -e "${wheels[0]}" ] || { echo "gpu_proof_wheels: pip fetched no wheel of $name" >&2; exit 1; }
    cp "${wheels[@]}" "$DEST"/
done
ls "$DEST"
du -sh "$DEST"
