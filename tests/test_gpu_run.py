"""benchmarks/gpu_run.py's parts that decide or record something: the schedule fitted to a
budget, the run's summary from its metrics, the PASS/FAIL targets, the ladder going on past a
failing or impossible trick, the ladder row pretraining takes, the deadline, each step recorded
and written as it ends, the A/B's overrides, the watchdog, and the weights split into parts and
joined again.

The whole command runs in tests/test_benchmarks_smoke.py (--smoke).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_run  # noqa: E402
import step_profile  # noqa: E402
import train_throughput  # noqa: E402
import vicreg_lib.train as train_module  # noqa: E402
from vicreg_lib.config import TrainConfig  # noqa: E402
from vicreg_lib.model import build_model  # noqa: E402
from vicreg_lib.checkpoint import CheckpointError, load_checkpoint, load_pretrained  # noqa: E402


# ----------------------------------------------------------------------------- the plan


def test_plan_fits_the_budget_and_counts_every_evaluation():
    plan = gpu_run.plan_epochs(budget_s=300, epoch_s=4.0, startup_s=20.0, eval_s=1.5, eval_every=5)
    epochs, every = plan["epochs"], plan["eval_every"]
    assert every == 5
    # start + every 5th epoch + the last when it is not a multiple of 5
    assert plan["evaluations"] == 1 + epochs // 5 + (epochs % 5 > 0)
    assert plan["predicted_s"] == pytest.approx(20.0 + 4.0 * epochs + 1.5 * plan["evaluations"])
    assert plan["predicted_s"] <= 300
    # the most epochs that fit: one more would not
    more = 20.0 + 4.0 * (epochs + 1) + 1.5 * gpu_run.planned_evaluations(epochs + 1, 5)
    assert more > 300
    assert epochs == 64  # 20 + 64 * 4 + 14 * 1.5 = 297 s; 65 epochs: 20 + 260 + 14 * 1.5 = 301 s


def test_plan_grows_with_the_budget_and_picks_about_eight_evaluations():
    small = gpu_run.plan_epochs(budget_s=120, epoch_s=4.0, startup_s=10.0, eval_s=1.0)
    large = gpu_run.plan_epochs(budget_s=600, epoch_s=4.0, startup_s=10.0, eval_s=1.0)
    assert large["epochs"] > small["epochs"] >= 1
    for plan in (small, large):
        assert 6 <= plan["evaluations"] <= 11, plan
        assert plan["predicted_s"] <= plan["budget_s"]


def test_plan_keeps_one_epoch_when_nothing_fits():
    plan = gpu_run.plan_epochs(budget_s=5, epoch_s=10.0, startup_s=3.0, eval_s=1.0)
    assert plan["epochs"] == 1
    with pytest.raises(ValueError, match="must be > 0"):
        gpu_run.plan_epochs(budget_s=5, epoch_s=0.0, startup_s=0.0, eval_s=0.0)


# ----------------------------------------------------------------------------- the run's summary


def _record(epoch, train, wall, knn=None, steps=None):
    record = {"epoch": epoch, "step": epoch * 10, "loss": 1.0, "train_time_s": train, "images_per_s": 2560 / train,
              "epoch_time_s": wall, "wall_images_per_s": 2560 / wall}
    if knn is not None:
        record.update(knn_top1=knn, knn_k=200, **{"knn_top1@20": knn + 1})
    if steps is not None:
        record["steps"] = steps
    return record


def test_summary_leaves_out_the_compiling_epoch_and_splits_the_overhead():
    records = [{"epoch": 0, "step": 0, "knn_top1": 10.0, "knn_k": 200, "knn_top1@20": 11.0},
               _record(1, 30.0, 31.0),  # compiles
               _record(2, 2.0, 2.1), _record(3, 2.2, 3.7, knn=50.0), _record(4, 2.4, 2.5),
               _record(5, 2.6, 4.0, knn=60.0)]
    summary = gpu_run.summarize_run(records, batch_size=256)
    assert summary["epochs_done"] == 5 and summary["steps"] == 50
    assert summary["epoch_train_s"] == pytest.approx(2.3)  # the median of epochs 2-5, without the 30 s
    timed_rates = [2560 / t for t in (2.0, 2.2, 2.4, 2.6)]
    assert summary["images_per_s"] == pytest.approx(statistics.median(timed_rates))
    assert summary["epoch_s"] == pytest.approx(50_000 / statistics.median(timed_rates))
    assert summary["first_epoch_train_s"] == 30.0
    assert summary["overhead_s_with_knn"] == pytest.approx(1.45)
    assert summary["overhead_s_without_knn"] == pytest.approx(0.1)
    assert summary["wall_images_per_s"] == pytest.approx(5 * 2560 / (31 + 2.1 + 3.7 + 2.5 + 4.0))
    assert [point["epoch"] for point in summary["knn"]] == [0, 3, 5]
    assert summary["knn"][1]["minutes"] == pytest.approx((31 + 2.1 + 3.7) / 60, abs=1e-3)
    assert summary["final_knn_top1"] == 60.0 and summary["best_knn_top1"] == 60.0
    assert summary["final_knn_top1_at_20"] == 61.0


def test_results_are_strict_json_even_with_a_diverged_number(tmp_path):
    results = gpu_run.Results(tmp_path / "results.json", started=0.0, payload={"ladder": {"loss": float("nan")}})
    results.data["rows"] = [{"epoch_s": float("inf"), "path": tmp_path}]
    results.save()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["ladder"]["loss"] is None and saved["rows"][0] == {"epoch_s": None, "path": str(tmp_path)}
    assert saved["errors"] == [] and saved["elapsed_s"] > 0


# ----------------------------------------------------------------------------- targets


def _results(epoch_s=2.0, blog_epoch_s=60.0, floor_epoch_s=0.5, knn=82.0):
    rows = [{"name": "blog loop (2 workers)", "pipeline": "dataloader", "epoch_s": blog_epoch_s},
            {"name": "+ CUDA graph", "pipeline": "batched", "epoch_s": epoch_s * 1.1}]
    return {"ladder": {"rows": rows}, "floor": {"floor_epoch_s": floor_epoch_s},
            "pretrain": {"epoch_s": epoch_s, "final_knn_top1": knn, "epochs_done": 50, "plan": {"budget_s": 300}}}


def test_targets_pass_and_fail_on_the_numbers():
    checks = {c["name"]: c for c in gpu_run.target_checks(_results(), judged=True)}
    assert checks["epoch at width 64 <= 2.5 s"]["passed"] is True
    assert checks["moonshot: epoch <= 1.5 s"]["passed"] is False
    speedup = checks["speed-up over the 2-worker blog loop >= 20x"]
    assert speedup["passed"] is True and speedup["value"] == pytest.approx(60 / 2.2)
    share = checks["share of the FLOP floor >= 15%"]
    assert share["value"] == pytest.approx(0.25) and share["passed"] is True  # floor 0.5 s / our 2 s
    assert checks["moonshot: share of the FLOP floor >= 30%"]["passed"] is False
    assert checks["kNN (k=200) within the 5-minute budget >= 80%"]["passed"] is True
    assert checks["moonshot: kNN (k=200) >= 85%"]["passed"] is False
    slow = {c["name"]: c for c in gpu_run.target_checks(_results(epoch_s=4.0, knn=70.0), judged=True)}
    assert slow["epoch at width 64 <= 2.5 s"]["passed"] is False
    assert slow["speed-up over the 2-worker blog loop >= 20x"]["passed"] is False  # 60 / 4.4 = 13.6x
    assert slow["share of the FLOP floor >= 15%"]["passed"] is False  # 12.5%
    assert slow["kNN (k=200) within the 5-minute budget >= 80%"]["passed"] is False


def test_targets_are_skipped_off_the_gpu_and_when_not_measured(capsys):
    checks = gpu_run.target_checks(_results(), judged=False, reason="a smoke run")
    assert len(checks) == 7 and all(check["passed"] is None for check in checks)
    assert "SKIP: epoch at width 64" in capsys.readouterr().out
    missing = gpu_run.target_checks({}, judged=True)
    assert all(check["passed"] is None for check in missing)


# ----------------------------------------------------------------------------- the ladder goes on


def _row(variant, epoch_s):
    return {"name": variant.name, "pipeline": variant.pipeline, "epoch_s": epoch_s, "images_per_s": 1.0,
            **{k: getattr(variant, k) for k in ("amp", "channels_last", "cuda_graph", "compile")}}


def test_a_failing_trick_is_recorded_and_left_out_of_later_rows():
    measured = []

    def measure(variant):
        if variant.amp and not (variant.channels_last or variant.cuda_graph or variant.compile):
            raise RuntimeError("bf16 is broken here")
        measured.append(variant)
        return _row(variant, 10.0 if variant.pipeline == "dataloader" else 2.0)

    rows, failures = train_throughput.run_ladder(measure, workers=4, keep_going=True, log=lambda line: None)
    assert [f["trick"] for f in failures] == ["amp"] and "bf16 is broken" in failures[0]["error"]
    assert not any(variant.amp for variant in measured), "bf16 stays out of the rows after its failure"
    assert [row["name"] for row in rows][-3:] == ["+ channels-last", "+ CUDA graph", "+ torch.compile"]
    assert rows[-1]["cuda_graph"] and rows[-1]["compile"], "the compiled row runs inside the graph"
    assert rows[0]["speedup_vs_blog"] == 1.0 and rows[-1]["speedup_vs_blog"] == 5.0
    with pytest.raises(RuntimeError, match="bf16 is broken"):
        train_throughput.run_ladder(measure, workers=4, keep_going=False, log=lambda line: None)


def test_a_row_that_cannot_run_here_is_skipped_with_its_reason_and_left_out():
    measured, skipped = [], []

    def measure(variant):
        measured.append(variant)
        return _row(variant, 2.0)

    rows, failures = train_throughput.run_ladder(
        measure, workers=4, keep_going=True, log=lambda line: None, skipped=skipped,
        skip_reason=lambda v: train_throughput.cuda_only(v, torch.device("cpu")))
    assert failures == [] and [s["name"] for s in skipped] == ["+ CUDA graph"]
    assert skipped[0]["skipped"] == "CUDA graphs need a CUDA device"
    assert not any(variant.cuda_graph for variant in measured)
    assert rows[-1]["name"] == "+ torch.compile" and rows[-1]["compile"] and not rows[-1]["cuda_graph"]


def _ladder_row(name, images_per_s, first_s, timed_s, **tricks):
    return {"name": name, "pipeline": "batched", "images_per_s": images_per_s, "first_epoch_s": first_s,
            "timed_epoch_s": timed_s, **{k: tricks.get(k, False) for k in ("amp", "channels_last", "cuda_graph",
                                                                           "compile")}}


def test_pretraining_takes_the_row_that_fits_the_most_epochs():
    graphed = _ladder_row("+ CUDA graph", 20_000, 1.0, 1.0, amp=True, cuda_graph=True)
    compiled = _ladder_row("+ torch.compile", 25_000, 61.0, 1.0, amp=True, cuda_graph=True, compile=True)
    ladder = {"rows": [graphed, compiled], "failures": []}
    # 195 steps of 256: 2.5 s an epoch graphed, 2.0 s compiled after 30 s of (cached) compiling
    assert gpu_run.choose_row(ladder, 300, 195, 256, smoke=False)["name"] == "+ torch.compile"  # 135 vs 120
    assert gpu_run.choose_row(ladder, 100, 195, 256, smoke=False)["name"] == "+ CUDA graph"  # 35 vs 40
    assert gpu_run.choose_row(ladder, 300, 195, 256, smoke=True)["name"] == "+ CUDA graph"
    assert gpu_run.tricks_of(compiled) == {"batched": True, "amp": True, "channels_last": False, "cuda_graph": True,
                                           "compile": True}
    assert gpu_run.choose_row({"rows": []}, 300, 195, 256, smoke=False) is None


# ----------------------------------------------------------------------------- the deadline


def test_the_clock_refuses_what_does_not_fit_and_the_smoke_refuses_nothing(tmp_path):
    results = gpu_run.Results(tmp_path / "results.json", started=time.perf_counter(), payload={})
    clock = gpu_run.Clock(results, deadline_s=100.0, reserve_s=10.0, enforce=True)
    assert clock.refusal(50.0, protect_s=30.0) is None  # 90 s left, 30 kept: 50 fits
    why = clock.refusal(70.0, protect_s=30.0, what="the step profile")
    assert why.startswith("the step profile needs ~70 s, ") and "30 s kept for the pretraining" in why
    smoke = gpu_run.Clock(results, deadline_s=0.0, reserve_s=10.0, enforce=False)
    assert smoke.refusal(1e9, protect_s=1e9) is None


def test_each_step_is_recorded_and_written_as_it_ends(tmp_path):
    path = tmp_path / "results.json"
    refreshed = []
    results = gpu_run.Results(path, started=0.0, payload={}, refresh=lambda data: refreshed.append(len(data["steps"])))

    def fail():
        raise RuntimeError("no GPU today")

    def skip():
        raise gpu_run.Skip("does not fit")

    assert gpu_run.run_step(results, "a", lambda: 41 + 1) == 42
    assert json.loads(path.read_text())["steps"] == {"a": "ran"}, "written as soon as the step ended"
    assert gpu_run.run_step(results, "b", skip, default="fallback") == "fallback"
    assert gpu_run.run_step(results, "c", fail, default={}) == {}
    saved = json.loads(path.read_text())
    assert saved["steps"] == {"a": "ran", "b": "skipped: does not fit", "c": "failed: RuntimeError: no GPU today"}
    assert saved["errors"][0]["step"] == "c" and refreshed == [1, 2, 3], "the summary refreshed before each write"


def test_the_ab_overrides_apply_only_to_recipe_settings(tmp_path, monkeypatch):
    fake = types.ModuleType("recipe_ab")
    calls = []

    def run_recipe_ab(**kwargs):
        calls.append(kwargs)
        return {"overrides": {"lars_clip": "solo-learn", "batch_size": 4096, "no_such_setting": 1}, "runs": []}

    fake.run_recipe_ab = run_recipe_ab
    monkeypatch.setitem(sys.modules, "recipe_ab", fake)
    args = gpu_run.parse_args(["--device", "cpu", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w")])
    results = gpu_run.Results(tmp_path / "results.json", started=time.perf_counter(), payload={})
    clock = gpu_run.Clock(results, deadline_s=1000.0, reserve_s=0.0, enforce=True)
    applied = gpu_run.run_ab_step(args, "synthetic", torch.device("cpu"), clock, 0.0, results)
    assert applied == {"lars_clip": "solo-learn"}
    assert results.data["recipe_ab"]["left_out"] == ["batch_size", "no_such_setting"]
    assert calls[0]["budget_s"] == args.ab_budget_s and calls[0]["smoke"] is False
    config = gpu_run.pretrain_config(args, "synthetic", torch.device("cpu"), dict.fromkeys(
        ("batched", "amp", "channels_last", "cuda_graph", "compile"), False), 3, 1, applied)
    assert config.lars_clip == "solo-learn" and config.log_every == 50
    with pytest.raises(gpu_run.Skip, match="0 skips|--ab-budget-s 0"):
        gpu_run.run_ab_step(gpu_run.parse_args(["--device", "cpu", "--ab-budget-s", "0"]), "synthetic",
                            torch.device("cpu"), clock, 0.0, results)


def test_the_batch_size_scales_the_learning_rate(tmp_path):
    tricks = dict.fromkeys(("batched", "amp", "channels_last", "cuda_graph", "compile"), False)
    configs = {}
    for batch in (256, 1024):
        args = gpu_run.parse_args(["--device", "cpu", "--batch-size", str(batch), "--work", str(tmp_path)])
        configs[batch] = gpu_run.pretrain_config(args, "synthetic", torch.device("cpu"), tricks, 3, 1, {})
    assert configs[1024].lr == pytest.approx(4 * configs[256].lr)


# ----------------------------------------------------------------------------- the watchdog


def test_the_watchdog_stops_training_and_the_saved_model_comes_back(tmp_path):
    # lr 0.05: at the preset's 0.3 this tiny run diverges in epoch 42, which a fast CPU reaches within the 8 s
    # (checked: 150 epochs at 0.05 stay finite); 10,000 epochs are far more than any CPU trains in 8 s
    config = TrainConfig.from_preset("fast", data="synthetic:64,32", width=4, projector="32-32-32", batch_size=16,
                                     epochs=10_000, lr=0.05, eval_every=0, checkpoint_every=0, progress=False,
                                     device="cpu", out_dir=str(tmp_path / "run"), compile="off")
    out = tmp_path / "out"
    out.mkdir()
    # the watchdog stops the run after 8 s (set-up takes about 1 s)
    model, ending = gpu_run.train_with_watchdog(config, limit_s=8.0, out=out, device=torch.device("cpu"))
    assert ending == "stopped by the watchdog"
    assert (out / "metrics.jsonl").read_text().count("\n") >= 1, "the records were copied while training"
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    assert torch.equal(model.state_dict()["encoder.conv1.weight"], saved["encoder.conv1.weight"])
    initial = build_model(**config.arch()).state_dict()["encoder.conv1.weight"]
    assert not torch.equal(saved["encoder.conv1.weight"], initial), "it trained before it was stopped"


# ----------------------------------------------------------------------------- weights in parts


def save_weights(out, model, split_mib=None, config=None) -> dict:
    """gpu_run.save_weights into `out`; returns what it recorded."""
    results = types.SimpleNamespace(data={"pretrain": {"config": config or {"width": 4}}})
    gpu_run.save_weights(types.SimpleNamespace(out=str(out), split_weights_mib=split_mib), model, results)
    (out / "results.json").write_text(json.dumps({"weights": results.data["weights"]}))
    return results.data["weights"]


def test_weights_split_into_parts_and_join_back(tmp_path):
    model = build_model(width=4, projector="32-32-32")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    manifest = save_weights(tmp_path, model, split_mib=20_000 / 2**20)
    files = sorted(tmp_path.glob("model-bf16.part*.pt"))
    assert len(files) == len(manifest["files"]) > 1 and not (tmp_path / "model-bf16.pt").exists()
    assert all(path.stat().st_size <= 20_000 for path in files)
    joined = b"".join((tmp_path / name).read_bytes() for name in manifest["files"])
    assert manifest["sha256"] == hashlib.sha256(joined).hexdigest()
    loaded, config = load_pretrained(tmp_path, sha256=manifest["sha256"])  # the same function as a checkpoint's
    assert config == {"width": 4} and gpu_run.load_gpu_model(tmp_path).arch == model.arch
    for name, tensor in model.state_dict().items():
        expected = tensor.to(torch.bfloat16).to(tensor.dtype) if tensor.is_floating_point() else tensor
        assert torch.equal(loaded.state_dict()[name], expected), name
    assert load_checkpoint(tmp_path)["arch"] == model.arch
    # a second save in one file replaces every part of the first
    manifest = save_weights(tmp_path, build_model(width=2, projector="8-8"))
    assert manifest["files"] == ["model-bf16.pt"] and not list(tmp_path.glob("model-bf16.part*.pt"))
    assert gpu_run.load_gpu_model(tmp_path).encoder.width == 2


def test_missing_or_damaged_parts_are_refused(tmp_path):
    manifest = save_weights(tmp_path, build_model(width=4, projector="32-32-32"), split_mib=20_000 / 2**20)
    with pytest.raises(CheckpointError, match="has sha256 .*expected 000000000000"):
        load_pretrained(tmp_path, sha256="0" * 64)
    (tmp_path / manifest["files"][1]).unlink()
    with pytest.raises(CheckpointError, match=r"parts \[2\] of \d+ \(model-bf16\.partIof\d+\.pt\) are missing"):
        load_pretrained(tmp_path)
    (tmp_path / "other.part1of1.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="holds the parts of several files"):
        load_pretrained(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_pretrained(tmp_path / "elsewhere")


def test_weights_only_parts_of_the_first_gpu_runs_still_load(tmp_path):
    """Weights only, as "vicreg-weight-parts/1" stored them: {"format", "arch", "dtype", "state_dict"}, cut."""
    import io

    model = build_model(width=4, projector="32-32-32")
    state = {name: value.to(torch.bfloat16) if value.is_floating_point() else value
             for name, value in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"format": "vicreg-weight-parts/1", "arch": model.arch, "dtype": "torch.bfloat16",
                "state_dict": state}, buffer)
    blob = buffer.getvalue()
    for index, start in enumerate(range(0, len(blob), 30_000)):
        (tmp_path / f"model-bf16.part{index + 1}of{-(-len(blob) // 30_000)}.pt").write_bytes(blob[start:start + 30_000])
    loaded, config = load_pretrained(tmp_path, sha256=hashlib.sha256(blob).hexdigest())
    assert config == {} and loaded.arch == model.arch and not loaded.training
    assert loaded.state_dict()["encoder.conv1.weight"].dtype == torch.float32


# ----------------------------------------------------------------------------- the GPU machine's packages

# torch, torchvision, numpy and tqdm (the library's four dependencies), and what they themselves need
GPU_MACHINE_PACKAGES = re.compile(
    r"^(torch|torchvision|torchgen|functorch|numpy|tqdm|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|"
    r"typing_extensions|nvidia|triton|cuda|PIL|pillow)([-_.].*)?$", re.IGNORECASE)


def test_gpu_run_imports_with_only_the_library_s_dependencies(tmp_path):
    site = Path(torch.__file__).resolve().parents[1]
    for entry in site.iterdir():
        if GPU_MACHINE_PACKAGES.match(entry.name):
            (tmp_path / entry.name).symlink_to(entry)
    repo = BENCHMARKS.parent
    code = ("import gpu_run, vicreg_lib.eval.probes, vicreg_lib.checkpoint, torchvision.io\n"
            "for name in ('matplotlib', 'sklearn', 'umap'):\n"
            "    try:\n"
            "        __import__(name)\n"
            "    except ImportError:\n"
            "        continue\n"
            "    raise SystemExit(f'{name} is importable: the test does not model the GPU machine')\n")
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (tmp_path, repo, BENCHMARKS)))},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


# ----------------------------------------------------------------------------- the step profile's graph check


class _EagerStandIn:
    """GraphedStep's interface on the CPU: every call an eager training_step, at lr x lr_factor."""

    WARMUP_STEPS = 3
    lr_factor = 1.0

    def __init__(self, model, loss_fn, optimizer, use_amp):
        self.args = (model, loss_fn, optimizer)
        self.graphed, self.why_eager = True, None

    def __call__(self, view1, view2, lr):
        model, loss_fn, optimizer = self.args
        return train_module.training_step(model, loss_fn, optimizer, view1, view2, lr * self.lr_factor)


