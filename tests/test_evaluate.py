"""Tests for vicreg_lib.evaluate (weighted kNN, label efficiency, the checkpoint report) and
vicreg_lib.features (frozen features). The linear protocols are tested in test_linear_eval.py."""
from __future__ import annotations

import pytest
import torch
from support import gaussian_clusters
import torch.nn as nn

from vicreg_lib import evaluate
from vicreg_lib.data import CIFAR10_MEAN, CIFAR10_STD
from vicreg_lib.evaluate import (
    class_balanced_subset,
    evaluate_encoder,
    format_table,
    frozen_feature_report,
    knn_accuracy,
    label_efficiency,
)
from vicreg_lib.features import NonFiniteFeaturesError, extract_features, normalize_images


# ----------------------------------------------------------------------------- helpers


class TinyEncoder(nn.Module):
    """A stand-in encoder with BatchNorm, so train and eval mode give different outputs."""

    def __init__(self, out_dim: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, out_dim, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))  # (n, out_dim)




def random_images(n: int, seed: int = 0, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


# ----------------------------------------------------------------------------- normalize_images


def test_normalize_images_uses_cifar_mean_std():
    images = random_images(4)
    out = normalize_images(images)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == images.shape
    torch.testing.assert_close(out, (images.float() / 255 - mean) / std)


def test_normalize_images_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        normalize_images(torch.rand(2, 3, 8, 8))


# ----------------------------------------------------------------------------- extract_features


def test_extract_features_is_batch_size_invariant_and_uses_eval_mode():
    torch.manual_seed(0)
    encoder = TinyEncoder()
    encoder.train()
    encoder(normalize_images(random_images(32, seed=1)))  # move BN running stats off their init
    images = random_images(20)

    small = extract_features(encoder, images, batch_size=3, device="cpu")
    large = extract_features(encoder, images, batch_size=64, device="cpu")
    assert small.shape == (20, 8) and small.dtype == torch.float32 and small.device.type == "cpu"
    torch.testing.assert_close(small, large)

    encoder.eval()
    with torch.no_grad():
        expected = encoder(normalize_images(images))
    torch.testing.assert_close(small, expected)
    encoder.train()
    with torch.no_grad():
        batch_stats = encoder(normalize_images(images))
    assert not torch.allclose(small, batch_stats, atol=1e-4), "features must use BN running statistics"


def test_extract_features_restores_each_module_mode():
    encoder = TinyEncoder()
    encoder.train()
    encoder.bn.eval()  # a mixed state must come back exactly
    extract_features(encoder, random_images(5), batch_size=2, device="cpu")
    assert encoder.training and encoder.conv.training and not encoder.bn.training

    encoder.eval()
    extract_features(encoder, random_images(5), device="cpu")
    assert not encoder.training


def test_extract_features_returns_ordinary_tensor_usable_in_autograd():
    features = extract_features(TinyEncoder(), random_images(6), device="cpu")
    assert not features.is_inference()
    layer = nn.Linear(8, 2)
    layer(features).sum().backward()  # would fail on an inference tensor
    assert layer.weight.grad is not None


def test_extract_features_accepts_plain_callable_and_prenormalised_floats():
    images = random_images(5)
    out = extract_features(lambda x: x.flatten(1)[:, :4], normalize_images(images), device="cpu")
    torch.testing.assert_close(out, normalize_images(images).flatten(1)[:, :4])


def test_extract_features_with_vicreg_model_both_which():
    model_lib = pytest.importorskip("vicreg_lib.model")
    torch.manual_seed(0)
    encoder = model_lib.resnet18_cifar(width=4)
    projector = model_lib.Projector.from_spec(encoder.out_dim, "16-16")
    vicreg = model_lib.VICReg(encoder, projector)
    images = random_images(6, size=32)

    h = extract_features(vicreg, images, batch_size=4, device="cpu", which="representation")
    z = extract_features(vicreg, images, batch_size=4, device="cpu", which="embedding")
    assert h.shape == (6, encoder.out_dim) and z.shape == (6, 16)
    vicreg.eval()
    with torch.no_grad():
        torch.testing.assert_close(h, vicreg.representation(normalize_images(images)))
        torch.testing.assert_close(z, vicreg.embed(normalize_images(images)))
    torch.testing.assert_close(h, extract_features(encoder, images, device="cpu"))


def test_extract_features_errors():
    encoder = TinyEncoder()
    with pytest.raises(ValueError, match="which must be one of"):
        extract_features(encoder, random_images(2), device="cpu", which="logits")
    with pytest.raises(ValueError, match="VICReg model"):
        extract_features(encoder, random_images(2), device="cpu", which="embedding")
    with pytest.raises(ValueError, match="empty"):
        extract_features(encoder, random_images(0), device="cpu")


# ----------------------------------------------------------------------------- knn_accuracy


def test_knn_separates_gaussian_clusters():
    train_x, train_y = gaussian_clusters(40, 5, seed=0)
    test_x, test_y = gaussian_clusters(20, 5, seed=0)  # same centres: seed picks them
    result = knn_accuracy(train_x, train_y, test_x, test_y, k=(20, 200))
    assert set(result) == {"knn_top1@20", "knn_top1@200"}
    assert result["knn_top1@20"] >= 99.0
    assert result["knn_top1@200"] >= 95.0


def test_knn_on_random_labels_is_near_chance():
    g = torch.Generator().manual_seed(1)
    train_x, test_x = torch.randn(1000, 16, generator=g), torch.randn(1000, 16, generator=g)
    train_y, test_y = torch.randint(0, 10, (1000,), generator=g), torch.randint(0, 10, (1000,), generator=g)
    accuracy = knn_accuracy(train_x, train_y, test_x, test_y, k=20)["knn_top1@20"]
    assert 4.0 < accuracy < 16.0  # chance is 10%


def test_knn_is_cosine_so_scaling_features_changes_nothing():
    train_x, train_y = gaussian_clusters(30, 4, spread=6.0, seed=2)  # overlapping: accuracy < 100
    test_x, test_y = gaussian_clusters(15, 4, spread=6.0, seed=2)
    base = knn_accuracy(train_x, train_y, test_x, test_y, k=(1, 10))
    g = torch.Generator().manual_seed(3)
    scale_train = torch.rand(train_x.shape[0], 1, generator=g) * 100 + 0.01  # per-row positive scales
    scale_test = torch.rand(test_x.shape[0], 1, generator=g) * 100 + 0.01
    scaled = knn_accuracy(train_x * scale_train, train_y, test_x * scale_test, test_y, k=(1, 10))
    assert base == scaled
    assert base["knn_top1@1"] < 100.0  # the check above is not vacuous


def test_knn_weighted_votes_break_count_ties_by_similarity():
    # One neighbour per class with k=2: a plain count ties, the closer neighbour must win.
    train_x = torch.tensor([[1.0, 0.1], [0.3, 1.0]])
    test_x = torch.tensor([[1.0, 0.0]])  # closer to train sample 0
    for labels, expected in ((torch.tensor([0, 1]), 100.0), (torch.tensor([1, 0]), 0.0)):
        result = knn_accuracy(train_x, labels, test_x, torch.tensor([0]), k=2, temperature=0.1)
        assert result["knn_top1@2"] == expected


def test_knn_weighted_votes_let_close_neighbours_outvote_many_far_ones():
    # Two very close class-0 neighbours beat three distant class-1 neighbours at low temperature,
    # and lose to them at high temperature (where the vote becomes a plain count).
    train_x = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.1, 1.0], [0.05, 1.0]])
    train_y = torch.tensor([0, 0, 1, 1, 1])
    test_x = torch.tensor([[1.0, 0.3]])
    test_y = torch.tensor([0])
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=5, temperature=0.07)["knn_top1@5"] == 100.0
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=5, temperature=100.0)["knn_top1@5"] == 0.0


