"""The study database restarts under a running sweep: a PostgreSQL cluster of the test's own (initdb in a temporary
directory, its own port), stopped for a few seconds and later restarted at once (``pg_ctl -m fast``, which ends every
connection) while two workers run; no trial may be lost or duplicated. And the README's bare ``postgresql://`` URL
opens the same study in Optuna itself (``optuna.load_study``, which optuna-dashboard uses too).

PostgreSQL's server binaries come from ``$LANDSCAPE_PG_BIN``, ``pg_config --bindir``, Debian's
``/usr/lib/postgresql/*/bin`` or the PATH; without them this test fails, it is not skipped. As root (CI), the
cluster runs as the ``postgres`` user, as PostgreSQL requires.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psycopg2
import pytest
import sqlalchemy
from optuna.trial import TrialState

from sweeps.storage import open_storage
from tests.sweeps.conftest import FAST, free_port, start_cli
from tracking.population import load_population
from tracking.store import TrackingStore

STUDY = "restart"
#: Seconds the server stays down (far below the heartbeats' grace period, so no trial turns stale meanwhile).
DOWN = 4.0


def _bindir() -> Path:
    candidates = [os.environ.get("LANDSCAPE_PG_BIN", "")]
    if shutil.which("pg_config"):
        candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise AssertionError("PostgreSQL's initdb and pg_ctl were not found (set LANDSCAPE_PG_BIN)")


@dataclass
class Cluster:
    """A throwaway PostgreSQL cluster: its data directory, port, and ``pg_ctl``."""

    bindir: Path
    directory: Path
    port: int

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

        def demote() -> None:  # PostgreSQL refuses to run as root
            if user is not None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

        result = subprocess.run(
            [str(self.bindir / command[0]), *command[1:]], capture_output=True, text=True, preexec_fn=demote
        )
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"

    def pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        data, log = str(self.directory / "data"), str(self.directory / "server.log")
        self._run("pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", action, *extra)


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A new PostgreSQL cluster on a free port (trust auth, user postgres), removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="landscape-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
    cluster = Cluster(_bindir(), directory, free_port())
    try:
        data = str(directory / "data")
        cluster._run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        cluster.pg_ctl("start")
        yield cluster
    finally:
        if (directory / "data" / "postmaster.pid").exists():
            cluster.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with throwaway_cluster() as running:
        yield running


def _create_database(cluster: Cluster, name: str) -> str:
    admin = psycopg2.connect(cluster.url("postgres"))
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return cluster.url(name)


def _running_trials(storage: Any, workers: list[subprocess.Popen], count: int, seen: set[int]) -> list[int]:
    """Wait until ``count`` trials not in ``seen`` are RUNNING with their MLflow run (workers inside trials)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.poll() is not None:
                out, err = worker.communicate()
                raise AssertionError(f"a worker ended early:\n{out[-3000:]}\n{err[-3000:]}")
        try:
            study = optuna.load_study(study_name=STUDY, storage=storage)
        except KeyError:  # not created yet
            study = None
        if study is not None:
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            numbers = [t.number for t in running if "mlflow_run_id" in t.user_attrs and t.number not in seen]
            if len(numbers) >= count:
                return numbers
        time.sleep(0.2)
    raise AssertionError("the trials did not start running in time")


def test_a_tell_and_a_heartbeat_written_while_the_database_is_down_get_through(cluster, capsys):
    url = _create_database(cluster, "writes")
    storage = open_storage(url, heartbeat=30)
    study = optuna.create_study(study_name="writes", storage=storage)
    study.enqueue_trial({"x": 1.0})
    trial = study.ask()
    trial.suggest_float("x", 0.0, 2.0)
    # A heartbeat, then the trial's result, each written while the server is down for DOWN seconds.
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("writes"), trial.number)
    for write in (lambda: storage.record_heartbeat(trial_id), lambda: study.tell(trial, 0.5)):
        cluster.pg_ctl("stop", "-m", "fast")
        restart = threading.Timer(DOWN, cluster.pg_ctl, ("start",))
        restart.start()
        started = time.monotonic()
        write()  # waits for the server, then writes once
        assert time.monotonic() - started >= DOWN - 0.5
        restart.join()
    err = capsys.readouterr().err
    assert err.count("warning: lost the Optuna database") == 2 and err.count("the Optuna database is back") == 2, err
    [finished] = optuna.load_study(study_name="writes", storage=url).trials
    assert finished.state == TrialState.COMPLETE and finished.value == 0.5 and finished.params == {"x": 1.0}


