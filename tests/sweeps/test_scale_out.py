"""Scale-out on real services: two workers, started together as on two machines, on one study in PostgreSQL,
logging to a real MLflow tracking server with a PostgreSQL backend store and served artifacts.

PostgreSQL comes from ``LANDSCAPE_TEST_PG`` (``.ci/run`` exports it); when it is unreachable these tests fail, they
are not skipped. Each test gets fresh databases, dropped afterwards, so reruns never collide.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from sweeps.storage import open_storage
from tests.sweeps.conftest import FAST, mlflow_server, pg_url, scratch_databases, start_cli

SECRET = "s3cr3t-pw"


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
