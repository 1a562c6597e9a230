#!/usr/bin/env bash
# Build the training and serving images and push them to Amazon ECR.
#
#   ./build_and_push.sh [--images train,serve-cpu,serve-gpu] [--no-push] [--dry-run] [--prefix byoc]
#
# Each image goes to its own ECR repository (<prefix>-train, <prefix>-serve-cpu,
# <prefix>-serve-gpu), tagged with the project version (VERSION), the git commit
# and `latest`. The repository is created when missing, with scan on push and
# a lifecycle policy that expires untagged images. Builds are for linux/amd64.
#
# Environment: AWS_REGION (else the configured region), AWS_ACCOUNT_ID (else
# STS), REGISTRY (the registry host, when not the account's ECR host, e.g. a
# mirror or a test registry), REGISTRY_INSECURE=1 (plain HTTP registry), CONTAINER_ENGINE (docker|podman, else detected), and
# what scripts/build_image.sh reads (BASE_IMAGE, BAKE_WEIGHTS, ...).
# AWS calls go through boto3 (scripts/aws_ecr.py): no AWS CLI needed.
set -euo pipefail
cd "$(dirname "$0")"

images=train,serve-cpu,serve-gpu
push=1
dry_run=0
prefix=${REPO_PREFIX:-byoc}

die() { echo "build_and_push: $*" >&2; exit 1; }
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case "$1" in
    --images) images=${2:?--images needs a value}; shift 2 ;;
    --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
    --no-push) push=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage 2 ;;
    esac
done

# --dry-run prints each command instead of running it
run() {
    if [ "$dry_run" = 1 ]; then echo "+ $*"; else "$@"; fi
}

# the last error of a step, for die's one line (mktemp: a fixed name in the shared /tmp could be
# another user's symbolic link, which this script, often root, would write through)
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT

python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
version=$(cat VERSION)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
IFS=, read -r -a wanted <<<"$images"
for name in "${wanted[@]}"; do
    case "$name" in train|serve-cpu|serve-gpu) ;; *) die "unknown image '$name' (train, serve-cpu, serve-gpu)" ;; esac
done

if [ "$dry_run" = 1 ]; then
    ENGINE=${CONTAINER_ENGINE:-docker}
else
    source scripts/engine.sh
    engine_setup 2>"$errors" \
        || die "no container engine: $(tail -n 1 "$errors")"
fi

registry=""
if [ "$push" = 1 ]; then
    region=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
    if [ "$dry_run" = 1 ]; then
        registry=${REGISTRY:-${AWS_ACCOUNT_ID:-ACCOUNT}.dkr.ecr.${region:-REGION}.amazonaws.com}
    else
        [ -n "$region" ] || region=$("$python" -c 'import boto3; print(boto3.session.Session().region_name or "")' 2>/dev/null || true)
        [ -n "$region" ] || die "no AWS region: set AWS_REGION or configure one"
        export AWS_REGION=$region AWS_DEFAULT_REGION=$region
        account=${AWS_ACCOUNT_ID:-}
        if [ -z "$account" ]; then
            account=$("$python" scripts/aws_ecr.py account 2>"$errors") \
                || die "$(tail -n 1 "$errors")"
        fi
        registry=${REGISTRY:-$account.dkr.ecr.$region.amazonaws.com}
    fi
fi

export EXTRA_BUILD_ARGS="--platform linux/amd64 ${EXTRA_BUILD_ARGS:-}"
tls=()
if [ "${REGISTRY_INSECURE:-0}" = 1 ] && [ "$ENGINE" = podman ]; then tls=(--tls-verify=false); fi
logged_in=0
uris=()
for name in "${wanted[@]}"; do
    kind=${name%%-*}
    variant=${name#serve-}
    if [ "$kind" = train ]; then variant=""; fi
    # shellcheck disable=SC2086
    local_tag=$(PYTHONPATH=container python3 -m contract.spec.images "$kind" $variant)
    start=$(date +%s)
    run bash scripts/build_image.sh "$kind" $variant \
        || die "building $name failed (the build output above says why)"
    echo "[build_and_push] $name built in $(( $(date +%s) - start )) s" >&2
    [ "$push" = 1 ] || { uris+=("$local_tag"); continue; }

    repo="$prefix-$name"
    if [ "$dry_run" = 1 ]; then
        echo "+ $python scripts/aws_ecr.py ensure-repo $repo"
    else
        "$python" scripts/aws_ecr.py ensure-repo "$repo" >/dev/null 2>"$errors" \
            || die "$(tail -n 1 "$errors")"
        echo "[build_and_push] $(tail -n 1 "$errors")" >&2
    fi
    if [ "$logged_in" = 0 ]; then
        if [ "$dry_run" = 1 ]; then
            echo "+ $python scripts/aws_ecr.py login-password | $ENGINE login --username AWS --password-stdin $registry"
        else
            "$python" scripts/aws_ecr.py login-password 2>"$errors" \
                | "$ENGINE" login "${tls[@]}" --username AWS --password-stdin "$registry" >/dev/null \
                || die "login to $registry failed: $(tail -n 1 "$errors")"
        fi
        logged_in=1
    fi
    start=$(date +%s)
    for tag in "$version" "$commit" latest; do
        run "$ENGINE" tag "$local_tag" "$registry/$repo:$tag"
        run "$ENGINE" push "${tls[@]}" "$registry/$repo:$tag" || die "pushing $registry/$repo:$tag failed"
    done
    echo "[build_and_push] $name pushed in $(( $(date +%s) - start )) s" >&2
    uris+=("$registry/$repo:$version")
done

echo "images:"
printf '  %s\n' "${uris[@]}"
