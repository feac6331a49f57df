"""Multi-process (torchrun / DDP) helpers, following the official VICReg code.

Launch with ``torchrun --nproc_per_node=N -m vicreg_lib pretrain ...``. Every process
runs the same training loop on its slice of each global batch; the embeddings of all
processes are gathered before the loss, so the variance and covariance terms see the
whole global batch, as they would on one big GPU.

Without the torchrun environment everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, on ``device``."""

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


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> cuda if available else cpu; anything else as given (checked to exist)."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available; use --device cpu or auto")
    return resolved


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's RANK / WORLD_SIZE / LOCAL_RANK.

    Uses NCCL on CUDA (each process on GPU ``LOCAL_RANK``) and gloo on CPU. Without
    those variables (or with WORLD_SIZE=1) this is a single process on ``device``.
    Calling it again after the group exists returns the same info.
    """
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
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def is_main_process() -> bool:
    """True on rank 0, or when not running distributed: the process that writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own slice.

    Forward: x (b, ...) on every rank -> [x_0, ..., x_{W-1}], one tensor per rank.
    Backward: every rank holds gradients for all W slices (the loss is computed on the
    gathered batch on every rank); summing them over ranks (all_reduce) and keeping
    slice ``rank`` gives the gradient of ``sum over ranks of loss`` w.r.t. this rank's x.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gathered = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, x.contiguous())
        return tuple(gathered)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        all_grads = torch.stack(grads)  # (W, b, ...)
        dist.all_reduce(all_grads)  # sum over ranks
        return all_grads[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x: (b, ...)`` from all ranks along dim 0 -> ``(W * b, ...)``, differentiably.

    Gradient convention (as the official FullGatherLayer): every rank computes the same
    loss L on the gathered batch, so the gradient reaching rank r's ``x`` is
    ``W * dL/dx_r``. DistributedDataParallel then *averages* parameter gradients over
    the W ranks, which cancels the factor W: the update equals one process computing L
    on the whole batch. Identity when not running distributed.
    """
    if get_world_size() == 1:
        return x
    return torch.cat(_GatherWithGrad.apply(x), dim=0)
