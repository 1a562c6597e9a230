"""What training measured, kept for people: a scalars file always, MLflow when a server is named.

  output/data/scalars.jsonl   one line per optimiser step (training loss, learning rate), per epoch
                              (training and validation loss and accuracy) and for the final score:
                              the source of the loss curves (insights/loss_curves.py);
  MLflow                      when MLFLOW_TRACKING_URI is set (an http(s) server, a SageMaker managed
                              tracking server's ARN through the sagemaker-mlflow plugin, a file store):
                              one run per job with the hyperparameters as parameters, the same
                              scalars as metrics, system metrics, and at the end the reports and
                              the model as artifacts.

Metric names are the metric lines' (trainer/metrics.py: `validation:loss` ...), logged at
step = epoch; per optimiser step `train:step_loss` and `train:learning_rate` at step = the
global step; `test:loss`/`test:accuracy` once at the end.

The variables' names are contract/spec/tracking.py's.

Rank 0 only. A tracking server never fails or stalls training: the client's HTTP retries and
timeout are bounded, the server is asked once at the start (CONNECT_TIMEOUT_S), and every call
to it is made by one background thread fed through a bounded queue; the first failure is logged
once and tracking stops while training goes on. Settings (environment):

  TRAINER_MLFLOW_PARENT_RUN_ID   make this job's run a child of that run (a local tuning study's)
  TRAINER_MLFLOW_RUN_NAME        the run's name (default: SageMaker's TRAINING_JOB_NAME, else MLflow's)
  TRAINER_MLFLOW_REGISTER_MODEL  register the job's model under this name in the model registry
MLFLOW_EXPERIMENT_NAME picks the experiment, as MLflow itself reads it.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
import traceback
from pathlib import Path

from contract.spec.tracking import (
    DEFAULT_EXPERIMENT,
    EXPERIMENT_ENV,
    PARENT_RUN_ENV,
    REGISTER_ENV,
    RUN_NAME_ENV,
    TRACKING_URI_ENV,
)

SCALARS_FILE = "scalars.jsonl"
CONNECT_TIMEOUT_S = 10.0  # the first contact, the only one training waits for
CLOSE_TIMEOUT_S = 120.0  # what the end of the job waits for queued metrics and artifacts
QUEUE_LIMIT = 100_000  # queued calls beyond this are dropped (a server far slower than training)
BATCH_LIMIT = 1000  # metrics per log_batch call (MLflow's own limit)
# MLflow's client retries a closed port for minutes by default: one try, a short timeout
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
}
SYSTEM_METRICS_ENV = "TRAINER_MLFLOW_SYSTEM_METRICS_S"  # sampling interval, seconds (default 10)
# A SageMaker tuning job names its training jobs <tuning job>-<NNN>-<8 hex digits>
TUNING_JOB_NAME = re.compile(r"^(?P<tuning>.+)-\d{3}-[0-9a-f]{8}$")


def say(message: str) -> None:
    print(f"tracking: {message}", flush=True)


class Scalars:
    """output/data/scalars.jsonl, appended to as training goes (a killed job keeps what it measured)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = open(path, "a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self.file.close()


class MlflowSink(threading.Thread):
    """One MLflow run; every call to the server is made here, never in the training loop."""

    def __init__(self, client, run_id: str):
        super().__init__(name="mlflow-sink", daemon=True)
        self.client, self.run_id = client, run_id
        self.calls: queue.Queue = queue.Queue(maxsize=QUEUE_LIMIT)
        self.failed = False
        self.dropped = 0

    def submit(self, call) -> None:
        if self.failed:
            return
        try:
            self.calls.put_nowait(call)
        except queue.Full:
            self.dropped += 1

    def run(self) -> None:
        from mlflow.entities import Metric

        while True:
            call = self.calls.get()
            if call is None:
                return
            if self.failed:
                continue
            try:
                if call[0] == "metric":  # gather what else is queued into one request
                    metrics = [Metric(*call[1:])]
                    while len(metrics) < BATCH_LIMIT:
                        try:
                            nxt = self.calls.get_nowait()
                        except queue.Empty:
                            break
                        if nxt is None or nxt[0] != "metric":
                            self.calls.queue.appendleft(nxt)  # keep its place
                            break
                        metrics.append(Metric(*nxt[1:]))
                    self.client.log_batch(self.run_id, metrics=metrics)
                else:
                    call[1]()
            except Exception as exc:
                self.failed = True
                say(
                    f"MLflow stopped answering ({type(exc).__name__}: {str(exc)[:300]}); "
                    "tracking is off for the rest of the job, training goes on"
                )

    def finish(self, timeout: float) -> bool:
        """Send what is queued, within `timeout` seconds; True if all of it went."""
        try:
            self.calls.put(None, timeout=timeout)
        except queue.Full:
            return False
        self.join(timeout)
        return not self.is_alive() and not self.failed


class NullTracker:
    def step(self, global_step: int, epoch: int, **values) -> None: ...

    def epoch(self, epoch: int, **values) -> None: ...

    def final(self, split: str, loss: float, accuracy: float, paths) -> None: ...

    def close(self, paths=None) -> None: ...


class Tracker(NullTracker):
    def __init__(self, scalars: Scalars, sink: MlflowSink | None = None, monitor=None):
        self.scalars, self.sink, self.monitor = scalars, sink, monitor
        self.finished = False

    def _metric(self, name: str, value: float, step: int) -> None:
        if self.sink is not None:
            self.sink.submit(("metric", name, float(value), int(time.time() * 1000), int(step)))

    def step(self, global_step: int, epoch: int, **values) -> None:
        """After each optimiser step: loss=..., learning_rate=..."""
        self.scalars.write({"kind": "step", "step": global_step, "epoch": epoch, **values})
        for name, value in values.items():
            self._metric(f"train:step_{name}" if name == "loss" else f"train:{name}", value, global_step)

    def epoch(self, epoch: int, **values) -> None:
        """After each epoch: train_loss=..., validation_accuracy=... (split first, then the measure)."""
        self.scalars.write({"kind": "epoch", "epoch": epoch, **values})
        for name, value in values.items():
            split, _, measure = name.partition("_")
            self._metric(f"{split}:{measure}", value, epoch)

    def final(self, split: str, loss: float, accuracy: float, paths) -> None:
        """The final score, then the reports that need the whole run, then the artifacts."""
        self.scalars.write({"kind": "final", "split": split, "loss": loss, "accuracy": accuracy})
        self.scalars.file.flush()
        self._metric(f"{split}:loss", loss, 0)
        self._metric(f"{split}:accuracy", accuracy, 0)
        try:
            from insights import loss_curves

            loss_curves.write(self.scalars.path, paths.output_data)
        except Exception:
            say("the loss curves could not be drawn:\n" + traceback.format_exc())
        if self.sink is not None:
            client, run_id = self.sink.client, self.sink.run_id
            self.sink.submit(("call", lambda: client.log_artifacts(run_id, str(paths.output_data), "evaluation")))
            self.sink.submit(("call", lambda: client.log_artifacts(run_id, str(paths.model), "model")))
            name = os.environ.get(REGISTER_ENV)
            if name:
                self.sink.submit(("call", lambda: register_model(client, run_id, name)))
        self.finished = True

    def close(self, paths=None) -> None:
        """Once the profiler has closed: its report as an artifact, then the run's end."""
        self.scalars.close()
        if self.sink is None:
            return
        if self.monitor is not None:
            try:
                self.monitor.finish()
            except Exception:
                pass
        client, run_id = self.sink.client, self.sink.run_id
        profiler_dir = paths.output / "profiler" if paths is not None else None
        if self.finished and profiler_dir is not None and profiler_dir.is_dir():
            self.sink.submit(("call", lambda: log_profiler(client, run_id, profiler_dir)))
        status = "FINISHED" if self.finished else "FAILED"
        self.sink.submit(("call", lambda: client.set_terminated(run_id, status)))
        started = time.monotonic()
        if self.sink.finish(CLOSE_TIMEOUT_S):
            say(f"MLflow run {run_id} {status.lower()} ({time.monotonic() - started:.1f} s to send the rest)")
        elif not self.sink.failed:
            say(f"MLflow took longer than {CLOSE_TIMEOUT_S:.0f} s for the last metrics and artifacts: left unsent")
        if self.sink.dropped:
            say(f"{self.sink.dropped} metric value(s) dropped: the MLflow server was slower than training")


def log_profiler(client, run_id: str, folder: Path) -> None:
    """The profiler's report in words, and the torch.profiler trace."""
    from insights import profiler_report

    run = profiler_report.load(folder)
    if run["steps"] or run["system"]:
        out = folder.parent / "profiler-report.html"
        out.write_text(profiler_report.render(folder, run, profiler_report.analyse(run)))
        client.log_artifact(run_id, str(out), "profiler")
    if (folder / "trace").is_dir():
        client.log_artifacts(run_id, str(folder / "trace"), "profiler/trace")


def register_model(client, run_id: str, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException:  # it exists: a new version of it
        pass
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    version = client.create_model_version(name, source, run_id=run_id)
    say(f"model registered as {name} version {version.version}")


def reachable(client, timeout: float) -> str | None:
    """None when the server answers within `timeout` seconds, else why not."""
    outcome: list = []

    def ask():
        try:
            client.search_experiments(max_results=1)
            outcome.append(None)
        except Exception as exc:
            outcome.append(f"{type(exc).__name__}: {str(exc)[:300]}")

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:.0f} s"


def tuning_parent(client, experiment_id: str, job_name: str) -> str | None:
    """The run of the SageMaker tuning job this training job belongs to (made by its first job)."""
    match = TUNING_JOB_NAME.match(job_name)
    if not match:
        return None
    tuning = match.group("tuning")
    query = f"tags.`sagemaker.tuning_job` = '{tuning}'"
    found = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"], max_results=1)
    if found:
        return found[0].info.run_id
    parent = client.create_run(experiment_id, run_name=tuning, tags={"sagemaker.tuning_job": tuning})
    # jobs of one tuning job start together: the oldest parent wins, a duplicate goes
    oldest = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"], max_results=1)
    if oldest and oldest[0].info.run_id != parent.info.run_id:
        client.delete_run(parent.info.run_id)
        return oldest[0].info.run_id
    return parent.info.run_id


def experiment(client) -> tuple[str, str]:
    """MLFLOW_EXPERIMENT_NAME's experiment (or ours), made if missing: its name and id."""
    name = os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)
    found = client.get_experiment_by_name(name)
    return name, found.experiment_id if found else client.create_experiment(name)


