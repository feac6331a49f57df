"""Frozen-feature evaluation of a pretrained encoder: kNN, linear probe, label efficiency.

The encoder is never trained here. Features are computed once with
`extract_features` and every protocol works on those tensors, so a full
evaluation costs one forward pass over the data plus a few cheap linear fits.

Public API (all accuracies are percentages in [0, 100]):

    normalize_images(images) -> Tensor
        uint8 (N, 3, H, W) -> float32 (N, 3, H, W), CIFAR-10 mean/std.
    extract_features(model, images, batch_size=512, device="auto",
                     which="representation", progress=False) -> Tensor (N, D)
        float32 on CPU. `model` is an encoder nn.Module (or any callable) or a
        VICReg model; `which` picks its representation h or its embedding z.
    knn_accuracy(train_features, train_labels, test_features, test_labels,
                 k=(20, 200), temperature=0.07, num_classes=None,
                 batch_size=256) -> {"knn_top1@20": ..., "knn_top1@200": ...}
        Always a dict, one key "knn_top1@{k}" per requested k.
    linear_probe(train_features, train_labels, test_features, test_labels,
                 epochs=100, lr=1e-3, weight_decay=1e-6, batch_size=256,
                 num_classes=None, device="auto", seed=0)
        -> {"top1", "top5", "train_top1", "num_train", "history"}
    linear_probe_augmented(encoder, train_images, train_labels, test_images,
                           test_labels, epochs=10, recipe="blog", transform=None,
                           normalize_test=True, lr=1e-3, weight_decay=0.0,
                           batch_size=256, num_classes=None, device="auto",
                           seed=0, progress=False)
        -> {"top1", "top5", "train_top1", "history"}
        The blog post's variant: the linear layer sees freshly augmented
        training images every epoch (normalize_test=False reproduces its
        unnormalised test images).
    class_balanced_subset(labels, fraction, generator=None) -> LongTensor
    label_efficiency(train_features, train_labels, test_features, test_labels,
                     fractions=(0.01, 0.1), seed=0, **probe_kwargs)
        -> {fraction: top1}
    evaluate_checkpoint(path, data=None, data_root=None, device="auto",
                        batch_size=512, probe_epochs=100,
                        max_train_images=None, random_init_baseline=False,
                        label_fractions=(0.01, 0.1), seed=0,
                        progress=False) -> dict
        Keys: "knn_top1@20", "knn_top1@200", "linear_top1", "linear_top5",
        "label_1%_top1", "label_10%_top1" (floats, %; a k above the train-set
        size is clamped, the key keeps the k), plus "checkpoint", "data",
        "num_train", "num_test", "feature_dim" and, with
        random_init_baseline=True, "random_init": {same metric keys}.
    format_table(results) -> str
        The aligned table printed by `python -m vicreg_lib evaluate CHECKPOINT`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import CIFAR10_MEAN, CIFAR10_STD
from .distributed import resolve_device

__all__ = [
    "normalize_images",
    "extract_features",
    "knn_accuracy",
    "linear_probe",
    "linear_probe_augmented",
    "class_balanced_subset",
    "label_efficiency",
    "evaluate_checkpoint",
    "format_table",
]

WHICH = ("representation", "embedding")


# ----------------------------------------------------------------------------
# small helpers


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    """Wrap `iterable` in the package's progress bar when asked to."""
    if not enabled:
        return iterable
    try:
        from .progress import progress_bar
    except ImportError:
        from tqdm.auto import tqdm as progress_bar
    return progress_bar(iterable, total=total, desc=desc)


