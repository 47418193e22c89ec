"""Command-line options shared by the sweep entry points, validated into ``SweepOptions`` before anything is written.

The error policy is ``landscape_core.cli.run_command``'s: bad input (a ``UsageError``) prints one line and exits 2,
a bug keeps its traceback and exits 1, Ctrl-C / SIGTERM end the running trial cleanly and exit 130 / 143.

Optuna, MLflow and the trial pipeline are imported inside the functions that need them, so that bad input found
early (``--n 0``, an unknown option) is refused without them (torch still comes with the parser: ``--skip``'s help
lists ``landscape_core.config.ANALYSES``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rich.console import Console

from landscape_core import keys
from landscape_core.cli import ArgumentParser, require, run_command
from landscape_core.errors import UsageError
from sweeps.options import SweepOptions
from sweeps.space import SweepSpace
from tracking.plan import AnalysisPlan, SequentialPlan, parse_primary
from tracking.store import check_tracking_uri

if TYPE_CHECKING:
    from landscape_core.config import Preset

__all__ = ["base_parser", "options_from_args", "parse_widths", "preset_from_args", "preset_line", "run_sweep_cli"]

TRAIN_OVERRIDES = (
    "epochs",
    "lr",
    "momentum",
    "batch_size",
    "train_size",
    "test_size",
    "data_seed",
    "device",
    "stop_at_train_loss",
    "init_seed",
    "order_seed",
    "optimizer",
    "sam_rho",
)
#: Seconds per trial (training and every analysis), one worker on a 2-core CPU. Paper: the mean over a 20-seed sweep's
#: trials, measured piece by piece on 2026-12-05 (training 120 s, analysis 387 s, plus the curve's 143 s and the
#: reliability audit's ~181 s on the 10 designated minima; README, "The paper protocol at population scale").
MEASURED_TRIAL_SECONDS = {("paper", "cpu"): 680.0, ("quick", "cpu"): 45.0, ("smoke", "cpu"): 13.0}
#: Options that go into SweepOptions as they are.
PASSED_THROUGH = ("root", "storage", "tracking_uri", "data_dir", "heartbeat", "max_pairs", "workers", "batch_trials")
#: The options of ``--until-decided``'s design, in ``plan_from_args``' order.
DESIGN_OPTIONS = ("--max-n", "--first-look", "--look-step", "--planned-rho")
INTERRUPTED = "the running trial was recorded as failed (its run KILLED); rerun the same command to resume the sweep."


def base_parser(prog: str, description: str, *, grid: bool = False) -> ArgumentParser:
    """Options every sweep has: protocol (preset and overrides), analyses, and where results go. With ``grid``, the
    options of ``GRID_FIELDS`` take comma-separated lists (``sweeps.grid``): several values make an axis."""
    from landscape_core.config import ANALYSES  # imports torch: only the parser of a sweep needs it, for --skip

    parser = ArgumentParser(prog=prog, description=description)
    protocol = parser.add_argument_group("protocol")
    axis = {"type": str, "help": "one value, or a comma-separated list: an axis of the grid"}
    protocol.add_argument(
        "--preset",
        default="auto",
        help="auto (default: paper on a GPU, quick on a CPU), paper (the paper's protocol), quick or smoke",
    )
    protocol.add_argument(
        "--epochs", **(axis if grid else {"type": int, "help": "epochs (with --stop-at-train-loss: the cap)"})
    )
    protocol.add_argument(
        "--stop-at-train-loss",
        type=float,
        help="stop at the first epoch whose train cross-entropy is <= this (e.g. 0.1), --epochs being the cap; a "
        "trial that never reaches it is recorded as such (train/reached_stop_loss = 0)",
    )
    protocol.add_argument("--lr", **(axis if grid else {"type": float, "help": "learning rate (seeds sweep)"}))
    protocol.add_argument("--momentum", **(axis if grid else {"type": float}))
    protocol.add_argument("--batch-size", **(axis if grid else {"type": int}))
    protocol.add_argument(
        "--train-size", **(axis if grid else {"type": int, "help": "training subset size (default: the preset's)"})
    )
    protocol.add_argument("--test-size", type=int, help="test subset size (default: the preset's)")
    protocol.add_argument("--data-seed", type=int, help="seed of the fixed data subsets shared by all trials")
    protocol.add_argument(
        "--init-seed",
        type=str if grid else int,
        help="draw every trial's initial weights from this seed (default: each trial's own seed): a seeds sweep then "
        "differs only in its batch order" + ("; a list makes an axis" if grid else ""),
    )
    protocol.add_argument(
        "--order-seed",
        type=str if grid else int,
        help="draw every trial's batch order from this seed (default: each trial's seed)"
        + ("; a list makes an axis" if grid else ""),
    )
    protocol.add_argument(
        "--optimizer",
        type=str,
        help="sgd (default: SGD with momentum, the paper's), gd (full batch, one step per epoch), adam, sam"
        + ("; a list (sgd,gd,sam) makes an axis" if grid else ""),
    )
    protocol.add_argument("--sam-rho", type=float, help="sam: the radius of the ascent step (default 0.05)")
    protocol.add_argument(
        "--track-every",
        type=int,
        help="track lambda_max every K optimizer steps during training (the edge-of-stability figure), besides "
        "once per epoch",
    )
    protocol.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    protocol.add_argument(
        "--width",
        help="width multiplier of the model: one value (e.g. 2), or a comma-separated list (0.5,1,2) that makes "
        "width an axis of the sweep: every point runs at each width",
    )
    protocol.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files ($LANDSCAPE_DATA_DIR)")
    protocol.add_argument("--skip", default="", help=f"comma-separated analyses to skip: {','.join(ANALYSES)}")
    protocol.add_argument(
        "--retest-trials",
        type=int,
        help="the reliability audit: re-measure the first K minima on independent images (default: the preset's, "
        "10; smoke 0)",
    )
    protocol.add_argument(
        "--curve-trials",
        help="the trained curve to the reference minimum on K designated minima, or 'all' (default: the preset's, "
        "paper 10, others all)",
    )
    plan = parser.add_argument_group("analysis plan (declared on the parent run before the first trial)")
    plan.add_argument(
        "--primary",
        help="primary hypotheses, measure[:target],... (default: lambda_max:test_loss,adaptive_linf:test_loss); each "
        "is tested raw and given train loss, Holm over those tests; every other row of the report is exploratory",
    )
    plan.add_argument(
        "--until-decided",
        action="store_true",
        help="grow the population until every primary hypothesis is decided (group-sequential: looks every "
        "--look-step runs from --first-look, O'Brien-Fleming alpha spending, a futility bound at --planned-rho), "
        "at most --max-n runs",
    )
    plan.add_argument(
        "--max-n",
        type=int,
        help="--until-decided: the cap on the population (default: the smallest that reaches 80%% power at "
        "--planned-rho over the primary tests, 150 for the default plan)",
    )
    plan.add_argument("--first-look", type=int, help="--until-decided: the first look (default 20)")
    plan.add_argument("--look-step", type=int, help="--until-decided: runs between looks (default 10)")
    plan.add_argument(
        "--planned-rho", type=float, help="--until-decided: the effect the futility bound is planned at (default 0.3)"
    )
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


def parse_widths(text: str | None) -> tuple[float, ...] | None:
    """``--width``: None when absent, else the positive widths it lists (``"0.5,1,2"`` -> ``(0.5, 1.0, 2.0)``)."""
    if text is None:
        return None
    try:
        widths = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"Expected `--width` as numbers separated by commas, got {text!r}") from None
    if not all(0 < w < float("inf") for w in widths) or len(set(widths)) != len(widths):
        raise UsageError(f"Expected `--width` values > 0 and distinct, got {text!r}")
    return widths


def parse_curve_trials(text: str) -> int | None:
    """``--curve-trials``: ``all`` (None) or a count of designated minima (``CurveConfig.trials`` checks it)."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"Expected `--curve-trials` as a whole number or 'all', got {text!r}") from None


