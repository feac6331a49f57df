"""eval/probes.py: fit_classifier trains what it is given as told; the blog, standard and fast
protocols do what they say; the fast probe agrees with scikit-learn's logistic regression;
label efficiency probes class-balanced subsets."""
from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from support import TinyEncoder, gaussian_clusters
from torch import nn

from vicreg_lib.eval import probes as le
from vicreg_lib.eval.features import NonFiniteFeaturesError, check_labels, extract_features
from vicreg_lib.eval.probes import (PROTOCOLS, Optimization, class_balanced_subset, describe_protocol,
                                    fit_classifier, label_efficiency, linear_eval, linear_probe, topk_accuracy)
from vicreg_lib.optim import lr_at_step


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
    """Record (head before training, optimization, epochs) of each fit_classifier call in linear_eval."""
    calls = []
    real_fit = le.fit_classifier

    def spy(model, inputs, labels, optimization, **kwargs):
        calls.append({"head": {k: v.clone() for k, v in model.state_dict().items()}, "optimization": optimization,
                      "epochs": kwargs["epochs"], "model": model})
        return real_fit(model, inputs, labels, optimization, **kwargs)

    monkeypatch.setattr(le, "fit_classifier", spy)
    return calls


# ----------------------------------------------------------------------------- the protocols' settings


def test_every_protocol_is_described():
    assert tuple(PROTOCOLS) == ("blog", "standard", "fast")
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
    assert result["epochs"] == 3 and PROTOCOLS["standard"].epochs == 100
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


def test_linear_probe_trains_on_one_cpu_thread_and_restores_the_count(monkeypatch):
    seen, fit = [], le.fit_classifier

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return fit(*args, **kwargs)

    monkeypatch.setattr(le, "fit_classifier", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train_x, train_y = gaussian_clusters(10, 4, seed=8)
        linear_probe(train_x, train_y, train_x, train_y, epochs=2, device="cpu")
        assert seen == [1] and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"), le.one_cpu_thread(torch.device("cpu")):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2  # restored after an error too
    finally:
        torch.set_num_threads(before)


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

    from vicreg_lib.eval.probes import FAST_MIN_STEPS, fast_probe_epochs

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


# ----------------------------------------------------------------------------- label efficiency


def test_class_balanced_subset_takes_fraction_of_each_class():
    labels = torch.arange(5).repeat_interleave(torch.tensor([100, 50, 20, 10, 3]))
    idx = class_balanced_subset(labels, 0.1, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels[idx], minlength=5)
    assert counts.tolist() == [10, 5, 2, 1, 1]  # rounded, at least one per class
    assert idx.unique().shape == idx.shape  # no sample twice
    assert class_balanced_subset(labels, 1.0).shape[0] == labels.shape[0]
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            class_balanced_subset(labels, bad)


def test_label_efficiency_probes_on_balanced_subsets(monkeypatch):
    train_x, train_y = gaussian_clusters(50, 4, seed=9)
    test_x, test_y = gaussian_clusters(10, 4, seed=9)
    seen = []
    real_probe = le.linear_probe

    def spy(train_features, train_labels, *args, **kwargs):
        seen.append(torch.bincount(train_labels, minlength=4).tolist())
        assert train_features.shape[0] == train_labels.shape[0]
        return real_probe(train_features, train_labels, *args, **kwargs)

    monkeypatch.setattr(le, "linear_probe", spy)
    result = label_efficiency(train_x, train_y, test_x, test_y, fractions=(0.01, 0.1, 1.0),
                              epochs=20, lr=1e-2, device="cpu")
    assert list(result) == [0.01, 0.1, 1.0]
    assert seen == [[1, 1, 1, 1], [5, 5, 5, 5], [50, 50, 50, 50]]
    assert result[1.0] >= 95.0


def test_label_efficiency_rejects_bad_fractions():
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="fractions"):
        label_efficiency(x, y, x, y, fractions=(0.1, 2.0))


