"""Training throughput: the blog post's loop against ours, one trick at a time.

Every row runs the library's real training loop, `vicreg_lib.train.pretrain`, with the same
model, optimizer and augmentation recipe (those of --preset, default `fast`); only the input
pipeline and the precision tricks change. The rows are cumulative:

    blog loop (2 workers)       DataLoader + per-image torchvision transforms, float32 (the blog
                                post's loop: its input pipeline and precision)
    blog loop (N workers)       the same with one worker per CPU of this machine
    + data on device, batched   images live on the device, BatchAugment makes both views there
    + bf16 autocast             mixed precision
    + channels-last             NHWC memory format for the convolutions
    + CUDA graph                the whole step captured once and replayed (train.GraphedStep; CUDA only)
    + torch.compile             the model compiled by inductor (inside the graph when there is one)

A trick that fails (an error in its row) is recorded and left out of the rows after it when
`keep_going` is set (benchmarks/gpu_run.py does); this script stops at the first error.

How a row is timed: one epoch is made exactly `steps x batch` images (synthetic, or a fixed
random subset of --data, e.g. the full CIFAR-10), so one epoch is `steps` steps; pretrain runs
two epochs and we keep the SECOND epoch's training rate `images_per_s` from metrics.jsonl (the
first is the warm-up: compilation, cuDNN heuristics, worker start-up, allocator growth). That
rate is extrapolated to a CIFAR-10 epoch of 50,000 images. A DataLoader restarts its workers
every epoch, as in the blog post, so its start-up is counted once per `steps` steps here (once
per 195 in a real epoch): with few steps that favours our pipeline slightly; more --steps
shrink it. Each row also records `main_process_cpu_share`, the CPU time of this process over
the wall time of both epochs: on a shared machine, a batched row well under 1 was slowed by
other processes.

    python benchmarks/train_throughput.py                  # GPU: width 64, batch 256, 20 timed steps
    python benchmarks/train_throughput.py --device cpu     # CPU: width 16, batch 256, 2 timed steps
    python benchmarks/train_throughput.py --data archive:PATH   # real images
    python benchmarks/train_throughput.py --smoke          # tiny sizes, a few seconds
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch

import common  # first: it puts this checkout on sys.path for vicreg_lib
from vicreg_lib.config import PRESETS, TrainConfig
from vicreg_lib.loss import VICRegLoss
from vicreg_lib.model import build_model
from vicreg_lib.runstate import read_metrics
from vicreg_lib.train import pretrain

GPU_TARGET_SPEEDUP = 10.0  # our epoch vs the blog loop's (2 workers), same GPU
H100_TARGET_EPOCH_S = 4.0  # ResNet-18 width 64, batch 256, on an H100
DEFAULT_PRESET = "fast"  # the recipe benchmarks/gpu_run.py trains with
TRICKS = ("batched", "amp", "channels_last", "cuda_graph", "compile")  # our tricks, in the order the rows add them
TRICK_NAMES = {
    "batched": "+ data on device, batched aug",
    "amp": "+ bf16 autocast",
    "channels_last": "+ channels-last",
    "cuda_graph": "+ CUDA graph",
    "compile": "+ torch.compile",
}


@dataclass(frozen=True)
class Variant:
    """One row of the table: how pretrain is configured."""

    name: str
    pipeline: str = "batched"  # "batched" | "dataloader"
    num_workers: int = 2  # dataloader only
    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    cuda_graph: bool = False
    compile: bool = False

    def describe(self) -> str:
        parts = [
            f"dataloader, {self.num_workers} workers"
            if self.pipeline == "dataloader"
            else "batched on device"
        ]
        parts.append("bf16" if self.amp else "fp32")
        parts += ["channels-last"] * self.channels_last + ["CUDA graph"] * self.cuda_graph + ["compile"] * self.compile
        return ", ".join(parts)

    def settings(self) -> dict[str, Any]:
        """The TrainConfig fields this row sets (every switch explicit: no "auto")."""
        return dict(
            pipeline=self.pipeline,
            num_workers=self.num_workers,
            amp="bf16" if self.amp else "off",
            channels_last="on" if self.channels_last else "off",
            compile="on" if self.compile else "off",
            cuda_graph="on" if self.cuda_graph else "off",
        )

    def key(self) -> tuple:
        """What makes two rows the same measurement."""
        workers = self.num_workers if self.pipeline == "dataloader" else 0
        return (self.pipeline, workers, self.amp, self.channels_last, self.cuda_graph, self.compile)


def blog_variants(workers: int) -> list[Variant]:
    """The blog post's loop with 2 workers, then with `workers` (one per CPU)."""
    blog = Variant("blog loop (2 workers)", pipeline="dataloader", num_workers=2)
    return [blog, dataclasses.replace(blog, name=f"blog loop ({workers} workers = CPUs)", num_workers=workers)]


