"""Shared helpers of the sweep tests: running the CLIs as a user would, the smallest real trials, scratch
PostgreSQL databases and a real MLflow tracking server (real Optuna journal, real MLflow sqlite, real PostgreSQL: no
mocks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from mlflow.tracking import MlflowClient

from landscape_core.config import ANALYSES
from tracking.store import default_tracking_uri

REPO = Path(__file__).resolve().parents[2]
SMOKE = ["--preset", "smoke", "--device", "cpu"]
#: Smallest real trials: the tests check bookkeeping (trials, runs, states), not the analyses.
FAST = [*SMOKE, "--train-size", "256", "--test-size", "128", "--epochs", "1", "--skip", ",".join(ANALYSES)]
#: The PostgreSQL server the tests use, through its maintenance database: each test creates and drops its own
#: databases there. ``LANDSCAPE_TEST_PG`` overrides it (any database of the server the tests may CREATE DATABASE on).
PG_URL = os.environ.get("LANDSCAPE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` as a user would, from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=timeout
    )


def start_cli(module: str, *args: str, threads: int | None = None) -> subprocess.Popen:
    """Start ``python -m module args`` as a user would (from the repository root) without waiting for it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def client_for(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=default_tracking_uri(root))


def pg_url(database: str, password: str | None = None) -> str:
    """``PG_URL`` pointing at ``database`` (and, when given, with ``password`` in it)."""
    parts = urlsplit(PG_URL)
    netloc = parts.netloc
    if password is not None and parts.password is None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user or 'postgres'}:{password}@{host}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{database}"))


@contextmanager
def scratch_databases(*purposes: str) -> Iterator[list[str]]:
    """One fresh PostgreSQL database per purpose (their URLs), dropped afterwards.

    Raises psycopg2.OperationalError (a failing test, not a skipped one) when PostgreSQL is unreachable.
    """
    admin = psycopg2.connect(PG_URL, connect_timeout=5)
    admin.autocommit = True
    tag = uuid.uuid4().hex[:10]
    names = [f"landscape_test_{tag}_{purpose}" for purpose in purposes]
    try:
        with admin.cursor() as cursor:
            for name in names:
                cursor.execute(f'CREATE DATABASE "{name}"')
        yield [pg_url(name) for name in names]
    finally:
        with admin.cursor() as cursor:
            for name in names:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Wait until an MLflow server or UI at ``url`` answers ``/health``; fail with its log's tail if it dies or
    takes longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).read()
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow did not start at {url}:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


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
        wait_healthy(url, server, log_path)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and its uvicorn workers
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
