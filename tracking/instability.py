"""The instability report of a spawn sweep (``sweeps.spawn``, Frankle et al. 2020): the barrier between two branches
of one trunk against the epoch they parted at, beside the barrier between independent runs, and the two answers it
gives to the paper's question 2 ("how does random initialization lead to different local minima?").

1. "The initialization determines the minimum": with the initialization shared and only the batch order different
   (spawn epoch 0), do the two runs end in one linearly connected basin? The mean test-error barrier at k = 0 with a
   t-interval: supported when the CI lies below ``STABLE_ERROR`` (Frankle et al.'s 2% test error), refuted above.
2. "SGD noise stops changing the basin after epoch k*": the first spawn epoch whose CI lies below the threshold.

Both are read from the error barrier on the whole test split (Frankle et al.'s quantity); the loss barriers and the
weight-matched ones are in the table. ``python -m tracking.instability --parent-run ID`` prints it again.
"""

from __future__ import annotations

import argparse
import html
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from landscape_core import keys
from landscape_core.cli import ArgumentParser, run_command
from landscape_core.instability import INDEPENDENT
from landscape_core.plots.curves import instability_figure
from tracking.population import Population, load_population
from tracking.report import CSS, Claim, claims_table, figure_html, t_interval, threshold_verdict
from tracking.store import TrackingStore

__all__ = ["STABLE_ERROR", "InstabilityReport", "instability_report", "log_instability_report", "main"]

#: Frankle et al. 2020: a pair is stable (one linearly connected basin) when its test-error barrier is below 2%.
STABLE_ERROR = 0.02
#: The fewest pairs a verdict reads (fewer: no evidence; two equal barriers would make a zero-width interval).
MIN_PAIRS = 3
#: The table's columns: (header, key).
COLUMNS = (
    ("test error barrier", keys.instability("test", "error")),
    ("test loss barrier", keys.instability("test", "loss")),
    ("train loss barrier", keys.instability("train", "loss")),
    ("test error barrier, weight-matched", keys.instability("test", "error", aligned=True)),
)


@dataclass(frozen=True)
class InstabilityReport:
    """Per spawn epoch (``INDEPENDENT`` first), each column's values over the pairs, and the claims."""

    values: dict[int, dict[str, np.ndarray]]
    claims: list[Claim]

    @property
    def spawn_epochs(self) -> list[int]:
        return sorted(k for k in self.values if k != INDEPENDENT)


def instability_report(population: Population) -> InstabilityReport:
    """Group a spawn sweep's runs by spawn epoch and answer the claims."""
    epochs = population.hyperparameter("spawn_epoch")
    values: dict[int, dict[str, np.ndarray]] = {}
    for k in sorted({int(e) for e in epochs[np.isfinite(epochs)]}):
        rows = epochs == k
        values[k] = {key: population.column(key)[rows] for _, key in COLUMNS}
    error = keys.instability("test", "error")
    return InstabilityReport(values, [_init_claim(values, error), _stable_epoch_claim(values, error)])


def _init_claim(values: dict[int, dict[str, np.ndarray]], key: str) -> Claim:
    claim = "The initialization determines the minimum (same init, different batch order: one basin)"
    quantity = "mean test error barrier between branches spawned at epoch 0"
    criterion = f"supported when the CI lies below {STABLE_ERROR:g} (Frankle et al. 2020), refuted above"
    if 0 not in values:
        return Claim(claim, quantity, math.nan, math.nan, math.nan, criterion, "no evidence", "no spawn at epoch 0")
    mean, low, high = t_interval(values[0][key])
    n = int(np.isfinite(values[0][key]).sum())
    note = f"n = {n} pairs" + ("" if n >= MIN_PAIRS else f" (a verdict needs {MIN_PAIRS}: --pairs)")
    if INDEPENDENT in values:
        independent, _, _ = t_interval(values[INDEPENDENT][key])
        note += f"; independent runs (different inits): {independent:.3g}"
        if math.isfinite(independent) and independent > 0:
            note += f", so epoch 0 keeps {mean / independent:.0%} of it"
    verdict = threshold_verdict(low, high, STABLE_ERROR, False) if n >= MIN_PAIRS else "no evidence"
    return Claim(claim, quantity, mean, low, high, criterion, verdict, note)


