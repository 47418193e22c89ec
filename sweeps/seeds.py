"""``python -m sweeps.seeds --n 20``: train and measure n seeds of the same protocol."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from landscape_core.cli import ArgumentParser, exit_process, require
from sweeps.cli import base_parser, options_from_args, plan_from_args, preset_from_args, run_sweep_cli, sweep_widths
from sweeps.options import SweepOptions
from sweeps.space import SweepSpace

__all__ = ["build_options", "main", "parser"]


def parser() -> ArgumentParser:
    p = base_parser("python -m sweeps.seeds", "A many-seed sweep: the same protocol, seeds seed_start..seed_start+n-1.")
    p.add_argument("--n", type=int, help="number of seeds (default 20; with --until-decided the cap is --max-n)")
    p.add_argument("--seed-start", type=int, default=1, help="first seed (default 1)")
    return p


def build_options(args: argparse.Namespace) -> SweepOptions:
    if args.until_decided:
        require(args.n is None, "--n", "not given with --until-decided (its cap is --max-n)", args.n)
        require(sweep_widths(args) is None, "--width", "one value with --until-decided (a list is an axis)", args.width)
    n = plan_from_args(args).sequential.max_n if args.until_decided else (20 if args.n is None else args.n)
    require(n >= 1, "--n", ">= 1", n)
    require(args.seed_start >= 0, "--seed-start", ">= 0", args.seed_start)
    space = SweepSpace("seeds", tuple(range(args.seed_start, args.seed_start + n)), widths=sweep_widths(args))
    return options_from_args(args, space, preset_from_args(args))


def main(argv: Sequence[str] | None = None) -> int:
    return run_sweep_cli(build_options, parser(), argv)


if __name__ == "__main__":
    exit_process(main())
