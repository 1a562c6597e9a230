"""build_and_push.sh against a real registry and moto's STS/ECR, all on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import pytest

import container_engine
from contract.spec import images
from helpers.training import ROOT
from localnet import free_port, wait_http

ACCOUNT = "123456789012"  # moto's default account


@pytest.fixture
def registry(engine, tmp_path):
    binary = shutil.which("docker-registry")
    assert binary, "Debian's docker-registry is needed (scripts/test.sh installs it)"
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        json.dumps(
            {  # YAML is a superset of JSON
                "version": 0.1,
                "storage": {"filesystem": {"rootdirectory": str(tmp_path / "blobs")}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/")
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
        container_engine.untag(engine.cli, f"127.0.0.1:{port}", engine.env)


@pytest.fixture
def moto():
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def aws_env(engine, moto_url: str | None, **extra) -> dict:
    env = {k: v for k, v in engine.env.items() if not k.startswith("AWS_")}
    env.update(AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", PYTHON=sys.executable, **extra)
    if moto_url:
        env.update(AWS_ENDPOINT_URL=moto_url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    return env


def build_and_push(env, *args, timeout=2400):
    return subprocess.run(
        ["bash", "build_and_push.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_push_to_a_registry_with_ecr_calls_on_moto(engine, registry, moto):
    env = aws_env(engine, moto, REGISTRY=registry, REGISTRY_INSECURE="1")
    first = build_and_push(env, "--images", "serve-cpu")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    version = (ROOT / "VERSION").read_text().strip()
    assert f"{registry}/byoc-serve-cpu:{version}" in first.stdout
    assert "repository byoc-serve-cpu created" in first.stderr

    ecr = boto3.client(
        "ecr", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    repo = ecr.describe_repositories(repositoryNames=["byoc-serve-cpu"])["repositories"][0]
    assert repo["imageScanningConfiguration"]["scanOnPush"] is True
    policy = json.loads(ecr.get_lifecycle_policy(repositoryName="byoc-serve-cpu")["lifecyclePolicyText"])
    assert policy["rules"][0]["selection"]["tagStatus"] == "untagged"

    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    with urllib.request.urlopen(f"http://{registry}/v2/byoc-serve-cpu/tags/list") as response:
        assert set(json.loads(response.read())["tags"]) == {version, commit, "latest"}
    request = urllib.request.Request(
        f"http://{registry}/v2/byoc-serve-cpu/manifests/latest",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
        },
    )
    with urllib.request.urlopen(request) as response:
        manifest = json.loads(response.read())
    local_id = subprocess.run(
        [engine.cli, "image", "inspect", "--format", "{{.Id}}", images.serve_image("cpu")],
        env=engine.env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert manifest["config"]["digest"] == f"sha256:{local_id.removeprefix('sha256:')}"  # the very image

    second = build_and_push(env, "--images", "serve-cpu")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "repository byoc-serve-cpu exists" in second.stderr


def test_dry_run_prints_the_commands(engine):
    result = build_and_push(aws_env(engine, None, AWS_ACCOUNT_ID=ACCOUNT), "--dry-run", "--images", "train")
    assert result.returncode == 0, result.stderr
    host = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"
    assert "+ bash scripts/build_image.sh train" in result.stdout
    assert f"--password-stdin {host}" in result.stdout
    assert f"push {host}/{images.train_image()}" in result.stdout


def test_one_line_reason_without_credentials(engine, tmp_path):
    env = aws_env(
        engine,
        None,
        HOME=str(tmp_path),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
    )
    result = build_and_push(env, "--images", "serve-cpu", timeout=900)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("build_and_push: no AWS credentials")


def test_one_line_reason_without_an_engine(engine, tmp_path):
    # a PATH with bash and python but neither docker nor podman, and no daemon to answer
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in (
        "bash",
        "cat",
        "git",
        "tail",
        "sed",
        "date",
        "timeout",
        "id",
        "mkdir",
        "dirname",
        "grep",
        "mktemp",
        "rm",
    ):
        os.symlink(shutil.which(tool), bin_dir / tool)
    env = aws_env(engine, None, PATH=str(bin_dir), CONTAINER_ENGINE="podman")
    result = build_and_push(env, "--no-push", "--images", "train", timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("build_and_push: no container engine"), result.stderr
