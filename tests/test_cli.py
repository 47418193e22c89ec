"""One error policy for every command line (``landscape_core.cli.run_command``), checked on each CLI as a user runs
it: bad input exits 2 with one line and no traceback; a bug (a fault injected inside the command) exits 1 with its
traceback, whatever the exception's type. A ValueError deep inside a trial is a bug, not bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.sweeps.conftest import FAST, REPO, run_cli

#: Every CLI of the project, with an invalid value of one of its own options.
BAD_INPUT = {
    "sweeps.seeds": (["--n", "0"], "Expected `--n` >= 1, got 0"),
    "sweeps.lr": (["--lr-min", "0.1", "--lr-max", "0.01"], "0 < `--lr-min` < `--lr-max`"),
    "sweeps.grid": (["--batch-size", "32,x"], "`--batch-size` a comma-separated list of ints"),
    "sweeps.slurm": (["--tasks", "0"], "Expected `--tasks` >= 1, got 0"),
    "tracking.correlate": (["--n-boot", "0"], "`--n-boot`"),
    "tracking.export": (["--out", "population.xlsx"], "Expected `--out` ending in .csv or .parquet"),
    "tracking.report": (["--out", "report.pdf"], "Expected `--out` ending in .html"),
    "landscape_core.data": (["--data-dir-typo", "x"], "unrecognized arguments"),
    "benchmarks.run": (["--only", "nonsense"], "unknown benchmark(s) ['nonsense']"),
}


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("module", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_one_line(module, tmp_path):
    args, expected = BAD_INPUT[module]
    root = tmp_path / "mlruns"
    extra = ["--root", str(root)] if module.startswith(("sweeps", "tracking")) else []
    result = run_cli(module, *args, *extra, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result)
    assert line.startswith("error: ") and expected in line, line
    assert not root.exists()


@pytest.mark.parametrize("module", sorted(BAD_INPUT))
def test_an_unknown_option_exits_2_with_one_line_not_the_usage(module, tmp_path):
    result = run_cli(module, "--no-such-option", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == "error: unrecognized arguments: --no-such-option"


def run_with_fault(module: str, target: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    """``python -m module args`` with ``target`` (``package.module:attribute``) replaced by a function that raises
    ``ValueError``: a bug deep inside the command, of the very type validation errors used to be."""
    where, attribute = target.split(":")
    code = (
        "import importlib, sys\n"
        f"owner = importlib.import_module({where!r})\n"
        "def fault(*args, **kwargs):\n"
        "    raise ValueError('injected fault: a bug, not bad input')\n"
        f"setattr(owner, {attribute!r}, fault)\n"
        f"main = importlib.import_module({module!r}).main\n"
        f"sys.exit(main({args!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env={"PYTHONPATH": str(REPO)}
    )


def test_a_bug_inside_a_trial_exits_1_with_its_traceback(tmp_path):
    for module in ("sweeps.seeds", "sweeps.lr"):
        root = tmp_path / module / "mlruns"
        extra = ["--n", "1"] + (["--seeds-per-lr", "1"] if module == "sweeps.lr" else [])
        result = run_with_fault(module, "sweeps.pipeline:train", [*extra, *FAST, "--root", str(root)], tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback (most recent call last)" in result.stderr
        assert "ValueError: injected fault: a bug, not bad input" in result.stderr
        assert "error: injected fault" not in result.stdout


def test_a_bug_in_the_correlation_report_exits_1_with_its_traceback(seed_sweep, tmp_path):
    root, _ = seed_sweep
    args = ["--root", str(root), "--study", "seeds-smoke"]
    result = run_with_fault("tracking.correlate", "tracking.correlate:analyze", args, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: injected fault" in result.stderr


def test_a_bug_in_the_data_check_exits_1_with_its_traceback(tmp_path):
    result = run_with_fault("landscape_core.data", "landscape_core.data:find_data_dir", [], tmp_path)
    assert result.returncode == 1 and "Traceback" in result.stderr and "injected fault" in result.stderr


def test_a_bug_in_a_benchmark_exits_1_with_its_traceback(tmp_path):
    # benchmarks.run reports a failed benchmark (its traceback) and still runs the others; the status is 1.
    code = (
        "import sys\n"
        "import benchmarks.run as run\n"
        "def fault(ctx):\n"
        "    raise ValueError('injected fault')\n"
        "run.BENCHMARKS['flops_vs_peak'] = fault\n"
        "sys.exit(run.main(['--quick', '--only', 'flops_vs_peak', '--device', 'cpu']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(REPO)}
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback (most recent call last)" in result.stdout + result.stderr
    assert "ValueError: injected fault" in result.stdout + result.stderr


def test_a_sigterm_during_a_benchmark_keeps_the_rows_already_measured(tmp_path):
    # A busy full run takes hours: a SIGTERM (a real one, to the process itself) ends it at the benchmark it
    # interrupts, and the table and the JSON still hold the rows measured before. The status is 143.
    code = (
        "import os, signal, sys\n"
        "import benchmarks.run as run\n"
        "from benchmarks.common import Result\n"
        "def measured(ctx):\n"
        "    return [Result('measured_row', 1.0, 3.0, 3.0, 's', 'ours', 'baseline')]\n"
        "def interrupted(ctx):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    raise AssertionError('the signal did not interrupt')\n"
        "def never(ctx):\n"
        "    raise AssertionError('ran after the interruption')\n"
        "run.BENCHMARKS.clear()\n"
        "run.BENCHMARKS.update(first=measured, second=interrupted, third=never)\n"
        "sys.exit(run.main(['--json', sys.argv[1], '--device', 'cpu']))\n"
    )
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 143, result.stdout + result.stderr
    assert "measured_row" in result.stdout and "second failed: interrupted (SIGTERM)" in result.stdout
    payload = json.loads(out.read_text())
    assert payload["ratios"] == {"measured_row": 3.0}
    assert payload["errors"] == {"second": "interrupted (SIGTERM)"}


#: A sweep process after its trial was interrupted, as a SIGTERM at the wrong instant leaves it: the trial recorded,
#: the "interrupted:" line printed, and Optuna's heartbeat thread (not a daemon) still beating, because the signal
#: landed between the thread's start and its ``with`` block (``landscape_core.cli.exit_process``).
LEFT_BEHIND = """
import sys
import optuna
from optuna.storages._heartbeat import HeartbeatThread
from landscape_core.cli import exit_process

storage = optuna.storages.RDBStorage(f"sqlite:///{sys.argv[1]}", heartbeat_interval=60, grace_period=120)
trial = optuna.create_study(storage=storage).ask()
HeartbeatThread(trial._trial_id, storage).start()  # never joined
print("interrupted: rerun the same command to resume the sweep.")
exit_process(143)
"""


def test_an_interrupted_sweep_exits_143_with_its_line_though_optunas_heartbeat_thread_is_left_running(tmp_path):
    """Issue 24: a scancelled SLURM task hung until KillWait's SIGKILL (exit 0:9, no "interrupted:" line in its log)
    when the SIGTERM landed inside Optuna's heartbeat start or stop: Python's exit waited for that thread forever.
    (Reproduced with plain Optuna: 1 hang in 40 SIGTERMs at random instants of a sweep of short trials.)"""
    script = tmp_path / "left_behind.py"
    script.write_text(LEFT_BEHIND)
    log = tmp_path / "task.out"  # a file, as in a batch job: stdout is block-buffered
    with log.open("w") as out:
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "study.db")],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=60,
        )
    assert result.returncode == 143, result.stderr[-2000:]
    assert "interrupted: rerun the same command" in log.read_text()