class _WrongLr(_EagerStandIn):
    lr_factor = 0.5  # a graph that kept a stale learning rate


def test_the_graph_check_passes_an_equal_step_and_fails_a_wrong_one(monkeypatch):
    config = step_profile.profile_config(width=4, batch=8, projector="32-32-32")
    monkeypatch.setattr(step_profile, "GraphedStep", _EagerStandIn)
    same = step_profile.check_graphed_step(config, 8, torch.device("cpu"), steps=3)
    assert same["passed"] is True and same["weight_difference_over_update"] < 1e-4, same
    monkeypatch.setattr(step_profile, "GraphedStep", _WrongLr)
    wrong = step_profile.check_graphed_step(config, 8, torch.device("cpu"), steps=3)
    assert wrong["passed"] is False and wrong["weight_difference_over_update"] > 0.2, wrong


def test_the_profile_times_and_counts_a_graphed_part_and_says_whether_it_captured(monkeypatch):
    monkeypatch.setattr(step_profile, "GraphedStep", _EagerStandIn)
    monkeypatch.setattr(step_profile, "refusal", lambda name, device, use_compile: (
        "torch.compile is off in this run" if name in step_profile.COMPILED_PARTS else None))
    result = step_profile.profile_step(torch.device("cpu"), width=4, batch_sizes=(8,), projector="32-32-32",
                                       use_compile=False, warmup=1, steps=1, repeats=1, log=lambda line: None)
    graphed = result["parts"]["8"]["graphed_step"]
    assert graphed["graphed"] is True and graphed["why_eager"] is None and graphed["ms"] > 0
    assert graphed["images_per_s"] > 0 and result["aten_calls"]["graphed_step"] > 0
    assert result["parts"]["8"]["compiled_graphed_step"] == {"skipped": "torch.compile is off in this run"}


