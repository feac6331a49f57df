"""The GPU run in one command: data, step profile, recipe A/B, speed ladder, FLOP floor, a budgeted
`fast` run, probes, weights.

    PYTHONPATH=. python -u benchmarks/gpu_run.py --archive PATH --out OUT --deadline-min 9.3   # GPU
    PYTHONPATH=. python -u benchmarks/gpu_run.py --smoke --out /tmp/gpu_smoke     # CPU, a few minutes

It needs torch, torchvision and numpy only. The steps, in order:

1. data: the full CIFAR-10 (JPEG q75) from --archive (the `archive:` data spec: unpacked once
   into --data-root, its decoded splits cached), or any data spec given by --data;
2. step_profile: step_profile.profile_step at batch 256 and 1,024 within --profile-budget-s;
3. recipe_ab: recipe_ab.run_recipe_ab within --ab-budget-s (0 skips it); the TrainConfig
   overrides that won are applied to the pretraining (skipped with a note when the module is absent);
4. ladder: train_throughput.py's ladder on --ladder-steps batches of the training images: the blog
   post's loop (DataLoader + per-image transforms, fp32) with 2 and with all workers, then ours
   adding one trick at a time (data on the device + batched augmentation, bf16, channels-last,
   CUDA graph, torch.compile). A trick that fails is recorded and left out from then on;
5. floor: flops_floor.py's FLOP floor and our share of it;
6. pretrain: the `fast` preset on the full training set fitted to --budget-min: the ladder row that
   fits the most epochs into the budget (its epoch time and start-up), a measured kNN evaluation
   and the probes' predicted time give the number of epochs (the cosine schedule spans exactly
   those); kNN (k=200 and k=20, every test image) every `eval_every` epochs;
7. weights: the model in bf16 as one vicreg_lib checkpoint, model-bf16.pt, or with --split-weights-mib
   that file's bytes cut into parts of at most so many MiB (for a transfer that limits file sizes);
8. probes: the `fast` and `standard` linear probes on every test image,
   each predicted from a timed epoch of the probe itself (vicreg_lib.eval.probes).

The whole command ends by --deadline-min: before each step its time is estimated and a step
that does not fit is skipped, recorded as "skipped: <why>"; the pretraining's budget is kept
whole as long as possible (the steps before it are skipped first). --smoke runs every step
whatever the clock says.

Under --out: results.json (every figure, the device, versions, command, the steps' states, the
code paths that ran or failed, PASS/FAIL of each target), rewritten after every step and on
SIGTERM; metrics.jsonl (the pretraining's records), log.txt (this output), step-profile.json and
the model's weights in bf16 (model-bf16.pt, or its parts model-bf16.partIofN.pt). Load them with
`load_gpu_model(out)` here or `vicreg_lib.load_pretrained(out / "model-bf16.pt")` (given `out`
itself when they are in parts).

--smoke takes every path a CPU can: a small archive it makes (synthetic images as JPEG) through
the same `archive:` spec, width 8, bf16 autocast, channels-last and torch.compile with inductor
on the CPU. Inductor compiles a ResNet-18 for minutes on a CPU, so the smoke's compile row
trains a one-convolution network through the same pretrain -> torch.compile -> training_step path.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
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
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import common  # first: it puts this checkout on sys.path for vicreg_lib
import flops_floor
import step_profile
import train_throughput
from vicreg_lib.checkpoint import load_pretrained, save_checkpoint
from vicreg_lib.config import TrainConfig, field_names
from vicreg_lib.data import load_dataset, make_synthetic
from vicreg_lib.eval.features import extract_features, knn_accuracy
from vicreg_lib.model import Projector, VICReg, build_model
from vicreg_lib.runstate import read_metrics
from vicreg_lib.train import RunInterrupted, pretrain

PRESET = "fast"
RESULTS_NAME, METRICS_NAME, LOG_NAME, PROFILE_NAME = "results.json", "metrics.jsonl", "log.txt", "step-profile.json"
WEIGHTS_PREFIX = "model-bf16"
STEPS = ("data", "step_profile", "recipe_ab", "ladder", "floor", "pretrain", "weights", "probes")
TARGET_EVALS = 8  # kNN evaluations per run when --eval-every is not given
COMPILE_CACHE_SHARE = 0.5  # planned share of the ladder's compile time that pretraining spends again
# the targets and moonshots, judged on a GPU at width 64
EPOCH_TARGET_S, EPOCH_MOONSHOT_S = 2.5, 1.5
SPEEDUP_TARGET = 20.0
FLOOR_TARGET, FLOOR_MOONSHOT = 0.15, 0.30
KNN_TARGET, KNN_MOONSHOT = 80.0, 85.0
# guesses for the plan printed at the start, before anything is measured (from the first H200 run)
DATA_GUESS_S, LADDER_ROW_GUESS_S, FLOOR_GUESS_S, FAST_PROBE_GUESS_S, WEIGHTS_GUESS_S = 15.0, 6.0, 10.0, 35.0, 5.0
PLANNING_GUESS_S = 10.0  # the pretraining's planning: a kNN evaluation and a timed epoch of each probe
BLOG_IMAGES_PER_S_GUESS = 800.0  # the blog loop with 2 workers on the GPU machine's CPUs
MIN_BUDGETED_STEP_S = 10.0  # a profile or A/B given less than this is skipped instead
# settings this command decides itself (sizes, tricks, schedule, files): an A/B override of one is not applied
RUN_SETTINGS = frozenset({"preset", "data", "data_root", "max_train_images", "width", "batch_size", "epochs",
                          "device", "out_dir", "eval_every", "eval_at_start", "pipeline", "num_workers", "amp",
                          "channels_last", "compile", "cuda_graph", "log_every", "checkpoint_every", "overwrite",
                          "resume", "progress", "max_steps", "projector"})


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
    """The results JSON, rewritten atomically after every step (and on SIGTERM). `refresh` (data ->
    None) brings the summary, code paths and checks up to date before each write."""

    def __init__(self, path: Path, started: float, payload: dict[str, Any],
                 refresh: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path, self.started, self.data, self.refresh = path, started, payload, refresh
        self.data.setdefault("errors", [])
        self.data.setdefault("steps", {})
        self.writes = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def error(self, step: str, error: BaseException) -> None:
        """Record a caught failure (and go on)."""
        self.data["errors"].append({"step": step, "error": f"{type(error).__name__}: {error}"[:2000],
                                    "traceback": traceback.format_exc(limit=10)[-4000:]})
        say(f"ERROR in {step}: {type(error).__name__}: {str(error)[:500]} (recorded; going on)")

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        if self.refresh is not None:
            with contextlib.suppress(Exception):  # a summary that fails must not lose the figures
                self.refresh(self.data)
        text = json.dumps(common.finite(self.data), indent=2, default=_json_default, allow_nan=False) + "\n"
        self.writes += 1
        # a name of its own per write: a SIGTERM handler saving in the middle of a save cannot clobber it
        scratch = self.path.with_name(f".{self.path.name}.{os.getpid()}.{self.writes}.tmp")
        scratch.write_text(text)
        os.replace(scratch, self.path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return repr(value)[:500]  # whatever a step returned: kept readable rather than failing the write


class Clock:
    """The command's deadline: what is left, and whether an estimated step fits.

    enforce False (the smoke): every step fits, whatever the clock says; the estimates are still
    recorded.
    """

    def __init__(self, results: Results, deadline_s: float, reserve_s: float, enforce: bool) -> None:
        self.results, self.deadline_s, self.reserve_s, self.enforce = results, deadline_s, reserve_s, enforce

    def left(self) -> float:
        """Seconds left before the deadline, less the reserve for the last write."""
        return self.deadline_s - self.results.elapsed() - self.reserve_s

    def refusal(self, estimate_s: float, protect_s: float = 0.0, what: str = "it") -> str | None:
        """Why a step of `estimate_s` does not fit before the deadline with `protect_s` kept for
        later steps (None: it fits, or the clock is not enforced)."""
        left = self.left() - protect_s
        if not self.enforce or estimate_s <= left:
            return None
        kept = f" ({protect_s:.0f} s kept for the pretraining and probes)" if protect_s else ""
        return f"{what} needs ~{estimate_s:.0f} s, {max(left, 0):.0f} s left before the deadline{kept}"


class Skip(Exception):
    """Raised by a step that does not fit (or cannot run): its message says why."""


def run_step(results: Results, name: str, fn: Callable[[], Any], default: Any = None) -> Any:
    """Run one step: record "ran", "skipped: <why>" or "failed: <error>", then write results.json."""
    try:
        value = fn()
        results.data["steps"][name] = "ran"
    except Skip as why:
        results.data["steps"][name] = f"skipped: {why}"
        say(f"      {name}: skipped ({why})")
        value = default
    except Exception as error:
        results.data["steps"][name] = f"failed: {type(error).__name__}: {str(error)[:300]}"
        results.error(name, error)
        value = default
    results.save()
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
    say(f"[data] {spec} (data root {root})")
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


# ============================================================================ step 2: the step profile


def run_profile_step(args, device: torch.device, clock: Clock, protect_s: float, results: Results) -> dict:
    """step_profile.profile_step within what is left of --profile-budget-s; its JSON beside results.json."""
    budget = args.profile_budget_s if not clock.enforce else min(args.profile_budget_s, clock.left() - protect_s)
    if args.profile_budget_s <= 0:
        raise Skip("--profile-budget-s 0")
    if budget < MIN_BUDGETED_STEP_S:
        raise Skip(clock.refusal(MIN_BUDGETED_STEP_S, protect_s, "the step profile") or "no time left")
    say(f"[step_profile] width {args.width}, batches {args.profile_batch_sizes}, budget {budget:.0f} s")
    profile = step_profile.profile_step(
        device, width=args.width, batch_sizes=args.profile_batch_sizes, projector=args.projector,
        use_compile=not args.smoke, budget_s=None if args.smoke else budget, log=say,
        **(dict(warmup=1, steps=2, repeats=2) if args.smoke else {}))
    step_profile.print_profile(profile)
    train_throughput.reset_compiler()
    if device.type == "cuda":  # the profile's models and graphs are gone: give their memory back
        gc.collect()
        torch.cuda.empty_cache()
    payload = {"benchmark": "step_profile", **common.run_info(device), **profile}
    scratch = args.out / f".{PROFILE_NAME}.tmp"
    scratch.write_text(json.dumps(common.finite(payload), indent=2, default=_json_default) + "\n")
    os.replace(scratch, args.out / PROFILE_NAME)
    summary = {"file": PROFILE_NAME, "graph_check": profile["graph_check"], "aten_calls": profile["aten_calls"],
               "ms": {batch: {name: part.get("ms") for name, part in parts.items()}
                      for batch, parts in profile["parts"].items()},
               "seconds": profile["seconds"], "budget_s": budget,
               # the first compiled part's seconds, compiling included: what the ladder's compiled row will cost
               "compile_s": max((part.get("seconds", 0.0) for parts in profile["parts"].values()
                                 for name, part in parts.items() if name in step_profile.COMPILED_PARTS), default=None)}
    results.data["step_profile"] = summary
    return summary


# ============================================================================ step 3: the recipe A/B


def run_ab_step(args, spec: str, device: torch.device, clock: Clock, protect_s: float,
                results: Results) -> dict[str, Any]:
    """recipe_ab.run_recipe_ab within --ab-budget-s; returns the TrainConfig overrides that won ({}
    when skipped). Overrides that are not TrainConfig settings, or are settings this command decides
    (RUN_SETTINGS), are recorded and left out."""
    if args.ab_budget_s <= 0:
        raise Skip("--ab-budget-s 0")
    try:
        import recipe_ab
    except ModuleNotFoundError as error:
        if error.name != "recipe_ab":
            raise
        raise Skip("benchmarks/recipe_ab.py is not in this checkout") from None
    if ((results.data.get("step_profile") or {}).get("graph_check") or {}).get("passed") is False:
        raise Skip("the graphed step failed its check against the eager step: its runs would decide nothing")
    budget = args.ab_budget_s if not clock.enforce else min(args.ab_budget_s, clock.left() - protect_s)
    if budget < MIN_BUDGETED_STEP_S:
        raise Skip(clock.refusal(MIN_BUDGETED_STEP_S, protect_s, "the recipe A/B") or "no time left")
    say(f"[recipe_ab] budget {budget:.0f} s")
    started = time.perf_counter()
    outcome = recipe_ab.run_recipe_ab(data=spec, data_root=args.data_root, device=str(device), budget_s=budget,
                                      out_dir=args.work / "recipe_ab", smoke=args.smoke)
    train_throughput.reset_compiler()
    overrides = dict(outcome.get("overrides") or {})
    left_out = sorted(key for key in overrides if key not in field_names() or key in RUN_SETTINGS)
    applied = {key: value for key, value in overrides.items() if key not in left_out}
    try:
        TrainConfig.from_preset(PRESET, **applied)
    except (TypeError, ValueError) as error:  # a bad value must not break every later step
        results.data["recipe_ab"] = {"result": outcome, "overrides": {}, "rejected": applied, "why": str(error)}
        raise ValueError(f"the A/B's overrides {applied} are not a valid config ({error}); none applied") from None
    results.data["recipe_ab"] = {"result": outcome, "overrides": applied, "left_out": left_out,
                                 "budget_s": budget, "seconds": time.perf_counter() - started}
    say(f"      overrides that won: {applied or 'none'}"
        + (f"; left out (not recipe settings): {left_out}" if left_out else ""))
    return applied


# ============================================================================ step 4: the ladder


def ladder_row_estimate(variant: train_throughput.Variant, args, rows: list[dict[str, Any]],
                        profile: dict[str, Any]) -> float:
    """Seconds a ladder row will take: the blog loop's two epochs at the rate guessed (or measured),
    a compiled row the profile's compile time, any other row the slowest batched row so far."""
    steps = args.ladder_steps * (2 if variant.pipeline == "dataloader" else 1)
    if variant.pipeline == "dataloader":
        rate = rows[0]["images_per_s"] if rows else BLOG_IMAGES_PER_S_GUESS
        return 2 * steps * args.batch_size / rate + 5.0
    batched = [row["wall_s"] for row in rows if row["pipeline"] == "batched"]
    row_s = max(batched) if batched else LADDER_ROW_GUESS_S
    if variant.compile and not args.smoke:
        row_s += (profile or {}).get("compile_s") or step_profile.COMPILE_GUESS_S
    return row_s


