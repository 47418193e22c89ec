"""Faults of the Journal file storage, on real journals and real processes: a torn last record (a power loss in the
middle of a write) cut at many byte offsets, and a worker SIGKILLed at every instant around its claim of a trial.

The killed workers are forks of the test process that do exactly what a worker does to take a trial (open the
storage, ``ask``, ``sweeps.pipeline.claim``) and kill themselves with a real SIGKILL before the k-th record they would
append, or halfway through writing it. They run no torch code, so forking is safe. The sweep that recovers runs
in-process (``main``): the same code as the command, without another Python start on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweeps import seeds
from sweeps.pipeline import TrialContext, claim
from sweeps.storage import open_storage
from sweeps.study import open_sweep
from sweeps.workers import trial_context
from tests.sweeps.conftest import FAST, run_cli
from tracking.population import load_population
from tracking.store import TrackingStore

STUDY = "seeds-smoke"


def journal_study(root: Path) -> optuna.Study:
    """The study as Optuna alone reads it (no repair, no claims): what any other tool would see."""
    return optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(root / "optuna.journal"))))


def assert_exactly_once(root: Path, n: int) -> optuna.Study:
    """n COMPLETE trials, one per seed; nothing left RUNNING or WAITING; the population counts each seed once."""
    study = journal_study(root)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == list(range(1, n + 1)), study.trials
    left = [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not left, left
    population = load_population(TrackingStore.resolve(None, root), study=STUDY)
    assert sorted(population.seeds.tolist()) == list(range(1, n + 1)) and population.n_duplicates == 0
    return study


# ----------------------------------------------------------------------------------------------------------------
# A torn last record
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished 2-seed sweep, run as a process that has exited (its trials' owner is dead, as after a power loss)."""
    root = tmp_path_factory.mktemp("torn") / "mlruns"
    args = ["--n", "2", *FAST, "--root", str(root)]
    result = run_cli("sweeps.seeds", *args, cwd=root.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, args


def _records(journal: Path) -> list[bytes]:
    return journal.read_bytes().splitlines(keepends=True)


def _inside_the_completion(journal: Path) -> int:
    """The 37 bytes of the report, which end the file inside the last trial's completion record (its "tell")."""
    last = _records(journal)[-1]
    assert json.loads(last)["state"] == TrialState.COMPLETE.value and len(last) > 37, last
    return 37


#: How much of the tail is cut: the newline alone (a whole record without it is torn too), the 37 bytes of the
#: report (inside the last trial's completion), and all of that record and half of the one before.
CUTS = {
    "newline": lambda journal: 1,
    "37 bytes, inside the completion": _inside_the_completion,
    "completion and half the record before": lambda journal: len(_records(journal)[-1]) + 30,
}


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_a_torn_last_record_is_cut_and_its_trial_retried(cut, finished_sweep, tmp_path, capsys):
    source, args = finished_sweep
    root = tmp_path / "mlruns"
    shutil.copytree(source, root)
    journal = root / "optuna.journal"
    original = journal.read_bytes()
    removed = CUTS[cut](journal)
    journal.write_bytes(original[:-removed])
    torn = original[:-removed]
    args = [*args[:-1], str(root)]

    assert seeds.main(args) == 0, capsys.readouterr().out[-3000:]
    out, err = capsys.readouterr()
    assert "1/2 trials done" in out  # the last trial's completion was lost: it is retried, not counted
    assert seeds.main(args) == 0  # and the study stays readable: the run after that finds it finished
    again, again_err = capsys.readouterr()
    assert "2/2 trials done" in again and "torn" not in again_err
    study = assert_exactly_once(root, 2)
    killed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(killed) == 1 and killed[0].params["seed"] == 2 and len(study.trials) == 3

    warning = [line for line in err.splitlines() if "torn record" in line]
    assert len(warning) == 1, err
    backups = sorted(root.glob("optuna.journal.*.bak"))
    assert len(backups) == 1 and backups[0].read_bytes() == torn, "the backup is the file as it was found"
    assert f"backed up at {backups[0]}" in warning[0]


def test_a_torn_record_with_records_appended_onto_it_is_cut_from_there(finished_sweep, tmp_path, capsys):
    # What the journal looked like after a run of the old code: the next record written onto the torn line, and
    # more after it. No reader ever got past that line, so everything from it on is cut.
    source, args = finished_sweep
    root = tmp_path / "mlruns"
    shutil.copytree(source, root)
    journal = root / "optuna.journal"
    records = _records(journal)
    journal.write_bytes(b"".join(records[:-1]) + records[-1][:-37] + records[-2] + records[-2])
    with pytest.raises(json.JSONDecodeError):
        journal_study(root)  # how Optuna alone fails on it

    assert seeds.main([*args[:-1], str(root)]) == 0, capsys.readouterr().out[-3000:]
    err = capsys.readouterr().err
    assert "cut 2 records" in err, err
    assert_exactly_once(root, 2)


# ----------------------------------------------------------------------------------------------------------------
# A worker killed around its claim
# ----------------------------------------------------------------------------------------------------------------

#: (records the worker appends before it dies, whether the record it dies in is half written). Its records in a
#: claim: 0 its claim mark, 1 the claim itself (WAITING -> RUNNING), 2 its owner, 3 the trial's seed; "after"
#: kills it once the claim returned (inside the trial).
KILLS = [(0, False), (1, False), (1, True), (2, False), (2, True), (3, False), ("after", False)]


def _claim_and_die(root: Path, context: TrialContext, kill_at: int | str, torn: bool, ready: int | None) -> None:
    """In a forked child: take a trial as a worker does, and SIGKILL this process at ``kill_at``. With ``ready``
    (a pipe), say so once the claim is done and wait to be killed (a worker alive inside its trial)."""
    appended = 0
    append = JournalFileBackend.append_logs

    def append_or_die(backend: JournalFileBackend, logs: list[dict]) -> None:
        nonlocal appended
        if appended == kill_at:
            if torn:  # half the record reaches the file, as in a power loss during the write
                line = (json.dumps(logs[0], separators=(",", ":")) + "\n").encode()
                with open(root / "optuna.journal", "ab") as file:
                    file.write(line[: len(line) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        appended += 1
        append(backend, logs)

    JournalFileBackend.append_logs = append_or_die
    study = optuna.load_study(study_name=STUDY, storage=open_storage(None, root=root))
    trial = study.ask()
    claim(study, trial, context)
    if ready is not None:
        os.write(ready, b"claimed")
        time.sleep(600)
    os.kill(os.getpid(), signal.SIGKILL)


def _fork(root: Path, context: TrialContext, kill_at: int | str, torn: bool, ready: int | None = None) -> int:
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            _claim_and_die(root, context, kill_at, torn, ready)
        finally:
            os._exit(3)
    return pid


def _reaped(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"worker ended with status {status}"


def test_a_worker_killed_at_any_instant_of_its_claim_leaves_nothing_running(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "mlruns"
    n = 4  # kills that leave a trial RUNNING: (2, False), (2, True), (3, False), "after"; the rest leave it WAITING
    args = ["--n", str(n), *FAST, "--root", str(root)]
    sweep = open_sweep(seeds.build_options(seeds.parser().parse_args(args)))  # the study, its points enqueued
    context = trial_context(sweep, None)
    for kill_at, torn in KILLS[:-1]:
        _reaped(_fork(root, context, kill_at, torn))
    read, write = os.pipe()
    holder = _fork(root, context, "after", False, ready=write)  # alive inside its trial, on another "machine"
    assert os.read(read, 16) == b"claimed"

    try:
        running = [t for t in journal_study(root).trials if t.state == TrialState.RUNNING]
        assert len(running) == n, running  # every claim that got as far as RUNNING, owned or not
        assert seeds.main(args) == 0, capsys.readouterr().out[-3000:]
        out = capsys.readouterr().out
        # The honest status of a worker that finished while another still runs a trial:
        assert f"{n - 1}/{n} trials done; 1 still running in other workers, which finish the sweep." in out
        assert "rerun the same command" not in out
        study = journal_study(root)
        assert sum(t.state == TrialState.COMPLETE for t in study.trials) == n - 1
        assert [t.state for t in study.trials].count(TrialState.RUNNING) == 1  # the live worker's: not touched
    finally:
        os.kill(holder, signal.SIGKILL)  # and now that worker dies too, inside its trial
        _reaped(holder)

    assert seeds.main(args) == 0, capsys.readouterr().out[-3000:]
    study = assert_exactly_once(root, n)
    assert sum(t.state == TrialState.FAIL for t in study.trials) == n  # each killed claim failed once, retried once
