"""A run's state on disk and its stopping: atomic files, the run folder (config.json, metrics.jsonl,
checkpoint.pt, .lock, STOP: docs/design.md), its lock, stop requests.

The folder is checked before any data is loaded; a file of these names that vicreg_lib did not write
(another tool's config.json) is never replaced or deleted: the run is refused, naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable

import torch

CONFIG_NAME, METRICS_NAME, CHECKPOINT_NAME, LOCK_NAME, STOP_NAME = (
    "config.json", "metrics.jsonl", "checkpoint.pt", ".lock", "STOP")
CHECKPOINT_FORMAT = "vicreg_lib.checkpoint"  # the "format" entry of every checkpoint this package writes
CONFIG_MARK_KEY, CONFIG_MARK = "_written_by", "vicreg_lib"  # tells our config.json from another tool's
LEGACY_CONFIG_KEYS = frozenset({"data", "out_dir", "epochs", "lam", "mu", "nu", "batch_size"})
LOCK_MARK, STOP_MARK = "vicreg_lib run lock", "vicreg_lib stop request"
TMP_SUFFIX = ".tmp"


class RunFolderError(ValueError):
    """An out_dir that cannot take this run; the message says why and what to do."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temporary ``.<name>.<random>.tmp`` beside ``path``, fsync, os.replace it onto
    ``path`` (a reader never sees half a file; a failed write leaves ``path`` as it was); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.umask(mask := os.umask(0))  # read the umask
        os.fchmod(fd, 0o666 & ~mask)  # not mkstemp's 0600
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def remove_stale_tmp(folder: str | os.PathLike, name: str) -> list[Path]:
    """Delete the temporary files that an interrupted ``atomic_write(folder / name)`` left; returns them."""
    folder = Path(folder)
    stale = sorted(folder.glob(f".{name}.*{TMP_SUFFIX}")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def check_out_dir(out_dir: str | os.PathLike, resume: bool, overwrite: bool) -> Path:
    """Check that ``out_dir`` can hold this run (writable, a checkpoint to resume, no earlier run unless
    overwrite, no foreign files), before anything expensive happens; returns it. Nothing is removed here."""
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


def _read_text(path: Path, limit: int = -1) -> str | None:
    try:
        with open(path, errors="replace") as handle:
            return handle.read(limit)
    except OSError:
        return None


def _config_is_ours(path: Path) -> bool:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    # earlier versions wrote no mark: their config.json holds TrainConfig's own keys
    return isinstance(stored, dict) and (stored.get(CONFIG_MARK_KEY) == CONFIG_MARK
                                         or LEGACY_CONFIG_KEYS <= stored.keys())


def _metrics_are_ours(path: Path) -> bool:
    text = _read_text(path)
    if text is None:
        return False
    first = next((line for line in text.splitlines() if line.strip()), "")
    if not first:
        return True  # created, then the run stopped before its first record
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and "epoch" in record


def _checkpoint_is_ours(path: Path) -> bool:
    try:  # mmap: only the small pickled index is read, not the tensors
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable file: it cannot be shown to be ours
        return False
    return isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT


def _marked_file_is_ours(path: Path, mark: str) -> bool:
    """A .lock or STOP of ours: empty (a crash right after creating it), a bare pid (old .lock) or marked."""
    if not path.exists():
        return True  # removed meanwhile by a run that ended: nothing of anyone else's is there
    text = _read_text(path, 200)
    if text is None:
        return False
    text = text.strip()
    # a prefix of the mark too: a holder may be between truncating the file and writing it
    return not text or text.isdigit() or text.startswith(mark) or mark.startswith(text)


def foreign_files(out_dir: Path, resume: bool, overwrite: bool) -> list[str]:
    """The files in out_dir that this run would replace or delete but vicreg_lib did not write (a checkpoint.pt
    is checked only with overwrite: on resume it is read, and refused there when it is not ours)."""
    checks = [(CONFIG_NAME, _config_is_ours), (LOCK_NAME, lambda path: _marked_file_is_ours(path, LOCK_MARK)),
              (STOP_NAME, lambda path: _marked_file_is_ours(path, STOP_MARK))]
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


_HELD: set[Path] = set()  # lock files this process holds: flock alone would not say it is us


class RunLock:
    """``with RunLock(out_dir):`` a ``fcntl.flock`` on out_dir/.lock (the OS drops it when its process ends,
    kill -9 included: no pids are guessed); once held, stale temporary files are removed (before, a live run's)."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self._fd: int | None = None
        self._key: Path | None = None

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
        if not _marked_file_is_ours(self.path, LOCK_MARK):
            raise RunFolderError(f"{str(self.path)!r} was not written by vicreg_lib; it is left alone. Move it "
                                 f"away if it is not needed, or choose another out_dir")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = (_read_text(self.path, 200) or "").split("pid", 1)[-1].split()
            owner = f"another run (process {pid[0]})" if pid and pid[0].isdigit() else "another run"
            raise RunFolderError(f"{owner} is writing into {str(self.path.parent)!r}; wait for it "
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


def write_config(out_dir: Path, config: dict[str, Any]) -> None:
    text = json.dumps({**config, CONFIG_MARK_KEY: CONFIG_MARK}, indent=2) + "\n"
    atomic_write(out_dir / CONFIG_NAME, lambda handle: handle.write(text), mode="w")


def read_config(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The settings a run was started with (its config.json), ready for ``TrainConfig(**...)``."""
    path = Path(out_dir) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(out_dir)!r}; pass the out_dir of a pretraining run")
    stored = json.loads(path.read_text())
    if isinstance(stored, dict):
        stored.pop(CONFIG_MARK_KEY, None)
    return stored


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a run, oldest first; safe while it runs (a half-written last line is skipped)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"no run folder {str(out_dir)!r}; pass the out_dir of a pretraining run")
    path = out_dir / METRICS_NAME
    lines = path.read_text().splitlines() if path.exists() else []
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


def request_stop(out_dir: str | os.PathLike) -> Path:
    """Ask the run writing into ``out_dir`` to save and stop, as Ctrl-C does, where signals cannot (Windows, a
    notebook): the loop looks for out_dir/STOP every ``log_every`` steps. Returns the STOP file."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"no run folder {str(out_dir)!r}; pass the out_dir of a running pretraining")
    return atomic_write(out_dir / STOP_NAME, lambda handle: handle.write(f"{STOP_MARK}\n"), mode="w")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or ``request_stop`` (signum SIGINT) stopped the run after its state was saved."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While active, SIGINT, SIGTERM and ``stop_file`` (out_dir/STOP in the main process, removed on entry and
    exit) stop the loop after the step; a 2nd Ctrl-C, or a signal before ``armed`` (nothing to save), at once."""

    def __init__(self, stop_file: Path | None = None) -> None:
        self.signum: int | None = None
        self.reason, self.armed, self.stop_file = "", False, stop_file
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def file_requested(self) -> bool:
        return self.stop_file is not None and self.stop_file.exists()

    def request(self, signum: int, reason: str) -> None:
        self.signum, self.reason = signum, reason

    def __enter__(self) -> StopSignals:
        self._remove_stop_file()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.armed:
            raise RunInterrupted(f"{signal.Signals(signum).name} before training began: nothing was saved", signum)
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.request(signum, signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._remove_stop_file()

    def _remove_stop_file(self) -> None:
        if self.stop_file is not None and _marked_file_is_ours(self.stop_file, STOP_MARK):
            self.stop_file.unlink(missing_ok=True)
