"""Where the work runs: one device parser (CUDA, then Apple's MPS, then the CPU), the precision
tricks each device supports, and several processes (torchrun / DDP, as the official code).

Launch several processes with ``torchrun --nproc_per_node=N -m vicreg_lib pretrain ...``. Every
process runs the same loop on its slice of each global batch; the embeddings of all processes
are gathered before the loss, so the variance and covariance terms see the whole global batch.
Without torchrun's environment everything here is a single process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEVICE_CHOICES = "auto, cpu, mps, cuda or cuda:N"


def check_device_text(device: object) -> str:
    """Return ``device`` if it is a device spec this package understands, else raise ValueError."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise ValueError(f"unknown device {device!r}: use {DEVICE_CHOICES}")
    return device


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda, else mps, else cpu; any other spec as given, checked to exist."""
    text = check_device_text(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    resolved = torch.device(text)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r} was requested but CUDA is not available; use cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s) here; "
                             f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if resolved.type == "mps" and not mps_available():
        raise ValueError("device 'mps' was requested but this PyTorch has no MPS backend (Apple silicon "
                         "and macOS 12.3 or newer); use cpu or auto")
    return resolved


def precision_for(device: torch.device, amp: str = "auto", channels_last: str = "auto") -> tuple[bool, bool]:
    """(use bf16 autocast, use channels-last) on ``device``: "auto" turns both on for CUDA only
    (MPS's bf16 autocast is missing or partial across PyTorch versions, so it stays off there)."""
    use_amp = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    use_channels_last = channels_last == "on" or (channels_last == "auto" and device.type == "cuda")
    return use_amp, use_channels_last


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on an accelerator (a no-op on the CPU), so a timer reads real time."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# ----------------------------------------------------------------------------- several processes


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group (RANK / WORLD_SIZE / LOCAL_RANK): NCCL on CUDA (GPU LOCAL_RANK),
    gloo on the CPU; without them, one process on ``device``. Calling it again returns the same info."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(rank=0, world_size=1, local_rank=0, device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo", rank=rank,
                                world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, or when not running distributed: the process that writes files."""
    return get_world_size() == 1 or dist.get_rank() == 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x: (b, ...)`` of all W ranks -> ``(W * b, ...)``, differentiably (identity for one process).

    The all_gather's backward sums each slice's gradient over ranks, all of which compute the same
    loss L: rank r's ``x`` gets ``W * dL/dx_r``, and DDP's average over the W ranks cancels the W
    (as the official FullGatherLayer)."""
    if get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)
