"""One trial: train (landscape_core), measure (landscape_core), log (tracking). Optuna only hands in the trial.

``TrialContext`` is what every trial of a sweep shares; it is immutable and built by keyword. The reference minimum
of the barriers is trained once per study and loaded once per worker by ``sweeps.reference.ReferenceModels``, the
one cache a sweep keeps. One trial per sweep (its first point) also runs the invariance audit on its minimum and
logs it to the parent run; ``AnalysisConfig.retest_trials`` designated minima also run the reliability audit, a second
measurement of their minimum on independent images, logged as ``retest/<measure>`` on their own run
(``tracking.reliability`` turns those into each measure's test-retest reliability), and ``CurveConfig.trials``
designated minima (all, when None) get the trained curve to the reference (``trial_analysis``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState
from torch import nn

from landscape_core import connectivity, keys
from landscape_core.config import AnalysisConfig, Preset, TrainConfig
from landscape_core.devices import resolve_device
from landscape_core.ensemble import train_ensemble
from landscape_core.instability import train_branches
from landscape_core.measure import LambdaMaxTracker, audit_invariance, audit_key, measure, retest
from landscape_core.splits import TrialData, subsets_used
from landscape_core.train import DivergenceError, TrainResult, UpdateCallback, train
from landscape_core.trajectory import Checkpoints
from sweeps.claims import OWNER, this_worker
from sweeps.progress import SweepProgress
from sweeps.reference import ReferenceModels
from sweeps.space import SweepSpace, configs_from_trial, point_key
from tracking.invariance import find_audit, log_invariance
from tracking.provenance import log_datasets, provenance_tags, system_metrics
from tracking.reliability import RETEST_SECONDS, retest_key
from tracking.runs import RunLogger, flatten_config, start_child
from tracking.store import TrackingStore
from tracking.trial_log import (
    final_metrics,
    log_epoch,
    log_measurements,
    log_model,
    log_sharpness_steps,
    log_training,
)

__all__ = [
    "NotPlanned",
    "TrialContext",
    "TrialDiverged",
    "lambda_tracker",
    "make_objective",
    "run_batch",
    "run_trial",
    "trial_analysis",
]

WORKER = f"{socket.gethostname()}:{os.getpid()}"


class TrialDiverged(RuntimeError):
    """The trial's training diverged; it is recorded as failed with the reason and the sweep goes on."""


class NotPlanned(RuntimeError):
    """A worker drew a trial that was not one of the enqueued points (a race with another worker); it is dropped."""


@dataclass(frozen=True, kw_only=True)
class TrialContext:
    """What every trial of one sweep shares: the population, the protocol, the data, where runs go."""

    space: SweepSpace
    preset: Preset
    data: TrialData  # the preset's splits (the reference minimum's, the barrier matrix's)
    data_for: Callable[[TrainConfig], TrialData]  # a trial's splits (they differ on a train-size axis)
    store: TrackingStore
    experiment_id: str
    parent_run_id: str
    study_name: str
    progress: SweepProgress | None = None
    references: ReferenceModels = field(repr=False)


def claim(study: optuna.Study, trial: optuna.Trial, context: TrialContext) -> Preset:
    """This worker takes the trial: its configs, or NotPlanned when it is not a point of the sweep or a duplicate.

    Its owner (``worker``) is already on it: the storage wrote it with the claim, so that a worker killed in between
    leaves no trial RUNNING without one (``sweeps.claims``)."""
    if context.space.planned and "point" not in trial.user_attrs:
        raise NotPlanned(f"trial {trial.number} was not enqueued")
    preset = configs_from_trial(trial, context.space, context.preset)
    if OWNER not in trial.user_attrs:  # the sweep's storages record it with the claim itself (sweeps.claims)
        trial.set_user_attr(OWNER, this_worker())
    if _already_done(study, trial):
        trial.set_user_attr("duplicate", True)
        raise NotPlanned(f"point {trial.params} already ran in another trial")
    return preset


def make_objective(study: optuna.Study, context: TrialContext) -> Callable[[optuna.Trial], float]:
    """The Optuna objective of a sweep on ``study``: returns the trial's final test loss."""

    def objective(trial: optuna.Trial) -> float:
        return run_trial(study, trial, claim(study, trial, context), context)

    return objective


