#!/usr/bin/env bash
# The test command (README, .ci/run): make or refresh the test environment,
# then run the whole suite, container builds and runs included.
#   scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# The test environments live outside the clone, keyed by their requirements'
# hash, so fresh clones (CI) reuse them; .venv and .venv-sdk-v2 link to them. Older ones are removed.
cache=${BYOC_VENV_CACHE:-$HOME/.cache/byoc-venv}
keep=()
# make_venv LINK EXTRA_PIP_STEP REQUIREMENTS...: the environment for these requirement files
make_venv() {
    local link=$1 extra=$2; shift 2
    local stamp venv
    stamp=$(cat "$@" | sha256sum | cut -c1-16)
    venv=$cache/$stamp
    keep+=("$stamp")
    if [ ! -f "$venv/.complete" ]; then
        echo "[test] creating the environment $link in $venv (a few minutes the first time)" >&2
        rm -rf "$venv"
        python3 -m venv "$venv"
        # logs through mktemp: a fixed name in the shared /tmp could be another user's symbolic link,
        # which this script (often root) would write through
        local log
        log=$(mktemp --tmpdir "test-venv-$stamp.XXXXXX")
        { "$venv/bin/pip" install -q -r "$1" && { [ -z "$extra" ] || "$venv/bin/pip" install -q $extra; }; } \
            >"$log" 2>&1 \
            || { tail -n 30 "$log" >&2; echo "[test] making $link failed, see $log" >&2; exit 1; }
        rm -f "$log"
        touch "$venv/.complete"
    fi
    if [ "$(readlink "$link" 2>/dev/null)" != "$venv" ]; then
        rm -rf "$link"
        ln -s "$venv" "$link"
    fi
}
# One test.sh at a time makes or removes environments (two checkouts starting at once would
# otherwise build into, and delete, the same folder)
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
# the main one (SDK v3, torch, the images' pins, smdebug without its stale protobuf pin)
make_venv .venv "--no-deps -r container/requirements-smdebug.txt" \
    tests/requirements.txt container/requirements-*.txt
# SDK v2, kept until its end of support: `sagemaker` cannot be v2 and v3 in one environment;
# smdebug too (the v2 path builds Debugger rules from insights/rules.py)
make_venv .venv-sdk-v2 "--no-deps -r container/requirements-smdebug.txt" \
    tests/requirements-sdk-v2.txt container/requirements-smdebug.txt
for dir in "$cache"/*; do
    [[ " ${keep[*]} " == *" $(basename "$dir") "* ]] || rm -rf "$dir"
done
flock -u 9

# Debian's packages the tests need: a local registry for build_and_push.sh's test (on 127.0.0.1 only),
# jemalloc, which the server preloads as the serving image does (tests/process/test_server.py's soak),
# and PostgreSQL's server programs for the shared tuning study (tests/process/test_shared_tuning.py
# starts its own server on 127.0.0.1)
if ! command -v docker-registry >/dev/null || ! dpkg -s libjemalloc2 >/dev/null 2>&1 \
    || ! dpkg -s postgresql-15 >/dev/null 2>&1; then
    apt_log=$(mktemp --tmpdir test-apt.XXXXXX)
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry libjemalloc2 \
        postgresql-15) >"$apt_log" 2>&1 \
        || { echo "[test] installing docker-registry, libjemalloc2 and postgresql-15 failed, see $apt_log" >&2; exit 1; }
    rm -f "$apt_log"
fi

source scripts/engine.sh
engine_setup
trap engine_teardown EXIT
export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python  # as in the training image (smdebug)
# all of tests/ unless the arguments name tests themselves (e.g. tests/process/test_trainer.py::test_x)
paths=(tests)
for arg in "$@"; do [[ $arg == tests/* ]] && paths=(); done
# SDK v3 (the default) in .venv; then the v2 path's test files (marked sdk_v2) in .venv-sdk-v2,
# which has no torch: only files that hold sdk_v2 tests are collected there.
# (pytest's 5, "no tests collected", is no failure: the arguments named no test of that kind)
v2_paths=()
for file in $(grep -rl --include="test_*.py" "pytest.mark.sdk_v2" tests); do
    if [ ${#paths[@]} -gt 0 ]; then v2_paths+=("$file"); fi
    for arg in "$@"; do [[ $arg == "$file"* ]] && v2_paths+=("$arg"); done
done
status=0
.venv/bin/python -m pytest -m "not sdk_v2" "${paths[@]}" "$@" || { rc=$?; [ $rc -eq 5 ] || status=$rc; }
if [ ${#v2_paths[@]} -gt 0 ]; then
    v2_args=()
    for arg in "$@"; do [[ $arg == tests/* ]] || v2_args+=("$arg"); done
    SAGEMAKER_SUPPRESS_V2_WARNING=1 .venv-sdk-v2/bin/python -m pytest -m sdk_v2 "${v2_paths[@]}" "${v2_args[@]}" \
        || { rc=$?; [ $rc -eq 5 ] || status=$rc; }
fi
exit $status