def test_knn_clamps_k_and_is_batch_invariant():
    train_x, train_y = gaussian_clusters(10, 3, spread=5.0, seed=4)
    test_x, test_y = gaussian_clusters(10, 3, spread=5.0, seed=4)
    huge = knn_accuracy(train_x, train_y, test_x, test_y, k=1000)["knn_top1@1000"]
    exact = knn_accuracy(train_x, train_y, test_x, test_y, k=30)["knn_top1@30"]
    assert huge == exact
    a = knn_accuracy(train_x, train_y, test_x, test_y, k=(3, 7), batch_size=4)
    b = knn_accuracy(train_x, train_y, test_x, test_y, k=(3, 7), batch_size=1000)
    assert a == b


def test_knn_errors():
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(x, y, x, y, k=0)
    with pytest.raises(ValueError, match="one label per sample"):
        knn_accuracy(x, y[:5], x, y)
    with pytest.raises(ValueError, match="empty"):
        knn_accuracy(x, y, x[:0], y[:0])
    with pytest.raises(ValueError, match="dimension"):
        knn_accuracy(x, y, torch.randn(10, 5), y)
    with pytest.raises(ValueError, match="labels go up to 6"):  # out of range: caught before the loop
        knn_accuracy(x, y + 5, x, y, num_classes=3)
    with pytest.raises(ValueError, match=">= 0"):
        knn_accuracy(x, y - 1, x, y)


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
    real_probe = evaluate.linear_probe

    def spy(train_features, train_labels, *args, **kwargs):
        seen.append(torch.bincount(train_labels, minlength=4).tolist())
        assert train_features.shape[0] == train_labels.shape[0]
        return real_probe(train_features, train_labels, *args, **kwargs)

    monkeypatch.setattr(evaluate, "linear_probe", spy)
    result = label_efficiency(train_x, train_y, test_x, test_y, fractions=(0.01, 0.1, 1.0),
                              epochs=20, lr=1e-2, device="cpu")
    assert list(result) == [0.01, 0.1, 1.0]
    assert seen == [[1, 1, 1, 1], [5, 5, 5, 5], [50, 50, 50, 50]]
    assert result[1.0] >= 95.0


