"""Shared fixtures for landscape_core tests: a float64 TinyCNN with seeded weights and data, quadratic losses with
known Hessians, and a slow exact dense-Hessian reference."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, hessian, jacfwd

from landscape_core.functional import Data, Params, flatten, mean_loss, param_dict, unflatten
from landscape_core.models import TinyCNN

TINY_SEED = 0
TINY_EXAMPLES = 256


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for the block, then restore the previous count.

    These tests are many small ops; on two cores shared with other jobs, OpenMP's spinning threads made them 3-5x
    slower in wall time (and CPU time) than one thread. Numbers are unaffected beyond summation order.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Module-scoped :func:`single_thread`: use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with single_thread():
        yield


# ----------------------------------------------------------------------------------------------------------------------
# TinyCNN
# ----------------------------------------------------------------------------------------------------------------------


def make_tiny_model(seed: int = TINY_SEED) -> nn.Module:
    """A float64 TinyCNN (2,570 parameters) with weights from ``seed``, without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyCNN()
    return model.double()


def make_tiny_data(n: int = TINY_EXAMPLES, seed: int = 1) -> Data:
    """``n`` random float64 8x8 images ``[n, 1, 8, 8]`` and labels ``[n]`` in 0..9."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def make_learnable_data(n: int = 128, seed: int = 0) -> Data:
    """``n`` float64 8x8 images with labels from a random linear rule: learnable by TinyCNN, so training reaches a
    genuine minimum (~100 % train accuracy)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(64, 10, generator=gen, dtype=torch.float64)
    return x, (x.flatten(1) @ w).argmax(1)


