"""classifier.fit_classifier: the one training routine of the probes and the supervised baseline."""
from __future__ import annotations

import math
import types

import pytest
import torch
from torch import nn

from vicreg_lib.eval import classifier
from vicreg_lib.eval.classifier import ClassifierRecipe, check_labels, fit_classifier, topk_accuracy
from vicreg_lib.optim import lr_at_step


def blobs(n_per_class: int = 20, num_classes: int = 3, dim: int = 5, seed: int = 0):
    """Well-separated Gaussian blobs: features (n, dim), labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(labels.shape[0], dim, generator=g), labels


def record_lrs(monkeypatch, optimizer_class) -> list[dict]:
    """Record the lr, momentum and weight decay each optimizer step of `optimizer_class` used."""
    seen = []
    real_step = optimizer_class.step

    def step(self, *args, **kwargs):
        group = self.param_groups[0]
        seen.append({k: group.get(k) for k in ("lr", "momentum", "weight_decay")})
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(optimizer_class, "step", step)
    return seen


def test_fit_classifier_learns_and_leaves_model_in_eval_mode():
    x, y = blobs()
    head = nn.Linear(5, 3)
    fit = fit_classifier(head, x, y, ClassifierRecipe(lr=0.05, batch_size=16), epochs=10,
                         generator=torch.Generator().manual_seed(0))
    assert [h["epoch"] for h in fit.history] == list(range(1, 11))
    assert fit.steps == 10 * math.ceil(60 / 16)
    assert fit.history[-1]["loss"] < 0.5 * fit.history[0]["loss"]
    with torch.no_grad():
        assert topk_accuracy(head(x), y, 1) > 95.0
    assert not head.training


@pytest.mark.parametrize("unit", ["step", "epoch"])
def test_the_lr_each_step_used_is_the_schedules(monkeypatch, unit):
    seen = record_lrs(monkeypatch, torch.optim.SGD)
    x, y = blobs()
    recipe = ClassifierRecipe(lr=0.4, batch_size=16, schedule="warmup_cosine", schedule_unit=unit, warmup=2,
                              final_ratio=0.1)
    fit_classifier(nn.Linear(5, 3), x, y, recipe, epochs=5, generator=torch.Generator().manual_seed(0))
    steps_per_epoch = 4  # ceil(60 / 16)
    assert len(seen) == 5 * steps_per_epoch
    for step, used in enumerate(seen):
        position, total = (step // steps_per_epoch, 5) if unit == "epoch" else (step, 5 * steps_per_epoch)
        expected = lr_at_step(position, schedule="warmup_cosine", peak_lr=0.4, total_steps=total,
                              warmup_steps=2, final_ratio=0.1)
        assert used["lr"] == pytest.approx(expected)
    assert len({round(s["lr"], 12) for s in seen}) > 3  # the rate moves: not a constant schedule


def test_momentum_and_weight_decay_reach_the_optimizer(monkeypatch):
    seen = record_lrs(monkeypatch, torch.optim.SGD)
    x, y = blobs()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.manual_seed(0)
    plain, heavy = nn.Linear(5, 3), nn.Linear(5, 3)
    heavy.load_state_dict(plain.state_dict())
    fit_classifier(plain, x, y, ClassifierRecipe(lr=0.05, momentum=0.0, weight_decay=0.0), epochs=3, generator=g())
    fit_classifier(heavy, x, y, ClassifierRecipe(lr=0.05, momentum=0.5, weight_decay=0.5), epochs=3, generator=g())
    assert {s["momentum"] for s in seen} == {0.0, 0.5} and {s["weight_decay"] for s in seen} == {0.0, 0.5}
    assert heavy.weight.norm() < plain.weight.norm()  # decay shrinks the weights


def test_adam_is_used_when_asked(monkeypatch):
    seen = record_lrs(monkeypatch, torch.optim.Adam)
    x, y = blobs()
    fit_classifier(nn.Linear(5, 3), x, y, ClassifierRecipe(optimizer="adam", lr=1e-2, schedule="constant"),
                   epochs=2)
    assert [s["lr"] for s in seen] == [1e-2, 1e-2]


def test_prepare_runs_without_gradients_and_only_the_model_trains():
    x, y = blobs()
    frozen_layer = nn.Linear(5, 5)
    before = frozen_layer.weight.clone()
    calls = []

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        calls.append(torch.is_grad_enabled())
        return frozen_layer(batch)

    head = nn.Linear(5, 3)
    head_before = head.weight.clone()
    fit_classifier(head, x, y, ClassifierRecipe(lr=0.1), epochs=2, prepare=prepare)
    assert calls and not any(calls)
    assert torch.equal(frozen_layer.weight, before) and frozen_layer.weight.grad is None
    assert not torch.equal(head.weight, head_before)


def test_a_lone_sample_batch_is_skipped_only_with_batchnorm():
    x, y = blobs(n_per_class=3)  # 9 samples, batch 4: the last batch holds one
    with_bn = nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 3))
    assert fit_classifier(with_bn, x, y, ClassifierRecipe(lr=0.1, batch_size=4), epochs=2).steps == 2 * 2
    assert fit_classifier(nn.Linear(5, 3), x, y, ClassifierRecipe(lr=0.1, batch_size=4), epochs=2).steps == 2 * 3


def test_time_budget_stops_mid_epoch_and_runs_the_schedule_on_the_clock(monkeypatch):
    clock = types.SimpleNamespace(now=50.0)  # a fake clock: 0.25 s per optimizer step
    monkeypatch.setattr(classifier, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    seen = record_lrs(monkeypatch, torch.optim.SGD)
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        clock.now += 0.25
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    x, y = blobs()
    fit = fit_classifier(nn.Linear(5, 3), x, y, ClassifierRecipe(lr=0.2, batch_size=4), time_budget_s=1.0)
    assert fit.steps == 4 and fit.seconds == 1.0 and len(fit.history) == 1
    assert [s["lr"] for s in seen] == pytest.approx([0.2 * 0.5 * (1 + math.cos(f * math.pi)) for f in (0, .25, .5, .75)])


def test_bad_input_gets_one_clear_error():
    x, y = blobs()
    head = nn.Linear(5, 3)
    with pytest.raises(ValueError, match="only 3 classes"):
        fit_classifier(head, x, y + 1, ClassifierRecipe(), epochs=1)
    with pytest.raises(ValueError, match=">= 0"):
        fit_classifier(head, x, y - 1, ClassifierRecipe(), epochs=1)
    with pytest.raises(ValueError, match="exactly one of epochs"):
        fit_classifier(head, x, y, ClassifierRecipe())
    with pytest.raises(ValueError, match="integer class ids"):
        fit_classifier(head, x, y.float(), ClassifierRecipe(), epochs=1)
    with pytest.raises(ValueError, match="one label per sample"):
        check_labels(y[:3], 60, "train")
    for bad in (dict(optimizer="lamb"), dict(schedule="step"), dict(lr=0.0), dict(batch_size=0),
                dict(schedule_unit="minute"), dict(momentum=-1.0)):
        with pytest.raises(ValueError, match="ClassifierRecipe"):
            ClassifierRecipe(**bad)
