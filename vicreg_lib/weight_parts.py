"""A model's weights as a few small files: bf16, split into parts of at most a given size.

A GPU machine may hand back only a few files of limited size, so benchmarks/gpu_run.py
stores the trained VICReg model (encoder + projector) this way and the CPU joins it again:

    manifest = save_weight_parts(model, "out", max_part_bytes=15 * 2**20)   # out/model-bf16.part1of3.pt ...
    model = load_model_from_parts("out", sha256=manifest["sha256"])        # float32 VICReg, eval mode
    state = load_weight_parts("out")                                        # {"arch", "state_dict", ...}

The parts are the bytes of one ``torch.save`` of ``{"format", "arch", "dtype", "state_dict"}``
cut in order; floating tensors are stored in bf16 (half the bytes of float32; loading into a
float32 model converts them back), integer buffers (BatchNorm's step counts) as they are.
The names ``PREFIX.partIofN.pt`` say how many parts there are, so a missing one is noticed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import check_weights, nonfinite_tensors

FORMAT = "vicreg-weight-parts/1"
DEFAULT_PREFIX = "model-bf16"
DEFAULT_MAX_PART_BYTES = 15 * 2**20  # 15 MiB


def _part_name(prefix: str, index: int, count: int) -> str:
    return f"{prefix}.part{index}of{count}.pt"


def save_weight_parts(model: nn.Module, folder: str | os.PathLike, prefix: str = DEFAULT_PREFIX,
                      max_part_bytes: int = DEFAULT_MAX_PART_BYTES, dtype: torch.dtype = torch.bfloat16,
                      arch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `model`'s state dict (floating tensors in `dtype`) as parts of <= max_part_bytes.

    arch: build_model's keyword arguments (default: ``model.arch``, which build_model sets), so that
    ``load_model_from_parts`` can rebuild the network. Returns the manifest: {"files" (names, in
    order), "bytes", "sha256" (of the joined bytes), "dtype", "arch", "max_part_bytes"}.
    """
    if max_part_bytes < 1:
        raise ValueError(f"max_part_bytes must be >= 1, got {max_part_bytes}")
    arch = dict(arch if arch is not None else getattr(model, "arch", None) or {})
    state = {name: tensor.detach().to("cpu", dtype) if tensor.is_floating_point() else tensor.detach().cpu()
             for name, tensor in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "arch": arch, "dtype": str(dtype), "state_dict": state}, buffer)
    blob = buffer.getvalue()
    count = max(1, -(-len(blob) // max_part_bytes))  # ceil
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{prefix}.part*of*.pt"):  # parts of an earlier save would not match
        stale.unlink()
    files = []
    for index in range(count):
        name = _part_name(prefix, index + 1, count)
        (folder / name).write_bytes(blob[index * max_part_bytes:(index + 1) * max_part_bytes])
        files.append(name)
    return {"files": files, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), "dtype": str(dtype),
            "arch": arch, "max_part_bytes": max_part_bytes}


def _part_files(folder: Path, prefix: str) -> list[Path]:
    """The parts PREFIX.part1ofN.pt .. PREFIX.partNofN.pt, all present, in order."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.part(\d+)of(\d+)\.pt$")
    found = {}
    for path in folder.iterdir() if folder.is_dir() else ():
        match = pattern.match(path.name)
        if match:
            found[(int(match.group(1)), int(match.group(2)))] = path
    counts = {count for _, count in found}
    if not found:
        raise FileNotFoundError(f"no weight parts {prefix}.part*of*.pt in {str(folder)!r}; pass the folder "
                                f"save_weight_parts (benchmarks/gpu_run.py --out) wrote")
    if len(counts) > 1:
        raise ValueError(f"{str(folder)!r} holds parts of different saves ({sorted(counts)} parts); "
                         f"keep the files of one save only")
    count = counts.pop()
    missing = [index for index in range(1, count + 1) if (index, count) not in found]
    if missing:
        raise FileNotFoundError(f"weight parts {missing} of {count} are missing in {str(folder)!r} "
                                f"({prefix}.partIof{count}.pt); copy every part")
    return [found[(index, count)] for index in range(1, count + 1)]


def load_weight_parts(folder: str | os.PathLike, prefix: str = DEFAULT_PREFIX,
                      sha256: str | None = None) -> dict[str, Any]:
    """Join the parts in `folder` and load them: {"format", "arch", "dtype", "state_dict"}.

    sha256: the manifest's checksum; when given, joined bytes that differ raise ValueError, as do
    weights holding NaN or inf.
    """
    blob = b"".join(path.read_bytes() for path in _part_files(Path(folder), prefix))
    if sha256 is not None and hashlib.sha256(blob).hexdigest() != sha256:
        raise ValueError(f"the weight parts in {str(folder)!r} do not join into the saved file (sha256 "
                         f"{hashlib.sha256(blob).hexdigest()[:12]}..., expected {sha256[:12]}...); a part is "
                         f"damaged or from another run: copy them again")
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(folder)!r}: the joined parts are not a {FORMAT} file")
    if not isinstance(state.get("state_dict"), dict) or not isinstance(state.get("arch"), dict):
        raise ValueError(f"{str(folder)!r}: the joined parts hold no state_dict and arch dicts; save them again "
                         f"with save_weight_parts")
    bad = nonfinite_tensors(state["state_dict"])
    if bad:
        raise ValueError(f"the weight parts in {str(folder)!r} hold NaN or inf in {len(bad)} tensor(s) "
                         f"({', '.join(bad[:5])}): the run diverged; use weights saved before it did")
    return state


def load_model_from_parts(folder: str | os.PathLike, prefix: str = DEFAULT_PREFIX, sha256: str | None = None,
                          dtype: torch.dtype = torch.float32) -> nn.Module:
    """The VICReg model rebuilt from its parts (build_model(**arch)), weights in `dtype`, eval mode.
    Its encoder is ``model.encoder``."""
    from .model import build_model

    state = load_weight_parts(folder, prefix, sha256)
    if not state["arch"]:
        raise ValueError(f"{str(folder)!r}: the parts store no arch; load them with load_weight_parts and "
                         f"build the network yourself")
    check_weights(state["arch"], state["state_dict"], f"the weight parts in {str(folder)!r}")  # before building
    model = build_model(**state["arch"])
    model.load_state_dict(state["state_dict"], strict=True)  # bf16 -> the model's float32
    return model.to(dtype).eval()
