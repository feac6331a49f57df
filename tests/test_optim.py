"""The one learning-rate schedule and LARS (with eta and clipping)."""

from __future__ import annotations

import pytest
import torch

from support import AtenCalls
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


@pytest.mark.parametrize("clip", ["none", "trust"])
def test_lars_clip_caps_the_trust_ratio_at_one(clip):
    weight = torch.nn.Parameter(torch.tensor([[30.0, 40.0]]))  # ||w|| = 50: eta * 50 / ||g|| = 10 > 1
    weight.grad = torch.tensor([[0.0, 0.1]])
    optimizer = LARS([weight], lr=0.1, weight_decay=0.0, eta=0.02, clip=clip)
    optimizer.step()
    trust = 1.0 if clip == "trust" else 0.02 * 50.0 / 0.1
    assert torch.allclose(weight, torch.tensor([[30.0, 40.0 - 0.1 * trust * 0.1]]))


def reference_lars_step(params, momenta, lr, wd, eta, momentum, clip):
    """One step of each rule written tensor by tensor, as the official code and solo-learn's
    solo/utils/lars.py (commit 9187ea3) write it; biases and norms (1-d) get plain momentum SGD."""
    for p, m in zip(params, momenta):
        g = p.grad
        if p.ndim != 1:
            w_norm, g_norm = p.norm(), g.norm()
            if clip == "solo-learn":
                if w_norm != 0 and g_norm != 0:
                    rate = eta * w_norm / (g_norm + w_norm * wd + 1e-8)
                    rate = min(rate / lr, 1.0)
                    g = (g + wd * p) * rate
            else:
                g = g + wd * p
                d_norm = g.norm()
                trust = eta * w_norm / d_norm if w_norm > 0 and d_norm > 0 else torch.tensor(1.0)
                if clip == "trust":
                    trust = min(trust, 1.0)
                g = g * trust
        m.mul_(momentum).add_(g)
        p.data.add_(m, alpha=-lr)


def small_network():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 5), torch.nn.Linear(5, 2, bias=False))


@pytest.mark.parametrize("clip, eta, wd, lr", [("none", 0.001, 1e-6, 0.2), ("trust", 0.02, 1e-4, 0.3),
                                               ("solo-learn", 0.02, 1e-4, 0.3), ("solo-learn", 0.02, 1e-4, 1e-3)])
def test_multi_tensor_lars_equals_the_rule_written_tensor_by_tensor(clip, eta, wd, lr):
    ours, reference = small_network(), small_network()
    ours.load_state_dict(reference.state_dict())
    ours[3].weight.data.zero_()  # a zero weight: trust falls back to 1 (solo-learn: no decay, no scaling)
    reference[3].weight.data.zero_()
    optimizer = LARS(ours.parameters(), lr=lr, weight_decay=wd, eta=eta, clip=clip)
    momenta = [torch.zeros_like(p) for p in reference.parameters()]
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        for p, q in zip(ours.parameters(), reference.parameters()):
            grad = torch.randn(p.shape, generator=generator) * 0.1
            p.grad, q.grad = grad.clone(), grad.clone()
        ours[4].weight.grad.zero_()  # a zero gradient too
        reference[4].weight.grad.zero_()
        optimizer.step()
        with torch.no_grad():
            reference_lars_step(list(reference.parameters()), momenta, lr, wd, eta, 0.9, clip)
    for p, q in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_solo_learn_clipping_caps_the_rate_not_the_trust_ratio():
    """At lr 0.3, a layer whose trust ratio is 0.1 steps by 0.1 * d under solo-learn's rule and by
    lr * 0.1 * d = 0.03 * d under the trust cap: solo-learn's steps are lr^-1 times larger."""
    steps = {}
    for clip in ("trust", "solo-learn"):
        weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
        weight.grad = torch.tensor([[0.0, 1.0]])  # ||g|| = 1: trust = eta * 5 / 1 = 0.1 with eta 0.02
        LARS([weight], lr=0.3, weight_decay=0.0, eta=0.02, clip=clip).step()
        steps[clip] = 4.0 - weight[0, 1].item()
    assert steps["trust"] == pytest.approx(0.3 * 0.1, rel=1e-5)
    assert steps["solo-learn"] == pytest.approx(0.1, rel=1e-5)


def test_lars_reads_a_tensor_learning_rate_that_set_lr_writes():
    from vicreg_lib.optim import set_lr

    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    lr = torch.tensor(0.0)
    optimizer = LARS([weight], lr=lr, weight_decay=0.0, eta=1.0)
    set_lr(optimizer, 0.5)
    assert optimizer.param_groups[0]["lr"] is lr and lr.item() == 0.5
    weight.grad = torch.tensor([[0.0, 1.0]])  # trust = 5: d = (0, 5)
    optimizer.step()
    assert torch.allclose(weight, torch.tensor([[3.0, 4.0 - 0.5 * 5.0]]))


def test_a_lars_step_is_a_few_multi_tensor_ops():
    from vicreg_lib.model import build_model


    model = build_model(width=8, projector="32-32")
    for clip in ("none", "trust", "solo-learn"):
        optimizer = LARS(model.parameters(), lr=0.3, weight_decay=1e-4, eta=0.02, clip=clip)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()  # creates the momentum buffers
        with AtenCalls() as calls:
            optimizer.step()
        assert len(list(model.parameters())) > 60 and calls.calls <= 60, (clip, calls.calls)


def test_build_optimizer_passes_lars_settings():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, "lars", lr=0.3, weight_decay=1e-4, eta=0.02, clip="solo-learn")
    assert (optimizer.param_groups[0]["eta"], optimizer.param_groups[0]["clip"]) == (0.02, "solo-learn")
    assert build_optimizer(model, "lars", lr=0.3, weight_decay=0.0, clip=True).param_groups[0]["clip"] == "trust"
    with pytest.raises(ValueError, match="unknown LARS clipping 'always'"):
        build_optimizer(model, "lars", lr=0.3, weight_decay=0.0, clip="always")
    assert isinstance(build_optimizer(model, "adam", lr=1e-3, weight_decay=0.0), torch.optim.Adam)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, "sgd", lr=1.0, weight_decay=0.0)
