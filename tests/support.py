"""Small helpers shared by the unit tests (tests/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn


def gaussian_clusters(n_per_class: int, num_classes: int, dim: int = 32, spread: float = 1.0, seed: int = 0):
    """Features drawn around well-separated random class centres: (n, dim), labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    centres = 6.0 * torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    features = centres[labels] + spread * torch.randn(labels.shape[0], dim, generator=g)
    perm = torch.randperm(labels.shape[0], generator=g)
    return features[perm], labels[perm]


class AtenCalls:
    """Counts the aten calls (each one a kernel launch or a view on a GPU) made inside it."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counter.calls += 1
                return func(*args, **(kwargs or {}))

        self.calls, self.mode = 0, Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


class TinyEncoder(nn.Module):
    """A stand-in encoder with BatchNorm, so train and eval mode give different outputs: (n, 3, H, W) -> (n, out_dim)."""

    def __init__(self, out_dim: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, out_dim, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))  # (n, out_dim)


def random_images(n: int, seed: int = 0, size: int = 8) -> torch.Tensor:
    """uint8 noise images (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` (with what it holds) unwritable for real, then writable again.

    A normal user gets chmod 0555; root, whom permissions do not stop, gets the folder
    bind-mounted read-only over itself (skipped where mounting is not allowed)."""
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in [folder, *folder.rglob("*")] if path.is_dir()}
        for path in modes:
            path.chmod(0o555)
        try:
            yield folder
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    done = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount as root to make a folder read-only ({done.stderr.decode().strip()})")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True, capture_output=True)
