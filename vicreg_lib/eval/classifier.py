"""Train a classifier with cross-entropy: the one training routine behind the linear
probes (a head on frozen features) and the supervised baseline (a network and its head).

    recipe = ClassifierRecipe(optimizer="sgd", lr=0.02, momentum=0.0, weight_decay=1e-6)
    fit = fit_classifier(head, features, labels, recipe, epochs=50, generator=g)
    fit.history[-1]   # {"epoch", "loss", "train_top1", "lr", "seconds"} of the final epoch

Everything trained sits in `model`; whatever must stay fixed (a frozen encoder, the
augmentation) goes into `prepare`, which runs on each batch without gradients. The
learning rate of every step is `optim.lr_at_step` of the recipe's schedule, counted in
steps or in epochs (the blog's and the official eval scripts step a CosineAnnealingLR once
per epoch), or in wall-clock time when training runs for a time budget.

Public API:

    ClassifierRecipe(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0,
                     schedule="cosine", schedule_unit="step", warmup=0, final_ratio=0.0,
                     batch_size=256)
    FitResult: history (one dict per epoch), steps, seconds
    fit_classifier(model, inputs, labels, recipe, *, epochs=None, time_budget_s=None,
                   prepare=None, generator=None, amp=False, progress=False, desc="classifier")
        -> FitResult
    check_labels(labels, num_rows, name, num_classes=None) -> None
    topk_accuracy(logits, labels, k) -> float (%)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..optim import SCHEDULES, lr_at_step, set_lr

__all__ = ["CLASSIFIER_OPTIMIZERS", "SCHEDULE_UNITS", "ClassifierRecipe", "FitResult", "check_labels",
           "fit_classifier", "topk_accuracy"]

CLASSIFIER_OPTIMIZERS = ("sgd", "adam")
SCHEDULE_UNITS = ("step", "epoch")


@dataclass(frozen=True)
class ClassifierRecipe:
    """How a classifier is optimised: optimizer, learning-rate schedule, batch size.

    schedule:      one of optim.SCHEDULES ("constant", "cosine", "warmup_cosine").
    schedule_unit: "step" moves the schedule every optimizer step; "epoch" holds the rate for
                   a whole epoch (a CosineAnnealingLR stepped per epoch, as eval scripts do).
    warmup:        warmup length in schedule units (for "warmup_cosine").
    final_ratio:   the cosine ends at final_ratio * lr.
    momentum, nesterov: SGD only.
    """

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"
    schedule_unit: str = "step"
    warmup: int = 0
    final_ratio: float = 0.0
    batch_size: int = 256

    def __post_init__(self) -> None:
        choices = (("optimizer", CLASSIFIER_OPTIMIZERS), ("schedule", SCHEDULES), ("schedule_unit", SCHEDULE_UNITS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"ClassifierRecipe.{name} = {getattr(self, name)!r}; use one of {allowed}")
        for name in ("lr", "momentum", "weight_decay", "final_ratio", "warmup"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"ClassifierRecipe.{name} = {value!r} must be a finite number >= 0")
        if self.lr == 0:
            raise ValueError("ClassifierRecipe.lr must be > 0")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"ClassifierRecipe.batch_size = {self.batch_size!r} must be an int >= 1")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("ClassifierRecipe.nesterov needs optimizer='sgd' with momentum > 0")

    def build_optimizer(self, params) -> torch.optim.Optimizer:
        """The optimizer over `params`; its learning rate is set before every step."""
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                               weight_decay=self.weight_decay)


@dataclass
class FitResult:
    """What `fit_classifier` returns; the model itself is trained in place (left in eval mode)."""

    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, train_top1, lr, seconds
    steps: int = 0
    seconds: float = 0.0


def check_labels(labels: torch.Tensor, num_rows: int, name: str, num_classes: int | None = None) -> None:
    """One clear error for labels that are not (num_rows,) integer class ids in [0, num_classes)."""
    if labels.ndim != 1 or labels.shape[0] != num_rows:
        raise ValueError(f"{name}_labels must be 1-D with one label per sample ({num_rows}), "
                         f"got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name}_labels must be integer class ids, got dtype {labels.dtype}")
    if num_rows == 0:
        raise ValueError(f"the {name} set is empty; pass at least one sample")
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"{name}_labels must be >= 0, got {low}")
    if num_classes is not None and high >= num_classes:
        raise ValueError(f"{name}_labels go up to {high} but there are only {num_classes} classes "
                         f"(ids 0..{num_classes - 1}); pass num_classes={high + 1} or fix the labels")


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of rows of logits (n, C) whose label (n,) is among the k largest logits."""
    k = min(k, logits.shape[1])
    topk = logits.topk(k, dim=1).indices  # (n, k)
    hit = (topk == labels[:, None]).any(dim=1)
    return 100.0 * hit.float().mean().item()


