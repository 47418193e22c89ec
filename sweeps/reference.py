"""The study's reference minimum for the barriers: trained once per study, from a seed outside the population.

Every trial's barrier (``barrier/train_loss`` and the others) is measured on the linear path from this one minimum.
It is trained with the sweep's own protocol (the preset's training config, its lr, the trial's width) from
``REFERENCE_SEED``, which no sweep draws, and does not depend on which trial finishes first, on the number of
workers or on batching: every trial of a study, run anywhere, gets its barrier to the same weights. (It used to be
"the first trial to finish": a different reference per schedule, and that trial had no barrier at all.)

The reference is logged as a child run of the parent tagged ``run_kind=reference`` (so no population reads it as a
trial) with its checkpoint, and pinned on the study (``reference_run_id`` or, with a width axis,
``reference_run_id_w<width>``). A worker that finds it pinned loads the checkpoint once; one that does not trains it.

A reference in training is held like a trial (``sweeps.claims``): its run is tagged with the process training it
(``worker``, ``worker_fingerprint``). Before a worker trains a reference it ends every RUNNING reference run whose
process on this host is gone as KILLED (a sweep killed while its reference trained leaves nothing RUNNING), and it
waits for one that a live process on this host is training instead of training a second. A worker on another host
cannot tell whether a process there is alive, so two hosts that start a new study at the same instant may both train
it (as may two commands on one host that both look before either starts its run): training is deterministic, and
the first pin wins for every later trial. A reference is pinned before its run ends, so a waiting worker never finds
it neither RUNNING nor pinned.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable

import optuna
from torch import nn

from landscape_core.config import Preset
from landscape_core.devices import resolve_device
from landscape_core.splits import TrialData
from landscape_core.train import train
from sweeps.claims import is_dead, process_fingerprint, this_worker
from sweeps.space import REFERENCE_SEED
from sweeps.study import end_killed
from tracking.checkpoints import load_run_model
from tracking.runs import running_children, start_child
from tracking.store import TrackingStore
from tracking.trial_log import log_training

__all__ = ["ReferenceModels", "reference_key"]

#: Seconds between two looks at a reference that another process on this host is training.
WAIT_POLL = 1.0


def reference_key(width: float, by_width: bool) -> str:
    """The study user attribute that pins the reference run of ``width``."""
    return f"reference_run_id_w{width:g}" if by_width else "reference_run_id"


class ReferenceModels:
    """The study's reference minima, one per width, each trained (or loaded) once per worker process."""

    def __init__(
        self,
        *,
        store: TrackingStore,
        study: optuna.Study,
        preset: Preset,
        data: TrialData,
        experiment_id: str,
        parent_run_id: str,
        by_width: bool,
        note: Callable[[str], None] | None = None,
    ) -> None:
        """``note`` prints a line for the user (the sweep's progress display): here, that this worker waits for a
        reference another process trains."""
        self.store, self.study, self.preset, self.data = store, study, preset, data
        self.experiment_id, self.parent_run_id, self.by_width = experiment_id, parent_run_id, by_width
        self.note = note
        self.device = resolve_device(preset.train.device)
        self._loaded: dict[float, tuple[str, nn.Module]] = {}

    def get(self, width: float) -> tuple[str, nn.Module]:
        """``(run id, model)`` of the reference at ``width``, training and pinning it if the study has none."""
        if width not in self._loaded:
            key = reference_key(width, self.by_width)
            run_id = self._pinned(width, key) or self._train(width, key)
            config = dataclasses.replace(self.preset.train, width=width)
            model = load_run_model(self.store.client(), run_id, config.model, self.device, width=width)
            self._loaded[width] = (run_id, model)
        return self._loaded[width]

    def _pinned(self, width: float, key: str) -> str | None:
        """The pinned reference run of ``width``, once no live process on this host is training one (waiting for
        it); None when this worker should train it. Reference runs of dead processes on this host end KILLED."""
        host = socket.gethostname()
        told = False
        while True:
            training = ""
            for run_id, tags in running_children(
                self.store, self.experiment_id, self.parent_run_id, "reference"
            ).items():
                worker, fingerprint = tags.get("worker", ""), tags.get("worker_fingerprint") or None
                if is_dead(worker, fingerprint, host):
                    end_killed(self.store, run_id)
                elif float(tags.get("width", "nan")) == width and worker.rpartition(":")[0] == host:
                    if worker != this_worker():
                        training = worker
            pinned = self.study.user_attrs.get(key)
            if pinned is not None or not training:
                return pinned
            if self.note is not None and not told:
                self.note(f"waiting for the reference minimum (width {width:g}) that process {training} trains")
                told = True
            time.sleep(WAIT_POLL)

    def _train(self, width: float, key: str) -> str:
        # its own init and batch order, whatever --init-seed / --order-seed the population shares
        config = dataclasses.replace(
            self.preset.train, seed=REFERENCE_SEED, width=width, init_seed=None, order_seed=None
        )
        run = start_child(
            self.store,
            self.experiment_id,
            self.parent_run_id,
            run_name=f"reference-w{width:g}",
            tags={
                "run_kind": "reference",
                "seed": REFERENCE_SEED,
                "lr": config.lr,
                "width": width,
                "worker": this_worker(),
                "worker_fingerprint": process_fingerprint(os.getpid()) or "",
            },
        )
        try:
            log_training(run, train(config, self.data), config)
            # Pin before the run ends: a worker waiting for this run then never sees it neither RUNNING nor pinned
            # (and trains a second reference). Another worker may have pinned one meanwhile: the first pin wins.
            pinned = self.study.user_attrs.get(key)
            if pinned is None:
                self.study.set_user_attr(key, run.run_id)
        except BaseException:
            run.finish("FAILED")
            raise
        run.finish("FINISHED")
        return pinned or run.run_id
