"""The README's first command, end to end: images, data, tune, train, rules, profile, serve, classify."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

import container_engine
from helpers import postgres
from helpers.mlflow_server import mlflow_server
from helpers.training import ROOT
from launch import local_tuning
from trainer import tracking

STAGES = ("images", "data", "tune", "train", "rules", "profile", "serve", "classify")


def run_local(engine, *args, timeout=2400) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "scripts/run_local.py", *args],
        cwd=ROOT,
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, time.monotonic() - start


@pytest.fixture(scope="module")
def first_run(engine, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    before = set(container_engine.project_containers(engine.cli, env=engine.env))
    result, seconds = run_local(engine, "--workdir", str(workdir), "--trials", "3")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # the run's own containers only: another run's leftovers on the same engine are not its failure
    left = sorted(set(container_engine.project_containers(engine.cli, env=engine.env)) - before)
    assert not left, left
    return workdir, result.stdout, seconds


def test_summary_and_reports(first_run, engine):
    workdir, out, _ = first_run
    for stage in STAGES:
        assert re.search(rf"^  {stage}\s+done in \d+ s$", out, re.MULTILINE), stage
    # 4 easy classes (chance is 0.25); resnet18 trained from scratch on them reaches 0.9 and more
    assert float(re.search(r"test accuracy\s+([0-9.]+)", out).group(1)) >= 0.6
    assert float(re.search(r"endpoint accuracy\s+([0-9.]+)", out).group(1)) >= 0.6
    assert float(re.search(r"p50 latency\s+([0-9.]+) ms", out).group(1)) > 0
    assert re.search(r"best hyperparameters\s+.*lr=", out)
    rules = re.search(r"rule verdicts\s+(.*)$", out, re.MULTILINE).group(1)
    summary = json.loads((workdir / "opt_ml" / "output" / "rules.json").read_text())["rules"]
    for rule in ("VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization", "LossNotDecreasing"):
        assert f"{rule}: {summary[rule]['status']}" in rules, rule
    # the training loss falls over the run's 35 steps, each saved: judged, and judged well
    assert summary["LossNotDecreasing"]["status"] == "NoIssuesFound", summary["LossNotDecreasing"]
    assert summary["LossNotDecreasing"]["judgements"] >= 2
    # Overfit and Overtraining judge validation passes' mean losses (tests/process/test_rules.py and
    # tests/unit/test_insights.py hold their cases): the first pass's gap alone is no Overfit
    assert summary["Overfit"]["judgements"] >= 1, summary["Overfit"]
    profiler = re.search(r"profiler verdicts\s+(.*)$", out, re.MULTILINE).group(1)
    assert re.search(r"CPUBottleneck: (IssuesFound|NoIssuesFound)", profiler)
    named = re.findall(
        r"^  (loss curves|evaluation report|confusion matrix|profiler report|tuning leaderboard|best params|"
        r"rules summary|debugger loss plot|model|logs)\s+(\S+)$",
        out,
        re.MULTILINE,
    )
    assert [label for label, _ in named][:2] == ["loss curves", "evaluation report"]  # what to open first
    assert len(named) == 10
    for label, path in named:
        path = Path(path)
        assert path.exists(), label
        assert path.is_dir() and any(path.iterdir()) or path.stat().st_size > 0, label


def test_second_run_skips_every_stage(first_run, engine):
    workdir, _, first_seconds = first_run
    result, seconds = run_local(engine, "--workdir", str(workdir), "--trials", "3")
    assert result.returncode == 0, result.stdout[-3000:]
    for stage in STAGES:
        assert re.search(rf"^  {stage}\s+skipped \(inputs unchanged\)$", result.stdout, re.MULTILINE), stage
    assert "skipped stages        " + ", ".join(STAGES) in result.stdout
    assert seconds < first_seconds / 5


def test_one_stage_alone(first_run, engine):
    workdir, _, _ = first_run
    result, _ = run_local(engine, "--workdir", str(workdir), "--trials", "3", "--stage", "rules")
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"^  rules\s+done in \d+ s$", result.stdout, re.MULTILINE)
    assert re.search(r"^  train\s+skipped", result.stdout, re.MULTILINE)


def test_train_stage_through_sagemaker_local_mode(first_run, engine):
    # --sagemaker-local: the same train stage as a SageMaker SDK v3 local-mode job on the training image
    workdir, _, _ = first_run
    model = workdir / "opt_ml" / "model" / "model.pt"
    before = model.stat().st_mtime
    result, _ = run_local(engine, "--workdir", str(workdir), "--trials", "3", "--stage", "train", "--sagemaker-local")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"^  train\s+done in \d+ s$", result.stdout, re.MULTILINE), result.stdout[-3000:]
    assert model.stat().st_mtime > before  # unpacked from the job's compressed_artifacts/model.tar.gz
    config = json.loads((workdir / "opt_ml" / "model" / "model_config.json").read_text())
    assert config["training"]["test_accuracy"] >= 0.6
    assert (workdir / "sagemaker-local" / "jobs" / "run-local" / "compressed_artifacts" / "model.tar.gz").is_file()


def test_a_failing_stage_stops_the_run(engine, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    result, _ = run_local(engine, "--workdir", str(tmp_path / "w"), "--data", str(empty), "--trials", "2")
    assert result.returncode != 0
    assert re.search(r"^  tune\s+FAILED", result.stdout, re.MULTILINE), result.stdout[-3000:]
    assert "no images found in training data" in result.stdout
    assert "summary" not in result.stdout


def test_mlflow_tracks_the_tuning_and_the_training(engine, tmp_path, containers_left_by_this_test):
    """--mlflow: a real server for the run; afterwards its store is read back through MLflow's client."""
    from mlflow import MlflowClient

    workdir = tmp_path / "w"
    result, _ = run_local(engine, "--workdir", str(workdir), "--trials", "2", "--hp", "epochs=2", "--mlflow")
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]
    url = re.search(r"^  MLflow\s+(http://127\.0\.0\.1:\d+) ", out, re.MULTILINE).group(1)
    assert not containers_left_by_this_test()  # the server stopped and removed with the workflow
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=5)
    data = workdir / "opt_ml" / "output" / "data"
    with mlflow_server(workdir / "mlflow") as again:
        client = MlflowClient(again)
        experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
        runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
        # the tune stage: the study's run, a child run per trial
        study = runs[local_tuning.STUDY_NAME]
        assert study.info.status == "FINISHED"
        children = [run for run in runs.values() if run.data.tags.get("mlflow.parentRunId") == study.info.run_id]
        assert sorted(run.info.run_name for run in children) == ["0", "1"]
        assert {"tuning/tuning-report.html", "tuning/leaderboard.csv"} <= {
            item.path for item in client.list_artifacts(study.info.run_id, "tuning")
        }
        # the train stage: its parameters, every step's loss, each epoch's validation, the test score, artifacts
        train = runs["train"]
        run_id = train.info.run_id
        assert train.info.status == "FINISHED"
        assert train.data.params["epochs"] == "2" and "lr" in train.data.params
        steps = [
            r for r in map(json.loads, (data / tracking.SCALARS_FILE).read_text().splitlines()) if r["kind"] == "step"
        ]
        history = sorted(client.get_metric_history(run_id, "train:step_loss"), key=lambda m: m.step)
        assert [m.step for m in history] == [r["step"] for r in steps] and len(history) >= 10
        assert [m.value for m in history] == pytest.approx([r["loss"] for r in steps])
        for name in ("validation:loss", "validation:accuracy"):
            assert sorted(m.step for m in client.get_metric_history(run_id, name)) == [1, 2], name
        evaluation = json.loads((data / "evaluation.json").read_text())
        assert train.data.metrics[f"{evaluation['split']}:accuracy"] == pytest.approx(evaluation["accuracy"], abs=1e-4)
        artifacts = {
            item.path
            for folder in ("evaluation", "model", "profiler")
            for item in client.list_artifacts(run_id, folder)
        }
        assert {
            "evaluation/evaluation.json",
            "evaluation/confusion_matrix.png",
            "model/model.pt",
            "profiler/profiler-report.html",
        } <= artifacts


def test_tune_stage_in_the_image_shares_a_postgresql_study(first_run, engine):
    """--storage: the tuner in the training image reaches a real PostgreSQL on the host's 127.0.0.1 (psycopg
    in the image, the URL handed over by name only) and its trials land in the shared study."""
    problem = postgres.available()
    assert problem is None, problem
    workdir, _, _ = first_run
    with postgres.postgres_server() as pg:
        args = ("--workdir", str(workdir), "--trials", "2", "--stage", "tune", "--storage", pg.url())
        result, _ = run_local(engine, *args, "--study-name", "from-the-image")
        out = result.stdout + result.stderr
        assert result.returncode == 0, out[-4000:]
        assert re.search(r"^  tune\s+done in \d+ s$", result.stdout, re.MULTILINE), out[-3000:]
        assert postgres.PASSWORD not in out  # printed redacted, handed to the container by name
        study = optuna.load_study(study_name="from-the-image", storage=pg.url())
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(done) == 2, [t.state for t in study.trials]
