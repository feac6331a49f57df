"""Images per second of the two augmentation pipelines, for benchmarks/ and notebook 01 (an image
counts once per pair of views; only warm work is timed), and where a training step's time goes, for
notebook 04: ``step_breakdown`` times its parts on the learner's device, ``gpu_step_profile`` reads the
profile measured on a GPU and stored with the repository."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

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


# ---- where the time of one training step goes ------------------------------------------------------

BREAKDOWN_PARTS = ("augment", "forward", "loss", "backward", "optimizer step")
GPU_STEP_PROFILE = "docs/results/gpu_h200_graphed_b256/step-profile.json"  # relative to the checkout root


def _clock(device: torch.device) -> float:
    synchronize(device)  # an accelerator runs asynchronously: wait, or the time lands in a later part
    return time.perf_counter()


def step_breakdown(model: torch.nn.Module, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   augment: BatchAugment, images: torch.Tensor, batch_size: int, steps: int = 5, warmup: int = 1,
                   use_amp: bool = False, seed: int = 0) -> dict[str, float]:
    """Median milliseconds of each of BREAKDOWN_PARTS over ``steps`` training steps (after ``warmup``) on
    random batches of uint8 ``images`` (n, 3, h, w) on the model's device; the steps train the model.

    The device is synchronised between parts, so each part is charged its own work; on a GPU this stops
    the parts overlapping, and their sum can exceed a real step's time."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (n, 3, h, w), got {images.dtype} {tuple(images.shape)}")
    if not 2 <= batch_size <= images.shape[0] or steps < 1 or warmup < 0:
        raise ValueError(f"need 2 <= batch_size <= {images.shape[0]} images, steps >= 1 and warmup >= 0; "
                         f"got batch_size {batch_size}, steps {steps}, warmup {warmup}")
    device = images.device
    generator = torch.Generator(device=device).manual_seed(seed)
    times: dict[str, list[float]] = {part: [] for part in BREAKDOWN_PARTS}
    model.train()
    for index in range(warmup + steps):
        batch = images[torch.randint(images.shape[0], (batch_size,), generator=generator, device=device)]
        marks = [_clock(device)]
        view1, view2 = augment(batch, generator=generator)  # (b, 3, h', w') each
        marks.append(_clock(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            z1, z2 = model(view1, view2)  # (b, d) each
        marks.append(_clock(device))
        loss = loss_fn(z1, z2)
        marks.append(_clock(device))
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        marks.append(_clock(device))
        optimizer.step()
        marks.append(_clock(device))
        if index >= warmup:
            for part, start, end in zip(BREAKDOWN_PARTS, marks, marks[1:]):
                times[part].append((end - start) * 1000)
    return {part: statistics.median(values) for part, values in times.items()}


def gpu_step_profile(checkout: str | Path, batch_size: int = 256) -> dict[str, Any]:
    """The step profile stored with the repository (GPU_STEP_PROFILE, measured by benchmarks/step_profile.py):
    {"device", "batch_size", "augment", "forward+loss+backward", "optimizer step", "eager step", "graphed step"},
    milliseconds, the model the `fast` preset's, forward and backward in bf16."""
    path = Path(checkout) / GPU_STEP_PROFILE
    if not path.is_file():
        raise FileNotFoundError(f"{GPU_STEP_PROFILE} is not in {str(checkout)!r}: pass the root of a checkout "
                                "of the repository (settings.checkout)")
    profile = json.loads(path.read_text())
    parts = profile["parts"].get(str(batch_size))
    if parts is None:
        raise ValueError(f"the stored profile has batch sizes {sorted(profile['parts'], key=int)}, "
                         f"not {batch_size}")
    return {"device": profile["device"], "batch_size": batch_size, "augment": parts["augment"]["ms"],
            "forward+loss+backward": parts["fwd_bwd_bf16"]["ms"], "optimizer step": parts["optimizer"]["ms"],
            "eager step": parts["eager_step"]["ms"], "graphed step": parts["graphed_step"]["ms"]}
