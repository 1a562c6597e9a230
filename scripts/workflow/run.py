"""Workflow: the stages in order, each skipped when its inputs are unchanged, then the summary."""

from __future__ import annotations

from pathlib import Path

from contract.spec import hyperparameters, presets
from storage_url import redact

from .containers import Containers
from .serving import ServingStages
from .stages import ROOT, StageRunner, digest, tree_digest
from .tracking_server import TrackingServer, store_uri
from .training import DEMO_SPACE, TrainingStages

STAGES = ("images", "data", "tune", "train", "rules", "profile", "serve", "classify")


class Workflow(TrainingStages, ServingStages, StageRunner):
    """run_local.py's stages (training.py, serving.py) on one StageRunner and one set of Containers."""

    def __init__(self, args):
        self.containers = Containers(args.gpu, args.weights_cache)
        self.tracking: TrackingServer | None = None  # with --mlflow, while the stages run
        super().__init__(args, self.containers.env)
        # the quick settings on the sample data; for real data e.g. --hp backbone=resnet50 --hp pretrained=imagenet
        self.hps = hyperparameters.as_strings(presets.DEMO) if not args.data else {}
        try:
            self.hps.update(hyperparameters.parse_assignments(args.hp))
        except hyperparameters.HyperparameterError as exc:
            raise SystemExit(f"--hp: {exc}") from None

    def run(self) -> None:
        args = self.args
        print(f"local workflow in {self.workdir} (engine: {self.containers.cli})")
        images = self.stage(
            "images",
            tree_digest(ROOT / "container", ROOT / "Dockerfile.train", ROOT / "Dockerfile.serve") + str(args.gpu),
            self.images,
        )
        if not args.mlflow:
            return self.run_stages(images)
        if args.sagemaker_local:  # sm.py's local-mode job is given no environment, and has its own network
            print("  note: --mlflow tracks the tuning trials; the train stage through --sagemaker-local is not tracked")
        # from the training image just built; stopped and removed however the stages end
        with TrackingServer(self.containers, self.workdir) as server:
            self.containers.tracking_env = server.env()
            self.tracking = server
            self.run_stages(images)

    def run_stages(self, images: dict) -> None:
        args = self.args
        if args.data:
            data = args.data.resolve()
            self.timings["data"] = (0.0, True)
            print(f"  {'data':<9} {data}")
        else:
            data = Path(
                self.stage("data", tree_digest(ROOT / "scripts" / "make_sample_data.py"), self.sample_data)["data"]
            )
        data_fp = tree_digest(data)
        space_fp = tree_digest(Path(args.space)) if args.space and Path(args.space).is_file() else args.space
        # a run with --mlflow trains again when the last one was not tracked: its runs are then in the store
        tracked = ("mlflow",) if args.mlflow else ()
        # a shared study (--storage) is another study: the stage runs again (the password is no part of it)
        shared = (redact(args.storage), args.study_name) if args.storage else ()
        tuned = self.stage(
            "tune",
            digest(
                data_fp, images["train"], self.hps, args.trials, space_fp, tree_digest(DEMO_SPACE), *tracked, *shared
            ),
            lambda log, p: self.tune(log, p, data),
        )
        hps = {**self.hps, **tuned["best"], **presets.DEBUG}
        trained = self.stage(
            "train",
            digest(data_fp, images["train"], hps, args.sagemaker_local, *tracked),
            lambda log, p: self.train(log, p, data, hps),
        )
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
        print(
            f"  {label:<21} {trained['accuracy']:.3f} "
            f"(best epoch {trained['best_epoch']}, {trained['classes']} classes)"
        )
        print(f"  endpoint accuracy     {endpoint['accuracy']:.3f} on {endpoint['images']} held-out images")
        print(f"  p50 latency           {endpoint['p50_ms']:.1f} ms per image over HTTP")
        print(f"  rule verdicts         {', '.join(f'{k}: {v}' for k, v in rules['rules'].items())}")
        print(f"  profiler verdicts     {', '.join(f'{k}: {v}' for k, v in profile['verdicts'].items())}")
        print(f"  skipped stages        {', '.join(skipped) if skipped else 'none'}")
        if self.args.storage:
            print(f"  tuning study          {self.args.study_name} in {redact(self.args.storage)}")
        if self.tracking is not None:
            print(
                f"  MLflow                {self.tracking.url} (stopped with the workflow; the runs stay in "
                f"{self.tracking.store}: `mlflow ui --backend-store-uri {store_uri(self.tracking.store)} "
                f"--artifacts-destination {self.tracking.store / 'artifacts'}`)"
            )
        # what a user opens first comes first: the curves and the report, then the details
        for label, path in (
            ("loss curves", out / "data" / "losses.png"),
            ("evaluation report", out / "data" / "evaluation.json"),
            ("confusion matrix", out / "data" / "confusion_matrix.png"),
            ("profiler report", out / "profiler-report.html"),
            ("tuning leaderboard", self.workdir / "tuning" / "leaderboard.csv"),
            ("best params", self.workdir / "tuning" / "best_params.json"),
            ("rules summary", out / "rules.json"),
            ("debugger loss plot", out / "losses.png"),
            ("model", Path(trained["model"])),
            ("logs", self.logs),
        ):
            print(f"  {label:<21} {path}")
        timings = ", ".join(
            f"{name} {'skipped' if was_skipped else f'{seconds:.0f} s'}"
            for name, (seconds, was_skipped) in self.timings.items()
        )
        print(f"  stage times           {timings}")