def train_tiny(data: Data, *, seed: int = 2, steps: int = 40) -> nn.Module:
    """A float64 TinyCNN trained full-batch with Adam (lr 3e-2) on ``data``; gradients cleared."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyCNN().double()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(steps):
        loss = F.cross_entropy(model(data[0]), data[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in model.parameters():
        p.grad = None
    return model


@pytest.fixture(scope="module")
def learnable_data() -> Data:
    return make_learnable_data()


@pytest.fixture(scope="module")
def trained_tiny(learnable_data: Data) -> nn.Module:
    """A TinyCNN trained to ~100 % train accuracy on ``learnable_data`` (a genuine minimum), float64."""
    with single_thread():
        return train_tiny(learnable_data)


@pytest.fixture(scope="module")
def data(learnable_data: Data) -> Data:
    """``learnable_data`` under the short name the sharpness and flatness tests use."""
    return learnable_data


@pytest.fixture(scope="module")
def trained(trained_tiny: nn.Module) -> nn.Module:
    """``trained_tiny`` under the short name the sharpness and flatness tests use."""
    return trained_tiny


def dense_hessian(model: nn.Module, data: Data, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """The exact Hessian ``[P, P]`` of the mean loss over all of ``data`` (one chunk), by ``torch.func.hessian`` over
    the flat parameters (order of ``named_parameters()``). Costs ``P`` HVPs over all of ``data``: small inputs only."""
    like = param_dict(model)
    n = data[0].shape[0]

    def f(flat: Tensor) -> Tensor:
        return mean_loss(model, unflatten(flat, like), data, chunk_size=n, loss_fn=loss_fn)

    H = hessian(f)(flatten(like))
    return 0.5 * (H + H.T)


def _tiny_features(p: Params, x: Tensor) -> Tensor:
    h = torch.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1))
    h = torch.relu(F.conv2d(h, p["conv2.weight"], p["conv2.bias"], padding=1))
    return F.max_pool2d(h, 2).flatten(1)


def _tiny_head(p: Params, h: Tensor) -> Tensor:
    return F.linear(torch.relu(F.linear(h, p["fc1.weight"], p["fc1.bias"])), p["fc2.weight"], p["fc2.bias"])


def dense_hessian_tiny(model: nn.Module, data: Data) -> Tensor:
    """The exact cross-entropy Hessian ``[P, P]`` of a TinyCNN, assembled by blocks to be affordable on two cores.

    With ``c`` the 336 conv parameters and ``f`` the 2,234 fc parameters, ``H = [[H_cc, H_cf], [H_fc, H_ff]]``:
    the columns ``H[:, c]`` come from ``jacfwd`` over ``c`` of the full gradient (336 tangents instead of 2,570), and
    ``H_ff`` is ``torch.func.hessian`` of the fc head on the (constant in ``f``) conv features. A plain
    ``torch.func.hessian`` over all 2,570 parameters and 256 examples is ~150 GFLOP; this is ~5x less. Checked against
    :func:`dense_hessian` on a few examples in test_hessian.py.
    """
    like = param_dict(model)
    names = list(like)
    if names != [f"{layer}.{kind}" for layer in ("conv1", "conv2", "fc1", "fc2") for kind in ("weight", "bias")]:
        raise ValueError(f"Expected a TinyCNN, got parameters {names}")
    x, y = data
    conv = {k: like[k] for k in names[:4]}
    head = {k: like[k] for k in names[4:]}
    with torch.no_grad():
        torch.testing.assert_close(_tiny_head(like, _tiny_features(like, x)), model(x))  # the split is the model

    def loss(c: Tensor, f: Tensor) -> Tensor:
        p = {**unflatten(c, conv), **unflatten(f, head)}
        return F.cross_entropy(_tiny_head(p, _tiny_features(p, x)), y)

    c0, f0 = flatten(conv), flatten(head)
    cols = jacfwd(lambda c: torch.cat(grad(loss, argnums=(0, 1))(c, f0)))(c0)  # [P, 336]: H[:, c]
    features = _tiny_features(like, x)
    H_ff = hessian(lambda f: F.cross_entropy(_tiny_head(unflatten(f, head), features), y))(f0)
    nc = c0.numel()
    H = torch.empty(cols.shape[0], cols.shape[0], dtype=cols.dtype)
    H[:, :nc] = cols
    H[:nc, nc:] = cols[nc:].T
    H[nc:, nc:] = H_ff
    return 0.5 * (H + H.T)


@dataclass(frozen=True)
class DenseReference:
    eigenvalues: Tensor  # [P] ascending
    hessian: Tensor  # [P, P]

    @property
    def trace(self) -> float:
        return float(torch.trace(self.hessian))


@pytest.fixture
def tiny_model() -> nn.Module:
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_data() -> Data:
    return make_tiny_data()


@pytest.fixture(scope="session")
def tiny_dense(tiny_data: Data) -> DenseReference:
    with single_thread():
        H = dense_hessian_tiny(make_tiny_model(), tiny_data)
    return DenseReference(eigenvalues=torch.linalg.eigvalsh(H), hessian=H)


# ----------------------------------------------------------------------------------------------------------------------
# Quadratics
# ----------------------------------------------------------------------------------------------------------------------


class QuadraticModel(nn.Module):
    """Parameters ``w [4, 5]`` and ``c [P - 20]`` (flat ``x = cat(w, c)``); input row ``i`` is ``[A_i | b_i]``,
    ``[P, P + 1]``; "logits" column 0 is the per-example loss ``0.5 x^T A_i x + b_i^T x``, column 1 is zero."""

    def __init__(self, x0: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(x0[:20].reshape(4, 5).clone())
        self.c = nn.Parameter(x0[20:].clone())

    def forward(self, inputs: Tensor) -> Tensor:
        x = torch.cat([self.w.reshape(-1), self.c])
        p = x.numel()
        A, b = inputs[:, :, :p], inputs[:, :, p]
        per_example = 0.5 * torch.einsum("i,nij,j->n", x, A, x) + b @ x
        return torch.stack([per_example, torch.zeros_like(per_example)], dim=1)


class TrainModeQuadratic(QuadraticModel):
    """A QuadraticModel whose loss triples in train mode: a function that forgets eval mode gets it wrong."""

    def forward(self, inputs: Tensor) -> Tensor:
        out = super().forward(inputs)
        return 3.0 * out if self.training else out


def quadratic_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean of the per-example quadratic losses (column 0 of the logits)."""
    return logits[:, 0].mean()


@dataclass
class Quadratic:
    """A quadratic problem: mean loss ``0.5 x^T A x + b^T x`` over ``data`` with known spectrum of ``A``."""

    model: QuadraticModel
    data: Data
    A: Tensor  # [P, P]
    b: Tensor  # [P]
    eigenvalues: Tensor  # [P] descending
    eigenvectors: Tensor  # [P, P] columns, matching eigenvalues
    loss_fn: Callable[[Tensor, Tensor], Tensor] = quadratic_loss

    @property
    def size(self) -> int:
        return self.A.shape[0]

    def x(self) -> Tensor:
        return flatten(param_dict(self.model))

    def loss(self, x: Tensor) -> float:
        return float(0.5 * x @ self.A @ x + self.b @ x)

    def params(self) -> Params:
        return param_dict(self.model)


