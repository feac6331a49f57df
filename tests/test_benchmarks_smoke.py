"""Smoke test of benchmarks/: each script runs at tiny sizes (--smoke) and keeps its promises.

For every script: it exits 0, prints a table (a header row over a `-+-` rule), and writes
valid JSON with the keys the docs describe, whose measured numbers are positive and finite.
The scripts run in a subprocess with this interpreter, exactly as a user runs them.
gpu_run.py --smoke runs every one of its steps on the CPU, and writes its results.json after
each step and when it is stopped by SIGTERM.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
RUN_INFO_KEYS = ("benchmark", "device", "date", "command", "torch", "settings")


def run_smoke(script: str, tmp_path: Path, common_format: bool = True) -> tuple[str, dict[str, Any]]:
    """Run benchmarks/<script> --smoke --device cpu; return its stdout and parsed JSON.

    common_format: the script uses benchmarks/common.py (its table rule and run-info keys).
    """
    out = tmp_path / f"{Path(script).stem}.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke", "--device", "cpu", "--json", str(out)],
        cwd=tmp_path,  # the scripts must not depend on the working directory
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert out.is_file(), f"{script} wrote no JSON to {out}"
    result = json.loads(out.read_text())
    if not common_format:
        return done.stdout, result
    lines = done.stdout.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("-") and "-+-" in line]
    assert rules and all(" | " in lines[i - 1] for i in rules), f"{script} printed no table:\n{done.stdout}"
    for key in RUN_INFO_KEYS:
        assert key in result, f"{script}: JSON lacks {key!r} (has {sorted(result)})"
    assert result["settings"].get("smoke") is True
    return done.stdout, result


def assert_positive(record: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        value = record.get(key)
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (
            f"{where}: {key}={value!r}"
        )


def test_train_throughput_smoke(tmp_path: Path) -> None:
    stdout, result = run_smoke("train_throughput.py", tmp_path)
    assert result["benchmark"] == "train_throughput"
    rows = result["variants"]
    pipelines = {row["pipeline"] for row in rows}
    assert pipelines == {"dataloader", "batched"}, "both the blog loop and ours must be measured"
    assert rows[0]["name"].startswith("blog loop") and rows[0]["speedup_vs_blog"] == 1.0
    for row in rows:
        assert_positive(row, ("images_per_s", "step_s", "epoch_s", "speedup_vs_blog"), row["name"])
        # the epoch is extrapolated from the measured rate to 50,000 images
        assert math.isclose(
            row["epoch_s"] * row["images_per_s"], result["settings"]["epoch_images"], rel_tol=1e-6
        )
    assert result["settings"]["epoch_images"] == 50_000 and result["settings"]["extrapolated"] is True
    assert "extrapolated" in stdout
    # GPU targets cannot be judged on the CPU: they are reported as skipped, not passed
    assert result["checks"] and all(check["passed"] is None for check in result["checks"])
    assert "SKIP:" in stdout


def test_flops_floor_smoke(tmp_path: Path) -> None:
    _, result = run_smoke("flops_floor.py", tmp_path)
    assert result["benchmark"] == "flops_floor"
    keys = (
        "flops_per_image_model",
        "flops_per_image_step",
        "matmul_flops_per_s",
        "floor_epoch_s",
        "epoch_s",
        "achieved_flops_per_s",
        "fraction_of_floor",
    )
    assert_positive(result, keys, "flops_floor")
    # the loss adds FLOPs on top of the model; the floor is the step's FLOPs at the matmul rate
    assert result["flops_per_image_step"] > result["flops_per_image_model"]
    expected_floor = result["flops_per_image_step"] * 50_000 / result["matmul_flops_per_s"]
    assert math.isclose(result["floor_epoch_s"], expected_floor, rel_tol=1e-6)
    assert math.isclose(
        result["fraction_of_floor"], result["floor_epoch_s"] / result["epoch_s"], rel_tol=1e-6
    )


def test_scaling_smoke(tmp_path: Path) -> None:
    _, result = run_smoke("scaling.py", tmp_path)
    assert result["benchmark"] == "scaling"
    rows = result["rows"]
    configs = {(row["width"], row["batch_size"]) for row in rows}
    assert len(configs) == len(rows) >= 2, "a sweep over at least two configurations"
    for row in rows:
        where = f"width {row['width']} batch {row['batch_size']}"
        assert_positive(row, ("images_per_s", "epoch_s", "peak_memory_mib", "rss_after_imports_mib"), where)
        assert row["peak_memory_mib"] >= row["rss_after_imports_mib"]


def test_augment_throughput_smoke(tmp_path: Path) -> None:
    if not (BENCHMARKS / "augment_throughput.py").exists():
        pytest.skip("benchmarks/augment_throughput.py is not in this checkout yet")
    stdout, result = run_smoke("augment_throughput.py", tmp_path, common_format=False)
    # a table: a header naming images/s, then one line per measured pipeline
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "pipeline" in line and "images" in line)
    rows = result["results"]
    assert len(lines) > header + len(rows)
    assert {row["pipeline"] for row in rows} == {"per-image DataLoader", "BatchAugment"}
    for row in rows:
        assert_positive(row, ("images_per_s",), f"{row['pipeline']} on {row['device']}")
    assert_positive(result, ("speedup_cpu_vs_best_per_image",), "augment_throughput")


FAKE_RECIPE_AB = """
def run_recipe_ab(data, data_root, device, budget_s, out_dir, smoke):
    # a stand-in for benchmarks/recipe_ab.py where the checkout has none yet
    return {"overrides": {"lars_clip": "solo-learn"}, "stand_in": True}
