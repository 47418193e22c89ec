"""``python -m sweeps.lr --n 8 --lr-min 1e-3 --lr-max 0.3 --seeds-per-lr 2``: learning rates x seeds."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sweeps.cli import base_parser, options_from_args, preset_from_args, run_cli
from sweeps.runner import SweepOptions
from sweeps.space import SweepSpace, lr_grid

__all__ = ["build_options", "main", "parser"]


def parser() -> argparse.ArgumentParser:
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
    if args.n < 1:
        raise ValueError(f"Expected `--n` >= 1, got {args.n}")
    if args.seeds_per_lr < 1:
        raise ValueError(f"Expected `--seeds-per-lr` >= 1, got {args.seeds_per_lr}")
    if not (0 < args.lr_min < args.lr_max):
        raise ValueError(f"Expected 0 < `--lr-min` < `--lr-max`, got {args.lr_min} and {args.lr_max}")
    seeds = tuple(range(args.seed_start, args.seed_start + args.seeds_per_lr))
    if args.sampler == "tpe":
        space = SweepSpace("lr", seeds, None, args.lr_min, args.lr_max, "tpe", args.n * args.seeds_per_lr)
    else:
        lrs = lr_grid(args.n, args.lr_min, args.lr_max, args.sampler, args.sampler_seed)
        space = SweepSpace("lr", seeds, lrs, args.lr_min, args.lr_max, args.sampler)
    return options_from_args(args, space, preset_from_args(args))


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_options, parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
