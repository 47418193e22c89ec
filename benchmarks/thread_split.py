"""Two workers on half the threads each against one worker on all of them, on a paper trial's own work.

A ``--workers 2`` sweep runs two trials at once on half the CPU threads each (``sweeps.workers``). Whether that
pays depends on how well one trial's kernels use every thread: on a CPU the many small parallel regions of SeedCNN's
training step and of an HVP each wait for all their threads. This row times the same work both ways: a slice of a
paper trial's training (the paper protocol's batches on 10,240 images), 4 HVPs over 2,048 images, and a loss slice of
21 points over 2,048 images in the forward dtype a trial uses (the slices, barriers, curves and noise of a trial's
analysis are such forward-only passes: in a 2-worker paper sweep they slowed down most, about 2.4x per process).

``python -m benchmarks.thread_split THREADS`` is the child: it runs the work once on THREADS threads and prints its
seconds as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import torch

from benchmarks.common import ROOT, Context, Result, at_least
from landscape_core.config import PRESETS
from landscape_core.data import load_fashion_mnist
from landscape_core.devices import forward_dtype
from landscape_core.directions import random_filter_normalized
from landscape_core.hessian import HessianOperator
from landscape_core.slices import slice_1d
from landscape_core.splits import TrialData
from landscape_core.train import train

__all__ = ["thread_split_vs_shared"]

TRAIN_IMAGES = 80 * 128
HVPS = 4
HVP_IMAGES = 2048
SLICE_POINTS = 21


def _work(threads: int, device: str, data_dir: str | None) -> dict[str, float]:
    """The work of one trial, timed on ``threads`` threads (a warm-up step first: allocator, kernels)."""
    torch.set_num_threads(threads)
    dataset = load_fashion_mnist(data_dir)
    config = dataclasses.replace(
        PRESETS["paper"].train, epochs=1, train_size=TRAIN_IMAGES, test_size=128, device=device
    )
    warm = dataclasses.replace(config, train_size=256)
    train(warm, TrialData.build(dataset, warm))
    data = TrialData.build(dataset, config)
    start = time.perf_counter()
    model = train(config, data).model
    trained = time.perf_counter() - start
    operator = HessianOperator(model, data.subset("hessian", HVP_IMAGES))
    v = torch.randn(operator.size, device=operator.device)
    operator.matvec(v)
    start = time.perf_counter()
    for _ in range(HVPS):
        operator.matvec(v)
    hvp = time.perf_counter() - start
    dtype = forward_dtype(PRESETS["paper"].analysis.forward_dtype, device)
    direction = random_filter_normalized(model, seed=0)
    start = time.perf_counter()
    slice_1d(model, operator.data, direction, torch.linspace(-1, 1, SLICE_POINTS), dtype=dtype)
    return {"train": trained, "hvp": hvp, "slice": time.perf_counter() - start}


def _children(ctx: Context, threads: int, count: int) -> list[dict[str, float]]:
    """``count`` child processes on ``threads`` threads each, all at once; their seconds."""
    command = [sys.executable, "-m", "benchmarks.thread_split", str(threads), str(ctx.device), ctx.data_dir or ""]
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    outputs = [p.communicate()[0] for p in processes]
    if any(p.returncode for p in processes):
        raise RuntimeError(f"thread_split child failed: {[p.returncode for p in processes]}")
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


def thread_split_vs_shared(ctx: Context) -> list[Result]:
    """Seconds for two trials' work: two processes on half the threads each, at once, against one process on all the
    threads doing both in turn (best of 2 rounds, alternating). Ratio = speedup of the split."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if ctx.device.type != "cpu" or cores < 2:
        return []
    shared, split = [], []
    for _ in range(ctx.pick(quick=1, full=2)):
        one = _children(ctx, cores, 1)[0]
        shared.append(2 * sum(one.values()))
        both = _children(ctx, cores // 2, 2)
        split.append(max(sum(r.values()) for r in both))
        ctx.log(f"  {cores} threads: {one}; 2 x {cores // 2}: {both}")
    ours, base = min(split), min(shared)
    target, met = at_least(base / ours, None)
    return [
        Result(
            "thread_split_vs_shared",
            ours,
            base,
            base / ours,
            "s for two trials' work (ratio = speedup of the split)",
            f"2 processes x {cores // 2} thread(s), at once",
            f"1 process x {cores} threads, in turn",
            target,
            met,
            f"each: paper-protocol training on {TRAIN_IMAGES:,} images, {HVPS} HVPs over {HVP_IMAGES:,}, a "
            f"{SLICE_POINTS}-point loss slice over {HVP_IMAGES:,}",
            {"split": split, "shared": shared, "cores": cores},
        )
    ]


if __name__ == "__main__":
    print(json.dumps(_work(int(sys.argv[1]), sys.argv[2], sys.argv[3] or None)))