def _check_features_labels(
    features: torch.Tensor, labels: torch.Tensor, name: str, what: str = "features"
) -> None:
    """One clear error for the common ways a (features, labels) pair is wrong."""
    if features.ndim != 2:
        raise ValueError(
            f"{name}_features must be 2-D (n, d), got shape {tuple(features.shape)}; "
            "flatten them or use extract_features"
        )
    if labels.ndim != 1:
        raise ValueError(f"{name}_labels must be 1-D (n,), got shape {tuple(labels.shape)}")
    if features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{name}_{what} has {features.shape[0]} rows but {name}_labels has "
            f"{labels.shape[0]} entries; they must describe the same samples"
        )
    if features.shape[0] == 0:
        raise ValueError(f"the {name} set is empty; pass at least one sample")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name}_labels must be integer class ids, got dtype {labels.dtype}")
    if labels.min() < 0:
        raise ValueError(f"{name}_labels must be >= 0, got {int(labels.min())}")


def _check_pair(train_features, train_labels, test_features, test_labels) -> None:
    _check_features_labels(train_features, train_labels, "train")
    _check_features_labels(test_features, test_labels, "test")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train features have dimension {train_features.shape[1]} but test features "
            f"have {test_features.shape[1]}; extract both with the same model"
        )


def _num_classes(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: int | None) -> int:
    needed = int(max(train_labels.max(), test_labels.max())) + 1
    if num_classes is None:
        return needed
    if num_classes < needed:
        raise ValueError(f"num_classes={num_classes} but the labels go up to {needed - 1}")
    return num_classes


