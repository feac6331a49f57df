"""Training throughput: the blog post's loop against ours, one trick at a time.

Every variant runs the library's real training loop, `vicreg_lib.train.pretrain`, with the
settings below, so the numbers are what users get. Cumulative variants:

    blog loop (2 workers)       DataLoader + per-image torchvision transforms, float32 (as written)
    blog loop (N workers)       the same with one worker per CPU of this machine
    + data on device, batched   images live on the device, BatchAugment makes both views there
    + bf16 autocast             mixed precision
    + channels-last             NHWC memory format for the convolutions
    + torch.compile             the model compiled by inductor

How a variant is timed: the training set is made exactly `steps x batch` images, so one
epoch is `steps` steps; pretrain runs two epochs and we keep the SECOND epoch's
images_per_s from metrics.jsonl (the first is the warm-up: compilation, cuDNN autotuning,
worker start-up, allocator growth). That epoch's time is extrapolated to a CIFAR-10 epoch
of 50,000 images. A DataLoader restarts its workers every epoch, as in the blog post, so
its start-up is counted once per `steps` steps here (once per 195 in a real epoch): with few
steps that favours our pipeline slightly; use more --steps to shrink it.

    python benchmarks/train_throughput.py                  # GPU: width 64, batch 256, 20 timed steps
    python benchmarks/train_throughput.py --device cpu     # CPU: width 16, batch 256, 2 timed steps
    python benchmarks/train_throughput.py --smoke          # tiny sizes, a few seconds
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

import common  # first: it puts this checkout on sys.path for vicreg_lib
from vicreg_lib.loss import vicreg_loss
from vicreg_lib.train import TrainConfig, build_model as build_vicreg, pretrain, read_metrics

GPU_TARGET_SPEEDUP = 10.0  # our epoch vs the blog loop's (2 workers), same GPU
H100_TARGET_EPOCH_S = 4.0  # ResNet-18 width 64, batch 256, on an H100


@dataclass(frozen=True)
class Variant:
    """One row of the table: how pretrain is configured."""

    name: str
    pipeline: str = "batched"  # "batched" | "dataloader"
    num_workers: int = 2  # dataloader only
    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    compile: bool = False

    def describe(self) -> str:
        parts = [
            f"dataloader, {self.num_workers} workers"
            if self.pipeline == "dataloader"
            else "batched on device"
        ]
        parts.append("bf16" if self.amp else "fp32")
        parts += ["channels-last"] * self.channels_last + ["compile"] * self.compile
        return ", ".join(parts)


def variants(workers: int) -> list[Variant]:
    """The cumulative variants; `workers` is the many-worker DataLoader's worker count."""
    blog = Variant("blog loop (2 workers)", pipeline="dataloader", num_workers=2)
    ours = Variant("+ data on device, batched aug", pipeline="batched")
    return [
        blog,
        dataclasses.replace(blog, name=f"blog loop ({workers} workers = CPUs)", num_workers=workers),
        ours,
        dataclasses.replace(ours, name="+ bf16 autocast", amp=True),
        dataclasses.replace(ours, name="+ channels-last", amp=True, channels_last=True),
        dataclasses.replace(ours, name="+ torch.compile", amp=True, channels_last=True, compile=True),
    ]


def default_sizes(device: torch.device, smoke: bool = False) -> tuple[int, int, int]:
    """(width, batch_size, timed steps) when not given: the headline model on a GPU; on a CPU
    (2 shared cores here, a width-64 step takes tens of seconds) width 16 keeps the run to minutes."""
    if smoke:
        return 8, 8, 1
    return (64, 256, 20) if device.type == "cuda" else (16, 256, 2)


def default_projector(width: int, smoke: bool = False) -> str:
    """TrainConfig's projector; a small one for smoke runs."""
    return "64-64-64" if smoke else TrainConfig().projector


def build_model(width: int, projector: str, device: torch.device) -> torch.nn.Module:
    """The VICReg model (encoder + projector) exactly as pretrain builds it."""
    return build_vicreg(TrainConfig(width=width, projector=projector)).to(device)


def loss_function():
    """(z1, z2) -> the scalar pretrain backpropagates (TrainConfig's coefficients)."""
    config = TrainConfig()
    return lambda z1, z2: vicreg_loss(z1, z2, config.lam, config.mu, config.nu).total