def test_label_efficiency_rejects_bad_fractions():
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="fractions"):
        label_efficiency(x, y, x, y, fractions=(0.1, 2.0))


# ----------------------------------------------------------------------------- format_table


def test_format_table_aligns_metrics_and_baseline():
    results = {
        "checkpoint": "runs/x/checkpoint.pt",
        "num_train": 100,
        "protocols": ["fast", "standard"],
        "probe_epochs": {"fast": 100, "standard": 100},
        "knn_top1@20": 81.234,
        "knn_top1@200": 80.0,
        "linear_fast_top1": 85.0,
        "linear_standard_top1": 86.5,
        "label_1%_top1": 40.5,
        "random_init": {"knn_top1@20": 30.0, "linear_fast_top1": 35.25, "label_1%_top1": 20.0},
    }
    table = format_table(results)
    lines = table.splitlines()
    assert "checkpoint: runs/x/checkpoint.pt" in lines and "num_train: 100" in lines
    assert "protocols: fast, standard" in lines and "probe_epochs: fast 100, standard 100" in lines
    rows = lines[lines.index("") + 1:]
    assert len(rows) == 2 + 5  # header, rule, five metrics
    assert len({len(row) for row in rows}) == 1  # every row has the same width
    assert "random init" in rows[0]
    assert any("k=20)" in row and "81.23" in row and "30.00" in row for row in rows)
    assert any("k=200)" in row and "80.00" in row and row.endswith("-") for row in rows)
    assert any("standard protocol" in row and "top-1" in row and "86.50" in row for row in rows)
    assert any("1% labels" in row and "40.50" in row for row in rows)
    assert "random init" not in format_table({"linear_fast_top1": 85.0})


# ----------------------------------------------------------------------------- frozen_feature_report, evaluate_encoder


