"""Scale-out on real services: two workers, started together as on two machines, on one study in PostgreSQL,
logging to a real MLflow tracking server with a PostgreSQL backend store and served artifacts.

PostgreSQL comes from ``LANDSCAPE_TEST_PG`` (``.ci/run`` exports it); when it is unreachable these tests fail, they
are not skipped. Each test gets fresh databases, dropped afterwards, so reruns never collide.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from sweeps.storage import open_storage
from tests.sweeps.conftest import FAST, pg_url, scratch_databases, start_cli

SECRET = "s3cr3t-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(backend_url: str, directory: Path) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port (PostgreSQL backend store, served artifacts); its URL."""
    port = free_port()
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; psycopg2 is the driver this project installs.
    backend = backend_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    log_path = directory / "mlflow-server.log"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend]
    command += ["--artifacts-destination", str(directory / "artifacts"), "--serve-artifacts"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mlflow server did not start:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and its uvicorn workers
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_two_workers_on_postgres_and_a_tracking_server_run_each_seed_once(tmp_path):
    unused_root = tmp_path / "mlruns"
    with (
        scratch_databases("optuna", "mlflow") as (optuna_url, mlflow_url),
        mlflow_server(mlflow_url, tmp_path) as tracking,
    ):
        # A password in the storage URL (trust auth ignores it) must never reach MLflow or the output.
        storage = pg_url(urlsplit(optuna_url).path.lstrip("/"), SECRET)
        args = ["--n", "6", *FAST, "--storage", storage, "--tracking-uri", tracking, "--heartbeat", "5"]
        args += ["--study-name", "scale-out", "--root", str(unused_root)]
        workers = [start_cli("sweeps.seeds", *args, threads=1) for _ in range(2)]
        outputs = [worker.communicate(timeout=400) for worker in workers]
        for worker, (out, err) in zip(workers, outputs):
            assert worker.returncode == 0, out[-3000:] + err[-3000:]

        study = optuna.load_study(study_name="scale-out", storage=open_storage(optuna_url))
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert sorted(t.params["seed"] for t in complete) == [1, 2, 3, 4, 5, 6]
        others = [t for t in study.trials if t.state != TrialState.COMPLETE]
        # Both workers enqueue the missing points; a copy of a point already taken is dropped before it logs.
        for trial in others:
            assert trial.state == TrialState.FAIL, trial
            assert trial.user_attrs.get("duplicate") or "point" not in trial.user_attrs, trial
            assert "mlflow_run_id" not in trial.user_attrs, trial

        client = MlflowClient(tracking_uri=tracking)
        experiment = client.get_experiment_by_name("seeds")
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if r.data.tags.get("run_kind") == "parent"]
        children = [r for r in runs if r.data.tags.get("run_kind") == "trial"]
        assert len(parents) == 1, [p.info.run_id for p in parents]
        parent = parents[0]
        assert parent.info.status == "FINISHED"
        assert len(children) == 6
        assert all(c.info.status == "FINISHED" for c in children)
        assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
        assert sorted(int(c.data.tags["seed"]) for c in children) == [1, 2, 3, 4, 5, 6]
        assert {t.user_attrs["mlflow_run_id"] for t in complete} == {c.info.run_id for c in children}
        assert len({c.data.tags["worker"] for c in children}) == 2, "both workers should have run trials"

        for run in runs:
            recorded = " ".join([*run.data.params.values(), *run.data.tags.values()])
            assert SECRET not in recorded and "postgresql" not in recorded, run.info.run_id
        for out, err in outputs:
            assert SECRET not in out + err
    assert not unused_root.exists(), "with a server and a database nothing goes to the local store"
