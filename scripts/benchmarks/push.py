#!/usr/bin/env python3
"""build_and_push.sh timings and pushed sizes, against a local registry and moto's ECR.

    .venv/bin/python scripts/bench.py push [--images train,serve-cpu] [--cold]

Starts Debian's docker-registry and moto's server on 127.0.0.1 (no AWS
account, nothing leaves the machine), runs build_and_push.sh for each image
with a warm layer cache (and, with --cold, once more after dropping the
image and its build cache), and prints the time from start to pushed images
and the pushed (compressed) size: the sum of the manifest's layer sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import container_engine
import container_path  # noqa: F401  (container/ on the import path, for contract.spec)
from contract.spec import images
from localnet import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
LOCAL_TAGS = {
    "train": images.train_image(),
    "serve-cpu": images.serve_image("cpu"),
    "serve-gpu": images.serve_image("gpu"),
}


def pushed_size(registry: str, repo: str) -> int:
    request = urllib.request.Request(
        f"http://{registry}/v2/{repo}/manifests/latest",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
        },
    )
    with urllib.request.urlopen(request) as response:
        manifest = json.loads(response.read())
    return sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="train,serve-cpu")
    parser.add_argument("--cold", action="store_true", help="also time a build with no layer cache")
    args = parser.parse_args()
    cli = container_engine.setup().cli
    registry = shutil.which("docker-registry")
    if registry is None:
        raise SystemExit("docker-registry is not installed (Debian's docker-registry package)")
    moto_bin = Path(sys.executable).parent / "moto_server"
    with tempfile.TemporaryDirectory() as tmp:
        reg_port, moto_port = free_port(), free_port()
        (Path(tmp) / "registry.yml").write_text(
            json.dumps(
                {
                    "version": 0.1,
                    "storage": {"filesystem": {"rootdirectory": f"{tmp}/blobs"}},
                    "http": {"addr": f"127.0.0.1:{reg_port}"},
                }
            )
        )
        servers = [
            subprocess.Popen(
                [registry, "serve", f"{tmp}/registry.yml"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                [str(moto_bin), "-H", "127.0.0.1", "-p", str(moto_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        try:
            wait_http(f"http://127.0.0.1:{reg_port}/v2/")
            wait_http(f"http://127.0.0.1:{moto_port}/moto-api/")
            env = dict(
                os.environ,
                AWS_REGION="us-east-1",
                AWS_ENDPOINT_URL=f"http://127.0.0.1:{moto_port}",
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                REGISTRY=f"127.0.0.1:{reg_port}",
                REGISTRY_INSECURE="1",
                PYTHON=sys.executable,
            )
            rows = []
            for image in args.images.split(","):
                runs: list[tuple[str, str | None]] = [("warm cache", None)]
                if args.cold:
                    runs.append(("cold (no layer cache)", "--no-cache"))
                for label, extra in runs:
                    run_env = dict(env, EXTRA_BUILD_ARGS=extra or "")
                    start = time.monotonic()
                    subprocess.run(
                        ["bash", "build_and_push.sh", "--images", image],
                        cwd=ROOT,
                        env=run_env,
                        check=True,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    elapsed = time.monotonic() - start
                    local = subprocess.run(
                        [cli, "image", "inspect", "--format", "{{.Size}}", LOCAL_TAGS[image]],
                        capture_output=True,
                        text=True,
                    ).stdout.strip()
                    rows.append(
                        (
                            image,
                            label,
                            elapsed,
                            int(local) / 1e6,
                            pushed_size(f"127.0.0.1:{reg_port}", f"byoc-{image}") / 1e6,
                        )
                    )
        finally:
            for server in servers:
                server.kill()
            container_engine.untag(cli, f"127.0.0.1:{reg_port}")
    print(f"\nbuild_and_push.sh, {os.cpu_count()} cores, engine {cli}, registry on 127.0.0.1")
    print("| image | build | start to pushed (s) | uncompressed (MB) | pushed, compressed (MB) |")
    print("|---|---|---|---|---|")
    for image, label, elapsed, uncompressed, pushed in rows:
        print(f"| {image} | {label} | {elapsed:.0f} | {uncompressed:,.0f} | {pushed:,.0f} |")


if __name__ == "__main__":
    main()
