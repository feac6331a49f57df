"""The one learning-rate schedule and LARS (with eta and clipping)."""

from __future__ import annotations

import pytest
import torch

from vicreg_lib.optim import LARS, build_optimizer, lr_at_step


def test_warmup_cosine_warms_up_then_decays_to_the_final_ratio():
    kwargs = dict(schedule="warmup_cosine", peak_lr=0.4, total_steps=100, warmup_steps=10, final_ratio=0.001)
    assert lr_at_step(0, **kwargs) == 0.0
    assert lr_at_step(5, **kwargs) == pytest.approx(0.2)
    assert lr_at_step(10, **kwargs) == pytest.approx(0.4)
    assert lr_at_step(55, **kwargs) == pytest.approx(0.4 * 0.5 + 0.4e-3 * 0.5)
    assert lr_at_step(100, **kwargs) == pytest.approx(0.4e-3)


def test_cosine_and_constant():
    assert lr_at_step(0, schedule="cosine", peak_lr=1.0, total_steps=10) == 1.0  # warmup_steps ignored
    assert lr_at_step(5, schedule="cosine", peak_lr=1.0, total_steps=10, warmup_steps=3) == pytest.approx(0.5)
    assert lr_at_step(10, schedule="cosine", peak_lr=1.0, total_steps=10) == pytest.approx(0.0)
    assert lr_at_step(77, schedule="constant", peak_lr=2e-4, total_steps=100, warmup_steps=10) == 2e-4
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        lr_at_step(0, schedule="step", peak_lr=1.0, total_steps=10)


def test_lars_step_follows_trust_ratio_and_skips_biases():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    weight.grad = torch.tensor([[0.0, 2.0]])
    bias.grad = torch.tensor([0.5])
    optimizer = LARS([weight, bias], lr=0.1, weight_decay=0.5, eta=0.001)
    optimizer.step()
    update = torch.tensor([[0.0, 2.0]]) + 0.5 * torch.tensor([[3.0, 4.0]])  # g + wd * w
    trust = 0.001 * 5.0 / update.norm()
    assert torch.allclose(weight, torch.tensor([[3.0, 4.0]]) - 0.1 * trust * update)
    assert torch.allclose(bias, torch.tensor([1.0 - 0.1 * 0.5]))  # plain momentum SGD, no decay


@pytest.mark.parametrize("clip", [False, True])
def test_lars_clip_caps_the_trust_ratio_at_one(clip):
    weight = torch.nn.Parameter(torch.tensor([[30.0, 40.0]]))  # ||w|| = 50: eta * 50 / ||g|| = 10 > 1
    weight.grad = torch.tensor([[0.0, 0.1]])
    optimizer = LARS([weight], lr=0.1, weight_decay=0.0, eta=0.02, clip=clip)
    optimizer.step()
    trust = 1.0 if clip else 0.02 * 50.0 / 0.1
    assert torch.allclose(weight, torch.tensor([[30.0, 40.0 - 0.1 * trust * 0.1]]))


def test_build_optimizer_passes_lars_settings():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, "lars", lr=0.3, weight_decay=1e-4, eta=0.02, clip=True)
    assert (optimizer.param_groups[0]["eta"], optimizer.param_groups[0]["clip"]) == (0.02, True)
    assert isinstance(build_optimizer(model, "adam", lr=1e-3, weight_decay=0.0), torch.optim.Adam)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, "sgd", lr=1.0, weight_decay=0.0)