def bound_http(uri: str) -> None:
    """MLflow's HTTP client settings for a server that may be down (the caller's explicit ones win)."""
    for name, value in HTTP_SETTINGS.items():
        os.environ.setdefault(name, value)
    if not uri.startswith("arn:"):  # sagemaker-mlflow's header provider fails on other URIs, noisily, every call
        logging.getLogger("mlflow.tracking.request_header.registry").setLevel(logging.ERROR)


def start_mlflow(hp, paths) -> tuple[MlflowSink, object] | None:
    uri = os.environ.get(TRACKING_URI_ENV, "").strip()
    if not uri:
        return None
    bound_http(uri)
    try:
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        asked = time.monotonic()
        problem = reachable(client, CONNECT_TIMEOUT_S)
        if problem:
            say(
                f"MLflow at {uri} is not reachable after {time.monotonic() - asked:.1f} s ({problem}); "
                "training goes on without it"
            )
            return None
        experiment_name, experiment_id = experiment(client)
        job = os.environ.get("TRAINING_JOB_NAME", "")
        tags = {"sagemaker.training_job": job} if job else {}
        parent = os.environ.get(PARENT_RUN_ENV) or (
            tuning_parent(client, experiment_id, job) if is_tuning_job(paths) else None
        )
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = client.create_run(experiment_id, run_name=os.environ.get(RUN_NAME_ENV) or job or None, tags=tags)
        run_id = run.info.run_id
        sink = MlflowSink(client, run_id)
        sink.start()
        params = {k: str(v)[:6000] for k, v in hp.as_dict().items()}
        from mlflow.entities import Param

        sink.submit(("call", lambda: client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])))
        monitor = None
        try:
            from mlflow.system_metrics.system_metrics_monitor import (
                SystemMetricsMonitor,
            )

            monitor = SystemMetricsMonitor(
                run_id, sampling_interval=float(os.environ.get(SYSTEM_METRICS_ENV, "10")), samples_before_logging=1
            )
            monitor.start()
        except Exception as exc:  # psutil or the GPU library missing: metrics without them
            say(f"no system metrics ({type(exc).__name__}: {exc})")
        say(
            f"MLflow run {run_id} in experiment {experiment_name!r} at {uri}"
            + (f", child of {parent}" if parent else "")
        )
        return sink, monitor
    except Exception as exc:
        say(f"MLflow could not start a run ({type(exc).__name__}: {str(exc)[:300]}); training goes on without it")
        return None


def is_tuning_job(paths) -> bool:
    """SageMaker passes a tuning job's objective to its training jobs as a hyperparameter."""
    try:
        config = json.loads((paths.root / "input" / "config" / "hyperparameters.json").read_text())
    except (OSError, ValueError):
        return False
    return "_tuning_objective_metric" in config


def create(hp, paths, is_main: bool) -> NullTracker:
    if not is_main:
        return NullTracker()
    try:
        scalars = Scalars(paths.output_data / SCALARS_FILE)
    except OSError as exc:
        say(f"cannot write {SCALARS_FILE} ({exc}): no loss curves, no tracking")
        return NullTracker()
    started = start_mlflow(hp, paths)
    sink, monitor = started if started else (None, None)
    return Tracker(scalars, sink, monitor)
