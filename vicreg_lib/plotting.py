"""Small plotting helpers for the notebooks: show images and augmented views in a grid.

    pictures = to_display(views)                       # normalised (n, 3, h, w) -> (n, h, w, 3) in [0, 1]
    fig = show_image_grid([images, views], ncols=8)   # uint8 images and/or normalised views, in a grid

matplotlib is imported inside the functions that draw, so the package imports without it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from vicreg_lib.data import CIFAR10_MEAN, CIFAR10_STD

__all__ = ["to_display", "show_image_grid"]


def to_display(
    images: torch.Tensor,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> np.ndarray:
    """Images ready for imshow: (n, 3, h, w) -> float32 (n, h, w, 3) in [0, 1].

    uint8 images (0..255) are scaled to [0, 1]; float images are taken to be views normalised
    with `mean`/`std` (what the augmentations return) and are un-normalised, then clipped.
    A single image (3, h, w) is treated as a batch of one.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor (n, 3, h, w), got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must have shape (n, 3, h, w) or (3, h, w), got {tuple(images.shape)}; "
            "permute channels-last arrays with .permute(0, 3, 1, 2)"
        )
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        pixels = images.float() / 255.0
    elif images.is_floating_point():
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        pixels = images.float() * std_t + mean_t
    else:
        raise ValueError(f"images must be uint8 (0..255) or normalised float views, got {images.dtype}")
    return pixels.clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()


def show_image_grid(
    images: torch.Tensor | Sequence[torch.Tensor],
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    row_labels: Sequence[str] | None = None,
    cell_size: float = 1.4,
    suptitle: str | None = None,
    title_size: float = 8.0,
):
    """Draw images (n, 3, h, w) (uint8, or views normalised with the CIFAR-10 mean/std) in a grid.

    images: one batch, or a list of batches (e.g. originals in uint8 and their views) drawn one
    after the other; titles: one per image (or None); ncols: images per row (default: all in one
    row); row_labels: one per row, written left of the row. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    if not batches:
        raise ValueError("show_image_grid needs at least one image, got an empty list")
    pictures = np.concatenate([to_display(batch) for batch in batches])
    n = pictures.shape[0]
    if n == 0:
        raise ValueError("show_image_grid needs at least one image, got an empty batch")
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images; pass one title per image or None")
    ncols = n if ncols is None else ncols
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = math.ceil(n / ncols)
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"got {len(row_labels)} row labels for {nrows} rows; pass one per row or None")
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_size * ncols, cell_size * nrows + 0.3), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= n:
            ax.axis("off")
            continue
        ax.imshow(pictures[index], interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[index], fontsize=title_size)
    if row_labels is not None:
        for row, label in enumerate(row_labels):
            axes[row, 0].set_ylabel(label, fontsize=title_size + 1)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
