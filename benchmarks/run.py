"""``python -m benchmarks.run [--quick] [--json PATH] [--only NAME ...] [--device DEV]``: one table of ratios.

Every benchmark times ours and its baseline in the same process (or, for whole sweeps, as subprocesses of this one),
on the same data and model, so machine load hits both; where it matters they alternate and keep the best of a few.
Timings on a busy machine are noisy: compare runs on a quiet one. Nothing here asserts a speed.

The JSON holds ``ratios`` (name -> ratio), ``timings`` (name -> raw numbers), ``machine`` (CPU, threads, torch,
device, load average) and ``rows`` (every column of the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.analysis import invariance_audit_vs_per_pair, paper_trial_analysis_vs_training
from benchmarks.common import Context, Result, busy_machine, machine_info
from benchmarks.curvature import hvp_under_load, lambda_max_vs_power_double_backward
from benchmarks.statistics import cluster_bootstrap_vs_per_resample
from benchmarks.sweep_runs import memory_4n_vs_n, workers2_vs_1
from benchmarks.thread_split import thread_split_vs_shared
from benchmarks.training import batched_vs_sequential, eval_throughput, flops_vs_peak, train_vs_dataloader
from benchmarks.versus_pyhessian import lambda_max_vs_peers, trace_vs_peers
from landscape_core.cli import ArgumentParser, Terminated, require, require_writable, run_command
from landscape_core.data import find_data_dir
from landscape_core.devices import resolve_device
from landscape_core.errors import UsageError

__all__ = ["BENCHMARKS", "main", "render", "run_benchmarks"]

Benchmark = Callable[[Context], list[Result]]
#: The error recorded for the benchmark that Ctrl-C or SIGTERM interrupted, and the exit status it leads to.
INTERRUPTED = {"interrupted (Ctrl-C)": 130, "interrupted (SIGTERM)": 143}

# Name -> function, in the order they run (cheap in-process ones first; the sweeps last).
BENCHMARKS: dict[str, Benchmark] = {
    "train_vs_dataloader": train_vs_dataloader,
    "flops_vs_peak": flops_vs_peak,
    "eval_throughput": eval_throughput,
    "batched_vs_sequential": batched_vs_sequential,
    "lambda_max_vs_power_double_backward": lambda_max_vs_power_double_backward,
    "hvp_under_load": hvp_under_load,
    "cluster_bootstrap_vs_per_resample": cluster_bootstrap_vs_per_resample,
    # one paper-protocol trial (trained once per run, --quick: one epoch) serves these four
    "paper_trial_analysis_vs_training": paper_trial_analysis_vs_training,
    "invariance_audit_vs_per_pair": invariance_audit_vs_per_pair,
    "lambda_max_vs_peers": lambda_max_vs_peers,
    "trace_vs_peers": trace_vs_peers,
    "thread_split_vs_shared": thread_split_vs_shared,
    "workers2_vs_1": workers2_vs_1,
    "memory_4n_vs_n": memory_4n_vs_n,
}


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render(rows: Sequence[Result], *, title: str) -> Table:
    """The rich table: name, ours, baseline, ratio, unit, target and what each side was."""
    table = Table(title=title, title_justify="left")
    for column, justify in [
        ("benchmark", "left"),
        ("ours", "right"),
        ("baseline", "right"),
        ("ratio", "right"),
        ("unit", "left"),
        ("target", "left"),
        ("ours / baseline: what", "left"),
    ]:
        table.add_column(column, justify=justify, overflow="fold")
    for r in rows:
        mark = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[r.met]
        target = f"{r.target} {mark}".strip()
        what = f"{r.ours_label}\n{r.baseline_label}" + (f"\n[dim]{r.note}[/]" if r.note else "")
        table.add_row(r.name, _fmt(r.ours), _fmt(r.baseline), f"{_fmt(r.ratio)}x", r.unit, target, what)
    return table


def run_benchmarks(ctx: Context, names: Sequence[str]) -> tuple[list[Result], dict[str, str]]:
    """Run the named benchmarks in registry order; a failing one is reported and the others still run. Ctrl-C or
    SIGTERM ends the run at the benchmark it interrupts, which is reported as interrupted: the rows already measured
    are kept (a busy full run takes hours)."""
    rows: list[Result] = []
    errors: dict[str, str] = {}
    for name in [n for n in BENCHMARKS if n in names]:
        ctx.log(f"[benchmark] {name} ...")
        start = time.perf_counter()
        try:
            rows.extend(BENCHMARKS[name](ctx))
        except Exception as error:  # one broken benchmark must not hide the others
            errors[name] = f"{type(error).__name__}: {error}"
            ctx.log(traceback.format_exc())
        except KeyboardInterrupt as interrupt:
            errors[name] = "interrupted (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted (Ctrl-C)"
            ctx.log(f"[benchmark] {name}: interrupted after {time.perf_counter() - start:.1f} s; the rest skipped")
            break
        ctx.log(f"[benchmark] {name}: {time.perf_counter() - start:.1f} s")
    return rows, errors


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a few minutes on a 2-core CPU")
    p.add_argument("--json", type=Path, help="also write ratios, timings and machine facts to this JSON file")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these (repeat or comma-separate): {', '.join(BENCHMARKS)}",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files ($LANDSCAPE_DATA_DIR)")
    p.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="K",
        help="run beside K processes that keep the CPU busy (a user's other work; issue 24's busy machine: 4)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; bad input exits 2 with one line, a failed benchmark makes the exit status 1."""
    console = Console()
    if not console.is_terminal:  # piped or redirected: rich would wrap at 80 columns
        console = Console(width=170)
    return run_command(parser(), argv, _run, console=console)


