"""Optuna storages (a Journal file by default, PostgreSQL or any RDB URL to scale out) and study create-or-resume."""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial

from landscape_core.errors import UsageError
from sweeps.database import SweepRDBStorage
from sweeps.journal import open_journal
from tracking.store import redact

__all__ = ["StudyConfigMismatch", "StorageError", "check_storage_url", "create_or_resume_study", "open_storage"]

DEFAULT_JOURNAL = Path("mlruns") / "optuna.journal"
#: The database URL schemes ``--storage`` takes (each with an optional ``+driver``), as Optuna's RDB storage does.
DATABASE_SCHEMES = ("postgresql", "mysql", "sqlite")
#: What a trial returns to Optuna: its final test loss (minimized by the adaptive samplers).
OBJECTIVE = "test_loss"


class StorageError(UsageError):
    """The Optuna storage cannot be opened (unwritable path, unreachable database)."""


class StudyConfigMismatch(UsageError):
    """An existing study was created with a different config; mixing them silently would corrupt the population."""


def check_storage_url(url: str | None) -> None:
    """``--storage``: None (the journal in ``--root``), a path ending in ``.journal``, or a database URL of a scheme
    Optuna's RDB storage knows. A ``UsageError`` otherwise (``postgres://`` is a common slip for ``postgresql://``)."""
    if url is None or url.endswith(".journal"):
        if url is not None and not Path(url).name.removesuffix(".journal"):
            raise UsageError(f"Expected `--storage` a journal file name, got {url!r}")
        return
    scheme = url.partition("://")[0].partition("+")[0] if "://" in url else ""
    if scheme not in DATABASE_SCHEMES:
        hint = "; postgres:// is spelled postgresql://" if scheme == "postgres" else ""
        raise UsageError(
            "Expected `--storage` a path ending in .journal or a database URL ("
            + ", ".join(f"{s}://..." for s in DATABASE_SCHEMES)
            + f"), got {redact(url)!r}{hint}"
        )


def open_storage(
    url: str | None = None,
    *,
    root: str | Path = "mlruns",
    heartbeat: int | None = None,
    on_stale: Callable[[FrozenTrial], None] | None = None,
) -> Any:
    """A Journal file storage under ``root`` (``url`` None), a journal at a given path, or an RDB storage; both
    record the owner of every claim (``sweeps.claims``).

    A journal's torn tail is cut first (``sweeps.journal``: one warning line on stderr). An RDB storage waits out
    a restart of its database (``sweeps.database``); a database that cannot be reached when it is opened is a
    ``StorageError`` at once.

    Args:
        url: None, a path ending in ``.journal``, or an SQLAlchemy URL (``postgresql://user@host/db``).
        root: where the default journal lives.
        heartbeat: RDB only: seconds between heartbeats; trials silent for 2x that are failed and retried.
        on_stale: called with each stale trial before it is retried (e.g. to mark its MLflow run KILLED).
    """
    check_storage_url(url)
    if url is None or url.endswith(".journal"):
        path = Path(url) if url else Path(root) / DEFAULT_JOURNAL.name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=True)
        except OSError as error:
            raise StorageError(f"cannot write the Optuna journal {path}: {error.strerror}") from None
        storage, torn = open_journal(path)
        if torn is not None:
            print(torn.message(), file=sys.stderr, flush=True)
        return storage
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
            return SweepRDBStorage(url, **kwargs)
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
