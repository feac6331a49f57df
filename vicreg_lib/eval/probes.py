"""Linear probes of a frozen encoder under named protocols (`describe_protocol`; their numbers do not
compare), and `fit_classifier`, the cross-entropy loop of the probes and the supervised baseline.

    linear_eval(model.encoder, train_images, train_labels, test_images, test_labels, protocol="standard")

All report the final epoch (the official script reports the best test epoch, peeking at the test set).
blog: augustwester/vicreg 89eab04's eval.py exactly, test images only scaled to [0, 1]; standard: the
official evaluate.py at CIFAR size, lr 0.3 its --lr-head default (docs/design.md); fast: ours, on
standardised features computed once, Adam, agreeing with scikit-learn's LogisticRegression (tests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import normalize
from tqdm.auto import tqdm

from ..augment import resized_crop_flip, sample_crop_boxes
from ..data import CIFAR10_MEAN, CIFAR10_STD
from ..hardware import resolve_device
from ..optim import SCHEDULES, lr_at_step, set_lr
from .features import (accelerator_autocast, check_count, check_feature_pair, check_images, check_labels,
                       count_classes, extract_features, feature_function, frozen, require_finite)

__all__ = ["Optimization", "FitResult", "fit_classifier", "topk_accuracy", "LinearProtocol", "PROTOCOLS",
           "describe_protocol", "linear_eval", "linear_probe", "fast_probe_epochs", "class_balanced_subset",
           "check_fractions", "label_efficiency", "one_cpu_thread"]

CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range
FAST_MIN_STEPS = 1000  # the fast probe's floor of optimizer steps on small train sets


@dataclass(frozen=True)
class Optimization:
    """How a classifier is optimised. schedule (optim.SCHEDULES) moves per schedule_unit: "step", or
    "epoch" as the eval scripts' CosineAnnealingLR; warmup in those units; ends at final_ratio * lr."""

    optimizer: str = "sgd"  # or "adam"
    lr: float = 0.1
    momentum: float = 0.9  # SGD only, as nesterov
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"
    schedule_unit: str = "step"
    warmup: int = 0
    final_ratio: float = 0.0
    batch_size: int = 256

    def __post_init__(self) -> None:
        for name, allowed in (("optimizer", ("sgd", "adam")), ("schedule", SCHEDULES),
                              ("schedule_unit", ("step", "epoch"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Optimization.{name} = {getattr(self, name)!r}; use one of {allowed}")
        for name in ("lr", "momentum", "weight_decay", "final_ratio", "warmup"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Optimization.{name} = {value!r} must be a finite number >= 0")
        if self.lr == 0:
            raise ValueError("Optimization.lr must be > 0")
        check_count(self.batch_size, "Optimization.batch_size")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("Optimization.nesterov needs optimizer='sgd' with momentum > 0")

    def build_optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                               weight_decay=self.weight_decay)

    def lr_at(self, position: float, total: float) -> float:  # position of total: steps, epochs or seconds
        return lr_at_step(position, schedule=self.schedule, peak_lr=self.lr, total_steps=total,
                          warmup_steps=self.warmup, final_ratio=self.final_ratio)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, train_top1, lr, seconds
    steps: int = 0
    seconds: float = 0.0


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of rows of logits (n, C) whose label (n,) is among the k largest logits."""
    topk = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (n, k)
    return 100.0 * (topk == labels[:, None]).any(dim=1).float().mean().item()


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _check_fit_args(model, inputs, labels, optimization, epochs, time_budget_s) -> None:
    if not isinstance(optimization, Optimization):
        raise ValueError(f"optimization must be an Optimization, got {type(optimization).__name__}")
    if (epochs is None) == (time_budget_s is None):
        raise ValueError("give exactly one of epochs (a number of passes) or time_budget_s (seconds of training), "
                         f"got epochs={epochs!r}, time_budget_s={time_budget_s!r}")
    check_count(epochs, "epochs", none="with time_budget_s")
    if time_budget_s is not None and not (math.isfinite(time_budget_s) and time_budget_s > 0):
        raise ValueError(f"time_budget_s must be > 0 seconds, got {time_budget_s}")
    if time_budget_s is not None and optimization.warmup:
        raise ValueError("a warmup counts steps or epochs; with time_budget_s use warmup=0")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]  # the last one's outputs: the classes
    check_labels(labels, inputs.shape[0], "train", linears[-1].out_features if linears else None)
    if inputs.shape[0] < 2 and _has_batchnorm(model):
        raise ValueError("a model with BatchNorm layers needs at least 2 training samples")


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy step on x (b, ...), y (b,): loss () and correct count (), left on the device (no sync)."""
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)  # (b, C)
    loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.detach().argmax(1) == y).sum()


def fit_classifier(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, optimization: Optimization, *,
                   epochs: int | None = None, time_budget_s: float | None = None,
                   prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   generator: torch.Generator | None = None, amp: bool = False, progress: bool = False,
                   desc: str = "classifier") -> FitResult:
    """Train `model` in place (then eval mode) with cross-entropy on inputs (n, ...) on its device, labels
    (n,); prepare: batch -> input under no_grad; a time_budget_s runs the schedule on the clock."""
    _check_fit_args(model, inputs, labels, optimization, epochs, time_budget_s)
    device, n, batch = inputs.device, inputs.shape[0], optimization.batch_size
    labels = labels.to(device).long()
    optimizer = optimization.build_optimizer(model.parameters())
    steps_per_epoch = math.ceil(n / batch)
    per_epoch = optimization.schedule_unit == "epoch"
    total = 1.0 if time_budget_s else epochs if per_epoch else epochs * steps_per_epoch
    min_batch = 2 if _has_batchnorm(model) else 1
    shuffle_device = generator.device if generator is not None else device
    bar = tqdm(total=epochs * steps_per_epoch if epochs else round(time_budget_s), desc=desc, disable=not progress)
    result = FitResult()
    model.train()
    start = time.perf_counter()
    while epochs is None or len(result.history) < epochs:
        order = torch.randperm(n, generator=generator, device=shuffle_device).to(device)
        loss_sum = torch.zeros((), device=device)  # summed on the device: one host sync per epoch
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, lr, out_of_time = 0, None, False
        for first in range(0, n, batch):
            elapsed = time.perf_counter() - start
            if time_budget_s is not None and elapsed >= time_budget_s:
                out_of_time = True
                break
            idx = order[first:first + batch]
            if idx.shape[0] < min_batch:
                continue
            at = elapsed / time_budget_s if time_budget_s else len(result.history) if per_epoch else result.steps
            lr = optimization.lr_at(at, total)
            set_lr(optimizer, lr)
            with torch.no_grad():
                x = prepare(inputs[idx]) if prepare is not None else inputs[idx]
            loss, hits = _train_step(model, optimizer, x, labels[idx], amp)
            result.steps += 1
            loss_sum += loss * idx.shape[0]
            correct += hits
            seen += idx.shape[0]
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


@dataclass(frozen=True)
class LinearProtocol:
    name: str
    source: str  # where the protocol comes from, in one line
    epochs: int
    optimization: Optimization
    head_init: str  # "default": nn.Linear's; "normal": N(0, 0.01), zero bias; "zeros"
    augment: bool  # True: crop + flip freshly every epoch (an encoder pass per image per epoch)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    standardize: bool = False  # standardise features with the train set's mean/std
    normalize_test: bool = True  # False: test images only scaled to [0, 1]


PROTOCOLS: dict[str, LinearProtocol] = {  # batch 256 and a cosine to 0 in each
    "blog": LinearProtocol(
        name="blog", source="the blog post's eval.py (augustwester/vicreg 89eab04)", epochs=50,
        optimization=Optimization(optimizer="sgd", lr=0.02, momentum=0.0, weight_decay=1e-6, schedule_unit="epoch"),
        head_init="default", augment=True, crop_scale=(0.2, 1.0), normalize_test=False),
    "standard": LinearProtocol(
        name="standard", source="the official VICReg evaluate.py, frozen weights, final epoch reported", epochs=100,
        optimization=Optimization(optimizer="sgd", lr=0.3, momentum=0.9, weight_decay=1e-6, schedule_unit="epoch"),
        head_init="normal", augment=True, crop_scale=(0.08, 1.0), normalize_test=True),
    "fast": LinearProtocol(
        name="fast", source="this package: standardised features computed once, Adam", epochs=100,
        optimization=Optimization(optimizer="adam", lr=1e-3, weight_decay=1e-6, schedule_unit="step"),
        head_init="zeros", augment=False, standardize=True, normalize_test=True),
}
_FAST = PROTOCOLS["fast"]


def _protocol(name: str) -> LinearProtocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown linear-evaluation protocol {name!r}: use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def describe_protocol(name: str) -> str:
    """One paragraph saying what protocol `name` does."""
    p, o = _protocol(name), _protocol(name).optimization
    optimizer = f"SGD (momentum {o.momentum:g})" if o.optimizer == "sgd" else "Adam"
    train = (f"crop (scale {p.crop_scale[0]:g}-{p.crop_scale[1]:g}) + flip, every epoch" if p.augment
             else "features computed once" + (", standardised" if p.standardize else ""))
    return (f"{p.name}: {p.source}. {optimizer}, lr {o.lr:g}, weight decay {o.weight_decay:g}, "
            f"{o.schedule} per {o.schedule_unit}, {p.epochs} epochs, batch {o.batch_size}; head init "
            f"{p.head_init}; training images: {train}; test images "
            f"{'normalised' if p.normalize_test else 'NOT normalised (only scaled to [0, 1])'}; "
            "final epoch reported.")


def _new_head(dim: int, num_classes: int, init: str, seed: int, device: torch.device) -> nn.Linear:
    """nn.Linear(dim, num_classes) initialised as `init` says, seeded without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(dim, num_classes)
        if init == "normal":  # the official evaluate.py's
            nn.init.normal_(head.weight, std=0.01)
        elif init == "zeros":  # a convex problem needs no random start
            nn.init.zeros_(head.weight)
        if init != "default":
            nn.init.zeros_(head.bias)
    return head.to(device)


def _scores(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        logits = head(features)  # (m, C)
    labels = labels.to(logits.device)
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5)}


@contextlib.contextmanager
def one_cpu_thread(device: torch.device):
    """On the CPU, torch uses one thread inside: a linear head's steps are too small to share out, and on a busy
    CPU threads that wait for one another make them many times slower. Other devices: nothing changes."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fast_probe_epochs(num_train: int, epochs: int = 100, batch_size: int = 256) -> int:
    """`epochs`, or more to reach FAST_MIN_STEPS steps over `num_train` samples."""
    return max(epochs, math.ceil(FAST_MIN_STEPS / math.ceil(num_train / batch_size)))


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, epochs: int = _FAST.epochs, lr: float = _FAST.optimization.lr,
                 weight_decay: float = _FAST.optimization.weight_decay,
                 batch_size: int = _FAST.optimization.batch_size, num_classes: int | None = None,
                 device: str | torch.device = "auto", seed: int = 0) -> dict:
    """The ``fast`` protocol on features (n, d) / (m, d): {"top1", "top5", "train_top1", "num_train",
    "history", "test_predictions" (m,)}; 100 epochs underfit a few hundred samples (`fast_probe_epochs`)."""
    n_classes = check_feature_pair(train_features, train_labels, test_features, test_labels, num_classes)
    optimization = dataclasses.replace(_FAST.optimization, lr=lr, weight_decay=weight_decay, batch_size=batch_size)
    device = resolve_device(device)
    x_train, x_test = train_features.to(device).float(), test_features.to(device).float()  # (n, d), (m, d)
    mean, std = x_train.mean(dim=0), x_train.std(dim=0, correction=0).clamp_min(1e-6)  # constant dims stay finite
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    head = _new_head(x_train.shape[1], n_classes, _FAST.head_init, seed, device)
    with torch.enable_grad(), one_cpu_thread(device):
        fit = fit_classifier(head, x_train, train_labels, optimization, epochs=epochs,
                             generator=torch.Generator().manual_seed(seed), desc="linear probe (fast)")
    with torch.no_grad():
        predictions = head(x_test).argmax(dim=1).cpu()  # (m,): for confusion matrices and error analysis
    return {**_scores(head, x_test, test_labels), "train_top1": _scores(head, x_train, train_labels)["top1"],
            "num_train": x_train.shape[0], "history": [epoch["loss"] for epoch in fit.history],
            "test_predictions": predictions}


