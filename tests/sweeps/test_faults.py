"""Faults a real sweep meets, on real stores: a worker killed mid-trial (SIGKILL) on PostgreSQL and on the default
Journal storage, SIGTERM, a diverging learning rate, and several local workers on one journal.

A killed worker is started as a process (``python -m sweeps.seeds``); the worker that resumes the sweep runs
in-process (``main``), which is the same code and spares a Python start on a 2-core machine.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from landscape_core.config import ANALYSES
from sweeps import lr, seeds
from sweeps.storage import open_storage
from tests.sweeps.conftest import FAST, SMOKE, client_for, scratch_databases, start_cli
from tracking.population import load_population
from tracking.store import TrackingStore

#: Trials long enough (a few seconds) that a signal sent once a trial's run exists lands inside the trial.
SLOW = [*SMOKE, "--train-size", "512", "--test-size", "128", "--epochs", "2", "--skip", ",".join(ANALYSES)]
STUDY = "seeds-smoke"


def journal(root: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(root / "optuna.journal")))


def wait_for_running_trial(
    load: Callable[[], optuna.Study], worker: subprocess.Popen, timeout: float = 180
) -> FrozenTrial:
    """The first trial seen RUNNING with its MLflow run started (the worker is then inside the trial)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            out, err = worker.communicate()
            raise AssertionError(f"the worker ended before a trial ran:\n{out[-2000:]}\n{err[-2000:]}")
        try:
            study = load()
        except (KeyError, FileNotFoundError):  # the worker has not created the study yet
            study = None
        if study is not None:
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if "mlflow_run_id" in trial.user_attrs:
                    return trial
        time.sleep(0.1)
    worker.kill()
    raise AssertionError("no trial started running in time")


def load_journal_study(root: Path) -> Callable[[], optuna.Study]:
    def load() -> optuna.Study:
        if not (root / "optuna.journal").exists():
            raise FileNotFoundError(root / "optuna.journal")
        return optuna.load_study(study_name=STUDY, storage=journal(root))

    return load


