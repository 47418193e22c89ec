"""Search spaces: which (seed, lr) points a sweep visits, and the one function that turns a trial into configs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna

from landscape_core.config import Preset

__all__ = ["SweepSpace", "configs_from_trial", "lr_grid", "point_key"]


@dataclass(frozen=True)
class SweepSpace:
    """The population a sweep covers.

    A seeds sweep has ``lrs = None`` (every trial uses the preset's lr). An lr sweep lists its learning rates, each
    run with every seed; with ``sampler="tpe"`` the lrs are chosen adaptively in ``[lr_min, lr_max]`` instead.
    """

    kind: str  # "seeds" or "lr"
    seeds: tuple[int, ...]
    lrs: tuple[float, ...] | None = None
    lr_min: float | None = None
    lr_max: float | None = None
    sampler: str = "grid"
    adaptive_trials: int = 0  # tpe only: how many trials the sampler proposes

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("Expected at least one seed, got none")

    @property
    def n_trials(self) -> int:
        return len(self.points()) if self.planned else self.adaptive_trials

    @property
    def planned(self) -> bool:
        """True when every point is known up front (grid, qmc, seeds) and enqueued; False for adaptive TPE."""
        return self.sampler != "tpe"

    def points(self) -> list[dict[str, float | int]]:
        """The enqueued trial params, lr-major: ``[{"seed": 1}, ...]`` or ``[{"lr": 0.01, "seed": 1}, ...]``."""
        if self.lrs is None:
            return [{"seed": s} for s in self.seeds]
        return [{"lr": lr, "seed": s} for lr in self.lrs for s in self.seeds]


def lr_grid(n: int, lr_min: float, lr_max: float, sampler: str = "grid", seed: int = 0) -> tuple[float, ...]:
    """``n`` learning rates in ``[lr_min, lr_max]`` on a log scale: an even grid, or a scrambled Sobol design (qmc)."""
    if sampler == "grid":
        values = np.geomspace(lr_min, lr_max, n) if n > 1 else np.array([math.sqrt(lr_min * lr_max)])
    elif sampler == "qmc":
        from scipy.stats import qmc

        unit = qmc.Sobol(d=1, scramble=True, rng=np.random.default_rng(seed)).random(n)[:, 0]
        values = np.exp(np.log(lr_min) + unit * (np.log(lr_max) - np.log(lr_min)))
    else:
        raise ValueError(f"Expected `sampler` in ('grid', 'qmc', 'tpe'), got {sampler!r}")
    return tuple(float(f"{v:.6g}") for v in sorted(values))


def point_key(params: dict) -> tuple:
    """A hashable identity of a trial's point (its seed and, in lr sweeps, its lr)."""
    return (int(params["seed"]), round(float(params["lr"]), 12) if "lr" in params else None)


def configs_from_trial(trial: optuna.trial.BaseTrial, space: SweepSpace, preset: Preset) -> Preset:
    """The only place that reads trial params: the trial's seed (and lr) applied to the preset."""
    seed = trial.suggest_int("seed", min(space.seeds), max(space.seeds))
    lr = preset.train.lr
    if space.lrs is not None or space.sampler == "tpe":
        low = space.lr_min if space.lr_min is not None else min(space.lrs)
        high = space.lr_max if space.lr_max is not None else max(space.lrs)
        lr = trial.suggest_float("lr", low, high, log=True)
    return preset.replace(seed=seed, lr=lr)
