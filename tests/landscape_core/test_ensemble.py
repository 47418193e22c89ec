"""Batched trials: every ensemble member equals sequential training of its own config, divergence is per member."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from landscape_core.config import TrainConfig
from landscape_core.ensemble import check_ensemble_configs, train_ensemble
from landscape_core.functional import param_dict
from landscape_core.splits import TrialData
from landscape_core.train import DivergenceError, TrainResult, train

BASE = TrainConfig(epochs=2, batch_size=64, train_size=256, test_size=128, eval_chunk=100, device="cpu")
# Two learning rates among three seeds; eval_chunk=100 leaves a partial chunk (weights by chunk size).
CONFIGS = [
    dataclasses.replace(BASE, seed=1, lr=0.01),
    dataclasses.replace(BASE, seed=2, lr=0.05),
    dataclasses.replace(BASE, seed=3, lr=0.01),
]
HUGE_LR = dataclasses.replace(BASE, seed=4, lr=1e4)
# vmap runs B members as grouped convolutions, whose float summation order differs from one model's channels_last
# convolutions; over 8 SGD steps those rounding differences grow to ~1e-5 (largest in fc1.bias, |values| ~1e-2). The
# loop does exactly what train() does: its members must equal sequential training bit for bit.
RTOL, ATOL = 1e-4, 5e-5


@pytest.fixture(scope="module")
def data(fashion) -> TrialData:
    return TrialData.build(fashion, BASE)  # every config here shares BASE's splits


@pytest.fixture(scope="module")
def sequential(data) -> dict[TrainConfig, TrainResult | DivergenceError]:
    out: dict[TrainConfig, TrainResult | DivergenceError] = {}
    for config in [*CONFIGS, HUGE_LR]:
        try:
            out[config] = train(config, data)
        except DivergenceError as error:
            out[config] = error
    return out


def assert_same_training(got: TrainResult, want: TrainResult, *, exact: bool = False) -> None:
    for name, tensor in want.init_params.items():
        assert torch.equal(got.init_params[name], tensor), f"init {name} differs"
    got_params, want_params = param_dict(got.model), param_dict(want.model)
    assert list(got_params) == list(want_params)
    for name, tensor in want_params.items():
        if exact:
            assert torch.equal(got_params[name], tensor), f"final {name} differs"
        torch.testing.assert_close(got_params[name], tensor, rtol=RTOL, atol=ATOL, msg=f"final {name} differs")
    assert len(got.history) == len(want.history) == BASE.epochs
    if exact:  # every metric but the wall time
        strip = [dataclasses.replace(m, seconds=0.0, extra={}) for m in (*got.history, *want.history)]
        assert strip[: BASE.epochs] == strip[BASE.epochs :]
    for g, w in zip(got.history, want.history):
        assert g.epoch == w.epoch
        assert g.train_loss == pytest.approx(w.train_loss, rel=RTOL, abs=ATOL)
        assert g.test_loss == pytest.approx(w.test_loss, rel=RTOL, abs=ATOL)
        # a prediction may flip on a float tie; one example is 1/256 resp. 1/128
        assert g.train_acc == pytest.approx(w.train_acc, abs=1.5 / BASE.train_size)
        assert g.test_acc == pytest.approx(w.test_acc, abs=1.5 / BASE.test_size)
    for got_data, want_data in ((got.data.train, want.data.train), (got.data.test, want.data.test)):
        assert all(torch.equal(a, b) for a, b in zip(got_data, want_data))
    assert not got.model.training


@pytest.mark.parametrize("vectorize", [True, False], ids=["vmap", "loop"])
def test_members_equal_sequential_training(data, sequential, vectorize: bool) -> None:
    seen_metrics: list[tuple[int, int]] = []
    seen_epochs: list[tuple[int, int]] = []

    def on_epoch(member: int, epoch: int, model: torch.nn.Module) -> dict[str, float]:
        seen_epochs.append((member, epoch))
        with torch.no_grad():
            next(model.parameters()).add_(1.0)  # a callback's changes must not reach training
        return {"member": float(member)}

    results = train_ensemble(
        CONFIGS,
        data,
        vectorize=vectorize,
        on_epoch=on_epoch,
        on_metrics=lambda member, metrics: seen_metrics.append((member, metrics.epoch)),
    )
    assert len(results) == len(CONFIGS)
    for member, (config, result) in enumerate(zip(CONFIGS, results)):
        assert isinstance(result, TrainResult)
        assert_same_training(result, sequential[config], exact=not vectorize)
        assert [m.extra for m in result.history] == [{"member": float(member)}] * BASE.epochs
    expected = [(member, epoch) for epoch in (1, 2) for member in range(len(CONFIGS))]
    assert seen_metrics == expected and seen_epochs == expected
    # the members really differ (different seeds and learning rates)
    losses = [r.final.train_loss for r in results]
    assert len(set(losses)) == len(losses), losses


@pytest.mark.parametrize("vectorize", [True, False], ids=["vmap", "loop"])
def test_diverged_member_is_reported_and_the_others_still_match(data, sequential, vectorize: bool) -> None:
    want = sequential[HUGE_LR]
    assert isinstance(want, DivergenceError), "lr 1e4 must diverge in sequential training too"
    configs = [CONFIGS[0], HUGE_LR, CONFIGS[1]]
    steps: list[tuple[int, int, int]] = []
    results = train_ensemble(
        configs, data, vectorize=vectorize, on_step=lambda m, e, s, n, loss: steps.append((m, e, s))
    )
    diverged = results[1]
    assert isinstance(diverged, DivergenceError)
    assert (diverged.epoch, diverged.step) == (want.epoch, want.step)
    assert_same_training(results[0], sequential[CONFIGS[0]], exact=not vectorize)
    assert_same_training(results[2], sequential[CONFIGS[1]], exact=not vectorize)
    # after diverging, the member is no longer stepped or reported
    assert all((e, s) < (want.epoch, want.step) for m, e, s in steps if m == 1)
    assert any(m == 2 and e == BASE.epochs for m, e, s in steps)


def test_all_members_diverging_returns_only_errors(data) -> None:
    configs = [HUGE_LR, dataclasses.replace(HUGE_LR, seed=5)]
    results = train_ensemble(configs, data, vectorize=False)
    assert all(isinstance(r, DivergenceError) for r in results)


def test_single_member_matches_train(data, sequential) -> None:
    (result,) = train_ensemble(CONFIGS[1:2], data)
    assert_same_training(result, sequential[CONFIGS[1]], exact=True)


@pytest.mark.parametrize(
    ("configs", "message"),
    [
        ([], "at least one"),
        ([BASE, dataclasses.replace(BASE, batch_size=32)], "`batch_size`"),
        ([BASE, dataclasses.replace(BASE, epochs=3)], "`epochs`"),
        ([BASE, dataclasses.replace(BASE, data_seed=1)], "`data_seed`"),
        ([BASE, dataclasses.replace(BASE, model="tiny_cnn")], "`model`"),
        ([BASE, "not a config"], "TrainConfig"),
    ],
)
def test_bad_configs_raise_value_error(configs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_ensemble_configs(configs)
    with pytest.raises(ValueError, match=message):
        train_ensemble(configs, data=None)  # type: ignore[arg-type]  # validated before the data is touched


@pytest.mark.parametrize("vectorize", [True, False], ids=["vmap", "loop"])
def test_members_stop_at_the_train_loss_each_on_its_own_epoch(data, vectorize: bool) -> None:
    """With a stop loss, each member leaves the ensemble after its own first epoch at or below it, and equals
    ``train`` of its config with the same stop loss."""
    configs = [dataclasses.replace(c, epochs=4) for c in CONFIGS[:2]]
    free = [train(c, data) for c in configs]
    # a target the faster member (lr 0.05) reaches before the last epoch
    target = free[1].history[1].train_loss
    stopping = [dataclasses.replace(c, stop_at_train_loss=target) for c in configs]
    got = train_ensemble(stopping, data, vectorize=vectorize)
    for result, config in zip(got, stopping):
        want = train(config, data)
        assert len(result.history) == len(want.history) and result.reached_stop_loss == want.reached_stop_loss
        torch.testing.assert_close(
            torch.cat([p.flatten() for p in result.model.parameters()]),
            torch.cat([p.flatten() for p in want.model.parameters()]),
            rtol=RTOL,
            atol=ATOL,
        )
    assert len(got[1].history) <= 2 < 4 and got[1].reached_stop_loss
