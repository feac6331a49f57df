"""linear_eval: the blog, standard and fast protocols do what they say, and the fast probe
agrees with scikit-learn's logistic regression."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from support import gaussian_clusters
from torch import nn

from vicreg_lib.eval import probes as le
from vicreg_lib.eval.features import NonFiniteFeaturesError, extract_features, normalize_images
from vicreg_lib.eval.probes import PROTOCOL_SETTINGS, PROTOCOLS, describe_protocol, linear_eval, linear_probe
from vicreg_lib.optim import lr_at_step


class TinyEncoder(nn.Module):
    """A stand-in encoder with BatchNorm, so train and eval mode give different outputs."""

    def __init__(self, out_dim: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, out_dim, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))  # (n, out_dim)


def brightness_classes(n_per_class: int, seed: int = 0, size: int = 8):
    """uint8 images (n, 3, size, size) whose class is their brightness band: 0 dark, 1 mid, 2 bright."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    base = torch.tensor([30, 128, 225])[labels].view(-1, 1, 1, 1)
    noise = torch.randint(-20, 21, (labels.shape[0], 3, size, size), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8), labels


def mean_pixel_encoder(fed: list):
    """A recording "encoder": the mean of each channel (b, 3); stores the smallest input value."""

    def encoder(x: torch.Tensor) -> torch.Tensor:
        fed.append(x.min().item())
        return x.mean(dim=(2, 3))

    return encoder


def spy_on_steps(monkeypatch, optimizer_class) -> list[dict]:
    """Record the param group (lr, momentum, weight_decay, ...) each optimizer step used."""
    seen = []
    real_step = optimizer_class.step

    def step(self, *args, **kwargs):
        seen.append(dict(self.param_groups[0]))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(optimizer_class, "step", step)
    return seen


def spy_on_crop_scales(monkeypatch) -> list:
    """Record the crop scale range of every batch of crop boxes drawn by linear_eval."""
    scales = []
    real_boxes = le.sample_crop_boxes

    def boxes(n, height, width, scale, *args, **kwargs):
        scales.append(scale)
        return real_boxes(n, height, width, scale, *args, **kwargs)

    monkeypatch.setattr(le, "sample_crop_boxes", boxes)
    return scales


def spy_on_fit(monkeypatch) -> list:
    """Record (head before training, recipe, epochs) of each fit_classifier call in linear_eval."""
    calls = []
    real_fit = le.fit_classifier

    def spy(model, inputs, labels, recipe, **kwargs):
        calls.append({"head": {k: v.clone() for k, v in model.state_dict().items()}, "recipe": recipe,
                      "epochs": kwargs["epochs"], "model": model})
        return real_fit(model, inputs, labels, recipe, **kwargs)

    monkeypatch.setattr(le, "fit_classifier", spy)
    return calls


# ----------------------------------------------------------------------------- the protocols' settings


def test_every_protocol_is_described():
    assert PROTOCOLS == ("blog", "standard", "fast")
    for name in PROTOCOLS:
        text = describe_protocol(name)
        assert text.startswith(f"{name}:") and "final epoch" in text
    assert "NOT normalised" in describe_protocol("blog") and "NOT" not in describe_protocol("standard")
    with pytest.raises(ValueError, match="unknown linear-evaluation protocol"):
        describe_protocol("paper")


