"""Recipe A/B: which of solo-learn's CIFAR-10 choices the `fast` preset should keep.

The `fast` preset follows solo-learn's CIFAR-10 VICReg settings except in five places. This
script measures each of them: short pretrainings of the `fast` preset (width 16 by default) on
the whole training set, one per variant and seed, each scored by its own kNN accuracy (k=200,
every test image) at the end of training, as pretrain's history records it.

    baseline          the preset as it is (LARS clipping "trust", mu 50 with the official averaged
                      variance terms = solo-learn's mu 25 on its summed ones, stem padding 1,
                      zero-initialised residuals, bilinear crop)
    clip_solo_learn   lars_clip="solo-learn" (the rate capped at the lr, solo-learn's clip_lr)
    mu_official       mu 25, the official code's weight (half of solo-learn's, which the preset took
                      when an earlier A/B measured it better)
    stem_padding_2    stem_padding=2
    no_zero_init      zero_init_residual=False
    bicubic_crop      crop_interpolation="bicubic"
    solo_learn_all    solo-learn's choice on all five

    python benchmarks/recipe_ab.py --archive cifar10_jpeg.tar.gz --device cuda --budget-s 600
    python benchmarks/recipe_ab.py --data cifar10 --epochs 5 --seeds 0 1 2 --variants clip_solo_learn
    python benchmarks/recipe_ab.py --smoke          # tiny sizes, well under a minute on one CPU thread

The decision (``decide``): a variant wins when it has finished at least two seeds, as has the
baseline, and its mean beats the baseline's mean by more than the larger of the two seed
spreads (max - min over seeds): a difference the seeds alone do not produce. The winning single
variants' settings, merged, are the proposed overrides of the preset; `solo_learn_all` never
becomes an override by itself (when it beats every single winner, a note says so: the changes
may only help together, so measure the merged overrides before adopting them).

Without --epochs the epoch count comes from the budget: the first run (baseline, first seed) is
a one-epoch run whose wall time gives the epoch time and the fixed cost of a run (loading, kNN,
saving); the largest epoch count whose runs all fit in what is left of the budget is chosen (at
least 1; a one-epoch choice keeps the timing run as the baseline's first result). The cosine
schedule spans exactly those epochs; the warm-up shrinks with them (``warmup_for``). A run starts
only while the time so far plus its predicted time fits the budget; the rest is recorded as
skipped. ab.json in --out is rewritten after every run (results so far).

torch.compile stays off: it changes nothing that is trained, costs start-up in every run, and
many models compiled in one process run into dynamo's recompile limit. On CUDA the training
step runs as a CUDA graph (cuda_graph auto) and in bf16 (amp auto), the same for every variant.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

import common  # first: it puts this checkout on sys.path for vicreg_lib
from vicreg_lib.augment import get_recipe
from vicreg_lib.config import TrainConfig
from vicreg_lib.data import load_dataset
from vicreg_lib.runstate import CHECKPOINT_NAME
from vicreg_lib.train import graph_refusal, pretrain

PRESET = "fast"
BASELINE, ALL = "baseline", "solo_learn_all"
MIN_SEEDS = 2  # a spread needs two runs: with fewer, a variant is reported but not judged
# solo-learn's CIFAR-10 VICReg choices where the official code's differ (mu 50 on the averaged variance
# terms is its mu 25 on summed ones)
SOLO_LEARN = {"lars_clip": "solo-learn", "mu": 50.0, "stem_padding": 2, "zero_init_residual": False,
              "crop_interpolation": "bicubic"}
SINGLE_VARIANTS: dict[str, dict[str, Any]] = {
    "clip_solo_learn": {"lars_clip": "solo-learn"},
    "mu_official": {"mu": 25.0},  # the preset has solo-learn's weight (it won): checked against the official one
    "stem_padding_2": {"stem_padding": 2},
    "no_zero_init": {"zero_init_residual": False},
    "bicubic_crop": {"crop_interpolation": "bicubic"},
}
VARIANTS: dict[str, dict[str, Any]] = {BASELINE: {}, **SINGLE_VARIANTS, ALL: SOLO_LEARN}
SMOKE = dict(width=8, batch_size=32, epochs=1, max_train_images=256, projector="256-256-256")
GRAPH_FAILED = "CUDA graph capture failed"
RESULTS_NAME = "ab.json"


# ============================================================================ the decision


def variant_stats(scores: Sequence[float | None], baseline_mean: float | None) -> dict[str, Any]:
    """Mean, spread (max - min) and delta vs the baseline's mean of one variant's kNN scores
    (None: a run that failed or diverged, left out of the mean)."""
    done = [score for score in scores if score is not None]
    mean = sum(done) / len(done) if done else None
    return {"mean": mean, "spread": max(done) - min(done) if done else None,
            "delta": mean - baseline_mean if mean is not None and baseline_mean is not None else None,
            "runs": list(scores), "finished": len(done), "failed": len(scores) - len(done)}


def judge(stats: dict[str, Any], base: dict[str, Any]) -> tuple[bool, str]:
    """(whether the variant wins, the verdict in words), by the rule in the module docstring."""
    if stats["failed"]:
        return False, f"not judged ({stats['failed']} run(s) failed)"
    if stats["finished"] < MIN_SEEDS or base["finished"] < MIN_SEEDS:
        return False, f"not judged (fewer than {MIN_SEEDS} seeds)"
    margin = max(stats["spread"], base["spread"])
    if stats["delta"] > margin:
        return True, f"wins (+{stats['delta']:.2f} > spread {margin:.2f})"
    if stats["delta"] < -margin:
        return False, f"loses ({stats['delta']:.2f} < -{margin:.2f})"
    return False, f"within the spread ({stats['delta']:+.2f}, spread {margin:.2f})"


def decide(scores: dict[str, Sequence[float | None]]) -> dict[str, Any]:
    """The A/B decision from each variant's kNN scores (one per seed; None for a failed run).

    A variant wins when it and the baseline each finished at least MIN_SEEDS seeds and its mean
    beats the baseline's mean by more than the larger of the two seed spreads (max - min).
    The overrides are the winning single variants' settings merged; solo_learn_all never becomes
    one, and a note says when it beats every single winner.
    """
    base = variant_stats(scores.get(BASELINE, []), None)
    base["delta"] = 0.0 if base["mean"] is not None else None
    variants, winners = {BASELINE: {**base, "verdict": "baseline"}}, []
    for name, runs in scores.items():
        if name == BASELINE:
            continue
        stats = variant_stats(runs, base["mean"])
        if stats["mean"] is None:
            wins, verdict = False, "not judged (no finished run)"
        elif base["mean"] is None:
            wins, verdict = False, "not judged (no finished baseline run)"
        else:
            wins, verdict = judge(stats, base)
        variants[name] = {**stats, "verdict": verdict}
        if wins:
            winners.append(name)
    singles = [name for name in winners if name != ALL]
    overrides = {key: value for name in singles for key, value in VARIANTS[name].items()}
    return {"variants": variants, "winners": winners, "overrides": overrides,
            "note": _combined_note(variants, winners, singles)}


def _combined_note(variants: dict[str, Any], winners: list[str], singles: list[str]) -> str | None:
    """Say when solo_learn_all wins and beats every single winner (it never becomes an override)."""
    if ALL not in winners or any(variants[name]["mean"] >= variants[ALL]["mean"] for name in singles):
        return None
    if not singles:
        return (f"{ALL} beats the baseline but no single change does: the changes may only help together; "
                f"measure candidate combinations before adopting any")
    return (f"{ALL} ({variants[ALL]['mean']:.2f}) beats every single winner: the other changes may help "
            f"together; measure the merged overrides against {ALL} before adopting them")


# ============================================================================ one run


def warmup_for(epochs: int) -> int:
    """Warm-up epochs for a run of `epochs`: none for one epoch (a run that is all warm-up would end
    at its peak lr, never annealed), 1 below 10 epochs, the preset's from 10 on."""
    if epochs == 1:
        return 0
    return 1 if epochs < 10 else TrainConfig.from_preset(PRESET).warmup_epochs