def with_trick(variant: Variant, trick: str) -> Variant:
    """`variant` plus one of TRICKS, named after the trick."""
    change = {"batched": dict(pipeline="batched"), "amp": dict(amp=True),
              "channels_last": dict(channels_last=True), "cuda_graph": dict(cuda_graph=True),
              "compile": dict(compile=True)}[trick]
    return dataclasses.replace(variant, name=TRICK_NAMES[trick], **change)


def variants(workers: int) -> list[Variant]:
    """Every row when nothing fails: the blog loop twice, then each trick added to the last."""
    rows = blog_variants(workers)
    current = rows[0]
    for trick in TRICKS:
        current = with_trick(current, trick)
        rows.append(current)
    return rows


def default_sizes(device: torch.device, smoke: bool = False) -> tuple[int, int, int]:
    """(width, batch_size, timed steps) when not given: the headline model on a GPU; on a CPU
    (2 shared cores here, a width-64 step takes tens of seconds) width 16 keeps the run to minutes."""
    if smoke:
        return 8, 8, 1
    return (64, 256, 20) if device.type == "cuda" else (16, 256, 2)


def default_projector(width: int, smoke: bool = False) -> str | None:
    """A small projector for smoke runs; None keeps the preset's."""
    return "64-64-64" if smoke else None


def bench_config(preset: str, width: int, batch_size: int, projector: str | None = None,
                 **overrides: Any) -> TrainConfig:
    """The preset's settings at this width and batch size (and projector, when given)."""
    extra = {"projector": projector} if projector else {}
    return TrainConfig.from_preset(preset, width=width, batch_size=batch_size, **extra, **overrides)


