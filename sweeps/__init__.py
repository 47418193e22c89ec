"""Optuna sweeps: search spaces, the trial pipeline, storages, workers and the entry points. The only optuna user."""

from __future__ import annotations

from sweeps.options import SweepOptions
from sweeps.runner import SweepOutcome, run_sweep
from sweeps.space import SweepSpace, configs_from_trial, lr_grid

__all__ = ["SweepOptions", "SweepOutcome", "SweepSpace", "configs_from_trial", "lr_grid", "run_sweep"]