def test_frozen_feature_report_has_knn_fast_probe_and_label_fractions():
    train_x, train_y = gaussian_clusters(30, 4, seed=10)
    test_x, test_y = gaussian_clusters(10, 4, seed=10)
    report = frozen_feature_report(train_x, train_y, test_x, test_y, probe_epochs=5, label_fractions=(0.1, 0.5),
                                   device="cpu")
    assert set(report) == {"knn_top1@20", "knn_top1@200", "linear_fast_top1", "linear_fast_top5",
                           "label_10%_top1", "label_50%_top1"}
    assert report["knn_top1@20"] == knn_accuracy(train_x, train_y, test_x, test_y, k=20)["knn_top1@20"]
    assert report["linear_fast_top1"] >= 95.0
    without = frozen_feature_report(train_x, train_y, test_x, test_y, linear=False, label_fractions=(),
                                    knn_k=(5,), device="cpu")
    assert set(without) == {"knn_top1@5"}


def test_evaluate_encoder_runs_the_chosen_protocols(monkeypatch):
    import vicreg_lib.linear_eval as linear_eval_module

    ran = []
    real = evaluate.linear_eval

    def spy(*args, protocol, **kwargs):
        ran.append((protocol, kwargs["epochs"]))
        return real(*args, protocol=protocol, **kwargs)

    monkeypatch.setattr(evaluate, "linear_eval", spy)
    torch.manual_seed(0)
    images = random_images(24)
    labels = torch.arange(3).repeat(8)
    result = evaluate_encoder(TinyEncoder(), images, labels, images, labels, protocols=("blog", "standard"),
                              probe_epochs=2, label_fractions=(), device="cpu")
    assert ran == [("blog", 2), ("standard", 2)]  # fast runs on the features, not through linear_eval
    assert {"linear_blog_top1", "linear_blog_top5", "linear_standard_top1", "knn_top1@200"} <= set(result)
    assert "linear_fast_top1" not in result and result["feature_dim"] == 8
    assert linear_eval_module.PROTOCOLS == evaluate.PROTOCOLS


def test_evaluate_encoder_refuses_bad_labels_protocols_and_broken_models():
    images, labels = random_images(6), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="only 2 classes"):
        evaluate_encoder(TinyEncoder(), images, labels, images, labels, num_classes=2, device="cpu")
    with pytest.raises(ValueError, match="unknown linear-evaluation protocol"):
        evaluate_encoder(TinyEncoder(), images, labels, images, labels, protocols=("paper",), device="cpu")
    broken = TinyEncoder()
    nn.init.constant_(broken.conv.weight, float("inf"))
    with pytest.raises(NonFiniteFeaturesError, match="features of the training images"):
        evaluate_encoder(broken, images, labels, images, labels, device="cpu")


# ----------------------------------------------------------------------------- evaluate_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A real checkpoint: one epoch of pretraining a width-4 ResNet-18 on 64 synthetic images."""
    from vicreg_lib.config import TrainConfig
    from vicreg_lib.train import pretrain

    out_dir = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        data="synthetic:64,40", width=4, projector="16-16", batch_size=32, epochs=1, device="cpu",
        eval_every=0, eval_at_start=False, progress=False, out_dir=str(out_dir),
    )
    return pretrain(config).checkpoint_path


def test_evaluate_checkpoint_end_to_end(tiny_checkpoint):
    from vicreg_lib.checkpoint import load_pretrained
    from vicreg_lib.data import load_dataset
    from vicreg_lib.model import build_model

    results = evaluate.evaluate_checkpoint(
        tiny_checkpoint, device="cpu", batch_size=16, probe_epochs=3, random_init_baseline=True,
    )
    metrics = ["knn_top1@20", "knn_top1@200", "linear_fast_top1", "linear_fast_top5", "label_1%_top1",
               "label_10%_top1"]
    assert results["data"] == "synthetic:64,40"  # the spec the run was trained on
    assert (results["num_train"], results["num_test"], results["feature_dim"]) == (64, 40, 32)
    assert results["protocols"] == ["fast"] and results["probe_epochs"] == {"fast": 3}
    for key in metrics:
        assert 0.0 <= results[key] <= 100.0 and 0.0 <= results["random_init"][key] <= 100.0
    assert results["linear_fast_top5"] >= results["linear_fast_top1"]

    # the table's kNN figures are those of the checkpoint's own frozen representations...
    model, _ = load_pretrained(tiny_checkpoint)
    train_images, train_labels, _ = load_dataset("synthetic:64,40", "train")
    test_images, test_labels, _ = load_dataset("synthetic:64,40", "test")

    def knn_of(encoder):
        return knn_accuracy(
            extract_features(encoder, train_images, device="cpu"), train_labels,
            extract_features(encoder, test_images, device="cpu"), test_labels, k=(20, 200), num_classes=10,
        )

    assert {k: results[k] for k in ("knn_top1@20", "knn_top1@200")} == knn_of(model.encoder)
    # ...and the baseline's those of the same architecture freshly built (seeded) by build_model,
    # with BatchNorm statistics from the training images (not their initial values)
    from vicreg_lib.features import normalize_images
    from vicreg_lib.model import calibrate_batchnorm

    torch.manual_seed(0)
    fresh = calibrate_batchnorm(build_model(**model.arch).encoder, [normalize_images(train_images)])
    assert {k: results["random_init"][k] for k in ("knn_top1@20", "knn_top1@200")} == knn_of(fresh)
    table = format_table(results)
    assert "random init" in table and "kNN top-1 (k=200)" in table and "10% labels" in table


