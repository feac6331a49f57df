"""load_dataset: parsing a spec, CIFAR through torchvision, npz files, the warnings on odd data."""

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
        Path(__file__).parents[3] / "shared/data/cifar10_mini.npz",
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
        ({"train_labels": np.zeros(5, dtype=np.int64)}, r"one label per sample \(6\), got shape \(5,\)"),
        ({"train_labels": np.zeros(6, dtype=np.float32)}, "must be integer class ids"),
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


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"classes": np.array(["cat", "dog"])},
         r"train_labels go up to 2 but there are only 2 classes .*classes array"),
        ({"train_labels": np.array([0, 1, -1, 0, 1, 2])}, r"train_labels must be >= 0, got -1"),
        ({"train_labels": np.zeros((6, 1), dtype=np.int64)}, r"got shape \(6, 1\)"),
        ({"train_labels": np.zeros(6, dtype=bool)}, "train_labels must be integer class ids, got dtype torch.bool"),
    ],
)
def test_bad_labels_are_refused_at_load_naming_the_file(tmp_path, overrides, message):
    write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataSpecError, match=message) as info:
        load_dataset(f"npz:{tmp_path / 'bad.npz'}", "train")
    assert str(tmp_path / "bad.npz") in str(info.value)


def test_empty_spec_is_an_error_and_none_the_default(monkeypatch):
    monkeypatch.setenv("VICREG_DATA", "synthetic:20")
    for spec in ("", "  "):
        with pytest.raises(DataSpecError, match=r"empty data spec.*npz:PATH.*None for the default"):
            load_dataset(spec, "train")
    assert load_dataset(None, "train")[0].shape[0] == 20


def test_npz_splits_of_different_sizes_or_an_empty_split_warn(tmp_path):
    path = tmp_path / "odd.npz"
    write_npz(path, test_images=np.zeros((3, 16, 16, 3), dtype=np.uint8))
    with pytest.warns(UserWarning, match=r"train_images are 8x8 but test_images 16x16"):
        load_dataset(f"npz:{path}", "train")
    write_npz(path, test_images=np.zeros((0, 8, 8, 3), dtype=np.uint8), test_labels=np.zeros(0, dtype=np.int64))
    with pytest.warns(UserWarning, match=rf"npz:{path}'?: split 'test' holds no images"):
        images, _, _ = load_dataset(f"npz:{path}", "test")
    assert images.shape[0] == 0


def test_odd_npz_arrays_are_one_line_errors_or_load(tmp_path):
    path = tmp_path / "odd.npz"
    write_npz(path, train_labels=np.array([0, 1, 2, 0, 1, 2], dtype=np.uint64))
    assert load_dataset(f"npz:{path}", "train")[1].tolist() == [0, 1, 2, 0, 1, 2]
    write_npz(path, train_labels=np.array([0, 1, 2, 0, 1, 2**64 - 1], dtype=np.uint64))
    with pytest.raises(DataSpecError, match=r"train_labels holds values beyond int64"):
        load_dataset(f"npz:{path}", "train")
    write_npz(path, classes=np.array("abc"))
    with pytest.raises(DataSpecError, match=r"array classes has shape \(\), expected \(K,\)"):
        load_dataset(f"npz:{path}", "train")
    write_npz(path, train_images=np.zeros((6, 1, 1, 3), dtype=np.uint8))
    with pytest.raises(DataSpecError, match=r"split 'train' has 1x1 images.*at least 4x4"):
        load_dataset(f"npz:{path}", "train")
