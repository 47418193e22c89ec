"""The update rules (``landscape_core.optimizers``) against hand computations, full-batch GD against SGD with one batch,
per-step lambda_max tracking against a dense Hessian, and a tiny full-batch GD run at the edge of stability."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape_core.config import HessianConfig, TrainConfig
from landscape_core.measure import LambdaMaxTracker
from landscape_core.optimizers import build_optimizer
from landscape_core.splits import TrialData
from landscape_core.train import train
from tests.landscape_core.conftest import dense_hessian_tiny, make_learnable_data

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (16,))


def _grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The gradient of the mean cross-entropy at ``params`` (the model's own left unchanged)."""
    trial = copy.deepcopy(model)
    with torch.no_grad():
        for p, value in zip(trial.parameters(), params):
            p.copy_(value)
    return list(torch.autograd.grad(F.cross_entropy(trial(x), y), list(trial.parameters())))


def _steps(name: str, count: int, **fields) -> tuple[list[torch.Tensor], list[torch.Tensor], nn.Module, tuple]:
    """``count`` steps of the optimizer ``name`` on the small problem: (weights before, weights after, ...)."""
    model, x, y = _problem()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(model, TrainConfig(optimizer=name, **fields))

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(count):
        optimizer.step(closure)
    return before, [p.detach().clone() for p in model.parameters()], model, (x, y)


def test_sam_ascends_to_w_plus_rho_g_over_its_norm_then_steps_sgd_with_momentum_with_that_gradient() -> None:
    lr, momentum, rho = 0.1, 0.9, 0.05
    w, after, model, (x, y) = _steps("sam", 2, lr=lr, momentum=momentum, sam_rho=rho)
    buffer = None
    for _ in range(2):  # Foret et al. 2021, Algorithm 1, with heavy-ball momentum on the SAM gradient
        g = _grad(model, x, y, w)
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        ascent = [wi + rho * gi / norm for wi, gi in zip(w, g)]
        g_sam = _grad(model, x, y, ascent)
        buffer = g_sam if buffer is None else [momentum * b + gi for b, gi in zip(buffer, g_sam)]
        w = [wi - lr * b for wi, b in zip(w, buffer)]
    for got, want in zip(after, w):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # and SAM is not plain SGD: the gradient at the ascent point differs
    _, sgd_after, _, _ = _steps("sgd", 2, lr=lr, momentum=momentum)
    assert max(float((a - b).abs().max()) for a, b in zip(after, sgd_after)) > 1e-6


def test_sgd_steps_with_heavy_ball_momentum_and_adam_with_bias_corrected_moments() -> None:
    lr, momentum = 0.1, 0.5
    w, after, model, (x, y) = _steps("sgd", 2, lr=lr, momentum=momentum)
    g1 = _grad(model, x, y, w)
    w1 = [wi - lr * gi for wi, gi in zip(w, g1)]
    g2 = _grad(model, x, y, w1)
    w2 = [wi - lr * (momentum * a + b) for wi, a, b in zip(w1, g1, g2)]
    for got, want in zip(after, w2):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    lr, (b1, b2), eps = 0.01, (0.8, 0.99), 1e-8
    w, after, model, (x, y) = _steps("adam", 2, lr=lr, adam_betas=(b1, b2))
    m = v = None
    for t in (1, 2):  # Kingma & Ba 2015, Algorithm 1
        g = _grad(model, x, y, w)
        m = [(1 - b1) * gi for gi in g] if m is None else [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [(1 - b2) * gi**2 for gi in g] if v is None else [b2 * vi + (1 - b2) * gi**2 for vi, gi in zip(v, g)]
        w = [wi - lr * (mi / (1 - b1**t)) / (torch.sqrt(vi / (1 - b2**t)) + eps) for wi, mi, vi in zip(w, m, v)]
    for got, want in zip(after, w):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def _tiny_data(n: int = 128) -> TrialData:
    x, y = make_learnable_data(n)
    return TrialData(train=(x.float(), y), test=(x.float(), y), seed=0)


def test_full_batch_gd_is_sgd_with_one_batch_of_the_whole_train_set_even_when_accumulated_in_chunks() -> None:
    data = _tiny_data()
    gd = TrainConfig(optimizer="gd", model="tiny_cnn", lr=0.1, epochs=5, device="cpu", eval_chunk=48)
    sgd = dataclasses.replace(gd, optimizer="sgd", batch_size=128, eval_chunk=2048)
    a, b = train(gd, data), train(sgd, data)
    assert a.steps == b.steps == 5  # one step per epoch
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    # the batch size plays no part in GD
    c = train(dataclasses.replace(gd, batch_size=7), data)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), c.model.parameters()))


