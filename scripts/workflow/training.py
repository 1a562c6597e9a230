"""The stages images, data, tune, train, rules and profile (methods of run.Workflow)."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

from container_engine import bind, channel_mount, label_flags
from contract.spec import hyperparameters, metrics, paths
from contract.spec.artifact import CONFIG_FILE, WEIGHTS_FILE, TrainingSummary
from contract.spec.search_space import TRIAL_FINISHED

from .containers import IMAGE_HUB_CACHE, Containers
from .stages import ROOT, StageFailed, StageRunner

# The sample data's search: a space of our own (a JSON file, as users write them),
# narrow enough that every trial learns the toy classes in a few epochs
DEMO_SPACE = ROOT / "scripts" / "demo_space.json"


class TrainingStages(StageRunner):
    containers: Containers  # set by run.Workflow, which combines the stages
    hps: dict[str, str]  # the hyperparameters every training run starts from

    def images(self, log, progress):
        self.sh(log, ["bash", "scripts/build_image.sh", "train"])
        box = self.containers
        self.sh(log, ["bash", "scripts/build_image.sh", "serve", box.serve_variant])
        # weights baked into the image (BAKE_WEIGHTS) are copied to the host cache, mounted over them later
        box.weights_cache.mkdir(parents=True, exist_ok=True)
        self.sh(
            log,
            [
                box.cli,
                "run",
                "--rm",
                *label_flags(),
                *bind(box.weights_cache, "/cache"),
                box.train_image,
                "sh",
                "-c",
                f"cp -n {IMAGE_HUB_CACHE}/* /cache/ 2>/dev/null || true",
            ],
        )
        return {"train": box.image_id(box.train_image), "serve": box.image_id(box.serve_image)}

    def sample_data(self, log, progress):
        out = self.workdir / "sample-data"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        self.sh(
            log,
            self.containers.in_training_image(
                "python", "/src/scripts/make_sample_data.py", "/data/dogImages", mounts=bind(out, "/data")
            ),
        )
        return {"data": str(out / "dogImages"), "outputs": [str(out / "dogImages")]}

    def tune(self, log, progress, data: Path):
        out = self.workdir / "tuning"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        done = [0]

        def on_line(line):
            if TRIAL_FINISHED.match(line):
                done[0] += 1
                progress.update(done[0], self.args.trials, "trials")

        space_file = Path(self.args.space) if self.args.space and Path(self.args.space).is_file() else None
        if space_file is None and not self.args.space and not self.args.data:
            space_file = DEMO_SPACE
        mounts = [*channel_mount(data, "/data"), *bind(out, "/work")] + (
            bind(space_file, "/space.json", read_only=True) if space_file else []
        )
        space = "/space.json" if space_file else (self.args.space or "seed1")
        # values searched in the space must not be fixed too
        searched = {p["name"] for p in json.loads(space_file.read_text())["parameters"]} if space_file else set()
        hps = [f"{k}={v}" for k, v in self.hps.items() if k not in searched]
        self.sh(
            log,
            self.containers.in_training_image(
                "python",
                "/src/scripts/tune_local.py",
                "--space",
                space,
                "--data",
                "/data",
                "--workdir",
                "/work",
                "--trials",
                str(self.args.trials),
                "--runner",
                "process",
                "--study-name",
                self.args.study_name,
                *(["--hp", *hps] if hps else []),
                mounts=mounts,
                flags=[*self.containers.tracking_flags(), *self.containers.storage_flags(self.args.storage)],
            ),
            on_line,
        )
        if not (out / "best_params.json").exists():
            raise StageFailed("no tuning trial finished (the trials' reasons are above)")
        best = json.loads((out / "best_params.json").read_text())
        return {"best": best, "outputs": [str(out / "best_params.json"), str(out / "leaderboard.csv")]}

    def train(self, log, progress, data: Path, hps: dict):
        opt_ml = self.workdir / "opt_ml"
        shutil.rmtree(opt_ml, ignore_errors=True)
        # the channel folder is made too: an archive is mounted into it
        paths.write_input_config(opt_ml, hyperparameters.as_strings(hps))
        epochs = int(hps.get("epochs", hyperparameters.DEFAULTS["epochs"]))

        def on_line(line):
            reading = metrics.read(line, "validation:loss")
            if reading and reading.epoch is not None:
                progress.update(reading.epoch, epochs, "epochs")

        if self.args.sagemaker_local:
            self.train_in_local_mode(log, data, hps, opt_ml, on_line)
        else:
            box = self.containers
            self.sh(
                log,
                [
                    box.cli,
                    "run",
                    "--rm",
                    *label_flags(),
                    *box.gpu_flags,
                    *box.trainer_flags(),
                    *box.tracking_flags("train"),
                    *bind(opt_ml, paths.DEFAULT_BASE_DIR),
                    *channel_mount(data, paths.channel(paths.TRAINING_CHANNEL)),
                    box.train_image,
                    "train",
                ],
                on_line,
            )
        model_dir = opt_ml / paths.MODEL_DIR
        model = json.loads((model_dir / CONFIG_FILE).read_text())
        training = TrainingSummary.from_dict(model["training"])
        return {
            "accuracy": training.accuracy,
            "split": training.split,
            "best_epoch": training.best_epoch,
            "classes": len(model["class_names"]),
            "model": str(model_dir),
            "outputs": [str(model_dir / WEIGHTS_FILE), str(opt_ml / paths.OUTPUT_DATA_DIR / "evaluation.json")],
        }

    def train_in_local_mode(self, log, data: Path, hps: dict, opt_ml: Path, on_line) -> None:
        """The same job through the SageMaker SDK's local mode; its tarballs unpacked into opt_ml/."""
        sm_work = self.workdir / "sagemaker-local"
        shutil.rmtree(sm_work, ignore_errors=True)
        venv_python = ROOT / ".venv" / "bin" / "python"
        if not venv_python.exists():
            raise StageFailed(
                "--sagemaker-local needs the SageMaker SDK: run `bash scripts/test.sh` once to make .venv"
            )
        self.sh(
            log,
            [
                str(venv_python),
                "scripts/sm.py",
                "train",
                "--local",
                "--workdir",
                str(sm_work),
                "--job-name",
                "run-local",  # SDK v3: its tarballs land in jobs/<job name>/compressed_artifacts
                "--data",
                str(data),
                *[a for k, v in hyperparameters.as_strings(hps).items() for a in ("--hp", f"{k}={v}")],
            ],
            on_line,
        )
        for archive, target in (("model.tar.gz", "model"), ("output.tar.gz", "output")):
            with tarfile.open(sm_work / "jobs" / "run-local" / "compressed_artifacts" / archive) as tf:
                tf.extractall(opt_ml / target, filter="data")

    def rules(self, log, progress):
        opt_ml = self.workdir / "opt_ml"
        self.sh(
            log,
            self.containers.in_training_image(
                "python",
                "-m",
                "insights.rules",
                "/opt_ml/output/tensors",
                "--out",
                "/opt_ml/output/rules.json",
                mounts=bind(opt_ml, "/opt_ml"),
            ),
        )
        summary = json.loads((opt_ml / "output" / "rules.json").read_text())["rules"]
        return {
            "rules": {name: r["status"] for name, r in summary.items()},
            "outputs": [str(opt_ml / "output" / "rules.json")],
        }

    def profile(self, log, progress):
        opt_ml = self.workdir / "opt_ml"
        self.sh(
            log,
            self.containers.in_training_image(
                "python",
                "-m",
                "insights.profiler_report",
                "/opt_ml/output/profiler",
                "--out",
                "/opt_ml/output/profiler-report.html",
                "--json",
                "/opt_ml/output/profiler-verdicts.json",
                mounts=bind(opt_ml, "/opt_ml"),
            ),
        )
        self.sh(
            log,
            self.containers.in_training_image(
                "python",
                "-m",
                "insights.loss_plot",
                "/opt_ml/output/tensors",
                "--out",
                "/opt_ml/output/losses.png",
                mounts=bind(opt_ml, "/opt_ml"),
            ),
        )
        verdicts = json.loads((opt_ml / "output" / "profiler-verdicts.json").read_text())
        outputs = [str(opt_ml / "output" / name) for name in ("profiler-report.html", "losses.png")]
        return {"verdicts": {v["rule"]: v["status"] for v in verdicts}, "outputs": outputs}
