"""MLflow tracking: the run hierarchy, what each run logs, reading populations back, the correlation report."""

from __future__ import annotations

import os

from tracking.runs import RunLogger, find_or_create_parent, start_child
from tracking.store import TrackingStore, default_tracking_uri

__all__ = ["RunLogger", "TrackingStore", "default_tracking_uri", "find_or_create_parent", "start_child"]

# Artifact downloads (checkpoints of reference models) would otherwise draw tqdm bars inside our rich progress.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
