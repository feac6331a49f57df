"""Images per second of the two augmentation pipelines on the same images, and the check that
they draw the same augmentations.

    per-image: two_views_transform(recipe) in a torch DataLoader (workers 0, 2, os.cpu_count())
    batched:   BatchAugment(recipe) on whole batches, on the CPU (and on CUDA if available)

An image counts once per pair of views. The timing functions live in vicreg_lib.tutorial.speed (the notebooks
import them too). Then, for each op of each view of the recipe, switched on alone with the recipe's
probability: how often each pipeline changes an image (blur with sigma 1-2, so that no blur is too
faint to see); and the crop areas each pipeline draws, compared by a two-sample KS test.
tests/test_augment.py asserts the same properties. Images come from VICREG_DATA when it is an npz:,
archive: or folder: spec (e.g. the shared cifar10_mini.npz), else from the synthetic set.

    python benchmarks/augment_throughput.py --n-images 4096 --json runs/augment_throughput.json
    python benchmarks/augment_throughput.py --smoke        # a few seconds, for CI
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import common  # noqa: E402
from common import check, run_info, write_json  # noqa: E402  (the script folder is on sys.path)
from vicreg_lib.augment import BatchAugment, ViewRecipe, get_recipe, view_transform  # noqa: E402
from vicreg_lib.data import CIFAR10_MEAN, CIFAR10_STD, load_dataset  # noqa: E402
from vicreg_lib.tutorial.speed import batched_throughput, per_image_throughput  # noqa: E402

OPS = {"flip": "flip_p", "colour jitter": "jitter_p", "grayscale": "gray_p", "blur": "blur_p",
       "solarize": "solarize_p"}
NOTHING = ViewRecipe(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0)  # the identity
SIGMAS = 5.0  # a rate more than 5 standard errors away fails the check (1 in 1.7 million by chance)
KS_ALPHA = 1e-6  # the KS test's false-alarm rate


def load_images(n: int) -> tuple[torch.Tensor, str]:
    """n uint8 images (n, 3, 32, 32), repeating the set if it is smaller; and the spec used."""
    spec = os.environ.get("VICREG_DATA", "")
    spec = spec if spec.startswith(("npz:", "archive:", "folder:")) else "synthetic"
    images, _, _ = load_dataset(spec, "train")
    repeats = -(-n // len(images))
    return images.repeat(repeats, 1, 1, 1)[:n].contiguous(), spec


def fire_rates(images: torch.Tensor, recipe: str) -> list[dict]:
    """For each op of each view: the recipe's probability and the fraction of images (n, 3, h, w) uint8
    that each pipeline changes with only that op on. Undercounts ops that leave some images as they
    were (grayscale on a gray image, solarize on one with no pixel >= 0.5), equally for both."""
    n = len(images)
    original = (images.float() / 255 - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        CIFAR10_STD
    ).view(1, 3, 1, 1)

    def changed(views: torch.Tensor) -> float:
        return ((views - original).abs().amax(dim=(1, 2, 3)) > 1e-3).float().mean().item()

    rows = []
    for view_index, view in enumerate(get_recipe(recipe)):
        for op, field in OPS.items():
            p = getattr(view, field)
            probe = dataclasses.replace(NOTHING, blur_sigma=(1.0, 2.0), **{field: p})
            seed = len(rows)  # fresh draws for every row
            batched = BatchAugment((probe, NOTHING))(images, generator=torch.Generator().manual_seed(seed))[0]
            torch.manual_seed(seed)
            transform = view_transform(probe)
            per_image = torch.stack([transform(image) for image in images])
            rows.append({"view": view_index + 1, "op": op, "recipe_p": p, "per_image": changed(per_image),
                         "batched": changed(batched), "standard_error": math.sqrt(p * (1 - p) / n)})
    return rows


def crop_areas(recipe: str, n: int, seed: int = 0) -> dict:
    """Crop areas (fraction of a 32x32 image) of view 1: n boxes from torchvision's RandomResizedCrop
    and n from BatchAugment; their quantiles, a 10-bin histogram and the KS statistic."""
    from torchvision.transforms import v2

    view = get_recipe(recipe)[0]
    torch.manual_seed(seed)
    image, scale, ratio = torch.zeros(3, 32, 32), list(view.crop_scale), list(view.crop_ratio)
    boxes = [v2.RandomResizedCrop.get_params(image, scale, ratio) for _ in range(n)]
    per_image = torch.tensor([height * width / 32**2 for _, _, height, width in boxes])
    params, _ = BatchAugment(recipe).sample_params(n, 32, 32, torch.Generator().manual_seed(seed))
    batched = params["crop_area"]
    quantiles = torch.tensor([0.1, 0.5, 0.9])
    return {
        "n": n,
        "crop_scale": list(view.crop_scale),
        "quantiles": quantiles.tolist(),
        "per_image_quantiles": per_image.quantile(quantiles).tolist(),
        "batched_quantiles": batched.quantile(quantiles).tolist(),
        "histogram_edges": torch.linspace(0, 1, 11).tolist(),
        "per_image_histogram": (torch.histc(per_image, bins=10, min=0, max=1) / n).tolist(),
        "batched_histogram": (torch.histc(batched, bins=10, min=0, max=1) / n).tolist(),
        "ks_statistic": common.ks_statistic(per_image, batched),
        "ks_critical": math.sqrt(-math.log(KS_ALPHA / 2) / 2) * math.sqrt(2 / n),
    }


def print_validation(rates: list[dict], crops: dict, recipe: str) -> list[dict]:
    """Print the fire rates and crop areas of both pipelines; return their PASS/FAIL checks."""
    print(f"\nhow often each op fires, recipe {recipe!r}: fraction of images changed with only that op on")
    print(f"{'view':>4} {'op':<14} {'recipe p':>8} {'per-image':>9} {'batched':>8} {'std err':>8}")
    for r in rates:
        print(f"{r['view']:>4} {r['op']:<14} {r['recipe_p']:>8.2f} {r['per_image']:>9.3f} "
              f"{r['batched']:>8.3f} {r['standard_error']:>8.3f}")
    # the two pipelines undercount alike, so they must agree with each other within sampling error
    worst = max(abs(r["per_image"] - r["batched"]) / max(r["standard_error"] * math.sqrt(2), 1e-9)
                for r in rates)
    checks = [check("fire rates: batched = per-image within 5 standard errors", worst <= SIGMAS,
                    f"largest gap {worst:.1f} standard errors")]
    print(f"\ncrop areas of view 1, {crops['n']} boxes each (recipe scale {crops['crop_scale']})")
    print(f"{'area':<10} {'per-image':>9} {'batched':>8}")
    edges = crops["histogram_edges"]
    for low, high, a, b in zip(edges, edges[1:], crops["per_image_histogram"], crops["batched_histogram"]):
        print(f"{low:.1f}-{high:.1f}    {a:>9.3f} {b:>8.3f}")
    for q, a, b in zip(crops["quantiles"], crops["per_image_quantiles"], crops["batched_quantiles"]):
        print(f"{round(q * 100)}% quantile {a:>7.3f} {b:>8.3f}")
    checks.append(check(f"crop areas: same distribution (KS test, false-alarm rate {KS_ALPHA:g})",
                        crops["ks_statistic"] < crops["ks_critical"],
                        f"KS {crops['ks_statistic']:.4f} < {crops['ks_critical']:.4f}"))
    return checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-images", type=int, default=4096, help="images timed (default 4096)")
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
    parser.add_argument("--recipe", default="paper", help="augmentation recipe: blog, paper or fast")
    parser.add_argument("--rate-images", type=int, default=1000,
                        help="images per fire-rate measurement (default 1000; the standard error is "
                        "at most 0.5/sqrt(n))")
    parser.add_argument("--crop-boxes", type=int, default=20_000, help="crop boxes drawn per pipeline")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, runs in seconds (CI)")
    args = parser.parse_args(argv)
    get_recipe(args.recipe)  # an unknown name: one clear error before any work
    if args.smoke:
        args.n_images, args.batch_size, args.workers = 64, 32, [0]
        args.rate_images, args.crop_boxes = 64, 2000
    return args


def measure_throughput(images: torch.Tensor, args: argparse.Namespace) -> list[dict]:
    """One row per per-image DataLoader (per worker count) and per BatchAugment device."""
    rows = [{"pipeline": "per-image DataLoader", "device": "cpu", "workers": workers,
             "images_per_s": per_image_throughput(images, args.recipe, args.batch_size, workers)}
            for workers in args.workers]
    rows += [{"pipeline": "BatchAugment", "device": device, "workers": None,
              "images_per_s": batched_throughput(images, args.recipe, args.batch_size, device)}
             for device in args.device]
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images, spec = load_images(max(args.n_images, args.rate_images))
    rows = measure_throughput(images[: args.n_images], args)
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
    rates = fire_rates(images[: args.rate_images], args.recipe)
    crops = crop_areas(args.recipe, args.crop_boxes)
    checks += print_validation(rates, crops, args.recipe)
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
        "fire_rates": rates,
        "crop_areas": crops,
        "checks": checks,
    }
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
