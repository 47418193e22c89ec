"""A real smoke sweep into a temporary store (real Optuna journal, real MLflow sqlite), shared by the sweep tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from tracking.store import default_tracking_uri

REPO = Path(__file__).resolve().parents[2]
SMOKE = ["--preset", "smoke", "--device", "cpu"]


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` as a user would, from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=timeout
    )


def client_for(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=default_tracking_uri(root))
