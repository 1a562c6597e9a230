#!/usr/bin/env python3
"""The whole workflow on this machine, in containers, with no AWS account.

    scripts/run_local.py [--data DIR_OR_ARCHIVE] [--workdir build/local] [--hp name=value ...]
                         [--trials 4] [--stage NAME ...] [--force] [--sagemaker-local] [--gpu]
                         [--weights-cache DIR]

Stages, one line each with its time (a progress bar for trials and epochs on a terminal):
  images    build the training and serving images (layer cache reused)
  data      make the synthetic sample data set, unless --data is given
  tune      a small local tuning study (Optuna, inside the training image; --space)
  train     the final model with the best values, debugger hook and profiler on
  rules     SageMaker Debugger's rules over the training's tensors
  profile   the profiling report and the loss plot
  serve     the serving container on 127.0.0.1 (SageMaker's `serve`)
  classify  the held-out images through /invocations; p50 latency
then a summary. --data is given to every stage as SageMaker gives a channel: a
folder as the channel, an archive inside the channel folder (the trainer
unpacks it). ImageNet weights are cached on the host (--weights-cache), so they
are downloaded once. A stage whose inputs have not changed since the last run is
skipped (workdir/state.json); `--stage NAME` runs only that stage (its inputs
must exist), `--force` redoes everything. On failure, the failing stage's log
is printed. Only the Python standard library is needed on the host.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import container_engine
from localnet import free_port

ROOT = Path(__file__).resolve().parent.parent
TRAIN_IMAGE = "byoc-train:latest"
# Small and quick on the sample data; for real data pass e.g. --hp backbone=resnet50 --hp pretrained=imagenet
DEMO_HPS = {"backbone": "resnet18", "pretrained": "none", "image-size": "64", "epochs": "5",
            "batch-size": "16", "trainable-layers": "5", "lr": "0.001"}
# losses every step: the loss rules judge medians over windows of them (a run of 5 epochs has 35 steps)
DEBUG_HPS = {"debugger": "true", "debugger-collections": "losses:1,weights:10,gradients:10", "profiler": "true"}
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".bmp": "image/bmp", ".gif": "image/gif", ".tif": "image/tiff", ".tiff": "image/tiff"}
# The sample data's search: a space of our own (a JSON file, as users write them),
# narrow enough that every trial learns the toy classes in a few epochs
DEMO_SPACE = ROOT / "scripts" / "demo_space.json"
STAGES = ("images", "data", "tune", "train", "rules", "profile", "serve", "classify")
CHANNEL = "/opt/ml/input/data/training"  # where SageMaker puts the training channel
IMAGE_HUB_CACHE = "/opt/torch/hub/checkpoints"  # the training image's torch hub cache (TORCH_HOME=/opt/torch)
# passed on to the containers when set: the trainer's archive limits, its weights mirror
FORWARDED_ENV = ("TRAINER_ARCHIVE_MAX_BYTES", "TRAINER_ARCHIVE_MAX_MEMBERS", "TRAINER_ARCHIVE_MAX_DEPTH",
                 "WEIGHTS_MIRROR_URL")


def default_weights_cache() -> Path:
    """The host's own torch hub cache: weights torchvision fetched on this machine are found there too."""
    torch_home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch"
    return Path(torch_home) / "hub" / "checkpoints"


def channel_mount(data: Path, channel: str) -> str:
    """A volume for --data as SageMaker delivers a channel: a folder is the channel; an archive lies in it."""
    return f"{data}:{channel}:ro" if data.is_dir() else f"{data}:{channel}/{data.name}:ro"


class StageFailed(RuntimeError):
    pass


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tree_digest(*paths: Path) -> str:
    """Names, sizes and modification times: cheap, and any edit changes it."""
    entries = []
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        entries += [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files if "__pycache__" not in p.parts]
    return digest(entries)


class Progress:
    """The running stage's line: a bar on a terminal, nothing otherwise."""

    def __init__(self, name: str, live: bool):
        self.name, self.live, self.start = name, live, time.monotonic()

    def update(self, done: int, total: int, what: str) -> None:
        if self.live and total:
            width = 24
            bar = "#" * int(width * done / total) + "." * (width - int(width * done / total))
            print(f"\r  {self.name:<9} [{bar}] {done}/{total} {what}  {time.monotonic() - self.start:.0f} s",
                  end="", flush=True)


