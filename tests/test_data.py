from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vicreg_lib.data import DataSpecError, default_data_spec, load_dataset


def write_npz(path: Path, **overrides) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8),
        "train_labels": np.array([0, 1, 2, 0, 1, 2]),
        "test_images": rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8),
        "test_labels": np.array([2, 1, 0]),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_npz_round_trip(tmp_path):
    arrays = write_npz(tmp_path / "tiny.npz", classes=np.array(["cat", "dog", "emu"]))
    for split in ("train", "test"):
        images, labels, classes = load_dataset(f"npz:{tmp_path / 'tiny.npz'}", split)
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert images.shape == (len(arrays[f"{split}_labels"]), 3, 8, 8)
        assert torch.equal(images.permute(0, 2, 3, 1), torch.from_numpy(arrays[f"{split}_images"]))
        assert labels.tolist() == arrays[f"{split}_labels"].tolist()
        assert classes == ["cat", "dog", "emu"]


def test_npz_without_classes_names_them_by_index(tmp_path):
    # the highest label is in the train split only: the test split must still see 4 classes
    write_npz(tmp_path / "t.npz", train_labels=np.array([0, 1, 3, 0, 1, 2]))
    _, _, classes = load_dataset(f"npz:{tmp_path / 't.npz'}", "test")
    assert classes == ["0", "1", "2", "3"]


def shared_subset() -> Path | None:
    candidates = [
        Path("/work/shared/data/cifar10_mini.npz"),
        Path(__file__).parents[2] / "shared/data/cifar10_mini.npz",
    ]
    spec = os.environ.get("VICREG_DATA", "")
    if spec.startswith("npz:"):
        candidates.insert(0, Path(spec[4:]))
    return next((path for path in candidates if path.is_file()), None)


@pytest.mark.skipif(shared_subset() is None, reason="shared cifar10_mini.npz not available")
def test_shared_cifar10_subset():
    images, labels, classes = load_dataset(f"npz:{shared_subset()}", "test")
    assert images.shape == (1017, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (1017,) and set(labels.tolist()) == set(range(10))
    assert classes[0] == "airplane" and classes[-1] == "truck"
    assert 80 < images.float().mean() < 170  # real photos, not blank


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


def write_png(path: Path, colour: tuple[int, int, int], size: int = 20) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def test_folder_flat_tree_holds_out_every_fifth_image(tmp_path):
    for index in range(5):
        write_png(tmp_path / "red" / f"{index}.png", (255, 0, 0))
        write_png(tmp_path / "blue" / f"{index}.jpg", (0, 0, 255))
    train_x, train_y, classes = load_dataset(f"folder:{tmp_path}", "train")
    test_x, test_y, _ = load_dataset(f"folder:{tmp_path}?size=16", "test")
    assert classes == ["blue", "red"]
    assert train_x.shape == (8, 3, 32, 32) and test_x.shape == (2, 3, 16, 16)
    assert train_y.tolist() == [0] * 4 + [1] * 4 and test_y.tolist() == [0, 1]
    assert train_x[train_y == 1][:, 0].min() > 250 and train_x[train_y == 1][:, 2].max() < 5  # red stays red


def test_folder_with_train_and_test_dirs(tmp_path):
    write_png(tmp_path / "train" / "a" / "0.png", (10, 20, 30))
    write_png(tmp_path / "train" / "b" / "0.png", (40, 50, 60))
    write_png(tmp_path / "test" / "a" / "0.png", (70, 80, 90))
    images, labels, classes = load_dataset(f"folder:{tmp_path}", "test")
    assert classes == ["a"] and labels.tolist() == [0]
    assert images[0, :, 0, 0].tolist() == [70, 80, 90]
    assert load_dataset(f"folder:{tmp_path}", "train")[0].shape[0] == 2


def test_default_spec_reads_env(monkeypatch):
    monkeypatch.delenv("VICREG_DATA", raising=False)
    assert default_data_spec() == "cifar10"
    monkeypatch.setenv("VICREG_DATA", "synthetic:20")
    assert default_data_spec() == "synthetic:20"
    assert load_dataset()[0].shape[0] == 20


@pytest.mark.parametrize(
    "spec, split, message",
    [
        ("imagenet", "train", "malformed data spec 'imagenet'"),
        ("npz:", "train", "malformed data spec"),
        ("synthetic:ten", "train", "malformed data spec 'synthetic:ten'"),
        ("synthetic", "validation", "unknown split 'validation'"),
        ("npz:/no/such/file.npz", "train", "does not exist"),
        ("folder:/no/such/folder", "train", "does not exist"),
    ],
)
def test_bad_specs(spec, split, message):
    with pytest.raises(DataSpecError, match=message) as info:
        load_dataset(spec, split)
    assert isinstance(info.value, ValueError)


def test_npz_missing_arrays(tmp_path):
    write_npz(tmp_path / "t.npz", test_images=None)
    with pytest.raises(DataSpecError, match=r"lacks array\(s\) \['test_images'\].*synthetic"):
        load_dataset(f"npz:{tmp_path / 't.npz'}", "test")
    assert load_dataset(f"npz:{tmp_path / 't.npz'}", "train")[0].shape[0] == 6


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train_images": np.zeros((6, 8, 8, 3), dtype=np.float32)}, "expected uint8"),
        ({"train_images": np.zeros((6, 3, 8, 8), dtype=np.uint8)}, r"expected uint8 \(N, H, W, 3\)"),
        ({"train_labels": np.zeros(5, dtype=np.int64)}, "expected integers of shape"),
        ({"train_labels": np.zeros(6, dtype=np.float32)}, "expected integers"),
    ],
)
def test_npz_wrong_shape_or_dtype(tmp_path, overrides, message):
    write_npz(tmp_path / "t.npz", **overrides)
    with pytest.raises(DataSpecError, match=message):
        load_dataset(f"npz:{tmp_path / 't.npz'}", "train")


