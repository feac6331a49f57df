"""What a frozen encoder makes of images: normalised inputs in, features (N, D) out.

    features = extract_features(model.encoder, images)        # (N, D) float32 on the CPU

Public API:

    normalize_images(images) -> Tensor
        uint8 (N, 3, H, W) -> float32 (N, 3, H, W), CIFAR-10 mean/std.
    extract_features(model, images, batch_size=512, device="auto",
                     which="representation", progress=False) -> Tensor (N, D)
    feature_function(model, which="representation") -> callable (b, 3, H, W) -> (b, D)
    frozen(model, device)  (context manager) eval mode on `device`, modes and device restored after
    accelerator_autocast(device)  bf16 autocast on CUDA, a no-op elsewhere
    require_finite(features, what) -> None; NonFiniteFeaturesError (a ValueError) otherwise
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..data import CIFAR10_MEAN, CIFAR10_STD
from ..hardware import resolve_device

__all__ = [
    "WHICH",
    "NonFiniteFeaturesError",
    "normalize_images",
    "feature_function",
    "frozen",
    "accelerator_autocast",
    "extract_features",
    "require_finite",
]

WHICH = ("representation", "embedding")


class NonFiniteFeaturesError(ValueError):
    """Features with NaN or infinite entries: the model that made them is broken (diverged)."""


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


def feature_function(model: Callable, which: str = "representation") -> Callable[[torch.Tensor], torch.Tensor]:
    """The function that maps a normalised batch (b, 3, H, W) to the requested features (b, D):
    a VICReg model's `representation` (h) or `embed` (z), or `model` itself for an encoder."""
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
def frozen(model: Callable, device: torch.device):
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


def accelerator_autocast(device: torch.device):
    """bf16 autocast on CUDA (about twice the throughput of fp32), a no-op elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def require_finite(features: torch.Tensor, what: str) -> None:
    """Refuse features with NaN/inf entries: accuracies computed from them would mean nothing."""
    bad = (~torch.isfinite(features)).sum().item()
    if bad:
        raise NonFiniteFeaturesError(
            f"{what}: {bad} of {features.numel()} feature values are NaN or infinite; the model's "
            "weights are probably non-finite (a diverged run). Evaluate an earlier checkpoint "
            "or retrain with a lower learning rate"
        )


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
    fn = feature_function(model, which)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is empty; pass at least one image")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = resolve_device(device)

    chunks = []
    starts = range(0, images.shape[0], batch_size)
    bar = tqdm(starts, total=math.ceil(images.shape[0] / batch_size), desc=f"features ({which})",
                       disable=not progress)
    with frozen(model, device), torch.inference_mode(), accelerator_autocast(device):
        for start in bar:
            x = images[start : start + batch_size].to(device, non_blocking=True)
            x = normalize_images(x) if x.dtype == torch.uint8 else x.float()
            chunks.append(fn(x).float().cpu())
    # Concatenating outside inference mode gives an ordinary tensor, usable in autograd
    # (e.g. as the input of a linear probe).
    features = torch.cat(chunks)
    if features.ndim != 2:
        raise ValueError(f"the model returned features of shape {tuple(features.shape)}; expected (N, D)")
    return features