def run_ladder_step(args, spec: str, device: torch.device, clock: Clock, protect_s: float,
                    overrides: dict[str, Any], profile: dict[str, Any], results: Results) -> dict[str, Any]:
    """The throughput ladder on a subset of `spec`'s training images; failures recorded, rows that do
    not fit before the deadline skipped."""
    say(f"[ladder] width {args.width}, batch {args.batch_size}, preset {PRESET}; an epoch of "
        f"{args.ladder_steps} steps (blog rows {2 * args.ladder_steps}) to warm up, then one timed")
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []

    def measure(variant: train_throughput.Variant) -> dict[str, Any]:
        smoke_compile = args.smoke and variant.compile
        # the blog rows restart their workers every epoch, as the blog's loop does: a longer epoch
        # weighs that start-up nearer to a real epoch's share (1/195 steps)
        steps = args.ladder_steps * (2 if variant.pipeline == "dataloader" else 1)
        started = time.perf_counter()
        with one_conv_model_in_pretrain() if smoke_compile else contextlib.nullcontext(), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")  # each warning once per place, not per step
            row = train_throughput.measure_variant(
                variant, args.width, args.batch_size, args.projector, device, steps, preset=PRESET,
                data=spec, data_root=args.data_root, overrides=overrides)
        row.update(steps=steps, wall_s=time.perf_counter() - started, warnings=graph_warnings(caught))
        if smoke_compile:
            row["model"] = "one-convolution network (smoke: inductor on a CPU)"
        rows.append(row)
        return row

    def skip_reason(variant: train_throughput.Variant) -> str | None:
        return train_throughput.cuda_only(variant, device) or clock.refusal(
            ladder_row_estimate(variant, args, rows, profile), protect_s, f"the row {variant.name!r}")

    rows_done, failures = train_throughput.run_ladder(measure, args.workers, skip=args.skip, keep_going=True,
                                                      log=say, skip_reason=skip_reason, skipped=skipped)
    train_throughput.reset_compiler()
    if rows_done:
        train_throughput.print_ladder(rows_done, f"; timed epochs of {args.ladder_steps} steps of real images, "
                                                 f"blog rows {2 * args.ladder_steps}")
    ladder = {"rows": rows_done, "failures": failures, "skipped_rows": skipped, "steps": args.ladder_steps,
              "blog_steps": 2 * args.ladder_steps, "extrapolated_to": common.EPOCH_IMAGES, "overrides": overrides}
    results.data["ladder"] = ladder
    return ladder