def _topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of rows whose label is among the k largest logits."""
    k = min(k, logits.shape[1])
    topk = logits.topk(k, dim=1).indices  # (n, k)
    hit = (topk == labels[:, None]).any(dim=1)
    return 100.0 * hit.float().mean().item()


# ----------------------------------------------------------------------------
# features


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> float32 (N, 3, H, W) standardised with the
    CIFAR-10 channel mean/std, exactly as the training views are."""
    if images.dtype != torch.uint8:
        raise ValueError(
            f"normalize_images expects uint8 images (N, 3, H, W), got dtype {images.dtype}; "
            "float images are assumed to be normalised already"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
    mean = torch.tensor(CIFAR10_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _feature_fn(model: Callable, which: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pick the function that maps a normalised batch to the requested features."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    is_vicreg = hasattr(model, "encoder") and hasattr(model, "projector")
    if is_vicreg:
        return model.representation if which == "representation" else model.embed
    if which == "embedding":
        raise ValueError(
            "which='embedding' needs a VICReg model (with a projector); "
            "a bare encoder only has representations, use which='representation'"
        )
    return model


@contextlib.contextmanager
def _frozen(model: Callable, device: torch.device):
    """Run `model` in eval mode on `device`; afterwards put back every submodule's
    train/eval flag and the model's original device."""
    module = model if isinstance(model, nn.Module) else None
    if module is None:  # a plain function: nothing to switch
        yield
        return
    modes = {m: m.training for m in module.modules()}
    first_param = next(module.parameters(), None)
    home = first_param.device if first_param is not None else device
    try:
        module.eval()
        module.to(device)
        yield
    finally:
        module.to(home)
        for m, was_training in modes.items():
            m.train(was_training)


def _autocast(device: torch.device):
    """bf16 autocast on CUDA (about twice the throughput of fp32), a no-op elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def extract_features(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int = 512,
    device: str | torch.device = "auto",
    which: str = "representation",
    progress: bool = False,
) -> torch.Tensor:
    """Frozen features of `images`: (N, D) float32 on the CPU.

    model:  an encoder nn.Module (or any callable (b, 3, H, W) -> (b, D)), or a
            VICReg model, whose `representation` (h) or `embed` (z) is used
            according to `which`.
    images: uint8 (N, 3, H, W), normalised here with the CIFAR-10 mean/std, or
            float (N, 3, H, W) taken as already normalised.

    The model runs in eval mode (BatchNorm uses its running statistics, so the
    result does not depend on `batch_size`) under `torch.inference_mode`, with
    bf16 autocast on CUDA. Each submodule's train/eval mode and the model's
    device are restored afterwards.
    """
    fn = _feature_fn(model, which)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is empty; pass at least one image")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = resolve_device(device)

    chunks = []
    starts = range(0, images.shape[0], batch_size)
    n_batches = math.ceil(images.shape[0] / batch_size)
    with _frozen(model, device), torch.inference_mode(), _autocast(device):
        for start in _progress(starts, n_batches, f"features ({which})", progress):
            x = images[start : start + batch_size].to(device, non_blocking=True)
            x = normalize_images(x) if x.dtype == torch.uint8 else x.float()
            chunks.append(fn(x).float().cpu())
    # Concatenating outside inference mode gives an ordinary tensor, usable in autograd
    # (e.g. as the input of a linear probe).
    features = torch.cat(chunks)
    if features.ndim != 2:
        raise ValueError(f"the model returned features of shape {tuple(features.shape)}; expected (N, D)")
    return features


# ----------------------------------------------------------------------------
# weighted kNN


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int | Sequence[int] = (20, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Weighted k-nearest-neighbour top-1 accuracy (%) on cosine similarity.

    Each test sample votes over its k most similar train samples; neighbour i
    adds exp(s_i / T) to its class (InstDisc, Wu et al. 2018; DINO), so close
    neighbours outweigh far ones and ties between counts are broken by
    similarity. Returns {"knn_top1@{k}": accuracy} for every k asked for
    (an int k gives a one-key dict). A k larger than the train set is clamped
    to its size; the key keeps the requested k. Test samples are processed
    `batch_size` at a time so memory is O(batch_size * n_train).
    """
    _check_pair(train_features, train_labels, test_features, test_labels)
    ks = [k] if isinstance(k, int) else list(k)
    if not ks or any((not isinstance(kk, int)) or kk < 1 for kk in ks):
        raise ValueError(f"k must be a positive int or a non-empty sequence of them, got {k!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_classes = _num_classes(train_labels, test_labels, num_classes)

    device = train_features.device
    train = F.normalize(train_features.float(), dim=1)  # (n, d), unit rows: dot = cosine
    train_labels = train_labels.to(device)
    k_max = min(max(ks), train.shape[0])
    correct = {kk: 0 for kk in ks}
    for start in range(0, test_features.shape[0], batch_size):
        test = F.normalize(test_features[start : start + batch_size].to(device).float(), dim=1)
        labels = test_labels[start : start + batch_size].to(device)
        sim = test @ train.T  # (b, n) cosine similarities
        top_sim, top_idx = sim.topk(k_max, dim=1)  # (b, k_max), most similar first
        top_labels = train_labels[top_idx]  # (b, k_max)
        weights = (top_sim / temperature).exp()  # (b, k_max) vote of each neighbour
        for kk in ks:
            kk_eff = min(kk, k_max)
            votes = torch.zeros(labels.shape[0], n_classes, device=device)
            votes.scatter_add_(1, top_labels[:, :kk_eff], weights[:, :kk_eff])  # (b, C)
            correct[kk] += (votes.argmax(dim=1) == labels).sum().item()
    n_test = test_features.shape[0]
    return {f"knn_top1@{kk}": 100.0 * correct[kk] / n_test for kk in ks}


# ----------------------------------------------------------------------------
# linear probe on frozen features


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    batch_size: int = 256,
    num_classes: int | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
) -> dict:
    """Standard linear evaluation: one nn.Linear trained with cross-entropy on frozen features.

    Features are standardised with the train set's per-dimension mean/std (the
    same thing a BatchNorm without affine parameters does at eval time, but
    fixed, so every epoch sees the same inputs). The layer starts at zero (the
    problem is convex, so no random init is needed) and is trained with Adam
    and a cosine learning-rate decay to zero; all features sit on `device` as
    one tensor, shuffled with a generator seeded by `seed`, so the result is
    deterministic for a given seed.

    Returns {"top1", "top5" (test, %), "train_top1" (%), "num_train",
    "history": mean train loss per epoch}.
    """
    _check_pair(train_features, train_labels, test_features, test_labels)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_classes = _num_classes(train_labels, test_labels, num_classes)
    device = resolve_device(device)

    x_train = train_features.to(device).float()  # (n, d)
    x_test = test_features.to(device).float()  # (m, d)
    y_train = train_labels.to(device).long()
    y_test = test_labels.to(device).long()
    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0, correction=0).clamp_min(1e-6)  # constant dims stay finite
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std

    n, d = x_train.shape
    classifier = nn.Linear(d, n_classes).to(device)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)

    history = []
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(device)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                loss = F.cross_entropy(classifier(x_train[idx]), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * idx.shape[0]
            history.append(total / n)

    with torch.no_grad():
        test_logits = classifier(x_test)
        train_logits = classifier(x_train)
    return {
        "top1": _topk_accuracy(test_logits, y_test, 1),
        "top5": _topk_accuracy(test_logits, y_test, 5),
        "train_top1": _topk_accuracy(train_logits, y_train, 1),
        "num_train": n,
        "history": history,
    }


def linear_probe_augmented(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 10,
    recipe: str = "blog",
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    normalize_test: bool = True,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    num_classes: int | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """The blog post's linear evaluation: a linear layer trained on features of
    freshly augmented training images every epoch, the encoder frozen.

    encoder:      an encoder nn.Module (or callable) or a VICReg model (its
                  representation is used); kept in eval mode, never updated.
    train_images, test_images: uint8 (N, 3, H, W); labels int64 (N,).
    transform:    uint8 batch (b, 3, H, W) on `device` -> normalised float
                  (b, 3, H, W); default: the first view of `BatchAugment(recipe)`
                  drawn with a generator seeded by `seed`.
    normalize_test: the blog post's eval script feeds test images scaled to
                  [0, 1] but *not* normalised with the CIFAR-10 mean/std, unlike
                  its training images. True (default) normalises them like the
                  training views; False reproduces that quirk.

    The head is BatchNorm1d(affine=False) -> Linear (zero init), trained with
    Adam and a cosine decay: the BatchNorm copes with features whose scale
    changes with each augmentation and freezes its running statistics at test
    time. Costs one encoder forward per training image per epoch, unlike
    `linear_probe`, which reuses features computed once.

    Returns {"top1", "top5" (test, %), "train_top1" (% on the augmented
    images of the last epoch), "history": mean train loss per epoch}.
    """
    for name, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"{name}_images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        _check_features_labels(images.flatten(1), labels, name, "images")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if train_images.shape[0] < 2:
        raise ValueError("linear_probe_augmented needs at least 2 training images (its head has a BatchNorm)")
    n_classes = _num_classes(train_labels, test_labels, num_classes)
    device = resolve_device(device)
    features_of = _feature_fn(encoder, "representation")
    generator = torch.Generator().manual_seed(seed)
    if transform is None:
        from .augment import BatchAugment

        augment = BatchAugment(recipe).to(device)

        def transform(x: torch.Tensor) -> torch.Tensor:
            return augment(x, generator=generator)[0]

    # Test features once, frozen. normalize_test=False: float in [0, 1], which
    # extract_features takes as already normalised (the blog post's quirk).
    test_inputs = test_images if normalize_test else test_images.float() / 255.0
    test_features = extract_features(encoder, test_inputs, batch_size, device, progress=progress)

    dim = test_features.shape[1]
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, n_classes))
    nn.init.zeros_(head[1].weight)
    nn.init.zeros_(head[1].bias)
    head.to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    n = train_images.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)

    history = []
    with _frozen(encoder, device):
        for _ in _progress(range(epochs), epochs, "augmented linear probe", progress):
            order = torch.randperm(n, generator=generator)
            total_loss, correct, seen = 0.0, 0, 0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                if idx.shape[0] < 2:  # BatchNorm cannot train on a lone sample: skip it this epoch
                    continue
                x = train_images[idx].to(device, non_blocking=True)
                y = train_labels[idx].to(device)
                with torch.no_grad():
                    views = transform(x)  # (b, 3, H, W) normalised, augmented in float32
                    with _autocast(device):
                        h = features_of(views).float()  # (b, D), no graph back into the encoder
                with torch.enable_grad():
                    logits = head(h)
                    loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total_loss += loss.item() * idx.shape[0]
                correct += (logits.argmax(1) == y).sum().item()
                seen += idx.shape[0]
            history.append(total_loss / seen)

    head.eval()
    with torch.no_grad():
        test_logits = head(test_features.to(device))
    y_test = test_labels.to(device)
    return {
        "top1": _topk_accuracy(test_logits, y_test, 1),
        "top5": _topk_accuracy(test_logits, y_test, 5),
        "train_top1": 100.0 * correct / seen,
        "history": history,
    }


