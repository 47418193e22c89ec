"""Instability analysis: branches share exactly the trunk's first k epochs, then differ only in their batch order."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from landscape_core.config import TrainConfig
from landscape_core.functional import param_dict
from landscape_core.instability import INDEPENDENT, branch_configs, train_branches
from landscape_core.splits import TrialData
from landscape_core.train import Snapshot, train
from tests.landscape_core.conftest import make_learnable_data

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = TrainConfig(model="tiny_cnn", lr=0.05, epochs=3, batch_size=32, device="cpu", seed=4)


@pytest.fixture(scope="module")
def data() -> TrialData:
    x, y = make_learnable_data(128)
    return TrialData(train=(x.float(), y), test=(x.float(), y), seed=0)


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def _losses(history) -> list[tuple[float, float]]:
    return [(m.train_loss, m.test_loss) for m in history]


def test_a_spawn_at_epoch_k_shares_exactly_the_first_k_epochs_then_the_branches_part(data) -> None:
    branches = train_branches(CONFIG, data, 2)
    trunk = train(dataclasses.replace(CONFIG, epochs=2), data)  # the trunk, trained on its own
    assert branches.trunk.epoch == 2
    assert _same(branches.trunk.params, param_dict(trunk.model))  # the snapshot is epoch 2 of the trunk, bit for bit
    for branch in (branches.a, branches.b):
        assert _losses(branch.history[:2]) == _losses(trunk.history)
        assert _same(branch.init_params, trunk.init_params)
        assert len(branch.history) == 3 and branch.steps == 3 * 4
    # after epoch 2 the batch orders differ, so do the weights
    assert not _same(param_dict(branches.a.model), param_dict(branches.b.model))
    # each branch is its trunk continued: epoch 3 from the snapshot in the branch's own order, reproducibly
    first, _ = branch_configs(CONFIG, 2)
    again = train(first, data, start=Snapshot.of(trunk))
    assert _same(param_dict(again.model), param_dict(branches.a.model))
    # the trunk's snapshot is not changed by training the branches from it
    assert _same(branches.trunk.params, param_dict(trunk.model))


def test_a_spawn_at_epoch_0_shares_only_the_initialization_and_the_independent_pair_shares_nothing(data) -> None:
    zero = train_branches(CONFIG, data, 0)
    assert _same(zero.a.init_params, zero.b.init_params)
    assert _losses(zero.a.history[:1]) != _losses(zero.b.history[:1])
    # spawning at 0 is training from the seed's initialization with the branch's batch order
    first, _ = branch_configs(CONFIG, 0)
    assert _same(param_dict(zero.a.model), param_dict(train(first, data).model))
    independent = train_branches(CONFIG, data, INDEPENDENT)
    assert not _same(independent.a.init_params, independent.b.init_params)
    assert _same(independent.a.init_params, zero.a.init_params)
    with pytest.raises(ValueError, match="spawn epoch"):
        branch_configs(CONFIG, 4)
    # spawned at the last epoch, both branches are the trunk itself, bit for bit
    last = train_branches(CONFIG, data, CONFIG.epochs)
    assert _same(param_dict(last.a.model), param_dict(last.b.model))


def test_training_resumed_from_a_snapshot_is_the_uninterrupted_training(data) -> None:
    """Full-batch GD has no batch order, so a run resumed at epoch 2 (weights and momentum buffers from the snapshot)
    must be the uninterrupted run, bit for bit; dropping the optimizer state would change it."""
    gd = dataclasses.replace(CONFIG, optimizer="gd", lr=0.2)
    whole = train(gd, data)
    resumed = train(gd, data, start=Snapshot.of(train(dataclasses.replace(gd, epochs=2), data)))
    assert _same(param_dict(resumed.model), param_dict(whole.model))
    assert _losses(resumed.history) == _losses(whole.history) and resumed.steps == whole.steps == 3
    fresh = Snapshot.of(train(dataclasses.replace(gd, epochs=2), data))
    cold = train(gd, data, start=dataclasses.replace(fresh, optimizer_state=None))
    assert not _same(param_dict(cold.model), param_dict(whole.model))
