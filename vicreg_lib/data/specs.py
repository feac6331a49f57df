"""Parse a data spec and load one split: the dispatch, the checks every split gets, CIFAR and npz."""

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .folders import load_archive, load_folder
from .synthetic import load_synthetic
from .tensors import WAYS_OUT, DataSpecError, LabelError, Loaded, check_labels

MIN_IMAGE_SIDE = 4  # the blur's padding and the crops need a few pixels


def default_data_spec() -> str:
    return os.environ.get("VICREG_DATA", "") or "cifar10"


def default_data_root() -> str:
    return os.environ.get("VICREG_DATA_ROOT", "") or "data"


def load_dataset(spec: str | None = None, split: str = "train", root: str | os.PathLike | None = None) -> Loaded:
    """One split: images uint8 (N, 3, H, W), labels int64 (N,) in 0..K-1, class names (K,).

    spec (None: default_data_spec(); an empty string is an error) says where the images come from:
        "cifar10", "cifar100"     torchvision's sets, downloaded into `root` on first use
        "npz:PATH"                train_images / test_images (N, H, W, 3) uint8, train_labels /
                                  test_labels (N,), optional classes (K,)
        "folder:PATH[?size=S]"    PATH/train/<class>/ and PATH/test/<class>/, or PATH/<class>/ with
                                  every 5th image held out for test; resized to S x S (default 32)
        "archive:PATH[?size=S]"   a .tar.gz/.tgz/.tar/.zip of train/<class>/ and test/<class>/ (at its
                                  top or in one folder), unpacked once into `root`, splits cached decoded
        "synthetic[:N[,M]]"       class-structured 32x32 images made by code (N train, M test images)
    root None: default_data_root(). Every failure is one DataSpecError naming the spec and a way out.
    """
    if spec is not None and not spec.strip():
        raise DataSpecError(f"empty data spec {spec!r}: pass one, e.g. cifar10, npz:PATH, archive:PATH, "
                            "folder:PATH or synthetic, or None for the default (env VICREG_DATA, else cifar10)")
    spec = default_data_spec() if spec is None else spec
    root = Path(default_data_root() if root is None else root)
    if split not in ("train", "test"):
        raise DataSpecError(f"unknown split {split!r} for data spec {spec!r}: use one of ('train', 'test')")
    kind, _, arg = spec.partition(":")
    if kind in ("cifar10", "cifar100") and not arg:
        loaded = _load_cifar(kind, split, root)
    elif kind == "npz" and arg:
        loaded = _load_npz(spec, Path(arg).expanduser(), split)
    elif kind in ("folder", "archive") and arg:
        path_text, _, query = arg.partition("?")
        key, _, value = query.partition("=")
        if query and (key != "size" or not value.isdigit() or int(value) < 1):
            raise DataSpecError(f"data spec {spec!r}: unknown option {query!r}; the only option is ?size=S, e.g. "
                                f"{kind}:{path_text}?size=64")
        size = int(value) if query else 32
        loaded = (load_folder(spec, path_text, size, split) if kind == "folder"
                  else load_archive(spec, path_text, size, split, root))
    elif kind == "synthetic":
        loaded = load_synthetic(spec, arg, split)
    else:
        raise DataSpecError(f"malformed data spec {spec!r}: expected cifar10, cifar100, npz:PATH, folder:PATH"
                            f"[?size=S], archive:PATH[?size=S] or synthetic[:N[,M]]; {WAYS_OUT}")
    (num_images, _, height, width), classes = loaded[0].shape, loaded[2]
    where = f"data spec {spec!r}: split {split!r}"
    if min(height, width) < MIN_IMAGE_SIDE:
        raise DataSpecError(f"{where} has {height}x{width} images; the augmentations need at least "
                            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} (folder: and archive: take ?size=32)")
    if num_images == 0:
        warnings.warn(f"{where} holds no images; add some, or evaluating on it will fail", stacklevel=2)
    if len(classes) == 1:
        warnings.warn(f"{where} has a single class ({classes[0]!r}): every classifier scores 100%", stacklevel=2)
    return loaded


def _load_cifar(name: str, split: str, root: Path) -> Loaded:
    """CIFAR-10/100, downloaded into a scratch folder moved into place once checked: Ctrl-C leaves nothing."""
    from torchvision import datasets

    dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        if not (root / dataset_class.base_folder).is_dir():
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=f".{name}-download-", dir=root) as scratch:
                dataset_class(scratch, train=split == "train", download=True)
                os.replace(Path(scratch) / dataset_class.base_folder, root / dataset_class.base_folder)
        dataset = dataset_class(str(root), train=split == "train", download=False)
    except Exception as error:  # network, disk, checksum: all end in the same advice
        raise DataSpecError(f"could not download or read data spec {name!r} into {str(root)!r} "
                            f"({type(error).__name__}: {error}); {WAYS_OUT}") from error
    images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(dataset.targets, dtype=torch.int64), list(dataset.classes)


def _load_npz(spec: str, path: Path, split: str) -> Loaded:
    """Arrays {split}_images (N, H, W, 3) uint8, {split}_labels (N,) integer, optional classes (K,)."""
    if not path.is_file():
        raise DataSpecError(f"data spec {spec!r}: file {str(path)!r} does not exist; {WAYS_OUT}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:
        raise DataSpecError(f"data spec {spec!r}: cannot read {str(path)!r} as .npz ({error})") from error
    image_key, label_key, at = f"{split}_images", f"{split}_labels", f"data spec {spec!r}:"
    other_key = f"{'test' if split == 'train' else 'train'}_images"
    missing = [key for key in (image_key, label_key) if key not in arrays]
    if missing:
        raise DataSpecError(f"{at} {str(path)!r} lacks array(s) {missing} (has {sorted(arrays)}); {WAYS_OUT}")
    images, labels, other = arrays[image_key], arrays[label_key], arrays.get(other_key)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataSpecError(f"{at} {image_key} is {images.dtype} {images.shape}, expected uint8 (N, H, W, 3): "
                            "(x * 255).round().astype(np.uint8), channels last")
    if labels.dtype.kind == "u":  # torch cannot check uint64: int64, when the values fit
        if labels.size and labels.max() > np.iinfo(np.int64).max:
            raise DataSpecError(f"{at} {label_key} holds values beyond int64 (up to {labels.max()})")
        labels = labels.astype(np.int64)
    if "classes" in arrays and arrays["classes"].ndim != 1:
        raise DataSpecError(f"{at} array classes has shape {arrays['classes'].shape}, expected (K,): names")
    if other is not None and other.ndim == 4 and other.shape[1:3] != images.shape[1:3]:
        warnings.warn(f"{at} {image_key} are {images.shape[1]}x{images.shape[2]} but {other_key} "
                      f"{other.shape[1]}x{other.shape[2]}; resize them to one size", stacklevel=3)
    # without names, classes are "0".."K-1", K counted over both splits so that they agree
    num_classes = max((int(arrays[key].max()) + 1 for key in ("train_labels", "test_labels")
                       if key in arrays and arrays[key].size), default=0)
    classes = [str(name) for name in arrays.get("classes", range(num_classes))]
    try:
        if images.shape[0] or labels.shape != (0,):  # an empty split loads, with load_dataset's warning
            check_labels(labels, images.shape[0], f"{at} {split}", len(classes))
    except LabelError as error:
        raise DataSpecError(f"{error} (in {str(path)!r}: fix them or its classes array)") from None
    images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(labels.astype(np.int64)), classes
