"""Frozen features and the weighted kNN; the training loop imports it, so it needs nothing else of eval/.

    h = extract_features(model.encoder, images)          # uint8 (N, 3, H, W) -> float32 (N, D), CPU
    h = cached_features(model, images, "runs/cache")     # the same, kept on disk for the next run
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms.functional import normalize
from tqdm.auto import tqdm

from ..data import CIFAR10_MEAN, CIFAR10_STD, check_labels
from ..hardware import resolve_device

__all__ = ["NonFiniteFeaturesError", "normalize_images", "feature_function", "frozen", "accelerator_autocast",
           "require_finite", "extract_features", "cached_features", "features_key", "check_labels", "count_classes", "check_feature_pair",
           "knn_accuracy"]


class NonFiniteFeaturesError(ValueError):
    """Features with NaN or infinite entries (a diverged model)."""


def check_images(images: torch.Tensor, name: str = "images") -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be uint8 (N, 3, H, W) as load_dataset returns them, "
                         f"got {images.dtype} {tuple(images.shape)}")


def check_count(value, name: str, none: str | None = None) -> None:
    if value is None and none is not None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{f' or None ({none})' if none else ''}, got {value!r}")


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 (N, 3, H, W) with the CIFAR-10 mean/std, as the training views are."""
    check_images(images)
    return normalize(images.float() / 255.0, CIFAR10_MEAN, CIFAR10_STD)


def feature_function(model: Callable, which: str = "representation") -> Callable[[torch.Tensor], torch.Tensor]:
    """Normalised batch (b, 3, H, W) -> (b, D): a VICReg model's h or z (`which`), or a bare encoder."""
    if which not in ("representation", "embedding"):
        raise ValueError(f"which must be one of ('representation', 'embedding'), got {which!r}")
    if hasattr(model, "encoder") and hasattr(model, "projector"):
        return model.representation if which == "representation" else model.embed
    if which == "embedding":
        raise ValueError("which='embedding' needs a VICReg model (with a projector); "
                         "a bare encoder only has representations, use which='representation'")
    return model


@contextlib.contextmanager
def frozen(model: Callable, device: torch.device):
    """Run `model` in eval mode on `device`, then restore every submodule's mode and its device."""
    if not isinstance(model, nn.Module):  # a plain function: nothing to switch
        yield
        return
    modes = {m: m.training for m in model.modules()}
    home = next((p.device for p in model.parameters()), device)
    try:
        model.eval().to(device)
        yield
    finally:
        model.to(home)
        for m, was_training in modes.items():
            m.train(was_training)


def accelerator_autocast(device: torch.device):
    """bf16 autocast on CUDA (about twice fp32's throughput), a no-op elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def require_finite(features: torch.Tensor, what: str) -> None:
    bad = (~torch.isfinite(features)).sum().item()
    if bad:
        raise NonFiniteFeaturesError(
            f"{what}: {bad} of {features.numel()} feature values are NaN or infinite; the model's weights are "
            "probably non-finite (a diverged run). Evaluate an earlier checkpoint or retrain with a lower "
            "learning rate")


def extract_features(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 512,
                     device: str | torch.device = "auto", which: str = "representation",
                     progress: bool = False) -> torch.Tensor:
    """Features (N, D) float32 CPU of uint8 images (N, 3, H, W) (or float ones, normalised already) by an
    encoder or a VICReg model's h or z (`which`), in eval mode: `batch_size` changes nothing."""
    fn = feature_function(model, which)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is empty; pass at least one image")
    check_count(batch_size, "batch_size")
    device, chunks = resolve_device(device), []
    bar = tqdm(range(0, images.shape[0], batch_size), desc=f"features ({which})", disable=not progress)
    with frozen(model, device), torch.inference_mode(), accelerator_autocast(device):
        for start in bar:
            x = images[start:start + batch_size].to(device, non_blocking=True)
            chunks.append(fn(normalize_images(x) if x.dtype == torch.uint8 else x.float()).float().cpu())
    # concatenated outside inference mode: an ordinary tensor, usable as a probe's input in autograd
    features = torch.cat(chunks)
    if features.ndim != 2:
        raise ValueError(f"the model returned features of shape {tuple(features.shape)}; expected (N, D)")
    return features


