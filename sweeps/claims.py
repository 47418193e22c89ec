"""Who holds a trial: every claim records its owner, so that a worker killed at any instant leaves no trial
RUNNING forever.

Optuna hands a waiting trial to a worker by one write (its state WAITING -> RUNNING). Whatever the worker writes next,
such as who it is, is a second write, and a worker killed between the two would leave a RUNNING trial that nobody
owns. ``ClaimingStorage`` closes that gap around Optuna's own claim, in the storage every sweep opens:

1. before the claim, a mark that this worker is about to claim the trial (``_mark_claim``: on the Journal file a user
   attribute ``claim:<host>:<pid>`` holding the process's start fingerprint; on an RDB storage a heartbeat);
2. the claim itself (Optuna's ``set_trial_state_values(RUNNING)``);
3. after it, the owner (user attribute ``worker`` = ``<host>:<pid>``); a worker that lost the race withdraws its mark.

So a RUNNING trial always names who may hold it: its ``worker``, or else every process that marked it. When all of
them are dead, the trial is an orphan (``holders`` and ``is_orphan``); the RDB storage's heartbeat marks make such a
trial stale after the grace period. A trial Optuna creates for an adaptive sampler goes the same way: it is created
WAITING and then claimed.

Only Optuna's public storage interface is used: the methods every ``BaseStorage`` implements.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState, create_trial

__all__ = [
    "CLAIM_PREFIX",
    "OWNER",
    "ClaimingStorage",
    "holders",
    "is_dead",
    "is_orphan",
    "process_fingerprint",
    "this_worker",
]

#: The user attribute naming the process that holds a RUNNING trial, ``<host>:<pid>``.
OWNER = "worker"
#: The prefix of the mark a process leaves before it claims a trial: ``claim:<host>:<pid>`` -> its fingerprint.
CLAIM_PREFIX = "claim:"
#: The value of a mark withdrawn by a process that lost the race for the trial.
WITHDRAWN = "withdrawn"


def this_worker() -> str:
    """``<host>:<pid>`` of the calling process (computed on each call: a forked child is not its parent)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_fingerprint(pid: int) -> str | None:
    """What tells process ``pid`` apart from a later process with the same pid: the boot id and the process's start
    time (Linux ``/proc``); None where that is not available or the process does not exist."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); fields are counted after the command name, which may hold spaces and parentheses.
    fields = stat.rpartition(")")[2].split()
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None


def holders(trial: FrozenTrial) -> dict[str, str | None]:
    """The processes that may hold ``trial`` (``<host>:<pid>`` -> fingerprint or None): its owner when recorded,
    else every process that marked it and did not withdraw. Empty for a trial claimed by other code."""
    attrs = trial.user_attrs
    if OWNER in attrs:
        owner = str(attrs[OWNER])
        fingerprint = attrs.get(CLAIM_PREFIX + owner)
        return {owner: fingerprint if isinstance(fingerprint, str) and fingerprint != WITHDRAWN else None}
    return {
        key.removeprefix(CLAIM_PREFIX): (value if isinstance(value, str) and value else None)
        for key, value in attrs.items()
        if key.startswith(CLAIM_PREFIX) and value != WITHDRAWN
    }


def _alive(pid: int, fingerprint: str | None) -> bool:
    """Process ``pid`` exists and, when its fingerprint was recorded, is the same process (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return fingerprint is None or process_fingerprint(pid) in (None, fingerprint)


def is_dead(worker: str, fingerprint: str | None, host: str | None = None) -> bool:
    """True when process ``worker`` (``<host>:<pid>``) ran on ``host`` (default: this one) and is gone. A process on
    another host is never dead here: only its own host can tell."""
    worker_host, _, pid = worker.rpartition(":")
    return worker_host == (host or socket.gethostname()) and pid.isdigit() and not _alive(int(pid), fingerprint)


def is_orphan(trial: FrozenTrial, host: str | None = None) -> bool:
    """True when every process that may hold the RUNNING ``trial`` ran on ``host`` (default: this one) and is gone.

    A trial held by a process on another host is never an orphan here (its own host can tell), nor is one that names
    no holder at all (claimed by code other than ``ClaimingStorage``).
    """
    candidates = holders(trial)
    return bool(candidates) and all(is_dead(worker, fingerprint, host) for worker, fingerprint in candidates.items())


def _waiting() -> FrozenTrial:
    return create_trial(state=TrialState.WAITING)


class ClaimingStorage:
    """A mixin for an Optuna storage class: every claim of a trial by this process records who holds it.

    Subclasses put it before the storage class (``class S(ClaimingStorage, JournalStorage)``) and implement
    ``_mark_claim``; ``_claimed`` and ``_released`` are hooks for what an owner does while it holds a trial.
    """

    def _mark_claim(self, trial_id: int, worker: str) -> None:
        """Leave the mark that ``worker`` is about to claim the trial (before the claim is written)."""
        raise NotImplementedError

    def _withdraw_claim(self, trial_id: int, worker: str) -> None:
        """``worker`` lost the race for the trial: take its mark back (when the storage leaves one)."""

    def _claimed(self, trial_id: int) -> None:
        """This process now holds the trial."""

    def _released(self, trial_id: int) -> None:
        """The trial this process held is finished."""

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        """Optuna's new trial for ``ask`` (no template): created WAITING, then claimed like an enqueued one, so that
        it is never RUNNING without an owner. With a template (``enqueue_trial``, ``add_trial``), as Optuna does."""
        if template_trial is not None:
            return super().create_new_trial(study_id, template_trial)  # type: ignore[misc]
        while True:
            trial_id = super().create_new_trial(study_id, _waiting())  # type: ignore[misc]
            try:
                if self.set_trial_state_values(trial_id, TrialState.RUNNING):
                    return trial_id
            except UpdateFinishedTrialError:  # another worker took it and already finished it
                continue

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """Optuna's claim (``state`` RUNNING) between this worker's mark and its owner record; other states as
        Optuna writes them."""
        if state != TrialState.RUNNING:
            try:
                return super().set_trial_state_values(trial_id, state, values)  # type: ignore[misc]
            finally:
                if state.is_finished():
                    self._released(trial_id)
        worker = this_worker()
        self._mark_claim(trial_id, worker)
        if not super().set_trial_state_values(trial_id, state, values):  # type: ignore[misc]
            self._withdraw_claim(trial_id, worker)
            return False
        self.set_trial_user_attr(trial_id, OWNER, worker)  # type: ignore[attr-defined]
        self._claimed(trial_id)
        return True