# ----------------------------------------------------------------------------
# label efficiency


def class_balanced_subset(
    labels: torch.Tensor, fraction: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices of a random subset with `fraction` of each class's samples
    (rounded, at least one per class present). Sorted, int64 (m,)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if labels.ndim != 1 or labels.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}")
    labels = labels.cpu()
    chosen = []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()  # (n_c,)
        take = max(1, round(fraction * members.shape[0]))
        chosen.append(members[torch.randperm(members.shape[0], generator=generator)[:take]])
    return torch.cat(chosen).sort().values


def label_efficiency(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    fractions: Sequence[float] = (0.01, 0.1),
    seed: int = 0,
    **probe_kwargs,
) -> dict[float, float]:
    """Linear-probe test top-1 (%) when only `fraction` of the train labels are
    available, for each fraction: {fraction: top1}. The labelled subset is
    class-balanced (`class_balanced_subset`, seeded by `seed`); the probe is
    `linear_probe(..., seed=seed, **probe_kwargs)` and is always evaluated on
    the full test set."""
    _check_pair(train_features, train_labels, test_features, test_labels)
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"fractions must all be in (0, 1], got {fraction}")
    probe_kwargs.setdefault("num_classes", _num_classes(train_labels, test_labels, None))
    results = {}
    for fraction in fractions:
        idx = class_balanced_subset(train_labels, fraction, torch.Generator().manual_seed(seed))
        idx = idx.to(train_features.device)
        probe = linear_probe(
            train_features[idx], train_labels[idx.to(train_labels.device)],
            test_features, test_labels, seed=seed, **probe_kwargs,
        )
        results[fraction] = probe["top1"]
    return results