def measure_variant(
    variant: Variant,
    width: int,
    batch_size: int,
    projector: str,
    device: torch.device,
    steps: int,
    recipe: str = "paper",
) -> dict[str, Any]:
    """Run pretrain for a warm-up epoch and a timed epoch of `steps` steps each; return the table row.

    The data set is `steps x batch_size` synthetic images, so an epoch is `steps` steps; the
    timed epoch's images_per_s comes from the run's metrics.jsonl.
    """
    with tempfile.TemporaryDirectory(prefix="vicreg-bench-") as out_dir:
        config = TrainConfig(
            data=f"synthetic:{steps * batch_size},{batch_size}",  # one epoch = `steps` full batches
            width=width,
            projector=projector,
            batch_size=batch_size,
            epochs=2,
            recipe=recipe,
            pipeline=variant.pipeline,
            num_workers=variant.num_workers,
            device=str(device),
            amp="bf16" if variant.amp else "off",
            channels_last="on" if variant.channels_last else "off",
            compile=variant.compile,
            out_dir=out_dir,
            checkpoint_every=0,
            eval_every=0,
            eval_at_start=False,
            progress=False,
        )
        pretrain(config)
        records = [r for r in read_metrics(out_dir) if "images_per_s" in r]
    timed = records[-1]
    if timed["epoch"] != 2:
        raise RuntimeError(f"expected the timed epoch 2 in metrics.jsonl, got {records}")
    images_per_s = float(timed["images_per_s"])
    return {
        "name": variant.name,
        "setup": variant.describe(),
        "pipeline": variant.pipeline,
        "num_workers": variant.num_workers if variant.pipeline == "dataloader" else 0,
        "amp": variant.amp,
        "channels_last": variant.channels_last,
        "compile": variant.compile,
        "step_s": batch_size / images_per_s,
        "images_per_s": images_per_s,
        "epoch_s": common.EPOCH_IMAGES / images_per_s,
        "loss": float(timed["loss"]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.base_parser(__doc__.splitlines()[0], "train_throughput.json")
    parser.add_argument(
        "--width", type=common.positive_int, default=None, help="ResNet-18 base width (default: GPU 64, CPU 16)"
    )
    parser.add_argument("--batch-size", type=common.positive_int, default=None, help="images per step (default 256)")
    parser.add_argument("--projector", default=None, help="projector spec (default: TrainConfig's)")
    parser.add_argument(
        "--steps",
        type=common.positive_int,
        default=None,
        help="timed steps per variant, after as many warm-up steps (default: 20 on GPU, 2 on CPU, 1 smoke)",
    )
    parser.add_argument(
        "--workers", type=common.positive_int, default=None, help="the many-worker DataLoader (default: CPU count)"
    )
    parser.add_argument(
        "--recipe", default="paper", help="augmentation recipe of every variant (default %(default)s)"
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=None,
        metavar="WORD",
        help="skip variants whose name contains WORD (repeatable; default on CPU: compile)",
    )
    args = parser.parse_args(argv)

    device = args.device
    on_gpu = device.type == "cuda"
    default_width, default_batch, default_steps = default_sizes(device, args.smoke)
    width, batch_size, steps = (
        args.width or default_width,
        args.batch_size or default_batch,
        args.steps or default_steps,
    )
    projector = args.projector or default_projector(width, smoke=args.smoke)
    workers = args.workers or common.cpu_count()
    skip = args.skip if args.skip is not None else ([] if on_gpu else ["compile"])
    if args.smoke and args.skip is None:
        skip = ["compile"]

    print(f"device: {common.device_name(device)}")
    print(f"model: ResNet-18 width {width} + projector {projector}, batch {batch_size}, recipe {args.recipe}")
    print(
        f"timing: {steps} steps per variant after {steps} warm-up steps, extrapolated to an epoch of "
        f"{common.EPOCH_IMAGES:,} images (synthetic data)"
    )

    rows, seen = [], set()
    for variant in variants(workers):
        key = (
            variant.pipeline,
            variant.num_workers if variant.pipeline == "dataloader" else 0,
            variant.amp,
            variant.channels_last,
            variant.compile,
        )
        if key in seen:
            print(f"skipped {variant.name!r}: the same settings as a row above")
            continue
        if any(word in variant.name for word in skip):
            print(f"skipped {variant.name!r} (--skip {' '.join(skip)}; on a CPU, compiling takes minutes)")
            continue
        seen.add(key)
        print(f"running {variant.name}: {variant.describe()} ...", flush=True)
        rows.append(measure_variant(variant, width, batch_size, projector, device, steps, recipe=args.recipe))
    blog = rows[0]
    for row in rows:
        row["speedup_vs_blog"] = blog["epoch_s"] / row["epoch_s"]
    common.print_table(
        rows,
        ["name", "setup", "images_per_s", "step_s", "epoch_s", "speedup_vs_blog"],
        title=f"training throughput (epoch_s = {common.EPOCH_IMAGES:,} images / images_per_s, extrapolated)",
    )

    ours = [row for row in rows if row["pipeline"] == "batched"]
    best = min(ours, key=lambda row: row["epoch_s"]) if ours else None
    checks = []
    headline = width == 64 and batch_size == 256 and not args.smoke
    if best is None:
        checks.append(common.skipped_check("ours vs blog loop", "no batched variant was run"))
    elif on_gpu:
        checks.append(
            common.check(
                f"our epoch >= {GPU_TARGET_SPEEDUP:g}x faster than the blog loop (2 workers) on this GPU",
                best["speedup_vs_blog"] >= GPU_TARGET_SPEEDUP,
                f"{best['name']}: {best['epoch_s']:.2f} s vs {blog['epoch_s']:.2f} s "
                f"= {best['speedup_vs_blog']:.1f}x",
            )
        )
    else:
        checks.append(
            common.skipped_check(
                f"our epoch >= {GPU_TARGET_SPEEDUP:g}x faster than the blog loop",
                "a GPU target; this run is on the CPU",
            )
        )
    is_h100 = on_gpu and "H100" in common.device_name(device)
    if best is not None and is_h100 and headline:
        checks.append(
            common.check(
                f"epoch < {H100_TARGET_EPOCH_S:g} s for ResNet-18 width 64, batch 256 on an H100",
                best["epoch_s"] < H100_TARGET_EPOCH_S,
                f"{best['name']}: {best['epoch_s']:.2f} s",
            )
        )
    else:
        checks.append(
            common.skipped_check(
                f"epoch < {H100_TARGET_EPOCH_S:g} s on an H100",
                "needs an H100 and width 64, batch 256 (the defaults)",
            )
        )

    result = {
        "benchmark": "train_throughput",
        **common.run_info(device),
        "settings": {
            "width": width,
            "batch_size": batch_size,
            "projector": projector,
            "recipe": args.recipe,
            "steps": steps,
            "warmup_steps": steps,
            "epoch_images": common.EPOCH_IMAGES,
            "extrapolated": True,
            "data": "synthetic",
            "smoke": args.smoke,
        },
        "variants": rows,
        "checks": checks,
    }
    for row in rows:
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("images_per_s", "epoch_s", "step_s")), row
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
