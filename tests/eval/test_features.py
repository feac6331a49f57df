"""eval/features.py: frozen features (normalisation, eval mode, shapes) and the weighted kNN."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from support import TinyEncoder, gaussian_clusters, random_images

from vicreg_lib.data import CIFAR10_MEAN, CIFAR10_STD
from vicreg_lib.eval.features import cached_features, extract_features, features_key, knn_accuracy, normalize_images


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


# ----------------------------------------------------------------------------- cached_features


class _CountingEncoder(TinyEncoder):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


def test_cached_features_computes_once_then_reads_the_file(tmp_path):
    torch.manual_seed(0)
    encoder, images = _CountingEncoder(), random_images(10)
    first = cached_features(encoder, images, tmp_path, batch_size=4, device="cpu")
    assert encoder.calls == 3 and len(list(tmp_path.glob("features-*.pt"))) == 1
    again = cached_features(encoder, images, tmp_path, batch_size=4, device="cpu")
    assert encoder.calls == 3  # read from the file, no forward pass
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(first, extract_features(encoder, images, device="cpu"))


def test_cached_features_key_changes_with_weights_batchnorm_statistics_and_images():
    torch.manual_seed(0)
    encoder, images = TinyEncoder(), random_images(6)
    key = features_key(encoder, images)
    assert features_key(encoder, images) == key
    assert features_key(encoder, random_images(6, seed=1)) != key
    assert features_key(encoder, images, which="embedding") != key
    encoder.bn.running_mean += 1  # a calibrated BatchNorm gives other features
    calibrated = features_key(encoder, images)
    assert calibrated != key
    with torch.no_grad():
        encoder.conv.weight.mul_(2)
    assert features_key(encoder, images) not in (key, calibrated)


def test_cached_features_recomputes_a_damaged_file(tmp_path):
    torch.manual_seed(0)
    encoder, images = _CountingEncoder(), random_images(5)
    expected = cached_features(encoder, images, tmp_path, device="cpu")
    (file,) = tmp_path.glob("features-*.pt")
    file.write_bytes(b"not a tensor")
    again = cached_features(encoder, images, tmp_path, device="cpu")
    assert encoder.calls == 2
    torch.testing.assert_close(again, expected)
    assert not list(tmp_path.glob("*.tmp"))


def test_features_key_rejects_a_plain_function():
    with pytest.raises(ValueError, match="nn.Module"):
        features_key(lambda x: x.mean(dim=(2, 3)), random_images(2))