def _digest_tensor(digest, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def features_key(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                 which: str = "representation") -> str:
    """sha256 (hex) of what features depend on: the model's parameters and buffers (BatchNorm statistics
    included), the images (N, 3, H, W) and `which`."""
    if not isinstance(model, nn.Module):
        raise ValueError("features_key needs an nn.Module (its weights identify the features), got "
                         f"{type(model).__name__}; call extract_features for a plain function")
    digest = hashlib.sha256(which.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        _digest_tensor(digest, tensor)
    _digest_tensor(digest, images)
    return digest.hexdigest()


def cached_features(model: nn.Module, images: torch.Tensor, cache_dir: str | os.PathLike,
                    which: str = "representation", **extract_kwargs) -> torch.Tensor:
    """extract_features(model, images, which=which) (N, D), kept in cache_dir/features-<key>.pt: a rerun with
    the same weights and images reads the file instead of computing; other weights or images, another file."""
    path = Path(cache_dir) / f"features-{which}-{features_key(model, images, which)[:24]}.pt"
    if path.is_file():
        try:
            features = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a truncated or foreign file: computed again below and replaced
            features = None
        if isinstance(features, torch.Tensor) and features.ndim == 2 and features.shape[0] == images.shape[0]:
            return features
    features = extract_features(model, images, which=which, **extract_kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(features, partial)
    partial.replace(path)  # atomic: a reader never sees half a file
    return features


def count_classes(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: int | None) -> int:
    """num_classes, checked against the largest label, or the largest label + 1 when None."""
    needed = int(max(train_labels.max(), test_labels.max())) + 1
    if num_classes is not None and num_classes < needed:
        raise ValueError(f"num_classes={num_classes} but the labels go up to {needed - 1}; "
                         f"pass num_classes >= {needed} or fix the labels")
    return needed if num_classes is None else num_classes


def check_feature_pair(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                       test_labels: torch.Tensor, num_classes: int | None = None) -> int:
    """Check features (n, d) / (m, d) with labels (n,) / (m,); return the number of classes."""
    for name, rows, labels in (("train", train_features, train_labels), ("test", test_features, test_labels)):
        if rows.ndim != 2:
            raise ValueError(f"{name}_features must be 2-D (n, d), got shape {tuple(rows.shape)}; "
                             "flatten them or use extract_features")
        check_labels(labels, rows.shape[0], name)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train features have dimension {train_features.shape[1]} but test features "
                         f"have {test_features.shape[1]}; extract both with the same model")
    return count_classes(train_labels, test_labels, num_classes)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, k: int | Sequence[int] = (20, 200), temperature: float = 0.07,
                 num_classes: int | None = None, batch_size: int = 256) -> dict[str, float]:
    """{"knn_top1@{k}": top-1 (%)} per k; neighbour i votes exp(cos_i / T) for its class (InstDisc, DINO).
    k=200 is lightly's CIFAR-10 benchmark, k=20 DINO's; a k above n is clamped (the key keeps it)."""
    n_classes = check_feature_pair(train_features, train_labels, test_features, test_labels, num_classes)
    ks = [k] if isinstance(k, int) else list(k)
    if not ks or any(not isinstance(kk, int) or kk < 1 for kk in ks):
        raise ValueError(f"k must be a positive int or a non-empty sequence of them, got {k!r}")
    if temperature <= 0 or batch_size < 1:
        raise ValueError(f"temperature must be > 0 and batch_size >= 1, got {temperature}, {batch_size}")
    device = train_features.device
    train = F.normalize(train_features.float(), dim=1)  # (n, d), unit rows: dot = cosine
    train_labels = train_labels.to(device)
    k_max = min(max(ks), train.shape[0])
    correct = dict.fromkeys(ks, 0)
    for start in range(0, test_features.shape[0], batch_size):
        test = F.normalize(test_features[start:start + batch_size].to(device).float(), dim=1)  # (b, d)
        labels = test_labels[start:start + batch_size].to(device)
        top_sim, top_idx = (test @ train.T).topk(k_max, dim=1)  # (b, k_max), most similar first
        top_labels, weights = train_labels[top_idx], (top_sim / temperature).exp()  # (b, k_max) each
        for kk in ks:
            votes = torch.zeros(labels.shape[0], n_classes, device=device)  # (b, C)
            votes.scatter_add_(1, top_labels[:, :min(kk, k_max)], weights[:, :min(kk, k_max)])
            correct[kk] += (votes.argmax(dim=1) == labels).sum().item()
    return {f"knn_top1@{kk}": 100.0 * correct[kk] / test_features.shape[0] for kk in ks}