"""


def run_gpu_smoke(tmp_path: Path, **popen: Any) -> tuple[list[str], dict[str, Any]]:
    """(the command, subprocess keyword arguments) of gpu_run.py --smoke with a stand-in recipe_ab
    module on the path (the checkout's own comes first once it has one)."""
    fake = tmp_path / "fake_modules"
    fake.mkdir(exist_ok=True)
    (fake / "recipe_ab.py").write_text(FAKE_RECIPE_AB)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(fake)])}
    command = [sys.executable, "-u", str(BENCHMARKS / "gpu_run.py"), "--smoke", "--out", str(tmp_path / "out"),
               "--work", str(tmp_path / "work")]
    return command, dict(cwd=tmp_path, env=env, **popen)


def test_gpu_run_smoke(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command, options = run_gpu_smoke(tmp_path)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, **options)
    print(f"gpu_run.py --smoke took {time.perf_counter() - started:.0f} s")
    assert done.returncode == 0, f"gpu_run.py --smoke failed:\n{done.stdout[-4000:]}\n{done.stderr[-3000:]}"
    files = sorted(path.name for path in out.iterdir())
    assert {"results.json", "metrics.jsonl", "log.txt", "step-profile.json"} <= set(files), files
    result = json.loads((out / "results.json").read_text())
    assert result["status"] == "complete" and result["errors"] == [], result["errors"]
    assert result["files"] == files and result["device_type"] == "cpu" and result["torch"]
    # every step ran, whatever the clock said (the smoke never skips on time)
    assert result["steps"] == {step: "ran" for step in
                               ("data", "step_profile", "recipe_ab", "ladder", "floor", "pretrain", "weights",
                                "probes")}, result["steps"]
    assert result["data"]["spec"].startswith("archive:") and result["data"]["train_images"] == 400

    # the step profile: every CPU part timed, aten calls counted, the CUDA-only parts say why not
    profile = json.loads((out / "step-profile.json").read_text())
    parts = profile["parts"]["16"]
    for name in ("augment", "fwd_bwd_fp32", "fwd_bwd_bf16", "optimizer", "eager_step"):
        assert_positive(parts[name], ("ms",), name)
        assert result["step_profile"]["aten_calls"][name] > 0
    assert parts["graphed_step"] == {"skipped": "CUDA graphs need a CUDA device"}
    assert profile["graph_check"]["passed"] is None

    # the A/B's winning overrides reached the pretraining
    overrides = result["recipe_ab"]["overrides"]
    run = result["pretrain"]
    assert run["overrides"] == overrides and all(run["config"][k] == v for k, v in overrides.items())

    # the ladder: every trick a CPU can run, none failed, the CUDA graph row skipped with its reason
    ladder = result["ladder"]
    assert ladder["failures"] == [] and [s["name"] for s in ladder["skipped_rows"]] == ["+ CUDA graph"]
    assert [row["name"] for row in ladder["rows"]][-4:] == [
        "+ data on device, batched aug", "+ bf16 autocast", "+ channels-last", "+ torch.compile"]
    for row in ladder["rows"]:
        assert_positive(row, ("images_per_s", "epoch_s", "speedup_vs_blog"), row["name"])
    paths = result["code_paths"]
    assert all(paths[t]["ran_in_ladder"] and paths[t]["error"] is None
               for t in ("batched", "amp", "channels_last", "compile"))
    assert paths["cuda_graph"]["skipped"] == "CUDA graphs need a CUDA device"
    assert_positive(result["floor"], ("flops_per_image_step", "floor_epoch_s"), "floor")
    assert_positive(result["floor"]["ours_pretraining"], ("fraction_of_floor",), "floor share")

    # the pretraining ran the planned epochs with kNN, its records came back, the host synced every 50 steps
    assert run["ending"] == "completed" and run["config"]["preset"] == "fast" and run["config"]["log_every"] == 50
    assert run["epochs_done"] == run["plan"]["epochs"] == run["config"]["epochs"]
    assert run["config"]["amp"] == "bf16" and run["config"]["channels_last"] == "on"
    assert len(run["knn"]) == run["plan"]["evaluations"] and 0 <= run["final_knn_top1"] <= 100
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(run["epochs_done"] + 1))

    # both probes on every test image, each predicted from a timed epoch; the weights in one file
    for protocol in ("fast", "standard"):
        probe = result["probes"][protocol]
        assert probe["num_test"] == 100 and 0 <= probe["top1"] <= 100 and probe["predicted_s"] > 0, probe
    from vicreg_lib.checkpoint import load_pretrained

    model, _ = load_pretrained(out / "model-bf16.pt", sha256=result["weights"]["sha256"])
    assert model.encoder.width == 8 and result["weights"]["files"] == ["model-bf16.pt"]

    # not a GPU: every target is reported as skipped; the log holds what was printed
    assert len(result["checks"]) == 7 and all(check["passed"] is None for check in result["checks"])
    log = (out / "log.txt").read_text()
    assert "the plan" in log and "[probes]" in log and "SKIP: epoch at width 64" in log and "done in" in log