def preset_name(args: argparse.Namespace) -> tuple[str, str]:
    """The preset ``--preset`` names, and why: ``auto`` is ``paper`` on a GPU and ``quick`` on a CPU."""
    from landscape_core.devices import resolve_device

    if args.preset != "auto":
        return args.preset, "as asked"
    if resolve_device(args.device or "auto").type == "cuda":
        return "paper", "auto: a GPU is available, so the paper's protocol"
    return "quick", "auto: no GPU, so the CPU-sized protocol; --preset paper runs the paper's"


def preset_line(args: argparse.Namespace, n_trials: int) -> str:
    """The first line a sweep prints: the preset it runs, why, and how long that takes where it was measured."""
    from landscape_core.devices import resolve_device

    name, why = preset_name(args)
    device = resolve_device(args.device or "auto").type
    seconds = MEASURED_TRIAL_SECONDS.get((name, device))
    if seconds is None:
        expected = "no time measured for it on this device yet"
    else:
        total = seconds * n_trials
        expected = f"about {_duration(total)} for {n_trials} trials (~{_duration(seconds)} each on a 2-core CPU)"
    return f"Preset {name} ({why}): {expected}."


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def preset_from_args(args: argparse.Namespace) -> Preset:
    """The named preset with every command-line override applied (validated by the configs). A single ``--width``
    value is an override too; a list is an axis (``sweep_widths``)."""
    from landscape_core.config import get_preset

    preset = get_preset(preset_name(args)[0])
    overrides = {field: getattr(args, field, None) for field in TRAIN_OVERRIDES}
    widths = parse_widths(getattr(args, "width", None))
    if widths is not None and len(widths) == 1:
        overrides["width"] = widths[0]
    preset = preset.replace(**overrides)
    # --skip adds to what the preset already skips (quick skips the spectral density)
    skip = preset.analysis.skip | {s.strip() for s in args.skip.split(",") if s.strip()}
    analysis = dataclasses.replace(preset.analysis, skip=frozenset(skip))
    if getattr(args, "retest_trials", None) is not None:
        analysis = dataclasses.replace(analysis, retest_trials=args.retest_trials)
    if getattr(args, "curve_trials", None) is not None:
        curve = dataclasses.replace(analysis.curve, trials=parse_curve_trials(args.curve_trials))
        analysis = dataclasses.replace(analysis, curve=curve)
    if getattr(args, "track_every", None) is not None:
        analysis = dataclasses.replace(
            analysis, hessian=dataclasses.replace(analysis.hessian, track_every=args.track_every)
        )
    return dataclasses.replace(preset, analysis=analysis)


