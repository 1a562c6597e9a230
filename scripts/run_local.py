#!/usr/bin/env python3
"""The whole workflow on this machine, in containers, with no AWS account.

    scripts/run_local.py [--data DIR_OR_ARCHIVE] [--workdir build/local] [--hp name=value ...]

Stages (one line each, with its time; the failing stage's log is printed):
  images    build the training and serving images (layer cache reused)
  data      make the synthetic sample data set, unless --data is given
  train     `IMAGE train` on a SageMaker-style /opt/ml tree
  serve     `IMAGE serve` with the model mounted at /opt/ml/model, on 127.0.0.1
  classify  send the held-out test images to /invocations
and a summary: test accuracy, endpoint accuracy, p50 latency, where the files are.
Only the Python standard library is needed on the host.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN_IMAGE, SERVE_IMAGE = "byoc-train:latest", "byoc-serve:cpu"
# Small and quick on the sample data; for real data pass e.g. --hp backbone=resnet50 --hp pretrained=imagenet
DEMO_HPS = {"backbone": "resnet18", "pretrained": "none", "image-size": "64", "epochs": "5",
            "batch-size": "16", "trainable-layers": "5", "lr": "0.001"}
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


class StageFailed(RuntimeError):
    pass


class Stages:
    def __init__(self, workdir: Path):
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}

    def run(self, name: str, func, *args):
        log_path = self.logs / f"{name}.log"
        live = sys.stdout.isatty()  # a "running" line, overwritten when done
        if live:
            print(f"  {name:<9} ...", end="", flush=True)
        start = time.monotonic()
        with open(log_path, "w") as log:
            try:
                result = func(log, *args)
            except (StageFailed, subprocess.SubprocessError, OSError) as exc:
                print(f"{chr(13) if live else ''}  {name:<9} FAILED after {time.monotonic() - start:.0f} s: {exc}")
                log.flush()
                tail = log_path.read_text().splitlines()[-40:]
                print("\n".join(f"    | {line}" for line in tail))
                print(f"  full log: {log_path}")
                raise SystemExit(1)
        self.timings[name] = time.monotonic() - start
        print(f"{chr(13) if live else ''}  {name:<9} done in {self.timings[name]:.0f} s")
        return result


def engine_env() -> tuple[str, dict]:
    out = subprocess.run(["bash", "-c", "source scripts/engine.sh && engine_setup && echo \"$ENGINE\" && "
                          "echo \"${DOCKER_HOST:-}\""], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"no container engine: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else '?'}")
    cli, docker_host = out.stdout.split("\n")[:2]
    env = dict(os.environ)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    return cli, env


def sh(log, cmd: list[str], env=None, **kwargs) -> subprocess.CompletedProcess:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, **kwargs)
    if result.returncode != 0:
        raise StageFailed(f"`{' '.join(cmd[:3])} ...` exited with {result.returncode}")
    return result


def stage_images(log, env):
    sh(log, ["bash", "scripts/build_image.sh", "train"], env)
    sh(log, ["bash", "scripts/build_image.sh", "serve", "cpu"], env)


def stage_data(log, cli, env, workdir: Path) -> Path:
    data = workdir / "sample-data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    sh(log, [cli, "run", "--rm", "-v", f"{ROOT / 'scripts'}:/scripts:ro", "-v", f"{data}:/data", TRAIN_IMAGE,
             "python", "/scripts/make_sample_data.py", "/data/dogImages"], env)
    return data / "dogImages"


def stage_train(log, cli, env, workdir: Path, data: Path, hps: dict) -> dict:
    opt_ml = workdir / "opt_ml"
    if opt_ml.exists():
        shutil.rmtree(opt_ml)
    config = opt_ml / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    (config / "inputdataconfig.json").write_text(json.dumps({"training": {"TrainingInputMode": "File"}}))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    mount = f"{data.resolve()}:/opt/ml/input/data/training:ro"
    sh(log, [cli, "run", "--rm", "-v", f"{opt_ml}:/opt/ml", "-v", mount, TRAIN_IMAGE, "train"], env)
    return json.loads((opt_ml / "model" / "model_config.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_serve(log, cli, env, workdir: Path) -> tuple[str, str]:
    name, port = f"byoc-serve-{uuid.uuid4().hex[:8]}", free_port()
    sh(log, [cli, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
             "-v", f"{workdir / 'opt_ml' / 'model'}:/opt/ml/model:ro", SERVE_IMAGE, "serve"], env)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 240  # SageMaker allows 4 minutes
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return name, url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise StageFailed("the serving container did not answer /ping with 200 within 240 s")


def stage_classify(log, data: Path, url: str, class_names: list[str]) -> dict:
    test_dir = next((data / name for name in ("test", "valid") if (data / name).is_dir()), data)
    images = sorted(p for p in test_dir.rglob("*") if p.suffix.lower() in IMAGE_TYPES)[:200]
    latencies, correct = [], 0
    for path in images:
        request = urllib.request.Request(f"{url}/invocations", data=path.read_bytes(), method="POST",
                                         headers={"Content-Type": IMAGE_TYPES[path.suffix.lower()]})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            top = json.loads(response.read())["predictions"][0]
        latencies.append((time.perf_counter() - start) * 1000)
        correct += top["label"] == path.parent.name
        log.write(f"{path.relative_to(data)} -> {top['label']} ({top['probability']:.3f})\n")
    if not images:
        raise StageFailed(f"no test images under {test_dir}")
    return {"images": len(images), "accuracy": correct / len(images), "p50_ms": statistics.median(latencies)}


def parse_hps(items: list[str]) -> dict:
    hps = dict(DEMO_HPS)
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--hp takes name=value, got {item!r}")
        hps[name] = value
    return hps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="image folder or archive (default: make the sample data set)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "local")
    parser.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="training hyperparameter")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    hps = parse_hps(args.hp)
    cli, env = engine_env()
    stages = Stages(workdir)
    print(f"local workflow in {workdir} (engine: {cli})")
    stages.run("images", stage_images, env)
    data = args.data.resolve() if args.data else stages.run("data", stage_data, cli, env, workdir)
    config = stages.run("train", stage_train, cli, env, workdir, data, hps)
    name, url = stages.run("serve", stage_serve, cli, env, workdir)
    try:
        endpoint = stages.run("classify", stage_classify, data, url, config["class_names"])
    finally:
        subprocess.run([cli, "rm", "-f", name], env=env, capture_output=True)
    training = config["training"]
    split = "test" if "test_accuracy" in training else "validation"
    print(f"\nsummary\n  classes            {len(config['class_names'])}\n"
          f"  {split} accuracy      {training[f'{split}_accuracy']:.3f} (trainer, best epoch {training['best_epoch']})\n"
          f"  endpoint accuracy  {endpoint['accuracy']:.3f} on {endpoint['images']} images\n"
          f"  p50 latency        {endpoint['p50_ms']:.1f} ms per image over HTTP\n"
          f"  model              {workdir / 'opt_ml' / 'model'}\n"
          f"  evaluation report  {workdir / 'opt_ml' / 'output' / 'data' / 'evaluation.json'}\n"
          f"  confusion matrix   {workdir / 'opt_ml' / 'output' / 'data' / 'confusion_matrix.png'}\n"
          f"  logs               {stages.logs}")


if __name__ == "__main__":
    main()