def _augmented_probe(encoder, train_images, train_labels, test_features, test_labels, p: LinearProtocol,
                     epochs: int, num_classes: int, device: torch.device, seed: int, progress: bool) -> dict:
    """The protocol's head on frozen features of a fresh crop + flip of every image every epoch."""
    generator = torch.Generator().manual_seed(seed)  # the order and the crops
    head = _new_head(test_features.shape[1], num_classes, p.head_init, seed, device)
    features_of = feature_function(encoder, "representation")

    def prepare(images: torch.Tensor) -> torch.Tensor:  # uint8 (b, 3, H, W) on the device -> (b, D)
        n, _, height, width = images.shape
        boxes = sample_crop_boxes(n, height, width, p.crop_scale, CROP_RATIO, generator, "cpu")
        flips = torch.rand(n, generator=generator) < 0.5
        x = resized_crop_flip(images.float() / 255.0, boxes.to(device), flips.to(device))  # (b, 3, H, W)
        with accelerator_autocast(device):
            return features_of(normalize(x, CIFAR10_MEAN, CIFAR10_STD)).float()

    with frozen(encoder, device), torch.enable_grad():
        fit = fit_classifier(head, train_images.to(device), train_labels, p.optimization, epochs=epochs,
                             prepare=prepare, generator=generator, progress=progress,
                             desc=f"linear eval ({p.name})")
    if not all(math.isfinite(epoch["loss"]) for epoch in fit.history):
        raise ValueError(f"the {p.name} probe diverged (non-finite training loss) at lr "
                         f"{p.optimization.lr:g}; pass a lower lr")
    return {**_scores(head, test_features.to(device), test_labels), "train_top1": fit.history[-1]["train_top1"],
            "history": fit.history}


