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


# ----------------------------------------------------------------------------- image trees and archives (tests/data)


def write_png(path: Path, colour: tuple[int, int, int], size: int = 20) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


ARCHIVE_COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def make_image_tree(folder: Path, per_class: dict[str, int] | None = None) -> None:
    """folder/train/<class>/i.png (2 per class) and folder/test/<class>/i.png (1 per class), one
    solid colour per class, 32x32 PNG (lossless, so pixels can be checked exactly)."""
    for split, count in (per_class or {"train": 2, "test": 1}).items():
        for name, colour in ARCHIVE_COLOURS.items():
            for index in range(count):
                write_png(folder / split / name / f"{index}.png", colour, size=32)


def make_archive(tmp_path: Path, name: str = "tiny.tar.gz", top: str | None = "tiny_jpeg") -> Path:
    """An archive of make_image_tree, inside one top folder (as cifar10_jpeg.tar.gz) or at its top."""
    import shutil

    tree = tmp_path / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    make_image_tree(tree / top if top else tree)
    archive = tmp_path / name
    if name.endswith(".zip"):
        import zipfile

        with zipfile.ZipFile(archive, "w") as bundle:
            for file in sorted(tree.rglob("*.png")):
                bundle.write(file, file.relative_to(tree).as_posix())
    else:
        import tarfile

        with tarfile.open(archive, "w:gz" if name.endswith("gz") else "w") as bundle:
            for entry in sorted(tree.iterdir()):
                bundle.add(entry, entry.name)
    return archive


def visible(root: Path) -> list[str]:
    """The folders a later load could use (hidden ones are scratch space)."""
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def make_split_tree(folder: Path, train: str, test: str, size: int = 8) -> None:
    """folder/{train,test}/<class>/0.png, one solid colour per class name (the same in both splits)."""
    colours = {"a": (250, 0, 0), "b": (0, 250, 0), "c": (0, 0, 250), "d": (250, 250, 0)}
    for split, names in (("train", train), ("test", test)):
        for name in names:
            write_png(folder / split / name / "0.png", colours[name], size=size)


def tar_of(folder: Path, archive: Path) -> Path:
    import tarfile

    with tarfile.open(archive, "w:gz") as bundle:
        for entry in sorted(folder.iterdir()):
            bundle.add(entry, entry.name)
    return archive


def bmp_archive(path: Path, colour: tuple[int, int, int]) -> Path:
    """An uncompressed tar of 32x32 BMPs (fixed-size files): another colour gives another archive
    of exactly the same size."""
    import io
    import tarfile

    from PIL import Image

    with tarfile.open(path, "w") as bundle:
        for member in ("train/a/0.bmp", "train/b/0.bmp", "test/a/0.bmp", "test/b/0.bmp"):
            data = io.BytesIO()
            Image.new("RGB", (32, 32), colour).save(data, format="BMP")
            info = tarfile.TarInfo(member)
            info.size, info.mtime = len(data.getvalue()), 0
            bundle.addfile(info, io.BytesIO(data.getvalue()))
    return path


# a run's metrics.jsonl records: the random initialisation's kNN, then two epochs
RECORDS = [
    {"epoch": 0, "step": 0, "knn_top1": 20.0},
    {"epoch": 1, "loss": 30.0, "invariance": 0.5, "variance": 0.8, "covariance": 0.1, "std": 0.2,
     "effective_rank": 5.0, "epoch_time_s": 2.0},
    {"epoch": 2, "loss": 20.0, "invariance": 0.4, "variance": 0.5, "covariance": 0.2, "std": 0.4,
     "effective_rank": 9.0, "epoch_time_s": 2.0, "knn_top1": 30.0},
]
