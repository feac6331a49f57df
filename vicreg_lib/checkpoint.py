"""Checkpoints: one file, written atomically, refused with a clear error when it cannot be used.

A checkpoint is one dict of plain data and tensors (its entries: docs/design.md, "checkpoint.pt"), so it
loads with ``torch.load(weights_only=True)`` and opening one never runs pickled code. A folder of
``PREFIX.partIofN.pt`` files (``benchmarks/gpu_run.py --split-weights-mib``) holds one file's bytes in order.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import resume_differences
from .runstate import CHECKPOINT_FORMAT as FORMAT
from .runstate import CHECKPOINT_NAME, atomic_write

FORMAT_VERSION = 2  # 2: arch is build_model's keyword arguments
WEIGHTS_FORMAT = "vicreg-weight-parts/1"  # the first GPU runs' bf16 weights: format, arch, dtype, state_dict
PART_PATTERN = re.compile(r"^(.+)\.part(\d+)of(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def capture_rng_state() -> dict[str, Any]:
    """The global random states (torch CPU and CUDA, numpy, python) as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [version, list(internal), gauss_next],
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
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def cpu_copy(obj: Any) -> Any:
    """Nested dicts / lists of tensors with every tensor on the CPU (a copy only where it was elsewhere)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(value) for value in obj)
    return obj


def nonfinite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """Names (dotted paths) of the floating-point tensors in nested dicts / lists that hold NaN or inf."""
    if isinstance(tree, torch.Tensor):
        return [prefix] if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return [name for key, value in items for name in nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))]


def _describe(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} tensor(s) hold NaN or inf: {', '.join(names[:limit])}{more}"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` (moved to the CPU, ``format`` added) to ``path`` atomically; returns ``path``. A model or
    optimizer with NaN or inf is refused (CheckpointError): a checkpoint on disk is one a run can continue from."""
    bad = nonfinite_tensors({"model": state.get("model"), "optimizer": state.get("optimizer")})
    if bad:
        raise CheckpointError(f"not saving {str(path)!r}: {_describe(bad)}")
    state = cpu_copy({"format": FORMAT, "format_version": FORMAT_VERSION, **state})
    return atomic_write(path, lambda handle: _torch_save(state, handle))


