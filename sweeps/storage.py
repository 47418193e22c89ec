"""Optuna storages (a Journal file by default, PostgreSQL or any RDB URL to scale out) and study create-or-resume."""

from __future__ import annotations

import importlib.util
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna
import sqlalchemy.exc
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial

from landscape_core.errors import UsageError
from tracking.store import redact

__all__ = ["StudyConfigMismatch", "StorageError", "open_storage", "create_or_resume_study"]

DEFAULT_JOURNAL = Path("mlruns") / "optuna.journal"
#: What a trial returns to Optuna: its final test loss (minimized by the adaptive samplers).
OBJECTIVE = "test_loss"


class StorageError(UsageError):
    """The Optuna storage cannot be opened (unwritable path, unreachable database)."""


class StudyConfigMismatch(UsageError):
    """An existing study was created with a different config; mixing them silently would corrupt the population."""


def open_storage(
    url: str | None = None,
    *,
    root: str | Path = "mlruns",
    heartbeat: int | None = None,
    on_stale: Callable[[FrozenTrial], None] | None = None,
) -> Any:
    """A Journal file storage under ``root`` (``url`` None), a journal at a given path, or an RDB storage.

    Args:
        url: None, a path ending in ``.journal``, or an SQLAlchemy URL (``postgresql://user@host/db``).
        root: where the default journal lives.
        heartbeat: RDB only: seconds between heartbeats; trials silent for 2x that are failed and retried.
        on_stale: called with each stale trial before it is retried (e.g. to mark its MLflow run KILLED).
    """
    if url is None or url.endswith(".journal"):
        path = Path(url) if url else Path(root) / DEFAULT_JOURNAL.name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=True)
        except OSError as error:
            raise StorageError(f"cannot write the Optuna journal {path}: {error.strerror}") from None
        return JournalStorage(JournalFileBackend(str(path)))
    kwargs: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    if heartbeat:
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)

        def stale(study: optuna.Study, trial: FrozenTrial) -> None:
            if on_stale is not None:
                on_stale(trial)
            retry(study, trial)

        kwargs.update(heartbeat_interval=heartbeat, grace_period=2 * heartbeat, heartbeat_stale_trial_callback=stale)
    if url.startswith("postgresql"):
        kwargs["engine_kwargs"]["connect_args"] = {"connect_timeout": 5}
    for attempt in range(3):
        try:
            return RDBStorage(_with_installed_driver(url), **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as error:
            # Workers started together on a new database race to create its tables: the loser sees them exist.
            if attempt == 2:
                raise StorageError(f"cannot open the Optuna storage {redact(url)}: {_reason(error, url)}") from None
            time.sleep(0.5 + random.random())
        except Exception as error:  # sqlalchemy raises many types; one line is what the user needs
            raise StorageError(f"cannot open the Optuna storage {redact(url)}: {_reason(error, url)}") from None
    raise AssertionError("unreachable")


def _reason(error: Exception, url: str) -> str:
    """The first line of an error, without the URL's password should a driver quote it."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    password = urlsplit(url).password
    return reason.replace(password, "***") if password else reason


def _with_installed_driver(url: str) -> str:
    """``postgresql://`` spelled with the driver this project installs: SQLAlchemy 2.1 maps the bare scheme to
    psycopg 3, which may be absent where psycopg2 (our dependency) is installed."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def create_or_resume_study(
    storage: Any, study_name: str, config: dict[str, Any], sampler: optuna.samplers.BaseSampler | None = None
) -> tuple[optuna.Study, bool]:
    """Create the study with ``config`` recorded on it, or load it and check that its config is the same.

    Returns:
        ``(study, created)``.

    Raises:
        StudyConfigMismatch: the existing study has another config.
    """
    encoded = json.dumps(config, sort_keys=True)
    # Load first: creating an existing study appends a record to a journal (a write, even on a refused rerun).
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    except KeyError:
        try:
            study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, direction="minimize")
            study.set_metric_names([OBJECTIVE])  # optuna-dashboard shows "test_loss", not "Objective 0"
            study.set_user_attr("config", encoded)
            return study, True
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it in between
            study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    existing = study.user_attrs.get("config")
    if existing is not None and existing != encoded:
        old, new = json.loads(existing), config
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise StudyConfigMismatch(
            f"study {study_name!r} exists with a different config ({', '.join(diff)} differ); "
            "rerun with the same options to resume it, or pass --study-name NEW to start a new study"
        )
    return study, False
