"""Frozen-feature evaluation of a pretrained encoder: kNN, linear protocols, label efficiency.

The encoder is never trained here. Features come from `features.extract_features`, the linear
protocols ("blog", "standard", "fast") from `linear_eval`, and this module puts them together
into the report of a checkpoint. All accuracies are percentages in [0, 100] on the test split.

Public API (also re-exported here: normalize_images, extract_features from `features`;
PROTOCOLS, linear_eval, linear_probe, describe_protocol from `linear_eval`):

    knn_accuracy(train_features, train_labels, test_features, test_labels, k=(20, 200),
                 temperature=0.07, num_classes=None, batch_size=256)
        -> {"knn_top1@20": ..., "knn_top1@200": ...}   (one key per k; an int k gives one key)
    class_balanced_subset(labels, fraction, generator=None) -> LongTensor (m,)
    label_efficiency(train_features, train_labels, test_features, test_labels,
                     fractions=(0.01, 0.1), seed=0, **probe_kwargs) -> {fraction: top1}
    frozen_feature_report(train_features, train_labels, test_features, test_labels, *,
                          num_classes=None, knn_k=(20, 200), linear=True, probe_epochs=None,
                          label_fractions=(0.01, 0.1), device="auto", seed=0)
        -> {"knn_top1@20", "knn_top1@200", "linear_fast_top1", "linear_fast_top5",
            "label_1%_top1", "label_10%_top1"}: everything that needs only features.
    evaluate_encoder(encoder, train_images, train_labels, test_images, test_labels, *,
                     protocols=("fast",), probe_epochs=None, label_fractions=(0.01, 0.1),
                     knn_k=(20, 200), num_classes=None, batch_size=512, device="auto", seed=0,
                     progress=False)
        -> the report's metrics plus "linear_{protocol}_top1/top5" for each protocol and
           "feature_dim"; refuses non-finite features (NonFiniteFeaturesError, a ValueError).
    evaluate_checkpoint(path, data=None, data_root=None, device="auto", batch_size=512,
                        protocols=("fast",), probe_epochs=None, max_train_images=None,
                        random_init_baseline=False, label_fractions=(0.01, 0.1), seed=0,
                        progress=False) -> dict
        evaluate_encoder's keys plus "checkpoint", "data", "num_train", "num_test", "protocols",
        "probe_epochs" and, with random_init_baseline=True, "random_init": {same metric keys}.
    format_table(results) -> str
        The aligned table printed by `python -m vicreg_lib evaluate CHECKPOINT`.

probe_epochs=None runs each protocol for its own number of epochs (blog 50, standard 100,
fast 100); an int runs every protocol, and the label-efficiency probes, that long.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_pretrained
from .classifier import check_labels
from .data import default_data_spec, load_dataset, random_subset
from .device import resolve_device
from .features import NonFiniteFeaturesError, extract_features, normalize_images, require_finite
from .linear_eval import (
    PROTOCOL_SETTINGS,
    PROTOCOLS,
    check_feature_pair,
    describe_protocol,
    fast_probe_epochs,
    linear_eval,
    linear_probe,
)
from .model import build_model, calibrate_batchnorm

__all__ = [
    "NonFiniteFeaturesError",
    "PROTOCOLS",
    "class_balanced_subset",
    "describe_protocol",
    "evaluate_checkpoint",
    "evaluate_encoder",
    "extract_features",
    "format_table",
    "frozen_feature_report",
    "knn_accuracy",
    "label_efficiency",
    "linear_eval",
    "linear_probe",
    "normalize_images",
]


# ----------------------------------------------------------------------------- weighted kNN


def _check_ks(k: int | Sequence[int]) -> list[int]:
    ks = [k] if isinstance(k, int) else list(k)
    if not ks or any((not isinstance(kk, int)) or kk < 1 for kk in ks):
        raise ValueError(f"k must be a positive int or a non-empty sequence of them, got {k!r}")
    return ks


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

    Each test sample votes over its k most similar train samples; neighbour i adds
    exp(s_i / T) to its class (InstDisc, Wu et al. 2018; DINO), so close neighbours outweigh
    far ones and ties between counts are broken by similarity. k=200 is what lightly's
    CIFAR-10 benchmark reports; k=20 is DINO's. Returns {"knn_top1@{k}": accuracy} for every k
    asked for. A k larger than the train set is clamped to its size; the key keeps the
    requested k. Test samples are processed `batch_size` at a time: memory O(batch_size * n).
    """
    n_classes = check_feature_pair(train_features, train_labels, test_features, test_labels, num_classes)
    ks = _check_ks(k)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

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