# ----------------------------------------------------------------------------
# a whole checkpoint


def _random_init_encoder(config, seed: int = 0) -> nn.Module:
    """The encoder of the run's architecture at its fresh initialisation (seeded),
    built the way pretraining builds it, so the baseline differs only in training."""
    from .train import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(config).encoder


def _frozen_feature_metrics(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    probe_epochs: int,
    label_fractions: Sequence[float],
    device: str | torch.device,
    seed: int,
) -> dict[str, float]:
    """kNN, linear probe and label-efficiency numbers for one set of features."""
    pair = (train_features, train_labels, test_features, test_labels)
    on_device = [t.to(resolve_device(device)) for t in pair]  # kNN is one big matmul per test batch
    metrics = dict(knn_accuracy(*on_device, k=(20, 200), num_classes=num_classes))
    probe = linear_probe(*pair, epochs=probe_epochs, num_classes=num_classes, device=device, seed=seed)
    metrics["linear_top1"] = probe["top1"]
    metrics["linear_top5"] = probe["top5"]
    few = label_efficiency(
        *pair, fractions=label_fractions, seed=seed,
        epochs=probe_epochs, num_classes=num_classes, device=device,
    )
    for fraction, top1 in few.items():
        metrics[f"label_{fraction * 100:g}%_top1"] = top1
    return metrics