def test_not_an_npz(tmp_path):
    (tmp_path / "t.npz").write_text("hello")
    with pytest.raises(DataSpecError, match="cannot read"):
        load_dataset(f"npz:{tmp_path / 't.npz'}")


def test_folder_errors(tmp_path):
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataSpecError, match="no images"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(DataSpecError, match=r"\?size=S"):
        load_dataset(f"folder:{tmp_path}?width=3")
    write_png(tmp_path / "c" / "0.png", (1, 2, 3))
    (tmp_path / "c" / "1.png").write_text("not a png")
    with pytest.raises(DataSpecError, match="cannot read image"):
        load_dataset(f"folder:{tmp_path}")


def test_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    """No network: the download raises midway, after writing a partial file."""
    from torchvision import datasets

    def failing_download(self):
        (Path(self.root) / "partial.tar.gz").write_bytes(b"half")
        raise OSError("network unreachable")

    monkeypatch.setattr(datasets.CIFAR10, "download", failing_download)
    root = tmp_path / "root"
    with pytest.raises(DataSpecError, match=r"could not download.*'cifar10'.*network unreachable.*npz:"):
        load_dataset("cifar10", "train", root=root)
    assert list(root.iterdir()) == []  # the temporary download folder was removed


def test_successful_download_is_moved_into_place(tmp_path, monkeypatch):
    """A fake download that writes a tiny CIFAR-10 batch folder: it ends up in root, scratch removed."""
    import pickle

    from torchvision import datasets

    def fake_download(self):
        folder = Path(self.root) / self.base_folder
        folder.mkdir()
        batch = {"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251, "labels": [3, 7]}
        for name, _ in self.train_list + self.test_list:
            (folder / name).write_bytes(pickle.dumps(batch))
        (folder / self.meta["filename"]).write_bytes(
            pickle.dumps({"label_names": [f"c{k}" for k in range(10)]})
        )

    monkeypatch.setattr(datasets.CIFAR10, "download", fake_download)
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda *args: True)  # fake files, fake md5s
    images, labels, classes = load_dataset("cifar10", "test", root=tmp_path)
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [3, 7] and classes[3] == "c3"
    assert images[0, 0, 0, :3].tolist() == [0, 1, 2]  # CHW layout of the raw rows
    assert [p.name for p in tmp_path.iterdir()] == [datasets.CIFAR10.base_folder]
    assert load_dataset("cifar10", "train", root=tmp_path)[0].shape == (
        10,
        3,
        32,
        32,
    )  # 5 batches, no download


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
