"""MLflow tracking: the run hierarchy, what each run logs, reading populations back, the correlation report."""

from __future__ import annotations

from tracking.runs import RunLogger, find_or_create_parent, start_child
from tracking.store import TrackingStore, default_tracking_uri

__all__ = ["RunLogger", "TrackingStore", "default_tracking_uri", "find_or_create_parent", "start_child"]
