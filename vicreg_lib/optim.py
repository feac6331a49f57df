"""Optimizers and the one learning-rate schedule of the package.

- ``adam``: the blog post's optimizer (with a constant learning rate there).
- ``lars``: the official code's (LARS, base lr 0.2 scaled by batch/256, eta 0.001);
  solo-learn's CIFAR setting uses eta 0.02 with the adaptive rate clipped at the lr.

The schedule is a setting of its own (``SCHEDULES``), used by pretraining, the linear
probes and the supervised baseline alike: ``lr_at_step``.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

OPTIMIZERS = ("adam", "lars")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


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

    ``clip=True`` caps the trust ratio at 1: a weight tensor's step is lr * min(trust, 1), so no
    layer moves faster than plain momentum SGD at lr would move it (the idea of solo-learn's
    ``clip_lr``, used with eta 0.02 in its CIFAR recipes).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.001,
        clip: bool = False,
        exclude=exclude_bias_and_norm,
    ) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, clip=clip)
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
                    if group["clip"]:
                        trust = torch.clamp(trust, max=1.0)
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


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, eta: float = 0.001,
                    clip: bool = False) -> torch.optim.Optimizer:
    """The optimizer called ``name`` ("adam" | "lars") over all parameters of ``model``;
    eta and clip are LARS's (see ``LARS``)."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "lars":
        return LARS(model.parameters(), lr=lr, weight_decay=weight_decay, eta=eta, clip=clip)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def lr_at_step(
    step: int,
    *,
    schedule: str,
    peak_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    final_ratio: float = 0.0,
) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    constant:      peak_lr.
    cosine:        peak_lr * q + end_lr * (1 - q), q = (1 + cos(pi * step / total_steps)) / 2,
                   end_lr = final_ratio * peak_lr (the official adjust_learning_rate uses 0.001).
    warmup_cosine: peak_lr * step / warmup_steps for the first warmup_steps, then the cosine
                   over the remaining steps.
    """
    if schedule == "constant":
        return peak_lr
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    warmup = warmup_steps if schedule == "warmup_cosine" else 0
    if step < warmup:
        return peak_lr * step / warmup
    decay_steps = max(total_steps - warmup, 1)
    q = 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, decay_steps) / decay_steps))
    end_lr = peak_lr * final_ratio
    return peak_lr * q + end_lr * (1.0 - q)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr




