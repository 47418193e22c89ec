from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path


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


REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("landscape_core", "tracking", "sweeps", "benchmarks")
LAYER = {"landscape_core": 0, "tracking": 1, "sweeps": 2, "benchmarks": 3}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports, anywhere in its body (function-local imports count)."""
    modules = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module in modules:
                # ``from pkg import sub`` imports the submodule; ``from pkg import name`` runs pkg/__init__.py
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    edges.add(sub if sub in modules else node.module)
        graph[name] = edges - {name}
    return graph


def test_the_import_graph_has_no_circle_and_points_down():
    graph = import_graph()
    assert "tracking.correlate" in graph and "landscape_core.measure" in graph
    for module, edges in graph.items():
        for target in edges:
            low, high = LAYER[module.split(".")[0]], LAYER[target.split(".")[0]]
            assert high <= low, f"{module} imports {target}: imports point down (sweeps -> tracking -> landscape_core)"
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_private_optuna_attribute_is_used():
    private = re.compile(r"\.(_storage|_trial_id|_study_id|_cached_frozen_trial|_get_trials|_log_completed_trial)\b")
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in (REPO / "sweeps").rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if private.search(line)
    ]
    assert not offenders, offenders