def test_every_storage_call_a_sweep_makes_survives_losing_its_connection_midway(cluster, capsys):
    """A connection that the server ends in the middle of a call (as ``pg_ctl -m fast`` does to whatever runs at that
    instant): the call is retried, for every call a sweep makes through Optuna. Optuna wraps an ``RDBStorage`` in its
    ``_CachedStorage``, which calls private methods of it (``_create_new_trial``, ``_set_trial_param``, ``_get_trials``,
    ``_get_best_trial_id``); ``fail_stale_trials`` calls ``_get_stale_trial_ids`` at every trial's start.

    The cut is exact: a SQLAlchemy hook ends this connection's server process (``pg_terminate_backend``) just before
    the call's first statement runs on it."""
    url = _create_database(cluster, "midway")
    storage = open_storage(url, heartbeat=30)
    study = optuna.create_study(study_name="midway", storage=storage)
    admin = psycopg2.connect(cluster.url("postgres"))
    admin.autocommit = True
    armed: list[str] = []  # the start of the statement to cut, once per entry

    def cut(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if armed and statement.lstrip().upper().startswith(armed[0]):
            armed.pop()
            with admin.cursor() as terminate:  # waits up to 5 s for the process to end
                terminate.execute("SELECT pg_terminate_backend(%s, 5000)", (cursor.connection.info.backend_pid,))

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", cut)
    held: dict[str, Any] = {}

    def ask() -> None:
        held["trial"] = study.ask()

    # Each use, and the statement cut in it: the one its private method runs (a use runs others before it). Optuna
    # itself retries a trial's creation 5 times, without waiting for the server: the cut ends all 5 attempts.
    uses = {
        "ask": (ask, "INSERT INTO TRIALS", 5),
        "suggest": (lambda: held["trial"].suggest_float("x", 0.0, 2.0), "INSERT INTO TRIAL_PARAMS", 1),
        "heartbeat": (lambda: storage.record_heartbeat(held["trial"]._trial_id), "SELECT", 1),
        "stale check": (lambda: optuna.storages.fail_stale_trials(study), "SELECT NOW()", 1),
        "trials": (lambda: study.trials, "SELECT", 1),
        "tell": (lambda: study.tell(held["trial"], 0.5), "UPDATE TRIALS", 1),
        "best trial": (lambda: study.best_trial, "SELECT TRIALS.TRIAL_ID", 1),
    }
    try:
        for name, (use, statement, cuts) in uses.items():
            capsys.readouterr()
            armed.extend([statement] * cuts)
            use()
            assert not armed, f"{name} ran no statement {statement}..."
            err = capsys.readouterr().err
            assert "warning: lost the Optuna database during" in err and "the Optuna database is back" in err, name
    finally:
        admin.close()
    [finished] = optuna.load_study(study_name="midway", storage=url).trials
    assert finished.state == TrialState.COMPLETE and finished.value == 0.5 and 0.0 <= finished.params["x"] <= 2.0


def test_a_database_restart_mid_sweep_loses_and_duplicates_no_trial(cluster, tmp_path):
    root = tmp_path / "mlruns"
    url = _create_database(cluster, "optuna")
    watcher = open_storage(url)  # the test's one view of the study (one connection pool)
    # A 2-worker sweep (--workers 2: two worker processes, and the command following the study). Heartbeats every
    # 30 s: the server is down for well under the grace period (60 s), so no trial turns stale meanwhile.
    args = ["--n", "6", *FAST, "--storage", url, "--heartbeat", "30", "--study-name", STUDY, "--root", str(root)]
    sweep = start_cli("sweeps.seeds", *args, "--workers", "2")
    try:
        inside = _running_trials(watcher, [sweep], 2, set())  # both workers inside a trial
        cluster.pg_ctl("stop", "-m", "fast")  # every connection ends, in the middle of whatever it did
        time.sleep(DOWN)  # the workers' trials go on, and block in their next write or read of the study
        cluster.pg_ctl("start")
        time.sleep(2.0)
        cluster.pg_ctl("restart", "-m", "fast")  # and an instant restart, while the workers go on
        out, err = sweep.communicate(timeout=400)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out[-3000:] + err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "warning: lost the Optuna database during" in err, "the outage fell into no use of the database"
    assert "the Optuna database is back" in err, err

    # The bare URL of the README, as Optuna itself (and optuna-dashboard) opens it: no driver to add.
    study = optuna.load_study(study_name=STUDY, storage=url)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == [1, 2, 3, 4, 5, 6]
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for trial in study.trials:  # the rest: copies of a point dropped before they logged anything
        if trial.state != TrialState.COMPLETE:
            assert trial.state == TrialState.FAIL and "mlflow_run_id" not in trial.user_attrs, trial
    population = load_population(TrackingStore.resolve(None, root), study=STUDY)
    assert sorted(population.seeds.tolist()) == [1, 2, 3, 4, 5, 6] and population.n_duplicates == 0
    assert population.n_not_finished == {}

    # The trials the outage fell into went on, and their results counted once.
    assert all(study.trials[number].state == TrialState.COMPLETE for number in inside)