def _torch_save(state: dict[str, Any], handle) -> None:
    try:
        torch.save(state, handle)
    except RuntimeError as error:
        # torch's zip writer reports a short write (a full disk) as a RuntimeError, not the OSError callers expect
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise OSError(f"the write stopped short ({detail}); is the disk full?") from error


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    sha256: str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (its file, or a folder of its parts); weights-only parts
    load with an empty ``config``. CheckpointError for any file that cannot be used, or another ``sha256``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {str(path)!r}; pass the checkpoint.pt inside a run's out_dir "
                              f"(pretraining writes <out_dir>/{CHECKPOINT_NAME})")
    blob = _join_parts(path) if path.is_dir() else None
    if sha256 is not None:
        digest = hashlib.sha256(blob) if blob is not None else _file_digest(path)
        if digest.hexdigest() != sha256:
            raise CheckpointError(f"{str(path)!r} has sha256 {digest.hexdigest()[:12]}..., expected {sha256[:12]}...; "
                                  f"a file or part is damaged or from another run: copy it again")
    try:
        state = torch.load(io.BytesIO(blob) if blob is not None else path, map_location=map_location,
                           weights_only=True)
    except Exception as error:  # zip errors, unpickling errors, EOF: all mean the same here
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: the file is corrupt or truncated, or not a torch file "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            f"use an intact checkpoint or pretrain again") from error
    if isinstance(state, dict) and state.get("format") == WEIGHTS_FORMAT:  # weights only: no settings, no position
        state = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": state.get("arch"), "config": {},
                 "model": state.get("state_dict")}
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is a torch file but not a vicreg_lib checkpoint (no format={FORMAT!r} "
                              f"entry); pass a checkpoint.pt written by vicreg_lib's pretrain")
    version = state.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} has checkpoint format version {version!r}, this vicreg_lib reads up to "
                              f"{FORMAT_VERSION}; upgrade vicreg_lib")
    missing = [key for key in ("arch", "config", "model") if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks entries {missing}; it is incomplete, pretrain again")
    _check_entries(state, path)
    return state


def _file_digest(path: Path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest


def _join_parts(folder: Path) -> bytes:
    """The bytes of the file whose parts PREFIX.part1ofN.pt .. PREFIX.partNofN.pt the folder holds."""
    saves: dict[tuple[str, int], dict[int, Path]] = {}
    for path in folder.iterdir():
        match = PART_PATTERN.match(path.name)
        if match:
            saves.setdefault((match[1], int(match[3])), {})[int(match[2])] = path
    if not saves:
        raise CheckpointError(f"{str(folder)!r} is a folder, not a checkpoint file; did you mean "
                              f"{str(folder / CHECKPOINT_NAME)!r}? (A folder works when it holds a checkpoint's "
                              f"parts, PREFIX.partIofN.pt)")
    if len(saves) > 1:
        names = ", ".join(sorted(f"{prefix}.partIof{count}.pt" for prefix, count in saves))
        raise CheckpointError(f"{str(folder)!r} holds the parts of several files ({names}); keep one file's only")
    (prefix, count), parts = saves.popitem()
    missing = [index for index in range(1, count + 1) if index not in parts]
    if missing:
        raise CheckpointError(f"parts {missing} of {count} ({prefix}.partIof{count}.pt) are missing in "
                              f"{str(folder)!r}; copy every part")
    return b"".join(parts[index].read_bytes() for index in range(1, count + 1))


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _check_entries(state: dict[str, Any], path: Path) -> None:
    """The entries' types, so that a damaged or hand-made file is one clear error, not a traceback later."""
    wrong = [f"{key} is {_kind(state[key])}, expected {expected}" for key, kind, expected in (
        ("config", dict, "a dict of the run's settings"), ("arch", dict, "a dict of build_model's arguments"),
        ("model", dict, "a state dict of tensors")) if not isinstance(state[key], kind)]
    wrong += [f"{key} is {_kind(state[key])}, expected an integer >= 0" for key in ("epoch", "step") if key in state
              and (isinstance(state[key], bool) or not isinstance(state[key], int) or state[key] < 0)]
    if isinstance(state["model"], dict):
        odd = [str(key) for key, value in state["model"].items() if not isinstance(value, torch.Tensor)]
        if odd:
            wrong.append(f"model entries {odd[:3]} are not tensors")
    if wrong:
        raise CheckpointError(f"checkpoint {str(path)!r}: {'; '.join(wrong)}; it was not written by vicreg_lib's "
                              f"pretrain (or was edited): use one that was, or pretrain again")


def check_weights(arch: dict[str, Any], weights: dict[str, torch.Tensor], where: str) -> None:
    """Raise CheckpointError unless ``weights`` are finite and fit ``build_model(**arch)`` exactly (built on the
    meta device first: a small file naming a huge network is refused before gigabytes are initialised)."""
    from .model import build_model

    odd = [str(key) for key, value in weights.items() if not isinstance(value, torch.Tensor)]
    if odd:
        raise CheckpointError(f"{where}: weights {odd[:3]} are not tensors; was the file edited or written by "
                              f"other code?")
    bad = nonfinite_tensors(weights)
    if bad:
        raise CheckpointError(f"{where} is from a diverged run: {_describe(bad)}; use weights saved before it "
                              f"diverged, or pretrain again with a lower lr")
    try:
        with torch.device("meta"):
            expected = {key: tuple(value.shape) for key, value in build_model(**arch).state_dict().items()}
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:  # sizes too big even for shapes
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{where}: its architecture {arch} cannot be built ({detail}); was the file edited "
                              f"or written by other code?") from None
    stored = {key: tuple(value.shape) for key, value in weights.items()}
    problems = [f"missing {key}" for key in expected if key not in stored]
    problems += [f"unexpected {key}" for key in stored if key not in expected]
    problems += [f"{key} is {stored[key]}, the architecture needs {shape}" for key, shape in expected.items()
                 if key in stored and stored[key] != shape]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(f"{where}: its weights do not fit the architecture it names ({arch}): "
                              f"{'; '.join(problems[:3])}{more}; was the file edited or written by other code?")


def check_resumable(state: dict[str, Any], path: str | os.PathLike, config, data_fingerprint: str,
                    device_type: str) -> None:
    """Raise CheckpointError unless a run of ``config`` on ``device_type`` and ``data_fingerprint`` can resume
    ``state``: complete, finite (NaN trains NaN), only settings that may change changed, same data and device."""
    needed = ["optimizer", "rng"] + (["epoch_sums"] if state.get("epoch_step") else [])
    missing = [key for key in needed if not isinstance(state.get(key), (dict, torch.Tensor))]
    missing += [key for key in ("epoch", "step") if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}, which a resumed run needs; it "
                              f"can be evaluated but not resumed: start a new run (--overwrite) or another out_dir")
    bad = nonfinite_tensors({"model": state["model"], "optimizer": state["optimizer"]})
    if bad:
        raise CheckpointError(f"cannot resume {str(path)!r}: {_describe(bad)}; resume from an earlier "
                              f"checkpoint or start afresh (--overwrite) with a lower lr")
    check_weights(config.arch(), state["model"], f"checkpoint {str(path)!r}")
    differences = resume_differences(state["config"], config)
    if differences:
        raise CheckpointError(f"cannot resume {str(path)!r} with different settings ({'; '.join(differences)}); "
                              f"use the run's settings (its config.json) or a new out_dir")
    stored = state.get("data_fingerprint")
    if stored is not None and stored != data_fingerprint and not config.allow_data_change:
        raise CheckpointError(f"the training data of {config.data!r} differ from those {str(path)!r} was trained on "
                              f"(fingerprint {data_fingerprint}, checkpoint {stored}); resume on the same data, or "
                              f"pass --allow-data-change (allow_data_change=True) to continue on these")
    if state.get("device_type") != device_type:
        raise CheckpointError(f"{str(path)!r} was trained on {state.get('device_type')}; resume it on the same "
                              f"kind of device (--device {state.get('device_type')})")


