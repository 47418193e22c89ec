"""MLflow tracking: the run hierarchy, what each run logs, reading populations back, the correlation report.

The public names below load their module on first use (PEP 562), so ``import tracking`` stays cheap: a command of
this package (``python -m tracking.report``) refuses bad input before MLflow and torch are imported.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

#: Public name -> the module of tracking that defines it.
_EXPORTS = {
    "RunLogger": "runs",
    "TrackingStore": "store",
    "default_tracking_uri": "store",
    "find_or_create_parent": "runs",
    "start_child": "runs",
}

__all__ = sorted(_EXPORTS)

# Artifact downloads (checkpoints of reference models) would otherwise draw tqdm bars inside our rich progress.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tracking.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
