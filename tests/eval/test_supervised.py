"""supervised.py: the crop/flip augmentation is what it says, and the baseline learns labels."""
from __future__ import annotations

import math

import pytest
import torch

from vicreg_lib.eval.supervised import random_crop_flip, train_supervised


def _windows(x: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every crop/flip random_crop_flip may produce for one image x (c, h, w)."""
    padded = torch.nn.functional.pad(x[None], (padding,) * 4, mode="reflect")[0]
    h, w = x.shape[1:]
    out = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            window = padded[:, dy:dy + h, dx:dx + w]
            out += [window, window.flip(2)]
    return out


def test_random_crop_flip_outputs_a_shifted_window_of_each_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=g)
    y = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    for image, out in zip(x, y):
        assert any(torch.equal(out, window) for window in _windows(image, 2))
    # random: not every image is left untouched, and both flip states occur
    flipped = [any(torch.equal(out, w) for w in _windows(image, 2)[1::2]) for image, out in zip(x, y)]
    assert 0 < sum(flipped) < len(flipped)


def test_random_crop_flip_without_padding_only_flips():
    x = torch.rand(32, 3, 5, 5)
    y = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(0))
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_random_crop_flip_rejects_uint8():
    with pytest.raises(ValueError, match="float batch"):
        random_crop_flip(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def _two_colour_classes(n: int = 64, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: reddish noisy images, class 1: bluish. Crops and flips keep the colour."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.rand(n, 3, size, size, generator=g) * 120
    images[labels == 0, 0] += 130
    images[labels == 1, 2] += 130
    return images.to(torch.uint8), labels


def test_train_supervised_trains_the_network_and_learns_the_labels():
    from vicreg_lib.eval.features import normalize_images
    from vicreg_lib.model import resnet18_cifar

    images, labels = _two_colour_classes(48, 8)
    held_out, held_out_labels = _two_colour_classes(32, 8, seed=1)
    result = train_supervised(images, labels, width=4, epochs=6, batch_size=16, lr=0.05, device="cpu")
    assert [h["epoch"] for h in result.history] == list(range(1, 7))
    assert result.steps == 6 * 3
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert not result.encoder.training
    torch.manual_seed(0)  # the initial weights train_supervised(seed=0) started from
    initial = resnet18_cifar(4).state_dict()
    moved = [name for name, w in result.encoder.state_dict().items()
             if w.is_floating_point() and not torch.equal(w, initial[name])]
    assert "conv1.weight" in moved and "layer4.1.conv2.weight" in moved  # the encoder trains, not only the head
    with torch.no_grad():
        logits = result.classifier(result.encoder(normalize_images(held_out)))
    assert (logits.argmax(1) == held_out_labels).float().mean() > 0.8  # chance is 0.5
    assert result.history[-1]["lr"] < 0.05 * 0.1  # the cosine has decayed to near zero


def test_train_supervised_is_deterministic_for_a_seed():
    images, labels = _two_colour_classes(32, 8)
    a = train_supervised(images, labels, width=2, epochs=1, batch_size=16, device="cpu", seed=3)
    b = train_supervised(images, labels, width=2, epochs=1, batch_size=16, device="cpu", seed=3)
    for p, q in zip(a.encoder.state_dict().values(), b.encoder.state_dict().values()):
        assert torch.equal(p, q)


def test_train_supervised_stops_at_the_time_budget(monkeypatch):
    # a fake clock that advances 0.25 s per optimizer step makes "time" a function of the steps
    import types

    import vicreg_lib.eval.probes as probes  # fit_classifier, the training loop train_supervised runs

    clock = types.SimpleNamespace(now=100.0)
    monkeypatch.setattr(probes, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    sgd_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        clock.now += 0.25
        return sgd_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    images, labels = _two_colour_classes(64, 8)
    result = train_supervised(images, labels, width=2, time_budget_s=1.0, batch_size=8, lr=0.1, device="cpu")
    assert result.steps == 4  # 1.0 s / 0.25 s per step, stopping mid-epoch (8 steps per epoch)
    assert result.seconds == 1.0
    assert len(result.history) == 1
    # the cosine runs on the clock: the 4th step (at 0.75 of the budget) used lr * (1 + cos(0.75 pi)) / 2
    assert result.history[0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(0.75 * math.pi)))


def test_train_supervised_rejects_bad_input():
    images, labels = _two_colour_classes(8, 8)
    with pytest.raises(ValueError, match="exactly one of epochs"):
        train_supervised(images, labels, width=2, epochs=1, time_budget_s=1.0)
    with pytest.raises(ValueError, match="exactly one of epochs"):
        train_supervised(images, labels, width=2)
    with pytest.raises(ValueError, match="uint8"):
        train_supervised(images.float(), labels, width=2, epochs=1)
    with pytest.raises(ValueError, match="one label per sample"):
        train_supervised(images, labels[:-1], width=2, epochs=1)
    with pytest.raises(ValueError, match="only 2 classes"):
        train_supervised(images, labels + 1, width=2, epochs=1, num_classes=2)
