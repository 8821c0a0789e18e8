"""The project's own zeroth-order step: MeZO (Malladi et al. 2023).

SPSA gradient estimate from two forward passes with a seeded in-place perturbation; the
perturbation z ~ N(0, I) is regenerated from its seed, never stored, so memory stays at
inference level.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from advisor.torchload import import_torch


class MeZO:
    """Memory-efficient zeroth-order SGD.

    Args:
        params: the parameters to train.
        lr: learning rate (the paper uses 1e-6 to 1e-7 for large models).
        eps: perturbation scale (1e-3 in the paper).
        weight_decay: decoupled weight decay.
        seed: the seed of the first step's perturbation (each step draws the next).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-6,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.torch = import_torch()
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay
        self._rng = self.torch.Generator().manual_seed(seed)
        self.last_projected_grad = 0.0

    def _perturb(self, seed: int, scale: float) -> None:
        gen = self.torch.Generator(device=self.params[0].device).manual_seed(seed)
        for p in self.params:
            z = self.torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
            p.add_(z, alpha=scale)

    def step(self, closure: Callable[[], Any]) -> float:
        """One MeZO step: loss(θ+εz), loss(θ−εz), restore, θ ← θ − lr·(g·z + wd·θ).

        Args:
            closure: runs a forward pass and returns the loss (no backward).

        Returns:
            The loss at θ+εz (a free estimate of the current loss).
        """
        torch = self.torch
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self._rng).item())
        with torch.no_grad():
            self._perturb(seed, self.eps)
            loss_plus = float(closure())
            self._perturb(seed, -2 * self.eps)
            loss_minus = float(closure())
            self._perturb(seed, self.eps)
            g = (loss_plus - loss_minus) / (2 * self.eps)
            self.last_projected_grad = g
            gen = torch.Generator(device=self.params[0].device).manual_seed(seed)
            for p in self.params:
                z = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
                if self.weight_decay:
                    p.mul_(1 - self.lr * self.weight_decay)
                p.add_(z, alpha=-self.lr * g)
        return loss_plus
