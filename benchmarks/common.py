"""Shared helpers for the benchmark scripts: device names, timing, tables, PASS/FAIL checks, JSON.

Every script in benchmarks/ is plain Python (not a test): it prints a small table and
writes a JSON file. This module keeps the four things they all do in one place:

    device_name(device)            "Intel(R) Xeon(R) Processor (2 cores)" / "NVIDIA H100 80GB HBM3"
    time_call(fn, device, ...)     seconds per call, after warm-up, synchronising the GPU
    print_table(rows, columns)     a fixed-width table on stdout
    check(name, passed, detail)    a PASS/FAIL line, collected into the JSON
    write_json(path, payload)      payload + where/when/how it was measured, written atomically

Scripts are run from the repository root (`python benchmarks/x.py`); `import common`
works because Python puts the script's folder first on sys.path.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`: import this vicreg_lib
    sys.path.insert(1, str(REPO))
from vicreg_lib import hardware  # noqa: E402  (after the path above)
from vicreg_lib.hardware import synchronize  # noqa: E402, F401  (the scripts time with it)

RESULTS_DIR = REPO / "benchmarks" / "results"  # git-ignored
EPOCH_IMAGES = 50_000  # images in one CIFAR-10 training epoch


# ----------------------------------------------------------------------------- devices


def resolve_device(name: str) -> torch.device:
    """argparse type over the library's one device parser (auto, cpu, mps, cuda, cuda:N)."""
    try:
        return hardware.resolve_device(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def device_name(device: torch.device) -> str:
    """A human name for the device the numbers were measured on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({cpu_count()} cores, torch threads {torch.get_num_threads()})"


# ----------------------------------------------------------------------------- timing


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 1, repeats: int = 3) -> float:
    """Seconds per call of fn: `warmup` untimed calls, then the mean of `repeats` timed ones."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: time at least one call")
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


# ----------------------------------------------------------------------------- output


def format_value(value: Any) -> str:
    """Numbers with 3-4 significant digits, everything else as str."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        return f"{value:.3e}"
    return str(value)


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    """Print rows (dicts) as a fixed-width, pipe-separated table with the given columns."""
    cells = [[format_value(row.get(column, "")) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print(" | ".join(column.ljust(width) for column, width in zip(columns, widths)))
    print("-+-".join("-" * width for width in widths))
    for line in cells:
        print(" | ".join(cell.rjust(width) for cell, width in zip(line, widths)))
    sys.stdout.flush()


def check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    """Print one target check as a PASS/FAIL line and return it for the JSON."""
    print(f"{'PASS' if passed else 'FAIL'}: {name} ({detail})")
    return {"name": name, "passed": bool(passed), "detail": detail}


def skipped_check(name: str, reason: str) -> dict[str, Any]:
    """Print a target that cannot be checked in this run (e.g. a GPU target on a CPU)."""
    print(f"SKIP: {name} ({reason})")
    return {"name": name, "passed": None, "detail": reason}


def run_info(device: torch.device) -> dict[str, Any]:
    """Where, when and how a result was measured."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(arg) for arg in [Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity (a diverged loss, say) replaced by None: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write payload as indented JSON, atomically (temporary file + os.replace); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    os.replace(scratch, path)
    print(f"\nwrote {path}")
    return path


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, else one clear error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer; give a whole number >= 1")
    return value


def base_parser(description: str, default_json: str) -> argparse.ArgumentParser:
    """Options every benchmark takes: --device, --json, --smoke."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--device", default="auto", type=resolve_device, help="auto (cuda if available, else cpu), cpu, cuda, cuda:1"
    )
    parser.add_argument(
        "--json",
        default=str(RESULTS_DIR / default_json),
        help="where to write the results (default: %(default)s)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, a few seconds: checks the script runs"
    )
    return parser


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = a.double().sort().values, b.double().sort().values
    points = torch.cat((a, b)).unique()
    cdf_a = torch.searchsorted(a, points, right=True) / len(a)
    cdf_b = torch.searchsorted(b, points, right=True) / len(b)
    return (cdf_a - cdf_b).abs().max().item()
