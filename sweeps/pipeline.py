"""One trial: train (landscape_core), measure (landscape_core), log (tracking). Optuna only hands in the trial."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import optuna

from landscape_core.config import Preset
from landscape_core.data import FashionMNIST
from landscape_core.ensemble import train_ensemble
from landscape_core.measure import LambdaMaxTracker, measure
from landscape_core.train import DivergenceError, TrainResult, make_datasets, resolve_device, train
from sweeps.progress import SweepProgress
from sweeps.space import SweepSpace, configs_from_trial, point_key
from tracking.checkpoints import load_run_model
from tracking.runs import flatten_config, start_child
from tracking.store import TrackingStore
from tracking.trial_log import log_epoch, log_measurements, log_training

__all__ = ["NotPlanned", "TrialContext", "TrialDiverged", "lambda_tracker", "make_objective", "run_batch", "run_trial"]

WORKER = f"{socket.gethostname()}:{os.getpid()}"


class TrialDiverged(RuntimeError):
    """The trial's training diverged; it is recorded as failed with the reason and the sweep goes on."""


class NotPlanned(RuntimeError):
    """A worker drew a trial that was not one of the enqueued points (a race with another worker); it is dropped."""


@dataclass
class TrialContext:
    """What every trial of one sweep shares."""

    space: SweepSpace
    preset: Preset
    dataset: FashionMNIST
    store: TrackingStore
    experiment_id: str
    parent_run_id: str
    study_name: str
    progress: SweepProgress | None = None
    reference: dict[str, Any] = field(default_factory=dict)


def claim(trial: optuna.Trial, context: TrialContext) -> Preset:
    """This worker takes the trial: its configs, or NotPlanned when it is not a point of the sweep or a duplicate."""
    if context.space.planned and "point" not in trial.user_attrs:
        raise NotPlanned(f"trial {trial.number} was not enqueued")
    preset = configs_from_trial(trial, context.space, context.preset)
    trial.set_user_attr("worker", WORKER)
    if _already_done(trial, context):
        trial.set_user_attr("duplicate", True)
        raise NotPlanned(f"point {trial.params} already ran in another trial")
    return preset


def make_objective(context: TrialContext):
    """The Optuna objective of a sweep: returns the trial's final test loss."""

    def objective(trial: optuna.Trial) -> float:
        return run_trial(trial, claim(trial, context), context)

    return objective


def run_batch(study: optuna.Study, context: TrialContext, size: int) -> int:
    """Claim up to ``size`` waiting trials, train them as one ensemble (``train_ensemble``: vmapped on CUDA, a loop
    on a CPU), then measure and log each.

    Every trial still gets its own child run and its own Optuna result. Returns how many trials were claimed.
    """
    claimed: list[tuple[optuna.Trial, Preset]] = []
    told: set[int] = set()
    try:
        while len(claimed) < size and study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            trial = study.ask()
            try:
                claimed.append((trial, claim(trial, context)))
            except NotPlanned:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                told.add(trial.number)
        if not claimed:
            return 0
        progress = context.progress
        trackers = [lambda_tracker(preset, context) for _, preset in claimed]
        if progress:
            seeds = ", ".join(str(p.train.seed) for _, p in claimed)
            progress.trial_started(f"ensemble of {len(claimed)} (seeds {seeds})", claimed[0][1].train.epochs)
        outcomes = train_ensemble(
            [preset.train for _, preset in claimed],
            context.dataset,
            on_epoch=lambda member, epoch, model: trackers[member](epoch, model) if trackers[member] else None,
            on_step=(lambda member, *args: progress.step(*args) if member == 0 else None) if progress else None,
        )
        for (trial, preset), outcome, tracker in zip(claimed, outcomes, trackers):
            try:
                value = run_trial(trial, preset, context, trained=outcome, tracker=tracker)
            except TrialDiverged:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, value)
            told.add(trial.number)
    finally:
        for trial, _ in claimed:
            if trial.number not in told:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return len(claimed)


