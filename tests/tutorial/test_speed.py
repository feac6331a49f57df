"""tutorial.speed's step breakdown and the stored GPU step profile."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vicreg_lib.augment import BatchAugment
from vicreg_lib.loss import VICRegLoss
from vicreg_lib.model import build_model
from vicreg_lib.optim import build_optimizer
from vicreg_lib.tutorial import speed
from vicreg_lib.tutorial.speed import BREAKDOWN_PARTS, GPU_STEP_PROFILE, gpu_step_profile, step_breakdown

CHECKOUT = Path(__file__).resolve().parents[2]


def _images(n: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


class FakeClock:
    """Stands in for time.perf_counter: only the parts below advance it, each by its own amount."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_each_part_of_the_step_is_charged_its_own_time(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(speed, "time", SimpleNamespace(perf_counter=clock))
    seconds = dict(zip(BREAKDOWN_PARTS, (0.001, 0.002, 0.003, 0.004, 0.005)))

    class Augment(nn.Module):
        def forward(self, images, generator=None):
            clock.advance(seconds["augment"])
            views = images.float()
            return views, views + 1

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))

        def forward(self, view1, view2):
            clock.advance(seconds["forward"])
            z1, z2 = view1.mean(dim=(2, 3)) * self.weight, view2.mean(dim=(2, 3)) * self.weight  # (b, 3)
            z1.register_hook(lambda grad: clock.advance(seconds["backward"]))
            return z1, z2

    class Loss(nn.Module):
        def forward(self, z1, z2):
            clock.advance(seconds["loss"])
            return VICRegLoss()(z1, z2)

    model = Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    original_step = optimizer.step
    monkeypatch.setattr(optimizer, "step", lambda: (clock.advance(seconds["optimizer step"]), original_step()))
    parts = step_breakdown(model, Loss(), optimizer, Augment(), _images(), batch_size=4, steps=3, warmup=1)
    assert list(parts) == list(BREAKDOWN_PARTS)
    for part in BREAKDOWN_PARTS:
        assert parts[part] == pytest.approx(seconds[part] * 1000)
    assert clock.now == pytest.approx(4 * sum(seconds.values()))  # the warm-up step ran too, untimed


def test_a_real_step_is_broken_down_and_trains_the_model():
    torch.manual_seed(0)
    model = build_model(width=4, projector="32-32-32")
    optimizer = build_optimizer(model, "lars", 0.3, 1e-4)
    before = [p.detach().clone() for p in model.parameters()]
    parts = step_breakdown(model, VICRegLoss(mu=50.0), optimizer, BatchAugment("fast"), _images(), batch_size=8,
                           steps=2)
    assert set(parts) == set(BREAKDOWN_PARTS) and all(ms > 0 for ms in parts.values())
    assert any(not torch.equal(old, new) for old, new in zip(before, model.parameters()))


@pytest.mark.parametrize("images, batch_size, steps", [
    (_images().float(), 4, 1), (_images()[:, :1], 4, 1), (_images(), 17, 1), (_images(), 4, 0)])
def test_bad_arguments_are_refused_with_what_to_pass(images, batch_size, steps):
    with pytest.raises(ValueError, match="must be uint8|need 2 <= batch_size"):
        step_breakdown(nn.Identity(), VICRegLoss(), None, None, images, batch_size=batch_size, steps=steps)


def test_the_stored_gpu_profile_is_read_from_the_checkout():
    stored = json.loads((CHECKOUT / GPU_STEP_PROFILE).read_text())["parts"]["256"]
    profile = gpu_step_profile(CHECKOUT)
    assert profile["batch_size"] == 256 and "H200" in profile["device"]
    assert profile["augment"] == stored["augment"]["ms"]
    assert profile["forward+loss+backward"] == stored["fwd_bwd_bf16"]["ms"]
    assert profile["graphed step"] == stored["graphed_step"]["ms"] < profile["eager step"]


def test_the_gpu_profile_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="settings.checkout"):
        gpu_step_profile(tmp_path)
    with pytest.raises(ValueError, match="batch sizes"):
        gpu_step_profile(CHECKOUT, batch_size=3)
