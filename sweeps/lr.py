"""``python -m sweeps.lr --n 8 --lr-min 1e-3 --lr-max 0.3 --seeds-per-lr 2``: learning rates x seeds."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from landscape_core.cli import ArgumentParser, exit_process, require
from landscape_core.errors import UsageError
from sweeps.cli import base_parser, options_from_args, preset_from_args, run_sweep_cli, sweep_widths
from sweeps.options import SweepOptions
from sweeps.space import SweepSpace, lr_grid

__all__ = ["build_options", "main", "parser"]


def parser() -> ArgumentParser:
    p = base_parser(
        "python -m sweeps.lr", "A learning-rate sweep: n log-spaced learning rates, each with several seeds."
    )
    p.add_argument("--n", type=int, default=8, help="number of learning rates (default 8)")
    p.add_argument("--lr-min", type=float, default=1e-3)
    p.add_argument("--lr-max", type=float, default=0.3)
    p.add_argument("--seeds-per-lr", type=int, default=2)
    p.add_argument("--seed-start", type=int, default=1)
    p.add_argument(
        "--sampler",
        choices=("grid", "qmc", "tpe"),
        default="grid",
        help="grid: even log grid (default); qmc: scrambled Sobol points; tpe: Optuna's TPE picks lrs adaptively "
        "(minimizing test loss), n x seeds-per-lr trials",
    )
    p.add_argument("--sampler-seed", type=int, default=0)
    return p


def build_options(args: argparse.Namespace) -> SweepOptions:
    if args.until_decided:
        raise UsageError(
            "--until-decided grows a seeds sweep (python -m sweeps.seeds); lr and grid sweeps are fixed designs"
        )
    require(args.n >= 1, "--n", ">= 1", args.n)
    require(args.seeds_per_lr >= 1, "--seeds-per-lr", ">= 1", args.seeds_per_lr)
    require(args.seed_start >= 0, "--seed-start", ">= 0", args.seed_start)
    if not (0 < args.lr_min < args.lr_max < math.inf):
        raise UsageError(f"Expected 0 < `--lr-min` < `--lr-max`, both finite, got {args.lr_min} and {args.lr_max}")
    require(args.sampler_seed >= 0, "--sampler-seed", ">= 0", args.sampler_seed)
    seeds = tuple(range(args.seed_start, args.seed_start + args.seeds_per_lr))
    if args.sampler == "tpe":
        space = SweepSpace(
            "lr",
            seeds,
            lr_min=args.lr_min,
            lr_max=args.lr_max,
            sampler="tpe",
            adaptive_trials=args.n * args.seeds_per_lr,
            widths=sweep_widths(args),
        )
    else:
        lrs = lr_grid(args.n, args.lr_min, args.lr_max, args.sampler, args.sampler_seed)
        space = SweepSpace(
            "lr", seeds, lrs, lr_min=args.lr_min, lr_max=args.lr_max, sampler=args.sampler, widths=sweep_widths(args)
        )
    return options_from_args(args, space, preset_from_args(args))


def main(argv: Sequence[str] | None = None) -> int:
    return run_sweep_cli(build_options, parser(), argv)


if __name__ == "__main__":
    exit_process(main())