def _run(args: argparse.Namespace, console: Console) -> int:
    names = [n.strip() for item in args.only for n in item.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UsageError(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    require_writable("--json", args.json)  # written at the end: refused now, not after minutes of benchmarks
    find_data_dir(args.data_dir)  # every benchmark trains on Fashion-MNIST: a missing one is bad input, exit 2
    # torch's forward-mode AD registers its decompositions with torch.jit.script, which warns on first use.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    require(args.busy >= 0, "--busy", ">= 0", args.busy)
    device = resolve_device(args.device)
    machine = {**machine_info(device), "busy_processes": args.busy}
    with tempfile.TemporaryDirectory(prefix="landscape-bench-") as workdir, busy_machine(args.busy):
        ctx = Context(
            quick=args.quick,
            device=device,
            workdir=Path(workdir),
            data_dir=args.data_dir,
            log=lambda message: console.print(message, highlight=False, markup=False),
        )
        start = time.perf_counter()
        rows, errors = run_benchmarks(ctx, names)
        total = time.perf_counter() - start
    if hasattr(os, "getloadavg"):
        machine["loadavg_end"] = list(os.getloadavg())
    machine["total_seconds"] = total
    mode = "quick" if args.quick else "full"
    load = machine.get("loadavg_start")
    title = f"benchmarks ({mode}, {device}, {machine['torch_threads']} threads"
    title += f", beside {args.busy} busy processes" if args.busy else ""
    title += f", load {load[0]:.1f})" if load else ")"
    console.print(render(rows, title=title))
    for name, error in errors.items():
        console.print(f"[bold red]{name} failed:[/] {error}", highlight=False)
    if args.json:
        payload = {
            "ratios": {r.name: r.ratio for r in rows},
            "timings": {r.name: r.timings for r in rows if r.timings},
            "machine": {**machine, "mode": mode},
            "rows": [{k: v for k, v in dataclasses.asdict(r).items() if k != "timings"} for r in rows],
            "errors": errors,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        console.print(f"wrote {args.json}")
    statuses = [INTERRUPTED[e] for e in errors.values() if e in INTERRUPTED]
    return statuses[0] if statuses else 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
