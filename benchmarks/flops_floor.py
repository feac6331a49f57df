"""The floor: how fast could one epoch be, if the device did nothing but matrix multiplies?

    floor (s/epoch) = FLOPs per training image x 50,000 / measured matmul rate (FLOP/s)

- FLOPs are COUNTED, not estimated: torch.utils.flop_counter.FlopCounterMode records
  every matmul and convolution (forward and backward) of one training step of the
  VICReg model (encoder + projector on both views, then the loss) on one batch; the
  count divided by the batch size is the cost of one image (= one pair of views).
- The matmul rate is MEASURED: a large square matmul, bfloat16 on the GPU (the dtype our
  training runs in there); on the CPU float32 and bfloat16, and the faster of the two counts
  (our fastest CPU variant trains under bf16 autocast).
- Our achieved fraction = floor / our measured epoch time, with the epoch time read
  from train_throughput.py's JSON (same device, width and batch) or measured here.

    python benchmarks/flops_floor.py                      # device auto, train_throughput.py's sizes
    python benchmarks/flops_floor.py --smoke              # tiny sizes, a few seconds

benchmarks/gpu_run.py calls measure_floor and share_of_floor with its own epoch times.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

import common
from vicreg_lib.model import build_model


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Measured FLOP/s of a (size x size) @ (size x size) matmul: 2 size^3 FLOPs per call."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    seconds = common.time_call(lambda: torch.mm(a, b), device, warmup=2, repeats=repeats)
    return 2 * size**3 / seconds


def count_step_flops(config, batch_size: int, device: torch.device) -> dict[str, float]:
    """Counted FLOPs of one training step (forward + backward, both views) on a batch.

    config: a TrainConfig (its model and loss). Counted in float32 (the count depends on the
    shapes only, not on device or dtype). Returns totals for the batch: "model" (encoder +
    projector, forward + backward) and "step" (model + the VICReg loss, forward + backward).
    """
    import train_throughput  # the loss the training benchmark backpropagates

    model = build_model(**config.arch()).to(device)
    loss_fn = train_throughput.loss_function(config)
    x1 = torch.randn(batch_size, 3, 32, 32, device=device)
    x2 = torch.randn(batch_size, 3, 32, 32, device=device)

    # model only: backward with a unit gradient on the embeddings, no loss in the count
    with FlopCounterMode(display=False) as counter:
        z1, z2 = model(x1, x2)
        torch.autograd.backward([z1, z2], [torch.ones_like(z1), torch.ones_like(z2)])
    model_flops = counter.get_total_flops()
    model.zero_grad(set_to_none=True)

    # the whole step, as training runs it
    with FlopCounterMode(display=False) as counter:
        z1, z2 = model(x1, x2)
        loss_fn(z1, z2).backward()
    return {"model": float(model_flops), "step": float(counter.get_total_flops())}


def measure_floor(config, batch_size: int, device: torch.device, matmul_size: int) -> dict[str, Any]:
    """The counted FLOPs per image, the measured matmul rates and the floor epoch for `config`.

    The rate is the fastest dtype our training can use on this device: bf16 on a GPU; on a CPU
    float32 and bf16 (bf16 autocast is one of the variants, and CPUs with AMX run it several
    times faster than float32).
    """
    flops = count_step_flops(config, batch_size, device)
    dtypes = [torch.bfloat16] if device.type == "cuda" else [torch.float32, torch.bfloat16]
    repeats = 20 if device.type == "cuda" else 5
    rates = {str(dtype)[6:]: matmul_rate(device, dtype, matmul_size, repeats=repeats) for dtype in dtypes}
    dtype = max(rates, key=rates.get)
    flops_per_image = flops["step"] / batch_size
    return {
        "flops_per_image_model": flops["model"] / batch_size,
        "flops_per_image_step": flops_per_image,
        "matmul_rates": rates,
        "matmul_dtype": dtype,
        "matmul_size": matmul_size,
        "matmul_flops_per_s": rates[dtype],
        "floor_epoch_s": flops_per_image * common.EPOCH_IMAGES / rates[dtype],
    }


def share_of_floor(floor: dict[str, Any], epoch_s: float) -> dict[str, float]:
    """Our epoch (s per 50,000 images) against the floor: achieved FLOP/s and fraction of the floor."""
    return {
        "epoch_s": epoch_s,
        "achieved_flops_per_s": floor["flops_per_image_step"] * common.EPOCH_IMAGES / epoch_s,
        "fraction_of_floor": floor["floor_epoch_s"] / epoch_s,
    }


def read_training_epoch_s(
    path: Path, device_name: str, width: int, batch_size: int
) -> tuple[float, str] | None:
    """Our fastest epoch time from train_throughput.py's JSON, if it matches this device and model."""
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    settings = result.get("settings", {})
    if (result.get("device"), settings.get("width"), settings.get("batch_size")) != (
        device_name,
        width,
        batch_size,
    ):
        return None
    ours = [
        row for row in result.get("variants", []) if row.get("pipeline") == "batched" and row.get("epoch_s")
    ]
    if not ours:
        return None
    best = min(ours, key=lambda row: row["epoch_s"])
    return best["epoch_s"], f"{best['name']} from {path} ({result.get('date')})"


