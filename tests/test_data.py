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
    assert classes == ["a", "b"] and labels.tolist() == [0]  # the train split's class list
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


# ----------------------------------------------------------------------------- archive: spec

ARCHIVE_COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def make_image_tree(folder: Path, per_class: dict[str, int] | None = None) -> None:
    """folder/train/<class>/i.png (2 per class) and folder/test/<class>/i.png (1 per class), one
    solid colour per class, 32x32 PNG (lossless, so pixels can be checked exactly)."""
    for split, count in (per_class or {"train": 2, "test": 1}).items():
        for name, colour in ARCHIVE_COLOURS.items():
            for index in range(count):
                write_png(folder / split / name / f"{index}.png", colour, size=32)


def make_archive(tmp_path: Path, name: str = "tiny.tar.gz", top: str | None = "tiny_jpeg") -> Path:
    """An archive of make_image_tree, inside one top folder (as cifar10_jpeg.tar.gz) or at its top."""
    import shutil

    tree = tmp_path / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    make_image_tree(tree / top if top else tree)
    archive = tmp_path / name
    if name.endswith(".zip"):
        import zipfile

        with zipfile.ZipFile(archive, "w") as bundle:
            for file in sorted(tree.rglob("*.png")):
                bundle.write(file, file.relative_to(tree).as_posix())
    else:
        import tarfile

        with tarfile.open(archive, "w:gz" if name.endswith("gz") else "w") as bundle:
            for entry in sorted(tree.iterdir()):
                bundle.add(entry, entry.name)
    return archive


def visible(root: Path) -> list[str]:
    """The folders a later load could use (hidden ones are scratch space)."""
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


@pytest.mark.parametrize("name, top", [("tiny.tar.gz", "tiny_jpeg"), ("tiny.zip", None), ("tiny.tar", None)])
def test_archive_round_trip(tmp_path, name, top):
    archive, root = make_archive(tmp_path, name, top), tmp_path / "root"
    for split, count in (("train", 2), ("test", 1)):
        images, labels, classes = load_dataset(f"archive:{archive}", split, root=root)
        assert classes == ["cat", "dog", "emu"]
        assert images.shape == (3 * count, 3, 32, 32) and images.dtype == torch.uint8
        assert labels.tolist() == [k for k in range(3) for _ in range(count)]
        for image, label in zip(images, labels):
            assert image[:, 5, 7].tolist() == list(ARCHIVE_COLOURS[classes[label]])
    assert len(visible(root)) == 1 and visible(root)[0].startswith("tiny-")
    small, _, _ = load_dataset(f"archive:{archive}?size=8", "test", root=root)
    assert small.shape == (3, 3, 8, 8) and small[0, :, 4, 4].tolist() == list(ARCHIVE_COLOURS["cat"])


def test_archive_is_unpacked_once_decoded_once_and_again_when_replaced(tmp_path, monkeypatch):
    from vicreg_lib import data

    archive, root = make_archive(tmp_path), tmp_path / "root"
    first = load_dataset(f"archive:{archive}", "train", root=root)
    folder = root / visible(root)[0]

    def forbidden(*args, **kwargs):
        raise AssertionError("unpacked or decoded a second time")

    with monkeypatch.context() as patch:
        patch.setattr(data, "_extract", forbidden)
        patch.setattr(data, "decode_images", forbidden)
        again = load_dataset(f"archive:{archive}", "train", root=root)
    assert all(torch.equal(a, b) for a, b in zip(first[:2], again[:2])) and first[2] == again[2]
    # a cache file that is not what was written is decoded afresh, not trusted
    (root / f".{folder.name}.decoded" / "train-32-labels.npy").write_bytes(b"garbage")
    with monkeypatch.context() as patch:
        patch.setattr(data, "_extract", forbidden)
        assert torch.equal(load_dataset(f"archive:{archive}", "train", root=root)[1], first[1])

    # the same name, new contents: unpacked into a new folder
    import tarfile

    extra = tmp_path / "extra"
    make_image_tree(extra / "tiny_jpeg", {"train": 4, "test": 1})
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(extra / "tiny_jpeg", "tiny_jpeg")
    assert load_dataset(f"archive:{archive}", "train", root=root)[0].shape[0] == 12
    assert len(visible(root)) == 2


