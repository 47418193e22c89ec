"""``python -m sweeps.spawn --spawn-epochs 0,1,2 --pairs 3``: instability analysis (Frankle et al. 2020).

Question 2 of the paper, "how does random initialization lead to different local minima?", needs the seed's two jobs
apart. For each spawn epoch k and pair, one trunk trains from its initialization to epoch k, and two branches continue
it to the end in different batch orders; the trial logs the barrier on the line between the two branches
(``instability/*``, raw and weight-matched). k = 0 shares only the initialization. Every sweep also runs the
baseline pair that shares nothing (spawn epoch -1: two initializations, two orders), the barrier "different seeds"
give. The end of the sweep prints and logs the barrier against k (``tracking.instability``).

A trial trains three networks' worth of epochs at most (the trunk once, two branches) and measures nothing else: the
geometry analyses belong to the other sweeps. It runs like them: points enqueued, resumable, workers, its own
experiment ``spawn``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from landscape_core.cli import ArgumentParser, exit_process, require
from landscape_core.config import ANALYSES
from landscape_core.errors import UsageError
from landscape_core.instability import INDEPENDENT
from sweeps.cli import base_parser, options_from_args, preset_from_args, run_sweep_cli
from sweeps.options import SweepOptions
from sweeps.space import SweepSpace

__all__ = ["build_options", "main", "parse_spawn_epochs", "parser"]


def parser() -> ArgumentParser:
    p = base_parser(
        "python -m sweeps.spawn",
        "Instability analysis: for each spawn epoch k and pair, a trunk to epoch k and two branches in different "
        "batch orders; the barrier between the branches against k, beside the barrier between independent runs.",
    )
    p.add_argument(
        "--spawn-epochs",
        default="0,1,2",
        help="the epochs k to branch at, comma-separated (default 0,1,2; each < --epochs); the independent pair "
        "(no shared epoch, two initializations) always runs too",
    )
    p.add_argument("--pairs", type=int, default=3, help="pairs (trunks) per spawn epoch (default 3)")
    p.add_argument("--seed-start", type=int, default=1, help="the first pair's trunk seed (default 1)")
    return p


def parse_spawn_epochs(text: str, epochs: int) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(-1, 0, 1, 2)``: the spawn epochs asked for, after the independent baseline."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"Expected `--spawn-epochs` a comma-separated list of integers, got {text!r}") from None
    require(len(set(values)) == len(values), "--spawn-epochs", "distinct values", text)
    for k in values:  # at k = epochs both branches would be the trunk itself: nothing to ask
        require(0 <= k < epochs, "--spawn-epochs", f"each in [0, {epochs - 1}] (below --epochs)", text)
    return (INDEPENDENT, *sorted(values))


def build_options(args: argparse.Namespace) -> SweepOptions:
    require(args.pairs >= 1, "--pairs", ">= 1", args.pairs)
    require(
        args.batch_trials == 1,
        "--batch-trials",
        "1 (a spawn trial trains its own trunk and branches)",
        args.batch_trials,
    )
    require(args.seed_start >= 0, "--seed-start", ">= 0", args.seed_start)
    for option in ("until_decided", "primary", "width"):
        if getattr(args, option):
            raise UsageError(f"--{option.replace('_', '-')} belongs to the geometry sweeps; a spawn sweep has no plan")
    preset = preset_from_args(args)
    require(preset.train.optimizer != "gd", "--optimizer", "one with a batch order (gd has none)", "gd")
    spawn_epochs = parse_spawn_epochs(args.spawn_epochs, preset.train.epochs)
    # a spawn trial trains and measures its barrier; the geometry analyses (and their reference minimum) are skipped
    preset = dataclasses.replace(preset, analysis=dataclasses.replace(preset.analysis, skip=frozenset(ANALYSES)))
    seeds = tuple(range(args.seed_start, args.seed_start + args.pairs))
    space = SweepSpace("spawn", seeds, spawn_epochs=spawn_epochs)
    return options_from_args(args, space, preset)


def main(argv: Sequence[str] | None = None) -> int:
    return run_sweep_cli(build_options, parser(), argv)


if __name__ == "__main__":
    exit_process(main())
