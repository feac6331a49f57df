"""Images per second of the two augmentation pipelines on the same images.

    per-image: two_views_transform(recipe) in a torch DataLoader (workers 0, 2, os.cpu_count())
    batched:   BatchAugment(recipe) on whole batches, on the CPU (and on CUDA if available)

An image counts once per pair of views. Images come from VICREG_DATA when it is an npz: spec
(e.g. the shared cifar10_mini.npz), else from the synthetic set.

    python benchmarks/augment_throughput.py --n-images 4096 --json runs/augment_throughput.json
    python benchmarks/augment_throughput.py --smoke        # a few seconds, for CI
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from common import check, run_info, write_json  # noqa: E402  (the script folder is on sys.path)
from vicreg_lib.augment import BatchAugment, two_views_transform
from vicreg_lib.data import load_dataset


class TransformedImages(Dataset):
    """uint8 images (n, 3, h, w) -> transform(image), one image per item."""

    def __init__(self, images: torch.Tensor, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index])


def load_images(n: int) -> tuple[torch.Tensor, str]:
    """n uint8 images (n, 3, 32, 32), repeating the set if it is smaller; and the spec used."""
    spec = os.environ.get("VICREG_DATA", "")
    spec = spec if spec.startswith("npz:") else "synthetic"
    images, _, _ = load_dataset(spec, "train")
    repeats = -(-n // len(images))
    return images.repeat(repeats, 1, 1, 1)[:n].contiguous(), spec


def per_image_throughput(images: torch.Tensor, recipe: str, batch_size: int, workers: int) -> float:
    """Images/s through a DataLoader, timed from the first batch (worker start-up excluded)."""
    loader = DataLoader(
        TransformedImages(images, two_views_transform(recipe)),
        batch_size=batch_size,
        num_workers=workers,
        shuffle=False,
    )
    iterator = iter(loader)
    first_view, _ = next(iterator)
    start, counted = time.perf_counter(), 0
    for view1, _ in iterator:
        counted += len(view1)
    elapsed = time.perf_counter() - start
    return counted / elapsed if counted else len(first_view) / elapsed


def batched_throughput(images: torch.Tensor, recipe: str, batch_size: int, device: str) -> float:
    """Images/s of BatchAugment over the images already on `device`, after one warm-up batch."""
    augment = BatchAugment(recipe).to(device)
    images = images.to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    augment(images[:batch_size], generator=generator)
    sync()
    start = time.perf_counter()
    for begin in range(0, len(images), batch_size):
        augment(images[begin : begin + batch_size], generator=generator)
    sync()
    return len(images) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({0, 2, os.cpu_count() or 1}))
    parser.add_argument(
        "--device",
        nargs="+",
        default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []),
        help="devices for BatchAugment (default: cpu, and cuda if available)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the main process (default 1; 0 keeps torch's default). DataLoader "
        "workers use 1 thread each, so by default BatchAugment gets one core while the "
        "per-image pipeline gets one per worker: a conservative comparison. On a busy "
        "machine more threads than free cores spin-wait on each other and run 10x slower",
    )
    parser.add_argument("--recipe", default="paper")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, runs in seconds (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n_images, args.batch_size, args.workers = 64, 32, [0]

    if args.threads:
        torch.set_num_threads(args.threads)
    images, spec = load_images(args.n_images)
    rows = []
    for workers in args.workers:
        rows.append(
            {
                "pipeline": "per-image DataLoader",
                "device": "cpu",
                "workers": workers,
                "images_per_s": per_image_throughput(images, args.recipe, args.batch_size, workers),
            }
        )
    for device in args.device:
        rows.append(
            {
                "pipeline": "BatchAugment",
                "device": device,
                "workers": None,
                "images_per_s": batched_throughput(images, args.recipe, args.batch_size, device),
            }
        )

    best_per_image = max(r["images_per_s"] for r in rows if r["pipeline"] != "BatchAugment")
    batched_cpu = next(
        (r["images_per_s"] for r in rows if r["pipeline"] == "BatchAugment" and r["device"] == "cpu"), None
    )
    speedup = batched_cpu / best_per_image if batched_cpu else None
    print(
        f"recipe {args.recipe!r}, {args.n_images} images from {spec}, batch {args.batch_size}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    print(f"{'pipeline':<22} {'device':<7} {'workers':>7} {'images/s':>10}")
    for r in rows:
        workers = "" if r["workers"] is None else r["workers"]
        print(f"{r['pipeline']:<22} {r['device']:<7} {workers:>7} {r['images_per_s']:>10.0f}")
    checks = []
    if speedup is not None:
        print(f"speed-up, BatchAugment on cpu vs the best per-image DataLoader: {speedup:.1f}x")
        checks.append(check("CPU: batched augmentation >= 5x the per-image pipeline", speedup >= 5,
                            f"{speedup:.1f}x"))
    result = {
        **run_info(torch.device("cpu")),
        "recipe": args.recipe,
        "n_images": args.n_images,
        "batch_size": args.batch_size,
        "data": spec,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "results": rows,
        "speedup_cpu_vs_best_per_image": speedup,
        "checks": checks,
    }
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