def _already_done(trial: optuna.Trial, context: TrialContext) -> bool:
    """True when another trial of the same point finished, or started running before this one (a duplicate left by
    two workers enqueueing at once, or by a retry)."""
    key = point_key(trial.params)
    me = trial.study._storage.get_trial(trial._trial_id)
    for other in trial.study.get_trials(deepcopy=False):
        # An enqueued trial's point is known before it starts: its params only once its worker has suggested them,
        # too late when two workers pick up copies of one point at the same time.
        point = other.user_attrs.get("point") or other.params
        if other.number == trial.number or "seed" not in point or point_key(point) != key:
            continue
        if other.state == optuna.trial.TrialState.COMPLETE or other.user_attrs.get("failure") == "diverged":
            return True
        if other.state == optuna.trial.TrialState.RUNNING and (other.datetime_start, other.number) < (
            me.datetime_start,
            me.number,
        ):
            return True
    return False


def _reference_model(trial: optuna.Trial, context: TrialContext) -> Any:
    """The study's reference minimum for barriers: the first trial to finish, pinned on the study once chosen
    (None while no trial has finished, e.g. for the reference itself)."""
    study = trial.study
    run_id = study.user_attrs.get("reference_run_id")
    if run_id is None:
        finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        finished = [t for t in finished if "mlflow_run_id" in t.user_attrs]
        if not finished:
            return None
        run_id = min(finished, key=lambda t: t.datetime_complete).user_attrs["mlflow_run_id"]
        study.set_user_attr("reference_run_id", run_id)
    if run_id not in context.reference:
        device = resolve_device(context.preset.train.device)
        context.reference = {run_id: load_run_model(context.store.client(), run_id, context.preset.train.model, device)}
    trial.set_user_attr("reference_run_id", run_id)
    return context.reference[run_id]


def lambda_tracker(preset: Preset, context: TrialContext) -> LambdaMaxTracker | None:
    """The per-epoch lambda_max hook of a trial, unless tracking or the Hessian is skipped."""
    if not (preset.analysis.runs("tracking") and preset.analysis.runs("hessian")):
        return None
    config = preset.train
    train_data, _ = make_datasets(context.dataset, config)
    return LambdaMaxTracker(
        train_data, preset.analysis.hessian, lr=config.lr, momentum=config.momentum, seed=config.data_seed
    )


def run_trial(
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
        run_name=f"trial-{trial.number:03d}-seed{config.seed}-lr{config.lr:.3g}",
        tags={
            "study": context.study_name,
            "trial_number": trial.number,
            "seed": config.seed,
            "lr": config.lr,
            "preset": preset.name,
            "sweep": context.space.kind,
            "worker": WORKER,
        },
    )
    trial.set_user_attr("mlflow_run_id", run.run_id)
    progress = context.progress
    try:
        run.params({"preset": preset.name, **flatten_config(config), **flatten_config(preset.analysis, "analysis.")})
        if progress:
            progress.trial_started(f"trial {trial.number} seed {config.seed} lr {config.lr:.3g}", config.epochs)
        if trained is None:
            result = train(
                config,
                context.dataset,
                on_epoch=tracker,
                on_step=progress.step if progress else None,
                on_metrics=lambda metrics: log_epoch(run, metrics),
            )
        elif isinstance(trained, DivergenceError):
            raise trained
        else:
            result = trained
            for metrics in result.history:
                log_epoch(run, metrics)
        log_training(run, result)
        measurements = measure(
            result.model,
            init_params=result.init_params,
            train_data=result.train_data,
            test_data=result.test_data,
            config=preset.analysis,
            reference=_reference_model(trial, context),
            seed=config.data_seed,
            stage=progress.stage if progress else None,
            v0=tracker.vector if tracker is not None else None,
        )
        log_measurements(run, measurements)
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
