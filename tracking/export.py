"""The population as one file: one row per finished trial, with its params, every final metric, the run id and
the model URI.

``python -m tracking.export [--experiment E] [--study S | --parent-run ID] --out population.csv|.parquet``. The
rows are the runs ``tracking.population.load_population`` selects (finished runs, one per trial), so the file and
the correlation report see the same population. A sweep also logs ``population.csv`` on its parent run when it ends.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from landscape_core.cli import ArgumentParser, require_writable, run_command
from landscape_core.errors import UsageError
from tracking.population import Population, add_selection_options, select_population
from tracking.store import TrackingStore

__all__ = ["FORMATS", "log_population", "main", "population_rows", "read_rows", "write_rows"]

#: The file formats ``--out`` may end in.
FORMATS = (".csv", ".parquet")
#: The leading columns of every row; then ``param.<name>`` for every param, then every metric key.
ID_COLUMNS = ("run_id", "study", "trial_number", "seed", "lr", "model_uri")


def population_rows(population: Population) -> list[dict[str, Any]]:
    """One dict per run, every row with the same columns: ``ID_COLUMNS``, ``param.<name>`` (strings, "" where a
    run lacks one), then the metric keys (floats, NaN where a run lacks one), each group sorted by name."""
    params = sorted({name for run in population.runs for name in run.params})
    metrics = sorted({key for run in population.runs for key in run.metrics})
    rows = []
    for run in population.runs:
        row: dict[str, Any] = {
            "run_id": run.run_id,
            "study": run.study,
            "trial_number": run.trial_number,
            "seed": run.seed,
            "lr": run.lr,
            "model_uri": run.model_uri or "",
        }
        row.update({f"param.{name}": run.params.get(name, "") for name in params})
        row.update({key: run.metrics.get(key, math.nan) for key in metrics})
        rows.append(row)
    return rows


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write the rows as CSV (floats with every digit: ``repr``) or Parquet, by ``path``'s suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text(_csv_text(rows))
    return path


def _csv_text(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: repr(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    return out.getvalue()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a file ``write_rows`` wrote, typed again (ids and params as strings, numbers as numbers)."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    with path.open(newline="") as f:
        return [{k: _typed(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def _typed(column: str, value: str) -> Any:
    if column in ("run_id", "study", "model_uri") or column.startswith("param."):
        return value
    if column in ("trial_number", "seed"):
        return int(value)
    return float(value)


def log_population(store: TrackingStore, parent_run_id: str, population: Population) -> None:
    """Log the population as ``population.csv`` on the parent run."""
    from tracking.runs import RunLogger  # imports MLflow and torch: ``python -m tracking.export`` never logs

    RunLogger(store.client(), parent_run_id).text(_csv_text(population_rows(population)), "population.csv")


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m tracking.export", description="Write a population of finished trials to a file.")
    add_selection_options(p)
    p.add_argument("--out", type=Path, help="the file to write: population.csv or population.parquet (required)")
    return p


def _export(args: argparse.Namespace, console: Console) -> int:
    if args.out is None or args.out.suffix not in FORMATS:
        raise UsageError(f"Expected `--out` ending in {' or '.join(FORMATS)}, got {args.out and str(args.out)!r}")
    require_writable("--out", args.out)
    _, population = select_population(args)
    path = write_rows(population_rows(population), args.out)
    console.print(f"wrote {len(population.runs)} trials of {population.source} to {path}", highlight=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(parser(), argv, _export)


if __name__ == "__main__":
    sys.exit(main())
