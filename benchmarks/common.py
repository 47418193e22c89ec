"""What every benchmark shares: the result row, the run context (sizes, data, caches), timers and machine facts."""

from __future__ import annotations

import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from landscape_core.data import FashionMNIST, load_fashion_mnist

__all__ = [
    "Context",
    "ProcessRun",
    "Result",
    "best_of",
    "busy_machine",
    "machine_info",
    "run_process",
    "synchronize",
    "timed",
]

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    """One row of the table: ``ours`` against ``baseline`` in ``unit``, and their ratio.

    ``ratio`` is oriented so that larger means better for us (a speedup or a throughput ratio), except where ``unit``
    says otherwise (memory: peak at 4n over peak at n, ~1 is the goal). ``target`` is the issue's goal on this device
    and ``met`` whether this run reached it (None: no target, informational).
    """

    name: str
    ours: float
    baseline: float
    ratio: float
    unit: str
    ours_label: str
    baseline_label: str
    target: str = ""
    met: bool | None = None
    note: str = ""
    timings: dict[str, Any] = field(default_factory=dict)


def at_least(value: float, goal: float | None) -> tuple[str, bool | None]:
    """The target string and whether ``value`` reaches it (no goal: informational)."""
    if goal is None:
        return "", None
    return f">= {goal:g}", bool(value >= goal)


@dataclass
class Context:
    """Settings and shared state of one benchmark run.

    Attributes:
        quick: the small sizes of ``--quick`` (a few minutes on a 2-core CPU).
        device: where the in-process benchmarks run (the subprocess sweeps get the same ``--device``).
        workdir: a temporary directory owned by this run (sweep stores go there).
        data_dir: passed to ``load_fashion_mnist`` and to the sweeps (None: the usual search order).
        cache: values shared between benchmarks of one run (e.g. the training throughput used by ``flops_vs_peak``,
            the sweep subprocess runs used by both ``workers2_vs_1`` and the memory benchmark).
    """

    quick: bool
    device: torch.device
    workdir: Path
    data_dir: str | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print

    @property
    def dataset(self) -> FashionMNIST:
        return load_fashion_mnist(self.data_dir)  # parsed once per process (cached by landscape_core.data)

    @property
    def device_kind(self) -> str:
        return "cuda" if self.device.type == "cuda" else "cpu"

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for in this run; the cached value afterwards."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def pick(self, *, quick: Any, full: Any, cuda: Any | None = None) -> Any:
        """A size by mode: ``quick`` under ``--quick``, else ``cuda`` on a GPU when given, else ``full``."""
        if self.quick:
            return quick
        if cuda is not None and self.device.type == "cuda":
            return cuda
        return full


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` (device work included) and its value."""
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return time.perf_counter() - start, value


@dataclass(frozen=True)
class ProcessRun:
    """A finished subprocess: exit status, wall seconds and the peak resident memory of it and its waited children."""

    returncode: int
    seconds: float
    max_rss_mb: float
    log: str


# Runs the command and prints its peak RSS. It must stay a tiny stdlib-only process: Linux carries the RSS high-water
# mark of the process image that exec replaces into the new program's ru_maxrss, so a child forked straight from this
# (large) benchmark process would report at least our own peak. Forked from the wrapper, it inherits ~10 MB.
_RSS_WRAPPER = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)"
)


def run_process(
    command: list[str], *, log_path: Path, timeout: float, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> ProcessRun:
    """Run ``command`` in ``cwd`` (the repository root); its wall time and peak RSS (it and the descendants it waited
    for).

    The peak comes from ``getrusage(RUSAGE_CHILDREN)`` inside a tiny wrapper process (see ``_RSS_WRAPPER``): the
    largest single process of the tree, not a sum.
    """
    rss_path = log_path.with_suffix(".maxrss")
    wrapped = [sys.executable, "-c", _RSS_WRAPPER, str(rss_path), *command]
    with open(log_path, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(
            wrapped, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            returncode = process.wait()
        seconds = time.perf_counter() - start
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, kilobytes on Linux
    max_rss = int(rss_path.read_text()) / scale if rss_path.exists() else math.nan
    return ProcessRun(returncode, seconds, max_rss, log_path.read_text(errors="replace"))


def best_of(runs: dict[str, Callable[[], Any]], ctx: Context, rounds: int = 2) -> dict[str, tuple[float, Any]]:
    """Each run's best seconds (and its value) over ``rounds`` rounds, alternating: machine load hits all alike."""
    best: dict[str, tuple[float, Any]] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            seconds, value = timed(run, ctx.device)
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, value)
    return best


@contextmanager
def busy_machine(processes: int) -> Iterator[list[subprocess.Popen]]:
    """``processes`` other programs that keep the CPU busy while the block runs (each a Python loop, as a user's
    other work beside a sweep), ended after it: the busy machine of issue 24 is 4 of them on 2 cores (load about 5)."""
    others = [
        subprocess.Popen(
            [sys.executable, "-c", "while True: pass"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(processes)
    ]
    try:
        yield others
    finally:
        for other in others:
            other.kill()
            other.wait()


def machine_info(device: torch.device) -> dict[str, Any]:
    """Facts that make timings comparable: CPU, threads, torch, the device, and the load when asked."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "processor": _cpu_model(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = list(os.getloadavg())
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