def bmp_archive(path: Path, colour: tuple[int, int, int]) -> Path:
    """An uncompressed tar of 32x32 BMPs (fixed-size files): another colour gives another archive
    of exactly the same size."""
    import io
    import tarfile

    from PIL import Image

    with tarfile.open(path, "w") as bundle:
        for member in ("train/a/0.bmp", "train/b/0.bmp", "test/a/0.bmp", "test/b/0.bmp"):
            data = io.BytesIO()
            Image.new("RGB", (32, 32), colour).save(data, format="BMP")
            info = tarfile.TarInfo(member)
            info.size, info.mtime = len(data.getvalue()), 0
            bundle.addfile(info, io.BytesIO(data.getvalue()))
    return path


def test_a_replaced_archive_of_the_same_name_size_and_mtime_is_unpacked_afresh(tmp_path):
    archive, root = bmp_archive(tmp_path / "same.tar", (200, 0, 0)), tmp_path / "root"
    assert load_dataset(f"archive:{archive}", "train", root=root)[0][0, :, 0, 0].tolist() == [200, 0, 0]
    before = os.stat(archive)
    bmp_archive(archive, (0, 0, 200))
    os.utime(archive, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(archive).st_size == before.st_size and os.stat(archive).st_mtime_ns == before.st_mtime_ns
    assert load_dataset(f"archive:{archive}", "train", root=root)[0][0, :, 0, 0].tolist() == [0, 0, 200]


def test_decoded_caches_shipped_inside_an_archive_are_never_used(tmp_path):
    import tarfile

    make_image_tree(tmp_path / "tree")
    fake_images = np.zeros((6, 3, 32, 32), dtype=np.uint8)  # what an old-style cache at the top would pose as
    fake_labels = np.zeros(6, dtype=np.int64)
    for folder in (tmp_path / "tree", tmp_path / "tree" / "train"):
        np.save(folder / ".decoded-train-32-images.npy", fake_images)
        np.save(folder / ".decoded-train-32-labels.npy", fake_labels)
        np.save(folder / "train-32-images.npy", fake_images)
        np.save(folder / "train-32-labels.npy", fake_labels)
    archive = tmp_path / "shipped.tar"
    with tarfile.open(archive, "w") as bundle:
        for entry in sorted((tmp_path / "tree").iterdir()):
            bundle.add(entry, entry.name)
    images, labels, classes = load_dataset(f"archive:{archive}", "train", root=tmp_path / "root")
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert images[:, :, 5, 7].tolist() == [list(ARCHIVE_COLOURS[classes[k]]) for k in labels]


def test_a_read_only_data_root_loads_without_caching_and_says_so(tmp_path):
    from support import read_only

    archive, root = make_archive(tmp_path), tmp_path / "root"
    root.mkdir()
    expected = None
    with read_only(root):  # nothing unpacked there yet
        with pytest.warns(UserWarning, match=r"data root .* is read-only.*without caching"):
            expected = load_dataset(f"archive:{archive}", "train", root=root)
    assert expected[0].shape == (6, 3, 32, 32) and visible(root) == []
    load_dataset(f"archive:{archive}", "test", root=root)  # unpacked there, the test split cached
    with read_only(root):  # a shared root another user unpacked into: the train split cannot be cached
        with pytest.warns(UserWarning, match=r"cannot cache the decoded 'train' images"):
            images, labels, _ = load_dataset(f"archive:{archive}", "train", root=root)
    assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])


