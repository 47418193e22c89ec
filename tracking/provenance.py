"""What a run records about where it came from: the source (git commit), package versions, host and device, the
data it read (as MLflow dataset inputs), and the machine's load while it ran (MLflow system metrics)."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from torch import Tensor

from landscape_core.splits import SUBSETS, TrialData
from tracking.runs import RunLogger

__all__ = ["dataset_inputs", "log_datasets", "provenance_tags", "system_metrics"]

#: Packages whose versions every run records, as tags ``versions.<package>``.
PACKAGES = ("torch", "torchvision", "mlflow", "optuna", "numpy", "scipy")
#: MLflow's sampling interval for system metrics on trial runs (its default, 10 s, misses short trials).
SYSTEM_METRICS_SECONDS = 1.0
#: How long an interrupted trial waits for the system metrics monitor to stop.
STOP_SECONDS = 5.0


def _git(*args: str) -> str:
    """``git args`` in this package's directory: its output, stripped ("" when git fails or is absent)."""
    here = Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


@functools.cache
def _git_commit() -> str | None:
    """The commit of the checkout this package runs from, with ``-dirty`` when tracked files have local changes;
    None outside a git checkout. Read once per process: the code a process runs does not change under it."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None
    return commit + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def provenance_tags(device: str) -> dict[str, str]:
    """Tags for a run: the git commit (MLflow's own ``mlflow.source.git.commit``, when in a checkout), the
    versions of Python and the key packages, the host and the device."""
    tags = {"host": socket.gethostname(), "device": str(device), "versions.python": platform.python_version()}
    for package in PACKAGES:
        try:
            tags[f"versions.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    commit = _git_commit()
    if commit is not None:
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
        tags["git_commit"] = commit
    return tags


def _digest(index: Tensor) -> str:
    return hashlib.sha256(index.cpu().numpy().astype("int64").tobytes()).hexdigest()[:16]


def dataset_inputs(data: TrialData, sizes: dict[str, int | None]) -> list[DatasetInput]:
    """The trial's splits and the analysis subsets it measured on, as MLflow dataset inputs: name
    ``fashion-mnist/<split or subset>``, a digest of the image indices (runs that share images share it), the
    source directory, and the context (``training``, ``test`` or ``analysis``) as MLflow's context tag.

    Args:
        data: the trial's splits (built by ``TrialData.build``, so their indices are known).
        sizes: the subsets that ran, by name in ``SUBSETS``, with their sizes (None: the whole split).
    """
    named = {"train": None, "test": None, **{name: size for name, size in sizes.items() if name in SUBSETS}}
    inputs = []
    for name, size in named.items():
        index = data.indices(name, size)
        if index is None:
            continue
        context = {"train": "training", "test": "test"}.get(name, "analysis")
        split = name if name in ("train", "test") else SUBSETS[name].split
        dataset = Dataset(
            name=f"fashion-mnist/{name}",
            digest=_digest(index),
            source_type="local",
            source=json.dumps({"uri": data.source}),
            schema=json.dumps({"split": split, "images": int(index.numel())}),
            profile=json.dumps({"num_rows": int(index.numel())}),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    return inputs


def log_datasets(run: RunLogger, data: TrialData, sizes: dict[str, int | None], attempts: int = 3) -> None:
    """Log ``dataset_inputs(data, sizes)`` on the run.

    Workers that start together log the same datasets at once; the tracking server creates each dataset once, and the
    loser of that race gets a unique-key violation. The dataset then exists, so a retry only links it to the run.
    """
    inputs = dataset_inputs(data, sizes)
    for attempt in range(attempts):
        try:
            if inputs:
                run.client.log_inputs(run.run_id, datasets=inputs)
            return
        except MlflowException as error:
            if attempt == attempts - 1 or not _duplicate_key(error):
                raise
            time.sleep(0.2 * (attempt + 1))


def _duplicate_key(error: MlflowException) -> bool:
    text = str(error).lower()
    return "unique" in text or "duplicate" in text or "integrity" in text


@contextmanager
def system_metrics(run: RunLogger, tracking_uri: str) -> Iterator[None]:
    """MLflow's system metrics (CPU, memory, disk, network; GPU where there is one) on the run while the block
    runs, sampled every ``SYSTEM_METRICS_SECONDS``."""
    monitor = SystemMetricsMonitor(
        run.run_id, sampling_interval=SYSTEM_METRICS_SECONDS, samples_before_logging=1, tracking_uri=tracking_uri
    )
    monitor.start()
    try:
        yield
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) or failed: stop the monitor, but wait for its thread at most
        # STOP_SECONDS. A SIGTERM raised inside the main thread's import machinery can leak the import lock, and the
        # monitor's thread, which imports in MlflowClient(), then blocks forever (py-spy on a hung test worker).
        # Its thread is a daemon: an unfinished one does not keep the process.
        stopper = threading.Thread(target=monitor.finish, name="stop-system-metrics", daemon=True)
        stopper.start()
        stopper.join(STOP_SECONDS)
        raise
    monitor.finish()