def graph_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """Print every warning caught while training (recording them hides them otherwise); return those
    of a CUDA graph capture that failed (the step then ran eagerly)."""
    for warning in caught:
        say(f"      warning: {str(warning.message)[:500]}")
    return [str(w.message)[:300] for w in caught if "CUDA graph" in str(w.message)]


TRICK_KEYS = ("amp", "channels_last", "cuda_graph", "compile")


def tricks_of(row: dict[str, Any]) -> dict[str, bool]:
    return {"batched": row["pipeline"] == "batched", **{key: bool(row.get(key)) for key in TRICK_KEYS}}


def tricks_that_worked(ladder: dict[str, Any]) -> dict[str, bool]:
    """Which of our tricks ran in the ladder without an error."""
    rows = ladder["rows"]
    return {"batched": any(row["pipeline"] == "batched" for row in rows),
            **{key: any(row.get(key) for row in rows) for key in TRICK_KEYS}}


def row_epochs_in(row: dict[str, Any], budget_s: float, steps_per_epoch: int, batch_size: int) -> float:
    """Epochs a pretraining with `row`'s tricks fits into budget_s (its start-up: the first epoch's extra)."""
    epoch_s = steps_per_epoch * batch_size / row["images_per_s"]
    return (budget_s - row_startup_s(row)) / epoch_s


def row_startup_s(row: dict[str, Any]) -> float:
    """The row's warm-up beyond a timed epoch (compiling, mostly); inductor's cache repays part of it."""
    warmup_s = max(0.0, row["first_epoch_s"] - row["timed_epoch_s"])
    return (COMPILE_CACHE_SHARE if row.get("compile") else 1.0) * warmup_s


def profile_row(profile: dict[str, Any], batch_size: int, device: torch.device) -> dict[str, Any] | None:
    """A stand-in ladder row from the step profile (augmentation + the fastest uncompiled whole step
    at this batch size), for a pretraining whose ladder rows were all skipped or failed."""
    ms = (profile or {}).get("ms", {}).get(str(batch_size), {})
    steps = {name: ms.get(name) for name in ("graphed_step", "eager_step") if ms.get(name)}
    if not steps or not ms.get("augment"):
        return None
    name = min(steps, key=steps.get)
    on_cuda = device.type == "cuda"
    return {"name": f"step profile: {name}", "pipeline": "batched", "first_epoch_s": 0.0, "timed_epoch_s": 0.0,
            "images_per_s": batch_size * 1000 / (steps[name] + ms["augment"]), "amp": on_cuda,
            "channels_last": on_cuda, "cuda_graph": name == "graphed_step", "compile": False}


