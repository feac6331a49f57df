"""The synthetic set, label checks, subsets and fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vicreg_lib.data import load_dataset


def test_synthetic_is_deterministic_and_class_structured():
    train_x, train_y, classes = load_dataset("synthetic:400,200", "train")
    again_x, again_y, _ = load_dataset("synthetic:400,200", "train")
    test_x, test_y, _ = load_dataset("synthetic:400,200", "test")
    assert torch.equal(train_x, again_x) and torch.equal(train_y, again_y)
    assert train_x.shape == (400, 3, 32, 32) and test_x.shape == (200, 3, 32, 32)
    assert not torch.equal(train_x[:200], test_x)  # the splits are different draws
    assert len(classes) == 10 and torch.bincount(train_y).min() == 40
    # nearest class mean on raw pixels, fitted on train, beats chance (10%) on test by far
    means = torch.stack([train_x[train_y == k].float().flatten(1).mean(0) for k in range(10)])
    predicted = torch.cdist(test_x.float().flatten(1), means).argmin(1)
    assert (predicted == test_y).float().mean() > 0.5


def test_synthetic_default_sizes():
    assert load_dataset("synthetic", "train")[0].shape[0] == 2000
    assert load_dataset("synthetic", "test")[0].shape[0] == 500
    assert load_dataset("synthetic:40", "test")[0].shape[0] == 10


def test_random_subset_is_seeded_ordered_and_paired():
    from vicreg_lib.data import random_subset

    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 2, 2).contiguous()
    labels = torch.arange(20)
    sub_images, sub_labels = random_subset(images, labels, 7, seed=1)
    assert sub_labels.shape == (7,) and sub_labels.unique().numel() == 7
    assert torch.equal(sub_labels, sub_labels.sort().values)  # the set's original order is kept
    assert torch.equal(sub_images[:, 0, 0, 0].long(), sub_labels)  # images stay with their labels
    assert torch.equal(random_subset(images, labels, 7, seed=1)[1], sub_labels)
    assert not torch.equal(random_subset(images, labels, 7, seed=2)[1], sub_labels)
    assert random_subset(images, labels, None)[0] is images
    assert random_subset(images, labels, 50)[1] is labels


def test_check_labels():
    from vicreg_lib.data import LabelError, check_labels

    check_labels(torch.tensor([0, 2, 1]), 3, "train", 3)  # fine: no error
    check_labels(np.array([0, 5]), 2, "train")  # numpy arrays too; no num_classes, no upper bound
    for labels, rows, num_classes, message in (
        (torch.tensor([0, 3, 1]), 3, 3, r"here_labels go up to 3 .* only 3 classes \(ids 0\.\.2\); pass num_classes=4"),
        (torch.tensor([0, -1, 1]), 3, None, "here_labels must be >= 0, got -1"),
        (torch.tensor([0.0, 1.0, 2.0]), 3, 3, "here_labels must be integer class ids, got dtype torch.float32"),
        (torch.tensor([0, 1]), 3, 3, r"one label per sample \(3\), got shape \(2,\)"),
        (torch.zeros(0, dtype=torch.int64), 0, 3, "the here set is empty"),
    ):
        with pytest.raises(LabelError, match=message) as info:
            check_labels(labels, rows, "here", num_classes)
        assert isinstance(info.value, ValueError)


def test_fingerprint_changes_with_contents_shape_dtype_and_order():
    from vicreg_lib.data import fingerprint

    images = torch.arange(96, dtype=torch.uint8).view(2, 3, 4, 4)
    labels = torch.tensor([0, 1])
    key = fingerprint(images, labels)
    assert len(key) == 16 and int(key, 16) >= 0
    assert fingerprint(images.clone(), labels.clone()) == key  # contents, not identity
    assert fingerprint(images.numpy(), labels.numpy()) == key  # numpy arrays hash alike
    assert fingerprint(images.permute(0, 2, 3, 1).permute(0, 3, 1, 2), labels) == key  # layout-free
    changed = images.clone()
    changed[1, 2, 3, 3] += 1
    assert fingerprint(changed, labels) != key
    assert fingerprint(images, labels.flip(0)) != key
    assert fingerprint(labels, images) != key
    assert fingerprint(images.view(2, 48), labels) != key  # same bytes, other shape
    assert fingerprint(images.view(torch.int8), labels) != key  # same bytes, other dtype
    assert fingerprint(torch.ones(3, dtype=torch.bfloat16)) != fingerprint(torch.ones(3, dtype=torch.float16))
