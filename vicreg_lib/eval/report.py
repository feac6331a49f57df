"""A pretrained encoder's kNN, linear and label-efficiency report (% on the test split), beside the
same architecture at random initialisation. Functions take an EvalConfig and/or its fields as keywords.
Metric keys: "knn_top1@{k}", "linear_{protocol}_top1/top5", "label_{percent}%_top1".

    print(format_table(evaluate_checkpoint("runs/vicreg/checkpoint.pt", protocols=("fast", "standard"))))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from ..checkpoint import load_pretrained
from ..data import default_data_spec, load_dataset, random_subset
from ..hardware import resolve_device
from ..model import VICReg, build_model, calibrate_batchnorm
from .features import (check_count, check_feature_pair, check_labels, extract_features, knn_accuracy,
                       normalize_images, require_finite)
from .probes import PROTOCOLS, check_fractions, label_efficiency, linear_eval, linear_probe

__all__ = ["EvalConfig", "CALIBRATION_IMAGES", "frozen_feature_report", "encoder_report", "random_init_model",
           "evaluate_checkpoint", "text_table", "format_table"]

CALIBRATION_IMAGES = 4096  # training images whose statistics an untrained network's BatchNorms get


@dataclass(frozen=True)
class EvalConfig:
    """Every choice of an evaluation. probe_epochs=None: each protocol's own; an int: every probe's."""

    protocols: tuple[str, ...] = ("fast",)
    probe_epochs: int | None = None
    label_fractions: tuple[float, ...] = (0.01, 0.1)
    knn_k: tuple[int, ...] = (20, 200)
    batch_size: int = 512  # of feature extraction
    device: str | torch.device = "auto"
    seed: int = 0
    progress: bool = False
    # evaluate_checkpoint only
    data: str | None = None  # None: the spec the run was trained on
    data_root: str | None = None  # None: the default data root, never the checkpoint's (another machine's)
    max_train_images: int | None = None  # a seeded random subset of the train split, for quick looks
    random_init_baseline: bool = False

    def __post_init__(self) -> None:
        for name in ("protocols", "label_fractions", "knn_k"):  # one value, or any sequence, as a tuple
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, (str, int, float)) else tuple(value))
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown:
            raise ValueError(f"unknown linear-evaluation protocol(s) {unknown}: use any of {', '.join(PROTOCOLS)}")
        check_count(self.probe_epochs, "probe_epochs", none="each protocol's own")
        check_count(self.max_train_images, "max_train_images", none="all")
        check_fractions(self.label_fractions)

    def epochs_of(self, protocol: str) -> int:
        return PROTOCOLS[protocol].epochs if self.probe_epochs is None else self.probe_epochs


def frozen_feature_report(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                          test_labels: torch.Tensor, config: EvalConfig | None = None, *,
                          num_classes: int | None = None, linear: bool = True, **overrides) -> dict[str, float]:
    """kNN at config.knn_k, fast probe (if `linear`) and few-label probes of features (n, d) / (m, d)."""
    config = dataclasses.replace(config or EvalConfig(), **overrides)
    num_classes = check_feature_pair(train_features, train_labels, test_features, test_labels, num_classes)
    pair = (train_features, train_labels, test_features, test_labels)
    on_device = [t.to(resolve_device(config.device)) for t in pair]  # kNN is one big matmul per test batch
    metrics = dict(knn_accuracy(*on_device, k=config.knn_k, num_classes=num_classes))
    probe = dict(epochs=config.epochs_of("fast"), num_classes=num_classes, device=config.device)
    if linear:
        result = linear_probe(*pair, seed=config.seed, **probe)
        metrics["linear_fast_top1"], metrics["linear_fast_top5"] = result["top1"], result["top5"]
    few = label_efficiency(*pair, fractions=config.label_fractions, seed=config.seed, **probe)
    metrics.update({f"label_{fraction * 100:g}%_top1": top1 for fraction, top1 in few.items()})
    return metrics


def encoder_report(encoder: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
                   test_images: torch.Tensor, test_labels: torch.Tensor, config: EvalConfig | None = None, *,
                   num_classes: int | None = None, **overrides) -> dict:
    """`frozen_feature_report` on uint8 images (N, 3, H, W), plus config.protocols and "feature_dim"."""
    config = dataclasses.replace(config or EvalConfig(), **overrides)
    for name, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        check_labels(labels, images.shape[0], name, num_classes)
    extract = dict(batch_size=config.batch_size, device=config.device, progress=config.progress)
    train_features = extract_features(encoder, train_images, **extract)
    test_features = extract_features(encoder, test_images, **extract)
    require_finite(train_features, "features of the training images")
    require_finite(test_features, "features of the test images")
    metrics = frozen_feature_report(train_features, train_labels, test_features, test_labels, config,
                                    num_classes=num_classes, linear="fast" in config.protocols)
    for protocol in config.protocols:
        if protocol != "fast":  # fast ran on the features above
            result = linear_eval(encoder, train_images, train_labels, test_images, test_labels, protocol=protocol,
                                 epochs=config.probe_epochs, device=config.device, seed=config.seed,
                                 progress=config.progress, num_classes=num_classes,
                                 feature_batch_size=config.batch_size)
            metrics[f"linear_{protocol}_top1"], metrics[f"linear_{protocol}_top5"] = result["top1"], result["top5"]
    return {**metrics, "feature_dim": int(train_features.shape[1])}


def random_init_model(arch: dict, train_images: torch.Tensor, seed: int = 0) -> VICReg:
    """`build_model(**arch)` seeded as pretraining starts, its BatchNorms calibrated on a random
    CALIBRATION_IMAGES of train_images (N, 3, H, W): uncalibrated, its embeddings read as collapsed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(**arch)
    n = train_images.shape[0]
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:CALIBRATION_IMAGES].sort().values
    images = train_images[keep] if n > CALIBRATION_IMAGES else train_images
    batches = (normalize_images(images[i:i + 256]) for i in range(0, images.shape[0], 256))
    calibrate_batchnorm(nn.Sequential(model.encoder, model.projector), batches)
    return model.eval()


