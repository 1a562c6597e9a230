"""Each reference table, rendered as Markdown from the code that defines its rows.

    hyperparameters     contract/spec/hyperparameters.py HYPERPARAMETERS: name, type, default, meaning
    metric-lines        contract/spec/metrics.py METRIC_DEFINITIONS: name, regex
    server-environment  server/settings.py VARIABLES: variable, default, meaning
    server-metrics      server/metrics.py's metric objects: name, type, labels, help

Help strings are Markdown already (backticks, links); cells only escape `|` and `<`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from contract.spec.hyperparameters import HYPERPARAMETERS
from contract.spec.metrics import METRIC_DEFINITIONS


def cell(text: str) -> str:
    """Markdown text in a table cell: pipes escaped, and `<` (GitHub would take <name> for a tag)."""
    return str(text).replace("|", r"\|").replace("<", "&lt;")


def code(text: str) -> str:
    return "`" + str(text).replace("|", r"\|") + "`"


def markdown(header: tuple[str, ...], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def hyperparameters() -> str:
    rows = [
        (
            code(hp.name),
            "one of " + ", ".join(map(code, hp.choices)) if hp.choices else cell(hp.kind),
            cell(hp.default_text),
            cell(hp.help),
        )
        for hp in HYPERPARAMETERS
    ]
    return markdown(("name", "type", "default", "meaning"), rows)


def metric_lines() -> str:
    rows = [(code(d["Name"]), code(d["Regex"])) for d in METRIC_DEFINITIONS]
    return markdown(("metric", "regex"), rows)


def server_environment() -> str:
    from server.settings import VARIABLES

    rows = [(code(v.name), cell(v.default_text), cell(v.meaning)) for v in VARIABLES]
    return markdown(("environment variable", "default", "meaning"), rows)


def server_metrics() -> str:
    """Read from the metric objects as defined (no server started: outside one, prometheus_client
    keeps them in the process). The label names have no public accessor: `_labelnames`.
    byoc_models_loaded is a collector read at scrape time, asked for its family here."""
    from prometheus_client.metrics import MetricWrapperBase

    from server import metrics

    rows = []
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            family = next(iter(metric.describe()))
            labels = metric._labelnames
        elif metric is metrics._ModelsLoaded:
            family, labels = next(iter(metric(lambda: 0).collect())), ()
        else:
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        rows.append((code(name), family.type, ", ".join(map(code, labels)), cell(family.documentation)))
    return markdown(("metric", "type", "labels", "help"), rows)


TABLES: dict[str, Callable[[], str]] = {
    "hyperparameters": hyperparameters,
    "metric-lines": metric_lines,
    "server-environment": server_environment,
    "server-metrics": server_metrics,
}
