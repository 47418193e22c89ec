"""The Optuna Journal file a sweep keeps on one machine: a torn tail is cut on open, and every claim names its owner.

A journal is a file of JSON records, one a line, appended under a lock. A power loss (or a full disk) in the middle
of an append leaves a torn last record: a line without its newline, or one that does not parse. Optuna skips such a
line while it is the last one, but the next append lands on the same line, and from the record after that on every
reader fails ("Expecting ':' delimiter"): one torn write would lose the whole study.

``repair_torn_tail`` runs whenever a sweep opens its journal. It finds the first record that is torn, backs the file
up next to it, cuts the file there, and says so in one line (``TornTail.message``). Everything from that record on
was never applied by any reader (each stops there), so the study goes back to the state every worker saw; a trial
whose last records were cut is RUNNING again with a dead owner, and ``sweeps.study`` fails it and retries its point
as it does a killed worker's. No trial is counted twice: the retry's run is the only finished one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from sweeps.claims import CLAIM_PREFIX, WITHDRAWN, ClaimingStorage, process_fingerprint

__all__ = ["SweepJournalStorage", "TornTail", "find_torn_tail", "open_journal", "repair_torn_tail"]


@dataclass(frozen=True)
class TornTail:
    """What ``repair_torn_tail`` cut from a journal."""

    path: Path
    offset: int  # the byte the file was cut at
    line: int  # the line (from 1) of the first record cut
    removed_bytes: int
    removed_records: int  # the torn record and any appended after it
    backup: Path

    def message(self) -> str:
        """One line for the user: what was removed, and where the original file is."""
        records = "the torn last record" if self.removed_records == 1 else f"{self.removed_records} records"
        return (
            f"warning: the Optuna journal {self.path} ended in a torn record; cut {records} ({self.removed_bytes} "
            f"bytes from line {self.line}, byte {self.offset}); the original is backed up at {self.backup}; trials "
            "whose records were cut are retried"
        )


def _is_record(line: bytes) -> bool:
    if not line.endswith(b"\n"):
        return False
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return False
    return isinstance(record, dict) and "op_code" in record


def find_torn_tail(data: bytes) -> tuple[int, int] | None:
    """``(byte offset, line index)`` of the first torn record in a journal's bytes, or None when every line is a
    whole record. Lines end with ``\\n`` only: the records are ASCII JSON."""
    offset = 0
    index = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        end = len(data) if end < 0 else end + 1
        if not _is_record(data[offset:end]):
            return offset, index
        offset, index = end, index + 1
    return None


def _backup_path(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    candidate = path.with_name(f"{path.name}.{stamp}.bak")
    number = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{stamp}-{number}.bak")
        number += 1
    return candidate


def repair_torn_tail(path: Path) -> TornTail | None:
    """Cut the journal at ``path`` before its first torn record, after backing the whole file up; None when it has
    none. The check reads without a lock; a cut is made under the journal's own lock (the one Optuna appends
    under), after a second look, so that a record still being appended is never mistaken for a torn one."""
    if find_torn_tail(path.read_bytes()) is None:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        torn = find_torn_tail(data)
        if torn is None:
            return None
        offset, index = torn
        backup = _backup_path(path)
        shutil.copy2(path, backup)
        with open(path, "r+b") as file:
            file.truncate(offset)
            file.flush()
            os.fsync(file.fileno())
        tail = data[offset:]
        records = tail.count(b"\n") + (0 if tail.endswith(b"\n") else 1)
        return TornTail(path, offset, index + 1, len(tail), records, backup)
    finally:
        lock.release()


class SweepJournalStorage(ClaimingStorage, JournalStorage):
    """Optuna's Journal storage whose claims name their owner (``sweeps.claims``): the mark before a claim is a user
    attribute ``claim:<host>:<pid>`` holding the process's fingerprint."""

    def _mark_claim(self, trial_id: int, worker: str) -> None:
        self.set_trial_user_attr(trial_id, CLAIM_PREFIX + worker, process_fingerprint(os.getpid()) or "")

    def _withdraw_claim(self, trial_id: int, worker: str) -> None:
        try:
            self.set_trial_user_attr(trial_id, CLAIM_PREFIX + worker, WITHDRAWN)
        except UpdateFinishedTrialError:  # the winner already finished it: nothing left to mislead
            pass


def open_journal(path: Path) -> tuple[SweepJournalStorage, TornTail | None]:
    """The sweep's storage on the journal at ``path`` (which exists), after cutting a torn tail; and what was cut."""
    torn = repair_torn_tail(path)
    return SweepJournalStorage(JournalFileBackend(str(path))), torn
