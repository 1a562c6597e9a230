"""MLflow tracking against a real local server, the torch.profiler trace, and the reports' content."""

from __future__ import annotations

import csv
import json
import re
import socket

import numpy as np
import pytest

from contract.spec import metrics
from helpers.mlflow_server import mlflow_server as start_mlflow_server
from helpers.training import FAST_HPS, run_trainer
from insights import report
from localnet import free_port
from trainer import tracking

# two epochs of the sample data: 97 training images in batches of 16 make 7 steps per epoch
HPS = dict(FAST_HPS, epochs=2, amp="false", profiler="true", **{"profiler-trace-steps": 2})
STEPS, EPOCHS = 14, 2
RUN_NAME = "tracked-job"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(scope="module")
def tracked(mlflow_server, sample_data, tmp_path_factory):
    opt_ml = tmp_path_factory.mktemp("tracked")
    result = run_trainer(
        opt_ml,
        {"training": sample_data},
        HPS,
        extra_env={
            "MLFLOW_TRACKING_URI": mlflow_server,
            tracking.RUN_NAME_ENV: RUN_NAME,
            tracking.SYSTEM_METRICS_ENV: "1",
        },
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return opt_ml, result


def test_the_run_reads_back_through_the_mlflow_client(mlflow_server, tracked):
    from mlflow import MlflowClient

    _, result = tracked
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("byoc-image-classifier")
    (run,) = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{RUN_NAME}'")
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.001" and run.data.params["backbone"] == "resnet18"
    assert run.data.params["epochs"] == "2"

    def history(name):
        return sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)

    # training loss and learning rate at every optimiser step, step = the global step
    for name in ("train:step_loss", "train:learning_rate"):
        assert [m.step for m in history(name)] == list(range(1, STEPS + 1)), name
    assert history("train:learning_rate")[0].value == pytest.approx(float(FAST_HPS["lr"]))
    # per epoch, step = the epoch, the values the metric lines print
    printed = metrics.parse_log(result.stdout)
    for name in ("train:loss", "train:accuracy", "validation:loss", "validation:accuracy"):
        assert [m.step for m in history(name)] == [1, 2], name
        assert [m.value for m in history(name)] == pytest.approx(printed[name], abs=1e-4), name
    for name in ("test:loss", "test:accuracy"):
        assert [m.value for m in history(name)] == pytest.approx(printed[name], abs=1e-4), name
    assert any(name.startswith("system/") for name in run.data.metrics), sorted(run.data.metrics)

    def names(path):
        return {item.path for item in client.list_artifacts(run.info.run_id, path)}

    assert {
        "evaluation/evaluation.json",
        "evaluation/confusion_matrix.png",
        "evaluation/losses.png",
        "evaluation/losses.json",
        "evaluation/losses.csv",
        "evaluation/scalars.jsonl",
    } <= names("evaluation")
    assert {"model/model.pt", "model/model_config.json"} <= names("model")
    assert "profiler/profiler-report.html" in names("profiler")
    assert "profiler/trace/trace.json" in names("profiler/trace")