def test_interrupted_unpacking_leaves_nothing_a_later_load_uses(tmp_path, monkeypatch):
    import tarfile

    archive, root = make_archive(tmp_path), tmp_path / "root"
    real_extract, calls = tarfile.TarFile.extract, []

    def interrupted_extract(self, member, *args, **kwargs):
        calls.append(member.name)
        if len(calls) == 6:  # some folders and images are on disk by now
            raise KeyboardInterrupt
        return real_extract(self, member, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(tarfile.TarFile, "extract", interrupted_extract)
        with pytest.raises(KeyboardInterrupt):
            load_dataset(f"archive:{archive}", "train", root=root)
    assert len(calls) == 6 and list(root.iterdir()) == []  # the half-unpacked scratch folder is gone
    assert load_dataset(f"archive:{archive}", "train", root=root)[0].shape[0] == 6

    # a truncated archive fails mid-way the same way, with one clear error
    cut = tmp_path / "cut.tar"
    uncompressed = make_archive(tmp_path, "whole.tar", None).read_bytes()
    cut.write_bytes(uncompressed[: len(uncompressed) // 2])
    with pytest.raises(DataSpecError, match=r"cannot unpack .*cut\.tar.*tar tzf"):
        load_dataset(f"archive:{cut}", "train", root=tmp_path / "root2")
    assert list((tmp_path / "root2").iterdir()) == []


def test_stale_unpacking_folder_of_a_killed_process_is_removed(tmp_path):
    archive, root = make_archive(tmp_path), tmp_path / "root"
    stale, fresh = root / ".tiny-0.unpacking-abc", root / ".tiny-0.unpacking-def"
    for leftover in (stale, fresh):
        (leftover / "train").mkdir(parents=True)
    os.utime(stale, (0, 0))
    load_dataset(f"archive:{archive}", "test", root=root)
    assert not stale.exists() and fresh.exists()  # a fresh one may be another process at work


@pytest.mark.parametrize("member", ["../evil.png", "/tmp/evil.png", "link"])
def test_unsafe_archive_members_are_refused(tmp_path, member):
    import io
    import tarfile

    archive, root = tmp_path / "evil.tar", tmp_path / "root"
    make_image_tree(tmp_path / "tree")
    with tarfile.open(archive, "w") as bundle:
        bundle.add(tmp_path / "tree" / "train", "train")  # safe members first: refused mid-way
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            bundle.addfile(info)
        else:
            info.size = 4
            bundle.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(DataSpecError, match=rf"unsafe member '{member}'"):
        load_dataset(f"archive:{archive}", "train", root=root)
    assert list(root.iterdir()) == [] and not (tmp_path / "evil.png").exists()


def test_bad_archives(tmp_path):
    root = tmp_path / "root"
    (tmp_path / "text.tar.gz").write_text("not an archive")
    with pytest.raises(DataSpecError, match=r"cannot unpack .*text\.tar\.gz"):
        load_dataset(f"archive:{tmp_path / 'text.tar.gz'}", root=root)
    with pytest.raises(DataSpecError, match=r"'images\.rar' is not a \.tar\.gz.*folder:"):
        load_dataset(f"archive:{tmp_path / 'images.rar'}", root=root)
    with pytest.raises(DataSpecError, match="does not exist"):
        load_dataset(f"archive:{tmp_path / 'missing.tgz'}", root=root)
    import tarfile

    make_image_tree(tmp_path / "flat")
    with tarfile.open(tmp_path / "flat.tgz", "w:gz") as bundle:  # class folders without train/ and test/
        bundle.add(tmp_path / "flat" / "train", "images")
    with pytest.raises(DataSpecError, match=r"no train/ and test/ folders.*\['images'\]"):
        load_dataset(f"archive:{tmp_path / 'flat.tgz'}", root=root)
    with pytest.raises(DataSpecError, match=r"\?size=S, e\.g\. archive:"):
        load_dataset(f"archive:{tmp_path / 'flat.tgz'}?width=3", root=root)


def test_folder_images_of_the_right_size_are_not_resized(tmp_path, monkeypatch):
    from PIL import Image

    make_image_tree(tmp_path)
    for name, colour in ARCHIVE_COLOURS.items():  # BMP: read by Pillow, not torchvision
        Image.new("RGB", (32, 32), colour).save(tmp_path / "train" / name / "2.bmp")
    monkeypatch.setattr(Image.Image, "resize", lambda *args, **kwargs: pytest.fail("pointless resize"))
    images, labels, _ = load_dataset(f"folder:{tmp_path}", "train")
    assert images.shape == (9, 3, 32, 32) and images[2, :, 0, 0].tolist() == list(ARCHIVE_COLOURS["cat"])
    monkeypatch.undo()
    assert load_dataset(f"folder:{tmp_path}?size=16", "train")[0].shape == (9, 3, 16, 16)


# ----------------------------------------------------------------------------- labels, empty spec, hashes


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"classes": np.array(["cat", "dog"])},
         r"train_labels: 2 label\(s\) outside 0\.\.1 for 2 classes \(e\.g\. 2\)"),
        ({"train_labels": np.array([0, 1, -1, 0, 1, 2])}, r"outside 0\.\.2 .*\(e\.g\. -1\)"),
        ({"train_labels": np.zeros((6, 1), dtype=np.int64)}, "expected integers of shape"),
        ({"train_labels": np.zeros(6, dtype=bool)}, "train_labels is bool .* expected integers"),
    ],
)
def test_bad_labels_are_refused_at_load_naming_the_file(tmp_path, overrides, message):
    write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataSpecError, match=message) as info:
        load_dataset(f"npz:{tmp_path / 'bad.npz'}", "train")
    assert str(tmp_path / "bad.npz") in str(info.value)