def run_config(variant: str, seed: int, epochs: int, plan: dict[str, Any], out_dir: Path) -> TrainConfig:
    """The `fast` preset with the variant's overrides, sized and scheduled for this A/B."""
    extra = {key: plan[key] for key in ("max_train_images", "projector") if plan.get(key) is not None}
    return TrainConfig.from_preset(
        PRESET, **VARIANTS[variant], data=plan["data"], data_root=plan["data_root"], width=plan["width"],
        batch_size=plan["batch_size"], epochs=epochs, warmup_epochs=warmup_for(epochs), seed=seed,
        device=plan["device"], compile="off", log_every=50, eval_every=epochs, eval_at_start=False,
        checkpoint_every=0, progress=False, overwrite=True, out_dir=str(out_dir / f"{variant}-seed{seed}"),
        **extra)


def run_one(variant: str, seed: int, epochs: int, plan: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Pretrain one variant and seed; its record (kNN, times, whether the step ran as a CUDA graph).
    A diverged or failed run is recorded with its error instead of stopping the A/B."""
    config = run_config(variant, seed, epochs, plan, out_dir)
    refusal = graph_refusal(config, torch.device(plan["device"]), distributed=False)
    record = {"variant": variant, "seed": seed, "overrides": VARIANTS[variant], "epochs": epochs,
              "knn_top1": None, "knn_top1@20": None, "train_time_s": None, "steps": None}
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = pretrain(config)
        except Exception as error:  # noqa: BLE001 - one run's failure is a result
            result, record["error"] = None, f"{type(error).__name__}: {str(error).splitlines()[0]}"[:500]
    record["wall_s"] = time.perf_counter() - started
    failed = [str(w.message) for w in caught if str(w.message).startswith(GRAPH_FAILED)]
    record["graphed"] = refusal is None and not failed
    record["graph_note"] = refusal or (failed[0] if failed else None)
    for warning in caught:  # recorded above; still shown to whoever watches the run
        if not str(warning.message).startswith(GRAPH_FAILED):
            print(f"  warning: {warning.message}", flush=True)
    if result is not None:
        record.update(_history_summary(result.history))
        if not plan["keep_checkpoints"]:
            # the numbers are the A/B's result; a width-16 checkpoint with its optimizer is tens of MB each
            (Path(config.out_dir) / CHECKPOINT_NAME).unlink(missing_ok=True)
    del result
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the next run's graph and buffers start from a clean cache
    return record


def _history_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of a finished run: the last record's kNN and loss, the summed training time."""
    last = history[-1]
    return {"knn_top1": last["knn_top1"], "knn_top1@20": last["knn_top1@20"],
            "train_time_s": sum(record.get("train_time_s", 0.0) for record in history),
            "steps": last["step"], "loss": last["loss"], "effective_rank": last["effective_rank"]}


# ============================================================================ the plan


def choose_epochs(left_s: float, runs: int, epoch_s: float, fixed_s: float) -> dict[str, Any]:
    """The most epochs (>= 1) such that `runs` runs of fixed_s + epochs * epoch_s fit in left_s."""
    if epoch_s <= 0 or runs < 1:
        raise ValueError(f"epoch_s must be > 0 and runs >= 1, got {epoch_s} and {runs}")
    epochs = max(1, math.floor((left_s / runs - fixed_s) / epoch_s))
    per_run = fixed_s + epochs * epoch_s
    return {"epochs": epochs, "epoch_s": epoch_s, "fixed_s": fixed_s, "per_run_s": per_run, "runs": runs,
            "left_s": left_s, "predicted_s": runs * per_run, "fits": runs * per_run <= left_s}


def grid(variants: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:
    """(variant, seed) in run order: seed by seed, so a budget cut still leaves every variant a seed."""
    return [(variant, seed) for seed in seeds for variant in variants]


def select_variants(names: Sequence[str] | None) -> list[str]:
    """The variants to run in table order, the baseline always first (every delta is against it)."""
    names = list(VARIANTS) if not names else list(names)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}: use any of {', '.join(VARIANTS)}")
    return [name for name in VARIANTS if name == BASELINE or name in names]


def timing_run(plan: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The baseline's first seed for one epoch: its epoch time and fixed cost give the epoch count."""
    print(f"timing: {BASELINE}, seed {plan['seeds'][0]}, 1 epoch ...", flush=True)
    record = run_one(BASELINE, plan["seeds"][0], 1, plan, out_dir)
    if record["knn_top1"] is None:
        raise RuntimeError(f"the timing run failed ({record.get('error')}); fix that or give --epochs")
    return record


def make_plan(data: str | None, data_root: str | None, device: str, budget_s: float, seeds: Sequence[int],
              width: int, epochs: int | None, smoke: bool, batch_size: int, variants: Sequence[str] | None,
              keep_checkpoints: bool) -> dict[str, Any]:
    """Every setting of the A/B, the smoke's sizes applied (they replace width, batch, epochs, seeds)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {list(seeds)}: give one or more different seeds (e.g. 0 1)")
    if budget_s <= 0:
        raise ValueError(f"budget_s must be > 0 seconds, got {budget_s}")
    plan = dict(data=data, data_root=data_root, device=str(common.resolve_device(device)), budget_s=budget_s,
                seeds=list(seeds), width=width, epochs=epochs, epochs_requested=epochs, batch_size=batch_size,
                smoke=smoke, variants=select_variants(variants), keep_checkpoints=keep_checkpoints,
                preset=PRESET,                 max_train_images=None, projector=None)
    if smoke:
        # synthetic images, or the small real subset when VICREG_DATA names it
        plan.update(SMOKE, data=data or os.environ.get("VICREG_DATA") or "synthetic", seeds=list(seeds)[:1])
    config = run_config(BASELINE, plan["seeds"][0], plan["epochs"] or 1, plan, Path("."))
    plan["data"] = config.resolved().data  # the spec actually used ($VICREG_DATA filled in)
    plan["baseline_choices"] = baseline_choices(config)
    return plan


def baseline_choices(config: TrainConfig) -> dict[str, Any]:
    """The five compared settings as the baseline runs them (the preset's defaults resolved)."""
    zero_init = config.zero_init_residual
    return {"lars_clip": config.lars_clip, "mu": config.mu, "loss_convention": config.loss_convention,
            "stem_padding": config.stem_padding if config.stem_padding is not None else 1,
            "zero_init_residual": zero_init if zero_init is not None else True,
            "crop_interpolation": get_recipe(config.recipe, config.crop_interpolation)[0].crop_interpolation}


def payload(plan: dict[str, Any], runs: list[dict], skipped: list[dict], estimate: dict | None,
            status: str) -> dict[str, Any]:
    """ab.json: the settings, every run so far, the decision on them, what was skipped."""
    scores = {name: [r["knn_top1"] for r in runs if r["variant"] == name] for name in plan["variants"]}
    decision = decide({name: values for name, values in scores.items() if values or name == BASELINE})
    settings = {key: value for key, value in plan.items() if key != "budget_s"}
    settings.update(budget_s=plan["budget_s"] if math.isfinite(plan["budget_s"]) else None,
                    budget_applies=not plan["smoke"], knn_k=TrainConfig.from_preset(PRESET).knn_k,
                    eval="kNN at the end of each run on every test image", compile="off",
                    min_seeds=MIN_SEEDS, warmup_epochs=warmup_for(plan["epochs"]) if plan["epochs"] else None)
    return {"benchmark": "recipe_ab", **common.run_info(torch.device(plan["device"])), "status": status,
            "settings": settings, "runs": runs, "variants": decision["variants"],
            "winners": decision["winners"], "overrides": decision["overrides"], "note": decision["note"],
            "epochs": plan["epochs"], "estimate": estimate, "skipped": skipped}


def predicted_run_s(runs: list[dict], epochs: int, estimate: dict | None) -> float:
    """A run's expected wall time: the mean of finished runs of this length, else the estimate, else 0."""
    walls = [r["wall_s"] for r in runs if r["epochs"] == epochs]
    if walls:
        return sum(walls) / len(walls)
    return estimate["per_run_s"] if estimate else 0.0


def run_recipe_ab(data: str | None, data_root: str | None, device: str, budget_s: float,
                  out_dir: str | os.PathLike, seeds: Sequence[int] = (0, 1), width: int = 16,
                  epochs: int | None = None, smoke: bool = False, batch_size: int = 256, *,
                  variants: Sequence[str] | None = None, keep_checkpoints: bool = False) -> dict[str, Any]:
    """Run the A/B (see the module docstring) and return what ab.json in out_dir holds.

    Winners: the variants whose mean kNN beats the baseline's mean by more than the larger of the
    two variants' seed spreads (max - min over seeds), each with at least two finished seeds;
    "overrides" merges the winning single variants' settings (never solo_learn_all's alone).
    The smoke ignores the budget: it runs every run whatever the clock says.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = make_plan(data, data_root, device, budget_s, seeds, width, epochs, smoke, batch_size, variants,
                     keep_checkpoints)
    todo, runs, skipped, estimate = grid(plan["variants"], plan["seeds"]), [], [], None
    limit_s = math.inf if smoke else plan["budget_s"]
    status = "failed"
    try:
        if plan["epochs"] is None:
            estimate = _plan_epochs(plan, out_dir, todo, runs, limit_s - (time.perf_counter() - started))
        for number, (variant, seed) in enumerate(todo, 1):
            if any(r["variant"] == variant and r["seed"] == seed for r in runs):
                continue  # the timing run, kept as this run
            reason = over_budget(time.perf_counter() - started, limit_s, runs, plan["epochs"], estimate)
            if reason:
                skipped.append({"variant": variant, "seed": seed, "reason": reason})
                continue
            print(f"run {number}/{len(todo)}: {variant}, seed {seed}, {plan['epochs']} epoch(s) ...",
                  flush=True)
            runs.append(run_one(variant, seed, plan["epochs"], plan, out_dir))
            print(f"  {describe(runs[-1])}", flush=True)
            common.write_json(out_dir / RESULTS_NAME, payload(plan, runs, skipped, estimate, "running"))
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        result = payload(plan, runs, skipped, estimate, status)
        common.write_json(out_dir / RESULTS_NAME, result)
    print_results(result, time.perf_counter() - started)
    return result


def over_budget(elapsed_s: float, limit_s: float, runs: list[dict], epochs: int,
                estimate: dict | None) -> str:
    """Why the next run is not started ("" when it fits): it would end after the budget."""
    predicted = predicted_run_s(runs, epochs, estimate)
    if elapsed_s + predicted <= limit_s:
        return ""
    return f"budget: {elapsed_s:.0f} s of {limit_s:.0f} s spent and a run takes about {predicted:.0f} s"


def _plan_epochs(plan: dict[str, Any], out_dir: Path, todo: list, runs: list,
                 left_s: float) -> dict[str, Any]:
    """Time one baseline epoch, choose the epochs that fit left_s, keep the timing run when it is one."""
    started = time.perf_counter()
    for split in ("train", "test"):  # unpack and decode now: else the first run's cost inflates every run's
        load_dataset(plan["data"], split, plan["data_root"])
    data_prep_s = time.perf_counter() - started
    timing = timing_run(plan, out_dir)
    estimate = choose_epochs(left_s - (time.perf_counter() - started), len(todo), timing["train_time_s"],
                             max(timing["wall_s"] - timing["train_time_s"], 0.0))
    estimate["data_prep_s"] = data_prep_s
    estimate["timing_run"] = {key: timing.get(key) for key in ("wall_s", "train_time_s", "knn_top1", "steps")}
    plan["epochs"] = estimate["epochs"]
    estimate["timing_run_kept"] = plan["epochs"] == 1  # the same config as a one-epoch run of the grid
    if estimate["timing_run_kept"]:
        runs.append(timing)
    print(f"  epoch {estimate['epoch_s']:.1f} s, fixed {estimate['fixed_s']:.1f} s a run: {plan['epochs']} "
          f"epoch(s) for {len(todo)} runs, predicted {estimate['predicted_s']:.0f} s of {left_s:.0f} s left",
          flush=True)
    return estimate


def describe(record: dict[str, Any]) -> str:
    """One line for a finished run."""
    if record["knn_top1"] is None:
        return f"FAILED after {record['wall_s']:.0f} s: {record.get('error')}"
    graph = "CUDA graph" if record["graphed"] else f"eager ({record['graph_note']})"
    return (f"kNN {record['knn_top1']:.2f}% (k=20: {record['knn_top1@20']:.2f}%), {record['steps']} steps, "
            f"train {record['train_time_s']:.0f} s, wall {record['wall_s']:.0f} s, {graph}")


def print_results(result: dict[str, Any], seconds: float) -> None:
    """The table (variant, each seed's kNN, mean, spread, delta, verdict) and the decision."""
    rows = []
    for name, stats in result["variants"].items():
        seeds = ", ".join("failed" if score is None else f"{score:.2f}" for score in stats["runs"])
        rows.append({"variant": name, "kNN per seed": seeds or "-", "mean": stats["mean"],
                     "spread": stats["spread"], "delta": stats["delta"], "verdict": stats["verdict"]})
    settings = result["settings"]
    common.print_table(rows, ["variant", "kNN per seed", "mean", "spread", "delta", "verdict"],
                       title=f"recipe A/B: `{PRESET}` at width {settings['width']}, {result['epochs']} "
                             f"epoch(s), seeds {settings['seeds']}, kNN top-1 % (k=200, every test image) "
                             f"on {settings['data']}")
    print(f"winners: {', '.join(result['winners']) or 'none'}; overrides: {result['overrides'] or 'none'}")
    if result["note"]:
        print(f"note: {result['note']}")
    for entry in result["skipped"]:
        print(f"skipped: {entry['variant']} seed {entry['seed']} ({entry['reason']})")
    print(f"done in {seconds:.0f} s ({result['status']})", flush=True)


# ============================================================================ command line


def positive_float(text: str) -> float:
    """argparse type: a number > 0, else one clear error."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data spec (default: $VICREG_DATA, else cifar10)")
    parser.add_argument("--archive", default=None, metavar="PATH", help="shorthand for --data archive:PATH")
    parser.add_argument("--data-root", default=None, help="where archives unpack and downloads go")
    parser.add_argument("--device", default="auto", type=common.resolve_device,
                        help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--budget-s", type=positive_float, default=600.0,
                        help="seconds for the whole A/B, timing included (default: %(default)s)")
    parser.add_argument("--epochs", type=common.positive_int, default=None,
                        help="epochs per run (default: the most that fit the budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of each variant")
    parser.add_argument("--width", type=common.positive_int, default=16, help="ResNet-18 width")
    parser.add_argument("--batch-size", type=common.positive_int, default=256, help="batch size (lr scaled)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                        help="a subset to run (the baseline always runs)")
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "recipe_ab"),
                        help="folder for ab.json and one subfolder per run (default: %(default)s)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoint.pt")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (width 8, batch 32, 256 images, 1 epoch, 1 seed): "
                             "checks the script runs")
    args = parser.parse_args(argv)
    if args.data and args.archive:
        parser.error("give --data or --archive, not both")
    if any(seed < 0 for seed in args.seeds):
        parser.error(f"--seeds must be >= 0, got {args.seeds}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    data = f"archive:{args.archive}" if args.archive else args.data
    return run_recipe_ab(data, args.data_root, str(args.device), args.budget_s, args.out, seeds=args.seeds,
                         width=args.width, epochs=args.epochs, smoke=args.smoke, batch_size=args.batch_size,
                         variants=args.variants, keep_checkpoints=args.keep_checkpoints)


if __name__ == "__main__":
    main()