def evaluate_checkpoint(
    path: str,
    data: str | None = None,
    data_root: str | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 512,
    probe_epochs: int = 100,
    max_train_images: int | None = None,
    random_init_baseline: bool = False,
    label_fractions: Sequence[float] = (0.01, 0.1),
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Evaluate a pretrained checkpoint on frozen encoder representations.

    Loads `path` with `checkpoint.load_pretrained`, reads the train and test
    splits of `data` (default: the spec the run was trained on, else
    `default_data_spec()`), extracts representations once and reports the
    weighted kNN top-1 at k=20 and k=200, the linear-probe top-1/top-5 and the
    1%/10%-label linear-probe top-1 (all %, on the test split).
    `max_train_images` keeps a random (seeded) subset of the train split, for
    quick looks. With `random_init_baseline=True` the same numbers for the same
    architecture at random initialisation are added under "random_init".
    """
    from .checkpoint import load_pretrained
    from .data import default_data_spec, load_dataset, random_subset

    if max_train_images is not None and max_train_images < 1:
        raise ValueError(f"max_train_images must be >= 1 or None, got {max_train_images}")
    model, config = load_pretrained(path, map_location="cpu")
    spec = data or getattr(config, "data", None) or default_data_spec()
    root = data_root or getattr(config, "data_root", None)
    train_images, train_labels, classes = load_dataset(spec, "train", root)
    test_images, test_labels, _ = load_dataset(spec, "test", root)
    train_images, train_labels = random_subset(train_images, train_labels, max_train_images, seed)
    num_classes = max(len(classes), _num_classes(train_labels, test_labels, None))

    def metrics_of(encoder: nn.Module) -> tuple[dict[str, float], int]:
        extract = dict(batch_size=batch_size, device=device, progress=progress)
        train_features = extract_features(encoder, train_images, **extract)
        test_features = extract_features(encoder, test_images, **extract)
        metrics = _frozen_feature_metrics(
            train_features, train_labels, test_features, test_labels,
            num_classes, probe_epochs, label_fractions, device, seed,
        )
        return metrics, train_features.shape[1]

    metrics, feature_dim = metrics_of(model.encoder)
    results: dict = {
        "checkpoint": str(path),
        "data": spec,
        "num_train": int(train_images.shape[0]),
        "num_test": int(test_images.shape[0]),
        "feature_dim": int(feature_dim),
        **metrics,
    }
    if random_init_baseline:
        results["random_init"], _ = metrics_of(_random_init_encoder(config, seed))
    return results


METRIC_NAMES = {
    "knn_top1@20": "kNN top-1 (k=20)",
    "knn_top1@200": "kNN top-1 (k=200)",
    "linear_top1": "linear probe top-1",
    "linear_top5": "linear probe top-5",
}


def _metric_name(key: str) -> str:
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    if key.startswith("label_") and key.endswith("_top1"):
        return f"linear probe top-1, {key[len('label_'):-len('_top1')]} labels"
    return key


def format_table(results: dict) -> str:
    """An aligned plain-text table of `evaluate_checkpoint`'s results: a header
    with the non-metric entries, then one row per metric (%), with a
    "random init" column when the baseline is present."""
    baseline = results.get("random_init")
    metrics = {k: v for k, v in results.items() if isinstance(v, float)}
    info = {k: v for k, v in results.items() if k != "random_init" and k not in metrics}
    lines = [f"{key}: {value}" for key, value in info.items()]
    if lines:
        lines.append("")
    columns = ["pretrained"] + (["random init"] if baseline else [])
    header = "accuracy (%, test split)"
    name_width = max([len(header)] + [len(_metric_name(k)) for k in metrics])
    widths = [max(len(c), 6) for c in columns]
    lines.append("  ".join([header.ljust(name_width)] + [c.rjust(w) for c, w in zip(columns, widths)]))
    lines.append("  ".join(["-" * name_width] + ["-" * w for w in widths]))
    for key, value in metrics.items():
        cells = [f"{value:.2f}"]
        if baseline:
            other = baseline.get(key)
            cells.append("-" if other is None else f"{other:.2f}")
        row = [_metric_name(key).ljust(name_width)] + [c.rjust(w) for c, w in zip(cells, widths)]
        lines.append("  ".join(row))
    return "\n".join(lines)