def choose_row(ladder: dict[str, Any], budget_s: float, steps_per_epoch: int, batch_size: int,
               smoke: bool) -> dict[str, Any] | None:
    """The batched row whose tricks fit the most epochs into the budget (compile pays its start-up).
    The smoke takes the row with the most tricks instead (every code path, whatever a loaded CPU
    measured), leaving out its compiled row: that trained a one-convolution network."""
    rows = [row for row in ladder["rows"] if row["pipeline"] == "batched" and not (smoke and row["compile"])]
    if not rows:
        return None
    if smoke:
        return rows[-1]
    return max(rows, key=lambda row: row_epochs_in(row, budget_s, steps_per_epoch, batch_size))


# ============================================================================ step 5: the floor


def run_floor_step(args, device: torch.device, clock: Clock, protect_s: float, ladder: dict[str, Any],
                   overrides: dict[str, Any], results: Results) -> dict[str, Any]:
    why = clock.refusal(FLOOR_GUESS_S, protect_s, "the FLOP floor")
    if why:
        raise Skip(why)
    say("[floor] FLOP floor")
    config = train_throughput.bench_config(PRESET, args.width, args.batch_size, args.projector, **overrides)
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


# ============================================================================ step 6: pretraining


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




def time_probe(encoder: nn.Module, data: dict[str, Any], device: torch.device, protocol: str,
               epochs: int) -> dict[str, float]:
    """The probe's predicted seconds at `epochs` epochs, from one timed epoch of the probe itself.

    One epoch = a fixed part (features of the test images, and for `fast` of the training images
    too) + one epoch of training; the fixed part is timed on its own right after.
    predicted = fixed + epochs x (one epoch - fixed).
    """
    from vicreg_lib.eval.probes import linear_eval

    one = linear_eval(encoder, data["train_images"], data["train_labels"], data["test_images"],
                      data["test_labels"], protocol=protocol, epochs=1, device=device)["seconds"]
    images = [data["test_images"]] + ([data["train_images"]] if protocol == "fast" else [])
    common.synchronize(device)
    started = time.perf_counter()
    for batch in images:
        extract_features(encoder, batch, device=device)
    common.synchronize(device)
    fixed = time.perf_counter() - started
    per_epoch = max(one - fixed, 0.1 * one)  # the first epoch warms up too: never below a tenth of it
    return {"one_epoch_s": one, "fixed_s": fixed, "epoch_s": per_epoch, "epochs": epochs,
            "predicted_s": fixed + epochs * per_epoch}


def time_probes(args, config: TrainConfig, data: dict[str, Any], device: torch.device,
                channels_last: bool) -> dict[str, dict[str, float]]:
    """Both probes' predictions, timed on a fresh encoder of the pretraining's shape (the time depends
    on the shapes only)."""
    encoder = build_model(**config.arch()).encoder.to(device).eval()
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    return {protocol: time_probe(encoder, data, device, protocol, epochs)
            for protocol, epochs in (("fast", args.fast_epochs), ("standard", args.standard_epochs))}


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



def pretrain_config(args, spec: str, device: torch.device, tricks: dict[str, bool], epochs: int,
                    eval_every: int, overrides: dict[str, Any]) -> TrainConfig:
    """The `fast` preset on the whole training set, with the run's size, tricks, schedule length and
    the A/B's overrides; the loss is read on the host every 50 steps only."""
    extra = {"projector": args.projector} if args.projector else {}
    settings = dict(
        data=spec, data_root=args.data_root, width=args.width, batch_size=args.batch_size, epochs=epochs,
        eval_every=eval_every, device=str(device), out_dir=str(args.work / "pretrain"), overwrite=True,
        checkpoint_every=0, progress=False, num_workers=args.workers, log_every=50,
        pipeline="batched" if tricks["batched"] else "dataloader", amp="bf16" if tricks["amp"] else "off",
        channels_last="on" if tricks["channels_last"] else "off", compile="on" if tricks["compile"] else "off",
        cuda_graph="on" if tricks["cuda_graph"] else "off", **extra)
    return TrainConfig.from_preset(PRESET, **{**settings, **overrides})


def plan_pretraining(args, row: dict[str, Any], data: dict[str, Any], device: torch.device,
                     tricks: dict[str, bool], clock: Clock, overrides: dict[str, Any]) -> dict[str, Any]:
    """Measure what the plan needs (one kNN evaluation, a timed epoch of each probe) and fit the
    epochs into the budget: --budget-min, cut when the pretraining, the weights and the fast probe
    would not end by the deadline (the standard probe runs only if time is left after them)."""
    n_train = data["train_images"].shape[0]
    steps = n_train // args.batch_size
    epoch_s = steps * args.batch_size / row["images_per_s"]
    startup_s = row_startup_s(row) + (2.0 if args.smoke else 5.0)
    probe_config = pretrain_config(args, "synthetic", device, tricks, 1, 1, overrides)
    eval_s = time_evaluation(probe_config, data, device)
    probes = time_probes(args, probe_config, data, device, tricks["channels_last"])
    left_s = clock.left() - probes["fast"]["predicted_s"] - WEIGHTS_GUESS_S
    budget_s = args.budget_min * 60 if not clock.enforce else min(args.budget_min * 60, left_s)
    floor_s = startup_s + epoch_s + 2 * eval_s  # one epoch at least
    plan = plan_epochs(max(budget_s, floor_s), epoch_s, startup_s, eval_s, args.eval_every)
    plan.update(requested_budget_s=args.budget_min * 60, left_before_deadline_s=round(left_s, 1),
                budget_cut=budget_s < args.budget_min * 60, ladder_row=row["name"], steps_per_epoch=steps,
                probe_estimate_s={name: probe["predicted_s"] for name, probe in probes.items()}, probe_timing=probes,
                raised_to_one_epoch=budget_s < floor_s)
    if plan["raised_to_one_epoch"]:
        say(f"      the budget ({budget_s:.0f} s) is shorter than one epoch with its evaluations: "
            f"training one epoch ({floor_s:.0f} s) anyway")
    elif plan["budget_cut"]:
        say(f"      the budget is cut from {args.budget_min * 60:.0f} s to {plan['budget_s']:.0f} s so that the "
            f"run, the weights and the fast probe ({probes['fast']['predicted_s']:.0f} s) end by the deadline")
    say(f"      plan: {plan['epochs']} epochs of {epoch_s:.2f} s (ladder row {row['name']!r}), start-up "
        f"{startup_s:.1f} s, kNN every {plan['eval_every']} epochs at {eval_s:.1f} s each: predicted "
        f"{plan['predicted_s']:.0f} s of a {plan['budget_s']:.0f} s budget; probes predicted "
        f"fast {probes['fast']['predicted_s']:.0f} s, standard {probes['standard']['predicted_s']:.0f} s")
    return plan