# ----------------------------------------------------------------------------- label efficiency


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


def _check_fractions(fractions: Sequence[float]) -> None:
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"fractions must all be in (0, 1], got {fraction}")


def label_efficiency(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    fractions: Sequence[float] = (0.01, 0.1),
    seed: int = 0,
    **probe_kwargs,
) -> dict[float, float]:
    """Linear-probe test top-1 (%) when only `fraction` of the train labels are available,
    for each fraction: {fraction: top1}. The labelled subset is class-balanced
    (`class_balanced_subset`, seeded by `seed`); the probe is the ``fast`` protocol's
    `linear_probe(..., seed=seed, **probe_kwargs)`, always evaluated on the full test set,
    with at least FAST_MIN_STEPS optimizer steps however few the labels (`fast_probe_epochs`)."""
    n_classes = check_feature_pair(train_features, train_labels, test_features, test_labels,
                                   probe_kwargs.get("num_classes"))
    _check_fractions(fractions)
    probe_kwargs["num_classes"] = n_classes
    results = {}
    for fraction in fractions:
        idx = class_balanced_subset(train_labels, fraction, torch.Generator().manual_seed(seed))
        kwargs = {**probe_kwargs, "epochs": fast_probe_epochs(len(idx), probe_kwargs.get("epochs", 100),
                                                              probe_kwargs.get("batch_size", 256))}
        probe = linear_probe(
            train_features[idx.to(train_features.device)], train_labels[idx.to(train_labels.device)],
            test_features, test_labels, seed=seed, **kwargs,
        )
        results[fraction] = probe["top1"]
    return results


# ----------------------------------------------------------------------------- reports


def frozen_feature_report(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int | None = None,
    knn_k: Sequence[int] = (20, 200),
    linear: bool = True,
    probe_epochs: int | None = None,
    label_fractions: Sequence[float] = (0.01, 0.1),
    device: str | torch.device = "auto",
    seed: int = 0,
) -> dict[str, float]:
    """Every number that needs only features (n, d) / (m, d): weighted kNN at each k in
    `knn_k`, the ``fast`` linear probe ("linear_fast_top1/top5", when `linear`) and the
    few-label fast probes ("label_{percent}%_top1" for each fraction of `label_fractions`)."""
    num_classes = check_feature_pair(train_features, train_labels, test_features, test_labels, num_classes)
    _check_fractions(label_fractions)
    pair = (train_features, train_labels, test_features, test_labels)
    on_device = [t.to(resolve_device(device)) for t in pair]  # kNN is one big matmul per test batch
    metrics = dict(knn_accuracy(*on_device, k=tuple(knn_k), num_classes=num_classes))
    epochs = PROTOCOL_SETTINGS["fast"].epochs if probe_epochs is None else probe_epochs
    probe_kwargs = dict(epochs=epochs, num_classes=num_classes, device=device)
    if linear:
        probe = linear_probe(*pair, seed=seed, **probe_kwargs)
        metrics["linear_fast_top1"], metrics["linear_fast_top5"] = probe["top1"], probe["top5"]
    few = label_efficiency(*pair, fractions=label_fractions, seed=seed, **probe_kwargs)
    for fraction, top1 in few.items():
        metrics[f"label_{fraction * 100:g}%_top1"] = top1
    return metrics


