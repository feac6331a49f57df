"""The synthetic set: deterministic class-structured colour images made by code."""

import math

import torch

from .tensors import DataSpecError, Loaded

SYNTHETIC_CLASSES = tuple(f"pattern{k}" for k in range(10))


def load_synthetic(spec: str, arg: str, split: str) -> Loaded:
    """"synthetic[:N[,M]]": N train (2000) and M test images (N // 4, or 500), other draws each."""
    parts = arg.split(",") if arg else ["2000", "500"]
    if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise DataSpecError(f"malformed data spec {spec!r}: use synthetic, synthetic:N (N train, N//4 test "
                            "images) or synthetic:N,M (N train, M test images)")
    sizes = [int(parts[0]), int(parts[1]) if len(parts) == 2 else max(1, int(parts[0]) // 4)]
    images, labels = make_synthetic(sizes[split == "test"], seed=int(split == "test"))
    return images, labels, list(SYNTHETIC_CLASSES)


def make_synthetic(n: int, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """n images uint8 (n, 3, size, size), labels int64 (n,): class k a grating at k * 18 degrees blending
    two class colours (orientation survives colour jitter and grayscale, so views keep the class)."""
    generator = torch.Generator().manual_seed(seed)
    num_classes = len(SYNTHETIC_CLASSES)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    palette = torch.Generator().manual_seed(1234)  # fixed class colours, the same for every split
    colour_a = 0.15 + 0.7 * torch.rand(num_classes, 3, generator=palette)
    colour_b = 0.15 + 0.7 * torch.rand(num_classes, 3, generator=palette)
    angle = labels.float() * (math.pi / num_classes)
    frequency = (2 + labels % 3).float()
    phase = 2 * math.pi * torch.rand(n, generator=generator)
    coords = (torch.arange(size).float() + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (size, size) each
    along = x * angle.cos()[:, None, None] + y * angle.sin()[:, None, None]  # (n, size, size)
    wave = torch.sin(2 * math.pi * frequency[:, None, None] * along + phase[:, None, None])
    blend = (0.5 + 0.5 * wave)[:, None]  # (n, 1, size, size)
    images = blend * colour_a[labels][:, :, None, None] + (1 - blend) * colour_b[labels][:, :, None, None]
    images = images * (0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator))
    images = images + 0.06 * torch.randn(n, 3, size, size, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels.to(torch.int64)