def make_quadratic(
    eigenvalues: list[float], *, n_examples: int = 50, seed: int = 0, train_sensitive: bool = False
) -> Quadratic:
    """A quadratic whose mean Hessian is ``A = Q diag(eigenvalues) Q^T`` (Q random orthogonal) and whose examples
    differ (``A_i = A + E_i``, ``sum_i E_i = 0``), so a chunked sum instead of a mean would be visibly wrong.
    ``train_sensitive``: the model is a :class:`TrainModeQuadratic` left in train mode."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.tensor(sorted(eigenvalues, reverse=True), dtype=torch.float64)
    p = lam.numel()
    assert p > 20
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    E = torch.randn(n_examples, p, p, generator=g, dtype=torch.float64)
    E = E + E.transpose(1, 2)
    E = E - E.mean(dim=0, keepdim=True)
    b = torch.randn(p, generator=g, dtype=torch.float64)
    e = torch.randn(n_examples, p, generator=g, dtype=torch.float64)
    e = e - e.mean(dim=0, keepdim=True)
    inputs = torch.cat([A + E, (b + e)[:, :, None]], dim=2)
    targets = torch.zeros(n_examples, dtype=torch.long)
    x0 = torch.randn(p, generator=g, dtype=torch.float64)
    model = TrainModeQuadratic(x0).train() if train_sensitive else QuadraticModel(x0)
    return Quadratic(model, (inputs, targets), A, b, lam, Q)


# Near-degenerate top pair, negative eigenvalues; the largest magnitude is positive, so power iteration applies.
NEAR_DEGENERATE = [19.13, 18.37, 9.2, 6.1, *torch.linspace(2.9, -1.9, 34).tolist(), -3.3, -8.6]
# A clear gap for power iteration.
GAPPED = [10.0, 5.0, 2.5, *torch.linspace(1.5, -1.5, 27).tolist()]
# The most negative eigenvalue dominates in magnitude: largest algebraic != largest magnitude.
NEGATIVE_DOMINANT = [5.0, 4.0, 3.0, *torch.linspace(2.0, -2.0, 24).tolist(), -30.0]


@pytest.fixture
def quadratic() -> Quadratic:
    return make_quadratic(NEAR_DEGENERATE)


@pytest.fixture
def gapped_quadratic() -> Quadratic:
    return make_quadratic(GAPPED, seed=1)


@pytest.fixture
def negative_quadratic() -> Quadratic:
    return make_quadratic(NEGATIVE_DOMINANT, seed=2)


# ----------------------------------------------------------------------------------------------------------------------
# Seeded draws
# ----------------------------------------------------------------------------------------------------------------------


class RecordingModel(nn.Module):
    """One parameter ``w [P]`` and a loss identically 0 (``loss_fn=first_logit``; its gradient is exactly 0, so
    sharpness ascents stay at their random start, and every prediction is class 0, so accuracy is 1 on class-0
    targets). Every evaluation outside autograd (``functional.evaluate``, in inference mode) appends the ``w`` it saw
    to ``seen``: the tests read the random starts and noise vectors a measure drew from it."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.seen: list[Tensor] = []

    def forward(self, inputs: Tensor) -> Tensor:
        if torch.is_inference_mode_enabled():
            self.seen.append(self.w.detach().clone())
        return (0 * self.w.sum()).expand(inputs.shape[0], 1)


def first_logit(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean of the logits' column 0 (for :class:`RecordingModel`: exactly 0)."""
    return logits[:, 0].mean()


def rule_draws(seed: int) -> torch.Generator:
    """The generator the seeded-generator rule draws from (``rng.generator(seed)``), built by hand."""
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------------
# Purity
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSnapshot:
    """Everything a pure function must leave as it found it."""

    params: dict[str, Tensor]
    requires_grad: dict[str, bool]
    training: dict[str, bool]
    grads: dict[str, bool]

    @classmethod
    def of(cls, model: nn.Module) -> ModelSnapshot:
        return cls(
            params={n: p.detach().clone() for n, p in model.named_parameters()},
            requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
            training={n: m.training for n, m in model.named_modules()},
            grads={n: p.grad is not None for n, p in model.named_parameters()},
        )

    def assert_unchanged(self, model: nn.Module) -> None:
        after = ModelSnapshot.of(model)
        for name, p in self.params.items():
            assert torch.equal(p, after.params[name]), f"parameter {name} changed"
        assert after.requires_grad == self.requires_grad
        assert after.training == self.training
        assert after.grads == self.grads
