"""Optuna sweeps: search spaces, the trial pipeline, storages, workers and the entry points. The only optuna user.

The public names below load their module on first use (PEP 562), so ``python -m sweeps.seeds`` refuses bad input
before Optuna, MLflow and the trial pipeline are imported.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module of sweeps that defines it.
_EXPORTS = {
    "SweepOptions": "options",
    "SweepOutcome": "runner",
    "SweepSpace": "space",
    "configs_from_trial": "space",
    "lr_grid": "space",
    "run_sweep": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sweeps' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sweeps.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
