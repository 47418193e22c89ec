"""Instability analysis (Frankle et al. 2020, "Linear mode connectivity and the lottery ticket hypothesis"): does
SGD's noise, after epoch k, still change the basin a network ends in?

One trunk trains from the initialization to epoch k (``spawn_epoch``); two branches continue it to the end with the
same weights, the same optimizer state and different batch orders. The barrier on the line between the two results
says whether they ended in one linearly connected basin (barrier ~ 0: stable at k) or not. k = 0 shares only the
initialization; the baseline ``INDEPENDENT`` shares nothing (two initializations and two orders): the barrier between
minima that "different seeds" give.

The branches' seeds are fixed functions of the trunk's ``seed``, so that a pair is reproducible from its point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from landscape_core.config import TrainConfig
from landscape_core.splits import TrialData
from landscape_core.train import Snapshot, TrainResult, train

__all__ = [
    "BRANCH_ORDER_OFFSETS",
    "INDEPENDENT",
    "INDEPENDENT_INIT_OFFSET",
    "Branches",
    "branch_configs",
    "train_branches",
]

#: The spawn epoch of the baseline pair that shares nothing: two initializations, two batch orders.
INDEPENDENT = -1
#: Added to the trunk's seed for the two branches' batch orders (far from any seed a sweep draws).
BRANCH_ORDER_OFFSETS = (100_000, 200_000)
#: Added to the seed for the second network's initialization in the ``INDEPENDENT`` baseline.
INDEPENDENT_INIT_OFFSET = 300_000


@dataclass(frozen=True)
class Branches:
    """The two trained branches and the snapshot they left the trunk at (None for the ``INDEPENDENT`` pair)."""

    a: TrainResult
    b: TrainResult
    trunk: Snapshot | None


def branch_configs(config: TrainConfig, spawn_epoch: int) -> tuple[TrainConfig, TrainConfig]:
    """The two branches' training configs: ``config`` with the branch batch orders and without a stop rule (both
    train to ``epochs``, so that they differ in their batch order only), and, for ``INDEPENDENT``, the second
    network's own initialization. The independent pair's first network is the k = 0 pair's first network: the two
    pairs differ in the second network's initialization only (a paired comparison)."""
    if spawn_epoch < INDEPENDENT or spawn_epoch > config.epochs:
        raise ValueError(f"Expected a spawn epoch in [0, {config.epochs}] or {INDEPENDENT}, got {spawn_epoch}")
    seed = config.weights_seed
    a, b = (
        dataclasses.replace(config, init_seed=seed, order_seed=config.seed + o, stop_at_train_loss=None)
        for o in BRANCH_ORDER_OFFSETS
    )
    if spawn_epoch == INDEPENDENT:
        b = dataclasses.replace(b, init_seed=seed + INDEPENDENT_INIT_OFFSET)
    return a, b


def train_branches(
    config: TrainConfig,
    data: TrialData,
    spawn_epoch: int,
    *,
    on_epoch: Callable[[str, int], None] | None = None,
) -> Branches:
    """Train the trunk to ``spawn_epoch`` (in ``config``'s batch order, without its stop rule) and the two branches
    from it to the end (``branch_configs``); ``INDEPENDENT`` trains two unrelated networks.

    Both branches' ``history`` starts with the trunk's epochs, and their ``init_params`` are the trunk's.

    Args:
        on_epoch: progress, called as ``on_epoch(part, epoch)`` with part "trunk", "branch A" or "branch B".
    """
    first, second = branch_configs(config, spawn_epoch)

    def hook(part: str) -> Callable | None:
        return None if on_epoch is None else (lambda epoch, model: on_epoch(part, epoch))

    if spawn_epoch == INDEPENDENT:
        return Branches(
            train(first, data, on_epoch=hook("branch A")), train(second, data, on_epoch=hook("branch B")), None
        )
    if spawn_epoch == 0:
        trunk = Snapshot.initial(config)
    else:
        trunk_config = dataclasses.replace(config, epochs=spawn_epoch, stop_at_train_loss=None)
        trunk = Snapshot.of(train(trunk_config, data, on_epoch=hook("trunk")))
    a = train(first, data, start=trunk, on_epoch=hook("branch A"))
    return Branches(a, train(second, data, start=trunk, on_epoch=hook("branch B")), trunk)