def measure_training_epoch_s(
    width: int, batch_size: int, projector: str | None, device: torch.device, steps: int
) -> tuple[float, str]:
    """Our epoch time measured now: the batched pipeline with the device's best settings."""
    import train_throughput

    on_gpu = device.type == "cuda"
    variant = train_throughput.Variant(
        "ours (measured here)", pipeline="batched", amp=True, channels_last=True, compile=on_gpu
    )
    row = train_throughput.measure_variant(
        variant, width=width, batch_size=batch_size, projector=projector, device=device, steps=steps
    )
    return row["epoch_s"], f"{variant.name}: {variant.describe()}, {steps} steps after {steps} warm-up"


def parse_args(argv: list[str] | None):
    parser = common.base_parser(__doc__.splitlines()[0], "flops_floor.json")
    parser.add_argument(
        "--width", type=common.positive_int, default=None, help="ResNet-18 base width (default: GPU 64, CPU 16)"
    )
    parser.add_argument("--batch-size", type=common.positive_int, default=None, help="images per step (default 256)")
    parser.add_argument("--projector", default=None, help="projector spec (default: the preset's)")
    parser.add_argument("--preset", default="fast", help="the model and loss of this preset (default %(default)s)")
    parser.add_argument("--matmul-size", type=common.positive_int, default=None, help="side of the timed square matmul")
    parser.add_argument(
        "--training-json",
        default=str(common.RESULTS_DIR / "train_throughput.json"),
        help="train_throughput.py's results to read our epoch time from (default %(default)s)",
    )
    parser.add_argument(
        "--measure", action="store_true", help="measure our epoch time here even if the JSON matches"
    )
    parser.add_argument(
        "--steps",
        type=common.positive_int,
        default=None,
        help="training steps timed when measuring here, after as many warm-up steps (default: 20 GPU, 2 CPU)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import train_throughput

    args = parse_args(argv)
    device = args.device
    default_width, default_batch, default_steps = train_throughput.default_sizes(device, args.smoke)
    width, batch_size = args.width or default_width, args.batch_size or default_batch
    steps = args.steps or default_steps
    projector = args.projector or train_throughput.default_projector(width, smoke=args.smoke)
    config = train_throughput.bench_config(args.preset, width, batch_size, projector)
    matmul_size = args.matmul_size or (256 if args.smoke else 8192 if device.type == "cuda" else 2048)
    name = common.device_name(device)

    floor = measure_floor(config, batch_size, device, matmul_size)  # 1. counted FLOPs, 2. matmul rate
    training = (  # 3. our epoch, from train_throughput.py's JSON or measured here
        None
        if (args.measure or args.smoke)
        else read_training_epoch_s(Path(args.training_json), name, width, batch_size)
    )
    if training is None:
        training = measure_training_epoch_s(width, batch_size, projector, device, steps)
    epoch_s, epoch_source = training
    ours = share_of_floor(floor, epoch_s)

    print(f"device: {name}")
    print(f"model: ResNet-18 width {width} + projector {config.projector}, batch {batch_size}, both views")
    print(f"our epoch time from: {epoch_source}")
    print(f"epoch = {common.EPOCH_IMAGES:,} images, extrapolated from the measured steps")
    rows = [
        {"quantity": "counted FLOPs per image (2 views): model fwd+bwd", "value": floor["flops_per_image_model"],
         "unit": "FLOP"},
        {"quantity": "counted FLOPs per image (2 views): + loss", "value": floor["flops_per_image_step"],
         "unit": "FLOP"},
        *[{"quantity": f"measured {dtype} matmul rate ({matmul_size}^2)", "value": rate / 1e12, "unit": "TFLOP/s"}
          for dtype, rate in floor["matmul_rates"].items()],
        {"quantity": f"floor: epoch at the {floor['matmul_dtype']} matmul rate", "value": floor["floor_epoch_s"],
         "unit": "s"},
        {"quantity": "ours: measured epoch", "value": epoch_s, "unit": "s"},
        {"quantity": "ours: achieved rate", "value": ours["achieved_flops_per_s"] / 1e12, "unit": "TFLOP/s"},
        {"quantity": "ours: fraction of the floor", "value": ours["fraction_of_floor"], "unit": ""},
    ]
    common.print_table(rows, ["quantity", "value", "unit"], title="the floor")

    result = {
        "benchmark": "flops_floor",
        **common.run_info(device),
        "settings": {
            "width": width,
            "batch_size": batch_size,
            "projector": config.projector,
            "preset": args.preset,
            "matmul_size": matmul_size,
            "matmul_dtype": floor["matmul_dtype"],
            "epoch_images": common.EPOCH_IMAGES,
            "smoke": args.smoke,
        },
        **{key: floor[key] for key in ("flops_per_image_model", "flops_per_image_step", "matmul_flops_per_s",
                                       "floor_epoch_s")},
        "epoch_source": epoch_source,
        **ours,
    }
    assert all(math.isfinite(v) and v > 0 for v in (floor["flops_per_image_step"], floor["matmul_flops_per_s"],
                                                    epoch_s))
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
