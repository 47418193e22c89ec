from __future__ import annotations

import subprocess
import sys


def test_landscape_core_loads_neither_mlflow_nor_optuna():
    code = (
        "import sys, landscape_core, landscape_core.train, landscape_core.data; "
        "import pkgutil, importlib; "
        "modules = pkgutil.walk_packages(landscape_core.__path__, 'landscape_core.'); "
        "[importlib.import_module(m.name) for m in modules]; "
        "bad = [m for m in ('mlflow', 'optuna', 'tracking', 'sweeps') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tracking_does_not_load_optuna():
    code = "import sys, tracking; sys.exit(1 if 'optuna' in sys.modules or 'sweeps' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