def _protocol(preset: Preset) -> tuple:
    """What members of one ensemble must share: every training field but the seed and the lr."""
    fields = flatten_config(preset.train)
    return tuple(sorted((k, v) for k, v in fields.items() if k not in ("seed", "lr")))


def run_batch(study: optuna.Study, context: TrialContext, size: int) -> int:
    """Claim up to ``size`` waiting trials, train those of one protocol as one ensemble (``train_ensemble``: vmapped
    on CUDA, a loop on a CPU), then measure and log each.

    Every trial still gets its own child run and its own Optuna result. Trials of different widths are trained as
    separate ensembles. Returns how many trials were claimed.
    """
    claimed: list[tuple[optuna.Trial, Preset]] = []
    told: set[int] = set()
    try:
        while len(claimed) < size and study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial = study.ask()
            try:
                claimed.append((trial, claim(study, trial, context)))
            except NotPlanned:
                study.tell(trial, state=TrialState.FAIL)
                told.add(trial.number)
        groups: dict[tuple, list[tuple[optuna.Trial, Preset]]] = {}
        for trial, preset in claimed:
            groups.setdefault(_protocol(preset), []).append((trial, preset))
        for group in groups.values():
            _train_and_log_group(study, context, group, told)
    finally:
        for trial, _ in claimed:
            if trial.number not in told:
                study.tell(trial, state=TrialState.FAIL)
    return len(claimed)


def _train_and_log_group(
    study: optuna.Study, context: TrialContext, group: list[tuple[optuna.Trial, Preset]], told: set[int]
) -> None:
    progress = context.progress
    trackers = [lambda_tracker(preset, context) for _, preset in group]
    if progress:
        seeds = ", ".join(str(p.train.seed) for _, p in group)
        progress.trial_started(f"ensemble of {len(group)} (seeds {seeds})", group[0][1].train.epochs)
    outcomes = train_ensemble(
        [preset.train for _, preset in group],
        context.data_for(group[0][1].train),
        on_epoch=lambda member, epoch, model: trackers[member](epoch, model) if trackers[member] else None,
        on_step=(lambda member, *args: progress.step(*args) if member == 0 else None) if progress else None,
    )
    for (trial, preset), outcome, tracker in zip(group, outcomes, trackers):
        try:
            value = run_trial(study, trial, preset, context, trained=outcome, tracker=tracker)
        except TrialDiverged:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
        told.add(trial.number)


def _already_done(study: optuna.Study, trial: optuna.Trial) -> bool:
    """True when another trial of the same point finished, or started running before this one (a duplicate left by
    two workers enqueueing at once, or by a retry)."""
    key = point_key(trial.params)
    mine = (trial.datetime_start, trial.number)
    for other in study.get_trials(deepcopy=False):
        # An enqueued trial's point is known before it starts: its params only once its worker has suggested them,
        # too late when two workers pick up copies of one point at the same time.
        point = other.user_attrs.get("point") or other.params
        if other.number == trial.number or "seed" not in point or point_key(point) != key:
            continue
        if other.state == TrialState.COMPLETE or other.user_attrs.get("failure") == "diverged":
            return True
        if other.state == TrialState.RUNNING and (other.datetime_start, other.number) < mine:
            return True
    return False


def _reference(trial: optuna.Trial, preset: Preset, context: TrialContext) -> nn.Module | None:
    """The study's reference minimum at the trial's width (``sweeps.reference``), recorded on the trial; None when
    the barriers are skipped."""
    if not preset.analysis.runs("connectivity"):
        return None
    run_id, model = context.references.get(preset.train.width)
    trial.set_user_attr("reference_run_id", run_id)
    return model


