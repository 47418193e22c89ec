"""``python -m sweeps.grid --lr 0.003,0.01,0.03 --batch-size 32,128,512 --seeds-per-point 2``: a grid of training
hyperparameters x seeds.

Any of ``--lr``, ``--batch-size``, ``--momentum``, ``--epochs``, ``--train-size``, ``--optimizer``, ``--init-seed``
and ``--order-seed`` takes a comma-separated list; each with more than one value is an axis, and the grid is their
cross product, every point run with ``--seeds-per-point`` seeds (repetitions inside a cell, not an axis). A single
value is an override, as in the other sweeps. ``--batch-size 32,512`` alone asks Keskar et al. 2017's large-batch
question. Add ``--stop-at-train-loss X`` to compare the models at one train loss (Jiang et al. 2019).
``--optimizer sgd,gd,sam`` asks the paper's "why SGD" question (``make optimizers``). The sweep runs like the
others: its points are enqueued, it resumes, it takes workers, and it has its own experiment, ``grid``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from landscape_core.cli import ArgumentParser, exit_process, require
from landscape_core.errors import UsageError
from sweeps.cli import base_parser, options_from_args, preset_from_args, run_sweep_cli, sweep_widths
from sweeps.options import SweepOptions
from sweeps.space import GRID_FIELDS, SweepSpace

__all__ = ["build_options", "main", "parse_axis", "parser"]

#: How each grid option's values are read.
_TYPES = {
    "lr": float,
    "batch_size": int,
    "momentum": float,
    "epochs": int,
    "train_size": int,
    "optimizer": str,
    "init_seed": int,
    "order_seed": int,
}


def parser() -> ArgumentParser:
    p = base_parser(
        "python -m sweeps.grid",
        "A grid of training hyperparameters (lr, batch size, momentum, epochs, train-set size), each point with "
        "several seeds.",
        grid=True,
    )
    p.add_argument("--seeds-per-point", type=int, default=2, help="seeds at every point of the grid (default 2)")
    p.add_argument("--seed-start", type=int, default=1)
    return p


def parse_axis(name: str, text: str | None) -> tuple[float | str, ...] | None:
    """``--batch-size 32,128`` -> ``(32, 128)``; None when the option is absent. Bad values are a ``UsageError``."""
    if text is None:
        return None
    option = f"--{name.replace('_', '-')}"
    try:
        values = tuple(_TYPES[name](part.strip()) for part in text.split(","))
    except ValueError:
        raise UsageError(
            f"Expected `{option}` a comma-separated list of {_TYPES[name].__name__}s, got {text!r}"
        ) from None
    if len(set(values)) != len(values):
        raise UsageError(f"Expected distinct `{option}` values, got {text!r}")
    return values


def build_options(args: argparse.Namespace) -> SweepOptions:
    if args.until_decided:
        raise UsageError(
            "--until-decided grows a seeds sweep (python -m sweeps.seeds); lr and grid sweeps are fixed designs"
        )
    require(args.seeds_per_point >= 1, "--seeds-per-point", ">= 1", args.seeds_per_point)
    require(args.seed_start >= 0, "--seed-start", ">= 0", args.seed_start)
    axes = []
    for name in GRID_FIELDS:
        values = parse_axis(name, getattr(args, name))
        # one value is an override (validated by the config); several make an axis (each validated below)
        setattr(args, name, values[0] if values is not None and len(values) == 1 else None)
        if values is not None and len(values) > 1:
            axes.append((name, values))
    if not axes:
        raise UsageError(
            "a grid needs at least one axis: give one of "
            + ", ".join(f"--{name.replace('_', '-')}" for name in GRID_FIELDS)
            + " a comma-separated list"
        )
    preset = preset_from_args(args)
    for name, values in axes:  # every value of every axis must make a valid config
        for value in values:
            preset.replace(**{name: value})
    seeds = tuple(range(args.seed_start, args.seed_start + args.seeds_per_point))
    space = SweepSpace("grid", seeds, grid=tuple(axes), widths=sweep_widths(args))
    return options_from_args(args, space, preset)


def main(argv: Sequence[str] | None = None) -> int:
    return run_sweep_cli(build_options, parser(), argv)


if __name__ == "__main__":
    exit_process(main())