def plan_from_args(args: argparse.Namespace) -> AnalysisPlan:
    """The analysis plan the command declares: ``--primary`` (or the default), and the sequential design of
    ``--until-decided``. The options of the design without ``--until-decided`` are bad input."""
    hypotheses = parse_primary(args.primary)
    design = {"max_n": args.max_n, "first": args.first_look, "step": args.look_step, "planned_rho": args.planned_rho}
    if not args.until_decided:
        for option, value in zip(DESIGN_OPTIONS, design.values(), strict=True):
            require(value is None, option, "given only with --until-decided", value)
        return AnalysisPlan(hypotheses=hypotheses)
    chosen = {name: value for name, value in design.items() if value is not None}
    if args.max_n is None:  # the smallest cap that reaches the planned power at the planned rho
        from tracking.sequential import make_design

        default = SequentialPlan(**{**chosen, "max_n": 10**6})
        chosen["max_n"] = make_design(
            default.first,
            default.step,
            planned_rho=default.planned_rho,
            power=default.power,
            family_size=2 * len(hypotheses),
            covariates=1,
        ).looks[-1]
    return AnalysisPlan(hypotheses=hypotheses, sequential=SequentialPlan(**chosen))


def sweep_widths(args: argparse.Namespace) -> tuple[float, ...] | None:
    """The width axis of the sweep: the ``--width`` list when it has more than one value, else None."""
    widths = parse_widths(args.width)
    return widths if widths is not None and len(widths) > 1 else None