def _stable_epoch_claim(values: dict[int, dict[str, np.ndarray]], key: str) -> Claim:
    claim = "SGD noise stops changing the basin after an early epoch k*"
    quantity = "the first spawn epoch whose test error barrier CI lies below the threshold"
    criterion = f"k* is the first spawn epoch whose CI lies below {STABLE_ERROR:g}; no evidence when none does"
    spawned = sorted(k for k in values if k != INDEPENDENT)
    for k in spawned:
        mean, low, high = t_interval(values[k][key])
        if np.isfinite(values[k][key]).sum() >= MIN_PAIRS and math.isfinite(high) and high < STABLE_ERROR:
            note = f"stable from epoch {k} on the spawned epochs {spawned}; barrier there {mean:.3g}"
            return Claim(claim, quantity, float(k), math.nan, math.nan, criterion, "supported", note)
    note = f"no spawned epoch of {spawned} is stable with {MIN_PAIRS}+ pairs: spawn later (--spawn-epochs) or add pairs"
    return Claim(claim, quantity, math.nan, math.nan, math.nan, criterion, "no evidence", note)


def _label(k: int) -> str:
    return "independent" if k == INDEPENDENT else f"spawn at {k}"


def render(report: InstabilityReport, console: Console) -> None:
    """The answer first (the claims), then the barrier per spawn epoch."""
    answers = Table(title="Where minima come from (instability analysis)", show_lines=False)
    for column in ("claim", "number [95% CI]", "verdict", "note"):
        answers.add_column(column)
    for c in report.claims:
        ci = f" [{c.low:.3g}, {c.high:.3g}]" if math.isfinite(c.low) else ""
        answers.add_row(c.claim, f"{c.value:.3g}{ci}", f"[{c.style}]{c.verdict}[/]", c.note)
    console.print(answers)
    table = Table(title="Barrier between the two runs of a pair (mean [95% CI] over pairs)")
    table.add_column("pair")
    table.add_column("n", justify="right")
    for header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for k, columns in report.values.items():
        cells = [_fmt_ci(columns[key]) for _, key in COLUMNS]
        table.add_row(_label(k), str(int(np.isfinite(columns[COLUMNS[0][1]]).sum())), *cells)
    console.print(table)


def report_html(report: InstabilityReport, title: str) -> str:
    """The spawn sweep's report.html: the claims, the figure, the table."""
    error = keys.instability("test", "error")
    figure = instability_figure(
        report.spawn_epochs,
        [report.values[k][error] for k in report.spawn_epochs],
        report.values.get(INDEPENDENT, {}).get(error, np.array([])),
        threshold=STABLE_ERROR,
    )
    rows = "".join(
        f"<tr><td>{_label(k)}</td>" + "".join(f"<td>{_fmt_ci(columns[key])}</td>" for _, key in COLUMNS) + "</tr>"
        for k, columns in report.values.items()
    )
    head = "<tr><th>pair</th>" + "".join(f"<th>{html.escape(h)}</th>" for h, _ in COLUMNS) + "</tr>"
    return "\n".join(
        [
            f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
            "<h2>The paper's question 2, asked of the population</h2>",
            claims_table(report.claims),
            figure_html("The test error barrier between two branches against the epoch they parted at", figure),
            f"<h2>Barriers per spawn epoch (mean [95% CI] over pairs)</h2><table>{head}{rows}</table>",
            "</body></html>",
        ]
    )


def _fmt_ci(values: np.ndarray) -> str:
    mean, low, high = t_interval(values)
    return f"{mean:.3g} [{low:.3g}, {high:.3g}]" if math.isfinite(low) else f"{mean:.3g}"


def log_instability_report(store: TrackingStore, parent_run_id: str, console: Console) -> InstabilityReport:
    """Print the report of a finished spawn sweep and log it on its parent run (``report.html``, the figure, and
    ``instability/*`` headline metrics)."""
    from tracking.runs import RunLogger  # imports MLflow: ``python -m tracking.instability`` only prints

    population = load_population(store, parent_run_id=parent_run_id)
    report = instability_report(population)
    render(report, console)
    parent = RunLogger(store.client(), parent_run_id)
    parent.text(report_html(report, f"Instability report: {population.source}"), "report.html")
    error = keys.instability("test", "error")
    parent.metrics(
        {f"headline/{error}/{_label(k).replace(' ', '_')}": t_interval(v[error])[0] for k, v in report.values.items()}
    )
    return report


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m tracking.instability", description="Print a spawn sweep's instability report.")
    p.add_argument("--parent-run", required=True, help="the spawn sweep's parent run id")
    p.add_argument("--root", default="mlruns", help="local store directory (default ./mlruns)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in --root)")
    return p


def _main(args: argparse.Namespace, console: Console) -> int:
    store = TrackingStore.resolve(args.tracking_uri, args.root)
    render(instability_report(load_population(store, parent_run_id=args.parent_run)), console)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(parser(), argv, _main)


if __name__ == "__main__":
    sys.exit(main())
