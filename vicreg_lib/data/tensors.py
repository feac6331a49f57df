"""What the loaders share and what is done with loaded tensors: errors, label checks, subsets, hashes."""

import hashlib

import numpy as np
import torch

Loaded = tuple[torch.Tensor, torch.Tensor, list[str]]  # images uint8 (N, 3, H, W), labels int64 (N,), classes
WAYS_OUT = ("use VICREG_DATA=npz:/path/to/cifar10_mini.npz, archive:/path/to/cifar10_jpeg.tar.gz, "
            "folder:/path/to/images, or synthetic")


class DataSpecError(ValueError):
    """A data spec that cannot be loaded; the message names the spec and what to use instead."""


class LabelError(ValueError):
    """Labels that are not one integer class id per sample."""


def check_labels(labels, num_rows: int, name: str, num_classes: int | None = None) -> None:
    """LabelError unless labels are (num_rows,) integer ids in [0, num_classes) (an empty set is refused)."""
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != num_rows:
        raise LabelError(f"{name}_labels must be 1-D with one label per sample ({num_rows}), "
                         f"got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise LabelError(f"{name}_labels must be integer class ids, got dtype {labels.dtype}")
    if num_rows == 0:
        raise LabelError(f"the {name} set is empty; pass at least one sample")
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise LabelError(f"{name}_labels must be >= 0, got {low}")
    if num_classes is not None and high >= num_classes:
        raise LabelError(f"{name}_labels go up to {high} but there are only {num_classes} classes "
                         f"(ids 0..{num_classes - 1}); pass num_classes={high + 1} or fix the labels")


def random_subset(images: torch.Tensor, labels: torch.Tensor, size: int | None,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` seeded random images (N, ...) and their labels (N,), in the set's order; all when None."""
    if size is None or size >= images.shape[0]:
        return images, labels
    keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return images[keep], labels[keep]


def fingerprint(*tensors: torch.Tensor | np.ndarray) -> str:
    """16 hex digits of blake2b over the tensors' dtypes, shapes and contents, in order."""
    digest = hashlib.blake2b(digest_size=8)
    for tensor in tensors:
        tensor = torch.as_tensor(tensor).detach()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)};".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # any dtype, bf16 too
    return digest.hexdigest()
