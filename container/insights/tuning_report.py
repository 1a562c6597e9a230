"""One HTML page for a local tuning study: leaderboard, optimisation history, parameter importances,
each trial's validation loss per epoch, and the best trial's loss curves (Optuna's plotly figures).

    python -m insights.tuning_report TUNING_WORKDIR [--out tuning-report.html]

Reads WORKDIR/study.db (the Optuna study scripts/launch/local_tuning.py keeps) and the best
trial's losses.json (insights/loss_curves.py) from its /opt/ml tree. The page carries plotly.js
inline: one file that opens offline.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

REPORT = "tuning-report.html"
STUDY_NAME = "local-tuning"  # scripts/launch/local_tuning.py's


def best_trial_curves(workdir: Path, number: int):
    """The best trial's training loss per step and validation loss per epoch, as a plotly figure."""
    import plotly.graph_objects as go

    path = workdir / "trials" / f"{number:04d}" / "opt_ml" / "output" / "data" / "losses.json"
    if not path.is_file():
        return None
    plotted = json.loads(path.read_text())
    figure = go.Figure()
    for name, label, mode in (
        ("train_step_loss", "training loss per step", "lines"),
        ("train_step_loss_smoothed", "training loss, smoothed", "lines"),
        ("validation_loss", "validation loss per epoch", "lines+markers"),
    ):
        if name in plotted:
            figure.add_trace(
                go.Scatter(
                    x=plotted[name]["x"],
                    y=plotted[name]["y"],
                    name=label,
                    mode=mode,
                    opacity=0.35 if name == "train_step_loss" else 1.0,
                )
            )
    figure.update_layout(title=f"Best trial ({number}): loss", xaxis_title="global step", yaxis_title="loss")
    return figure


LOSS_AXIS_FIGURES = ("Optimisation history", "Validation loss per epoch, every trial")


def needs_log_scale(study) -> bool:
    """The losses span more than two orders of magnitude (a diverging or pruned trial's first epoch
    next to converged ones): on a linear axis every other curve would lie flat on zero."""
    values = [v for t in study.get_trials(deepcopy=False) for v in (t.value, *t.intermediate_values.values())]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 100


def figures(study, workdir: Path) -> list[tuple[str, Any, str]]:
    """(title, figure or None, why not) for each section."""
    import optuna
    from optuna import visualization as vis

    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    varying = sorted({k for t in complete for k in t.params if len({repr(u.params.get(k)) for u in complete}) > 1})
    sections = [
        ("Optimisation history", lambda: vis.plot_optimization_history(study), bool(complete), "no completed trial"),
        (
            "Parameter importances",
            lambda: vis.plot_param_importances(study, params=varying),
            len(complete) >= 2 and len(varying) >= 2,
            "needs 2 completed trials and 2 parameters that vary",
        ),
        (
            "Validation loss per epoch, every trial",
            lambda: vis.plot_intermediate_values(study),
            any(t.intermediate_values for t in study.get_trials(deepcopy=False)),
            "no trial reported a validation loss",
        ),
        (
            "Parameters against the objective",
            lambda: vis.plot_parallel_coordinate(study, params=varying or None),
            bool(complete),
            "no completed trial",
        ),
    ]
    log_scale = needs_log_scale(study)
    out: list[tuple[str, Any, str]] = []  # (title, a plotly figure or None, why not)
    for title, make, possible, why_not in sections:
        if not possible:
            out.append((title, None, why_not))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure = make()
            if log_scale and title in LOSS_AXIS_FIGURES:
                figure.update_yaxes(type="log")
            out.append((title, figure, ""))
        except Exception as exc:  # one figure never costs the page
            out.append((title, None, f"{type(exc).__name__}: {exc}"))
    if complete:
        best = (
            min(complete, key=lambda t: t.value)
            if study.direction.name == "MINIMIZE"
            else max(complete, key=lambda t: t.value)
        )
        curves = best_trial_curves(workdir, best.number)
        out.append(("Best trial's loss curves", curves, "" if curves else "the best trial left no losses.json"))
    return out


def leaderboard(workdir: Path) -> str:
    import csv

    path = workdir / "leaderboard.csv"
    if not path.is_file():
        return "<p>no leaderboard.csv</p>"
    with open(path) as handle:
        rows = list(csv.reader(handle))
    head, body = rows[0], rows[1:]
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def write(study, workdir: Path, out: Path | None = None) -> Path:
    out = out or workdir / REPORT
    parts, plotly_js = [], True  # plotly.js once, inline, with the first figure
    for title, figure, why_not in figures(study, workdir):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if figure is None:
            parts.append(f"<p class='none'>not drawn: {html.escape(why_not)}</p>")
            continue
        parts.append(figure.to_html(full_html=False, include_plotlyjs=plotly_js))
        plotly_js = False
    complete = sum(t.state.name == "COMPLETE" for t in study.trials)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Tuning report</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1200px}} td,th{{border:1px solid #ccc;padding:3px 6px;
font-size:85%}} table{{border-collapse:collapse}} tr:nth-child(2) td{{background:#e8f4e8}} .none{{color:#777}}
</style></head><body><h1>Tuning report: {html.escape(study.study_name)}</h1>
<p>{html.escape(str(workdir))}: {len(study.trials)} trials, {complete} completed; objective
{html.escape(str(study.user_attrs.get("definition", {}).get("objective", "validation:loss")))}
({study.direction.name.lower()}).</p><h2>Leaderboard (best first)</h2>{leaderboard(workdir)}
{"".join(parts)}</body></html>"""
    out.write_text(page)
    return out


def main(argv=None) -> int:
    import optuna

    parser = argparse.ArgumentParser(prog="python -m insights.tuning_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path, help="the local tuning study's folder (with study.db)")
    parser.add_argument("--out", type=Path, help=f"HTML file (default WORKDIR/{REPORT})")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{args.workdir / 'study.db'}")
    print(f"report: {write(study, args.workdir, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
