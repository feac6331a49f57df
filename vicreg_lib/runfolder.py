"""The files of a run folder: config.json, metrics.jsonl, checkpoint.pt, and the lock.

    out_dir/config.json     the full TrainConfig of the run
    out_dir/metrics.jsonl   one JSON object per epoch, appended as the run goes
    out_dir/checkpoint.pt   the latest checkpoint (checkpoint.py), replaced atomically
    out_dir/.lock           flock'ed while a run writes here: a second run into the folder is refused

Everything here is checked before any data is loaded or a model is built, so a bad
out_dir costs no time. A file of one of these names that vicreg_lib did not write (another
tool's config.json, say) is never replaced or deleted: the run is refused, naming it.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import torch

from .files import atomic_write, remove_stale_tmp

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = ".lock"
CONFIG_MARK_KEY, CONFIG_MARK = "_written_by", "vicreg_lib"  # tells our config.json from another tool's
LEGACY_CONFIG_KEYS = frozenset({"data", "out_dir", "epochs", "lam", "mu", "nu", "batch_size"})


class RunFolderError(ValueError):
    """An out_dir that cannot take this run; the message says why and what to do."""


def check_out_dir(out_dir: str | os.PathLike, resume: bool, overwrite: bool) -> Path:
    """Check that ``out_dir`` can hold this run, before anything expensive happens; returns it.

    Refused: a path that is a file or lies under a file, a folder that cannot be written,
    resume without a checkpoint, a new run (without overwrite) into a folder that holds
    a checkpoint or metrics of an earlier run, and a folder holding files that the run would
    replace but vicreg_lib did not write (``foreign_files``), named in the message. Nothing
    is removed here: temporary files of a killed save are cleared once the lock is held.
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
    foreign = foreign_files(out_dir, resume, overwrite)
    if foreign:
        raise RunFolderError(f"{str(out_dir)!r} holds {', '.join(foreign)}, which vicreg_lib did not write and "
                             f"would replace; they are left alone: move them away or choose another out_dir")
    return out_dir


def _config_is_ours(path: Path) -> bool:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stored, dict):
        return False
    # earlier versions wrote no mark: their config.json holds TrainConfig's own keys
    return stored.get(CONFIG_MARK_KEY) == CONFIG_MARK or LEGACY_CONFIG_KEYS <= stored.keys()


def _metrics_are_ours(path: Path) -> bool:
    try:
        with open(path, errors="replace") as handle:
            first = next((line for line in handle if line.strip()), "")
    except OSError:
        return False
    if not first:
        return True  # created, then the run stopped before its first record
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and "epoch" in record


def _checkpoint_is_ours(path: Path) -> bool:
    from .checkpoint import FORMAT

    try:  # mmap: only the small pickled index is read, not the tensors
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable file: it cannot be shown to be ours
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


def foreign_files(out_dir: Path, resume: bool, overwrite: bool) -> list[str]:
    """The files in out_dir that this run would replace or delete but vicreg_lib did not write.

    config.json is rewritten by every run; metrics.jsonl is rewritten on resume and deleted with
    overwrite; checkpoint.pt is deleted with overwrite (on resume it is read, and refused there
    when it is not a vicreg_lib checkpoint); a .lock is rewritten.
    """
    checks = [(CONFIG_NAME, _config_is_ours), (LOCK_NAME, _lock_is_ours)]
    if resume or overwrite:
        checks.append((METRICS_NAME, _metrics_are_ours))
    if overwrite:
        checks.append((CHECKPOINT_NAME, _checkpoint_is_ours))
    return [name for name, is_ours in checks if (out_dir / name).exists() and not is_ours(out_dir / name)]


def clear_run(out_dir: Path) -> None:
    """Start afresh: remove an earlier run's checkpoint and metrics (only with overwrite)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_NAME).unlink(missing_ok=True)
    (out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the lock

LOCK_MARK = "vicreg_lib run lock"
_HELD: set[Path] = set()  # lock files this process holds: flock alone would not say it is us


def _lock_is_ours(path: Path) -> bool:
    """Whether an existing .lock is one this package writes: empty (a crash right after creating
    it), a bare process id (earlier versions) or one that starts with LOCK_MARK."""
    try:
        with open(path, errors="replace") as handle:
            text = handle.read(200).strip()
    except FileNotFoundError:
        return True  # removed meanwhile by a run that ended: nothing of anyone else's is there
    except OSError:
        return False
    # a prefix of the mark too: a holder may be between truncating the file and writing it
    return not text or text.isdigit() or text.startswith(LOCK_MARK) or LOCK_MARK.startswith(text)


def _owner_text(path: Path) -> str:
    try:
        with open(path, errors="replace") as handle:
            pid = handle.read(200).split("pid", 1)[-1].split()[0]
    except (OSError, IndexError):
        return "another run"
    return f"another run (process {pid})" if pid.isdigit() else "another run"


class RunLock:
    """An OS lock (``fcntl.flock``) on ``out_dir/.lock``, held for the whole run.

    A second run into the folder, from another process or this one, is refused. A lock is
    stale exactly when it can be taken: the OS drops it when its process ends, however it
    ended (kill -9 included), so no process ids are guessed at. The file holds the owner's
    process id for the message only. A .lock that this package did not write is refused,
    never overwritten. Temporary files of interrupted saves are removed once the lock is held
    (earlier, they might be a live run's).
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self._fd: int | None = None
        self._key: Path | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = self.path.parent.resolve() / LOCK_NAME
        if key in _HELD:
            raise RunFolderError(f"this process is already running into {str(self.path.parent)!r}; wait for that "
                                 f"run to end, or choose another out_dir")
        for _ in range(10):  # retried only when a finishing run removed the file between open and flock
            fd = self._open_locked()
            if fd is not None:
                break
        else:
            raise RunFolderError(f"cannot take the lock {str(self.path)!r}; try again, or choose another out_dir")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{LOCK_MARK}\npid {os.getpid()}\n".encode())
            for name in (CHECKPOINT_NAME, METRICS_NAME, CONFIG_NAME):
                remove_stale_tmp(self.path.parent, name)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._key = fd, key
        _HELD.add(key)
        return self

    def _open_locked(self) -> int | None:
        """A descriptor of .lock holding the flock, or None when the file was replaced meanwhile."""
        if self.path.exists() and not _lock_is_ours(self.path):
            raise RunFolderError(f"{str(self.path)!r} was not written by vicreg_lib; it is left alone. Move it "
                                 f"away if it is not needed, or choose another out_dir")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(f"{_owner_text(self.path)} is writing into {str(self.path.parent)!r}; wait for it "
                                 f"to end, or choose another out_dir") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # locked a file that its owner removed on release: another may hold the new one
            os.close(fd)
            return None
        return fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held, so nobody locks a file about to vanish
        finally:
            os.close(self._fd)  # drops the flock
            _HELD.discard(self._key)
            self._fd = self._key = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ----------------------------------------------------------------------------- config.json, metrics.jsonl


def write_config(out_dir: Path, config: dict[str, Any]) -> None:
    text = json.dumps({**config, CONFIG_MARK_KEY: CONFIG_MARK}, indent=2) + "\n"
    atomic_write(out_dir / CONFIG_NAME, lambda handle: handle.write(text), mode="w")


def read_config(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The settings a run was started with (its config.json)."""
    path = Path(out_dir) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(out_dir)!r}; pass the out_dir of a pretraining run")
    stored = json.loads(path.read_text())
    if isinstance(stored, dict):
        stored.pop(CONFIG_MARK_KEY, None)  # the settings only: TrainConfig(**read_config(folder)) works
    return stored


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