# ----------------------------------------------------------------------------- fit_classifier


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
    fit = fit_classifier(head, x, y, Optimization(lr=0.05, batch_size=16), epochs=10,
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
    optimization = Optimization(lr=0.4, batch_size=16, schedule="warmup_cosine", schedule_unit=unit, warmup=2,
                                final_ratio=0.1)
    fit_classifier(nn.Linear(5, 3), x, y, optimization, epochs=5, generator=torch.Generator().manual_seed(0))
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
    fit_classifier(plain, x, y, Optimization(lr=0.05, momentum=0.0, weight_decay=0.0), epochs=3, generator=g())
    fit_classifier(heavy, x, y, Optimization(lr=0.05, momentum=0.5, weight_decay=0.5), epochs=3, generator=g())
    assert {s["momentum"] for s in seen} == {0.0, 0.5} and {s["weight_decay"] for s in seen} == {0.0, 0.5}
    assert heavy.weight.norm() < plain.weight.norm()  # decay shrinks the weights


def test_adam_is_used_when_asked(monkeypatch):
    seen = record_lrs(monkeypatch, torch.optim.Adam)
    x, y = blobs()
    fit_classifier(nn.Linear(5, 3), x, y, Optimization(optimizer="adam", lr=1e-2, schedule="constant"),
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
    fit_classifier(head, x, y, Optimization(lr=0.1), epochs=2, prepare=prepare)
    assert calls and not any(calls)
    assert torch.equal(frozen_layer.weight, before) and frozen_layer.weight.grad is None
    assert not torch.equal(head.weight, head_before)


def test_a_lone_sample_batch_is_skipped_only_with_batchnorm():
    x, y = blobs(n_per_class=3)  # 9 samples, batch 4: the last batch holds one
    with_bn = nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 3))
    assert fit_classifier(with_bn, x, y, Optimization(lr=0.1, batch_size=4), epochs=2).steps == 2 * 2
    assert fit_classifier(nn.Linear(5, 3), x, y, Optimization(lr=0.1, batch_size=4), epochs=2).steps == 2 * 3


def test_time_budget_stops_mid_epoch_and_runs_the_schedule_on_the_clock(monkeypatch):
    clock = types.SimpleNamespace(now=50.0)  # a fake clock: 0.25 s per optimizer step
    monkeypatch.setattr(le, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    seen = record_lrs(monkeypatch, torch.optim.SGD)
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        clock.now += 0.25
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    x, y = blobs()
    fit = fit_classifier(nn.Linear(5, 3), x, y, Optimization(lr=0.2, batch_size=4), time_budget_s=1.0)
    assert fit.steps == 4 and fit.seconds == 1.0 and len(fit.history) == 1
    assert [s["lr"] for s in seen] == pytest.approx([0.2 * 0.5 * (1 + math.cos(f * math.pi)) for f in (0, .25, .5, .75)])


def test_bad_input_gets_one_clear_error():
    x, y = blobs()
    head = nn.Linear(5, 3)
    with pytest.raises(ValueError, match="only 3 classes"):
        fit_classifier(head, x, y + 1, Optimization(), epochs=1)
    with pytest.raises(ValueError, match=">= 0"):
        fit_classifier(head, x, y - 1, Optimization(), epochs=1)
    with pytest.raises(ValueError, match="exactly one of epochs"):
        fit_classifier(head, x, y, Optimization())
    with pytest.raises(ValueError, match="integer class ids"):
        fit_classifier(head, x, y.float(), Optimization(), epochs=1)
    with pytest.raises(ValueError, match="one label per sample"):
        check_labels(y[:3], 60, "train")
    for bad in (dict(optimizer="lamb"), dict(schedule="step"), dict(lr=0.0), dict(batch_size=0),
                dict(schedule_unit="minute"), dict(momentum=-1.0)):
        with pytest.raises(ValueError, match="Optimization"):
            Optimization(**bad)