def _output_size(model: nn.Module) -> int | None:
    """Number of classes `model` predicts, read off its last Linear layer (None if it has none)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class _Schedule:
    """The learning rate at each point of training: steps, epochs, or a fraction of a time budget."""

    def __init__(self, recipe: ClassifierRecipe, epochs: int | None, time_budget_s: float | None,
                 steps_per_epoch: int) -> None:
        self.recipe, self.time_budget_s = recipe, time_budget_s
        self.per_epoch = recipe.schedule_unit == "epoch"
        if time_budget_s is not None:
            self.total = 1.0  # the schedule runs on the fraction of the budget spent
        else:
            self.total = epochs if self.per_epoch else epochs * steps_per_epoch

    def lr(self, step: int, epoch: int, elapsed: float) -> float:
        if self.time_budget_s is not None:
            position = elapsed / self.time_budget_s
        else:
            position = epoch if self.per_epoch else step
        r = self.recipe
        return lr_at_step(position, schedule=r.schedule, peak_lr=r.lr, total_steps=self.total,
                          warmup_steps=r.warmup, final_ratio=r.final_ratio)


def _check_fit_args(model, inputs, labels, recipe, epochs, time_budget_s) -> None:
    if not isinstance(recipe, ClassifierRecipe):
        raise ValueError(f"recipe must be a ClassifierRecipe, got {type(recipe).__name__}")
    if (epochs is None) == (time_budget_s is None):
        raise ValueError("give exactly one of epochs (a number of passes) or time_budget_s (seconds of training), "
                         f"got epochs={epochs!r}, time_budget_s={time_budget_s!r}")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if time_budget_s is not None and not (math.isfinite(time_budget_s) and time_budget_s > 0):
        raise ValueError(f"time_budget_s must be > 0 seconds, got {time_budget_s}")
    if time_budget_s is not None and recipe.warmup:
        raise ValueError("a warmup counts steps or epochs; with time_budget_s use warmup=0")
    check_labels(labels, inputs.shape[0], "train", _output_size(model))
    if inputs.shape[0] < 2 and _has_batchnorm(model):
        raise ValueError("a model with BatchNorm layers needs at least 2 training samples")


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step of cross-entropy on x (b, ...) and y (b,): the loss () and the number
    of correct predictions (), both detached and left on the device (no host sync)."""
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)  # (b, C)
    loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.detach().argmax(1) == y).sum()


def fit_classifier(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    recipe: ClassifierRecipe,
    *,
    epochs: int | None = None,
    time_budget_s: float | None = None,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    amp: bool = False,
    progress: bool = False,
    desc: str = "classifier",
) -> FitResult:
    """Train `model` in place with cross-entropy on (inputs, labels); return its history.

    model:   every parameter of it is trained (a head, or nn.Sequential(network, head)); it is
             in train mode while training and left in eval mode.
    inputs:  (n, ...) on the model's device: features (n, d), or images for `prepare`.
    labels:  (n,) int class ids in [0, C), C = the last Linear layer's outputs.
    prepare: batch of inputs (b, ...) -> model input, under torch.no_grad (augmentation, a
             frozen encoder); None feeds the inputs as they are.
    epochs / time_budget_s: exactly one. With a budget, training stops at the first step that
             would start after it (possibly mid-epoch) and the schedule runs on the clock.
    generator: drives the shuffling (and is what `prepare` should use to draw randomness).
    amp:     bf16 autocast around the model (CUDA); the loss is computed in float32.

    A batch of one sample is skipped when `model` has BatchNorm layers (they cannot train on it).
    """
    _check_fit_args(model, inputs, labels, recipe, epochs, time_budget_s)
    device, n = inputs.device, inputs.shape[0]
    labels = labels.to(device).long()
    optimizer = recipe.build_optimizer(model.parameters())
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    schedule = _Schedule(recipe, epochs, time_budget_s, steps_per_epoch)
    min_batch = 2 if _has_batchnorm(model) else 1
    shuffle_device = generator.device if generator is not None else device
    bar = tqdm(total=epochs * steps_per_epoch if epochs else round(time_budget_s), desc=desc,
                       disable=not progress)
    result = FitResult()
    model.train()
    start = time.perf_counter()
    while epochs is None or len(result.history) < epochs:
        order = torch.randperm(n, generator=generator, device=shuffle_device).to(device)
        loss_sum = torch.zeros((), device=device)  # summed on the device: one host sync per epoch
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, lr, out_of_time = 0, None, False
        for first in range(0, n, recipe.batch_size):
            elapsed = time.perf_counter() - start
            if time_budget_s is not None and elapsed >= time_budget_s:
                out_of_time = True
                break
            idx = order[first:first + recipe.batch_size]
            if idx.shape[0] < min_batch:
                continue
            lr = schedule.lr(result.steps, len(result.history), elapsed)
            set_lr(optimizer, lr)
            with torch.no_grad():
                x = prepare(inputs[idx]) if prepare is not None else inputs[idx]
            y = labels[idx]
            loss, hits = _train_step(model, optimizer, x, y, amp)
            result.steps += 1
            loss_sum += loss * y.shape[0]
            correct += hits
            seen += y.shape[0]
            bar.update(1 if epochs else min(round(time.perf_counter() - start), bar.total) - bar.n)
        if seen:
            result.history.append({"epoch": len(result.history) + 1, "loss": loss_sum.item() / seen,
                                   "train_top1": 100.0 * correct.item() / seen, "lr": lr,
                                   "seconds": time.perf_counter() - start})
        if out_of_time or not seen:
            break
    bar.close()
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
