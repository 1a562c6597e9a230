"""Local tuning with Optuna (scripts/tune_local.py, scripts/launch/local_tuning.py) on the sample data.

Trials are tiny (resnet18 with a frozen, randomly initialised backbone, 64 px,
2 epochs of 4 steps): a few seconds each, yet their validation losses differ
with the learning rate, which is what the sampler and the pruner need.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import proctree
from contract.spec import hyperparameters, metrics, search_space
from helpers.mlflow_server import mlflow_server
from helpers.training import ROOT, TRAINER_SCRIPT, build_image
from helpers.tuning import HOPELESS_LR, SPACE, TINY
from launch import local_tuning
from localnet import free_port
from trainer import tracking

DIVERGING_LR = 1e30  # the trainer stops with 'loss became nan' (or inf: which comes first depends on the CPU)


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(SPACE))
    return path


def quiet(line: str) -> None:
    print(line)


def study_of(workdir: Path) -> optuna.Study:
    return optuna.load_study(study_name=local_tuning.STUDY_NAME, storage=f"sqlite:///{workdir / 'study.db'}")


def last_validation_loss(log: Path) -> float:
    return metrics.parse_log(log.read_text())["validation:loss"][-1]


# -- units: no training -------------------------------------------------------------


def test_grid_discretises_ranges():
    p = search_space.Parameter
    assert local_tuning.grid_values(p("batch-size", "categorical", values=(64, 128))) == [64, 128]
    assert local_tuning.grid_values(p("batch-size", "integer", 32, 128)) == [32, 80, 128]
    assert local_tuning.grid_values(p("lr", "continuous", 1e-3, 1e-1, scaling="log")) == [0.001, 0.01, 0.1]
    assert local_tuning.grid_values(p("dropout", "continuous", 0.0, 0.5), points=5) == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert local_tuning.grid_values(p("patience", "integer", 1, 2), points=4) == [1, 2]  # rounded, de-duplicated
    assert local_tuning.grid_size(search_space.PRESETS["seed2"]) == 3 * 3 * 3 * 2


def test_parallel_is_bounded_by_gpus_or_cores():
    assert local_tuning.default_parallel(None, gpus=0, cores=2) == 1
    assert local_tuning.default_parallel(None, gpus=0, cores=16) == 8
    assert local_tuning.default_parallel(3, gpus=0, cores=16) == 3
    assert local_tuning.default_parallel(8, gpus=2, cores=16) == 2
    assert local_tuning.default_parallel(None, gpus=4, cores=8) == 4
    for parallel, gpus, cores in ((1, [], 2), (8, [], 16), (2, ["0", "1"], 16)):
        slots = local_tuning.make_slots(parallel, gpus, cores)
        assert len(slots) == parallel and all(s.threads >= 1 for s in slots)
        assert sum(s.threads + s.workers for s in slots) <= cores  # no oversubscription
    assert [s.gpu for s in local_tuning.make_slots(2, ["0", "1"], 16)] == ["0", "1"]


def test_overrides_pin_searched_names_and_are_checked():
    space, fixed = local_tuning._space_with_overrides(search_space.PRESETS["seed1"], {"lr": 0.01, "epochs": 3}, quiet)
    assert [p.name for p in space.parameters] == ["batch-size"]
    assert fixed == {"optimizer": "adamw", "epochs": 3, "lr": 0.01}
    with pytest.raises(local_tuning.TuningError, match="unknown hyperparameter 'learning-rate'"):
        local_tuning._space_with_overrides(search_space.PRESETS["seed1"], {"learning-rate": 0.1}, quiet)
    with pytest.raises(local_tuning.TuningError, match="batch-size"):
        local_tuning._space_with_overrides(search_space.PRESETS["seed1"], {"batch-size": -1}, quiet)
    assert local_tuning.parse_overrides(["epochs=3", "lr=1e-3", "head=256,128"]) == {
        "epochs": 3,
        "lr": 0.001,
        "head": "256,128",
    }


# -- studies ---------------------------------------------------------------------------


def test_study_prunes_hopeless_trials_and_writes_results(sample_data, space_file, tmp_path):
    workdir = tmp_path / "study"
    first = local_tuning.run_study(str(space_file), sample_data, workdir, 2, fixed_overrides=TINY, log=quiet)
    assert first.count("COMPLETE") == 2, first.markdown()
    # a baseline exists: now a hopeless and a diverging learning rate, then one more sampled trial
    result = local_tuning.run_study(
        str(space_file),
        sample_data,
        workdir,
        5,
        fixed_overrides=TINY,
        log=quiet,
        enqueue=[{"lr": HOPELESS_LR}, {"lr": DIVERGING_LR}],
    )
    print(result.markdown())
    by_number = {row.number: row for row in result.rows}
    assert sorted(by_number) == [0, 1, 2, 3, 4]
    hopeless, diverging = by_number[2], by_number[3]
    assert hopeless.params["lr"] == HOPELESS_LR and hopeless.state == "PRUNED", result.markdown()
    assert hopeless.note.startswith("pruned at epoch 1") and hopeless.epochs == 1
    assert "stopping the trial" in hopeless.log.read_text()
    assert diverging.params["lr"] == DIVERGING_LR and diverging.state == "PRUNED"
    assert diverging.note.startswith("diverged") and re.search(r"loss became (nan|-?inf)", diverging.note)
    assert by_number[4].state in ("COMPLETE", "PRUNED")  # sampled: the pruner may stop it too

    # the objective is the last validation loss in the log, read with SageMaker's regex
    for row in result.rows:
        assert row.log == workdir / "trials" / f"{row.number:04d}" / "log.txt" and row.log.stat().st_size > 0
        if row.state == "COMPLETE":
            assert math.isclose(row.objective, last_validation_loss(row.log))
    best = result.best
    assert best is result.rows[0] and best.objective == min(r.objective for r in result.rows if r.state == "COMPLETE")

    # results: leaderboard, best parameters (trainer hyperparameters), plots
    leaderboard = (workdir / "leaderboard.csv").read_text().splitlines()
    assert leaderboard[0].startswith("rank,trial,state,objective") and len(leaderboard) == 6
    assert leaderboard[1].split(",")[1] == str(best.number)
    best_params = json.loads((workdir / "best_params.json").read_text())
    assert best_params == {**best.params, **TINY}
    args = hyperparameters.parse(
        [a for k, v in hyperparameters.to_sagemaker(best_params).items() for a in (f"--{k}", v)]
    )
    assert args.lr == best.params["lr"] and args.backbone == "resnet18"
    for name in ("optimization_history", "param_importances", "intermediate_values"):
        assert result.files[name].stat().st_size > 1000, result.notes
    # only the best trial keeps its model
    models = sorted(p.parent.parent.name for p in workdir.glob("trials/*/opt_ml/model"))
    assert models == [f"{best.number:04d}"]

    # nothing left to do: a rerun runs no trial
    again = local_tuning.run_study(
        str(space_file),
        sample_data,
        workdir,
        5,
        fixed_overrides=TINY,
        log=quiet,
        enqueue=[{"lr": HOPELESS_LR}, {"lr": DIVERGING_LR}],
    )
    assert len(again.rows) == 5 and not study_of(workdir).get_trials(states=(TrialState.WAITING,))


def test_trainer_failure_fails_the_trial_with_its_reason(sample_data, space_file, tmp_path):
    result = local_tuning.run_study(
        str(space_file), sample_data, tmp_path / "study", 1, log=quiet, fixed_overrides={**TINY, "trainable-layers": 9}
    )
    (row,) = result.rows
    assert row.state == "FAIL" and row.note.startswith("hyperparameter trainable-layers: at most 5"), row
    assert result.best is None and not (tmp_path / "study" / "best_params.json").exists()
    assert (tmp_path / "study" / "leaderboard.csv").is_file()
    assert any("no trial completed" in note for note in result.notes)


def test_parallel_trials_share_the_cores(sample_data, space_file, tmp_path, monkeypatch):
    monkeypatch.setattr(local_tuning.slots, "cpu_count", lambda: 4)  # two trials at once, two threads each
    monkeypatch.setattr(local_tuning.slots, "detect_gpus", lambda: [])
    result = local_tuning.run_study(
        str(space_file),
        sample_data,
        tmp_path / "study",
        2,
        sampler="random",
        parallel=4,
        fixed_overrides=TINY,
        log=quiet,
    )
    assert result.count("COMPLETE") == 2, result.markdown()
    first, second = sorted(study_of(tmp_path / "study").trials, key=lambda t: t.datetime_start)
    assert second.datetime_start < first.datetime_complete  # they overlapped
    for row in result.rows:
        header = json.loads(row.log.read_text().splitlines()[0].split(": ", 1)[1])
        assert header["num-workers"] == "0" and "lr" in header


def test_another_search_in_the_same_workdir_is_refused(sample_data, space_file, tmp_path):
    workdir = tmp_path / "study"
    local_tuning.run_study(str(space_file), sample_data, workdir, 0, fixed_overrides=TINY, log=quiet)
    with pytest.raises(local_tuning.TuningError, match="another search"):
        local_tuning.run_study("seed1", sample_data, workdir, 1, fixed_overrides=TINY, log=quiet)


def warm_spares(pid: int) -> set[int]:
    """Descendants of `pid` running scripts/launch/warm_trial.py (the process runner's spares)."""
    found = set()
    for child in proctree.descendants(pid):
        try:
            if b"warm_trial.py" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except OSError:
            continue
    return found


def test_no_spare_trial_process_outlives_the_study(sample_data, space_file, tmp_path):
    result = local_tuning.run_study(
        str(space_file),
        sample_data,
        tmp_path / "study",
        3,
        sampler="random",
        pruner="none",
        fixed_overrides=TINY,
        log=quiet,
    )
    assert result.count("COMPLETE") == 3, result.markdown()
    assert not warm_spares(os.getpid())
    # each trial ran in its own process, with its own /opt/ml tree
    for row in result.rows:
        assert (row.log.parent / "opt_ml" / "output" / "data" / "evaluation.json").is_file()


def test_a_pre_started_trial_relaunches_the_trainer_under_torchrun(sample_data, space_file, tmp_path):
    # torchrun must start the trainer in each process, not the spare's own program
    result = local_tuning.run_study(
        str(space_file),
        sample_data,
        tmp_path / "study",
        1,
        pruner="none",
        fixed_overrides={**TINY, "processes-per-host": 2},
        log=quiet,
    )
    (row,) = result.rows
    assert row.state == "COMPLETE", (row.note, row.log.read_text()[-3000:])
    log = row.log.read_text()
    assert "launching 2 process(es) per host" in log and str(TRAINER_SCRIPT.relative_to(ROOT)) in log


def test_cli_resumes_after_sigkill(sample_data, space_file, tmp_path):
    workdir = tmp_path / "study"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "tune_local.py"),
        "--data",
        str(sample_data),
        "--workdir",
        str(workdir),
        "--space",
        str(space_file),
        "--trials",
        "4",
        "--sampler",
        "random",
        "--hp",
        *[f"{k}={v}" for k, v in TINY.items()],
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = []
        for line in proc.stdout:  # until a trial has completed
            output.append(line)
            if " COMPLETE " in line:
                break
        else:
            pytest.fail("no trial completed:\n" + "".join(output))
        second = workdir / "trials" / "0001"
        deadline = time.monotonic() + 60
        while not (second / "opt_ml").is_dir() and time.monotonic() < deadline:  # the trainer makes it
            time.sleep(0.2)
        assert (second / "opt_ml").is_dir(), "trial 1 did not start"
        below = proctree.descendants(proc.pid)
        assert below and warm_spares(proc.pid), "a trial and a spare for the next one"
        proc.send_signal(signal.SIGKILL)  # mid-trial
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    deadline = time.monotonic() + 15  # the trial's trainer and the spare die with the tuner
    while any(map(proctree.running, below)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in below if proctree.running(pid)]

    before = {t.number: t for t in study_of(workdir).trials}
    assert before[0].state == TrialState.COMPLETE and before[1].state == TrialState.RUNNING
    first_log = (workdir / "trials" / "0000" / "log.txt").read_text()

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "trial 1 was interrupted: re-queued" in rerun.stdout
    assert "1 of 4 trials done, 3 to run" in rerun.stdout

    trials = study_of(workdir).trials
    after = {t.number: t for t in trials}
    assert after[0].state == TrialState.COMPLETE and after[0].value == before[0].value  # kept, not rerun
    assert (workdir / "trials" / "0000" / "log.txt").read_text() == first_log
    assert after[1].state == TrialState.FAIL and after[1].user_attrs["interrupted"]
    (requeued,) = [t for t in trials if t.user_attrs.get("requeued_from") == 1]
    assert requeued.params == before[1].params and requeued.state == TrialState.COMPLETE
    counted = [t for t in trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    assert len(counted) == 4 and len(trials) == 5  # n_trials reached, one extra for the killed trial
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 4  # no duplicate work
    assert (workdir / "leaderboard.csv").is_file() and (workdir / "best_params.json").is_file()


def test_container_runner(engine, sample_data, space_file, tmp_path, monkeypatch):
    build_image(engine, "train")
    workdir = tmp_path / "study"
    with mlflow_server(tmp_path / "mlflow") as url:  # the trial's container reaches it on the host's 127.0.0.1
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        result = local_tuning.run_study(
            str(space_file), sample_data, workdir, 1, runner="container", engine=engine, fixed_overrides=TINY, log=quiet
        )
        _, parent, children = study_runs(url)
    assert [run.info.run_name for run in children] == ["0"] and children[0].info.status == "FINISHED"
    (row,) = result.rows
    log = row.log.read_text()
    assert row.state == "COMPLETE", log[-3000:]
    assert "Reporting training SUCCESS" in log  # the sagemaker-training toolkit ran the trainer
    assert math.isclose(row.objective, last_validation_loss(row.log))
    assert (workdir / "trials" / "0000" / "opt_ml" / "model" / "model_config.json").is_file()
    token = study_of(workdir).user_attrs["token"]
    left = subprocess.run(
        [engine.cli, "ps", "-a", "--format", "{{.Names}}"], env=engine.env, capture_output=True, text=True
    ).stdout
    assert f"byoc-tune-{token}" not in left


# -- MLflow: the study a parent run, each trial a child run ------------------------


def study_runs(url: str) -> tuple:
    from mlflow import MlflowClient

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.info.run_name == local_tuning.STUDY_NAME]
    children = sorted(
        (run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda run: int(run.info.run_name),
    )
    return client, parent, children


def test_study_is_a_parent_run_with_a_child_run_per_trial(sample_data, space_file, tmp_path, monkeypatch):
    with mlflow_server(tmp_path / "mlflow") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        result = local_tuning.run_study(
            str(space_file),
            sample_data,
            tmp_path / "study",
            2,
            pruner="none",
            fixed_overrides={**TINY, "amp": "false"},
            log=quiet,
        )
        assert [row.state for row in result.rows] == ["COMPLETE", "COMPLETE"], result.markdown()
        client, parent, children = study_runs(url)
        assert parent.info.status == "FINISHED"
        assert [run.info.run_name for run in children] == ["0", "1"]
        by_number = {row.number: row for row in result.rows}
        for run in children:
            assert run.info.status == "FINISHED"
            history = client.get_metric_history(run.info.run_id, "validation:loss")
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]  # per epoch
            # the trial's objective is its last validation loss, as the tuner read it from the log
            assert max(history, key=lambda m: m.step).value == pytest.approx(
                by_number[int(run.info.run_name)].objective, abs=1e-4
            )
            assert len(client.get_metric_history(run.info.run_id, "train:step_loss")) == 8  # 2 epochs of 4 steps
            assert run.data.params["lr"] == f"{by_number[int(run.info.run_name)].params['lr']}"
        # the parent: the best trial's parameters and objective, every trial's objective, the reports
        best = result.best
        assert parent.data.metrics["validation:loss"] == pytest.approx(best.objective)
        assert parent.data.metrics["best_trial"] == best.number
        assert parent.data.params["lr"] == str(best.params["lr"]) and parent.data.params["epochs"] == "2"
        objectives = client.get_metric_history(parent.info.run_id, "trials:objective")
        assert sorted(m.step for m in objectives) == [0, 1]
        uploaded = {item.path for item in client.list_artifacts(parent.info.run_id, "tuning")}
        assert {"tuning/tuning-report.html", "tuning/leaderboard.csv", "tuning/best_params.json"} <= uploaded


def test_a_down_tracking_server_never_fails_the_study(sample_data, space_file, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    lines = []
    started = time.monotonic()
    result = local_tuning.run_study(
        str(space_file), sample_data, tmp_path / "study", 1, pruner="none", fixed_overrides=TINY, log=lines.append
    )
    assert [row.state for row in result.rows] == ["COMPLETE"], result.markdown()
    assert sum("is not reachable" in line for line in lines) == 1, lines  # said once, by the study
    # the trial was told: it does not wait for the server itself
    assert "is not reachable" not in result.rows[0].log.read_text()
    assert time.monotonic() - started < 120
