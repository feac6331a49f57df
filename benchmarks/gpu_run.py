"""The GPU run in one command: data, speed ladder, FLOP floor, a budgeted `fast` run, probes, weights.

    PYTHONPATH=. python -u benchmarks/gpu_run.py --out gpu_out      # on the GPU, about 8 minutes
    PYTHONPATH=. python -u benchmarks/gpu_run.py --smoke --out /tmp/gpu_smoke   # on a CPU, < 2 minutes

It needs torch, torchvision and numpy only. Five steps, each written into the results as it ends
(a run stopped by a time limit keeps what it finished):

1. data: the full CIFAR-10 (JPEG q75) from --archive (the `archive:` data spec: unpacked once
   into --data-root, its decoded splits cached), or any data spec given by --data;
2. the throughput ladder (train_throughput.py's) at width 64, batch 256 on a random subset
   of --ladder-steps batches of the training images: the blog post's loop (DataLoader +
   per-image transforms, fp32) with 2 and with all workers, then ours adding one trick at a
   time (data on the device + batched augmentation, bf16, channels-last, torch.compile). A trick
   that fails is recorded with its error and left out from then on;
3. the FLOP floor (flops_floor.py's) and our share of it;
4. a `fast`-preset pretraining on the full training set fitted to --budget-min: the epoch time
   of the ladder's row with the same tricks, the compile start-up and a measured kNN
   evaluation give the number of epochs (the cosine schedule spans exactly those); kNN (k=200
   and k=20, every test image) every `eval_every` epochs. The budget shrinks when the whole
   command would not end by --deadline-min; a watchdog stops training (saving it) if it overruns;
5. the `fast` and `standard` linear probes (vicreg_lib.eval.probes) on every test image.

Under --out: results.json (every figure, the device, torch version, command, the code paths
that ran or failed, PASS/FAIL of each target of issue 11), metrics.jsonl (the run's records),
log.txt (this output) and the model's weights in bf16 as parts of <= 15 MiB
(model-bf16.partIofN.pt): at most 8 files. Join the parts with `load_gpu_model(out)` here or
`vicreg_lib.weight_parts.load_model_from_parts(out)`.

--smoke takes every path a CPU can: a small archive it makes (synthetic images as JPEG) through
the same `archive:` spec, width 8, bf16 autocast, channels-last, the batched augmentation's
accelerator path forced, and torch.compile with inductor on the CPU. Inductor compiles a
ResNet-18 for minutes on a CPU, so the smoke's compile row trains a one-convolution network
through the same pretrain -> torch.compile -> training_step path.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import io
import json
import math
import os
import signal
import statistics
import sys
import tarfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import common  # first: it puts this checkout on sys.path for vicreg_lib
import flops_floor
import train_throughput
from vicreg_lib.config import TrainConfig
from vicreg_lib.data import load_dataset, make_synthetic
from vicreg_lib.eval.features import extract_features, knn_accuracy
from vicreg_lib.model import Projector, VICReg, build_model
from vicreg_lib.runfolder import read_metrics
from vicreg_lib.train import RunInterrupted, pretrain
from vicreg_lib.weight_parts import load_model_from_parts, save_weight_parts

PRESET = "fast"
MAX_RETURNED_FILES = 8  # what comes back from the GPU machine
RESULTS_NAME, METRICS_NAME, LOG_NAME = "results.json", "metrics.jsonl", "log.txt"
MAX_PART_BYTES = 15 * 2**20
TARGET_EVALS = 8  # kNN evaluations per run when --eval-every is not given
COMPILE_CACHE_SHARE = 0.5  # planned share of the ladder's compile time that pretraining spends again
KNN_TARGET, KNN_MOONSHOT = 80.0, 85.0
EPOCH_TARGET_S, EPOCH_MOONSHOT_S = 4.0, 2.0
SPEEDUP_TARGET, SPEEDUP_MOONSHOT = 10.0, 20.0
FLOOR_TARGET = 0.30


# ============================================================================ output


class Tee(io.TextIOBase):
    """A text stream that writes to `stream` and to an open log file, flushing both every time."""

    def __init__(self, stream, log) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.stream.flush()
        if not self.log.closed:
            self.log.write(text)
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def tee_output(path: Path):
    """Copy everything printed (stdout and stderr) into `path` while active."""
    with open(path, "a", buffering=1) as log:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(saved[0], log), Tee(saved[1], log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


def say(message: str) -> None:
    """One progress line, flushed at once."""
    print(message, flush=True)


class Results:
    """The results JSON, rewritten (atomically) whenever a step ends."""

    def __init__(self, path: Path, started: float, payload: dict[str, Any]) -> None:
        self.path, self.started, self.data = path, started, payload
        self.data.setdefault("errors", [])

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def error(self, step: str, error: BaseException) -> None:
        """Record a caught failure (and go on)."""
        self.data["errors"].append({"step": step, "error": f"{type(error).__name__}: {error}"[:2000],
                                    "traceback": traceback.format_exc(limit=10)[-4000:]})
        say(f"ERROR in {step}: {type(error).__name__}: {str(error)[:500]} (recorded; going on)")

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        text = json.dumps(_finite(self.data), indent=2, default=_json_default, allow_nan=False) + "\n"
        scratch = self.path.with_name(f".{self.path.name}.tmp")
        scratch.write_text(text)
        os.replace(scratch, self.path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinity (a diverged loss, say) replaced by None: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


# ============================================================================ step 1: data


def make_smoke_archive(path: Path, train_per_class: int = 40, test_per_class: int = 10) -> Path:
    """A small .tar.gz shaped like the CIFAR-10 JPEG archive: cifar10_jpeg/{train,test}/<class>/*.jpg,
    from the synthetic class-structured images, JPEG-encoded (quality 75) by torchvision."""
    from torchvision.io import encode_jpeg

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    with tarfile.open(scratch, "w:gz") as bundle:
        for split, per_class, seed in (("train", train_per_class, 0), ("test", test_per_class, 1)):
            images, labels = make_synthetic(10 * per_class, seed=seed)
            for index, (image, label) in enumerate(zip(images, labels.tolist())):
                data = encode_jpeg(image, quality=75).numpy().tobytes()
                info = tarfile.TarInfo(f"cifar10_jpeg/{split}/class{label}/{index:05d}.jpg")
                info.size = len(data)
                bundle.addfile(info, io.BytesIO(data))
    os.replace(scratch, path)
    return path


def load_data(spec: str, root: str, results: Results) -> dict[str, Any]:
    """Both splits of `spec` (timed: unpacking and decoding on first use, the cache after)."""
    say(f"[1/5] data: {spec} (data root {root})")
    started = time.perf_counter()
    train_images, train_labels, classes = load_dataset(spec, "train", root)
    test_images, test_labels, _ = load_dataset(spec, "test", root)
    seconds = time.perf_counter() - started
    results.data["data"] = {"spec": spec, "data_root": root, "train_images": int(train_images.shape[0]),
                            "test_images": int(test_images.shape[0]), "classes": classes,
                            "load_s": round(seconds, 2),
                            "note": "first use unpacks and decodes; later runs read the decoded cache"}
    say(f"      {train_images.shape[0]:,} train and {test_images.shape[0]:,} test images, "
        f"{len(classes)} classes, in {seconds:.1f} s")
    return dict(train_images=train_images, train_labels=train_labels, test_images=test_images,
                test_labels=test_labels, classes=classes)


# ============================================================================ smoke-only paths


class _OneConvEncoder(nn.Module):
    """Smoke only: conv 3x3 -> BatchNorm -> ReLU -> global average pool. x: (n, 3, H, W) -> h: (n, 8)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv, self.bn, self.out_dim = nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


@contextlib.contextmanager
def one_conv_model_in_pretrain():
    """Smoke only: pretrain builds the one-convolution network instead of the ResNet-18 (inductor
    needs minutes on a CPU for a ResNet-18, seconds for this); the rest of the path is unchanged."""
    import vicreg_lib.train as train_module

    original = train_module.build_model

    def build(**arch: Any) -> VICReg:
        encoder = _OneConvEncoder()
        return VICReg(encoder, Projector.from_spec(encoder.out_dim, "16-16"))

    train_module.build_model = build
    try:
        yield
    finally:
        train_module.build_model = original


def force_accelerator_augmentation() -> None:
    """Smoke only: BatchAugment computes every op on every row and keeps the chosen ones, as it
    does on a GPU (on a CPU it computes the chosen rows only)."""
    from vicreg_lib import augment

    apply_to_rows = augment._apply_to_rows
    if "compute_all" not in inspect.signature(apply_to_rows).parameters:
        raise RuntimeError("vicreg_lib.augment._apply_to_rows has no compute_all switch any more; "
                           "update force_accelerator_augmentation")
    augment._apply_to_rows = functools.partial(apply_to_rows, compute_all=True)


def accelerator_augmentation_forced() -> bool:
    """Whether force_accelerator_augmentation is in effect in this process."""
    from vicreg_lib import augment

    apply_to_rows = augment._apply_to_rows
    return isinstance(apply_to_rows, functools.partial) and apply_to_rows.keywords.get("compute_all") is True


# ============================================================================ step 2: the ladder


def run_ladder_step(args, spec: str, device: torch.device, results: Results) -> dict[str, Any]:
    """The throughput ladder on a subset of `spec`'s training images; failures recorded, not raised."""
    say(f"[2/5] throughput ladder: width {args.width}, batch {args.batch_size}, preset {PRESET}; an epoch of "
        f"{args.ladder_steps} steps (blog rows {2 * args.ladder_steps}) to warm up, then one timed")

    def measure(variant: train_throughput.Variant) -> dict[str, Any]:
        smoke_compile = args.smoke and variant.compile
        # the blog rows restart their workers every epoch, as the blog's loop does: a longer epoch
        # weighs that start-up nearer to a real epoch's share (1/195 steps)
        steps = args.ladder_steps * (2 if variant.pipeline == "dataloader" else 1)
        with one_conv_model_in_pretrain() if smoke_compile else contextlib.nullcontext():
            row = train_throughput.measure_variant(
                variant, args.width, args.batch_size, args.projector, device, steps, preset=PRESET,
                data=spec, data_root=args.data_root)
        row["steps"] = steps
        if smoke_compile:
            row["model"] = "one-convolution network (smoke: inductor on a CPU)"
        return row

    rows, failures = train_throughput.run_ladder(measure, args.workers, skip=args.skip, keep_going=True, log=say)
    train_throughput.reset_compiler()
    if rows:
        train_throughput.print_ladder(rows, f"; timed epochs of {args.ladder_steps} steps of real images, "
                                            f"blog rows {2 * args.ladder_steps}")
    ladder = {"rows": rows, "failures": failures, "steps": args.ladder_steps, "blog_steps": 2 * args.ladder_steps,
              "extrapolated_to": common.EPOCH_IMAGES}
    results.data["ladder"] = ladder
    return ladder


def tricks_that_worked(ladder: dict[str, Any]) -> dict[str, bool]:
    """Which of our tricks ran in the ladder without an error (those pretraining may use)."""
    rows = ladder["rows"]
    return {"batched": any(row["pipeline"] == "batched" for row in rows),
            "amp": any(row["amp"] for row in rows),
            "channels_last": any(row["channels_last"] for row in rows),
            "compile": any(row["compile"] for row in rows)}


def matching_row(ladder: dict[str, Any], tricks: dict[str, bool]) -> dict[str, Any] | None:
    """The ladder's batched row with exactly the tricks pretraining will use, else our fastest row."""
    for row in ladder["rows"]:
        if row["pipeline"] == "batched" and all(row[k] == tricks[k] for k in ("amp", "channels_last", "compile")):
            return row
    return train_throughput.best_batched(ladder["rows"])


# ============================================================================ step 3: the floor


def run_floor_step(args, device: torch.device, ladder: dict[str, Any], results: Results) -> dict[str, Any]:
    say("[3/5] FLOP floor")
    config = train_throughput.bench_config(PRESET, args.width, args.batch_size, args.projector)
    floor = flops_floor.measure_floor(config, args.batch_size, device, args.matmul_size)
    best = train_throughput.best_batched(ladder["rows"])
    if best is not None:
        floor["ours_ladder"] = {"row": best["name"], **flops_floor.share_of_floor(floor, best["epoch_s"])}
    results.data["floor"] = floor
    share = floor.get("ours_ladder", {}).get("fraction_of_floor")
    say(f"      {floor['flops_per_image_step']:.3g} FLOP per image (both views, fwd+bwd), "
        f"{floor['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s {floor['matmul_dtype']} matmul: floor "
        f"{floor['floor_epoch_s']:.2f} s per epoch" + (f"; our best ladder row reaches {share:.0%}" if share else ""))
    return floor


# ============================================================================ step 4: pretraining


def planned_evaluations(epochs: int, eval_every: int) -> int:
    """kNN evaluations of a run: the random initialisation, every eval_every epochs, and the last."""
    return 1 + epochs // eval_every + (1 if epochs % eval_every else 0)


def plan_epochs(budget_s: float, epoch_s: float, startup_s: float, eval_s: float,
                eval_every: int | None = None, target_evals: int = TARGET_EVALS) -> dict[str, Any]:
    """The most epochs (>= 1) whose predicted time fits `budget_s`, and the kNN interval.

    predicted(E) = startup_s + E * epoch_s + evaluations(E) * eval_s, the evaluations those of
    planned_evaluations. eval_every None: about `target_evals` evaluations.
    """
    if epoch_s <= 0 or budget_s <= 0:
        raise ValueError(f"epoch_s and budget_s must be > 0, got {epoch_s} and {budget_s}")
    rough = max(1, int((budget_s - startup_s - eval_s) // (epoch_s + eval_s / target_evals)))
    every = eval_every or max(1, round(rough / target_evals))

    def predicted(epochs: int) -> float:
        return startup_s + epochs * epoch_s + planned_evaluations(epochs, every) * eval_s

    epochs = max(1, int((budget_s - startup_s) // epoch_s))
    while epochs > 1 and predicted(epochs) > budget_s:
        epochs -= 1
    return {"epochs": epochs, "eval_every": every, "predicted_s": predicted(epochs), "budget_s": budget_s,
            "epoch_s": epoch_s, "startup_s": startup_s, "eval_s": eval_s,
            "evaluations": planned_evaluations(epochs, every)}


def time_evaluation(config: TrainConfig, data: dict[str, Any], device: torch.device) -> float:
    """Seconds of one kNN evaluation as pretrain runs it (features of every train and test image,
    then kNN), on a fresh network."""
    model = build_model(**config.arch()).to(device)
    train_images, test_images = data["train_images"].to(device), data["test_images"].to(device)
    common.synchronize(device)
    started = time.perf_counter()
    train_features = extract_features(model.encoder, train_images, device=device).to(device)
    test_features = extract_features(model.encoder, test_images, device=device).to(device)
    knn_accuracy(train_features, data["train_labels"].to(device), test_features, data["test_labels"].to(device),
                 k=(config.knn_k, 20), num_classes=len(data["classes"]))
    common.synchronize(device)
    return time.perf_counter() - started


def encoder_images_per_s(config: TrainConfig, device: torch.device, channels_last: bool, batch: int = 256,
                         repeats: int = 10) -> float:
    """Frozen-encoder forward passes per second at the probes' batch (bf16 on CUDA, as they run)."""
    encoder = build_model(**config.arch()).encoder.to(device).eval()
    x = torch.randn(batch, 3, 32, 32, device=device)
    if channels_last:
        encoder, x = encoder.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        seconds = common.time_call(lambda: encoder(x), device, warmup=2, repeats=repeats)
    return batch / seconds


def estimate_probe_s(args, n_train: int, n_test: int, forward_per_s: float) -> dict[str, float]:
    """Predicted seconds of the two probes: `standard` passes every training image through the
    encoder once per epoch (crop + flip), `fast` once; both pass the test images once."""
    fixed = (n_train + n_test) / forward_per_s
    return {"fast": 1.5 * fixed + 10.0 * (args.device.type == "cuda"),
            "standard": 1.3 * args.standard_epochs * n_train / forward_per_s + fixed}


class MetricsFollower(threading.Thread):
    """While pretraining runs: print each new record of its metrics.jsonl and copy the file to --out."""

    def __init__(self, run_dir: Path, copy_to: Path, epochs: int, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.copy_to, self.epochs, self.interval_s = run_dir, copy_to, epochs, interval_s
        self.done = threading.Event()
        self.seen = 0
        self.started = time.perf_counter()

    def poll(self) -> None:
        if not (self.run_dir / METRICS_NAME).is_file():
            return
        records = read_metrics(self.run_dir)
        for record in records[self.seen:]:
            say(describe_record(record, self.epochs, time.perf_counter() - self.started))
        if len(records) > self.seen:
            self.seen = len(records)
            text = "".join(json.dumps(record) + "\n" for record in records)
            scratch = self.copy_to.with_name(f".{self.copy_to.name}.tmp")
            scratch.write_text(text)
            os.replace(scratch, self.copy_to)

    def run(self) -> None:
        while not self.done.wait(self.interval_s):
            with contextlib.suppress(Exception):  # a half-written file: read it next time
                self.poll()

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)
        self.poll()


def describe_record(record: dict[str, Any], epochs: int, elapsed_s: float) -> str:
    parts = [f"      epoch {record.get('epoch')}/{epochs} ({elapsed_s / 60:.1f} min)"]
    if "loss" in record:
        parts.append(f"loss {record['loss']:.3f}, {record['train_time_s']:.2f} s training "
                     f"({record['images_per_s']:,.0f} img/s), {record.get('epoch_time_s', 0):.2f} s wall")
    if "knn_top1" in record:
        parts.append(f"kNN@{record.get('knn_k')} {record['knn_top1']:.2f}%, kNN@20 {record['knn_top1@20']:.2f}%")
    return ": ".join(parts[:1]) + (": " + "; ".join(parts[1:]) if len(parts) > 1 else "")


@contextlib.contextmanager
def watchdog(seconds: float, on_fire: Callable[[], None]):
    """After `seconds`, SIGTERM this process once: pretrain saves its state and raises RunInterrupted.

    pretrain handles SIGTERM itself while it runs; outside it (a watchdog firing just as training
    ends) this context ignores the watchdog's signal, and turns any other SIGTERM into SystemExit,
    so the results are still written.
    """
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        on_fire()
        os.kill(os.getpid(), signal.SIGTERM)

    def outside_pretrain(signum: int, frame: Any) -> None:
        if not fired.is_set():
            raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, outside_pretrain)
    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)


def pretrain_tricks(args, ladder: dict[str, Any]) -> tuple[dict[str, bool], str]:
    """The tricks pretraining uses: those that ran in the ladder (the `fast` preset would turn them
    all on for CUDA), and why any is off."""
    tricks = tricks_that_worked(ladder)
    why = "every trick that ran in the ladder"
    if args.smoke and tricks["compile"]:
        tricks["compile"] = False
        why = "smoke: compile ran on the one-convolution network in the ladder only"
    return tricks, why


def pretrain_config(args, spec: str, device: torch.device, tricks: dict[str, bool], epochs: int,
                    eval_every: int) -> TrainConfig:
    """The `fast` preset on the whole training set, with the run's size, tricks and schedule length."""
    extra = {"projector": args.projector} if args.projector else {}
    return TrainConfig.from_preset(
        PRESET, data=spec, data_root=args.data_root, width=args.width, batch_size=args.batch_size, epochs=epochs,
        eval_every=eval_every, device=str(device), out_dir=str(args.work / "pretrain"), overwrite=True,
        checkpoint_every=0, progress=False, num_workers=args.workers,
        pipeline="batched" if tricks["batched"] else "dataloader", amp="bf16" if tricks["amp"] else "off",
        channels_last="on" if tricks["channels_last"] else "off", compile="on" if tricks["compile"] else "off",
        **extra)


def plan_pretraining(args, ladder, data, device, tricks, results: Results) -> dict[str, Any]:
    """Measure what the plan needs (epoch time from the ladder, one kNN evaluation, the encoder's
    forward rate for the probes) and fit the epochs into the budget left before the deadline."""
    row = matching_row(ladder, tricks)
    if row is None:
        raise RuntimeError("no batched row ran in the ladder: nothing to fit the schedule to")
    n_train, n_test = data["train_images"].shape[0], data["test_images"].shape[0]
    steps = n_train // args.batch_size
    epoch_s = steps * args.batch_size / row["images_per_s"]
    warmup_s = max(0.0, row["first_epoch_s"] - row["timed_epoch_s"])  # compiling, mostly
    # pretraining compiles the graph the ladder compiled: inductor's cache makes that faster
    startup_s = (COMPILE_CACHE_SHARE if row["compile"] else 1.0) * warmup_s + (2.0 if args.smoke else 5.0)
    probe_config = pretrain_config(args, "synthetic", device, tricks, 1, 1)
    eval_s = time_evaluation(probe_config, data, device)
    forward_per_s = encoder_images_per_s(probe_config, device, tricks["channels_last"])
    probes = estimate_probe_s(args, n_train, n_test, forward_per_s)
    left_s = args.deadline_min * 60 - results.elapsed() - sum(probes.values()) - args.reserve_s
    budget_s = min(args.budget_min * 60, left_s)
    floor_s = startup_s + epoch_s + 2 * eval_s  # one epoch at least
    plan = plan_epochs(max(budget_s, floor_s), epoch_s, startup_s, eval_s, args.eval_every)
    plan.update(requested_budget_s=args.budget_min * 60, left_before_deadline_s=round(left_s, 1),
                budget_cut=budget_s < args.budget_min * 60, ladder_row=row["name"], ladder_warmup_s=warmup_s,
                steps_per_epoch=steps, encoder_forward_per_s=forward_per_s, probe_estimate_s=probes)
    plan["raised_to_one_epoch"] = budget_s < floor_s
    if plan["raised_to_one_epoch"]:
        say(f"      the budget ({budget_s:.0f} s) is shorter than one epoch with its evaluations: "
            f"training one epoch ({floor_s:.0f} s) anyway")
    elif plan["budget_cut"]:
        say(f"      the budget is cut from {args.budget_min * 60:.0f} s to {plan['budget_s']:.0f} s so that "
            f"everything ends by --deadline-min {args.deadline_min:g} (probes predicted "
            f"{sum(probes.values()):.0f} s)")
    say(f"      plan: {plan['epochs']} epochs of {epoch_s:.2f} s (ladder row {row['name']!r}), start-up "
        f"{startup_s:.1f} s, kNN every {plan['eval_every']} epochs at {eval_s:.1f} s each: predicted "
        f"{plan['predicted_s']:.0f} s of a {plan['budget_s']:.0f} s budget")
    return plan


SMOKE_WATCHDOG_SLACK_S = 600.0


def watchdog_limit_s(budget_s: float) -> float:
    """When the watchdog stops a run planned for budget_s: a quarter and half a minute of slack."""
    return budget_s * 1.25 + 30


def train_with_watchdog(config: TrainConfig, limit_s: float, out: Path,
                        device: torch.device) -> tuple[nn.Module, str]:
    """pretrain(config) while printing its records and copying metrics.jsonl to `out`; after limit_s
    the watchdog stops it. Returns the trained model and how the run ended ("completed", or
    "stopped by the watchdog": the state pretrain saved on SIGTERM, loaded back)."""
    from vicreg_lib.checkpoint import load_pretrained

    run_dir = Path(config.out_dir)
    follower = MetricsFollower(run_dir, out / METRICS_NAME, config.epochs)
    follower.start()
    fired: list[bool] = []
    try:
        with watchdog(limit_s, lambda: fired.append(True)):
            result = pretrain(config)
        return result.model, "completed"
    except RunInterrupted:
        say(f"      pretraining stopped by {'the watchdog' if fired else 'a signal'} "
            f"after {limit_s:.0f} s; using the state it saved")
        model, _ = load_pretrained(run_dir / "checkpoint.pt", map_location=device)
        if not fired:
            raise
        return model, "stopped by the watchdog"
    finally:
        follower.stop()


def summarize_run(records: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """The run's speed and kNN curve from its metrics records.

    The epoch time is the median training time of the full epochs after the first (the first
    compiles); the overhead is each epoch's wall time beyond training (record, held-out spread,
    weight check, checkpoint, kNN), with and without a kNN evaluation. The kNN curve's "minutes"
    are the epochs' wall-clock times summed up to that record (evaluations included; what comes
    before epoch 1, the data and the first kNN, is the caller's wall_s minus "epochs_wall_s").
    """
    epochs = [r for r in records if "loss" in r]
    full = [r for r in epochs if "steps" not in r]
    timed = full[1:] or full
    summary: dict[str, Any] = {"epochs_done": len(epochs), "steps": epochs[-1]["step"] if epochs else 0}
    if timed:
        images_per_s = statistics.median(r["images_per_s"] for r in timed)
        summary.update(
            epoch_train_s=statistics.median(r["train_time_s"] for r in timed), images_per_s=images_per_s,
            epoch_s=common.EPOCH_IMAGES / images_per_s,
            first_epoch_train_s=full[0]["train_time_s"] if full else None,
            wall_images_per_s=sum(r["images_per_s"] * r["train_time_s"] for r in epochs)  # images / wall
            / sum(r["epoch_time_s"] for r in epochs))
        for label, group in (("with_knn", [r for r in timed if "knn_top1" in r]),
                             ("without_knn", [r for r in timed if "knn_top1" not in r])):
            if group:
                summary[f"overhead_s_{label}"] = statistics.median(r["epoch_time_s"] - r["train_time_s"]
                                                                   for r in group)
    wall, curve = 0.0, []
    for record in records:
        wall += record.get("epoch_time_s", 0.0)
        if "knn_top1" in record:
            curve.append({"epoch": record["epoch"], "minutes": round(wall / 60, 3), "knn_top1": record["knn_top1"],
                          "knn_top1@20": record["knn_top1@20"]})
    summary.update(knn=curve, epochs_wall_s=wall)
    if curve:
        summary.update(final_knn_top1=curve[-1]["knn_top1"], final_knn_top1_at_20=curve[-1]["knn_top1@20"],
                       best_knn_top1=max(point["knn_top1"] for point in curve))
    return summary


def run_pretrain_step(args, spec, device, ladder, data, floor, out, results: Results) -> tuple[nn.Module | None, dict]:
    """Plan, train (retrying once without torch.compile if a compiled run fails), summarise."""
    say(f"[4/5] `{PRESET}` pretraining on the full training set, budget {args.budget_min:g} min")
    tricks, why = pretrain_tricks(args, ladder)
    info: dict[str, Any] = {"attempts": []}
    results.data["pretrain"] = info
    for attempt in range(2):
        plan = plan_pretraining(args, ladder, data, device, tricks, results)
        config = pretrain_config(args, spec, device, tricks, plan["epochs"], plan["eval_every"])
        info.update(plan=plan, tricks=dict(tricks), tricks_reason=why, config=config.to_dict())
        results.save()
        started = time.perf_counter()
        try:
            # the smoke plans a few seconds of training, which a shared CPU can stretch many times over:
            # there the watchdog only guards against a hang
            limit_s = watchdog_limit_s(plan["budget_s"]) + (SMOKE_WATCHDOG_SLACK_S if args.smoke else 0.0)
            model, ending = train_with_watchdog(config, limit_s, out, device)
        except Exception as error:
            info["attempts"].append({"tricks": dict(tricks), "error": f"{type(error).__name__}: {error}"[:2000]})
            results.error("pretrain", error)
            if not tricks["compile"] or attempt:
                return None, info
            tricks, why = dict(tricks, compile=False), "torch.compile failed in pretraining: retried without it"
            continue
        info["attempts"].append({"tricks": dict(tricks), "ending": ending})
        info.update(ending=ending, wall_s=time.perf_counter() - started,
                    **summarize_run(read_metrics(config.out_dir), args.batch_size))
        if device.type == "cuda":
            info["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if "epoch_s" in info:
            floor["ours_pretraining"] = flops_floor.share_of_floor(floor, info["epoch_s"])
        return model, info
    return None, info


# ============================================================================ step 5: weights and probes


def save_weights(model: nn.Module, out: Path, results: Results) -> None:
    manifest = save_weight_parts(model, out, max_part_bytes=MAX_PART_BYTES)
    results.data["weights"] = {**manifest, "loader": "benchmarks/gpu_run.py load_gpu_model(out) or "
                                                    "vicreg_lib.weight_parts.load_model_from_parts(out)"}
    say(f"      weights: {len(manifest['files'])} part(s), {manifest['bytes'] / 2**20:.1f} MiB in bf16")


def load_gpu_model(out: str | os.PathLike) -> nn.Module:
    """The VICReg model a gpu_run wrote under `out` (float32, eval mode, on the CPU), its parts
    checked against the sha256 in results.json. The encoder is ``model.encoder``."""
    out = Path(out)
    weights = json.loads((out / RESULTS_NAME).read_text()).get("weights")
    if not weights:
        raise FileNotFoundError(f"{str(out / RESULTS_NAME)!r} records no weights; the run did not get that far")
    return load_model_from_parts(out, sha256=weights["sha256"])


def probe_record(result: dict[str, Any], n_test: int) -> dict[str, Any]:
    keep = ("top1", "top5", "train_top1", "protocol", "epochs", "lr", "batch_size", "normalize_test", "reported",
            "num_train", "seconds")
    return {**{key: result[key] for key in keep if key in result}, "num_test": n_test}


def run_probes(args, model: nn.Module, data: dict[str, Any], device: torch.device, channels_last: bool,
               plan: dict[str, Any], results: Results) -> None:
    """The `fast` and `standard` linear probes on every test image (the standard one is skipped only
    when it would end after --deadline-min by more than a minute)."""
    from vicreg_lib.eval.probes import linear_eval

    say("[5/5] linear probes (frozen encoder, every test image)")
    encoder = model.encoder.to(device).eval()
    if channels_last:  # the frozen encoder runs in the memory format it was trained in
        encoder = encoder.to(memory_format=torch.channels_last)
    probes = results.data.setdefault("probes", {})
    estimates = plan.get("probe_estimate_s", {})
    n_test = int(data["test_images"].shape[0])
    for protocol, epochs in (("fast", args.fast_epochs), ("standard", args.standard_epochs)):
        left_s = args.deadline_min * 60 - results.elapsed()
        if protocol == "standard" and estimates.get(protocol, 0) > left_s + 60:
            probes[protocol] = {"skipped": f"predicted {estimates[protocol]:.0f} s, {left_s:.0f} s left before "
                                           f"--deadline-min {args.deadline_min:g}"}
            say(f"      {protocol}: skipped ({probes[protocol]['skipped']})")
            continue
        try:
            result = linear_eval(encoder, data["train_images"], data["train_labels"], data["test_images"],
                                 data["test_labels"], protocol=protocol, epochs=epochs, device=device)
        except Exception as error:
            results.error(f"probe {protocol}", error)
            continue
        probes[protocol] = probe_record(result, n_test)
        say(f"      {protocol}: top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}% "
            f"({result['epochs']} epochs, {result['seconds']:.1f} s)")
        results.save()


# ============================================================================ targets and code paths


def _check(name: str, value: float | None, passed: Callable[[float], bool], detail: str,
           judged: bool, reason: str) -> dict[str, Any]:
    if value is None:
        return common.skipped_check(name, "not measured in this run")
    if not judged:
        return {**common.skipped_check(name, f"{reason}; measured {detail}"), "value": value}
    return {**common.check(name, passed(value), detail), "value": value}


def target_checks(data: dict[str, Any], judged: bool, reason: str = "") -> list[dict[str, Any]]:
    """PASS/FAIL of issue 11's targets (and moonshots) from the results; SKIP when not `judged`
    (a CPU or smoke run: `reason` says why) or not measured."""
    ladder_rows = data.get("ladder", {}).get("rows", [])
    best = train_throughput.best_batched(ladder_rows)
    blog = ladder_rows[0] if ladder_rows and ladder_rows[0]["pipeline"] == "dataloader" else None
    run = data.get("pretrain", {})
    epoch_s = run.get("epoch_s") or (best or {}).get("epoch_s")
    epoch_source = "pretraining's full epochs" if run.get("epoch_s") else "ladder, extrapolated"
    speedup = blog["epoch_s"] / best["epoch_s"] if best and blog else None
    floor = data.get("floor", {})
    share = floor["floor_epoch_s"] / epoch_s if floor.get("floor_epoch_s") and epoch_s else None
    knn = run.get("final_knn_top1")
    budget = run.get("plan", {}).get("budget_s")
    epoch_detail = f"{epoch_s:.2f} s per 50,000 pairs ({epoch_source})" if epoch_s else ""
    speed_detail = f"{speedup:.1f}x ({best['name']} vs {blog['name']})" if speedup else ""
    knn_detail = f"{knn:.2f}% after {run.get('epochs_done')} epochs, budget {budget or 0:.0f} s" if knn else ""
    share_detail = f"{share:.1%} (floor {floor.get('floor_epoch_s', 0):.2f} s vs {epoch_s or 0:.2f} s)" if share else ""
    args = (judged, reason)
    return [
        _check(f"VICReg epoch (width 64, batch 256) < {EPOCH_TARGET_S:g} s", epoch_s,
               lambda v: v < EPOCH_TARGET_S, epoch_detail, *args),
        _check(f"moonshot: epoch < {EPOCH_MOONSHOT_S:g} s", epoch_s, lambda v: v < EPOCH_MOONSHOT_S, epoch_detail,
               *args),
        _check(f">= {SPEEDUP_TARGET:g}x the blog loop (2 workers), same GPU", speedup,
               lambda v: v >= SPEEDUP_TARGET, speed_detail, *args),
        _check(f"moonshot: >= {SPEEDUP_MOONSHOT:g}x the blog loop", speedup, lambda v: v >= SPEEDUP_MOONSHOT,
               speed_detail, *args),
        _check(f">= {FLOOR_TARGET:.0%} of the FLOP floor", share, lambda v: v >= FLOOR_TARGET, share_detail, *args),
        _check(f"kNN (k=200) >= {KNN_TARGET:g}% within the budget", knn, lambda v: v >= KNN_TARGET, knn_detail,
               *args),
        _check(f"moonshot: kNN (k=200) >= {KNN_MOONSHOT:g}%", knn, lambda v: v >= KNN_MOONSHOT, knn_detail, *args),
    ]


def _row_uses(row: dict[str, Any], trick: str) -> bool:
    return row["pipeline"] == "batched" if trick == "batched" else bool(row[trick])


def code_paths(data: dict[str, Any], device: torch.device, smoke: bool) -> dict[str, Any]:
    """Each GPU code path: whether it ran in the ladder, its error if it failed, whether pretraining used it."""
    ladder = data.get("ladder", {"rows": [], "failures": []})
    used = data.get("pretrain", {}).get("tricks", {})
    names = {"batched": "batched augmentation on the device", "amp": "bf16 autocast",
             "channels_last": "channels-last", "compile": "torch.compile (inductor)"}
    paths = {}
    for trick, label in names.items():
        rows = [row["name"] for row in ladder["rows"] if _row_uses(row, trick)]
        errors = [failure["error"] for failure in ladder["failures"] if failure.get("trick") == trick]
        paths[trick] = {"what": label, "ran_in_ladder": bool(rows), "error": errors[0] if errors else None,
                        "used_in_pretraining": used.get(trick)}
    paths["compile"]["note"] = ("smoke: compiled the one-convolution network" if smoke else None)
    forced = accelerator_augmentation_forced()
    paths["augment_accelerator_path"] = {
        "what": "BatchAugment computes every op on every row (no host sync)", "ran": device.type != "cpu" or forced,
        "forced_on_cpu": forced}
    return paths


# ============================================================================ the command


def header(args, device: torch.device) -> dict[str, Any]:
    """Where, when and how: the device, versions and the exact command."""
    import torchvision

    info = {"benchmark": "gpu_run", "status": "running", **common.run_info(device),
            "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "cpu": common.cpu_model(), "cpu_count": common.cpu_count(),
            "settings": {key: value for key, value in vars(args).items() if key != "device"}}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def run_all(args, device: torch.device, results: Results) -> None:
    """The five steps; each failure is recorded and the steps that do not need its result go on."""
    spec = args.data or f"archive:{args.archive}"
    data = load_data(spec, args.data_root, results)
    results.save()
    ladder = {"rows": [], "failures": []}
    try:
        ladder = run_ladder_step(args, spec, device, results)
    except Exception as error:
        results.error("ladder", error)
    results.save()
    floor: dict[str, Any] = {}
    try:
        floor = run_floor_step(args, device, ladder, results)
    except Exception as error:
        results.error("floor", error)
    results.save()
    model, info = None, {}
    try:
        model, info = run_pretrain_step(args, spec, device, ladder, data, floor, args.out, results)
    except Exception as error:
        results.error("pretrain", error)
    results.save()
    if model is None:
        return
    try:
        save_weights(model, args.out, results)
    except Exception as error:
        results.error("weights", error)
    results.save()
    run_probes(args, model, data, device, bool(info.get("tricks", {}).get("channels_last")), info.get("plan", {}),
               results)


def summarize(args, device: torch.device, results: Results) -> None:
    """Code paths, PASS/FAIL lines and the files written, at the end (also after a failure)."""
    data = results.data
    data["code_paths"] = code_paths(data, device, args.smoke)
    judged = device.type == "cuda" and not args.smoke and args.width == 64 and args.batch_size == 256
    reason = "a smoke run" if args.smoke else "needs CUDA, width 64 and batch 256"
    say("\nsummary")
    data["checks"] = target_checks(data, judged, reason)
    for trick, path in data["code_paths"].items():
        state = "FAILED: " + path["error"] if path.get("error") else ("ran" if path.get("ran_in_ladder",
                                                                                      path.get("ran")) else "not run")
        say(f"code path {trick}: {state[:300]}")
    data["files"] = sorted(entry.name for entry in args.out.iterdir() if not entry.name.startswith("."))
    if len(data["files"]) > MAX_RETURNED_FILES:
        say(f"WARNING: {len(data['files'])} files under {args.out}; at most {MAX_RETURNED_FILES} come back")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number; give e.g. 5 or 0.5")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--out", type=Path, default=common.RESULTS_DIR / "gpu_run", help="folder for the <= 8 files that come back")
    add("--archive", type=Path, default=common.REPO / ".carry" / "cifar10_jpeg.tar.gz",
        help="the CIFAR-10 JPEG archive (default: %(default)s)")
    add("--data", default=None, help="a data spec instead of --archive (e.g. folder:PATH, npz:PATH)")
    add("--data-root", default=None, help="where archives are unpacked (default: $VICREG_DATA_ROOT, else data/)")
    add("--work", type=Path, default=None, help="scratch folder for the pretraining run (default: runs/gpu_run)")
    add("--device", default="auto", type=common.resolve_device, help="auto, cpu, cuda, cuda:N")
    add("--budget-min", type=positive_float, default=None, help="pretraining wall-clock budget (default 5)")
    add("--deadline-min", type=positive_float, default=None,
        help="the whole command should end by then: the budget shrinks to fit (default 7.5)")
    add("--reserve-s", type=float, default=None, help="seconds kept for saving and the summary (default 15)")
    add("--eval-every", type=common.positive_int, default=None, help="kNN every N epochs (default: ~8 in a run)")
    add("--width", type=common.positive_int, default=None, help="ResNet-18 width (default 64)")
    add("--batch-size", type=common.positive_int, default=None, help="batch size (default 256)")
    add("--projector", default=None, help="projector spec (default: the preset's)")
    add("--ladder-steps", type=common.positive_int, default=None, help="timed steps per ladder row (default 30)")
    add("--workers", type=common.positive_int, default=None, help="the many-worker DataLoader (default: CPUs)")
    add("--skip", action="append", default=[], metavar="WORD", help="skip ladder rows whose name holds WORD")
    add("--matmul-size", type=common.positive_int, default=None, help="side of the floor's matmul")
    add("--fast-epochs", type=common.positive_int, default=None, help="epochs of the fast probe (default 100)")
    add("--standard-epochs", type=common.positive_int, default=None,
        help="epochs of the standard probe (default 100)")
    add("--smoke", action="store_true", help="every step on the CPU at tiny sizes, under 2 minutes")
    return fill_defaults(parser.parse_args(argv))


def fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The GPU run's sizes, or the smoke's; anything given on the command line wins."""
    smoke = dict(width=8, batch_size=32, projector="64-64-64", ladder_steps=2, budget_min=0.2, deadline_min=2.0,
                 reserve_s=5.0, fast_epochs=5, standard_epochs=1, matmul_size=256)
    full = dict(width=64, batch_size=256, projector=None, ladder_steps=30, budget_min=5.0, deadline_min=7.5,
                reserve_s=15.0, fast_epochs=100, standard_epochs=100,
                matmul_size=8192 if args.device.type == "cuda" else 2048)
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.smoke:
        args.device = torch.device("cpu")
    args.workers = args.workers or common.cpu_count()
    args.out = args.out.resolve()
    args.work = (args.work or common.REPO / "runs" / ("gpu_run_smoke" if args.smoke else "gpu_run")).resolve()
    default_root = args.work / "data" if args.smoke else os.environ.get("VICREG_DATA_ROOT") or common.REPO / "data"
    args.data_root = str(Path(args.data_root or default_root))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.smoke and args.data is None:
        args.archive = make_smoke_archive(args.work / "smoke-archive" / "cifar10_jpeg.tar.gz")
    if args.data is None and not args.archive.is_file():
        raise SystemExit(f"gpu_run: no archive at {str(args.archive)!r}; copy the CIFAR-10 JPEG archive there "
                         f"(mkdir -p .carry && cp ../shared/data/cifar10_jpeg.tar.gz .carry/) or pass --data SPEC")
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in (RESULTS_NAME, METRICS_NAME, LOG_NAME):
        (args.out / stale).unlink(missing_ok=True)
    with tee_output(args.out / LOG_NAME):
        results = Results(args.out / RESULTS_NAME, started, header(args, args.device))
        say(f"gpu_run on {results.data['device']}, torch {torch.__version__}; out {args.out}")
        if args.smoke:
            force_accelerator_augmentation()
        try:
            run_all(args, args.device, results)
            results.data["status"] = "complete"
        except BaseException as error:
            results.data["status"] = "failed"
            results.error("run", error)
            raise
        finally:
            summarize(args, args.device, results)
            results.save()
            say(f"done in {results.elapsed() / 60:.1f} min: {', '.join(results.data['files'])}")
    return results.data


if __name__ == "__main__":
    main()
