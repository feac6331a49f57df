"""Optimizers (``adam``: the blog's; ``lars``: the official code's) and the learning-rate schedule
(``lr_at_step``) shared by pretraining, the linear probes and the supervised baseline."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

OPTIMIZERS = ("adam", "lars")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
LARS_CLIPS = ("none", "trust", "solo-learn")


def exclude_bias_and_norm(p: torch.Tensor) -> bool:
    """True for biases and normalisation weights (1-d tensors): LARS skips them."""
    return p.ndim == 1


def lars_clip_mode(clip: str | bool) -> str:
    """A LARS clipping rule by name; True and False (older configs) read as "trust" and "none"."""
    if isinstance(clip, bool):
        return "trust" if clip else "none"
    if clip not in LARS_CLIPS:
        raise ValueError(f"unknown LARS clipping {clip!r}: use one of {', '.join(LARS_CLIPS)}")
    return clip


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017) over all tensors at once (torch._foreach_*).

    For each weight tensor ``w`` with gradient ``g`` (biases and norms, ``exclude``, take plain
    momentum SGD: d = g):
        d = g + weight_decay * w
        d = d * trust,  trust = eta * ||w|| / ||d||        (1 when either norm is 0; the official code)
        m = momentum * m + d
        w = w - lr * m

    ``clip`` chooses how the rate is capped:
    - ``"none"``: as above (the official code);
    - ``"trust"``: trust capped at 1, a step of lr * min(trust, 1);
    - ``"solo-learn"``: solo-learn's ``clip_lr``: trust = eta ||w|| / (||g|| + wd ||w|| + 1e-8), and
      d = (g + wd w) * min(trust / lr, 1), a step of min(trust, lr): the rate is capped at lr.

    ``lr`` may be a 0-d tensor (``set_lr`` writes into it) for a CUDA graph of the step to read. The step
    is a fixed, small number of tensor ops, whatever the number of tensors, and never waits for the device.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float | torch.Tensor = 0.0,
                 weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001,
                 clip: str | bool = "none", exclude=exclude_bias_and_norm) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, clip=lars_clip_mode(clip))
        super().__init__(params, defaults)
        self.exclude = exclude

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            adapted = [p for p in params if not self.exclude(p)]
            plain = [p for p in params if self.exclude(p)]
            updates = list(self._adapted_updates(adapted, group)) + [p.grad for p in plain]
            momenta = [self._momentum(p) for p in adapted + plain]
            torch._foreach_mul_(momenta, group["momentum"])
            torch._foreach_add_(momenta, updates)  # m = momentum m + d
            lr = group["lr"]
            if isinstance(lr, torch.Tensor):
                torch._foreach_sub_(adapted + plain, torch._foreach_mul(momenta, lr))  # w = w - lr m
            else:
                torch._foreach_add_(adapted + plain, momenta, alpha=-lr)
        return loss

    def _momentum(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "mu" not in state:
            state["mu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["mu"]

    @staticmethod
    def _adapted_updates(weights: list[torch.Tensor], group: dict) -> list[torch.Tensor]:
        """d for every adapted weight tensor: decayed and scaled by its trust ratio (one op per line)."""
        if not weights:
            return []
        grads = [w.grad for w in weights]
        wd, eta, lr = group["weight_decay"], group["eta"], group["lr"]
        weight_norms = torch.stack(torch._foreach_norm(weights))  # (k,)
        if group["clip"] == "solo-learn":
            grad_norms = torch.stack(torch._foreach_norm(grads))
            trust = eta * weight_norms / (grad_norms + wd * weight_norms + 1e-8)
            active = (weight_norms > 0) & (grad_norms > 0)  # solo-learn leaves d = g otherwise
            scale = torch.where(active, torch.clamp(trust / lr, max=1.0), 1.0)  # min(trust / lr, 1)
            decay = torch.where(active, wd, 0.0)
            updates = torch._foreach_add(grads, torch._foreach_mul(weights, list(decay.unbind(0))))
        else:
            updates = torch._foreach_add(grads, weights, alpha=wd)
            update_norms = torch.stack(torch._foreach_norm(updates))
            ok = (weight_norms > 0) & (update_norms > 0)
            scale = torch.where(ok, eta * weight_norms / update_norms, 1.0)
            if group["clip"] == "trust":
                scale = scale.clamp(max=1.0)
        torch._foreach_mul_(updates, list(scale.unbind(0)))
        return updates


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, eta: float = 0.001,
                    clip: str | bool = "none") -> torch.optim.Optimizer:
    """The optimizer ``name`` over all of ``model``'s parameters; eta and clip are LARS's."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "lars":
        return LARS(model.parameters(), lr=lr, weight_decay=weight_decay, eta=eta, clip=clip)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def lr_at_step(step: int, *, schedule: str, peak_lr: float, total_steps: int, warmup_steps: int = 0,
               final_ratio: float = 0.0) -> float:
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
    """Set every group's learning rate; a tensor rate (a graphed step's) is written in place."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first group's learning rate as a number (a graphed step keeps it in a tensor)."""
    return float(optimizer.param_groups[0]["lr"])


def plain_state_dict(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with plain-number learning rates (a checkpoint stores no device tensor lr)."""
    state = optimizer.state_dict()
    state["param_groups"] = [{**group, "lr": float(group["lr"])} for group in state["param_groups"]]
    return state
