"""The supervised baseline: the same ResNet-18 trained end to end on the labels, the standard CIFAR
way: linear head, cross-entropy, SGD (Nesterov 0.9, weight decay 5e-4), a cosine to zero, reflect-pad 4
+ random crop + flip on the device.

    result = train_supervised(images, labels, width=64, time_budget_s=600)   # or epochs=30
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..hardware import resolve_device
from ..model import resnet18_cifar
from .features import check_images, check_labels, normalize_images
from .probes import FitResult, Optimization, fit_classifier

__all__ = ["SupervisedResult", "random_crop_flip", "train_supervised"]


@dataclass(kw_only=True)
class SupervisedResult(FitResult):
    encoder: nn.Module
    classifier: nn.Linear


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """x (n, c, h, w) float -> (n, c, h, w): a random window of x reflect-padded, half of them mirrored."""
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


def train_supervised(images: torch.Tensor, labels: torch.Tensor, width: int = 64, epochs: int | None = None,
                     time_budget_s: float | None = None, batch_size: int = 256, lr: float = 0.1,
                     weight_decay: float = 5e-4, momentum: float = 0.9, num_classes: int | None = None,
                     device: str | torch.device = "auto", seed: int = 0,
                     progress: bool = False) -> SupervisedResult:
    """resnet18_cifar(width) + a linear head on uint8 images (N, 3, H, W), labels (N,): `fit_classifier`."""
    check_images(images)
    check_labels(labels, images.shape[0], "train", num_classes)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    optimization = Optimization(optimizer="sgd", lr=lr, momentum=momentum, nesterov=momentum > 0,
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

    fit = fit_classifier(network, images.to(device), labels, optimization, epochs=epochs,
                         time_budget_s=time_budget_s, prepare=augment, generator=generator,
                         amp=device.type == "cuda", progress=progress, desc="supervised")
    return SupervisedResult(encoder=encoder, classifier=classifier, **vars(fit))