def assert_recovered(study: optuna.Study, root: Path, victim: FrozenTrial, n: int, failure: str) -> None:
    """n COMPLETE trials, one per seed; the victim FAIL, its run KILLED; the population counts each trial once."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == list(range(1, n + 1))
    assert study.trials[victim.number].state == TrialState.FAIL
    run = client_for(root).get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["failure"] == failure
    population = load_population(TrackingStore.resolve(None, root), study=STUDY)
    assert len(population) == n and sorted(population.seeds.tolist()) == list(range(1, n + 1))
    assert population.n_not_finished == {"KILLED": 1} and population.n_duplicates == 0
    assert victim.user_attrs["mlflow_run_id"] not in {r.run_id for r in population.runs}


def test_sigkill_on_postgres_retries_the_trial_after_the_heartbeat_grace_period(tmp_path, capsys):
    root = tmp_path / "mlruns"
    with scratch_databases("optuna") as (url,):
        args = ["--n", "2", *SLOW, "--storage", url, "--heartbeat", "2", "--root", str(root)]
        worker = start_cli("sweeps.seeds", *args)
        storage = open_storage(url)
        victim = wait_for_running_trial(lambda: optuna.load_study(study_name=STUDY, storage=storage), worker)
        worker.send_signal(signal.SIGKILL)
        worker.communicate()
        time.sleep(4.5)  # past the grace period (2 x heartbeat): the trial is stale, not merely slow

        assert seeds.main(args) == 0, capsys.readouterr().out[-3000:]
        study = optuna.load_study(study_name=STUDY, storage=storage)
        assert_recovered(study, root, victim, 2, "worker killed")
        retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE


def start_journal_sweep(root: Path) -> tuple[list[str], subprocess.Popen, FrozenTrial]:
    """A 2-seed sweep on the journal under ``root``, started as a user would: its args, its process, and the trial
    it is inside once it runs one."""
    args = ["--n", "2", *SLOW, "--root", str(root)]
    worker = start_cli("sweeps.seeds", *args)
    return args, worker, wait_for_running_trial(load_journal_study(root), worker)


def test_sigkill_on_the_journal_fails_the_dead_workers_trial_on_the_next_start(tmp_path, capsys):
    root = tmp_path / "mlruns"
    args, worker, victim = start_journal_sweep(root)
    worker.send_signal(signal.SIGKILL)
    worker.communicate()

    assert seeds.main(args) == 0, capsys.readouterr().out[-3000:]
    assert_recovered(optuna.load_study(study_name=STUDY, storage=journal(root)), root, victim, 2, "worker killed")


def test_sigterm_ends_the_trial_cleanly_exits_143_and_a_rerun_completes(tmp_path, capsys):
    root = tmp_path / "mlruns"
    args, worker, victim = start_journal_sweep(root)
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 143, out[-2000:] + err[-2000:]
    assert "rerun the same command to resume" in out
    assert "Traceback" not in err
    study = optuna.load_study(study_name=STUDY, storage=journal(root))
    assert study.trials[victim.number].state == TrialState.FAIL  # before any rerun: the worker recorded it
    assert client_for(root).get_run(victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"

    assert seeds.main(args) == 0, capsys.readouterr().out[-3000:]
    assert_recovered(optuna.load_study(study_name=STUDY, storage=journal(root)), root, victim, 2, "Terminated")


#: A sweep whose reference minimum trains for a few seconds (so that a test can act while it trains), with no analysis
#: but the barriers that need it.
SLOW_REFERENCE = [
    *SMOKE,
    *("--train-size", "512", "--test-size", "128", "--epochs", "30", "--max-pairs", "0"),
    *("--skip", ",".join(a for a in ANALYSES if a != "connectivity")),
]


def running_reference(root: Path, worker: subprocess.Popen) -> list[str]:
    """The run ids of the reference runs RUNNING in ``root``, waited for while ``worker`` lives (empty if it ended
    first)."""
    client = client_for(root)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            experiments = [e.experiment_id for e in client.search_experiments()]
            runs = client.search_runs(experiments, filter_string="tags.run_kind = 'reference'") if experiments else []
        except Exception:  # the store is not created yet
            runs = []
        if running := [r.info.run_id for r in runs if r.info.status == "RUNNING"]:
            return running
        time.sleep(0.05)
    return []


def references(root: Path) -> dict[str, Any]:
    """Every reference run in ``root``, by id."""
    client = client_for(root)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    return {r.info.run_id: r for r in runs if r.data.tags.get("run_kind") == "reference"}


def test_sigkill_while_the_reference_trains_leaves_nothing_running_and_one_finished_reference(tmp_path, capsys):
    """Issue 24: a sweep killed while its study's reference minimum trains used to leave that run RUNNING forever
    beside the second reference its resumed sweep trained."""
    root = tmp_path / "mlruns"
    args = ["--n", "1", *SLOW_REFERENCE, "--root", str(root)]
    worker = start_cli("sweeps.seeds", *args)
    killed = running_reference(root, worker)
    worker.send_signal(signal.SIGKILL)
    worker.communicate()
    assert killed, "the sweep ended before its reference minimum was seen training"

    assert seeds.main(args) == 0, capsys.readouterr().out[-3000:]
    found = references(root)
    assert found[killed[0]].info.status == "KILLED"
    assert found[killed[0]].data.tags["failure"] == "worker killed"
    assert sorted(r.info.status for r in found.values()) == ["FINISHED", "KILLED"]
    study = optuna.load_study(study_name=STUDY, storage=journal(root))
    finished = next(r for r in found.values() if r.info.status == "FINISHED")
    assert study.user_attrs["reference_run_id"] == finished.info.run_id


def test_a_second_command_waits_for_the_reference_a_live_process_trains_and_trains_none(tmp_path, capsys):
    """Two commands on one store: the second, started while the first trains the study's reference minimum, waits
    for it (and says so) instead of training a second one."""
    root = tmp_path / "mlruns"
    args = ["--n", "1", *SLOW_REFERENCE, "--root", str(root)]
    first = start_cli("sweeps.seeds", *args)
    try:
        training = running_reference(root, first)
        assert training, "the first sweep ended before its reference minimum was seen training"
        assert seeds.main(args) == 0, capsys.readouterr().out[-3000:]
        out, err = first.communicate(timeout=180)
        assert first.returncode == 0, out[-3000:] + err[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert "waiting for the reference minimum (width 1) that process" in capsys.readouterr().out
    found = references(root)
    assert list(found) == training and found[training[0]].info.status == "FINISHED"
    study = optuna.load_study(study_name=STUDY, storage=journal(root))
    assert study.user_attrs["reference_run_id"] == training[0]


def test_a_diverging_lr_is_recorded_as_failed_with_its_epoch_and_the_sweep_goes_on(tmp_path, capsys):
    root = tmp_path / "mlruns"
    # lr 1e5 turns the loss to NaN within 4 steps for every seed (lr 1000 leaves seed 2 at a finite 2e22).
    args = ["--n", "2", "--lr-min", "0.01", "--lr-max", "1e5", "--seeds-per-lr", "2", *FAST, "--root", str(root)]
    assert lr.main(args) == 0, capsys.readouterr().out[-3000:]
    out = capsys.readouterr().out
    assert "diverged" in out

    study = optuna.load_study(study_name="lr-smoke", storage=journal(root))
    by_lr = {(t.params["lr"], t.params["seed"]): t for t in study.trials}
    assert sorted(by_lr) == [(0.01, 1), (0.01, 2), (1e5, 1), (1e5, 2)]
    client = client_for(root)
    for (point_lr, _), trial in by_lr.items():
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        if point_lr == 0.01:
            assert trial.state == TrialState.COMPLETE and run.info.status == "FINISHED"
            continue
        assert trial.state == TrialState.FAIL and trial.user_attrs["failure"] == "diverged"
        assert run.info.status == "FAILED"
        assert run.data.tags["failure"] == "diverged"
        assert "at epoch 1" in run.data.tags["failure_reason"] and run.data.tags["failure_epoch"] == "1"
        assert "non-finite loss" in trial.user_attrs["failure_reason"]
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"  # the sweep went on to its end despite two diverged trials

    assert lr.main(args) == 0  # a rerun reruns nothing: a divergence is an outcome, not an accident
    assert "4/4 trials done" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="lr-smoke", storage=journal(root)).trials) == 4


def test_two_local_workers_on_the_journal_run_each_seed_once(tmp_path, capsys):
    root = tmp_path / "mlruns"
    assert seeds.main(["--n", "4", *FAST, "--workers", "2", "--root", str(root)]) == 0, capsys.readouterr().out
    study = optuna.load_study(study_name=STUDY, storage=journal(root))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == [1, 2, 3, 4]
    for trial in study.trials:  # the rest: copies of a point dropped as duplicates, or drawn with none left
        if trial.state != TrialState.COMPLETE:
            assert trial.state == TrialState.FAIL and "mlflow_run_id" not in trial.user_attrs, trial
            assert trial.user_attrs.get("duplicate") or "point" not in trial.user_attrs, trial
    population = load_population(TrackingStore.resolve(None, root), study=STUDY)
    assert sorted(population.seeds.tolist()) == [1, 2, 3, 4] and population.n_duplicates == 0
    assert population.n_not_finished == {}
