"""Run a long pretraining in the background and watch it from a notebook.

    command = pretrain_command(config)                  # ["python", "-m", "vicreg_lib", "pretrain", ...]
    process = launch(command, log_path)                 # detached: survives a kernel restart
    records = watch_run(out_dir, process, total_epochs)  # live plots; only reads out_dir/metrics.jsonl
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm  # text, not a widget: a saved notebook keeps the bar's last state

from ..config import TrainConfig
from ..runstate import read_metrics

__all__ = ["pretrain_command", "launch", "watch_run"]


def pretrain_command(config: TrainConfig, python: str | None = None, **changes: Any) -> list[str]:
    """The command line of `config` with `changes` (e.g. resume=True): a --flag per non-default field."""
    config = dataclasses.replace(config, **changes)
    command = [python or sys.executable, "-m", "vicreg_lib", "pretrain"]
    for config_field in dataclasses.fields(TrainConfig):
        value = getattr(config, config_field.name)
        if value == config_field.default:
            continue
        flag = "--" + config_field.name.replace("_", "-")
        if isinstance(value, bool):
            command.append(flag if value else "--no-" + flag[2:])
        else:
            command += [flag, "none" if value is None else str(value)]
    return command


def launch(command: Sequence[str], log_path: str | Path, cwd: str | Path | None = None) -> subprocess.Popen:
    """Start `command` in its own session (a kernel restart does not stop it), output appended to log_path."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)


def _status(records: Sequence[dict], total_epochs: int | None, elapsed_s: float) -> str:
    done = max((r["epoch"] for r in records), default=0)
    trained = [r for r in records if "epoch_time_s" in r]
    line = f"epoch {done}" + (f"/{total_epochs}" if total_epochs else "") + f", {elapsed_s / 60:.1f} min watched"
    if trained and total_epochs:
        per_epoch = sum(r["epoch_time_s"] for r in trained) / len(trained)
        line += f", ~{per_epoch:.0f} s/epoch, ~{per_epoch * (total_epochs - done) / 60:.0f} min to go"
    return line


def watch_run(out_dir: str | Path, process: subprocess.Popen | None = None, total_epochs: int | None = None,
              every_s: float = 10.0, timeout_s: float | None = None,
              log_path: str | Path | None = None) -> list[dict]:
    """Redraw out_dir/metrics.jsonl every `every_s` s until `process` exits (RuntimeError if it failed)."""
    from .plotting import LiveMetricsFigure

    out_dir = Path(out_dir)
    start = time.monotonic()
    live = LiveMetricsFigure(total_epochs)
    bar = tqdm(total=total_epochs, desc="epochs", unit="epoch")
    records: list[dict] = []
    try:  # an interrupted watch still closes the bar and the figure (the run goes on)
        while True:
            finished = process is None or process.poll() is not None
            records = read_metrics(out_dir) if out_dir.is_dir() else []
            bar.update(max((r["epoch"] for r in records), default=0) - bar.n)
            elapsed = time.monotonic() - start
            live.update(records, title=_status(records, total_epochs, elapsed))
            if finished or (timeout_s is not None and elapsed >= timeout_s):
                break
            time.sleep(every_s)
    finally:
        bar.close()
        live.close()
    if process is not None and process.poll() not in (None, 0):
        tail = ""
        if log_path is not None and Path(log_path).exists():
            tail = "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"the pretraining process exited with code {process.returncode}; "
                           f"the end of its log:\n{tail}")
    return records
