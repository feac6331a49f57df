"""archive: specs: unpacked safely and once per content, decoded splits cached outside the tree."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from support import ARCHIVE_COLOURS, bmp_archive, make_archive, make_image_tree, visible

from vicreg_lib.data import DataSpecError, load_dataset


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
    from vicreg_lib.data import folders as data

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
    (root / f".{folder.name}.decoded" / "train-32.npz").write_bytes(b"garbage")
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
