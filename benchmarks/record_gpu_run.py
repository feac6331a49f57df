"""Record a gpu_run.py run in the docs: copy its results (never the weights) and print its figures.

    python benchmarks/record_gpu_run.py OUT docs/results/NAME        # OUT: what gpu_run.py --out wrote
    python benchmarks/record_gpu_run.py OUT docs/results/NAME --markdown summary.md

Copies results.json, metrics.jsonl, step-profile.json and log.txt (those present) from OUT into
the destination folder, and prints a Markdown summary for docs/benchmarks.md: the machine and
versions, the command, the step profile, the ladder, the floor, the pretraining's kNN curve, the
probes and the targets. It reads older results.json files too (keys missing are left out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

RECORDED = ("results.json", "metrics.jsonl", "step-profile.json", "log.txt")


def copy_results(out: Path, dest: Path) -> list[str]:
    """Copy the run's result files (never its weights) from `out` into `dest`; return their names."""
    if not (out / "results.json").is_file():
        raise FileNotFoundError(f"no results.json in {str(out)!r}: pass the folder gpu_run.py --out wrote")
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in RECORDED:
        if (out / name).is_file():
            shutil.copyfile(out / name, dest / name)
            copied.append(name)
    return copied


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _num(value: Any, digits: int = 2) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else "-"


def machine_lines(r: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{name} {r[key]}" for name, key in (("Python", "python"), ("torch", "torch"),
                         ("torchvision", "torchvision"), ("CUDA", "cuda"), ("cuDNN", "cudnn")) if r.get(key))
    return [f"{r.get('gpu') or r.get('device')}, {r.get('cpu_count', '?')} CPU cores; {versions}; "
            f"{r.get('date', '')}; status {r.get('status')}, {_num(r.get('elapsed_s'), 0)} s", "",
            f"    {r.get('command', '')}", ""]


def profile_lines(r: dict[str, Any]) -> list[str]:
    profile = r.get("step_profile", {})
    if not profile.get("ms"):
        return []
    batches = list(profile["ms"])
    names = list(profile["ms"][batches[0]])
    rows = [[name] + [_num(profile["ms"][b].get(name)) for b in batches]
            + [profile.get("aten_calls", {}).get(name) or "-"] for name in names]
    check = profile.get("graph_check", {})
    return ["ms per step:", ""] + _table(["part"] + [f"batch {b}" for b in batches] + ["aten calls"], rows) + [
        "", f"graphed step = eager step: {check.get('passed')} "
            f"(difference / update {_num(check.get('weight_difference_over_update'), 4)})", ""]


def ladder_lines(r: dict[str, Any]) -> list[str]:
    rows = r.get("ladder", {}).get("rows", [])
    if not rows:
        return []
    return _table(["row", "images/s", "s per 50,000", "x blog (2 workers)"],
                  [[row["name"], _num(row["images_per_s"], 0), _num(row["epoch_s"]), _num(row.get("speedup_vs_blog"), 1)]
                   for row in rows]) + [""]


def run_lines(r: dict[str, Any]) -> list[str]:
    run, floor, lines = r.get("pretrain", {}), r.get("floor", {}), []
    if floor.get("floor_epoch_s"):
        rate = floor.get("matmul_flops_per_s")
        lines.append(f"FLOP floor: {_num(floor.get('flops_per_image_step'), 0)} FLOP per image pair step, "
                     f"{_num(rate / 1e12 if rate else None, 1)} TFLOP/s: {_num(floor['floor_epoch_s'])} s per epoch")
    if run.get("epochs_done"):
        curve = ", ".join(f"{p['epoch']}: {_num(p['knn_top1'], 1)} / {_num(p.get('knn_top1@20'), 1)}"
                          for p in run.get("knn", []))
        lines.append(f"pretraining: {run['epochs_done']} epochs, {run.get('steps')} steps, epoch "
                     f"{_num(run.get('epoch_s'))} s, tricks {run.get('tricks')}; kNN k=200 / k=20: {curve}")
    for protocol, probe in r.get("probes", {}).items():
        lines.append(f"probe {protocol}: " + (f"top-1 {_num(probe['top1'])}%, top-5 {_num(probe.get('top5'))}% "
                                            f"({_num(probe.get('seconds'), 1)} s)" if "top1" in probe
                                            else str(probe.get("skipped") or probe.get("failed"))))
    for check in r.get("checks", []):
        state = {True: "PASS", False: "FAIL", None: "SKIP"}[check.get("passed")]
        lines.append(f"{state}: {check['name']} ({check.get('detail', '')})")
    return [f"- {line}" for line in lines]


def summary_markdown(results: dict[str, Any]) -> str:
    return "\n".join(machine_lines(results) + profile_lines(results) + ladder_lines(results)
                     + run_lines(results)) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder gpu_run.py --out wrote")
    parser.add_argument("dest", type=Path, help="where the results go, e.g. docs/results/gpu-h200-first")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    try:
        copied = copy_results(args.out, args.dest)
    except FileNotFoundError as error:
        raise SystemExit(f"record_gpu_run: {error}") from None
    text = summary_markdown(json.loads((args.out / "results.json").read_text()))
    if args.markdown:
        args.markdown.write_text(text)
    sys.stdout.write(text)
    print(f"\ncopied {', '.join(copied)} to {args.dest}")
    return text


if __name__ == "__main__":
    main()