def linear_eval(encoder: Callable[[torch.Tensor], torch.Tensor], train_images: torch.Tensor,
                train_labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor,
                protocol: str = "fast", epochs: int | None = None, device: str | torch.device = "auto",
                seed: int = 0, progress: bool = False, *, lr: float | None = None, batch_size: int | None = None,
                normalize_test: bool | None = None, num_classes: int | None = None,
                feature_batch_size: int = 512) -> dict:
    """Linear top-1/top-5 (%) of frozen `encoder` on uint8 images (N, 3, H, W); None keeps the protocol's."""
    p = _protocol(protocol)
    for name, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        check_images(images, f"{name}_images")
        check_labels(labels, images.shape[0], name)
    n_classes = count_classes(train_labels, test_labels, num_classes)
    check_count(epochs, "epochs", none=f"the protocol's {p.epochs}")
    epochs = p.epochs if epochs is None else epochs
    o = dataclasses.replace(p.optimization, lr=p.optimization.lr if lr is None else lr,
                            batch_size=p.optimization.batch_size if batch_size is None else batch_size)
    p = dataclasses.replace(p, optimization=o, normalize_test=p.normalize_test if normalize_test is None
                            else normalize_test)
    device, started = resolve_device(device), time.perf_counter()
    extract = dict(batch_size=feature_batch_size, device=device, progress=progress)
    # normalize_test=False: floats in [0, 1], which extract_features takes as normalised already
    test_features = extract_features(encoder, test_images if p.normalize_test else test_images.float() / 255.0,
                                     **extract)
    require_finite(test_features, "features of the test images")
    if p.augment:
        result = _augmented_probe(encoder, train_images, train_labels, test_features, test_labels, p, epochs,
                                  n_classes, device, seed, progress)
    else:
        train_features = extract_features(encoder, train_images, **extract)
        require_finite(train_features, "features of the training images")
        probe = linear_probe(train_features, train_labels, test_features, test_labels, epochs=epochs, lr=o.lr,
                             weight_decay=o.weight_decay, batch_size=o.batch_size, num_classes=n_classes,
                             device=device, seed=seed)
        result = {key: probe[key] for key in ("top1", "top5", "train_top1")}
        result["history"] = [{"epoch": i + 1, "loss": loss} for i, loss in enumerate(probe["history"])]
    return {**result, "protocol": protocol, "epochs": epochs, "lr": o.lr, "batch_size": o.batch_size,
            "normalize_test": p.normalize_test, "reported": "final epoch", "num_train": int(train_images.shape[0]),
            "seconds": time.perf_counter() - started}


