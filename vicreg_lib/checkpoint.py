"""Checkpoints: written atomically, loaded with clear errors.

A checkpoint is one dict saved with ``torch.save``:

    format, format_version   identify the file as ours
    arch                     backbone, width, projector spec, representation / embedding dims
    config                   the full TrainConfig as a plain dict
    model                    the VICReg state dict (no DDP / torch.compile prefixes)
    optimizer, schedule      optimizer state dict; the learning-rate schedule's settings
    epoch, step              completed epochs, optimizer steps taken
    rng                      torch CPU (+ CUDA), numpy, python random, and the training
                             generators' states, so a resumed run continues bit for bit

Only tensors, numbers, strings, lists and dicts are stored, so the file loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs pickled code.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch

FORMAT = "vicreg_lib.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


# ----------------------------------------------------------------------------- random states


def capture_rng_state() -> dict[str, Any]:
    """The global random states (torch CPU and CUDA, numpy, python) as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


# ----------------------------------------------------------------------------- save


def cpu_copy(obj: Any) -> Any:
    """A deep copy of nested dicts / lists of tensors with every tensor cloned to the CPU.

    State dicts hold references to live tensors; a snapshot must not change when training goes on.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(value) for value in obj)
    return obj


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, fsync, then os.replace onto
    ``path``: a reader sees the old file or the new one, never half of one, even after a crash.
    A failed write removes the temporary file and leaves ``path`` as it was. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (``atomic_write``), with ``format`` and
    ``format_version`` added. Returns ``path``."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    return atomic_write(path, lambda handle: torch.save(state, handle))


# ----------------------------------------------------------------------------- load


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``.

    Raises CheckpointError for a missing file, a corrupt or truncated file, or a file
    that is not a vicreg_lib checkpoint (or is from a newer format version).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {str(path)!r}; pass the checkpoint.pt inside a run's out_dir "
            f"(pretraining writes <out_dir>/checkpoint.pt)"
        )
    if path.is_dir():
        hint = path / "checkpoint.pt"
        raise CheckpointError(f"{str(path)!r} is a folder, not a checkpoint file; did you mean {str(hint)!r}?")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # zip errors, unpickling errors, EOF: all mean the same here
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: the file is corrupt or truncated, or not a torch file "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            f"use an intact checkpoint or pretrain again"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is a torch file but not a vicreg_lib checkpoint (no format={FORMAT!r} entry); "
            f"pass a checkpoint.pt written by vicreg_lib's pretrain"
        )
    version = state.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {version!r}, this vicreg_lib reads up to "
            f"{FORMAT_VERSION}; upgrade vicreg_lib"
        )
    missing = [key for key in ("arch", "config", "model", "epoch", "step") if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks entries {missing}; it is incomplete, pretrain again")
    return state


def load_pretrained(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the pretrained VICReg model from a checkpoint: returns ``(model, config)``.

    The architecture comes from the stored config (width, projector spec); the weights
    must fit it exactly, otherwise CheckpointError says which tensors do not. The model
    is returned in eval mode.
    """
    from .train import TrainConfig, build_model  # train imports this module

    state = load_checkpoint(path, map_location=map_location)
    try:
        config = TrainConfig(**{**state["config"], "resume": False})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} holds a config this version cannot use: {error}") from error
    model = build_model(config)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: its weights do not fit the architecture rebuilt from its config "
            f"(width={config.width}, projector={config.projector!r}); was the file edited or written by "
            f"other code? Details: {error}"
        ) from error
    model.to(map_location)
    model.eval()
    return model, config
