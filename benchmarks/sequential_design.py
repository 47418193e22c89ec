"""``python -m benchmarks.sequential_design [--sequences N] [--seed S]``: what the group-sequential design saves.

The default design (looks at 20, 30, ...; futility and power planned at rho = 0.3, 80%; a family of 4 primary
hypotheses, sized at the Bonferroni level 0.025 / 4 one-sided) is simulated on real Spearman data for a true rho of
0, 0.3, 0.5 and 0.7 in all four hypotheses (Holm recycling between them). Each row: the rejection rate and the early
futility rate (mean over the 4 hypotheses), the expected population size at the stop against the cap, and the fixed
design's n for the same power at the same level (:func:`tracking.sequential.fixed_n`): the one it would run at the
planned effect (n fixed) and the one matching the sequential design's simulated power at that rho; the saving is
``1 - E[n] / n fixed``. Nothing is timed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from landscape_core.cli import ArgumentParser, output_console, require, run_command
from tracking.sequential import fixed_n, make_design, simulate

__all__ = ["RHOS", "main", "rows"]

RHOS = (0.0, 0.3, 0.5, 0.7)
FAMILY = 4


def rows(sequences: int = 2000, seed: int = 0) -> list[dict[str, float | int | None]]:
    """One row per true rho: rates, E[n] (and its Monte Carlo SE), the cap and the fixed designs' n."""
    design = make_design(family_size=FAMILY)
    level = design.alpha_one / FAMILY
    planned = fixed_n(design.planned_rho, level, design.power)
    out: list[dict[str, float | int | None]] = []
    for rho in RHOS:
        result = simulate(design, rho, FAMILY, sequences=sequences, seed=seed)
        power = float(result.rejection_rate.mean())
        same_power = fixed_n(rho, level, power) if rho > 0 and level < power < 1 else None
        out.append(
            {
                "rho": rho,
                "reject": power,
                "futility": float(result.futility_rate.mean()),
                "fwer": result.fwer,
                "mean_n": result.mean_n,
                "mean_n_se": result.mean_n_se,
                "cap": design.looks[-1],
                "fixed_planned": planned,
                "fixed_same_power": same_power,
                "saving": 1 - result.mean_n / planned,
            }
        )
    return out


def render(table_rows: list[dict[str, float | int | None]], title: str) -> Table:
    table = Table(title=title)
    for column in (
        "rho",
        "reject",
        "futility <cap",
        "FWER",
        "E\\[n]",
        "cap",
        "n fixed",
        "n fixed same power",
        "saving",
    ):
        table.add_column(column, justify="right")
    for row in table_rows:
        fwer = "-" if row["rho"] else f"{row['fwer']:.4f}"
        same = "-" if row["fixed_same_power"] is None else str(row["fixed_same_power"])
        table.add_row(
            f"{row['rho']:.1f}",
            f"{row['reject']:.4f}",
            f"{row['futility']:.4f}",
            fwer,
            f"{row['mean_n']:.1f} ± {row['mean_n_se']:.1f}",
            str(row["cap"]),
            str(row["fixed_planned"]),
            same,
            f"{row['saving']:.0%}",
        )
    return table


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.sequential_design", description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=2000, help="simulated sweeps per row (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="numpy seed of the simulation (default 0)")
    return p


def _run(args: argparse.Namespace, console: Console) -> int:
    require(args.sequences >= 2, "--sequences", ">= 2", args.sequences)
    design = make_design(family_size=FAMILY)
    title = (
        f"group-sequential design, looks {design.looks[0]}..{design.looks[-1]} step 10, family of {FAMILY} "
        f"(Holm), one-sided {design.alpha_one}, planned rho {design.planned_rho}, power {design.power}, "
        f"{args.sequences} sweeps"
    )
    console.print(render(rows(args.sequences, args.seed), title))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table; bad input exits 2 with one line."""
    return run_command(parser(), argv, _run, console=output_console())


if __name__ == "__main__":
    raise SystemExit(main())
