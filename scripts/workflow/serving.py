"""The stages serve and classify: one serving container on 127.0.0.1, the held-out images through it."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

from container_engine import bind, channel_mount, label_flags
from contract.spec import hyperparameters, paths
from contract.spec.media import IMAGE_TYPES
from localnet import free_port, wait_healthy

from .containers import Containers
from .stages import StageFailed, StageRunner, digest

PING_LIMIT_S = 240  # SageMaker allows 4 minutes


class ServingStages(StageRunner):
    containers: Containers  # set by run.Workflow, which combines the stages

    def heldout_images(self, log, data: Path, hps: dict, limit: int = 200) -> Path:
        """The held-out images, found by the trainer's own code (every layout, archives too), one folder per class."""
        out = self.workdir / "heldout"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        hp_args = hyperparameters.to_argv(hps)  # the split's val-fraction and seed
        # the repository's trainer code, as the tune stage runs it (/src), with the image's libraries (-P: not
        # the image's copy in its working directory)
        self.sh(
            log,
            self.containers.in_training_image(
                "env",
                "PYTHONPATH=/src/container",
                "python",
                "-P",
                "-m",
                "trainer.heldout",
                "/out",
                "--limit",
                str(limit),
                *hp_args,
                mounts=[*channel_mount(data, paths.channel(paths.TRAINING_CHANNEL)), *bind(out, "/out")],
            ),
        )
        return out

    def serve_and_classify(self, data: Path, hps: dict, model_dir: Path):
        """Two stages sharing one container: serve starts it, classify uses it; both redone together."""
        fingerprint = digest(self.state["train"]["fingerprint"], self.state["images"]["result"]["serve"])
        wanted = not self.args.stage or {"serve", "classify"} & set(self.args.stage)
        asked = bool(self.args.stage) and wanted  # asked for by name: always runs, as in stage()
        if not wanted or not asked and all(self.unchanged(name, fingerprint) for name in ("serve", "classify")):
            self.stage("serve", fingerprint, None)
            return self.stage("classify", fingerprint, None)
        name, port = f"byoc-serve-{uuid.uuid4().hex[:8]}", free_port()
        url = f"http://127.0.0.1:{port}"

        box = self.containers

        def serve(log, progress):
            self.sh(
                log,
                [
                    box.cli,
                    "run",
                    "-d",
                    "--name",
                    name,
                    *label_flags(),
                    *box.gpu_flags,
                    "-p",
                    f"127.0.0.1:{port}:8080",
                    *bind(model_dir, paths.DEFAULT_BASE_DIR / paths.MODEL_DIR, read_only=True),
                    box.serve_image,
                    "serve",
                ],
            )
            try:
                wait_healthy(url, timeout_s=PING_LIMIT_S)
            except TimeoutError:
                raise StageFailed(
                    f"the serving container did not answer /ping with 200 within {PING_LIMIT_S} s"
                ) from None
            return {"ready_after_s": round(time.monotonic() - progress.start, 1)}

        try:
            self.stage("serve", fingerprint, serve, redo=True)
            return self.stage(
                "classify",
                fingerprint,
                lambda log, p: classify_images(log, p, self.heldout_images(log, data, hps), url),
                redo=True,
            )
        finally:
            subprocess.run([box.cli, "rm", "-f", name], env=self.env, capture_output=True)


def classify_images(log, progress, test_dir: Path, url: str, limit: int = 200) -> dict:
    images = sorted(p for p in test_dir.rglob("*") if p.suffix.lower() in IMAGE_TYPES)[:limit]
    if not images:
        raise StageFailed(f"no held-out images under {test_dir}")
    latencies, correct = [], 0
    for number, path in enumerate(images, start=1):
        request = urllib.request.Request(
            f"{url}/invocations",
            data=path.read_bytes(),
            method="POST",
            headers={"Content-Type": IMAGE_TYPES[path.suffix.lower()]},
        )
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            top = json.loads(response.read())["predictions"][0]
        latencies.append((time.perf_counter() - start) * 1000)
        correct += top["label"] == path.parent.name
        log.write(f"{path.relative_to(test_dir)} -> {top['label']} ({top['probability']:.3f})\n")
        progress.update(number, len(images), "images")
    return {"images": len(images), "accuracy": correct / len(images), "p50_ms": statistics.median(latencies)}
