"""The run hierarchy (a parent run per study, a child run per trial) and typed logging into one run."""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from landscape_core.common import json_safe
from tracking.store import TrackingStore

__all__ = ["RunLogger", "find_or_create_parent", "flatten_config", "running_children", "start_child"]

# MLflow accepts at most 1000 metrics / 100 params / 100 tags per log_batch call.
_BATCH = {"metrics": 1000, "params": 100, "tags": 100}


def flatten_config(config: Any, prefix: str = "") -> dict[str, str]:
    """A (nested) dataclass as flat ``{"a.b": "value"}`` strings, for run params."""
    out: dict[str, str] = {}
    items = dataclasses.asdict(config).items() if dataclasses.is_dataclass(config) else dict(config).items()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_config(value, f"{name}."))
        elif isinstance(value, (set, frozenset)):
            out[name] = ",".join(sorted(value)) or "-"
        else:
            out[name] = str(value)
    return out


class RunLogger:
    """Everything one run records: params, tags, metrics (optionally by step), figures, JSON arrays, checkpoints."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH["params"]):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH["params"]])

    def tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH["tags"]):
            self.client.log_batch(self.run_id, tags=items[i : i + _BATCH["tags"]])

    def metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log finite values; a non-finite value is logged as NaN so the UI shows it (MLflow rejects inf)."""
        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v) if math.isfinite(float(v)) else float("nan"), now, step) for k, v in metrics.items()
        ]
        for i in range(0, len(items), _BATCH["metrics"]):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH["metrics"]])

    def figure(self, figure: Any, name: str) -> None:
        """Save a matplotlib figure as ``figures/<name>.png``."""
        self.client.log_figure(self.run_id, figure, f"figures/{name}.png", save_kwargs={"dpi": 110})

    def json(self, data: Any, name: str) -> None:
        """Save raw arrays/results as ``data/<name>.json`` (NaN and inf become null)."""
        self.client.log_dict(self.run_id, json_safe(data), f"data/{name}.json")

    def checkpoint(self, state_dict: Mapping[str, torch.Tensor], name: str = "model.pt") -> None:
        """Save a state dict under ``checkpoint/`` (load it with ``torch.load(weights_only=True)``)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, path)
            self.client.log_artifact(self.run_id, str(path), "checkpoint")

    def text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, FAILED or KILLED."""
        RunStatus.from_string(status)  # validates
        self.client.set_terminated(self.run_id, status=status)


def find_or_create_parent(
    store: TrackingStore,
    experiment_id: str,
    study_name: str,
    *,
    tags: Mapping[str, Any] = (),
    run_id: str | None = None,
) -> RunLogger:
    """The study's parent run: ``run_id`` when known, else the one tagged with the study name, else a new one."""
    client = store.client()
    if run_id is None:
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.study = '{study_name}' and tags.run_kind = 'parent'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
    if run_id is None:
        run = client.create_run(
            experiment_id, run_name=study_name, tags={"study": study_name, "run_kind": "parent", **dict(tags)}
        )
        run_id = run.info.run_id
    return RunLogger(client, run_id)


def start_child(
    store: TrackingStore, experiment_id: str, parent_run_id: str, *, run_name: str, tags: Mapping[str, Any]
) -> RunLogger:
    """A new child run under the parent, tagged (study, trial number, seed, lr, ...)."""
    client = store.client()
    all_tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, "run_kind": "trial", **{k: str(v) for k, v in tags.items()}}
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return RunLogger(client, run.info.run_id)


def running_children(
    store: TrackingStore, experiment_id: str, parent_run_id: str, run_kind: str
) -> dict[str, dict[str, str]]:
    """The parent's child runs of ``run_kind`` that are still RUNNING: run id -> tags."""
    found = store.client().search_runs(
        [experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.run_kind = '{run_kind}' "
            "and attributes.status = 'RUNNING'"
        ),
    )
    return {run.info.run_id: dict(run.data.tags) for run in found}
