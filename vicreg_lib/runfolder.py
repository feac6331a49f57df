"""The files of a run folder: config.json, metrics.jsonl, checkpoint.pt, and the lock.

    out_dir/config.json     the full TrainConfig of the run
    out_dir/metrics.jsonl   one JSON object per epoch, appended as the run goes
    out_dir/checkpoint.pt   the latest checkpoint (checkpoint.py), replaced atomically
    out_dir/.lock           held while a run writes here: a second run into the folder is refused

Everything here is checked before any data is loaded or a model is built, so a bad
out_dir costs no time.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from .files import atomic_write, remove_stale_tmp

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = ".lock"


class RunFolderError(ValueError):
    """An out_dir that cannot take this run; the message says why and what to do."""


def check_out_dir(out_dir: str | os.PathLike, resume: bool, overwrite: bool) -> Path:
    """Check that ``out_dir`` can hold this run, before anything expensive happens; returns it.

    Refused: a path that is a file or lies under a file, a folder that cannot be written,
    resume without a checkpoint, and a new run (without overwrite) into a folder that holds
    a checkpoint or metrics of an earlier run. Temporary files that a killed save left are
    removed.
    """
    out_dir = Path(out_dir)
    for parent in [out_dir, *out_dir.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == out_dir else f"lies under the file {str(parent)!r}"
            raise RunFolderError(f"out_dir {str(out_dir)!r} {where}; choose a folder path for the run")
        if parent.exists():
            if not os.access(parent, os.W_OK | os.X_OK):
                raise RunFolderError(f"cannot write into {str(parent)!r} (permission denied); choose an out_dir "
                                     f"you can write to")
            break
    checkpoint, metrics = out_dir / CHECKPOINT_NAME, out_dir / METRICS_NAME
    if resume and not checkpoint.exists():
        raise RunFolderError(f"nothing to resume: {str(checkpoint)!r} does not exist; drop --resume "
                             f"(resume=True) to start a new run there")
    if not resume and not overwrite and (checkpoint.exists() or metrics.exists()):
        held = CHECKPOINT_NAME if checkpoint.exists() else METRICS_NAME
        raise RunFolderError(f"{str(out_dir)!r} already holds a run ({held}); continue it with --resume "
                             f"(resume=True), start afresh with --overwrite (overwrite=True), or choose "
                             f"another out_dir")
    remove_stale_tmp(out_dir, CHECKPOINT_NAME)
    remove_stale_tmp(out_dir, METRICS_NAME)
    return out_dir


def clear_run(out_dir: Path) -> None:
    """Start afresh: remove an earlier run's checkpoint and metrics (only with overwrite)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_NAME).unlink(missing_ok=True)
    (out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM  # alive, but someone else's
    return True


class RunLock:
    """``out_dir/.lock`` holding this process's id while a run writes into the folder.

    A lock whose process is gone (a crashed or killed run) is taken over, so it never
    stays stuck; a live one makes ``acquire`` raise RunFolderError.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner != os.getpid() and _pid_alive(owner):
                    raise RunFolderError(f"another run (process {owner}) is writing into {str(self.path.parent)!r}; "
                                         f"wait for it to end, or choose another out_dir") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            self.held = True
            return self
        raise RunFolderError(f"cannot take the lock {str(self.path)!r}; remove it if no run is using the folder")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or -1)
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ----------------------------------------------------------------------------- config.json, metrics.jsonl


def write_config(out_dir: Path, config: dict[str, Any]) -> None:
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(out_dir / CONFIG_NAME, lambda handle: handle.write(text), mode="w")


def read_config(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The settings a run was started with (its config.json)."""
    path = Path(out_dir) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(out_dir)!r}; pass the out_dir of a pretraining run")
    return json.loads(path.read_text())


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a run, oldest first; a half-written last line is skipped.

    Safe to call while the run is going (live plots). An existing out_dir without
    metrics yet gives [].
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"no run folder {str(out_dir)!r}; pass the out_dir of a pretraining run")
    path = out_dir / METRICS_NAME
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if index == len(lines) - 1:  # the writer is mid-line
                break
            raise ValueError(f"{str(path)!r} line {index + 1} is not JSON; the file is damaged") from None
    return records


def append_metrics(out_dir: Path, record: dict[str, Any]) -> None:
    with open(out_dir / METRICS_NAME, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def rewrite_metrics(out_dir: Path, records: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(record) + "\n" for record in records)
    atomic_write(out_dir / METRICS_NAME, lambda handle: handle.write(text), mode="w")
