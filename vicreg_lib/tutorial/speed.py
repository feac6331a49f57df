"""Images per second of the two augmentation pipelines, for benchmarks/ and notebook 01. An image
counts once per pair of views; only warm work is timed."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader

from ..augment import BatchAugment, TransformedImages, ViewRecipe, two_views_transform
from ..hardware import synchronize


def per_image_throughput(images: torch.Tensor, recipe: str | tuple[ViewRecipe, ViewRecipe], batch_size: int,
                         workers: int) -> float:
    """Images/s of two_views_transform(recipe) of uint8 (n, 3, h, w) in a DataLoader, after batch 1."""
    loader = DataLoader(TransformedImages(images, two_views_transform(recipe)), batch_size=batch_size,
                        num_workers=workers, shuffle=False)
    iterator = iter(loader)
    first_view, _ = next(iterator)
    start, counted = time.perf_counter(), 0
    for view1, _ in iterator:
        counted += len(view1)
    elapsed = time.perf_counter() - start
    return counted / elapsed if counted else len(first_view) / elapsed


def batched_throughput(images: torch.Tensor, recipe: str | tuple[ViewRecipe, ViewRecipe], batch_size: int,
                       device: torch.device | str) -> float:
    """Images/s of BatchAugment(recipe) over uint8 images (n, 3, h, w) on ``device``, after a warm-up."""
    augment = BatchAugment(recipe).to(device)
    images = images.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    augment(images[:batch_size], generator=generator)
    synchronize(device)
    start = time.perf_counter()
    for begin in range(0, len(images), batch_size):
        augment(images[begin : begin + batch_size], generator=generator)
    synchronize(device)
    return len(images) / (time.perf_counter() - start)
