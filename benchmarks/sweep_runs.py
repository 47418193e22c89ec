"""Whole sweeps as subprocesses: two local workers against one, and peak memory at n and 4n trials."""

from __future__ import annotations

import os
import sys

from benchmarks.common import Context, ProcessRun, Result, at_least, run_process

__all__ = ["memory_4n_vs_n", "smoke_sweep", "workers2_vs_1"]

SKIP = "density,slices,flatness,noise,connectivity"
TIMEOUT = 1800


def smoke_sweep(ctx: Context, n: int, workers: int) -> ProcessRun:
    """``python -m sweeps.seeds --n N --preset smoke --workers W`` into a fresh store; cached per (n, workers).

    Raises:
        RuntimeError: the sweep exited non-zero (the tail of its output is in the message).
    """

    def run() -> ProcessRun:
        root = ctx.workdir / f"sweep-n{n}-w{workers}"
        command = [
            sys.executable,
            "-m",
            "sweeps.seeds",
            "--n",
            str(n),
            "--preset",
            "smoke",
            "--device",
            str(ctx.device),
            "--skip",
            SKIP,
            "--workers",
            str(workers),
            "--root",
            str(root),
        ]
        if ctx.data_dir:
            command += ["--data-dir", ctx.data_dir]
        ctx.log(f"  sweep n={n} workers={workers}: {' '.join(command[1:])}")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        result = run_process(command, log_path=ctx.workdir / f"sweep-n{n}-w{workers}.log", timeout=TIMEOUT, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"sweep n={n} workers={workers} exited {result.returncode}:\n{result.log[-3000:]}")
        return result

    return ctx.once(f"sweep/{n}/{workers}", run)


def workers2_vs_1(ctx: Context) -> list[Result]:
    """Wall time of a 4-trial smoke sweep with ``--workers 2`` against ``--workers 1`` (ratio = speedup)."""
    n = 4
    one = smoke_sweep(ctx, n, 1)
    two = smoke_sweep(ctx, n, 2)
    ratio = one.seconds / two.seconds
    cores = os.cpu_count() or 1
    target, met = at_least(ratio, None)
    return [
        Result(
            "workers2_vs_1",
            two.seconds,
            one.seconds,
            ratio,
            "s (ratio = speedup)",
            "--workers 2",
            "--workers 1",
            target,
            met,
            f"smoke, n={n}, skip {SKIP}; {cores} cores (process start-up and the shared reference model included)",
            {"workers_1_seconds": one.seconds, "workers_2_seconds": two.seconds, "n": n},
        )
    ]


def memory_4n_vs_n(ctx: Context) -> list[Result]:
    """Peak RSS of a one-worker smoke sweep at 4n trials over n trials (ratio ~1: memory does not grow with n)."""
    n = ctx.pick(quick=1, full=4)
    small = smoke_sweep(ctx, n, 1)
    large = smoke_sweep(ctx, 4 * n, 1)
    ratio = large.max_rss_mb / small.max_rss_mb
    return [
        Result(
            "memory_4n_vs_n",
            large.max_rss_mb,
            small.max_rss_mb,
            ratio,
            "MB peak RSS (ratio = 4n / n)",
            f"n={4 * n} trials",
            f"n={n} trials",
            "<= 1.1",
            bool(ratio <= 1.1),
            "smoke sweep, one worker; largest process of the tree (ru_maxrss)",
            {
                "n": n,
                "rss_mb": {str(n): small.max_rss_mb, str(4 * n): large.max_rss_mb},
                "seconds": {str(n): small.seconds, str(4 * n): large.seconds},
            },
        )
    ]