def test_check_labels():
    from vicreg_lib.data import check_labels

    check_labels(torch.tensor([0, 2, 1]), 3, 3, "here")  # fine: no error
    check_labels(np.array([], dtype=np.int32), 3, 0, "here")
    for labels, message in (
        (torch.tensor([0, 3, 1]), r"here: 1 label\(s\) outside 0\.\.2 for 3 classes \(e\.g\. 3\)"),
        (torch.tensor([0.0, 1.0, 2.0]), "here: labels are torch.float32, expected integers"),
        (torch.tensor([0, 1]), r"here: labels have shape \(2,\), expected \(3,\)"),
    ):
        with pytest.raises(DataSpecError, match=message):
            check_labels(labels, 3, 3, "here")


def test_empty_spec_is_an_error_and_none_the_default(monkeypatch):
    monkeypatch.setenv("VICREG_DATA", "synthetic:20")
    for spec in ("", "  "):
        with pytest.raises(DataSpecError, match=r"empty data spec.*npz:PATH.*None for the default"):
            load_dataset(spec, "train")
    assert load_dataset(None, "train")[0].shape[0] == 20


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


# ----------------------------------------------------------------------------- classes by name, odd data


def make_split_tree(folder: Path, train: str, test: str, size: int = 8) -> None:
    """folder/{train,test}/<class>/0.png, one solid colour per class name (the same in both splits)."""
    colours = {"a": (250, 0, 0), "b": (0, 250, 0), "c": (0, 0, 250), "d": (250, 250, 0)}
    for split, names in (("train", train), ("test", test)):
        for name in names:
            write_png(folder / split / name / "0.png", colours[name], size=size)


def tar_of(folder: Path, archive: Path) -> Path:
    import tarfile

    with tarfile.open(archive, "w:gz") as bundle:
        for entry in sorted(folder.iterdir()):
            bundle.add(entry, entry.name)
    return archive


@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_test_classes_are_matched_to_train_classes_by_name(tmp_path, kind):
    make_split_tree(tmp_path / "tree", train="abc", test="ac")
    spec = f"folder:{tmp_path / 'tree'}" if kind == "folder" else f"archive:{tar_of(tmp_path / 'tree', tmp_path / 't.tgz')}"
    _, _, train_classes = load_dataset(spec, "train", root=tmp_path / "root")
    images, labels, classes = load_dataset(spec, "test", root=tmp_path / "root")
    assert classes == train_classes == ["a", "b", "c"]
    by_label = {classes[label]: image[:, 0, 0].tolist() for image, label in zip(images, labels)}
    assert by_label == {"a": [250, 0, 0], "c": [0, 0, 250]}  # c's images keep c's label, not b's


@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_test_classes_that_train_lacks_are_refused_by_name(tmp_path, kind):
    make_split_tree(tmp_path / "tree", train="ab", test="abd")
    spec = f"folder:{tmp_path / 'tree'}" if kind == "folder" else f"archive:{tar_of(tmp_path / 'tree', tmp_path / 't.tgz')}"
    with pytest.raises(DataSpecError, match=r"class folder\(s\) \['d'\] that the train split lacks"):
        load_dataset(spec, "test", root=tmp_path / "root")