def options_from_args(args: argparse.Namespace, space: SweepSpace, preset: Preset) -> SweepOptions:
    """The sweep's options from the shared arguments; bad values raise ``UsageError``.

    Everything a user can mistype is checked here, before any store exists: numbers, names, the device (one this
    machine has), the storage URL and the tracking URI (known schemes). What needs the data or a server (a
    ``--train-size`` beyond the data set, an unreachable database) is checked by ``open_sweep``, still before
    anything is written."""
    from landscape_core.devices import resolve_device
    from sweeps.storage import check_storage_url  # imports Optuna

    require(args.heartbeat is None or args.heartbeat >= 1, "--heartbeat", ">= 1", args.heartbeat)
    require(args.batch_trials >= 1, "--batch-trials", ">= 1", args.batch_trials)
    require(args.workers >= 1, "--workers", ">= 1", args.workers)
    require(args.max_pairs >= 0, "--max-pairs", ">= 0", args.max_pairs)
    for option, value in (("--study-name", args.study_name), ("--experiment", args.experiment)):
        fine = value is None or value.strip() == value != ""
        require(fine, option, "a non-empty name without surrounding spaces", value)
    require(args.root.strip() != "", "--root", "a directory", args.root)
    require(args.data_dir is None or args.data_dir.strip() != "", "--data-dir", "a directory", args.data_dir)
    if args.batch_trials > 1:  # an ensemble trains SGD, with no per-step hook
        optimizers = {preset.train.optimizer, *dict(space.grid).get("optimizer", ())}
        require(
            optimizers == {"sgd"},
            "--optimizer",
            "sgd with --batch-trials > 1 (ensembles train SGD only)",
            args.optimizer,
        )
        every = preset.analysis.hessian.track_every
        require(every is None, "--track-every", "not given with --batch-trials > 1", every)
    resolve_device(preset.train.device)
    check_storage_url(args.storage)
    check_tracking_uri(args.tracking_uri)
    plan = plan_from_args(args)
    if plan.sequential is not None:  # a look needs every primary measure on every run
        for h in plan.hypotheses:
            analysis = keys.analysis_of(h.measure)
            needed = analysis is None or preset.analysis.runs(analysis)
            require(needed, "--skip", f"to keep {analysis!r}, which primary measure {h.measure} needs", args.skip)
    return SweepOptions(
        space=space,
        preset=preset,
        plan=plan,
        study_name=args.study_name or f"{space.kind}-{preset.name}",
        experiment=args.experiment or space.kind,
        **{name: getattr(args, name) for name in PASSED_THROUGH},
    )


def run_sweep_cli(
    build: Callable[[argparse.Namespace], SweepOptions], parser: ArgumentParser, argv: Sequence[str] | None
) -> int:
    """Parse, build the options (``build`` validates them), run the sweep; exit statuses as ``run_command``'s."""
    # torch's forward-mode AD registers its decompositions with torch.jit.script, which warns on first use.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

    def command(args: argparse.Namespace, console: Console) -> int:
        options = build(args)
        import optuna  # once the options are valid: bad input is refused before Optuna and MLflow are imported

        from sweeps.runner import run_sweep

        # After MLflow's import, which sets its logger to INFO: "Creating initial MLflow database tables...", and
        # the system metrics monitor's start and stop at every trial, are no news to a user.
        logging.getLogger("mlflow").setLevel(logging.WARNING)

        # Heartbeats and their retry callback are "experimental" in Optuna; that is no news to a user, at every start.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        run_sweep(options, console, headline=preset_line(args, options.space.n_trials))
        return 0

    return run_command(parser, argv, command, interrupted=INTERRUPTED)
