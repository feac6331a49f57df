"""Scaling: time per epoch and peak memory against batch size and backbone width.

Each configuration runs in its own fresh Python process (this script with --one), through
the same measurement as train_throughput.py (pretrain with the `fast` preset's model,
optimizer and recipe: a warm-up epoch, then a timed epoch, extrapolated to 50,000 images),
with our pipeline at the device's best settings (GPU: data on device, batched augmentation,
bf16, channels-last; CPU: the same in float32). A fresh process per configuration makes the
peak memory honest:

- GPU: torch.cuda.max_memory_allocated() (tensors only, not the caching allocator's slack),
- CPU: the process's peak resident set size (resource.getrusage ru_maxrss), with the peak
  after importing torch and the library reported beside it, so the training's share shows.

    python benchmarks/scaling.py                  # device auto; the sweep depends on the device
    python benchmarks/scaling.py --widths 16 32 64 --batch-sizes 128 256
    python benchmarks/scaling.py --smoke          # tiny sizes, a few seconds
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
from typing import Any

import torch

import common  # first: it puts this checkout on sys.path for vicreg_lib

RESULT_PREFIX = "SCALING_RESULT "


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one configuration in this process (called in the child)."""
    import train_throughput

    device = torch.device(spec["device"])
    rss_after_imports = peak_rss_mib()
    on_gpu = device.type == "cuda"
    variant = train_throughput.Variant(
        "ours", pipeline="batched", amp=on_gpu, channels_last=on_gpu, compile=bool(spec["compile"])
    )
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    row = train_throughput.measure_variant(
        variant,
        width=spec["width"],
        batch_size=spec["batch_size"],
        projector=spec["projector"],
        device=device,
        steps=spec["steps"],
    )
    result = {
        "width": spec["width"],
        "batch_size": spec["batch_size"],
        "images_per_s": row["images_per_s"],
        "step_s": row["step_s"],
        "epoch_s": row["epoch_s"],
        "setup": variant.describe(),
    }
    if on_gpu:
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["memory_kind"] = "cuda max_memory_allocated"
    else:
        result["peak_memory_mib"] = peak_rss_mib()
        result["rss_after_imports_mib"] = rss_after_imports
        result["memory_kind"] = "peak RSS of the process"
    return result


def measure_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter and parse its result line."""
    command = [sys.executable, __file__, "--one", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"configuration {spec} failed (exit code {done.returncode}):\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def parse_args(argv: list[str] | None):
    parser = common.base_parser(__doc__.splitlines()[0], "scaling.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: the child process
    parser.add_argument(
        "--widths", type=common.positive_int, nargs="+", default=None, help="backbone widths, at --base-batch-size"
    )
    parser.add_argument(
        "--batch-sizes", type=common.positive_int, nargs="+", default=None, help="batch sizes, at --base-width"
    )
    parser.add_argument("--base-width", type=common.positive_int, default=None, help="width of the batch-size sweep")
    parser.add_argument("--base-batch-size", type=common.positive_int, default=None,
                        help="batch size of the width sweep")
    parser.add_argument("--projector", default=None, help="projector spec (default: TrainConfig's)")
    parser.add_argument(
        "--steps", type=common.positive_int, default=None, help="timed steps per configuration (after as many warm-up)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also torch.compile (slow to start, each config)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)

    if args.one is not None:  # child process: one configuration
        print(RESULT_PREFIX + json.dumps(run_one(json.loads(args.one))), flush=True)
        return {}

    import train_throughput

    device = args.device
    on_gpu = device.type == "cuda"
    if args.smoke:
        defaults = dict(widths=[4], batch_sizes=[8, 16], base_width=4, base_batch_size=8, steps=1)
    elif on_gpu:
        defaults = dict(
            widths=[16, 32, 64, 128],
            batch_sizes=[64, 128, 256, 512, 1024],
            base_width=64,
            base_batch_size=256,
            steps=20,
        )
    else:  # 2 shared cores: keep the sweep to a few minutes
        defaults = dict(
            widths=[8, 16, 32], batch_sizes=[32, 64, 128], base_width=16, base_batch_size=64, steps=2
        )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    projector = args.projector or train_throughput.default_projector(args.base_width, smoke=args.smoke)
    projector_name = projector or train_throughput.bench_config(
        train_throughput.DEFAULT_PRESET, args.base_width, args.base_batch_size).projector

    configs = [(args.base_width, b) for b in args.batch_sizes]
    configs += [(w, args.base_batch_size) for w in args.widths if (w, args.base_batch_size) not in configs]
    print(f"device: {common.device_name(device)}")
    print(
        f"preset {train_throughput.DEFAULT_PRESET}, projector {projector_name}; {args.steps} timed steps per "
        f"configuration after as many warm-up steps, "
        f"extrapolated to an epoch of {common.EPOCH_IMAGES:,} images; one fresh process per configuration"
    )
    rows = []
    for width, batch_size in configs:
        print(f"running width {width}, batch {batch_size} ...", flush=True)
        spec = dict(
            width=width,
            batch_size=batch_size,
            projector=projector,
            device=str(device),
            steps=args.steps,
            compile=args.compile,
        )
        rows.append(measure_in_subprocess(spec))
    columns = ["width", "batch_size", "images_per_s", "epoch_s", "peak_memory_mib"]
    if not on_gpu:
        columns.append("rss_after_imports_mib")
    title = (
        f"scaling ({rows[0]['setup']}; memory: {rows[0]['memory_kind']}; epoch_s extrapolated to "
        f"{common.EPOCH_IMAGES:,} images)"
    )
    common.print_table(rows, columns, title=title)

    result = {
        "benchmark": "scaling",
        **common.run_info(device),
        "settings": {
            "projector": projector_name,
            "preset": train_throughput.DEFAULT_PRESET,
            "steps": args.steps,
            "warmup_steps": args.steps,
            "base_width": args.base_width,
            "base_batch_size": args.base_batch_size,
            "compile": args.compile,
            "epoch_images": common.EPOCH_IMAGES,
            "extrapolated": True,
            "smoke": args.smoke,
        },
        "rows": rows,
    }
    for row in rows:
        assert all(
            math.isfinite(row[k]) and row[k] > 0 for k in ("images_per_s", "epoch_s", "peak_memory_mib")
        ), row
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
