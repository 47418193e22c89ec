"""The update rules a trial can train with (``TrainConfig.optimizer``), behind one interface: ``step(closure)``.

``closure()`` zeroes the gradients, computes the loss on the current batch, back-propagates it and returns it, as in
``torch.optim``. Every optimizer here calls it once per step, except SAM, which calls it twice (at ``w`` and at
``w + e``). ``sgd`` and ``gd`` are both ``torch.optim.SGD`` with heavy-ball momentum (no dampening, no Nesterov):
they differ only in the batch that the training loop's closure sees (``landscape_core.train``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from landscape_core.config import OPTIMIZERS, TrainConfig

__all__ = ["SAM", "Closure", "build_optimizer"]

Closure = Callable[[], Tensor]


class SAM:
    """Sharpness-aware minimization (Foret et al. 2021, Algorithm 1) over SGD with heavy-ball momentum.

    One step: the gradient ``g`` at ``w``; the ascent point ``w + e`` with ``e = rho g / ||g||_2`` (the norm over all
    parameters together); the gradient at ``w + e``; back to ``w``; then the base SGD step with that second gradient.
    """

    def __init__(self, params: Iterable[nn.Parameter], *, lr: float, momentum: float, rho: float) -> None:
        self.params = list(params)
        self.rho = rho
        self.base = torch.optim.SGD(self.params, lr=lr, momentum=momentum)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Closure) -> Tensor:
        """Returns the loss at ``w`` (the first closure call's), as ``torch.optim`` optimizers do."""
        with torch.enable_grad():
            loss = closure()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = self.rho / (norm + 1e-12)
        with torch.no_grad():
            ascent = [g * scale for g in grads]
            torch._foreach_add_(self.params, ascent)
        with torch.enable_grad():
            closure()
        with torch.no_grad():
            torch._foreach_sub_(self.params, ascent)
        self.base.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer | SAM:
    """The optimizer ``config.optimizer`` names, over ``model``'s parameters."""
    params = model.parameters()
    if config.optimizer in ("sgd", "gd"):
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.adam_betas)
    if config.optimizer == "sam":
        return SAM(params, lr=config.lr, momentum=config.momentum, rho=config.sam_rho)
    raise ValueError(f"Expected `optimizer` in {OPTIMIZERS}, got {config.optimizer!r}")
