"""The study database as a sweep uses it (PostgreSQL, or any RDB Optuna supports): it outlives a restart of its
server, and every trial a worker holds keeps its heartbeat.

A database restart (``pg_ctl restart -m fast``, a failover) closes every connection, and for a few seconds new ones
are refused. ``SweepRDBStorage`` rides it out in two layers:

- every new connection waits for the server, for up to ``RECONNECT_SECONDS`` (a SQLAlchemy ``do_connect`` hook,
  added once the storage has opened, so that a wrong URL still fails at once); pooled connections are pinged before
  use (``pool_pre_ping``), so a connection the restart closed is replaced, not used;
- every call of Optuna's storage interface that loses its connection midway is retried, for as long, and so is every
  private method that Optuna's own ``_CachedStorage`` calls instead. A retried write cannot land twice: finishing a
  trial that the lost attempt already finished is recognized and succeeds; a parameter set twice is a duplicate key
  that Optuna ignores; other writes are upserts or create at most a spare WAITING copy of a point, which
  ``sweeps.pipeline`` drops.

Claims (``sweeps.claims``) are marked by a heartbeat written before Optuna's claim, and while this process holds a
trial a thread of its own keeps beating for it, whichever code runs the trial (``study.optimize`` or the batched
trials' ``ask``/``tell``). So a worker killed at any instant after a claim leaves a trial that turns stale after the
grace period and is retried. One warning line says when the database is lost, and one when it is back.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy
import sqlalchemy.exc
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from sweeps.claims import ClaimingStorage

__all__ = ["RECONNECT_SECONDS", "SweepRDBStorage", "is_disconnect"]

#: How long a lost database is waited for before the call fails.
RECONNECT_SECONDS = 60.0
#: Optuna's storage calls that are retried when their connection is lost: its public interface, and the private
#: methods that Optuna's own code calls on an ``RDBStorage`` (``_CachedStorage``, which ``optuna.create_study`` wraps
#: around it, and ``fail_stale_trials``, run at every trial's start). A name Optuna drops fails this module's import.
RETRIED = (
    "_create_new_trial",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
    "_get_trials",
    "_set_trial_param",
    "check_trial_is_updatable",
    "create_new_study",
    "create_new_trial",
    "delete_study",
    "get_all_studies",
    "get_all_trials",
    "get_best_trial",
    "get_n_trials",
    "get_study_directions",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_system_attrs",
    "get_study_user_attrs",
    "get_trial",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "get_trial_params",
    "get_trial_system_attrs",
    "get_trial_user_attrs",
    "record_heartbeat",
    "set_study_system_attr",
    "set_study_user_attr",
    "set_trial_intermediate_value",
    "set_trial_param",
    "set_trial_state_values",
    "set_trial_system_attr",
    "set_trial_user_attr",
)


def is_disconnect(error: BaseException | None) -> bool:
    """True when ``error`` (or what caused it: Optuna wraps SQLAlchemy's errors) is a lost or refused connection."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _reason(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class _Outage:
    """One warning line when this process loses the database, and one when it has it back (threads share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None

    def lost(self, during: str, error: BaseException) -> None:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
                print(
                    f"warning: lost the Optuna database during {during} ({_reason(error)}); "
                    f"retrying for up to {RECONNECT_SECONDS:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )

    def back(self) -> None:
        with self._lock:
            if self._since is not None:
                print(
                    f"warning: the Optuna database is back after {time.monotonic() - self._since:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                self._since = None


def _retried(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: _RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        deadline: float | None = None
        delay = 0.25
        while True:
            try:
                result = method(self, *args, **kwargs)
            except UpdateFinishedTrialError:
                # The attempt that lost its connection may have committed: finishing the trial then succeeded.
                if deadline is not None and name == "set_trial_state_values" and self._finished_as(*args, **kwargs):
                    self._outage.back()
                    return True
                raise
            except Exception as error:
                if not is_disconnect(error):
                    raise
                if deadline is None:
                    deadline = time.monotonic() + RECONNECT_SECONDS
                elif time.monotonic() > deadline:
                    raise
                self._outage.lost(name, error)
                time.sleep(delay)
                delay = min(2 * delay, 2.0)
                continue
            if deadline is not None:
                self._outage.back()
            return result

    return call


class _RetryingRDBStorage(RDBStorage):
    """``RDBStorage`` whose calls wait out a lost database (module docstring)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)  # a wrong URL or a server that is down fails here, at once
        self._outage = _Outage()
        sqlalchemy.event.listen(self.engine, "do_connect", self._connect_patiently)

    def _connect_patiently(self, dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        """A new DBAPI connection, waiting for a server that is restarting (``do_connect`` hook)."""
        deadline = time.monotonic() + RECONNECT_SECONDS
        delay = 0.25
        while True:
            try:
                connection = dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as error:
                if time.monotonic() > deadline:
                    raise
                self._outage.lost("connect", error)
                time.sleep(delay)
                delay = min(2 * delay, 2.0)
                continue
            self._outage.back()
            return connection

    def _finished_as(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        """True when trial ``trial_id`` is already in the finished ``state`` with ``values``."""
        trial = self.get_trial(trial_id)
        same_values = values is None or list(trial.values or []) == list(values)
        return state.is_finished() and trial.state == state and same_values


for _name in RETRIED:
    setattr(_RetryingRDBStorage, _name, _retried(_name, getattr(RDBStorage, _name)))


class SweepRDBStorage(ClaimingStorage, _RetryingRDBStorage):
    """The RDB storage of a sweep: it survives a database restart, and marks each claim with a heartbeat and keeps
    beating for the trials this process holds (module docstring)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._held: set[int] = set()
        self._held_lock = threading.Lock()
        self._beating: threading.Thread | None = None

    def _mark_claim(self, trial_id: int, worker: str) -> None:
        # A heartbeat on a trial still WAITING is harmless (only RUNNING trials turn stale); once claimed, it is the
        # trial's heartbeat from its first instant.
        if self.heartbeat_interval:
            self.record_heartbeat(trial_id)

    def _claimed(self, trial_id: int) -> None:
        if not self.heartbeat_interval:
            return
        with self._held_lock:
            self._held.add(trial_id)
            if self._beating is None:
                self._beating = threading.Thread(target=self._beat, name="sweep-heartbeat", daemon=True)
                self._beating.start()

    def _released(self, trial_id: int) -> None:
        with self._held_lock:
            self._held.discard(trial_id)

    def _beat(self) -> None:
        """Record a heartbeat for every trial this process holds, every interval, for as long as it lives."""
        assert self.heartbeat_interval is not None
        while True:
            time.sleep(self.heartbeat_interval)
            with self._held_lock:
                held = sorted(self._held)
            for trial_id in held:
                try:
                    self.record_heartbeat(trial_id)
                except Exception as error:  # a database gone for longer than RECONNECT_SECONDS: try next time
                    print(f"warning: could not record a heartbeat ({_reason(error)})", file=sys.stderr, flush=True)