def _arch(state: dict[str, Any]) -> dict[str, Any]:
    """build_model's keyword arguments; format 1 stored only the CIFAR backbone's width and projector."""
    arch = dict(state["arch"])
    if state.get("format_version") == 1:
        if "width" not in arch or "projector" not in arch:
            raise CheckpointError(f"a format-1 checkpoint's arch needs width and projector, got {arch}; pretrain again")
        return dict(backbone="cifar", width=arch["width"], projector=arch["projector"])
    return arch


def load_pretrained(path: str | os.PathLike, map_location: str | torch.device = "cpu", sha256: str | None = None):
    """``model, config = load_pretrained(path)``: the VICReg model (eval mode, float32) of a checkpoint or a folder
    of its parts, and the run's settings ({} for weights-only parts). Unfit or NaN weights: CheckpointError."""
    from .model import build_model

    state = load_checkpoint(path, map_location=map_location, sha256=sha256)
    check_weights(_arch(state), state["model"], f"checkpoint {str(path)!r}")
    try:
        model = build_model(**_arch(state))
        model.load_state_dict(state["model"], strict=True)
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r}: its weights do not fit the architecture it names "
                              f"({state['arch']}); was the file edited or written by other code? Details: {error}"
                              ) from error
    return model.to(map_location).eval(), dict(state["config"])