def _audit_invariance(
    preset: Preset,
    context: TrialContext,
    result: TrainResult,
    reference: nn.Module | None,
    original: dict[str, float],
    run_id: str,
) -> None:
    """The sweep's invariance audit on the parent run: an earlier sweep's with the same key (same measure code and
    protocol) when the store has one, else measured on this trial's minimum."""
    key = audit_key(preset.train, preset.analysis)
    parent = RunLogger(context.store.client(), context.parent_run_id)
    found = find_audit(context.store, key)
    if found is not None:
        audit, source, origin = found
        log_invariance(parent, audit, source=source, key=key, reused_from=origin)
        if context.progress:
            context.progress.note(f"invariance audit: reused from parent run {origin} (same code and protocol)")
        return
    audit = audit_invariance(
        result.model,
        init_params=result.init_params,
        data=result.data,
        config=preset.analysis,
        reference=reference,
        original=original,
        stage=context.progress.stage if context.progress else None,
    )
    log_invariance(parent, audit, source=run_id, key=key)


def _is_audited(trial: optuna.Trial, context: TrialContext) -> bool:
    """The one trial per sweep whose minimum gets the invariance audit: the first point of the sweep (trial 0 of an
    adaptive one), whichever worker runs it."""
    space = context.space
    if space.planned:
        return point_key(trial.params) == point_key(space.points()[0])
    return trial.number == 0


def _is_designated(trial: optuna.Trial, k: int, space: SweepSpace) -> bool:
    """Whether this trial's minimum is one of K designated minima of the sweep (the reliability audit's, the trained
    curve's): the first K of a seeds sweep (its points differ only by seed, and an ``--until-decided`` sweep has them
    all by its first look); K spread evenly over the points of an lr or grid sweep, so that they span its
    hyperparameters (the first K would all share one lr, and a narrow spread between minima biases a reliability
    down); trials 0..K-1 of an adaptive sweep."""
    if k == 0:
        return False
    if not space.planned:
        return trial.number < k
    points = space.points()
    if space.kind == "seeds" or k >= len(points) or k == 1:
        chosen = points[:k]
    else:
        chosen = [points[round(i * (len(points) - 1) / (k - 1))] for i in range(k)]
    return point_key(trial.params) in {point_key(p) for p in chosen}


def _is_retested(trial: optuna.Trial, preset: Preset, context: TrialContext) -> bool:
    """The reliability audit's minima: ``retest_trials`` designated minima (``_is_designated``)."""
    k = preset.analysis.retest_trials
    return preset.analysis.runs("reliability") and _is_designated(trial, k, context.space)


def trial_analysis(trial: optuna.Trial, preset: Preset, space: SweepSpace) -> AnalysisConfig:
    """The analyses this trial's minimum gets: the preset's, less the trained curve when ``CurveConfig.trials``
    designates other minima (``_is_designated``)."""
    config = preset.analysis
    k = config.curve.trials
    if k is None or not config.runs("curve") or _is_designated(trial, k, space):
        return config
    return dataclasses.replace(config, skip=frozenset(config.skip) | {"curve"})


def lambda_tracker(preset: Preset, context: TrialContext) -> LambdaMaxTracker | None:
    """The per-epoch lambda_max hook of a trial, unless tracking or the Hessian is skipped."""
    if not (preset.analysis.runs("tracking") and preset.analysis.runs("hessian")):
        return None
    config = preset.train
    data = context.data_for(config)
    return LambdaMaxTracker(data, preset.analysis.hessian, threshold=config.stability_threshold)


def trajectory_checkpoints(preset: Preset) -> Checkpoints | None:
    """The trajectory's kept weights, unless the trajectory is skipped: between ``TrajectoryConfig.checkpoints``
    and twice that, evenly spaced over however many steps the training takes (a stop rule may end it early), the
    initial weights included."""
    if not preset.analysis.runs("trajectory"):
        return None
    return Checkpoints.along_training(preset.analysis.trajectory.checkpoints)


def _updates(tracker: LambdaMaxTracker | None, checkpoints: Checkpoints | None) -> UpdateCallback | None:
    """``train``'s per-step hook: the tracker's (when it tracks every K steps) and the checkpoints'."""
    per_step = tracker.update if tracker is not None and tracker.config.track_every else None
    hooks = [hook for hook in (per_step, checkpoints) if hook is not None]
    if not hooks:
        return None

    def update(step: int, model: nn.Module) -> None:
        for hook in hooks:
            hook(step, model)

    return update


