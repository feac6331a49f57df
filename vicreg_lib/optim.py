"""Optimizers and the learning-rate schedule used for pretraining.

Two choices, as in the two reference implementations:

- ``adam``: the blog post's setting, a constant learning rate.
- ``lars``: the official code's setting (LARS, base lr 0.2 scaled by batch/256,
  linear warmup then cosine decay to 1/1000 of the peak).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

OPTIMIZERS = ("adam", "lars")


def exclude_bias_and_norm(p: torch.Tensor) -> bool:
    """True for biases and normalisation weights (1-d tensors): LARS skips them."""
    return p.ndim == 1


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017), as in the official VICReg code.

    For each weight tensor ``w`` with gradient ``g``:
        g <- g + weight_decay * w                      (not for biases / norms)
        g <- g * eta * ||w|| / ||g||                   (trust ratio, not for biases / norms)
        m <- momentum * m + g
        w <- w - lr * m
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.001,
        exclude=exclude_bias_and_norm,
    ) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta)
        super().__init__(params, defaults)
        self.exclude = exclude

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if not self.exclude(p):
                    dp = dp.add(p, alpha=group["weight_decay"])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    # trust ratio eta * ||w|| / ||g||; 1 when either norm is zero
                    trust = torch.where(
                        param_norm > 0.0,
                        torch.where(update_norm > 0.0, group["eta"] * param_norm / update_norm, one),
                        one,
                    )
                    dp = dp.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(dp)
                p.add_(mu, alpha=-group["lr"])
        return loss


def default_lr(optimizer: str, batch_size: int) -> float:
    """Adam: 2e-4 (blog post). LARS: base lr 0.2 scaled linearly by batch_size / 256 (official code)."""
    if optimizer == "adam":
        return 2e-4
    return 0.2 * batch_size / 256


def default_weight_decay(optimizer: str) -> float:
    """1e-6 for both, as in the official code and the blog post."""
    return 1e-6


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer called ``name`` ("adam" | "lars") over all parameters of ``model``."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "lars":
        return LARS(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def lr_at_step(
    step: int,
    *,
    optimizer: str,
    peak_lr: float,
    total_steps: int,
    warmup_steps: int,
    final_ratio: float = 0.001,
) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Adam: constant ``peak_lr``. LARS: ``peak_lr * step / warmup_steps`` during warmup,
    then ``peak_lr * q + end_lr * (1 - q)`` with ``q = (1 + cos(pi * t / T)) / 2``
    and ``end_lr = final_ratio * peak_lr`` (the official adjust_learning_rate).
    """
    if optimizer == "adam":
        return peak_lr
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    t = step - warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    q = 0.5 * (1.0 + math.cos(math.pi * min(t, decay_steps) / decay_steps))
    end_lr = peak_lr * final_ratio
    return peak_lr * q + end_lr * (1.0 - q)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