# ----------------------------------------------------------------------------- recording a run in the docs


def test_a_run_is_recorded_without_its_weights_and_summarised(tmp_path, capsys):
    import record_gpu_run

    out = tmp_path / "out"
    out.mkdir()
    results = {"gpu": "Some GPU", "torch": "2.11", "command": "python gpu_run.py --out OUT", "status": "complete",
               **_results(), "probes": {"fast": {"top1": 78.3, "top5": 98.7, "seconds": 28.6},
                                        "standard": {"skipped": "needs ~170 s, 20 s left"}},
               "checks": [{"name": "epoch at width 64 <= 2.5 s", "passed": True, "detail": "2.00 s"}]}
    results["ladder"]["rows"][1].update(images_per_s=25_000.0, speedup_vs_blog=27.3)
    results["ladder"]["rows"][0].update(images_per_s=830.0, speedup_vs_blog=1.0)
    (out / "results.json").write_text(json.dumps(results))
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "model-bf16.part1of1.pt").write_bytes(b"weights")
    text = record_gpu_run.main([str(out), str(tmp_path / "docs"), "--markdown", str(tmp_path / "summary.md")])
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["metrics.jsonl", "results.json"]
    assert "| + CUDA graph | 25,000 | 2.20 | 27.3 |" in text and "probe fast: top-1 78.30%" in text
    assert "probe standard: needs ~170 s" in text and "PASS: epoch at width 64 <= 2.5 s" in text
    assert (tmp_path / "summary.md").read_text() == text
    with pytest.raises(SystemExit, match="no results.json in"):
        record_gpu_run.main([str(tmp_path / "elsewhere"), str(tmp_path / "docs")])


