#!/usr/bin/env bash
# The test command (README, .ci/run): make or refresh the test environment,
# then run the whole suite, container builds and runs included.
#   scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# .venv is rebuilt only when a requirements file changed (its hash is kept in it)
stamp=$(cat tests/requirements.txt container/requirements-*.txt | sha256sum | cut -c1-16)
if [ "$(cat .venv/.requirements-stamp 2>/dev/null)" != "$stamp" ]; then
    echo "[test] creating .venv (torch and the rest: a few minutes the first time)" >&2
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/pip install -q -r tests/requirements.txt
    .venv/bin/pip install -q --no-deps -r container/requirements-smdebug.txt
    echo "$stamp" > .venv/.requirements-stamp
fi

# a local registry for build_and_push.sh's test (Debian's package, on 127.0.0.1 only)
if ! command -v docker-registry >/dev/null; then
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry) >/tmp/test-apt.log 2>&1 \
        || { echo "[test] installing docker-registry failed, see /tmp/test-apt.log" >&2; exit 1; }
fi

source scripts/engine.sh
engine_setup
trap engine_teardown EXIT
export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python  # as in the training image (smdebug)
export SAGEMAKER_SUPPRESS_V2_WARNING=1  # SDK v2 is the project's choice
.venv/bin/python -m pytest tests "$@"