def _run_tags(trial: optuna.Trial, preset: Preset, context: TrialContext) -> dict[str, object]:
    config = preset.train
    tags: dict[str, object] = {
        "study": context.study_name,
        "trial_number": trial.number,
        "seed": config.seed,
        "lr": config.lr,
        "preset": preset.name,
        "sweep": context.space.kind,
        "worker": WORKER,
        **provenance_tags(str(resolve_device(config.device))),
    }
    if context.space.widths is not None:
        tags["width"] = config.width
    for name, _ in context.space.grid:
        tags[name] = getattr(config, name)
    if context.space.spawn_epochs is not None:
        tags["spawn_epoch"] = trial.params["spawn_epoch"]
    return tags


def _run_name(trial: optuna.Trial, preset: Preset, context: TrialContext) -> str:
    config = preset.train
    width = f"-w{config.width:g}" if context.space.widths is not None else ""
    grid = "".join(f"-{name}{_label(getattr(config, name))}" for name, _ in context.space.grid if name != "lr")
    spawn = f"-spawn{trial.params['spawn_epoch']}" if context.space.spawn_epochs is not None else ""
    return f"trial-{trial.number:03d}-seed{config.seed}-lr{config.lr:.3g}{grid}{width}{spawn}"


def _label(value: float | int | str) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def _train_measure_log(
    study: optuna.Study,
    trial: optuna.Trial,
    preset: Preset,
    context: TrialContext,
    run: RunLogger,
    trained: TrainResult | DivergenceError | None,
    tracker: LambdaMaxTracker | None,
) -> TrainResult:
    """The body of a trial inside its run: what it trains on, the training (or the ensemble's outcome), the
    measurements, and the trained network as a LoggedModel linked to the final metrics."""
    config, progress = preset.train, context.progress
    run.params({"preset": preset.name, **flatten_config(config), **flatten_config(preset.analysis, "analysis.")})
    log_datasets(run, context.data_for(config), subsets_used(preset.analysis))
    if progress:
        progress.trial_started(f"trial {trial.number} seed {config.seed} lr {config.lr:.3g}", config.epochs)
    checkpoints = None
    if trained is None:
        checkpoints = trajectory_checkpoints(preset)
        result = train(
            config,
            context.data_for(config),
            on_epoch=tracker,
            on_step=progress.step if progress else None,
            on_metrics=lambda metrics: log_epoch(run, metrics),
            on_update=_updates(tracker, checkpoints),
        )
        if checkpoints is not None:  # the path ends at the minimum, whichever step the thinning kept last
            checkpoints.add(result.steps, result.model)
    elif isinstance(trained, DivergenceError):
        raise trained
    else:
        result = trained
        for metrics in result.history:
            log_epoch(run, metrics)
    log_training(run, result, config)
    if tracker is not None and tracker.steps:
        log_sharpness_steps(run, tracker.steps, tracker.threshold)
    reference = _reference(trial, preset, context)
    stage = progress.stage if progress else None
    measurements = measure(
        result.model,
        init_params=result.init_params,
        data=result.data,
        config=trial_analysis(trial, preset, context.space),
        reference=reference,
        stage=stage,
        v0=tracker.vector if tracker is not None else None,
        trajectory=checkpoints,
    )
    log_measurements(run, measurements)
    if preset.analysis.runs("invariance") and _is_audited(trial, context):
        _audit_invariance(preset, context, result, reference, measurements.scalars, run.run_id)
    if _is_retested(trial, preset, context):
        start = time.perf_counter()
        again = retest(
            result.model, init_params=result.init_params, data=result.data, config=preset.analysis, stage=stage
        )
        run.metrics(
            {retest_key(key): value for key, value in again.items()} | {RETEST_SECONDS: time.perf_counter() - start}
        )
    if progress:
        progress.stage("logging the model")
    model_id = log_model(run, result.model, result.data.train[0][:2], context.store.tracking_uri)
    trial.set_user_attr("model_uri", f"models:/{model_id}")
    return result


