"""Writing files so that a crash never leaves half of one: ``atomic_write``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, fsync, then os.replace onto
    ``path``: a reader sees the old file or the new one, never half of one, even after a crash.

    A failed write (a full disk, Ctrl-C) removes the temporary file and leaves ``path`` as it
    was. The file gets the usual permissions (0666 less the umask), not mkstemp's 0600.
    Temporary files are named ``.<name>.<random>.tmp``; ``remove_stale_tmp`` clears those a
    kill -9 left behind. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (not possible on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def remove_stale_tmp(folder: str | os.PathLike, name: str) -> list[Path]:
    """Delete the temporary files that an interrupted ``atomic_write(folder / name)`` left; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(folder.glob(f".{name}.*{TMP_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
