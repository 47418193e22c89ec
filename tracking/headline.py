"""A sweep's headline on its parent run: what the MLflow UI shows before anyone opens the report.

:func:`log_headline` (called by ``tracking.correlate.log_report``, so at the end of every sweep with a report) sets
the parent run's description, ``mlflow.note.content``: markdown with n, the strongest verdicts on test loss and a
link to ``report.html`` in the run's artifacts; and logs the headline numbers as parent-run metrics,
``headline/n_finished`` and ``headline/rho_test_loss/<measure>`` (Spearman rho of each measure with the final test
loss), so that a runs table of several sweeps' parents sorts by them.

MLflow 3.17's UI opens an experiment in its GenAI view (traces) unless its sidebar is switched to *Model training*,
whatever the experiment's kind tag (``tracking.store.EXPERIMENT_KIND_TAG``) says; :func:`ui_route` gives the page
with the switch set (``?workflowType=machine_learning``), which is what the description links to.
"""

from __future__ import annotations

import math

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from landscape_core import keys
from tracking.correlation import CorrelationEntry, CorrelationReport
from tracking.runs import RunLogger
from tracking.store import TrackingStore

__all__ = [
    "HEADLINE_TARGET",
    "MAX_VERDICTS",
    "N_FINISHED",
    "description",
    "headline_metrics",
    "log_headline",
    "rho_key",
    "strongest",
    "ui_route",
]

#: The target of the headline numbers and verdicts (the sweep's Optuna objective too).
HEADLINE_TARGET = "test_loss"
#: Parent-run metric: the finished trial runs the report is over.
N_FINISHED = "headline/n_finished"
#: The description lists at most this many verdicts.
MAX_VERDICTS = 5
#: The longest description MLflow stores as a tag value is 8000 characters.
_MAX_NOTE = 8000


def rho_key(measure: str) -> str:
    """Parent-run metric: Spearman rho of ``measure`` with the headline target (``headline/rho_test_loss/<m>``)."""
    return f"headline/rho_{HEADLINE_TARGET}/{measure}"


def ui_route(experiment_id: str, run_id: str | None = None, path: str = "") -> str:
    """The MLflow UI's route to an experiment (or one of its runs, or a run's ``artifacts/...`` page), opened in the
    UI's Model-training view: ``#/experiments/1/runs/<id>/artifacts/report.html?workflowType=machine_learning``."""
    route = f"#/experiments/{experiment_id}"
    if run_id is not None:
        route += f"/runs/{run_id}" + (f"/{path.strip('/')}" if path else "")
    return route + "?workflowType=machine_learning"


def headline_metrics(report: CorrelationReport) -> dict[str, float]:
    """``headline/n_finished`` and, per measure of the report, its Spearman rho with test loss (NaN when undefined),
    to 4 decimals (the UI shows a metric's every digit; the report's tables show 2)."""
    metrics = {N_FINISHED: float(report.n_runs)}
    for entry in report.for_target(HEADLINE_TARGET):
        metrics[rho_key(entry.measure)] = round(float(entry.row.spearman), 4)
    return metrics


def strongest(report: CorrelationReport, limit: int = MAX_VERDICTS) -> list[CorrelationEntry]:
    """The exploratory entries on test loss with the most evidence: smallest q-value, then largest |rho|.

    The primary hypotheses (listed on their own), the train-loss control and entries without a finite rho are left
    out.
    """
    entries = [
        e
        for e in report.for_target(HEADLINE_TARGET)
        if e.measure != keys.CONTROL and not e.primary and math.isfinite(e.row.spearman)
    ]
    entries.sort(key=lambda e: (e.adjusted_p if math.isfinite(e.adjusted_p) else math.inf, -abs(e.row.spearman)))
    return entries[:limit]


def description(report: CorrelationReport, report_link: str | None = None) -> str:
    """The parent run's description (markdown): n, the strongest verdicts on test loss, where the report is."""
    studies = report.population.get("studies") or []
    name = f"Sweep `{', '.join(map(str, studies))}`" if studies else "Sweep"
    exploratory = report.exploratory
    significant = sum(1 for e in exploratory if e.significant)
    lines = [f"**{name}: {report.n_runs} finished trials.** Plan {report.plan.summary()}.", ""]
    lines += [
        f"- **{p.hypothesis.name}: {p.verdict}** (rho={p.rho:+.2f}, Holm p={p.adjusted_raw:.2g}; given train loss "
        f"rho={p.partial_rho:+.2f}, Holm p={p.adjusted_partial:.2g})"
        for p in report.primary
    ]
    lines += [
        "",
        f"{report.power_note}. Exploratory: {significant} of {len(exploratory)} rows with Benjamini-Hochberg "
        f"q < {report.alpha:g}. Strongest on {HEADLINE_TARGET}:",
        "",
    ]
    lines += [f"- `{e.measure}`: {e.verdict}" for e in strongest(report)] or ["- (no measure has a defined rho)"]
    report_html = f"[report.html]({report_link})" if report_link else "`report.html`"
    lines += [
        "",
        f"The full report: open {report_html} in this run's *Artifacts* (the paper's claims and figures over the "
        "population, the correlation table); the tables as text in `correlation.txt`.",
    ]
    note = "\n".join(lines)
    return note if len(note) <= _MAX_NOTE else note[: _MAX_NOTE - 1] + "…"


def log_headline(store: TrackingStore, parent_run_id: str, report: CorrelationReport) -> None:
    """Set the parent run's description and log its headline metrics (an empty report logs nothing)."""
    if not report.entries:
        return
    run = RunLogger(store.client(), parent_run_id)
    experiment_id = run.client.get_run(parent_run_id).info.experiment_id
    run.tags({MLFLOW_RUN_NOTE: description(report, ui_route(experiment_id, parent_run_id, "artifacts/report.html"))})
    run.metrics(headline_metrics(report))
