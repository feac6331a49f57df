"""folder: specs and what archive: shares with them: class folders matched by name, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import ARCHIVE_COLOURS, make_image_tree, make_split_tree, tar_of, write_png

from vicreg_lib.data import DataSpecError, load_dataset


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