class Silent:
    """A server that accepts connections and never answers (a hung tracking server)."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc):
        self.sock.close()


def test_a_tuning_jobs_training_job_is_a_child_run_and_registers_its_model(mlflow_server, sample_data, tmp_path):
    # as SageMaker starts a tuning job's training job: its name <tuning job>-NNN-<8 hex>, and the
    # tuning objective among the hyperparameters it writes to input/config
    from mlflow import MlflowClient

    from contract.spec import hyperparameters, paths

    hps = dict(FAST_HPS, epochs=1, amp="false")
    paths.write_input_config(
        tmp_path, {**hyperparameters.as_strings(hps), "_tuning_objective_metric": "validation:loss"}
    )
    job = "byoc-tune-dogs-001-0a1b2c3d"
    result = run_trainer(
        tmp_path,
        {"training": sample_data},
        hps,
        extra_env={
            "MLFLOW_TRACKING_URI": mlflow_server,
            "TRAINING_JOB_NAME": job,
            tracking.REGISTER_ENV: "dog-breeds",
        },
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    (parent,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'byoc-tune-dogs'")
    (child,) = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{job}'")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["sagemaker.training_job"] == job
    (version,) = client.search_model_versions("name = 'dog-breeds'")
    assert version.run_id == child.info.run_id and version.source.endswith("/model")


@pytest.mark.parametrize("server", ["closed port", "never answers"])
def test_an_unreachable_server_never_fails_or_stalls_training(server, sample_data, tmp_path):
    hps = dict(FAST_HPS, epochs=1, profiler="false", **{"max-steps-per-epoch": 2})
    with Silent() as silent:
        uri = f"http://127.0.0.1:{free_port()}" if server == "closed port" else silent
        result = run_trainer(
            tmp_path, {"training": sample_data}, hps, extra_env={"MLFLOW_TRACKING_URI": uri}, timeout=240
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("is not reachable") == 1, result.stdout[-3000:]
    # the one bounded first contact, not the client's minutes of retries (a closed port) or a hang
    waited = float(re.search(r"is not reachable after ([0-9.]+) s", result.stdout).group(1))
    assert waited <= tracking.CONNECT_TIMEOUT_S + 1, waited
    assert (tmp_path / "model" / "model.pt").is_file()


def test_the_trace_parses_for_perfetto_and_tensorboard(tracked):
    opt_ml, _ = tracked
    folder = opt_ml / "output" / "profiler"
    trace = json.loads((folder / "trace" / "trace.json").read_text())
    steps = {e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")}
    schedule = json.loads((folder / "meta.json").read_text())["trace_schedule"]
    assert schedule == {"wait": 2, "warmup": 1, "active": 2}
    assert len(steps) == schedule["active"], steps  # the active steps alone were recorded
    (plugin_file,) = (folder / "trace" / "tensorboard").glob("*.pt.trace.json")
    assert json.loads(plugin_file.read_text())["traceEvents"]
    recorded = [s for s in map(json.loads, (folder / "steps.jsonl").read_text().splitlines()) if s["traced"]]
    assert len(recorded) == schedule["warmup"] + schedule["active"]  # left out of the report's statistics


def test_loss_curves_plot_every_step_and_epoch(tracked):
    from insights import loss_curves

    opt_ml, _ = tracked
    data = opt_ml / "output" / "data"
    plotted = json.loads((data / loss_curves.JSON).read_text())
    counts = {name: len(values["x"]) for name, values in plotted.items()}
    assert counts == {
        "train_step_loss": STEPS,
        "train_step_loss_smoothed": STEPS,
        "learning_rate": STEPS,
        "validation_loss": EPOCHS,
        "train_accuracy": EPOCHS,
        "validation_accuracy": EPOCHS,
    }
    assert plotted["validation_loss"]["x"] == [7, 14]  # at the step that ended each epoch
    with open(data / loss_curves.CSV) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(counts.values())
    # the figure drawn from those numbers has one line per series with every point
    figure = loss_curves.figure(plotted)
    drawn = sorted(len(line.get_xdata()) for ax in figure.axes for line in ax.lines)
    assert drawn == sorted(counts.values())
    assert (data / loss_curves.PNG).stat().st_size > 20_000


def cell_texts(figure) -> list[str]:
    return [t.get_text() for ax in figure.axes for t in ax.texts if t.get_gid() == "cell"]


def test_confusion_matrix_has_counts_for_few_classes(tracked):
    opt_ml, _ = tracked
    evaluation = json.loads((opt_ml / "output" / "data" / "evaluation.json").read_text())
    matrix = np.array(evaluation["confusion_matrix"])
    figure = report.confusion_figure(matrix, evaluation["class_names"], "sample run")
    texts = cell_texts(figure)
    assert len(texts) == matrix.size
    assert [int(t.split("\n")[0]) for t in texts] == matrix.flatten().tolist()
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == evaluation["class_names"]


def test_many_classes_get_tables_not_cell_text(tmp_path):
    names = [f"{i:03d}.breed_{i}" for i in range(1, 31)]
    matrix = np.diag(np.full(30, 9))
    matrix[4, 7], matrix[4, 4] = 6, 3  # class 5 is mostly taken for class 8
    figure = report.confusion_figure(matrix, names, "30 classes")
    assert cell_texts(figure) == []
    tables = {table.get_gid(): table for ax in figure.axes for table in ax.tables}
    assert set(tables) == {"most_confused", "worst_recall"}
    first_row = [tables["most_confused"][1, col].get_text().get_text() for col in range(4)]
    assert first_row == [names[4], names[7], "6", "67%"]
    assert tables["worst_recall"][1, 0].get_text().get_text() == names[4]
    built = report.build("test", matrix, names, 0.5, {})
    assert built["most_confused"][0]["true"] == names[4] and built["worst_recall"][0]["recall"] == pytest.approx(1 / 3)
    report.write(built, tmp_path)
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 20_000


def test_profiler_report_speaks_in_words_and_units(tracked):
    from insights import profiler_report

    opt_ml, _ = tracked
    folder = opt_ml / "output" / "profiler"
    run = profiler_report.load(folder)
    page = profiler_report.render(folder, run, profiler_report.analyse(run))
    verdicts = page[page.index("<h2>Verdicts</h2>") : page.index("</table>")]
    assert '{"' not in verdicts and "{&quot;" not in verdicts  # no raw JSON
    assert re.search(r"data loading \d+% of step time", verdicts)
    assert re.search(r"median step: [\d.,]+ ms waiting for data, [\d.,]+ ms computing", verdicts)
    assert re.search(r"steps take [\d.,]+ ms on average", verdicts)


def test_tuning_report_has_every_section(tmp_path):
    import optuna

    from insights import tuning_report

    study = optuna.create_study(study_name="local-tuning", direction="minimize")
    # Fixed parameters: a sampler's draw could give every trial the same batch size, and then
    # "Parameter importances" has one varying parameter and is rightly not drawn (1 run in 27).
    for number, (lr, batch_size) in enumerate(((1e-3, 16), (3e-3, 32), (1e-2, 64), (3e-2, 16))):
        study.enqueue_trial({"lr": lr, "batch-size": batch_size})
        trial = study.ask(
            {
                "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
                "batch-size": optuna.distributions.CategoricalDistribution([16, 32, 64]),
            }
        )
        losses = [1.5 - 0.1 * epoch - number * 0.05 for epoch in range(3)]
        for epoch, value in enumerate(losses, start=1):
            trial.report(value, epoch)
        study.tell(trial, losses[-1])
    best = study.best_trial.number
    (tmp_path / "leaderboard.csv").write_text("rank,trial,state,objective\n1,3,COMPLETE,1.15\n2,2,COMPLETE,1.2\n")
    data = tmp_path / "trials" / f"{best:04d}" / "opt_ml" / "output" / "data"
    data.mkdir(parents=True)
    (data / "losses.json").write_text(
        json.dumps(
            {
                "train_step_loss": {"x": list(range(1, 22)), "y": [1.5 - i / 30 for i in range(21)]},
                "validation_loss": {"x": [7, 14, 21], "y": [1.3, 1.2, 1.15]},
            }
        )
    )
    page = tuning_report.write(study, tmp_path).read_text()
    assert "not drawn" not in page
    for title in (
        "Leaderboard",
        "Optimisation history",
        "Parameter importances",
        "Validation loss per epoch, every trial",
        f"Best trial ({best}): loss",
    ):
        assert title in page, title
    assert page.count('class="plotly-graph-div"') == 5
    assert page.count("<tr>") == 3  # the header and two trials