def loss_function(config: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(z1, z2) -> the scalar pretrain backpropagates (the config's coefficients and convention)."""
    loss = VICRegLoss(config.lam, config.mu, config.nu, convention=config.loss_convention)
    return lambda z1, z2: loss(z1, z2).total


def measure_variant(
    variant: Variant,
    width: int,
    batch_size: int,
    projector: str | None,
    device: torch.device,
    steps: int,
    preset: str = DEFAULT_PRESET,
    data: str | None = None,
    data_root: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run pretrain for a warm-up epoch and a timed epoch of `steps` steps each; return the table row.

    data None: `steps x batch_size` synthetic images. Otherwise a data spec whose training split
    is cut to a fixed random subset of `steps x batch_size` images. The timed epoch's training
    rate comes from the run's metrics.jsonl; "first_epoch_s" is the warm-up epoch's training time.
    """
    images = steps * batch_size  # one epoch = `steps` full batches
    source = dict(data=f"synthetic:{images},{batch_size}") if data is None else dict(
        data=data, data_root=data_root, max_train_images=images)
    with tempfile.TemporaryDirectory(prefix="vicreg-bench-") as out_dir:
        config = bench_config(
            preset, width, batch_size, projector, **source, **variant.settings(), epochs=2,
            warmup_epochs=0, device=str(device), out_dir=out_dir, checkpoint_every=0, eval_every=0,
            eval_at_start=False, progress=False, **(overrides or {}),
        )
        wall, cpu = time.perf_counter(), time.process_time()
        pretrain(config)
        cpu_share = (time.process_time() - cpu) / (time.perf_counter() - wall)
        records = [r for r in read_metrics(out_dir) if "images_per_s" in r]
    first, timed = records[0], records[-1]
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
        "cuda_graph": variant.cuda_graph,
        "compile": variant.compile,
        "step_s": batch_size / images_per_s,
        "images_per_s": images_per_s,
        "epoch_s": common.EPOCH_IMAGES / images_per_s,
        "first_epoch_s": float(first["train_time_s"]),
        "timed_epoch_s": float(timed["train_time_s"]),
        "loss": float(timed["loss"]),
        # CPU time of this process / wall time, both epochs: well under 1 (one thread) means other
        # processes shared the core, or (dataloader rows) this process waited for its workers
        "main_process_cpu_share": cpu_share,
    }


def run_ladder(
    measure: Callable[[Variant], dict[str, Any]],
    workers: int,
    skip: list[str] = (),
    keep_going: bool = False,
    log: Callable[[str], None] = print,
    skip_reason: Callable[[Variant], str | None] | None = None,
    skipped: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Measure the blog rows, then add TRICKS one at a time; return (rows, failures).

    measure: Variant -> row (e.g. measure_variant with the sizes bound). A row whose name holds a
    word of `skip` is not run. keep_going: a failing row is recorded in `failures` with its error
    and its trick is left out of the later rows; otherwise the error propagates. skip_reason:
    Variant -> why not to run it now (a CUDA-only trick on the CPU, no time left), or None; such a
    row is left out like a failed one and appended to `skipped` with its reason.
    """
    rows, failures, seen = [], [], set()

    def attempt(variant: Variant) -> bool:
        if variant.key() in seen:
            log(f"skipped {variant.name!r}: the same settings as a row above")
            return True
        if any(word in variant.name for word in skip):
            log(f"skipped {variant.name!r} (--skip {' '.join(skip)})")
            return False
        why = skip_reason(variant) if skip_reason else None
        if why:
            log(f"skipped {variant.name!r}: {why}")
            if skipped is not None:
                skipped.append({"name": variant.name, "setup": variant.describe(), "skipped": why})
            return False
        seen.add(variant.key())
        log(f"running {variant.name}: {variant.describe()} ...")
        started = time.perf_counter()
        try:
            rows.append(measure(variant))
        except Exception as error:
            if not keep_going:
                raise
            failures.append({"name": variant.name, "setup": variant.describe(), "trick": _trick_of(variant),
                             "error": f"{type(error).__name__}: {error}",
                             "traceback": traceback.format_exc(limit=8)[-4000:]})
            log(f"FAILED {variant.name}: {type(error).__name__}: {str(error)[:500]} (left out of the later rows)")
            reset_compiler()
            return False
        log(f"  {rows[-1]['images_per_s']:,.0f} images/s, {rows[-1]['epoch_s']:.2f} s per 50,000 images "
            f"({time.perf_counter() - started:.1f} s)")
        return True

    for variant in blog_variants(workers):
        attempt(variant)
    current = blog_variants(workers)[0]
    for trick in TRICKS:
        candidate = with_trick(current, trick)
        if attempt(candidate):
            current = candidate
    blog = rows[0] if rows and rows[0]["pipeline"] == "dataloader" else None
    for row in rows:
        row["speedup_vs_blog"] = blog["epoch_s"] / row["epoch_s"] if blog else None
    return rows, failures


def cuda_only(variant: Variant, device: torch.device) -> str | None:
    """Why `variant` cannot run on `device` (a CUDA graph off CUDA), else None."""
    return "CUDA graphs need a CUDA device" if variant.cuda_graph and device.type != "cuda" else None


def _trick_of(variant: Variant) -> str:
    return next((trick for trick, name in TRICK_NAMES.items() if name == variant.name), "blog loop")


def reset_compiler() -> None:
    """Forget compiled graphs after a failure, so the next row starts clean."""
    try:
        torch._dynamo.reset()
    except Exception:  # torch without dynamo: nothing to reset
        pass


def best_batched(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Our fastest row (the batched pipeline), or None."""
    ours = [row for row in rows if row["pipeline"] == "batched"]
    return min(ours, key=lambda row: row["epoch_s"]) if ours else None


def target_checks(rows: list[dict[str, Any]], device: torch.device, headline: bool) -> list[dict[str, Any]]:
    """PASS/FAIL/SKIP of the two GPU speed targets for these rows."""
    best, blog = best_batched(rows), rows[0] if rows and rows[0]["pipeline"] == "dataloader" else None
    on_gpu = device.type == "cuda"
    name = f"our epoch >= {GPU_TARGET_SPEEDUP:g}x faster than the blog loop (2 workers) on this GPU"
    if best is None or blog is None:
        checks = [common.skipped_check(name, "needs the blog loop's row and a batched row")]
    elif not on_gpu:
        checks = [common.skipped_check(name, "a GPU target; this run is on the CPU")]
    else:
        checks = [common.check(name, best["speedup_vs_blog"] >= GPU_TARGET_SPEEDUP,
                               f"{best['name']}: {best['epoch_s']:.2f} s vs {blog['epoch_s']:.2f} s "
                               f"= {best['speedup_vs_blog']:.1f}x")]
    name = f"epoch < {H100_TARGET_EPOCH_S:g} s for ResNet-18 width 64, batch 256 on an H100"
    if best is not None and on_gpu and "H100" in common.device_name(device) and headline:
        checks.append(common.check(name, best["epoch_s"] < H100_TARGET_EPOCH_S,
                                   f"{best['name']}: {best['epoch_s']:.2f} s"))
    else:
        checks.append(common.skipped_check(name, "needs an H100 and width 64, batch 256 (the defaults)"))
    return checks


def print_ladder(rows: list[dict[str, Any]], title_extra: str = "") -> None:
    common.print_table(
        rows,
        ["name", "setup", "images_per_s", "step_s", "epoch_s", "speedup_vs_blog"],
        title=f"training throughput (epoch_s = {common.EPOCH_IMAGES:,} images / images_per_s, "
              f"extrapolated{title_extra})",
    )


def parse_args(argv: list[str] | None):
    parser = common.base_parser(__doc__.splitlines()[0], "train_throughput.json")
    parser.add_argument(
        "--width", type=common.positive_int, default=None, help="ResNet-18 base width (default: GPU 64, CPU 16)"
    )
    parser.add_argument("--batch-size", type=common.positive_int, default=None, help="images per step (default 256)")
    parser.add_argument("--projector", default=None, help="projector spec (default: the preset's)")
    parser.add_argument(
        "--steps",
        type=common.positive_int,
        default=None,
        help="timed steps per variant, after as many warm-up steps (default: 20 on GPU, 2 on CPU, 1 smoke)",
    )
    parser.add_argument(
        "--workers", type=common.positive_int, default=None, help="the many-worker DataLoader (default: CPU count)"
    )
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=tuple(PRESETS),
                        help="model, optimizer and augmentation recipe of every row (default %(default)s)")
    parser.add_argument("--data", default=None,
                        help="data spec to take the images from, e.g. archive:PATH or folder:PATH "
                             "(default: synthetic images)")
    parser.add_argument("--data-root", default=None, help="where archive: specs are unpacked (default: data)")
    parser.add_argument(
        "--skip",
        action="append",
        default=None,
        metavar="WORD",
        help="skip variants whose name contains WORD (repeatable; default on CPU: compile; 'none' runs all)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = args.device
    default_width, default_batch, default_steps = default_sizes(device, args.smoke)
    width, batch_size, steps = (
        args.width or default_width,
        args.batch_size or default_batch,
        args.steps or default_steps,
    )
    projector = args.projector or default_projector(width, smoke=args.smoke)
    workers = args.workers or common.cpu_count()
    skip = args.skip if args.skip is not None else ([] if device.type == "cuda" else ["compile"])
    skip = [word for word in skip if word != "none"]
    data_name = args.data or "synthetic"

    print(f"device: {common.device_name(device)}")
    print(f"model: ResNet-18 width {width} + projector {projector or 'of the preset'}, batch {batch_size}, "
          f"preset {args.preset} (its optimizer and augmentation recipe in every row)")
    print(f"timing: {steps} steps per variant after {steps} warm-up steps, extrapolated to an epoch of "
          f"{common.EPOCH_IMAGES:,} images ({data_name})", flush=True)

    def measure(variant: Variant) -> dict[str, Any]:
        return measure_variant(variant, width, batch_size, projector, device, steps, preset=args.preset,
                               data=args.data, data_root=args.data_root)

    rows, _ = run_ladder(measure, workers, skip=skip, log=lambda line: print(line, flush=True),
                         skip_reason=lambda variant: cuda_only(variant, device))
    print_ladder(rows)
    checks = target_checks(rows, device, headline=width == 64 and batch_size == 256 and not args.smoke)
    result = {
        "benchmark": "train_throughput",
        **common.run_info(device),
        "settings": {
            "width": width,
            "batch_size": batch_size,
            "projector": projector or bench_config(args.preset, width, batch_size).projector,
            "preset": args.preset,
            "recipe": PRESETS[args.preset]["recipe"],
            "steps": steps,
            "warmup_steps": steps,
            "epoch_images": common.EPOCH_IMAGES,
            "extrapolated": True,
            "data": data_name,
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
