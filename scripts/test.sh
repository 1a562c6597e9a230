#!/usr/bin/env bash
# The test command (README, .ci/run): make or refresh the test environment,
# then run the whole suite, container builds and runs included.
#   scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# The test environment lives outside the clone, keyed by the requirements'
# hash, so fresh clones (CI) reuse it; .venv links to it. Older ones are removed.
stamp=$(cat tests/requirements.txt container/requirements-*.txt | sha256sum | cut -c1-16)
cache=${BYOC_VENV_CACHE:-$HOME/.cache/byoc-venv}
venv=$cache/$stamp
if [ ! -f "$venv/.complete" ]; then
    echo "[test] creating the test environment in $venv (torch and the rest: a few minutes the first time)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    { "$venv/bin/pip" install -q -r tests/requirements.txt \
        && "$venv/bin/pip" install -q --no-deps -r container/requirements-smdebug.txt; } >/tmp/test-venv.log 2>&1 \
        || { tail -n 30 /tmp/test-venv.log >&2; echo "[test] making the test environment failed" >&2; exit 1; }
    touch "$venv/.complete"
fi
find "$cache" -mindepth 1 -maxdepth 1 ! -name "$stamp" -exec rm -rf {} + 2>/dev/null || true
if [ "$(readlink .venv 2>/dev/null)" != "$venv" ]; then
    rm -rf .venv
    ln -s "$venv" .venv
fi

# Debian's packages the tests need: a local registry for build_and_push.sh's test (on 127.0.0.1 only),
# and jemalloc, which the server preloads as the serving image does (tests/test_server.py's soak)
if ! command -v docker-registry >/dev/null || ! dpkg -s libjemalloc2 >/dev/null 2>&1; then
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry libjemalloc2) >/tmp/test-apt.log 2>&1 \
        || { echo "[test] installing docker-registry and libjemalloc2 failed, see /tmp/test-apt.log" >&2; exit 1; }
fi

source scripts/engine.sh
engine_setup
trap engine_teardown EXIT
export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python  # as in the training image (smdebug)
export SAGEMAKER_SUPPRESS_V2_WARNING=1  # SDK v2 is the project's choice
# all of tests/ unless the arguments name tests themselves (e.g. tests/test_trainer.py::test_x)
paths=(tests)
for arg in "$@"; do [[ $arg == tests/* ]] && paths=(); done
.venv/bin/python -m pytest "${paths[@]}" "$@"