def test_blog_protocol_runs_the_blog_eval_script(monkeypatch):
    # SGD lr 0.02 without momentum, weight decay 1e-6, a cosine stepped per epoch over 50 epochs,
    # batch 256, crop scale 0.2-1, nn.Linear's default init (augustwester/vicreg eval.py, 89eab04)
    seen, scales = spy_on_steps(monkeypatch, torch.optim.SGD), spy_on_crop_scales(monkeypatch)
    calls = spy_on_fit(monkeypatch)
    images, labels = brightness_classes(100, size=8)  # 300 images: two batches of 256 per epoch
    result = linear_eval(TinyEncoder(), images, labels, images[:30], labels[:30], protocol="blog", device="cpu")
    assert result["epochs"] == 50 and len(result["history"]) == 50 and len(seen) == 50 * 2
    for i, group in enumerate(seen):
        assert group["lr"] == pytest.approx(lr_at_step(i // 2, schedule="cosine", peak_lr=0.02, total_steps=50))
        assert group["momentum"] == 0 and group["weight_decay"] == 1e-6
    assert set(scales) == {(0.2, 1.0)}
    weight = calls[0]["head"]["weight"]  # nn.Linear's default: U(-1/sqrt(d), 1/sqrt(d))
    assert weight.abs().max() <= 1 / math.sqrt(8) and weight.std() > 0.05
    assert result["normalize_test"] is False and result["reported"] == "final epoch"


def test_standard_protocol_settings(monkeypatch):
    seen, scales = spy_on_steps(monkeypatch, torch.optim.SGD), spy_on_crop_scales(monkeypatch)
    calls = spy_on_fit(monkeypatch)
    images, labels = brightness_classes(10, size=8)
    result = linear_eval(TinyEncoder(), images, labels, images, labels, protocol="standard", epochs=3, device="cpu")
    assert result["epochs"] == 3 and PROTOCOL_SETTINGS["standard"].epochs == 100
    assert [g["lr"] for g in seen] == pytest.approx([lr_at_step(e, schedule="cosine", peak_lr=0.3, total_steps=3)
                                                    for e in range(3)])
    assert {g["momentum"] for g in seen} == {0.9} and {g["weight_decay"] for g in seen} == {1e-6}
    assert set(scales) == {(0.08, 1.0)}  # torchvision's default RandomResizedCrop scale
    head = calls[0]["head"]  # the official init: N(0, 0.01), zero bias
    assert torch.equal(head["bias"], torch.zeros(3)) and 0.003 < head["weight"].std() < 0.03
    assert result["normalize_test"] is True


# ----------------------------------------------------------------------------- behaviour


def test_blog_protocol_feeds_unnormalised_test_images_and_the_switch_normalises_them():
    images, labels = brightness_classes(5)
    fed: list = []
    linear_eval(mean_pixel_encoder(fed), images, labels, images, labels, protocol="blog", epochs=1, device="cpu")
    assert fed[0] >= 0.0  # the test pass comes first: pixels only scaled to [0, 1]
    assert min(fed[1:]) < 0.0  # the training views are normalised (dark pixels below the mean)
    fed.clear()
    linear_eval(mean_pixel_encoder(fed), images, labels, images, labels, protocol="blog", epochs=1,
                normalize_test=True, device="cpu")
    assert fed[0] < 0.0


def test_unnormalised_test_images_change_the_blog_result():
    torch.manual_seed(0)
    encoder = TinyEncoder()
    train_images, train_labels = brightness_classes(20, seed=0)
    test_images, test_labels = brightness_classes(20, seed=1)
    kwargs = dict(protocol="blog", epochs=4, lr=0.5, device="cpu")
    raw = linear_eval(encoder, train_images, train_labels, test_images, test_labels, **kwargs)
    normalised = linear_eval(encoder, train_images, train_labels, test_images, test_labels, normalize_test=True,
                             **kwargs)
    def trace(result):
        return [(h["loss"], h["lr"]) for h in result["history"]]

    assert trace(raw) == trace(normalised)  # the same training, tested on differently scaled images
    assert normalised["top1"] > raw["top1"]


def test_standard_protocol_reports_the_final_epochs_head(monkeypatch):
    calls = spy_on_fit(monkeypatch)
    torch.manual_seed(0)
    encoder = TinyEncoder()
    train_images, train_labels = brightness_classes(15, seed=0)
    test_images, test_labels = brightness_classes(15, seed=1)
    result = linear_eval(encoder, train_images, train_labels, test_images, test_labels, protocol="standard",
                         epochs=5, lr=3.0, batch_size=8, device="cpu")
    head = calls[0]["model"]  # trained in place: its final state
    with torch.no_grad():
        logits = head(extract_features(encoder, test_images, device="cpu"))
    final = 100.0 * (logits.argmax(1) == test_labels).float().mean().item()
    assert result["top1"] == pytest.approx(final) and result["reported"] == "final epoch"
    assert result["train_top1"] == result["history"][-1]["train_top1"]


def test_augmented_protocols_keep_the_encoder_frozen_and_learn():
    torch.manual_seed(0)
    encoder = TinyEncoder()
    encoder.train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    train_images, train_labels = brightness_classes(30, seed=0)
    test_images, test_labels = brightness_classes(10, seed=1)
    result = linear_eval(encoder, train_images, train_labels, test_images, test_labels, protocol="standard",
                         epochs=15, lr=1.0, batch_size=32, device="cpu")
    assert result["top1"] >= 90.0 and result["top5"] >= result["top1"]
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "encoder weights or BN statistics changed"
    assert encoder.training  # its mode is given back


def test_augmented_protocol_is_seeded():
    train_images, train_labels = brightness_classes(6, seed=0, size=16)
    torch.manual_seed(0)
    encoder = TinyEncoder()
    kwargs = dict(protocol="standard", epochs=2, batch_size=8, device="cpu")
    first = linear_eval(encoder, train_images, train_labels, train_images, train_labels, seed=1, **kwargs)
    again = linear_eval(encoder, train_images, train_labels, train_images, train_labels, seed=1, **kwargs)
    other = linear_eval(encoder, train_images, train_labels, train_images, train_labels, seed=2, **kwargs)
    def trace(result):
        return [(h["loss"], h["train_top1"], h["lr"]) for h in result["history"]], result["top1"]

    assert trace(first) == trace(again)
    assert trace(first)[0] != trace(other)[0]  # the seed drives the order, the crops and the head init


def test_fast_protocol_is_linear_probe_on_the_frozen_features():
    torch.manual_seed(0)
    encoder = TinyEncoder()
    train_images, train_labels = brightness_classes(20, seed=0)
    test_images, test_labels = brightness_classes(10, seed=1)
    result = linear_eval(encoder, train_images, train_labels, test_images, test_labels, epochs=5, device="cpu")
    probe = linear_probe(extract_features(encoder, train_images, device="cpu"), train_labels,
                         extract_features(encoder, test_images, device="cpu"), test_labels, epochs=5, device="cpu")
    assert result["protocol"] == "fast" and (result["top1"], result["top5"]) == (probe["top1"], probe["top5"])
    assert [h["loss"] for h in result["history"]] == probe["history"]


def test_linear_eval_refuses_bad_input():
    images, labels = brightness_classes(4)
    encoder = TinyEncoder()
    with pytest.raises(ValueError, match="unknown linear-evaluation protocol"):
        linear_eval(encoder, images, labels, images, labels, protocol="paper", device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        linear_eval(encoder, images.float(), labels, images, labels, device="cpu")
    with pytest.raises(ValueError, match="labels go up to 2"):
        linear_eval(encoder, images, labels, images, labels, num_classes=2, device="cpu")
    with pytest.raises(ValueError, match="epochs"):
        linear_eval(encoder, images, labels, images, labels, epochs=0, device="cpu")
    with pytest.raises(ValueError, match="lr"):
        linear_eval(encoder, images, labels, images, labels, protocol="blog", lr=-1.0, device="cpu")
    broken = nn.Sequential(TinyEncoder(), nn.Linear(8, 8))
    nn.init.constant_(broken[1].weight, float("nan"))
    with pytest.raises(NonFiniteFeaturesError, match="NaN or infinite"):
        linear_eval(broken, images, labels, images, labels, device="cpu")


# ----------------------------------------------------------------------------- the fast probe




def test_linear_probe_learns_separable_features():
    train_x, train_y = gaussian_clusters(30, 10, seed=5)
    test_x, test_y = gaussian_clusters(10, 10, seed=5)
    result = linear_probe(train_x, train_y, test_x, test_y, epochs=30, lr=1e-2, batch_size=64, device="cpu")
    assert result["top1"] >= 95.0 and result["train_top1"] >= 95.0
    assert result["top5"] >= result["top1"]
    assert result["num_train"] == 300 and len(result["history"]) == 30
    assert result["history"][-1] < result["history"][0]


def test_linear_probe_on_shuffled_labels_is_near_chance():
    train_x, train_y = gaussian_clusters(30, 10, seed=6)
    test_x, test_y = gaussian_clusters(30, 10, seed=6)
    shuffled = train_y[torch.randperm(train_y.shape[0], generator=torch.Generator().manual_seed(0))]
    result = linear_probe(train_x, shuffled, test_x, test_y, epochs=30, lr=1e-2, batch_size=64, device="cpu")
    assert result["top1"] < 25.0  # chance is 10%


def test_linear_probe_lr_follows_its_cosine_per_step(monkeypatch):
    seen = spy_on_steps(monkeypatch, torch.optim.Adam)
    train_x, train_y = gaussian_clusters(10, 4, seed=7)
    linear_probe(train_x, train_y, train_x, train_y, epochs=3, lr=0.02, batch_size=16, device="cpu")
    steps = 3 * 3  # ceil(40 / 16) per epoch
    assert [group["lr"] for group in seen] == pytest.approx([lr_at_step(s, schedule="cosine", peak_lr=0.02, total_steps=steps)
                                  for s in range(steps)])


def test_linear_probe_is_deterministic_given_seed_and_invariant_to_feature_scale():
    train_x, train_y = gaussian_clusters(20, 4, spread=5.0, seed=8)
    test_x, test_y = gaussian_clusters(10, 4, spread=5.0, seed=8)
    kwargs = dict(epochs=5, lr=1e-2, batch_size=16, device="cpu")
    first = linear_probe(train_x, train_y, test_x, test_y, seed=3, **kwargs)
    again = linear_probe(train_x, train_y, test_x, test_y, seed=3, **kwargs)
    assert torch.equal(first.pop("test_predictions"), again.pop("test_predictions")) and first == again
    assert first["history"] != linear_probe(train_x, train_y, test_x, test_y, seed=4, **kwargs)["history"]
    scaled = linear_probe(1000 * train_x + 7, train_y, 1000 * test_x + 7, test_y, seed=3, **kwargs)
    assert scaled["top1"] == first["top1"]  # features are standardised with the train statistics


def test_linear_probe_errors():
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="one label per sample"):
        linear_probe(x, y, x[:3], y, device="cpu")
    with pytest.raises(ValueError, match="epochs"):
        linear_probe(x, y, x, y, epochs=0, device="cpu")
    with pytest.raises(ValueError, match="num_classes"):
        linear_probe(x, y + 5, x, y, num_classes=3, device="cpu")
    with pytest.raises(ValueError, match="dimension"):
        linear_probe(x, y, torch.randn(10, 5), y, device="cpu")


def sklearn_top1(train_x, train_y, test_x, test_y) -> float:
    """Test top-1 (%) of scikit-learn's multinomial logistic regression (lbfgs) on standardised
    features, with an L2 penalty as weak as the probe's weight decay allows lbfgs to converge."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    scaler = preprocessing.StandardScaler().fit(train_x.numpy())
    model = linear_model.LogisticRegression(C=10.0, max_iter=3000)
    model.fit(scaler.transform(train_x.numpy()), train_y.numpy())
    predicted = model.predict(scaler.transform(test_x.numpy()))
    return 100.0 * float(np.mean(predicted == test_y.numpy()))


def test_fast_probe_agrees_with_sklearn_logistic_regression_on_overlapping_clusters():
    # hard (accuracy well below 100) and big enough for 100 epochs to converge (see linear_probe)
    train_x, train_y = gaussian_clusters(300, 10, dim=16, spread=9.0, seed=11)
    test_x, test_y = gaussian_clusters(30, 10, dim=16, spread=9.0, seed=11)
    ours = linear_probe(train_x, train_y, test_x, test_y, device="cpu")["top1"]
    theirs = sklearn_top1(train_x, train_y, test_x, test_y)
    assert 30.0 < theirs < 95.0  # neither trivial nor hopeless, so agreement means something
    assert abs(ours - theirs) <= 4.0


def test_fast_probe_agrees_with_sklearn_on_real_image_features(mini_cifar_path):
    from vicreg_lib.data import load_dataset, random_subset
    from vicreg_lib.model import resnet18_cifar

    spec = f"npz:{mini_cifar_path}"
    train_images, train_labels = random_subset(*load_dataset(spec, "train")[:2], 1500, seed=0)
    test_images, test_labels = random_subset(*load_dataset(spec, "test")[:2], 600, seed=0)
    torch.manual_seed(0)
    encoder = resnet18_cifar(width=4)  # random init: weak but real features of real images
    train_x = extract_features(encoder, train_images, device="cpu")
    test_x = extract_features(encoder, test_images, device="cpu")
    ours = linear_probe(train_x, train_labels, test_x, test_labels, device="cpu")["top1"]
    theirs = sklearn_top1(train_x, train_labels, test_x, test_labels)
    assert theirs > 15.0  # above chance (10%)
    assert abs(ours - theirs) <= 4.0


def test_the_fast_probe_takes_enough_steps_on_a_few_samples():
    """600 samples are 3 steps per epoch: 100 epochs alone would underfit; the floor makes it agree."""
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    from vicreg_lib.eval.probes import FAST_MIN_STEPS, fast_probe_epochs, linear_probe

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 32, generator=generator) * 1.2
    labels = torch.arange(900) % 10
    features = centres[labels] + torch.randn(900, 32, generator=generator)
    epochs = fast_probe_epochs(600)
    assert epochs * 3 >= FAST_MIN_STEPS and fast_probe_epochs(50_000) == 100
    probe = linear_probe(features[:600], labels[:600], features[600:], labels[600:], epochs=epochs, device="cpu")
    reference = LogisticRegression(max_iter=2000).fit(features[:600].numpy(), labels[:600].numpy())
    sklearn_top1 = 100 * (reference.predict(features[600:].numpy()) == labels[600:].numpy()).mean()
    assert abs(probe["top1"] - sklearn_top1) < 4.0


def test_the_fast_probe_returns_its_test_predictions():
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 8, generator=generator) * 3
    labels = torch.arange(300) % 3
    features = centres[labels] + torch.randn(300, 8, generator=generator)
    probe = linear_probe(features[:200], labels[:200], features[200:], labels[200:], epochs=5, device="cpu")
    predictions = probe["test_predictions"]
    assert predictions.shape == (100,) and predictions.dtype == torch.int64
    assert 100 * (predictions == labels[200:]).float().mean().item() == pytest.approx(probe["top1"])