def _train_branches_log(trial: optuna.Trial, preset: Preset, context: TrialContext, run: RunLogger) -> TrainResult:
    """The body of an instability trial (``sweeps.spawn``): the trunk to the trial's spawn epoch, two branches in
    different batch orders to the end (``landscape_core.instability``), and the barriers on the line between the
    branches (``keys.instability``), on the barrier train subset and the whole test split, raw and weight-matched.
    Branch A's epochs and final metrics are the run's; branch B's final test metrics are ``branch_b/...``."""
    config, progress = preset.train, context.progress
    spawn_epoch = int(trial.params["spawn_epoch"])
    data = context.data_for(config)
    run.params({"preset": preset.name, "spawn_epoch": spawn_epoch, **flatten_config(config)})
    if progress:
        progress.trial_started(f"trial {trial.number} pair {config.seed} spawn epoch {spawn_epoch}", config.epochs)
    branches = train_branches(
        config,
        data,
        spawn_epoch,
        on_epoch=(lambda part, epoch: progress.stage(f"{part}, epoch {epoch}")) if progress else None,
    )
    for metrics in branches.a.history:
        log_epoch(run, metrics)
    run.metrics(
        final_metrics(branches.a)
        | {"branch_b/test_loss": branches.b.final.test_loss, "branch_b/test_acc": branches.b.final.test_acc}
    )
    k = preset.analysis.connectivity
    if progress:
        progress.stage("barrier between the branches")
    aligned = (
        connectivity.align(branches.a.model, branches.b.model, seed=data.direction_seed("probes")) if k.align else None
    )
    sets = {"train": data.subset("barrier_train", k.train_subset), "test": data.test}
    results = connectivity.barriers_between(
        branches.a.model, branches.b.model, sets, points=k.points, aligned_b=aligned
    )
    paths = {}
    for (split, is_aligned), (path, barrier) in results.items():
        run.metrics(
            {
                keys.instability(split, "loss", is_aligned): barrier.loss_barrier,
                keys.instability(split, "error", is_aligned): barrier.error_barrier,
            }
        )
        paths[f"{split}{'_aligned' if is_aligned else ''}"] = {**path.to_dict(), **barrier.to_dict()}
    run.json(paths, "instability_paths")
    return branches.a


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    preset: Preset,
    context: TrialContext,
    trained: TrainResult | DivergenceError | None = None,
    tracker: LambdaMaxTracker | None = None,
) -> float:
    """Train, measure and log one trial into its own child run; the run ends FINISHED, FAILED or KILLED.

    ``trained``: the outcome of this trial's training when it already ran as a member of a batched ensemble (its
    epochs are then logged afterwards), with ``tracker`` the lambda_max hook that followed it; None trains here.
    The tracker's last eigenvector warm-starts the final lambda_max (fewer HVPs: see ``measure``).
    """
    config = preset.train
    if trained is None:
        tracker = lambda_tracker(preset, context)
    run = start_child(
        context.store,
        context.experiment_id,
        context.parent_run_id,
        run_name=_run_name(trial, preset, context),
        tags=_run_tags(trial, preset, context),
    )
    trial.set_user_attr("mlflow_run_id", run.run_id)
    progress = context.progress
    try:
        with system_metrics(run, context.store.tracking_uri):
            if context.space.spawn_epochs is not None:
                result = _train_branches_log(trial, preset, context, run)
            else:
                result = _train_measure_log(study, trial, preset, context, run, trained, tracker)
    except DivergenceError as error:
        run.tags({"failure": "diverged", "failure_reason": str(error), "failure_epoch": error.epoch})
        run.finish("FAILED")
        trial.set_user_attr("failure", "diverged")
        trial.set_user_attr("failure_reason", str(error))
        if progress:
            progress.note(f"[red]trial {trial.number} (seed {config.seed}, lr {config.lr:.3g}) {error}[/]")
        raise TrialDiverged(str(error)) from error
    except BaseException as error:
        run.tags({"failure": type(error).__name__, "failure_reason": str(error)[:500]})
        run.finish("KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED")
        raise
    run.finish("FINISHED")
    final = result.final
    trial.set_user_attr("test_acc", final.test_acc)
    trial.set_user_attr("train_loss", final.train_loss)
    trial.set_user_attr("gap_loss", final.test_loss - final.train_loss)
    return final.test_loss
