"""Search spaces: which (seed, lr, width) points a sweep visits, and the one function that turns a trial into
configs."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from landscape_core.errors import UsageError

if TYPE_CHECKING:
    import optuna

    from landscape_core.config import Preset

__all__ = ["GRID_FIELDS", "REFERENCE_SEED", "SweepSpace", "configs_from_trial", "lr_grid", "point_key"]

#: The TrainConfig fields a grid sweep can make axes of: Jiang et al. 2019's kind of hyperparameters, the update rule
#: (issue 22: sgd against full-batch gd, adam, sam), and the seed's two jobs apart (issue 23: init against order).
GRID_FIELDS = ("lr", "batch_size", "momentum", "epochs", "train_size", "optimizer", "init_seed", "order_seed")

#: The seed of the study's reference minimum for the barriers (``sweeps.reference``): no sweep may draw it.
REFERENCE_SEED = 1_000_003


@dataclass(frozen=True)
class SweepSpace:
    """The population a sweep covers.

    A seeds sweep has ``lrs = None`` (every trial uses the preset's lr). An lr sweep lists its learning rates, each
    run with every seed; with ``sampler="tpe"`` the lrs are chosen adaptively in ``[lr_min, lr_max]`` instead.
    ``widths`` (either sweep) adds the architecture's width multiplier as an axis: every point is run at each width.
    """

    kind: str  # "seeds", "lr", "grid" or "spawn"
    seeds: tuple[int, ...]
    lrs: tuple[float, ...] | None = None
    lr_min: float | None = None
    lr_max: float | None = None
    sampler: str = "grid"
    adaptive_trials: int = 0  # tpe only: how many trials the sampler proposes
    widths: tuple[float, ...] | None = None
    #: A grid sweep's hyperparameter axes: ``((field, values), ...)`` over ``GRID_FIELDS`` of TrainConfig, crossed
    #: with each other (and the widths) and run with every seed.
    grid: tuple[tuple[str, tuple[float | str, ...]], ...] = ()
    #: An instability sweep's spawn epochs (``landscape_core.instability``; -1: the independent pair), each run with
    #: every seed (a pair's trunk): a trial trains two branches and measures the barrier between them.
    spawn_epochs: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.seeds:
            raise UsageError("Expected at least one seed, got none")
        if REFERENCE_SEED in self.seeds:
            raise UsageError(f"seed {REFERENCE_SEED} is the reference minimum's (sweeps.reference); choose others")
        if self.spawn_epochs is not None and (
            not self.spawn_epochs
            or min(self.spawn_epochs) < -1
            or len(set(self.spawn_epochs)) != len(self.spawn_epochs)
        ):
            raise UsageError(f"Expected distinct spawn epochs >= 0 (or -1: independent), got {self.spawn_epochs}")
        if self.widths is not None and (not self.widths or min(self.widths) <= 0):
            raise UsageError(f"Expected widths > 0, got {self.widths}")
        for name, values in self.grid:
            if name not in GRID_FIELDS:
                raise UsageError(f"Expected grid axes among {', '.join(GRID_FIELDS)}, got {name!r}")
            if not values or len(set(values)) != len(values):
                raise UsageError(f"Expected distinct values of the grid axis {name}, got {values}")

    @property
    def n_trials(self) -> int:
        return len(self.points()) if self.planned else self.adaptive_trials

    @property
    def planned(self) -> bool:
        """True when every point is known up front (grid, qmc, seeds) and enqueued; False for adaptive TPE."""
        return self.sampler != "tpe"

    @property
    def varies_lr(self) -> bool:
        """True when the lr is an axis (an lr list, or chosen by the sampler)."""
        return self.lrs is not None or not self.planned or "lr" in dict(self.grid)

    def points(self) -> list[dict[str, float | int]]:
        """The enqueued trial params, lr-major (or grid-major, in the order of the grid's axes), then width, then
        seed: ``[{"seed": 1}, ...]``, ``[{"lr": 0.01, "seed": 1}, ...]``, ``[{"lr": 0.01, "width": 0.5, "seed": 1},
        ...]`` or ``[{"lr": 0.003, "batch_size": 32, "seed": 1}, ...]``."""
        lrs = [{"lr": lr} for lr in self.lrs] if self.lrs is not None else [{}]
        cells = [
            dict(zip((n for n, _ in self.grid), values)) for values in itertools.product(*(v for _, v in self.grid))
        ]
        widths = [{"width": w} for w in self.widths] if self.widths is not None else [{}]
        spawns = [{"spawn_epoch": k} for k in self.spawn_epochs] if self.spawn_epochs is not None else [{}]
        return [
            {**lr, **cell, **width, **spawn, "seed": s}
            for lr in lrs
            for cell in cells
            for width in widths
            for spawn in spawns
            for s in self.seeds
        ]


def lr_grid(n: int, lr_min: float, lr_max: float, sampler: str = "grid", seed: int = 0) -> tuple[float, ...]:
    """``n`` learning rates in ``[lr_min, lr_max]`` on a log scale: an even grid, or a scrambled Sobol design (qmc)."""
    if sampler == "grid":
        values = np.geomspace(lr_min, lr_max, n) if n > 1 else np.array([math.sqrt(lr_min * lr_max)])
    elif sampler == "qmc":
        from scipy.stats import qmc  # scipy.stats takes a second to import: only qmc sweeps need it

        unit = qmc.Sobol(d=1, scramble=True, rng=np.random.default_rng(seed)).random(n)[:, 0]
        values = np.exp(np.log(lr_min) + unit * (np.log(lr_max) - np.log(lr_min)))
    else:
        raise UsageError(f"Expected `sampler` in ('grid', 'qmc', 'tpe'), got {sampler!r}")
    return tuple(float(f"{v:.6g}") for v in sorted(values))


def point_key(params: dict) -> tuple:
    """A hashable identity of a trial's point: its seed and every axis it sets (``lr``, ``width``, grid axes)."""
    axes = tuple(sorted((name, _identity(value)) for name, value in params.items() if name != "seed"))
    return (int(params["seed"]), axes)


def _identity(value: float | int | str) -> float | str:
    """An axis value as a point's identity: numbers rounded (a float read back from storage may differ in its last
    bits), names (``optimizer``) as they are."""
    return value if isinstance(value, str) else round(float(value), 12)


def configs_from_trial(trial: optuna.trial.BaseTrial, space: SweepSpace, preset: Preset) -> Preset:
    """The only place that reads trial params: the trial's seed (and lr, width) applied to the preset."""
    seed = trial.suggest_int("seed", min(space.seeds), max(space.seeds))
    lr = preset.train.lr
    if space.varies_lr and "lr" not in dict(space.grid):
        low = space.lr_min if space.lr_min is not None else min(space.lrs)
        high = space.lr_max if space.lr_max is not None else max(space.lrs)
        lr = trial.suggest_float("lr", low, high, log=True)
    grid = {name: trial.suggest_categorical(name, values) for name, values in space.grid}
    if "lr" in grid:
        lr = grid.pop("lr")
    width = trial.suggest_categorical("width", space.widths) if space.widths is not None else None
    if space.spawn_epochs is not None:  # read by the trial's body (sweeps.pipeline), not a training field
        trial.suggest_categorical("spawn_epoch", space.spawn_epochs)
    return preset.replace(seed=seed, lr=lr, width=width, **grid)
