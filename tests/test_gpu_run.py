"""benchmarks/gpu_run.py's parts that decide or record something: the schedule fitted to a
budget, the run's summary from its metrics, the PASS/FAIL targets, the ladder going on past a
failing trick, the watchdog, and the weights split into parts and joined again.

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
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_run  # noqa: E402
import train_throughput  # noqa: E402
from vicreg_lib.config import TrainConfig  # noqa: E402
from vicreg_lib.model import build_model  # noqa: E402
from vicreg_lib.weight_parts import load_model_from_parts, load_weight_parts, save_weight_parts  # noqa: E402




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


def _results(epoch_s=3.0, blog_epoch_s=60.0, floor_epoch_s=1.2, knn=82.0):
    rows = [{"name": "blog loop (2 workers)", "pipeline": "dataloader", "epoch_s": blog_epoch_s},
            {"name": "+ torch.compile", "pipeline": "batched", "epoch_s": epoch_s * 1.1}]
    return {"ladder": {"rows": rows}, "floor": {"floor_epoch_s": floor_epoch_s},
            "pretrain": {"epoch_s": epoch_s, "final_knn_top1": knn, "epochs_done": 50, "plan": {"budget_s": 300}}}


def test_targets_pass_and_fail_on_the_numbers():
    checks = {c["name"]: c for c in gpu_run.target_checks(_results(), judged=True)}
    assert checks["VICReg epoch (width 64, batch 256) < 4 s"]["passed"] is True
    assert checks["moonshot: epoch < 2 s"]["passed"] is False
    speedup = checks[">= 10x the blog loop (2 workers), same GPU"]
    assert speedup["passed"] is True and speedup["value"] == pytest.approx(60 / 3.3)
    assert checks["moonshot: >= 20x the blog loop"]["passed"] is False
    assert checks[">= 30% of the FLOP floor"]["value"] == pytest.approx(0.4)  # floor 1.2 s / our 3 s
    assert checks[">= 30% of the FLOP floor"]["passed"] is True
    assert checks["kNN (k=200) >= 80% within the budget"]["passed"] is True
    assert checks["moonshot: kNN (k=200) >= 85%"]["passed"] is False
    slow = {c["name"]: c for c in gpu_run.target_checks(_results(epoch_s=5.0, knn=70.0), judged=True)}
    assert slow["VICReg epoch (width 64, batch 256) < 4 s"]["passed"] is False
    assert slow["kNN (k=200) >= 80% within the budget"]["passed"] is False


def test_targets_are_skipped_off_the_gpu_and_when_not_measured(capsys):
    checks = gpu_run.target_checks(_results(), judged=False, reason="a smoke run")
    assert all(check["passed"] is None for check in checks)
    assert "SKIP: VICReg epoch" in capsys.readouterr().out
    missing = gpu_run.target_checks({}, judged=True)
    assert all(check["passed"] is None for check in missing)


# ----------------------------------------------------------------------------- the ladder goes on


def test_a_failing_trick_is_recorded_and_left_out_of_later_rows():
    measured = []

    def measure(variant):
        if variant.amp:
            if not variant.channels_last and not variant.compile:
                raise RuntimeError("bf16 is broken here")
        measured.append(variant)
        return {"name": variant.name, "pipeline": variant.pipeline, "epoch_s": 10.0 if variant.pipeline ==
                "dataloader" else 2.0, "images_per_s": 1.0, **{k: getattr(variant, k) for k in
                                                              ("amp", "channels_last", "compile")}}

    rows, failures = train_throughput.run_ladder(measure, workers=4, keep_going=True, log=lambda line: None)
    assert [f["trick"] for f in failures] == ["amp"] and "bf16 is broken" in failures[0]["error"]
    assert not any(variant.amp for variant in measured), "bf16 stays out of the rows after its failure"
    assert [row["name"] for row in rows][-2:] == ["+ channels-last", "+ torch.compile"]
    assert rows[0]["speedup_vs_blog"] == 1.0 and rows[-1]["speedup_vs_blog"] == 5.0
    with pytest.raises(RuntimeError, match="bf16 is broken"):
        train_throughput.run_ladder(measure, workers=4, keep_going=False, log=lambda line: None)


def test_tricks_for_pretraining_follow_the_ladder():
    ladder = {"rows": [{"name": "x", "pipeline": "batched", "amp": True, "channels_last": False, "compile": False}],
              "failures": []}
    tricks = gpu_run.tricks_that_worked(ladder)
    assert tricks == {"batched": True, "amp": True, "channels_last": False, "compile": False}
    assert gpu_run.matching_row(ladder, tricks)["name"] == "x"


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


def test_weights_split_into_parts_and_join_back(tmp_path):
    model = build_model(width=4, projector="32-32-32")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    manifest = save_weight_parts(model, tmp_path, max_part_bytes=20_000)
    files = sorted(tmp_path.glob("model-bf16.part*.pt"))
    assert len(files) == len(manifest["files"]) > 1
    assert all(path.stat().st_size <= 20_000 for path in files)
    joined = b"".join((tmp_path / name).read_bytes() for name in manifest["files"])
    assert manifest["sha256"] == hashlib.sha256(joined).hexdigest()
    loaded = load_model_from_parts(tmp_path, sha256=manifest["sha256"])
    for name, tensor in model.state_dict().items():
        expected = tensor.to(torch.bfloat16).to(tensor.dtype) if tensor.is_floating_point() else tensor
        assert torch.equal(loaded.state_dict()[name], expected), name
    assert load_weight_parts(tmp_path)["arch"] == model.arch
    # a second, smaller save replaces every part of the first
    save_weight_parts(build_model(width=2, projector="8-8"), tmp_path, max_part_bytes=10**9)
    assert [p.name for p in tmp_path.glob("model-bf16.part*.pt")] == ["model-bf16.part1of1.pt"]


def test_missing_or_damaged_parts_are_refused(tmp_path):
    manifest = save_weight_parts(build_model(width=4, projector="32-32-32"), tmp_path, max_part_bytes=20_000)
    with pytest.raises(ValueError, match="do not join"):
        load_weight_parts(tmp_path, sha256="0" * 64)
    (tmp_path / manifest["files"][1]).unlink()
    with pytest.raises(FileNotFoundError, match=r"weight parts \[2\] of"):
        load_weight_parts(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weight parts"):
        load_weight_parts(tmp_path / "elsewhere")


# ----------------------------------------------------------------------------- the GPU machine's packages

# torch, torchvision and numpy, and what they themselves need: all the GPU machine has
GPU_MACHINE_PACKAGES = re.compile(
    r"^(torch|torchvision|torchgen|functorch|numpy|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|"
    r"typing_extensions|nvidia|triton|cuda|PIL|pillow)([-_.].*)?$", re.IGNORECASE)


def test_gpu_run_imports_with_only_torch_torchvision_and_numpy(tmp_path):
    site = Path(torch.__file__).resolve().parents[1]
    for entry in site.iterdir():
        if GPU_MACHINE_PACKAGES.match(entry.name):
            (tmp_path / entry.name).symlink_to(entry)
    repo = BENCHMARKS.parent
    code = ("import gpu_run, vicreg_lib.linear_eval, vicreg_lib.checkpoint, torchvision.io\n"
            "for name in ('tqdm', 'matplotlib', 'sklearn', 'umap'):\n"
            "    try:\n"
            "        __import__(name)\n"
            "    except ImportError:\n"
            "        continue\n"
            "    raise SystemExit(f'{name} is importable: the test does not model the GPU machine')\n")
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (tmp_path, repo, BENCHMARKS)))},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