def _check_protocols(protocols: Sequence[str]) -> tuple[str, ...]:
    protocols = (protocols,) if isinstance(protocols, str) else tuple(protocols)
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown linear-evaluation protocol(s) {unknown}: use any of {', '.join(PROTOCOLS)}")
    return protocols


def evaluate_encoder(
    encoder: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    protocols: Sequence[str] = ("fast",),
    probe_epochs: int | None = None,
    label_fractions: Sequence[float] = (0.01, 0.1),
    knn_k: Sequence[int] = (20, 200),
    num_classes: int | None = None,
    batch_size: int = 512,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """kNN, the chosen linear protocols and label efficiency of a frozen `encoder` on uint8 images
    (N, 3, H, W) with int labels (N,). Features of the training and test images are computed once
    (normalised) and refused if not finite; "blog" and "standard" train on augmented images
    (`linear_eval`). Returns the metric keys of the module docstring and "feature_dim"."""
    protocols = _check_protocols(protocols)
    for name, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        check_labels(labels, images.shape[0], name, num_classes)
    extract = dict(batch_size=batch_size, device=device, progress=progress)
    train_features = extract_features(encoder, train_images, **extract)
    test_features = extract_features(encoder, test_images, **extract)
    require_finite(train_features, "features of the training images")
    require_finite(test_features, "features of the test images")
    metrics = frozen_feature_report(
        train_features, train_labels, test_features, test_labels, num_classes=num_classes, knn_k=knn_k,
        linear="fast" in protocols, probe_epochs=probe_epochs, label_fractions=label_fractions,
        device=device, seed=seed,
    )
    for protocol in protocols:
        if protocol == "fast":
            continue  # done on the features above
        result = linear_eval(encoder, train_images, train_labels, test_images, test_labels, protocol=protocol,
                             epochs=probe_epochs, device=device, seed=seed, progress=progress,
                             num_classes=num_classes, feature_batch_size=batch_size)
        metrics[f"linear_{protocol}_top1"], metrics[f"linear_{protocol}_top5"] = result["top1"], result["top5"]
    return {**metrics, "feature_dim": int(train_features.shape[1])}


def _setting(config, name: str):
    """A run setting from a checkpoint's config: a plain dict, or an object with attributes."""
    return config.get(name) if isinstance(config, dict) else getattr(config, name, None)


CALIBRATION_IMAGES = 4096  # training images whose statistics a random-init encoder's BatchNorms get


def _random_init_encoder(model: nn.Module, train_images: torch.Tensor, seed: int = 0) -> nn.Module:
    """The encoder of `model`'s architecture at a fresh (seeded) initialisation, built by
    model.build_model as pretraining builds it, so the baseline differs only in training.

    Its BatchNorm statistics come from up to 4,096 training images (model.calibrate_batchnorm):
    at their initial values (mean 0, variance 1) the untrained network's features come out
    unnormalised, tiny and nearly parallel, which is not what a random network computes."""
    arch = getattr(model, "arch", None)
    if not isinstance(arch, dict):
        raise ValueError("the random-init baseline needs the model's architecture (model.arch, set by "
                         "vicreg_lib.model.build_model); this model has none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_model(**arch).encoder
    images = train_images[:CALIBRATION_IMAGES]
    return calibrate_batchnorm(encoder, (normalize_images(images[i:i + 256]) for i in range(0, len(images), 256)))


def evaluate_checkpoint(
    path: str,
    data: str | None = None,
    data_root: str | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 512,
    protocols: Sequence[str] = ("fast",),
    probe_epochs: int | None = None,
    max_train_images: int | None = None,
    random_init_baseline: bool = False,
    label_fractions: Sequence[float] = (0.01, 0.1),
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Evaluate a pretrained checkpoint's frozen encoder representations (`evaluate_encoder`).

    Loads `path` with `checkpoint.load_pretrained` (which refuses non-finite weights), reads
    the train and test splits of `data` (default: the spec the run was trained on, else
    `default_data_spec()`), downloading or unpacking into `data_root` (default: `default_data_root()`,
    never the root stored in the checkpoint, which may come from another machine) and reports weighted kNN at k=20 and k=200, the linear top-1/top-5
    of each protocol in `protocols` ("blog" and "standard" pass over augmented images every
    epoch: slow on a CPU) and the 1%/10%-label fast-probe top-1. `max_train_images` keeps a
    seeded random subset of the train split, for quick looks. `random_init_baseline=True`
    adds the same numbers for the same architecture at random initialisation ("random_init").
    """
    protocols = _check_protocols(protocols)
    if max_train_images is not None and max_train_images < 1:
        raise ValueError(f"max_train_images must be >= 1 or None, got {max_train_images}")
    if probe_epochs is not None and (not isinstance(probe_epochs, int) or probe_epochs < 1):
        raise ValueError(f"probe_epochs must be an int >= 1 or None (each protocol's own), got {probe_epochs!r}")
    _check_fractions(label_fractions)
    model, config = load_pretrained(path, map_location="cpu")
    stored = _setting(config, "data")
    if data is None and stored is not None and not isinstance(stored, str):
        raise ValueError(f"checkpoint {str(path)!r}: its config's data is {stored!r}, not a data spec; pass the "
                         f"data to evaluate on (--data)")
    spec = data or stored or default_data_spec()
    root = data_root  # never the checkpoint's: a file from elsewhere must not decide where this machine writes
    train_images, train_labels, classes = load_dataset(spec, "train", root)
    test_images, test_labels, _ = load_dataset(spec, "test", root)
    train_images, train_labels = random_subset(train_images, train_labels, max_train_images, seed)
    evaluate = dict(protocols=protocols, probe_epochs=probe_epochs, label_fractions=label_fractions,
                    num_classes=len(classes), batch_size=batch_size, device=device, seed=seed, progress=progress)
    images = (train_images, train_labels, test_images, test_labels)
    results: dict = {
        "checkpoint": str(path),
        "data": spec,
        "num_train": int(train_images.shape[0]),
        "num_test": int(test_images.shape[0]),
        "protocols": list(protocols),
        "probe_epochs": {p: PROTOCOL_SETTINGS[p].epochs if probe_epochs is None else probe_epochs for p in protocols},
        **evaluate_encoder(model.encoder, *images, **evaluate),
    }
    if random_init_baseline:
        baseline = evaluate_encoder(_random_init_encoder(model, train_images, seed), *images, **evaluate)
        results["random_init"] = {k: v for k, v in baseline.items() if isinstance(v, float)}
    return results


# ----------------------------------------------------------------------------- the table


METRIC_NAMES = {
    "knn_top1@20": "kNN top-1 (k=20)",
    "knn_top1@200": "kNN top-1 (k=200)",
}


def _metric_name(key: str) -> str:
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    if key.startswith("knn_top1@"):
        return f"kNN top-1 (k={key[len('knn_top1@'):]})"
    if key.startswith("label_") and key.endswith("_top1"):
        return f"linear top-1, fast probe, {key[len('label_'):-len('_top1')]} labels"
    parts = key.split("_")
    if len(parts) == 3 and parts[0] == "linear" and parts[1] in PROTOCOLS:
        return f"linear {parts[2][:3]}-{parts[2][3:]} ({parts[1]} protocol)"
    return key


def _info_text(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def format_table(results: dict) -> str:
    """An aligned plain-text table of `evaluate_checkpoint`'s results: a header with the
    non-metric entries, then one row per metric (%), with a "random init" column when the
    baseline is present."""
    baseline = results.get("random_init")
    metrics = {k: v for k, v in results.items() if isinstance(v, float)}
    info = {k: v for k, v in results.items() if k != "random_init" and k not in metrics}
    lines = [f"{key}: {_info_text(value)}" for key, value in info.items()]
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
