"""A study's results: the rows best first, leaderboard.csv, best_params.json, the plots, the printed summary."""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from contract.spec import hyperparameters
from insights import tuning_report


@dataclass
class TrialRow:
    number: int
    state: str
    objective: float | None
    params: dict
    duration_s: float | None
    epochs: int
    note: str
    log: Path  # where its tuner wrote it: on another machine for a trial of another tuner
    finished: float | None = None  # when it ended (time.time())
    tuner: str = ""  # host:workdir:token of the tuner that ran it (claims.tuner_id)


@dataclass
class StudyResult:
    workdir: Path
    storage: str
    study_name: str
    n_trials: int
    rows: list[TrialRow]  # best first
    best: TrialRow | None
    best_params: dict | None
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def count(self, state: str) -> int:
        return sum(row.state == state for row in self.rows)

    def markdown(self) -> str:
        lines = ["| trial | state | objective | params | duration |", "|---|---|---|---|---|"]
        for row in self.rows:
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in row.params.items())
            objective = "" if row.objective is None else f"{row.objective:.6g}"
            state = row.state + (f" ({row.note})" if row.note and row.state != "COMPLETE" else "")
            duration = "" if row.duration_s is None else f"{row.duration_s:.0f} s"
            lines.append(f"| {row.number} | {state} | {objective} | {params} | {duration} |")
        return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def params_text(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2}


def _rows(study: optuna.Study, workdir: Path) -> list[TrialRow]:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    trials.sort(key=lambda t: (_ORDER.get(t.state, 3), sign * t.value if t.value is not None else math.inf, t.number))
    return [
        TrialRow(
            t.number,
            t.state.name,
            t.value,
            dict(t.params),
            t.duration.total_seconds() if t.duration else None,
            len(t.intermediate_values),
            t.user_attrs.get("note", ""),
            workdir / t.user_attrs.get("log", f"trials/{t.number:04d}/log.txt"),
            t.datetime_complete.timestamp() if t.datetime_complete else None,
            t.user_attrs.get("tuner", ""),
        )
        for t in trials
    ]


def _plots(study: optuna.Study, space, workdir: Path) -> tuple[dict[str, Path], list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    files, notes = {}, []
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    varying = [p.name for p in space.parameters if len({repr(t.params.get(p.name)) for t in complete}) > 1]
    plots: dict[str, tuple[Callable[..., Any], Any, str]] = {
        "optimization_history": (ov.plot_optimization_history, complete, "no completed trial"),
        "param_importances": (
            ov.plot_param_importances,
            len(complete) >= 2 and len(varying) >= 2,
            "parameter importances need 2 completed trials and 2 parameters that vary",
        ),
        "intermediate_values": (
            ov.plot_intermediate_values,
            any(t.intermediate_values for t in study.get_trials(deepcopy=False)),
            "no trial reported a validation loss",
        ),
    }
    for name, (plot, possible, why_not) in plots.items():
        path = workdir / f"{name}.png"
        path.unlink(missing_ok=True)
        if not possible:
            notes.append(f"{name}.png not written: {why_not}")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study, params=varying) if name == "param_importances" else plot(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            if name != "param_importances" and tuning_report.needs_log_scale(study):
                axes.set_yscale("log")  # a diverged trial's first epoch would flatten every other curve
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
            files[name] = path
        except Exception as exc:  # a plot is a nicety: never fail the study for one
            notes.append(f"{name}.png not written: {type(exc).__name__}: {exc}")
            plt.close("all")
    return files, notes


def write_reports(
    study: optuna.Study,
    space,
    fixed: dict,
    workdir: Path,
    n_trials: int,
    keep_models: bool = False,
    storage: str | None = None,
) -> StudyResult:
    """storage: the study's storage URL as it may be shown (storage_url.redact); default the workdir's study.db."""
    rows = _rows(study, workdir)
    order = [p.name for p in space.parameters]
    names = sorted(
        {k for row in rows for k in row.params}, key=lambda n: (n not in order, order.index(n) if n in order else 0, n)
    )
    with open(workdir / "leaderboard.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["rank", "trial", "state", "objective", "epochs", "duration_s", *names, "note", "log", "tuner"])
        for rank, row in enumerate(rows, start=1):
            out.writerow(
                [
                    rank,
                    row.number,
                    row.state,
                    "" if row.objective is None else row.objective,
                    row.epochs,
                    "" if row.duration_s is None else round(row.duration_s, 1),
                    *[row.params.get(n, "") for n in names],
                    row.note,
                    row.log.relative_to(workdir),
                    row.tuner,
                ]
            )
    files = {"leaderboard": workdir / "leaderboard.csv"}
    best = rows[0] if rows and rows[0].state == "COMPLETE" else None
    best_params = None
    best_file = workdir / "best_params.json"
    if best is not None:
        best_params = {**best.params, **fixed}
        best_file.write_text(json.dumps(best_params, indent=2) + "\n")
        files["best_params"] = best_file
        if not keep_models:  # a trial's model is kept only while it is the best
            for row in rows[1:]:
                shutil.rmtree(workdir / "trials" / f"{row.number:04d}" / "opt_ml" / "model", ignore_errors=True)
    else:
        best_file.unlink(missing_ok=True)
    plots, notes = _plots(study, space, workdir)
    files.update(plots)
    files["report"] = tuning_report.write(study, workdir)  # one HTML page of the above, with plotly figures
    if best is None:
        notes.insert(0, "no trial completed: no best_params.json")
    storage = storage or f"sqlite:///{workdir / 'study.db'}"
    return StudyResult(workdir, storage, study.study_name, n_trials, rows, best, best_params, files, notes)


def print_summary(result: StudyResult, out=print) -> None:
    out("")
    out(result.markdown())
    out("")
    counts = ", ".join(f"{result.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if result.count(s))
    out(f"{len(result.rows)} trials ({counts or 'none'}); results in {result.workdir}")
    for note in result.notes:
        out(f"  note: {note}")
    if result.best is not None and result.best_params is not None:
        out(f"best: trial {result.best.number}, objective {result.best.objective:.6g}")
        out(
            "train the final model with: "
            + " ".join(f"--hp {k}={v}" for k, v in hyperparameters.to_sagemaker(result.best_params).items())
        )
    for name, path in result.files.items():
        out(f"  {name:<22} {path}")
