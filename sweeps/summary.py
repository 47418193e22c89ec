"""What a sweep prints when it ends: one table row per point of the study."""

from __future__ import annotations

import json

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from sweeps.space import GRID_FIELDS, point_key
from sweeps.study import tally

__all__ = ["MAX_TABLE_ROWS", "print_trials"]

#: Above this many trials the end of a sweep prints two lines instead of the per-trial table (which is in
#: ``population.csv`` on the parent run and in the MLflow UI): the answer must fit on one screen.
MAX_TABLE_ROWS = 10


def print_trials(study: optuna.Study, console: Console, *, full: bool = False) -> None:
    """A table of the study's trials, one row per point: seed, lr (and the other axes), test acc, test loss, gap,
    status. Above ``MAX_TABLE_ROWS`` trials (unless ``full``): two lines with the counts by status and the ranges."""
    done = tally(study)
    shown = {t.number for t in done.values()}
    rows = list(done.values()) + [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number not in shown and t.params and point_key(t.params) not in done and t.state != TrialState.WAITING
    ]
    if len(rows) > MAX_TABLE_ROWS and not full:
        _print_counts(study.study_name, rows, console)
        return
    axes = [name for name in ("lr", *GRID_FIELDS, "width", "spawn_epoch") if any(name in t.params for t in rows)]
    axes = list(dict.fromkeys(["lr", *axes]))  # lr always shows (the preset's when not an axis)
    table = Table(title=f"study {study.study_name}", show_lines=False)
    columns = ("trial", "seed", *axes, "test acc", "test loss", "gap", "status")
    for column in columns:
        table.add_column(column, justify="right")
    preset_lr = json.loads(study.user_attrs.get("config", "{}")).get("train.lr")

    def order(trial: optuna.trial.FrozenTrial) -> tuple:
        return (*(_sortable(trial.params.get(name, 0)) for name in axes), trial.params.get("seed", 0), trial.number)

    for trial in sorted(rows, key=order):
        attrs = trial.user_attrs
        status = _status(trial)
        style = {"complete": "green", "diverged": "red"}.get(status, "yellow")
        cells = [str(trial.number), str(trial.params.get("seed"))]
        for name in axes:
            value = trial.params.get(name, preset_lr if name == "lr" else None)
            cells.append(value if isinstance(value, str) else "-" if value is None else f"{float(value):.3g}")
        cells += [
            f"{attrs['test_acc']:.4f}" if "test_acc" in attrs else "-",
            f"{trial.value:.4f}" if trial.value is not None else "-",
            f"{attrs['gap_loss']:+.4f}" if "gap_loss" in attrs else "-",
            f"[{style}]{status}[/]",
        ]
        table.add_row(*cells)
    console.print(table)


def _sortable(value: float | str) -> tuple[int, float | str]:
    """Axis values in order: numbers by value, names (``optimizer``) after them by name."""
    return (1, value) if isinstance(value, str) else (0, float(value))


def _status(trial: optuna.trial.FrozenTrial) -> str:
    return "diverged" if trial.user_attrs.get("failure") == "diverged" else trial.state.name.lower()


def _print_counts(name: str, rows: list[optuna.trial.FrozenTrial], console: Console) -> None:
    """``study X: 20 trials: 20 complete`` and the ranges of test accuracy and test loss over the complete ones."""
    counts: dict[str, int] = {}
    for trial in rows:
        counts[_status(trial)] = counts.get(_status(trial), 0) + 1
    tally_text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    console.print(f"[bold]study {name}[/]: {len(rows)} trials: {tally_text}", highlight=False)
    acc = sorted(t.user_attrs["test_acc"] for t in rows if "test_acc" in t.user_attrs)
    loss = sorted(t.value for t in rows if t.value is not None)
    if acc and loss:
        console.print(
            f"  test acc {acc[0]:.4f} to {acc[-1]:.4f} (median {acc[len(acc) // 2]:.4f}); test loss {loss[0]:.4f} to "
            f"{loss[-1]:.4f}; per-trial table: population.csv on the parent run",
            highlight=False,
        )