def test_evaluate_checkpoint_chooses_protocols_subsets_and_other_data(tiny_checkpoint):
    results = evaluate.evaluate_checkpoint(
        tiny_checkpoint, data="synthetic:50,20", device="cpu", protocols=("blog",), probe_epochs=1,
        max_train_images=30, label_fractions=(),
    )
    assert (results["num_train"], results["num_test"]) == (30, 20)
    assert "random_init" not in results and "linear_fast_top1" not in results
    assert 0.0 <= results["linear_blog_top1"] <= results["linear_blog_top5"] <= 100.0
    assert results["probe_epochs"] == {"blog": 1}


def test_evaluate_checkpoint_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):  # CheckpointError is a ValueError
        evaluate.evaluate_checkpoint(tmp_path / "missing.pt", device="cpu")
    with pytest.raises(ValueError, match="max_train_images"):
        evaluate.evaluate_checkpoint(tiny_checkpoint, device="cpu", max_train_images=0)
    with pytest.raises(ValueError, match="unknown linear-evaluation protocol"):
        evaluate.evaluate_checkpoint(tiny_checkpoint, device="cpu", protocols=("fast", "paper"))
    with pytest.raises(ValueError, match="probe_epochs"):
        evaluate.evaluate_checkpoint(tiny_checkpoint, device="cpu", probe_epochs=0)


def test_evaluate_writes_where_the_user_says_never_where_the_checkpoint_says(tiny_checkpoint, tmp_path, monkeypatch):
    import tarfile

    from PIL import Image

    for split in ("train", "test"):
        for name, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
            for index in range(4):
                (tmp_path / "tree" / split / name).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), colour).save(tmp_path / "tree" / split / name / f"{index}.png")
    with tarfile.open(tmp_path / "images.tgz", "w:gz") as bundle:
        bundle.add(tmp_path / "tree" / "train", "train")
        bundle.add(tmp_path / "tree" / "test", "test")
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["config"].update(data=f"archive:{tmp_path / 'images.tgz'}", data_root=str(tmp_path / "theirs"))
    torch.save(state, tmp_path / "foreign.pt")
    monkeypatch.setenv("VICREG_DATA_ROOT", str(tmp_path / "mine"))
    results = evaluate.evaluate_checkpoint(tmp_path / "foreign.pt", device="cpu", probe_epochs=1, label_fractions=())
    assert results["num_train"] == 8
    assert not (tmp_path / "theirs").exists() and any((tmp_path / "mine").iterdir())


def test_a_checkpoint_whose_data_setting_is_not_a_spec_is_a_clear_error(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["config"]["data"] = 5
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"its config's data is 5, not a data spec; pass .* \(--data\)"):
        evaluate.evaluate_checkpoint(tmp_path / "odd.pt", device="cpu")
    results = evaluate.evaluate_checkpoint(tmp_path / "odd.pt", data="synthetic:64,40", device="cpu",
                                           probe_epochs=1, label_fractions=())
    assert results["num_train"] == 64