def watchdog_limit_s(budget_s: float) -> float:
    """When the watchdog stops a run planned for budget_s: a tenth and a quarter of a minute of slack."""
    return budget_s * 1.1 + 15


def train(config: TrainConfig, limit_s: float | None, out: Path, device: torch.device) -> tuple[nn.Module, str]:
    """pretrain(config) while printing its records and copying metrics.jsonl to `out`. limit_s: after
    that many seconds a watchdog stops it (None: no watchdog, the smoke's way: a loaded CPU must not
    cut it short). Returns the trained model and how the run ended ("completed", or "stopped by
    the watchdog": the state pretrain saved on SIGTERM, loaded back)."""
    if limit_s is not None:
        return train_with_watchdog(config, limit_s, out, device)
    follower = MetricsFollower(Path(config.out_dir), out / METRICS_NAME, config.epochs)
    follower.start()
    try:
        return pretrain(config).model, "completed"
    finally:
        follower.stop()


def train_with_watchdog(config: TrainConfig, limit_s: float, out: Path,
                        device: torch.device) -> tuple[nn.Module, str]:
    """pretrain(config) while printing its records and copying metrics.jsonl to `out`; after limit_s
    the watchdog stops it. Returns the trained model and how the run ended ("completed", or
    "stopped by the watchdog": the state pretrain saved on SIGTERM, loaded back)."""
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