class Workflow:
    def __init__(self, args):
        self.args = args
        self.workdir = args.workdir.resolve()
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state_file = self.workdir / "state.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.live = sys.stdout.isatty()
        try:
            found = container_engine.setup()
        except container_engine.EngineError as exc:
            sys.exit(f"no container engine: {exc}")
        self.cli, self.env = found.cli, found.env
        self.serve_image = f"byoc-serve:{'gpu' if args.gpu else 'cpu'}"
        self.gpu_flags = (["--device", "nvidia.com/gpu=all"] if self.cli == "podman" else ["--gpus", "all"]) \
            if args.gpu else []
        self.timings: dict[str, tuple[float, bool]] = {}
        self.weights_cache = (args.weights_cache or default_weights_cache()).resolve()
        self.hps = dict(DEMO_HPS) if not args.data else {}
        for item in args.hp:
            name, sep, value = item.partition("=")
            if not sep:
                sys.exit(f"--hp takes name=value, got {item!r}")
            self.hps[name] = value

    # -- running stages ---------------------------------------------------
    def unchanged(self, name: str, fingerprint: str) -> bool:
        previous = self.state.get(name)
        return bool(previous) and previous["fingerprint"] == fingerprint and not self.args.force and \
            all(Path(p).exists() for p in previous["result"].get("outputs", []))

    def stage(self, name: str, fingerprint: str, func, redo: bool = False):
        """Run `func(log, progress)`, unless it ran before on the same inputs (or was not selected)."""
        selected = not self.args.stage or name in self.args.stage
        redo = redo or bool(self.args.stage) and selected  # a stage asked for by name always runs
        if func is None or not redo and (not selected or self.unchanged(name, fingerprint)):
            if name not in self.state:
                raise SystemExit(f"stage {name} has not run yet: run it first (without --stage)")
            self.timings[name] = (0.0, True)
            why = "inputs unchanged" if func is None or self.unchanged(name, fingerprint) else "not asked for"
            print(f"  {name:<9} skipped ({why})")
            return self.state[name]["result"]
        log_path = self.logs / f"{name}.log"
        progress = Progress(name, self.live)
        if self.live:
            print(f"  {name:<9} ...", end="", flush=True)
        with open(log_path, "w") as log:
            try:
                result = func(log, progress)
            except (StageFailed, subprocess.SubprocessError, OSError, KeyError, ValueError) as exc:
                log.flush()
                clear = "\r\033[K" if self.live else ""
                print(f"{clear}  {name:<9} FAILED after {time.monotonic() - progress.start:.0f} s: {exc}")
                print("\n".join(f"    | {line}" for line in log_path.read_text().splitlines()[-40:]))
                print(f"  full log: {log_path}")
                raise SystemExit(1)
        seconds = time.monotonic() - progress.start
        self.timings[name] = (seconds, False)
        self.state[name] = {"fingerprint": fingerprint, "result": result, "seconds": seconds}
        self.state_file.write_text(json.dumps(self.state, indent=1))
        print(f"{chr(13) + chr(27) + '[K' if self.live else ''}  {name:<9} done in {seconds:.0f} s")
        return result

    def sh(self, log, cmd: list[str], on_line=None) -> None:
        """Run `cmd`, its output to the stage log; `on_line` sees each line (progress)."""
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                                text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            if on_line:
                on_line(line)
        if proc.wait() != 0:
            raise StageFailed(f"`{' '.join(cmd[:3])} ...` exited with {proc.returncode}")

    def image_id(self, image: str) -> str:
        out = subprocess.run([self.cli, "image", "inspect", "--format", "{{.Id}}", image], env=self.env,
                             capture_output=True, text=True)
        return out.stdout.strip()

    def in_training_image(self, *args: str, mounts: list[str] = ()) -> list[str]:
        """A command run in the training image, with the repository mounted read-only at /src."""
        volumes = [item for mount in (f"{ROOT}:/src:ro", *mounts) for item in ("-v", mount)]
        return [self.cli, "run", "--rm", *self.gpu_flags, *self.trainer_flags(), *volumes, TRAIN_IMAGE, *args]

    def trainer_flags(self) -> list[str]:
        """What every trainer run gets: the host's weights cache as the image's hub cache, forwarded settings."""
        self.weights_cache.mkdir(parents=True, exist_ok=True)
        env = [item for name in FORWARDED_ENV if name in os.environ for item in ("-e", f"{name}={os.environ[name]}")]
        return ["-v", f"{self.weights_cache}:{IMAGE_HUB_CACHE}", *env]

    # -- the stages -------------------------------------------------------
    def images(self, log, progress):
        self.sh(log, ["bash", "scripts/build_image.sh", "train"])
        self.sh(log, ["bash", "scripts/build_image.sh", "serve", "gpu" if self.args.gpu else "cpu"])
        # weights baked into the image (BAKE_WEIGHTS) are copied to the host cache, mounted over them later
        self.weights_cache.mkdir(parents=True, exist_ok=True)
        self.sh(log, [self.cli, "run", "--rm", "-v", f"{self.weights_cache}:/cache", TRAIN_IMAGE, "sh", "-c",
                      f"cp -n {IMAGE_HUB_CACHE}/* /cache/ 2>/dev/null || true"])
        return {"train": self.image_id(TRAIN_IMAGE), "serve": self.image_id(self.serve_image)}

    def sample_data(self, log, progress):
        out = self.workdir / "sample-data"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        self.sh(log, self.in_training_image("python", "/src/scripts/make_sample_data.py", "/data/dogImages",
                                            mounts=[f"{out}:/data"]))
        return {"data": str(out / "dogImages"), "outputs": [str(out / "dogImages")]}

    def tune(self, log, progress, data: Path):
        out = self.workdir / "tuning"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        done = [0]

        def on_line(line):
            if re.match(r"trial \d+ (COMPLETE|PRUNED|FAIL)", line):
                done[0] += 1
                progress.update(done[0], self.args.trials, "trials")

        space_file = Path(self.args.space) if self.args.space and Path(self.args.space).is_file() else None
        if space_file is None and not self.args.space and not self.args.data:
            space_file = DEMO_SPACE
        mounts = [channel_mount(data, "/data"), f"{out}:/work"] + \
            ([f"{space_file.resolve()}:/space.json:ro"] if space_file else [])
        space = "/space.json" if space_file else (self.args.space or "seed1")
        # values searched in the space must not be fixed too
        searched = {p["name"] for p in json.loads(space_file.read_text())["parameters"]} if space_file else set()
        hps = [f"{k}={v}" for k, v in self.hps.items() if k not in searched]
        self.sh(log, self.in_training_image(
            "python", "/src/scripts/tune_local.py", "--space", space, "--data", "/data", "--workdir", "/work",
            "--trials", str(self.args.trials), "--runner", "process", *(["--hp", *hps] if hps else []),
            mounts=mounts), on_line)
        if not (out / "best_params.json").exists():
            raise StageFailed("no tuning trial finished (the trials' reasons are above)")
        best = json.loads((out / "best_params.json").read_text())
        return {"best": best, "outputs": [str(out / "best_params.json"), str(out / "leaderboard.csv")]}

    def train(self, log, progress, data: Path, hps: dict):
        opt_ml = self.workdir / "opt_ml"
        shutil.rmtree(opt_ml, ignore_errors=True)
        config = opt_ml / "input" / "config"
        config.mkdir(parents=True)
        (opt_ml / "input" / "data" / "training").mkdir(parents=True)  # the channel folder an archive is mounted in
        (config / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hps.items()}))
        (config / "inputdataconfig.json").write_text(json.dumps({"training": {"TrainingInputMode": "File"}}))
        (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
        epochs = int(hps.get("epochs", 5))

        def on_line(line):
            match = re.search(r"#metric epoch=(\d+) split=validation", line)
            if match:
                progress.update(int(match.group(1)), epochs, "epochs")

        if self.args.sagemaker_local:
            self.train_in_local_mode(log, data, hps, opt_ml, on_line)
        else:
            self.sh(log, [self.cli, "run", "--rm", *self.gpu_flags, *self.trainer_flags(), "-v", f"{opt_ml}:/opt/ml",
                          "-v", channel_mount(data, CHANNEL), TRAIN_IMAGE, "train"], on_line)
        model = json.loads((opt_ml / "model" / "model_config.json").read_text())
        training = model["training"]
        split = "test" if "test_accuracy" in training else "validation"
        return {"accuracy": training[f"{split}_accuracy"], "split": split, "best_epoch": training["best_epoch"],
                "classes": len(model["class_names"]), "model": str(opt_ml / "model"),
                "outputs": [str(opt_ml / "model" / "model.pt"), str(opt_ml / "output" / "data" / "evaluation.json")]}

    def train_in_local_mode(self, log, data: Path, hps: dict, opt_ml: Path, on_line) -> None:
        """The same job through the SageMaker SDK's local mode; its tarballs unpacked into opt_ml/."""
        sm_work = self.workdir / "sagemaker-local"
        shutil.rmtree(sm_work, ignore_errors=True)
        venv_python = ROOT / ".venv" / "bin" / "python"
        if not venv_python.exists():
            raise StageFailed("--sagemaker-local needs the SageMaker SDK: run `bash scripts/test.sh` once to make .venv")
        self.sh(log, [str(venv_python), "scripts/sm.py", "train", "--local", "--workdir", str(sm_work),
                      "--job-name", "run-local",  # SDK v3: its tarballs land in jobs/<job name>/compressed_artifacts
                      "--data", str(data), *[a for k, v in hps.items() for a in ("--hp", f"{k}={v}")]], on_line)
        for archive, target in (("model.tar.gz", "model"), ("output.tar.gz", "output")):
            with tarfile.open(sm_work / "jobs" / "run-local" / "compressed_artifacts" / archive) as tf:
                tf.extractall(opt_ml / target, filter="data")

    def rules(self, log, progress):
        opt_ml = self.workdir / "opt_ml"
        self.sh(log, self.in_training_image("python", "-m", "insights.rules", "/opt_ml/output/tensors",
                                            "--out", "/opt_ml/output/rules.json", mounts=[f"{opt_ml}:/opt_ml"]))
        summary = json.loads((opt_ml / "output" / "rules.json").read_text())["rules"]
        return {"rules": {name: r["status"] for name, r in summary.items()},
                "outputs": [str(opt_ml / "output" / "rules.json")]}

    def profile(self, log, progress):
        opt_ml = self.workdir / "opt_ml"
        self.sh(log, self.in_training_image(
            "python", "-m", "insights.profiler_report", "/opt_ml/output/profiler",
            "--out", "/opt_ml/output/profiler-report.html", "--json", "/opt_ml/output/profiler-verdicts.json",
            mounts=[f"{opt_ml}:/opt_ml"]))
        self.sh(log, self.in_training_image("python", "-m", "insights.loss_plot", "/opt_ml/output/tensors",
                                            "--out", "/opt_ml/output/losses.png", mounts=[f"{opt_ml}:/opt_ml"]))
        verdicts = json.loads((opt_ml / "output" / "profiler-verdicts.json").read_text())
        outputs = [str(opt_ml / "output" / name) for name in ("profiler-report.html", "losses.png")]
        return {"verdicts": {v["rule"]: v["status"] for v in verdicts}, "outputs": outputs}

    def heldout_images(self, log, data: Path, hps: dict, limit: int = 200) -> Path:
        """The held-out images, found by the trainer's own code (every layout, archives too), one folder per class."""
        out = self.workdir / "heldout"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        hp_args = [item for k, v in hps.items() for item in (f"--{k}", str(v))]  # the split's val-fraction and seed
        # the repository's trainer code, as the tune stage runs it (/src), with the image's libraries (-P: not
        # the image's copy in its working directory)
        self.sh(log, self.in_training_image("env", "PYTHONPATH=/src/container", "python", "-P", "-m", "trainer.heldout",
                                            "/out", "--limit", str(limit), *hp_args,
                                            mounts=[channel_mount(data, CHANNEL), f"{out}:/out"]))
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

        def serve(log, progress):
            self.sh(log, [self.cli, "run", "-d", "--name", name, *self.gpu_flags, "-p", f"127.0.0.1:{port}:8080",
                          "-v", f"{model_dir}:/opt/ml/model:ro", self.serve_image, "serve"])
            wait_for_ping(url)
            return {"ready_after_s": round(time.monotonic() - progress.start, 1)}

        try:
            self.stage("serve", fingerprint, serve, redo=True)
            return self.stage("classify", fingerprint,
                              lambda log, p: classify_images(log, p, self.heldout_images(log, data, hps), url), redo=True)
        finally:
            subprocess.run([self.cli, "rm", "-f", name], env=self.env, capture_output=True)

    def run(self) -> None:
        args = self.args
        print(f"local workflow in {self.workdir} (engine: {self.cli})")
        images = self.stage("images", tree_digest(ROOT / "container", ROOT / "Dockerfile.train",
                                                  ROOT / "Dockerfile.serve") + str(args.gpu), self.images)
        if args.data:
            data = args.data.resolve()
            self.timings["data"] = (0.0, True)
            print(f"  {'data':<9} {data}")
        else:
            data = Path(self.stage("data", tree_digest(ROOT / "scripts" / "make_sample_data.py"),
                                   self.sample_data)["data"])
        data_fp = tree_digest(data)
        space_fp = tree_digest(Path(args.space)) if args.space and Path(args.space).is_file() else args.space
        tuned = self.stage("tune", digest(data_fp, images["train"], self.hps, args.trials, space_fp,
                                          tree_digest(DEMO_SPACE)),
                           lambda log, p: self.tune(log, p, data))
        hps = {**self.hps, **tuned["best"], **DEBUG_HPS}
        trained = self.stage("train", digest(data_fp, images["train"], hps, args.sagemaker_local),
                             lambda log, p: self.train(log, p, data, hps))
        rules = self.stage("rules", self.state["train"]["fingerprint"], self.rules)
        profile = self.stage("profile", self.state["train"]["fingerprint"], self.profile)
        endpoint = self.serve_and_classify(data, hps, Path(trained["model"]))
        self.summary(tuned, trained, rules, profile, endpoint)

    def summary(self, tuned, trained, rules, profile, endpoint) -> None:
        out = self.workdir / "opt_ml" / "output"
        skipped = [name for name, (_, was_skipped) in self.timings.items() if was_skipped]
        print("\nsummary")
        print(f"  best hyperparameters  {', '.join(f'{k}={v}' for k, v in tuned['best'].items())}")
        label = f"{trained['split']} accuracy"
        print(f"  {label:<21} {trained['accuracy']:.3f} "
              f"(best epoch {trained['best_epoch']}, {trained['classes']} classes)")
        print(f"  endpoint accuracy     {endpoint['accuracy']:.3f} on {endpoint['images']} held-out images")
        print(f"  p50 latency           {endpoint['p50_ms']:.1f} ms per image over HTTP")
        print(f"  rule verdicts         {', '.join(f'{k}: {v}' for k, v in rules['rules'].items())}")
        print(f"  profiler verdicts     {', '.join(f'{k}: {v}' for k, v in profile['verdicts'].items())}")
        print(f"  skipped stages        {', '.join(skipped) if skipped else 'none'}")
        for label, path in (("model", Path(trained["model"])),
                            ("evaluation report", out / "data" / "evaluation.json"),
                            ("confusion matrix", out / "data" / "confusion_matrix.png"),
                            ("tuning leaderboard", self.workdir / "tuning" / "leaderboard.csv"),
                            ("best params", self.workdir / "tuning" / "best_params.json"),
                            ("rules summary", out / "rules.json"),
                            ("profiler report", out / "profiler-report.html"),
                            ("loss plot", out / "losses.png"),
                            ("logs", self.logs)):
            print(f"  {label:<21} {path}")
        timings = ", ".join(f"{name} {'skipped' if was_skipped else f'{seconds:.0f} s'}"
                            for name, (seconds, was_skipped) in self.timings.items())
        print(f"  stage times           {timings}")


def wait_for_ping(url: str, limit_s: float = 240) -> str:
    deadline = time.monotonic() + limit_s  # SageMaker allows 4 minutes
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise StageFailed(f"the serving container did not answer /ping with 200 within {limit_s:.0f} s")


def classify_images(log, progress, test_dir: Path, url: str, limit: int = 200) -> dict:
    images = sorted(p for p in test_dir.rglob("*") if p.suffix.lower() in IMAGE_TYPES)[:limit]
    if not images:
        raise StageFailed(f"no held-out images under {test_dir}")
    latencies, correct = [], 0
    for number, path in enumerate(images, start=1):
        request = urllib.request.Request(f"{url}/invocations", data=path.read_bytes(), method="POST",
                                         headers={"Content-Type": IMAGE_TYPES[path.suffix.lower()]})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            top = json.loads(response.read())["predictions"][0]
        latencies.append((time.perf_counter() - start) * 1000)
        correct += top["label"] == path.parent.name
        log.write(f"{path.relative_to(test_dir)} -> {top['label']} ({top['probability']:.3f})\n")
        progress.update(number, len(images), "images")
    return {"images": len(images), "accuracy": correct / len(images), "p50_ms": statistics.median(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="image folder or archive (default: make the sample data set)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "local")
    parser.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="training hyperparameter")
    parser.add_argument("--trials", type=int, default=4, help="local tuning trials")
    parser.add_argument("--space", help="search space: seed1, seed2 or a JSON file "
                                        "(default: scripts/demo_space.json on the sample data, else seed1)")
    parser.add_argument("--stage", action="append", choices=STAGES, help="run only this stage (repeatable)")
    parser.add_argument("--force", action="store_true", help="redo every stage")
    parser.add_argument("--sagemaker-local", action="store_true", help="train through SageMaker local mode")
    parser.add_argument("--gpu", action="store_true", help="GPU containers and the GPU serving image")
    parser.add_argument("--weights-cache", type=Path, help="host folder for ImageNet weight files, mounted as the "
                        "training image's torch hub cache (default: this machine's, ~/.cache/torch/hub/checkpoints)")
    args = parser.parse_args()
    if args.data and not args.data.exists():
        parser.error(f"--data {args.data} does not exist")
    Workflow(args).run()


if __name__ == "__main__":
    main()
