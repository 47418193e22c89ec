"""Optuna storages (a Journal file by default, PostgreSQL or any RDB URL to scale out) and study create-or-resume."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial

from tracking.store import redact

__all__ = ["StudyConfigMismatch", "StorageError", "open_storage", "create_or_resume_study"]

DEFAULT_JOURNAL = Path("mlruns") / "optuna.journal"


class StorageError(RuntimeError):
    """The Optuna storage cannot be opened (unwritable path, unreachable database)."""


class StudyConfigMismatch(RuntimeError):
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
    try:
        return RDBStorage(url, **kwargs)
    except Exception as error:  # sqlalchemy raises many types; one line is what the user needs
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StorageError(f"cannot open the Optuna storage {redact(url)}: {reason}") from None


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
    try:
        study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, direction="minimize")
        study.set_user_attr("config", encoded)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
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