def test_a_single_class_warns_naming_the_spec_and_split(tmp_path):
    make_split_tree(tmp_path, train="a", test="a")
    with pytest.warns(UserWarning, match=rf"folder:{tmp_path}'?: split 'train' has a single class \('a'\)"):
        load_dataset(f"folder:{tmp_path}", "train")


def test_images_of_mixed_sizes_warn_naming_a_file_of_each_size(tmp_path):
    make_split_tree(tmp_path, train="ab", test="ab")
    write_png(tmp_path / "train" / "b" / "1.png", (0, 250, 0), size=20)
    with pytest.warns(UserWarning, match=r"split 'train'.*images of 2 sizes.*8x8.*20x20 \('.*1\.png'\)") as seen:
        images, _, _ = load_dataset(f"folder:{tmp_path}?size=8", "train")
    assert images.shape == (3, 3, 8, 8) and len(seen) == 1


def test_npz_splits_of_different_sizes_or_an_empty_split_warn(tmp_path):
    path = tmp_path / "odd.npz"
    write_npz(path, test_images=np.zeros((3, 16, 16, 3), dtype=np.uint8))
    with pytest.warns(UserWarning, match=r"train_images are 8x8 but test_images 16x16"):
        load_dataset(f"npz:{path}", "train")
    write_npz(path, test_images=np.zeros((0, 8, 8, 3), dtype=np.uint8), test_labels=np.zeros(0, dtype=np.int64))
    with pytest.warns(UserWarning, match=rf"npz:{path}'?: split 'test' holds no images"):
        images, _, _ = load_dataset(f"npz:{path}", "test")
    assert images.shape[0] == 0


def test_folder_with_train_but_no_test_says_so(tmp_path):
    write_png(tmp_path / "train" / "a" / "0.png", (1, 2, 3))
    with pytest.raises(DataSpecError, match=r"has train/ but no test/ folder; add test/<class>/"):
        load_dataset(f"folder:{tmp_path}", "train")


def test_macos_resource_fork_files_are_skipped(tmp_path):
    make_split_tree(tmp_path, train="ab", test="ab")
    (tmp_path / "train" / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # not an image
    images, labels, _ = load_dataset(f"folder:{tmp_path}", "train")
    assert labels.tolist() == [0, 1]


@pytest.mark.parametrize("size", [32, 16])  # as stored (torchvision decodes it), resized (Pillow does)
def test_16_bit_grayscale_pngs_scale_to_8_bits(tmp_path, size):
    from PIL import Image

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    for split in ("train", "test"):
        for name in "ab":
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(ramp).save(tmp_path / split / name / "0.png")
    images, _, _ = load_dataset(f"folder:{tmp_path}?size={size}", "train")
    expected = ramp.astype(np.float64).mean() / 257  # about 127.5; clipping 16 bits to 8 gives about 254
    assert abs(images.double().mean().item() - expected) < 3
    assert images[0, 0, 0, 0] < 10 and images[0, 0, -1, -1] > 245


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


def test_a_plain_tar_cut_between_two_members_is_refused(tmp_path):
    import tarfile

    make_image_tree(tmp_path / "tree")
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w") as bundle:
        for entry in sorted((tmp_path / "tree").iterdir()):
            bundle.add(entry, entry.name)
    with tarfile.open(whole) as bundle:  # where the last test image's header starts: a member boundary
        cut = bundle.getmembers()[-1].offset
    (tmp_path / "cut.tar").write_bytes(whole.read_bytes()[:cut])
    with pytest.raises(DataSpecError, match=r"cut\.tar' stops after .* without tar's end-of-archive marker"):
        load_dataset(f"archive:{tmp_path / 'cut.tar'}", "test", root=tmp_path / "root")
    assert visible(tmp_path / "root") == []
    assert load_dataset(f"archive:{whole}", "test", root=tmp_path / "root")[0].shape[0] == 3
