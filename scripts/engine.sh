# Container engine set-up, sourced by every script that builds or runs images:
#   source scripts/engine.sh && engine_setup
# Afterwards:
#   ENGINE       docker | podman   (the CLI used for build/run/inspect)
#   DOCKER_HOST  set when podman serves the Docker API (SageMaker local mode and
#                docker-compose talk to it through the docker SDK)
#   BASE_IMAGE   the base every Dockerfile is built FROM (a local debootstrap
#                image when no registry can be pulled from)
#
# Docker is used where a daemon answers. Otherwise podman is set up (rootful,
# runc, a Docker-compatible API socket), which is what this project's CI
# machines have. The podman service started here is left running for the
# session; engine_teardown stops it again if this shell started it.

ENGINE_SOCKET=${ENGINE_SOCKET:-/run/podman/podman.sock}
LOCAL_BASE_IMAGE=${LOCAL_BASE_IMAGE:-localhost/byoc-base:bookworm}
_ENGINE_STARTED_SERVICE=""

_engine_log() { echo "[engine] $*" >&2; }

_docker_answers() { timeout 10 docker info >/dev/null 2>&1; }

# True when the Docker API that answers is podman's (DOCKER_HOST set by an
# earlier engine_setup): then the podman CLI is used, which can mount the CA
# bundle and wheel folders into builds.
_answering_engine_is_podman() {
    timeout 10 docker version --format '{{range .Server.Components}}{{.Name}};{{end}}' 2>/dev/null | grep -q Podman
}

_podman_install() {
    command -v podman >/dev/null && command -v runc >/dev/null \
        && command -v debootstrap >/dev/null && command -v docker-compose >/dev/null && return 0
    if [ "$(id -u)" != 0 ]; then
        _engine_log "podman, runc, debootstrap and docker-compose are needed; install them as root"
        return 1
    fi
    _engine_log "installing podman, runc, debootstrap, docker-compose (apt)"
    # logs through mktemp: a fixed name in the shared /tmp could be another user's symbolic link,
    # which root would write through
    local log
    log=$(mktemp --tmpdir engine-apt.XXXXXX)
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        podman runc debootstrap docker-compose uidmap) >"$log" 2>&1 \
        || { _engine_log "apt-get failed, see $log"; return 1; }
    rm -f "$log"
}

_podman_configure() {
    # crun fails on these machines; runc works. Low default ulimits keep the
    # sagemaker-training toolkit and gunicorn from tripping over huge nofile.
    local conf=/etc/containers/containers.conf
    if [ "$(id -u)" = 0 ] && ! grep -q '^runtime *= *"runc"' "$conf" 2>/dev/null; then
        mkdir -p /etc/containers
        cat >"$conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
EOF
    fi
}

_podman_service() {
    export DOCKER_HOST="unix://$ENGINE_SOCKET"
    _docker_answers && return 0
    mkdir -p "$(dirname "$ENGINE_SOCKET")"
    local log
    log=$(mktemp --tmpdir podman-service.XXXXXX)  # kept: the service writes to it as long as it runs
    # setsid: the service must outlive the shell that started it (CI steps). Started in /: it may
    # outlive the checkout it was started from too, and with its working folder deleted podman
    # fails every later container attach ("preparing container for attach: write child: broken pipe").
    (cd / && exec setsid podman system service --time=0 "unix://$ENGINE_SOCKET" \
        >"$log" 2>&1 </dev/null) &
    _ENGINE_STARTED_SERVICE=$!
    local i
    for i in $(seq 1 50); do _docker_answers && return 0; sleep 0.2; done
    _engine_log "podman API service did not answer on $ENGINE_SOCKET (see $log)"
    return 1
}

_local_base_image() {
    # No registry can be pulled from here, so the base is made from Debian's
    # packages once and then reused from podman's storage.
    if podman image exists "$LOCAL_BASE_IMAGE"; then return 0; fi
    _engine_log "building base image $LOCAL_BASE_IMAGE with debootstrap (once)"
    local dir log
    dir=$(mktemp -d /tmp/byoc-rootfs.XXXXXX)
    log=$(mktemp --tmpdir debootstrap.XXXXXX)
    debootstrap --variant=minbase bookworm "$dir" >"$log" 2>&1 \
        || { _engine_log "debootstrap failed, see $log"; rm -rf "$dir"; return 1; }
    tar -C "$dir" -c . | podman import - "$LOCAL_BASE_IMAGE" >/dev/null
    rm -rf "$dir" "$log"
}

engine_setup() {
    if [ -z "${CONTAINER_ENGINE:-}" ] && _docker_answers && ! _answering_engine_is_podman; then
        ENGINE=docker
    elif [ "${CONTAINER_ENGINE:-podman}" = docker ]; then
        _engine_log "CONTAINER_ENGINE=docker but no Docker daemon answers"; return 1
    else
        ENGINE=podman
        _podman_install && _podman_configure && _podman_service || return 1
    fi
    export ENGINE
    if [ -z "${BASE_IMAGE:-}" ]; then
        if [ "$ENGINE" = podman ]; then
            _local_base_image || return 1
            BASE_IMAGE=$LOCAL_BASE_IMAGE
        else
            BASE_IMAGE=debian:bookworm-slim
        fi
    fi
    export BASE_IMAGE
    _engine_log "engine=$ENGINE base=$BASE_IMAGE ${DOCKER_HOST:+docker_host=$DOCKER_HOST}"
}

engine_teardown() {
    if [ -n "$_ENGINE_STARTED_SERVICE" ]; then
        kill "$_ENGINE_STARTED_SERVICE" 2>/dev/null || true
        _ENGINE_STARTED_SERVICE=""
    fi
}