def test_per_step_tracking_is_the_dense_hessians_top_eigenvalue_at_the_tracked_steps() -> None:
    data = _tiny_data()
    config = TrainConfig(model="tiny_cnn", lr=0.05, epochs=2, batch_size=32, device="cpu")  # 4 steps per epoch
    tracker = LambdaMaxTracker(
        data, HessianConfig(track_subset=32, track_iter=60, tol=1e-7, chunk_size=32, track_every=3), threshold=1.0
    )
    copies: dict[int, nn.Module] = {}

    def update(step: int, model: nn.Module) -> None:
        tracker.update(step, model)
        if step % 3 == 0:
            copies[step] = copy.deepcopy(model).double().to(memory_format=torch.contiguous_format)

    train(config, data, on_update=update)
    assert [s for s, _ in tracker.steps] == [0, 3, 6]  # at initialization, then every 3 steps
    subset = tuple(t.double() if t.is_floating_point() else t for t in data.subset("tracking", 32))
    for step, value in tracker.steps:
        exact = float(torch.linalg.eigvalsh(dense_hessian_tiny(copies[step], subset))[-1])
        assert value == pytest.approx(exact, rel=2e-4), step


def test_a_tiny_full_batch_gd_run_sharpens_to_the_edge_of_stability_and_hovers_there() -> None:
    """Cohen et al. 2021 on a TinyCNN: under full-batch GD (lr 0.2, threshold 2 / lr = 10), lambda_max starts far
    below 2 / lr, rises to it (progressive sharpening), and once there stays near it while the loss keeps falling
    (the edge of stability). At lr 0.05 (threshold 40) the same run stays below its threshold."""
    data = _tiny_data()
    config = TrainConfig(optimizer="gd", model="tiny_cnn", lr=0.2, momentum=0.0, epochs=150, device="cpu")
    assert config.stability_threshold == pytest.approx(10.0)
    hessian = HessianConfig(track_subset=128, track_iter=12, tol=1e-4, chunk_size=128, track_every=1)
    tracker = LambdaMaxTracker(data, hessian, threshold=config.stability_threshold)
    result = train(config, data, on_update=tracker.update)
    lam = torch.tensor([value for _, value in tracker.steps])
    assert lam.shape == (151,)  # at initialization and after each step
    assert float(lam[:10].max()) < 0.3 * config.stability_threshold  # starts far below
    crossed = int(torch.nonzero(lam >= config.stability_threshold)[0])  # reaches it
    after = lam[crossed:]
    assert after.numel() >= 30
    median = float(after.median())
    assert 0.5 * config.stability_threshold < median < 2.0 * config.stability_threshold, (crossed, after.tolist())
    assert result.final.train_loss < result.history[crossed].train_loss  # and the loss keeps falling there
    slow = dataclasses.replace(config, lr=0.05, epochs=60)
    tracker = LambdaMaxTracker(data, hessian, threshold=slow.stability_threshold)
    train(slow, data, on_update=tracker.update)
    assert max(value for _, value in tracker.steps) < 0.5 * slow.stability_threshold