def evaluate_checkpoint(path: str, config: EvalConfig | None = None, **overrides) -> dict:
    """`encoder_report` of a checkpoint's encoder on config.data (default: its own), random init optional."""
    config = dataclasses.replace(config or EvalConfig(), **overrides)
    model, stored = load_pretrained(path, map_location="cpu")
    stored_spec = stored.get("data") if isinstance(stored, dict) else getattr(stored, "data", None)
    if config.data is None and stored_spec is not None and not isinstance(stored_spec, str):
        raise ValueError(f"checkpoint {str(path)!r}: its config's data is {stored_spec!r}, not a data spec; pass the "
                         f"data to evaluate on (--data)")
    spec = config.data or stored_spec or default_data_spec()
    train_images, train_labels, classes = load_dataset(spec, "train", config.data_root)
    test_images, test_labels, _ = load_dataset(spec, "test", config.data_root)
    train_images, train_labels = random_subset(train_images, train_labels, config.max_train_images, config.seed)
    images = (train_images, train_labels, test_images, test_labels)
    results: dict = {"checkpoint": str(path), "data": spec, "num_train": int(train_images.shape[0]),
                     "num_test": int(test_images.shape[0]), "protocols": list(config.protocols),
                     "probe_epochs": {p: config.epochs_of(p) for p in config.protocols},
                     **encoder_report(model.encoder, *images, config, num_classes=len(classes))}
    if config.random_init_baseline:
        baseline = random_init_model(model.arch, train_images, config.seed).encoder
        metrics = encoder_report(baseline, *images, config, num_classes=len(classes))
        results["random_init"] = {k: v for k, v in metrics.items() if isinstance(v, float)}
    return results


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 0) -> str:
    """Header, a rule of dashes, rows; the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def _metric_name(key: str) -> str:
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
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def format_table(results: dict) -> str:
    """`evaluate_checkpoint`'s results as text: the facts, then one row per metric (and random init)."""
    baseline = results.get("random_init")
    metrics = {k: v for k, v in results.items() if isinstance(v, float)}
    info = [f"{k}: {_info_text(v)}" for k, v in results.items() if k != "random_init" and k not in metrics]
    header = ["accuracy (%, test split)", "pretrained"] + (["random init"] if baseline else [])
    rows = [[_metric_name(key), f"{value:.2f}"] + ([] if not baseline else
            ["-" if baseline.get(key) is None else f"{baseline[key]:.2f}"]) for key, value in metrics.items()]
    return "\n".join(info + [""] * bool(info) + [text_table(header, rows, left=1)])