def test_gpu_run_writes_its_results_when_terminated(tmp_path: Path) -> None:
    """SIGTERM in the middle of the run: results.json is there, strict JSON, and says so."""
    results = tmp_path / "out" / "results.json"
    command, options = run_gpu_smoke(tmp_path)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **options)
    try:
        while process.poll() is None:  # until the first step has ended and been written
            with contextlib.suppress(OSError, ValueError):
                if json.loads(results.read_text()).get("steps", {}).get("data") == "ran":
                    break
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before it could be stopped"
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert returncode != 0
    result = json.loads(results.read_text())  # strict JSON, whatever step was stopped
    assert result["status"] == "terminated" and result["steps"]["data"] == "ran"
    assert "code_paths" in result and len(result["checks"]) == 7


def test_step_profile_smoke(tmp_path: Path) -> None:
    stdout, result = run_smoke("step_profile.py", tmp_path)
    assert result["benchmark"] == "step_profile" and result["settings"]["batch_sizes"] == [16]
    parts = result["parts"]["16"]
    assert list(parts) == ["augment", "fwd_bwd_fp32", "fwd_bwd_bf16", "optimizer", "eager_step", "compiled_step",
                           "graphed_step", "compiled_graphed_step"]
    for name in ("augment", "fwd_bwd_fp32", "fwd_bwd_bf16", "optimizer", "eager_step"):
        assert_positive(parts[name], ("ms",), name)
    assert_positive(parts["eager_step"], ("images_per_s",), "eager_step")
    calls = result["aten_calls"]
    # the whole eager step is the forward and backward plus the optimizer, give or take a few calls
    assert calls["optimizer"] < 60 and calls["augment"] <= 300
    assert calls["fwd_bwd_fp32"] < calls["eager_step"] <= calls["fwd_bwd_fp32"] + calls["optimizer"] + 10
    assert all(calls[name] is None for name in ("compiled_step", "graphed_step", "compiled_graphed_step"))
    assert parts["compiled_step"]["skipped"] and parts["graphed_step"]["skipped"] == "CUDA graphs need a CUDA device"
    assert result["graph_check"]["passed"] is None and "aten calls" in stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "'0' is not a positive integer; give a whole number >= 1"),
        (["--width", "wide"], "'wide' is not a positive integer"),
        (["--device", "tpu"], "unknown device 'tpu': use auto, cpu, mps, cuda or cuda:N"),
    ],
)
def test_bad_options_give_one_clear_error(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("benchmarks_common", BENCHMARKS / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    parser = common.base_parser("test", "x.json")
    parser.add_argument("--steps", type=common.positive_int)
    parser.add_argument("--width", type=common.positive_int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
