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

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .classifier import ClassifierRecipe, check_labels, fit_classifier
from ..hardware import resolve_device
from .features import normalize_images
from ..model import resnet18_cifar

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


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, num_classes: int | None) -> int:
    """Check the data at the door; return the number of classes."""
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (N, 3, H, W) as load_dataset returns them, "
                         f"got {images.dtype} {tuple(images.shape)}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be (N,) with one label per image: {images.shape[0]} images, "
                         f"labels of shape {tuple(labels.shape)}")
    check_labels(labels, images.shape[0], "train", num_classes)
    return int(labels.max()) + 1 if num_classes is None else num_classes


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
    The data sit on the device as one tensor; bf16 autocast on CUDA. Training is
    `classifier.fit_classifier` with SGD (Nesterov momentum) and a cosine to zero.
    Returns a SupervisedResult whose `encoder` is in eval mode on `device`.
    """
    num_classes = _check_inputs(images, labels, num_classes)
    recipe = ClassifierRecipe(optimizer="sgd", lr=lr, momentum=momentum, nesterov=momentum > 0,
                              weight_decay=weight_decay, schedule="cosine", batch_size=batch_size)
    device = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # weight init
        encoder = resnet18_cifar(width)
        classifier = nn.Linear(encoder.out_dim, num_classes)
    network = nn.Sequential(encoder, classifier).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)  # shuffling and augmentation

    def augment(x: torch.Tensor) -> torch.Tensor:
        return random_crop_flip(normalize_images(x), generator=generator)  # (b, 3, H, W)

    fit = fit_classifier(network, images.to(device), labels, recipe, epochs=epochs, time_budget_s=time_budget_s,
                         prepare=augment, generator=generator, amp=device.type == "cuda", progress=progress,
                         desc="supervised")
    return SupervisedResult(encoder, classifier, fit.history, fit.steps, fit.seconds)
