"""The study in MLflow, when MLFLOW_TRACKING_URI names a server: one parent run named after the study,
each trial's training a child run of it (the trainer's TRAINER_MLFLOW_PARENT_RUN_ID, and
TRAINER_MLFLOW_RUN_NAME = the trial's number), and at the end, on the parent, the best trial's
parameters and objective, every completed trial's objective (step = its number) and the study's
reports (tuning_report.html, leaderboard.csv, best_params.json, the plots) as artifacts.

As bounded as the trainer's own tracking (container/trainer/tracking.py, whose settings it shares):
the server is asked once at the start, within CONNECT_TIMEOUT_S; if it does not answer, the study
goes on untracked and its trials are given an empty MLFLOW_TRACKING_URI, so that they do not each
wait for it; a call that fails later is logged once and tracking stops. A resumed study (the
same work directory and server) keeps its parent run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from urllib.parse import urlparse

from contract.spec.tracking import EXPERIMENT_ENV, PARENT_RUN_ENV, RUN_NAME_ENV, TRACKING_URI_ENV
from trainer import tracking as trainer_tracking  # the trainer's bounded client settings (standard library at import)

URI_ENV = TRACKING_URI_ENV
FORWARDED = (URI_ENV, EXPERIMENT_ENV)  # what a trial's container is given (a process inherits it)
RUN_ATTR, URI_ATTR = "mlflow_run_id", "mlflow_tracking_uri"  # the study's user attributes, for a resume
TRIAL_OBJECTIVES = "trials:objective"  # the parent's metric: each completed trial's objective, step = its number


def on_loopback(env: dict) -> bool:
    """The trials' server listens on this machine's loopback: a trial container must share its network."""
    return urlparse(env.get(URI_ENV, "")).hostname in ("127.0.0.1", "localhost", "::1")


class Untracked:
    """No server named, or none answering."""

    def __init__(self, env: dict | None = None):
        self.env = env or {}  # what every trial is given

    def trial_env(self, number: int) -> dict:
        return dict(self.env)

    def finish(self, result, objective_metric: str, status: str = "FINISHED") -> None: ...

    def end(self, status: str) -> None: ...


class StudyRun(Untracked):
    def __init__(self, client, run_id: str, uri: str, log: Callable[[str], None]):
        super().__init__({name: os.environ[name] for name in FORWARDED if os.environ.get(name)})
        self.client, self.run_id, self.uri, self.log = client, run_id, uri, log
        self.failed = False

    def trial_env(self, number: int) -> dict:
        if self.failed:
            return {URI_ENV: ""}
        return {**self.env, PARENT_RUN_ENV: self.run_id, RUN_NAME_ENV: str(number)}

    def call(self, what: str, func) -> None:
        if self.failed:
            return
        try:
            func()
        except Exception as exc:
            self.failed = True
            self.log(
                f"tracking: MLflow failed to {what} ({type(exc).__name__}: {str(exc)[:300]}); "
                "the study goes on untracked"
            )

    def finish(self, result, objective_metric: str, status: str = "FINISHED") -> None:
        """The best trial's parameters and objective, the reports, then the parent run's end."""
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException

        client, run_id = self.client, self.run_id
        now = time.time_ns() // 1_000_000
        objectives = [
            Metric(TRIAL_OBJECTIVES, row.objective, now, row.number)
            for row in result.rows
            if row.state == "COMPLETE" and row.objective is not None
        ]
        if result.best is not None:
            objectives += [
                Metric(objective_metric, result.best.objective, now, 0),
                Metric("best_trial", result.best.number, now, 0),
            ]

        def best_params():
            params = {k: str(v) for k, v in (result.best_params or {}).items()}
            try:
                client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
            except MlflowException:  # a resumed study found a new best: MLflow's params do not change
                for name, value in params.items():
                    client.set_tag(run_id, f"best.{name}", value)
            client.set_tag(run_id, "best_trial", str(result.best.number))

        self.call("log the trials' objectives", lambda: client.log_batch(run_id, metrics=objectives))
        if result.best is not None:
            self.call("log the best parameters", best_params)
        for path in result.files.values():
            if path.is_file():
                self.call(f"upload {path.name}", lambda path=path: client.log_artifact(run_id, str(path), "tuning"))
        self.end(status)

    def end(self, status: str) -> None:
        self.call("end the study's run", lambda: self.client.set_terminated(self.run_id, status))
        if not self.failed:
            self.log(f"tracking: study run {self.run_id} {status.lower()} at {self.uri}")


def track_study(study, log: Callable[[str], None]) -> Untracked:
    """The study's parent run in the server MLFLOW_TRACKING_URI names (made, or the one a resumed study
    made), or Untracked saying why not."""
    uri = os.environ.get(URI_ENV, "").strip()
    if not uri:
        return Untracked()
    trainer_tracking.bound_http(uri)
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(uri)
        problem = trainer_tracking.reachable(client, trainer_tracking.CONNECT_TIMEOUT_S)
        if problem:
            log(f"tracking: MLflow at {uri} is not reachable ({problem}); the study goes on untracked")
            return Untracked({URI_ENV: ""})
        run_id = study.user_attrs.get(RUN_ATTR) if study.user_attrs.get(URI_ATTR) == uri else None
        if run_id:
            try:
                client.update_run(run_id, status="RUNNING")
            except MlflowException:  # deleted since: a new one
                run_id = None
        if not run_id:
            _, experiment_id = trainer_tracking.experiment(client)
            run_id = client.create_run(
                experiment_id, run_name=study.study_name, tags={"optuna.study": study.study_name}
            ).info.run_id
            study.set_user_attr(RUN_ATTR, run_id)
            study.set_user_attr(URI_ATTR, uri)
        log(f"tracking: study run {run_id} at {uri}; each trial a child run")
        return StudyRun(client, run_id, uri, log)
    except Exception as exc:
        log(
            f"tracking: MLflow could not start the study's run ({type(exc).__name__}: {str(exc)[:300]}); "
            "the study goes on untracked"
        )
        return Untracked({URI_ENV: ""})