def run_pretrain_step(args, spec: str, device: torch.device, clock: Clock, ladder: dict[str, Any],
                      data: dict[str, Any], floor: dict[str, Any], overrides: dict[str, Any],
                      profile: dict[str, Any], results: Results) -> tuple[nn.Module, dict[str, Any]]:
    """Plan, train (retrying once with the fastest row without torch.compile if a compiled run
    fails), summarise. The tricks are those of the ladder row that fits the most epochs (without
    any, a row made from the step profile)."""
    say(f"[pretrain] `{PRESET}` on the full training set, budget {args.budget_min:g} min"
        + (f", overrides {overrides}" if overrides else ""))
    steps = data["train_images"].shape[0] // args.batch_size
    info: dict[str, Any] = {"attempts": [], "overrides": overrides}
    results.data["pretrain"] = info
    rows = ladder
    if ((results.data.get("step_profile") or {}).get("graph_check") or {}).get("passed") is False:
        # a graph whose steps differ from the eager ones must not train the model that is reported
        rows = {**ladder, "rows": [row for row in ladder.get("rows", []) if not row.get("cuda_graph")]}
        profile = {**(profile or {}), "ms": {size: {k: v for k, v in ms.items() if "graphed" not in k}
                                            for size, ms in (profile or {}).get("ms", {}).items()}}
        info["graph_refused"] = "the graphed step failed its check against the eager step (step_profile)"
        say(f"      {info['graph_refused']}: pretraining without the CUDA graph")
    for attempt in range(2):
        row = choose_row(rows, max(min(args.budget_min * 60, clock.left()), 1.0), steps, args.batch_size,
                         args.smoke) or profile_row(profile, args.batch_size, device)
        if row is None:
            raise RuntimeError("no batched row ran in the ladder and the step profile timed no step at "
                               f"batch {args.batch_size}: nothing to fit the schedule to")
        tricks = tricks_of(row)
        plan = plan_pretraining(args, row, data, device, tricks, clock, overrides)
        config = pretrain_config(args, spec, device, tricks, plan["epochs"], plan["eval_every"], overrides)
        info.update(plan=plan, tricks=dict(tricks), tricks_reason=f"the ladder row {row['name']!r} fits the most "
                    f"epochs", config=config.to_dict())
        results.save()
        started = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")  # each warning once per place, not per step
                model, ending = train(config, None if args.smoke else watchdog_limit_s(plan["budget_s"]),
                                      args.out, device)
        except Exception as error:
            info["attempts"].append({"tricks": dict(tricks), "error": f"{type(error).__name__}: {error}"[:2000]})
            results.error("pretrain", error)
            if not tricks["compile"] or attempt:
                raise
            rows = {"rows": [r for r in ladder["rows"] if not r.get("compile")]}
            continue
        info["attempts"].append({"tricks": dict(tricks), "ending": ending})
        info.update(ending=ending, wall_s=time.perf_counter() - started,
                    graph_warnings=graph_warnings(caught),
                    **summarize_run(read_metrics(config.out_dir), args.batch_size))
        if device.type == "cuda":
            info["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if "epoch_s" in info and floor:
            floor["ours_pretraining"] = flops_floor.share_of_floor(floor, info["epoch_s"])
        return model, info
    raise RuntimeError("unreachable")


# ============================================================================ steps 7 and 8: weights and probes


def save_weights(args, model: nn.Module, results: Results) -> None:
    """The model in bf16 as one checkpoint, model-bf16.pt; with --split-weights-mib, its bytes cut in order
    into model-bf16.partIofN.pt of at most so many MiB, which load_pretrained(out) joins again."""
    out = Path(args.out)
    for stale in out.glob(f"{WEIGHTS_PREFIX}.part*of*.pt"):  # parts of an earlier save would not match
        stale.unlink()
    weights = {name: value.to(torch.bfloat16) if value.is_floating_point() else value
               for name, value in model.state_dict().items()}
    path = save_checkpoint({"arch": model.arch, "config": (results.data.get("pretrain") or {}).get("config", {}),
                            "model": weights}, out / f"{WEIGHTS_PREFIX}.pt")
    blob, files = path.read_bytes(), [path.name]
    if args.split_weights_mib:
        size = int(args.split_weights_mib * 2**20)
        count = -(-len(blob) // size)  # ceil
        files = [f"{WEIGHTS_PREFIX}.part{index + 1}of{count}.pt" for index in range(count)]
        for index, name in enumerate(files):
            (out / name).write_bytes(blob[index * size:(index + 1) * size])
        path.unlink()
    results.data["weights"] = {"files": files, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                               "dtype": str(torch.bfloat16), "arch": model.arch,
                               "loader": "benchmarks/gpu_run.py load_gpu_model(out) or vicreg_lib.load_pretrained"}
    say(f"[weights] {len(files)} file(s), {len(blob) / 2**20:.1f} MiB in bf16")


def load_gpu_model(out: str | os.PathLike) -> nn.Module:
    """The VICReg model a gpu_run wrote under `out` (float32, eval mode, on the CPU), its file or parts
    checked against the sha256 in results.json. The encoder is ``model.encoder``."""
    out = Path(out)
    weights = json.loads((out / RESULTS_NAME).read_text()).get("weights")
    if not weights:
        raise FileNotFoundError(f"{str(out / RESULTS_NAME)!r} records no weights; the run did not get that far")
    path = out / weights["files"][0] if len(weights["files"]) == 1 and ".part" not in weights["files"][0] else out
    return load_pretrained(path, sha256=weights["sha256"])[0]


def probe_record(result: dict[str, Any], n_test: int) -> dict[str, Any]:
    keep = ("top1", "top5", "train_top1", "protocol", "epochs", "lr", "batch_size", "normalize_test", "reported",
            "num_train", "seconds")
    return {**{key: result[key] for key in keep if key in result}, "num_test": n_test}


def run_probes(args, model: nn.Module, data: dict[str, Any], device: torch.device, channels_last: bool,
               plan: dict[str, Any], clock: Clock, results: Results) -> None:
    """The `fast` and `standard` linear probes on every test image, each skipped (and said so) when
    its prediction from a timed epoch does not fit before the deadline."""
    from vicreg_lib.eval.probes import linear_eval

    say("[probes] linear probes (frozen encoder, every test image)")
    encoder = model.encoder.to(device).eval()
    if channels_last:  # the frozen encoder runs in the memory format it was trained in
        encoder = encoder.to(memory_format=torch.channels_last)
    probes = results.data.setdefault("probes", {})
    estimates = plan.get("probe_estimate_s", {})
    n_test = int(data["test_images"].shape[0])
    for protocol, epochs in (("fast", args.fast_epochs), ("standard", args.standard_epochs)):
        why = clock.refusal(estimates.get(protocol, 0.0), what=f"the {protocol} probe (predicted from a timed epoch)")
        if why:
            probes[protocol] = {"skipped": why, "predicted_s": estimates.get(protocol)}
            say(f"      {protocol}: skipped ({why})")
            results.save()
            continue
        try:
            result = linear_eval(encoder, data["train_images"], data["train_labels"], data["test_images"],
                                 data["test_labels"], protocol=protocol, epochs=epochs, device=device)
        except Exception as error:
            results.error(f"probe {protocol}", error)
            probes[protocol] = {"failed": f"{type(error).__name__}: {error}"[:500]}
            continue
        probes[protocol] = {**probe_record(result, n_test), "predicted_s": estimates.get(protocol)}
        say(f"      {protocol}: top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}% "
            f"({result['epochs']} epochs, {result['seconds']:.1f} s; predicted {estimates.get(protocol, 0):.0f} s)")
        results.save()


# ============================================================================ targets and code paths


def _check(name: str, value: float | None, passed: Callable[[float], bool], detail: str,
           judged: bool, reason: str) -> dict[str, Any]:
    if value is None:
        return common.skipped_check(name, "not measured in this run")
    if not judged:
        return {**common.skipped_check(name, f"{reason}; measured {detail}"), "value": value}
    return {**common.check(name, passed(value), detail), "value": value}


def target_figures(data: dict[str, Any]) -> dict[str, Any]:
    """The figures the targets judge: epoch time, speed-up over the blog loop, share of the floor, kNN."""
    ladder_rows = data.get("ladder", {}).get("rows", [])
    best = train_throughput.best_batched(ladder_rows)
    blog = ladder_rows[0] if ladder_rows and ladder_rows[0]["pipeline"] == "dataloader" else None
    run = data.get("pretrain", {})
    epoch_s = run.get("epoch_s") or (best or {}).get("epoch_s")
    floor = data.get("floor", {})
    figures = {
        "epoch_s": epoch_s, "best": best, "blog": blog, "floor": floor, "run": run,
        "epoch_source": "pretraining's full epochs" if run.get("epoch_s") else "ladder, extrapolated",
        "speedup": blog["epoch_s"] / best["epoch_s"] if best and blog else None,
        "share": floor["floor_epoch_s"] / epoch_s if floor.get("floor_epoch_s") and epoch_s else None,
        "knn": run.get("final_knn_top1")}
    return figures


def target_checks(data: dict[str, Any], judged: bool, reason: str = "") -> list[dict[str, Any]]:
    """PASS/FAIL of the targets and moonshots from the results; SKIP when not `judged` (a CPU or
    smoke run: `reason` says why) or not measured."""
    f = target_figures(data)
    epoch_s, speedup, share, knn = f["epoch_s"], f["speedup"], f["share"], f["knn"]
    budget = f["run"].get("plan", {}).get("budget_s")
    epoch_detail = f"{epoch_s:.2f} s per 50,000 pairs ({f['epoch_source']})" if epoch_s else ""
    speed_detail = f"{speedup:.1f}x ({f['best']['name']} vs {f['blog']['name']})" if speedup else ""
    knn_detail = f"{knn:.2f}% after {f['run'].get('epochs_done')} epochs, budget {budget or 0:.0f} s" if knn else ""
    share_detail = (f"{share:.1%} (floor {f['floor'].get('floor_epoch_s', 0):.2f} s vs {epoch_s or 0:.2f} s)"
                    if share else "")
    args = (judged, reason)
    return [
        _check(f"epoch at width 64 <= {EPOCH_TARGET_S:g} s", epoch_s, lambda v: v <= EPOCH_TARGET_S,
               epoch_detail, *args),
        _check(f"moonshot: epoch <= {EPOCH_MOONSHOT_S:g} s", epoch_s, lambda v: v <= EPOCH_MOONSHOT_S, epoch_detail,
               *args),
        _check(f"speed-up over the 2-worker blog loop >= {SPEEDUP_TARGET:g}x", speedup,
               lambda v: v >= SPEEDUP_TARGET, speed_detail, *args),
        _check(f"share of the FLOP floor >= {FLOOR_TARGET:.0%}", share, lambda v: v >= FLOOR_TARGET, share_detail,
               *args),
        _check(f"moonshot: share of the FLOP floor >= {FLOOR_MOONSHOT:.0%}", share, lambda v: v >= FLOOR_MOONSHOT,
               share_detail, *args),
        _check(f"kNN (k=200) within the 5-minute budget >= {KNN_TARGET:g}%", knn, lambda v: v >= KNN_TARGET,
               knn_detail, *args),
        _check(f"moonshot: kNN (k=200) >= {KNN_MOONSHOT:g}%", knn, lambda v: v >= KNN_MOONSHOT, knn_detail, *args),
    ]


def _row_uses(row: dict[str, Any], trick: str) -> bool:
    return row["pipeline"] == "batched" if trick == "batched" else bool(row.get(trick))


def code_paths(data: dict[str, Any], smoke: bool) -> dict[str, Any]:
    """Each GPU code path: whether it ran in the ladder, its error if it failed or why it was
    skipped, whether pretraining used it; and the graphed step's check from the step profile."""
    ladder = data.get("ladder", {"rows": [], "failures": []})
    used = data.get("pretrain", {}).get("tricks", {})
    names = {"batched": "batched augmentation on the device", "amp": "bf16 autocast",
             "channels_last": "channels-last", "cuda_graph": "the whole step in a CUDA graph (GraphedStep)",
             "compile": "torch.compile (inductor)"}
    paths = {}
    for trick, label in names.items():
        rows = [row["name"] for row in ladder["rows"] if _row_uses(row, trick)]
        errors = [failure["error"] for failure in ladder["failures"] if failure.get("trick") == trick]
        skips = [row["skipped"] for row in ladder.get("skipped_rows", [])
                 if row["name"] == train_throughput.TRICK_NAMES.get(trick)]
        paths[trick] = {"what": label, "ran_in_ladder": bool(rows), "error": errors[0] if errors else None,
                        "skipped": skips[0] if skips else None, "used_in_pretraining": used.get(trick)}
    paths["compile"]["note"] = "smoke: compiled the one-convolution network" if smoke else None
    paths["cuda_graph"]["pretraining_warnings"] = data.get("pretrain", {}).get("graph_warnings")
    paths["cuda_graph"]["check"] = data.get("step_profile", {}).get("graph_check")
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


def protected_s(args) -> float:
    """Seconds the steps before the pretraining leave for it: its budget, its planning (a kNN
    evaluation, the probes' timed epochs), the weights and the fast probe."""
    return args.budget_min * 60 + PLANNING_GUESS_S + WEIGHTS_GUESS_S + FAST_PROBE_GUESS_S


def the_plan(args) -> dict[str, float]:
    """Each step's seconds as planned before anything is measured (the steps re-estimate as they go)."""
    blog_s = 2 * 2 * args.ladder_steps * args.batch_size / BLOG_IMAGES_PER_S_GUESS + 5.0
    ladder_s = 1.5 * blog_s + 4 * LADDER_ROW_GUESS_S  # the blog loop twice, our four rows without compile
    return {"data": DATA_GUESS_S, "step_profile": args.profile_budget_s, "recipe_ab": args.ab_budget_s,
            "ladder (without its compile row)": ladder_s, "floor": FLOOR_GUESS_S,
            "pretrain (planning, budget)": PLANNING_GUESS_S + args.budget_min * 60, "weights": WEIGHTS_GUESS_S,
            "probes (fast; standard if time is left)": FAST_PROBE_GUESS_S, "reserve": args.reserve_s}


def print_plan(args, results: Results) -> None:
    plan = the_plan(args)
    total = sum(plan.values())
    results.data["plan_at_start"] = {**plan, "total_s": total, "deadline_s": args.deadline_min * 60}
    say("the plan (seconds; the pretraining's budget is kept, the steps before it give way):")
    for name, seconds in plan.items():
        say(f"  {name:<42} {seconds:6.0f}")
    verdict = ("fits" if total <= args.deadline_min * 60 else
               "does NOT fit: the steps before the pretraining will be shortened or skipped")
    if args.smoke:
        verdict = "the smoke runs every step whatever the clock says"
    say(f"  {'total':<42} {total:6.0f} of --deadline-min {args.deadline_min:g} ({args.deadline_min * 60:.0f} s): "
        f"{verdict}")


def run_all(args, device: torch.device, results: Results, clock: Clock) -> None:
    """The steps in order; each failure or skip is recorded and the steps that do not need its result go on."""
    spec = args.data or f"archive:{args.archive}"
    data = run_step(results, "data", lambda: load_data(spec, args.data_root, results))
    if data is None:
        return
    protect = protected_s(args)
    profile = run_step(results, "step_profile",
                       lambda: run_profile_step(args, device, clock, protect, results), default={})
    overrides = run_step(results, "recipe_ab",
                         lambda: run_ab_step(args, spec, device, clock, protect, results), default={})
    ladder = run_step(results, "ladder", lambda: run_ladder_step(args, spec, device, clock, protect, overrides,
                                                                 profile, results),
                      default={"rows": [], "failures": []})
    floor = run_step(results, "floor", lambda: run_floor_step(args, device, clock, protect, ladder, overrides,
                                                              results), default={})
    model, info = run_step(results, "pretrain", lambda: run_pretrain_step(args, spec, device, clock, ladder, data,
                                                                          floor, overrides, profile, results),
                           default=(None, {}))
    if model is None:
        for step in ("weights", "probes"):
            results.data["steps"][step] = "skipped: no trained model"
        return
    run_step(results, "weights", lambda: save_weights(args, model, results))
    run_step(results, "probes", lambda: run_probes(args, model, data, device,
                                                   bool(info.get("tricks", {}).get("channels_last")),
                                                   info.get("plan", {}), clock, results))


def refresh_summary(args, device: torch.device, data: dict[str, Any]) -> None:
    """Code paths, the targets' PASS/FAIL and the files so far (quietly: printed once, at the end)."""
    data["code_paths"] = code_paths(data, args.smoke)
    judged = device.type == "cuda" and not args.smoke and args.width == 64
    with contextlib.redirect_stdout(io.StringIO()):
        data["checks"] = target_checks(data, judged, "a smoke run" if args.smoke else "needs CUDA and width 64")
    data["files"] = sorted(entry.name for entry in args.out.iterdir() if not entry.name.startswith("."))


def print_summary(args, device: torch.device, results: Results) -> None:
    """The steps' states, code paths and PASS/FAIL lines, at the end (also after a failure)."""
    data = results.data
    refresh_summary(args, device, data)
    say("\nsummary")
    for step in STEPS:
        say(f"step {step}: {data['steps'].get(step, 'not reached')}")
    judged = device.type == "cuda" and not args.smoke and args.width == 64
    target_checks(data, judged, "a smoke run" if args.smoke else "needs CUDA and width 64")  # prints the lines
    for trick, path in data["code_paths"].items():
        state = ("FAILED: " + path["error"] if path.get("error") else "ran" if path.get("ran_in_ladder")
                 else f"skipped: {path['skipped']}" if path.get("skipped") else "not run")
        say(f"code path {trick}: {state[:300]}")


def terminate_with_results(results: Results) -> Callable[[int, Any], None]:
    """A SIGTERM handler: write results.json as it stands, then exit (the finally blocks write it again)."""
    def handler(signum: int, frame: Any) -> None:
        results.data["status"] = "terminated"
        results.data["terminated_by"] = signal.Signals(signum).name
        results.save()
        raise SystemExit(128 + signum)
    return handler


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number; give e.g. 5 or 0.5")
    return value


def seconds_option(text: str) -> float:
    """argparse type: seconds >= 0 (0 skips the step)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0; give e.g. 60, or 0 to skip")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--out", type=Path, default=common.RESULTS_DIR / "gpu_run", help="folder for the files that come back")
    add("--archive", type=Path, default=common.REPO / ".carry" / "cifar10_jpeg.tar.gz",
        help="the CIFAR-10 JPEG archive (default: %(default)s)")
    add("--data", default=None, help="a data spec instead of --archive (e.g. folder:PATH, npz:PATH)")
    add("--data-root", default=None, help="where archives are unpacked (default: $VICREG_DATA_ROOT, else data/)")
    add("--work", type=Path, default=None, help="scratch folder for the runs (default: runs/gpu_run)")
    add("--device", default="auto", type=common.resolve_device, help="auto, cpu, cuda, cuda:N")
    add("--budget-min", type=positive_float, default=None, help="pretraining wall-clock budget (default 5)")
    add("--deadline-min", type=positive_float, default=None,
        help="the whole command ends by then: steps that do not fit are skipped (default 9.3)")
    add("--reserve-s", type=float, default=None, help="seconds kept for the last write (default 10)")
    add("--profile-budget-s", type=seconds_option, default=None,
        help="seconds for the step profile; 0 skips it (default 40)")
    add("--profile-batch-sizes", default=None, help="the step profile's batch sizes (default 256,1024)")
    add("--ab-budget-s", type=seconds_option, default=None, help="seconds for the recipe A/B; 0 skips it (default 60)")
    add("--eval-every", type=common.positive_int, default=None, help="kNN every N epochs (default: ~8 in a run)")
    add("--width", type=common.positive_int, default=None, help="ResNet-18 width (default 64)")
    add("--batch-size", type=common.positive_int, default=None,
        help="batch size of the ladder and the pretraining; the lr scales with it (default 256)")
    add("--projector", default=None, help="projector spec (default: the preset's)")
    add("--ladder-steps", type=common.positive_int, default=None,
        help="timed steps per ladder row, twice as many for the blog rows (default 12)")
    add("--workers", type=common.positive_int, default=None, help="the many-worker DataLoader (default: CPUs)")
    add("--skip", action="append", default=[], metavar="WORD", help="skip ladder rows whose name holds WORD")
    add("--matmul-size", type=common.positive_int, default=None, help="side of the floor's matmul")
    add("--fast-epochs", type=common.positive_int, default=None, help="epochs of the fast probe (default 100)")
    add("--standard-epochs", type=common.positive_int, default=None,
        help="epochs of the standard probe (default 100)")
    add("--split-weights-mib", type=positive_float, default=None,
        help="write the weights as parts of at most this many MiB (default: one file)")
    add("--smoke", action="store_true", help="every step on the CPU at tiny sizes, whatever the clock says")
    return fill_defaults(parser.parse_args(argv))


def fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The GPU run's sizes, or the smoke's; anything given on the command line wins."""
    smoke = dict(width=8, batch_size=32, projector="64-64-64", ladder_steps=2, budget_min=0.2, deadline_min=2.0,
                 reserve_s=5.0, fast_epochs=5, standard_epochs=1, matmul_size=256, profile_budget_s=60.0,
                 ab_budget_s=60.0, profile_batch_sizes="16")
    full = dict(width=64, batch_size=256, projector=None, ladder_steps=12, budget_min=5.0, deadline_min=9.3,
                reserve_s=10.0, fast_epochs=100, standard_epochs=100, profile_budget_s=40.0, ab_budget_s=60.0,
                profile_batch_sizes="256,1024", matmul_size=8192 if args.device.type == "cuda" else 2048)
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.smoke:
        args.device = torch.device("cpu")
    args.profile_batch_sizes = step_profile.batch_sizes_option(args.profile_batch_sizes)
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
        raise SystemExit(f"gpu_run: no archive at {str(args.archive)!r}; pass --archive PATH to the CIFAR-10 "
                         f"JPEG archive, or --data SPEC")
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in (RESULTS_NAME, METRICS_NAME, LOG_NAME, PROFILE_NAME):
        (args.out / stale).unlink(missing_ok=True)
    with tee_output(args.out / LOG_NAME):
        results = Results(args.out / RESULTS_NAME, started, header(args, args.device),
                          refresh=lambda data: refresh_summary(args, args.device, data))
        clock = Clock(results, args.deadline_min * 60, args.reserve_s, enforce=not args.smoke)
        previous = signal.signal(signal.SIGTERM, terminate_with_results(results))
        say(f"gpu_run on {results.data['device']}, torch {torch.__version__}; out {args.out}")
        print_plan(args, results)
        results.save()
        try:
            run_all(args, args.device, results, clock)
            results.data["status"] = "complete"
        except BaseException as error:
            if results.data["status"] != "terminated":
                results.data["status"] = "terminated" if isinstance(error, (SystemExit, KeyboardInterrupt)) \
                    else "failed"
            results.error("run", error)
            raise
        finally:
            print_summary(args, args.device, results)
            results.save()
            signal.signal(signal.SIGTERM, previous)
            say(f"done in {results.elapsed() / 60:.1f} min: {', '.join(results.data['files'])}")
    return results.data


if __name__ == "__main__":
    main()
