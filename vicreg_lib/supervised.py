"""The supervised baseline: the same ResNet-18 trained end to end on the labels.

    result = train_supervised(images, labels, width=64, time_budget_s=600)   # or epochs=30
    features = extract_features(result.encoder, test_images)                # then probe as usual

A self-supervised representation is only interesting next to two references: the same
network at random initialisation (what you get for free) and the same network trained
with the labels for the same time (what the labels buy). This module trains the second.

Recipe: the standard CIFAR one, kept plain on purpose. ResNet-18-cifar encoder + one
linear head, cross-entropy, SGD with momentum 0.9 and weight decay 5e-4, a cosine
learning-rate decay to zero over the budget, and the usual augmentation (reflect-pad
by 4 pixels, random 32x32 crop, horizontal flip), done on whole batches on the device.
With a time budget the cosine runs on wall-clock time, so the schedule ends when the
budget does, whatever the machine's speed.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import resolve_device
from .evaluate import normalize_images
from .model import resnet18_cifar
from .progress import progress_bar

__all__ = ["SupervisedResult", "random_crop_flip", "train_supervised"]


@dataclass
class SupervisedResult:
    """What `train_supervised` returns: the trained encoder (eval mode) is what gets evaluated."""

    encoder: nn.Module
    classifier: nn.Linear
    history: list[dict] = field(default_factory=list)  # one dict per epoch: epoch, loss, train_top1, lr, seconds
    steps: int = 0
    seconds: float = 0.0


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """The standard CIFAR augmentation on a batch: x (n, c, h, w) float -> (n, c, h, w).

    Reflect-pad every side by `padding`, cut a random h x w window per image, mirror half of
    the images left-right. Parameters are drawn on the generator's device (x's without one).
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"random_crop_flip expects a float batch (n, c, h, w), got {x.dtype} {tuple(x.shape)}")
    n, c, h, w = x.shape
    draw_on = generator.device if generator is not None else x.device
    shift = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=draw_on).to(x.device)  # (n, 2)
    flip = (torch.rand(n, generator=generator, device=draw_on) < 0.5).to(x.device)  # (n,)
    padded = F.pad(x, (padding, padding, padding, padding), mode="reflect")  # (n, c, h+2p, w+2p)
    rows = shift[:, 0, None] + torch.arange(h, device=x.device)  # (n, h) source rows per image
    cols = shift[:, 1, None] + torch.arange(w, device=x.device)  # (n, w) source columns per image
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, epochs: int | None, time_budget_s: float | None) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (N, 3, H, W) as load_dataset returns them, "
                         f"got {images.dtype} {tuple(images.shape)}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be (N,) with one label per image: {images.shape[0]} images, "
                         f"labels of shape {tuple(labels.shape)}")
    if (epochs is None) == (time_budget_s is None):
        raise ValueError("give exactly one of epochs (a number of passes) or time_budget_s (seconds of training), "
                         f"got epochs={epochs!r}, time_budget_s={time_budget_s!r}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be > 0 seconds, got {time_budget_s}")


def train_supervised(
    images: torch.Tensor,
    labels: torch.Tensor,
    width: int = 64,
    epochs: int | None = None,
    time_budget_s: float | None = None,
    batch_size: int = 256,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    num_classes: int | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = False,
) -> SupervisedResult:
    """Train resnet18_cifar(width) + a linear head with cross-entropy on (images, labels).

    images: uint8 (N, 3, H, W); labels: int64 (N,). Give `epochs` (deterministic for a seed) or
    `time_budget_s` (train until that many seconds have passed, possibly mid-epoch).
    The data sit on the device as one tensor; bf16 autocast on CUDA.
    Returns a SupervisedResult whose `encoder` is in eval mode on `device`.
    """
    _check_inputs(images, labels, epochs, time_budget_s)
    device = resolve_device(device)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    torch.manual_seed(seed)  # weight init
    generator = torch.Generator(device=device).manual_seed(seed)  # shuffling and augmentation

    encoder = resnet18_cifar(width).to(device)
    classifier = nn.Linear(encoder.out_dim, num_classes).to(device)
    params = list(encoder.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)

    x_all = images.to(device)  # uint8 (N, 3, H, W): resident on the device
    y_all = labels.to(device).long()
    n = x_all.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch if epochs is not None else None

    def fraction_done(step: int, elapsed: float) -> float:
        return step / total_steps if total_steps is not None else elapsed / time_budget_s

    bar = progress_bar(total=total_steps if total_steps is not None else round(time_budget_s),
                       desc="supervised", disable=not progress, unit="step" if total_steps is not None else "s")
    result = SupervisedResult(encoder, classifier)
    encoder.train()
    start = time.perf_counter()
    step, epoch, done = 0, 0, False
    while not done:
        order = torch.randperm(n, generator=generator, device=device)
        loss_sum, correct, seen = 0.0, 0, 0
        for first in range(0, n, batch_size):
            elapsed = time.perf_counter() - start
            if fraction_done(step, elapsed) >= 1.0:
                done = True
                break
            # cosine decay from lr to 0 over the budget (steps or seconds)
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * fraction_done(step, elapsed)))
            idx = order[first:first + batch_size]
            x = random_crop_flip(normalize_images(x_all[idx]), generator=generator)  # (b, 3, H, W)
            y = y_all[idx]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = classifier(encoder(x))  # (b, num_classes)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * y.shape[0]
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.shape[0]
            if total_steps is not None:
                bar.update(1)
            else:
                bar.update(min(round(time.perf_counter() - start), bar.total) - bar.n)
        if seen:
            epoch += 1
            result.history.append({
                "epoch": epoch, "loss": loss_sum / seen, "train_top1": 100.0 * correct / seen,
                "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start,
            })
        if total_steps is not None and step >= total_steps:
            done = True
    bar.close()
    result.steps, result.seconds = step, time.perf_counter() - start
    encoder.eval()
    classifier.eval()
    return result