def test_ladder_rows_are_estimated_from_what_was_measured():
    args = gpu_run.parse_args(["--device", "cpu", "--ladder-steps", "10", "--batch-size", "256"])
    blog = train_throughput.blog_variants(4)[0]
    compiled = train_throughput.Variant("+ torch.compile", amp=True, cuda_graph=True, compile=True)
    plain = train_throughput.Variant("+ bf16 autocast", amp=True)
    # the blog loop: two epochs of 20 steps at the guessed rate, then at its measured one
    assert gpu_run.ladder_row_estimate(blog, args, [], {}) == pytest.approx(
        2 * 20 * 256 / gpu_run.BLOG_IMAGES_PER_S_GUESS + 5)
    assert gpu_run.ladder_row_estimate(blog, args, [{"pipeline": "dataloader", "images_per_s": 1024.0}], {}) == \
        pytest.approx(2 * 20 * 256 / 1024 + 5)
    rows = [{"pipeline": "batched", "wall_s": 3.0}, {"pipeline": "batched", "wall_s": 5.0}]
    assert gpu_run.ladder_row_estimate(plain, args, rows, {}) == 5.0  # the slowest batched row so far
    assert gpu_run.ladder_row_estimate(compiled, args, rows, {"compile_s": 31.0}) == 36.0  # + the profile's compile
    assert gpu_run.ladder_row_estimate(compiled, args, rows, {}) == 5.0 + step_profile.COMPILE_GUESS_S


def test_without_a_ladder_row_the_pretraining_plans_from_the_step_profile():
    profile = {"ms": {"256": {"augment": 2.0, "eager_step": 30.0, "graphed_step": 8.0, "compiled_step": 5.0}}}
    row = gpu_run.profile_row(profile, 256, torch.device("cuda"))
    assert row["name"] == "step profile: graphed_step" and row["images_per_s"] == pytest.approx(256_000 / 10.0)
    assert gpu_run.tricks_of(row) == {"batched": True, "amp": True, "channels_last": True, "cuda_graph": True,
                                      "compile": False}
    assert gpu_run.row_startup_s(row) == 0.0
    assert gpu_run.profile_row(profile, 1024, torch.device("cuda")) is None  # no step timed at that batch
    assert gpu_run.profile_row({}, 256, torch.device("cpu")) is None
