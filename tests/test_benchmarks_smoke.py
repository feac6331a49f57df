"""Smoke test of benchmarks/: each script runs at tiny sizes (--smoke) and keeps its promises.

For every script: it exits 0, prints a table (a header row over a `-+-` rule), and writes
valid JSON with the keys the docs describe, whose measured numbers are positive and finite.
The scripts run in a subprocess with this interpreter, exactly as a user runs them.
gpu_run.py --smoke runs its five steps on the CPU and must write at most 8 files.
"""

from __future__ import annotations

import importlib.util
import json
import math
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


def test_gpu_run_smoke(tmp_path: Path) -> None:
    out = tmp_path / "out"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-u", str(BENCHMARKS / "gpu_run.py"), "--smoke", "--out", str(out),
         "--work", str(tmp_path / "work")],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, f"gpu_run.py --smoke failed:\n{done.stdout[-4000:]}\n{done.stderr[-3000:]}"
    print(f"gpu_run.py --smoke took {seconds:.0f} s")
    files = sorted(path.name for path in out.iterdir())
    assert len(files) <= 8 and {"results.json", "metrics.jsonl", "log.txt"} <= set(files), files
    result = json.loads((out / "results.json").read_text())
    assert result["status"] == "complete" and result["errors"] == [], result["errors"]
    assert result["files"] == files and result["device_type"] == "cpu" and result["torch"]

    # 1. data through the archive: spec; 2. the whole ladder, every trick, none failed
    assert result["data"]["spec"].startswith("archive:") and result["data"]["train_images"] == 400
    ladder = result["ladder"]
    assert ladder["failures"] == []
    assert [row["name"] for row in ladder["rows"]][-4:] == [
        "+ data on device, batched aug", "+ bf16 autocast", "+ channels-last", "+ torch.compile"]
    for row in ladder["rows"]:
        assert_positive(row, ("images_per_s", "epoch_s", "speedup_vs_blog"), row["name"])
    paths = result["code_paths"]
    assert all(paths[t]["ran_in_ladder"] and paths[t]["error"] is None
               for t in ("batched", "amp", "channels_last", "compile"))
    assert paths["augment_accelerator_path"] == {**paths["augment_accelerator_path"], "ran": True,
                                                 "forced_on_cpu": True}
    # 3. the floor and our share
    assert_positive(result["floor"], ("flops_per_image_step", "floor_epoch_s"), "floor")
    assert_positive(result["floor"]["ours_pretraining"], ("fraction_of_floor",), "floor share")

    # 4. the pretraining ran the planned epochs with kNN, its records came back
    run = result["pretrain"]
    assert run["ending"] == "completed" and run["config"]["preset"] == "fast"
    assert run["epochs_done"] == run["plan"]["epochs"] == run["config"]["epochs"]
    assert run["config"]["amp"] == "bf16" and run["config"]["channels_last"] == "on"
    assert len(run["knn"]) == run["plan"]["evaluations"] and 0 <= run["final_knn_top1"] <= 100
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(run["epochs_done"] + 1))

    # 5. both probes on every test image; the weights join back into the trained model
    for protocol in ("fast", "standard"):
        probe = result["probes"][protocol]
        assert probe["num_test"] == 100 and 0 <= probe["top1"] <= 100, probe
    from vicreg_lib.weight_parts import load_model_from_parts

    model = load_model_from_parts(out, sha256=result["weights"]["sha256"])
    assert model.encoder.width == 8 and set(result["weights"]["files"]) <= set(files)

    # not a GPU: every target is reported as skipped; the log holds what was printed
    assert len(result["checks"]) == 7 and all(check["passed"] is None for check in result["checks"])
    log = (out / "log.txt").read_text()
    assert "[5/5]" in log and "SKIP: VICReg epoch" in log and "done in" in log


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "'0' is not a positive integer; give a whole number >= 1"),
        (["--width", "wide"], "'wide' is not a positive integer"),
        (["--device", "tpu"], "unknown device 'tpu': use auto, cpu, cuda or cuda:N"),
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
