"""gather_with_grad across 2 CPU processes (gloo) equals one process on the whole batch.

The official scheme: every rank computes the VICReg loss L on the gathered global batch.
The gather's backward sums the W ranks' (identical) gradients of each slice, so the raw
gradient on rank r is W * (gradient of L through rank r's slice); DDP averages over the
W ranks, so the averaged gradient is exactly the one-process gradient of L.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vicreg_lib.hardware import gather_with_grad, get_world_size, init_distributed, is_main_process
from vicreg_lib.loss import vicreg_loss

WORLD_SIZE = 2
BATCH, IN_DIM, OUT_DIM = 8, 5, 6  # global batch 8: 4 rows per rank


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 'views' (BATCH, IN_DIM), the same on every rank."""
    generator = torch.Generator().manual_seed(0)
    x1 = torch.randn(BATCH, IN_DIM, generator=generator)
    return x1, x1 + 0.3 * torch.randn(BATCH, IN_DIM, generator=generator)


def _linear() -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(IN_DIM, OUT_DIM)


def _worker(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        x1, x2 = _data()
        local = slice(rank * BATCH // WORLD_SIZE, (rank + 1) * BATCH // WORLD_SIZE)

        # one process, whole batch: the reference loss and gradient
        reference = _linear()
        expected = vicreg_loss(reference(x1), reference(x2))
        expected.total.backward()

        # forward of the gather is a plain concatenation in rank order
        assert torch.equal(gather_with_grad(x1[local]), x1)

        # raw: each rank sees W times the gradient through its own slice; the mean over ranks is the reference
        raw = _linear()
        loss = vicreg_loss(gather_with_grad(raw(x1[local])), gather_with_grad(raw(x2[local])))
        loss.total.backward()
        assert torch.allclose(loss.total, expected.total, atol=1e-6)
        for param, ref in zip(raw.parameters(), reference.parameters()):
            mean_grad = param.grad.clone()
            dist.all_reduce(mean_grad)
            mean_grad /= WORLD_SIZE
            assert torch.allclose(mean_grad, ref.grad, atol=1e-6), (rank, mean_grad, ref.grad)
            assert not torch.allclose(param.grad, ref.grad, atol=1e-6)  # one rank alone is not the answer

        # DistributedDataParallel does that averaging: its gradients equal the reference on every rank
        ddp = torch.nn.parallel.DistributedDataParallel(_linear())
        loss = vicreg_loss(gather_with_grad(ddp(x1[local])), gather_with_grad(ddp(x2[local])))
        loss.total.backward()
        for param, ref in zip(ddp.module.parameters(), reference.parameters()):
            assert torch.allclose(param.grad, ref.grad, atol=1e-6), (rank, param.grad, ref.grad)
        assert get_world_size() == WORLD_SIZE and is_main_process() == (rank == 0)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_gathered_loss_and_gradients_match_one_process():
    # fork: the children reuse this process's imports (spawn would import torch again, slowly)
    mp.start_processes(_worker, args=(_free_port(),), nprocs=WORLD_SIZE, join=True, start_method="fork")


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.device) == (0, 1, True, torch.device("cpu"))
    assert is_main_process()
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


def test_unavailable_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        init_distributed("cuda")
