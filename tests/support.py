"""Small helpers shared by the unit tests (pytest puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
import torch


def gaussian_clusters(n_per_class: int, num_classes: int, dim: int = 32, spread: float = 1.0, seed: int = 0):
    """Features drawn around well-separated random class centres: (n, dim), labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    centres = 6.0 * torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    features = centres[labels] + spread * torch.randn(labels.shape[0], dim, generator=g)
    perm = torch.randperm(labels.shape[0], generator=g)
    return features[perm], labels[perm]


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
