"""Command-line options shared by the sweep entry points, and the error policy: one line, exit status 2."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import warnings
from collections.abc import Callable, Sequence

import optuna
from rich.markup import escape

from landscape_core.config import ANALYSES, Preset, get_preset
from landscape_core.data import DataMissingError
from landscape_core.train import resolve_device
from sweeps.runner import SweepOptions, run_sweep
from sweeps.space import SweepSpace
from sweeps.storage import StorageError, StudyConfigMismatch
from tracking.report import output_console
from tracking.store import StoreError

__all__ = ["base_parser", "preset_from_args", "run_cli"]

USER_ERRORS = (ValueError, DataMissingError, StoreError, StorageError, StudyConfigMismatch)
TRAIN_OVERRIDES = ("epochs", "lr", "momentum", "batch_size", "train_size", "test_size", "data_seed", "device")


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """Options every sweep has: protocol (preset and overrides), analyses, and where results go."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument(
        "--preset", default="paper", help="paper (default), quick, smoke, or auto (paper on a GPU, quick on a CPU)"
    )
    protocol.add_argument("--epochs", type=int)
    protocol.add_argument("--lr", type=float, help="learning rate (seeds sweep)")
    protocol.add_argument("--momentum", type=float)
    protocol.add_argument("--batch-size", type=int)
    protocol.add_argument("--train-size", type=int, help="training subset size (default: the preset's)")
    protocol.add_argument("--test-size", type=int, help="test subset size (default: the preset's)")
    protocol.add_argument("--data-seed", type=int, help="seed of the fixed data subsets shared by all trials")
    protocol.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    protocol.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files ($LANDSCAPE_DATA_DIR)")
    protocol.add_argument("--skip", default="", help=f"comma-separated analyses to skip: {','.join(ANALYSES)}")
    where = parser.add_argument_group("where results go")
    where.add_argument("--study-name", help="Optuna study name (default: <sweep>-<preset>)")
    where.add_argument("--experiment", help="MLflow experiment (default: the sweep kind)")
    where.add_argument("--root", default="mlruns", help="local store directory (default ./mlruns)")
    where.add_argument("--tracking-uri", help="MLflow tracking URI, e.g. http://host:5000 (default: sqlite in --root)")
    where.add_argument(
        "--storage", help="Optuna storage URL, e.g. postgresql://user@host/db (default: journal in --root)"
    )
    where.add_argument(
        "--max-pairs", type=int, default=45, help="cap on pairs in the end-of-sweep barrier matrix (45: 10 minima)"
    )
    where.add_argument(
        "--batch-trials", type=int, default=1, help="train this many trials at once as one vmapped ensemble"
    )
    where.add_argument("--workers", type=int, default=1, help="worker processes on this machine (CPU threads split)")
    where.add_argument(
        "--heartbeat", type=int, default=60, help="RDB storages: heartbeat seconds (stale trials retried)"
    )
    return parser


def preset_from_args(args: argparse.Namespace) -> Preset:
    """The named preset with every command-line override applied (validated by the configs)."""
    name = args.preset
    if name == "auto":
        name = "paper" if resolve_device(args.device or "auto").type == "cuda" else "quick"
    preset = get_preset(name)
    overrides = {field: getattr(args, field, None) for field in TRAIN_OVERRIDES}
    preset = preset.replace(**overrides)
    # --skip adds to what the preset already skips (quick skips the spectral density)
    skip = preset.analysis.skip | {s.strip() for s in args.skip.split(",") if s.strip()}
    return dataclasses.replace(preset, analysis=dataclasses.replace(preset.analysis, skip=frozenset(skip)))


def options_from_args(args: argparse.Namespace, space: SweepSpace, preset: Preset) -> SweepOptions:
    if args.heartbeat is not None and args.heartbeat < 1:
        raise ValueError(f"Expected `--heartbeat` >= 1, got {args.heartbeat}")
    if args.batch_trials < 1:
        raise ValueError(f"Expected `--batch-trials` >= 1, got {args.batch_trials}")
    if args.workers < 1:
        raise ValueError(f"Expected `--workers` >= 1, got {args.workers}")
    if args.max_pairs < 0:
        raise ValueError(f"Expected `--max-pairs` >= 0, got {args.max_pairs}")
    return SweepOptions(
        space=space,
        preset=preset,
        study_name=args.study_name or f"{space.kind}-{preset.name}",
        experiment=args.experiment or space.kind,
        root=args.root,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        data_dir=args.data_dir,
        heartbeat=args.heartbeat,
        max_pairs=args.max_pairs,
        workers=args.workers,
        batch_trials=args.batch_trials,
    )


def run_cli(
    build: Callable[[argparse.Namespace], SweepOptions], parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> int:
    """Parse, build the options, run; user errors print one line and return 2, Ctrl-C/SIGTERM return 130/143."""
    console = output_console()
    # torch's forward-mode AD registers its decompositions with torch.jit.script, which warns on first use.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    # Heartbeats and their retry callback are "experimental" in Optuna; that is no news to a user, at every start.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    args = parser.parse_args(argv)
    try:
        options = build(args)
        run_sweep(options, console)
    except USER_ERRORS as error:
        # soft_wrap: one line however narrow the terminal (rich would break it at the console width)
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt as interrupt:
        from sweeps.runner import Terminated

        console.print(
            "[yellow]interrupted:[/] the running trial was recorded as failed (its run KILLED); "
            "rerun the same command to resume the sweep.",
            soft_wrap=True,
        )
        return 143 if isinstance(interrupt, Terminated) else 130
    return 0
