"""Measured runs the notebooks compare a learner's own run against, read from reference_runs.json:

- ``vicreg_gpu``: the `fast` preset pretrained for 100 epochs on one GPU (its kNN accuracy against minutes,
  its fast-probe accuracy, the command that repeats it and the sha256 of its weights);
- ``supervised_gpu``: the same ResNet-18 trained with labels on the same GPU, for the VICReg run's training
  time (equal compute) and for shorter times, on 100%, 10% and 1% of the labels;
- ``quoted``: published figures (the blog post's 500 epochs, solo-learn's 1,000), with their sources.

    run = reference_run()            # the GPU VICReg run
    print(run.describe())
    rows = supervised_reference()    # [{"fraction", "budget_s", "seed", "epochs", "test_top1", ...}]
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["ReferenceRun", "reference_run", "supervised_reference", "quoted_results", "weights_sha256",
           "equal_compute_supervised", "supervised_recipe"]

REFERENCE_FILE = Path(__file__).with_name("reference_runs.json")


@lru_cache(maxsize=1)
def _records() -> dict:
    return json.loads(REFERENCE_FILE.read_text())


@dataclass(frozen=True)
class ReferenceRun:
    name: str
    device: str
    torch: str
    date: str
    preset: str
    epochs: int
    batch_size: int
    train_minutes: float  # the epochs' training time
    wall_minutes: float  # with start-up and the kNN evaluations along the way
    command: str
    knn_k: int
    knn_curve: tuple[tuple[float, int, float], ...]  # (minutes, epoch, kNN top-1 %)
    fast_probe_top1: float
    weights_sha256: str

    @property
    def final_knn_top1(self) -> float:
        return self.knn_curve[-1][2]

    def describe(self) -> str:
        return (f"{self.name}: the `{self.preset}` preset, batch {self.batch_size}, {self.epochs} epochs in "
                f"{self.wall_minutes:.1f} minutes ({self.train_minutes:.1f} of them training; torch {self.torch}). "
                f"kNN (k={self.knn_k}) {self.final_knn_top1:.1f}%, fast linear probe {self.fast_probe_top1:.1f}%. "
                f"To repeat it: {self.command}")


def reference_run() -> ReferenceRun:
    """The GPU VICReg run."""
    record = {k: v for k, v in _records()["vicreg_gpu"].items() if k in ReferenceRun.__dataclass_fields__}
    record["knn_curve"] = tuple(tuple(point) for point in record["knn_curve"])
    return ReferenceRun(**record)


def supervised_reference() -> list[dict]:
    """The supervised runs: fraction of labels, budget_s (training seconds), seed, epochs, test_top1 (%)."""
    return [dict(row) for row in _records()["supervised_gpu"]["runs"]]


def supervised_recipe() -> str:
    return _records()["supervised_gpu"]["recipe"]


def equal_compute_supervised() -> dict:
    """The full-label supervised run whose training time is closest to the VICReg run's."""
    seconds = reference_run().train_minutes * 60
    full = [row for row in supervised_reference() if row["fraction"] == 1.0]
    return min(full, key=lambda row: abs(row["budget_s"] - seconds))


def quoted_results() -> list[dict]:
    """Published figures: name, epochs, top1 (%), metric, source."""
    return [dict(row) for row in _records()["quoted"]]


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file, or of a folder's parts PREFIX.part1ofN.pt .. partNofN.pt joined in order."""
    path, digest = Path(path), hashlib.sha256()
    if path.is_dir():
        parts = sorted(path.glob("*.part*of*.pt"), key=lambda p: int(p.name.rsplit(".part", 1)[1].split("of")[0]))
        if not parts:
            raise FileNotFoundError(f"{str(path)!r} holds no weight parts (PREFIX.partIofN.pt); name a weights "
                                    "file or a folder of its parts")
        files = parts
    else:
        files = [path]
    for file in files:
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(2**20), b""):
                digest.update(chunk)
    return digest.hexdigest()