def class_balanced_subset(labels: torch.Tensor, fraction: float,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Sorted int64 indices (m,) of `fraction` of each class's samples (rounded, at least one per class)."""
    check_fractions([fraction])
    if labels.ndim != 1 or labels.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}")
    labels, chosen = labels.cpu(), []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()  # (n_c,)
        take = max(1, round(fraction * members.shape[0]))
        chosen.append(members[torch.randperm(members.shape[0], generator=generator)[:take]])
    return torch.cat(chosen).sort().values


def check_fractions(fractions: Sequence[float]) -> None:
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"fractions must all be in (0, 1], got {fraction}")


def label_efficiency(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                     test_labels: torch.Tensor, fractions: Sequence[float] = (0.01, 0.1), seed: int = 0,
                     **probe_kwargs) -> dict[float, float]:
    """{fraction: test top-1 (%)} of `linear_probe` on a seeded class-balanced `fraction` of the train set."""
    probe_kwargs["num_classes"] = check_feature_pair(train_features, train_labels, test_features, test_labels,
                                                     probe_kwargs.get("num_classes"))
    check_fractions(fractions)
    results = {}
    for fraction in fractions:
        idx = class_balanced_subset(train_labels, fraction, torch.Generator().manual_seed(seed))
        epochs = fast_probe_epochs(len(idx), probe_kwargs.get("epochs", 100), probe_kwargs.get("batch_size", 256))
        subset = (train_features[idx.to(train_features.device)], train_labels[idx.to(train_labels.device)])
        probe = linear_probe(*subset, test_features, test_labels, seed=seed, **{**probe_kwargs, "epochs": epochs})
        results[fraction] = probe["top1"]
    return results
