"""Load image sets as tensors: images uint8 (N, 3, H, W), labels int64 (N,), class names.

One entry point, `load_dataset(spec, split)`, where `spec` says where the images come from:

    "cifar10", "cifar100"      torchvision's data sets, downloaded into `root` on first use
    "npz:PATH"                 arrays train_images / test_images (N, H, W, 3) uint8,
                               train_labels / test_labels (N,), optional classes (K,)
    "folder:PATH[?size=S]"     an ImageFolder tree PATH/<class>/*.png|jpg (or PATH/train/<class>/
                               and PATH/test/<class>/), every image resized to S x S (default 32)
    "archive:PATH[?size=S]"    a .tar.gz / .tgz / .tar / .zip holding train/<class>/ and test/<class>/,
                               at its top or inside one folder (cifar10_jpeg/train/...): unpacked once
                               into `root`, its decoded splits cached there (see `unpack_archive`)
    "synthetic[:N[,M]]"        deterministic class-structured 32x32 images made by code
                               (N train / M test images, default 2000 / 500)

Every failure (no network, missing file, malformed spec or file, labels outside the class
list) is one `DataSpecError` that names the spec and the ways out. `fingerprint(*tensors)`
hashes loaded data, for caches that must notice when the data changes.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tarfile
import tempfile
import time
import warnings
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
SYNTHETIC_SIZES = (2000, 500)  # default (train, test) sizes of the synthetic set
MIN_IMAGE_SIDE = 4  # the blur's padding and the crops need a few pixels
STALE_UNPACKING_S = 3600  # an unpacking folder untouched this long was left by a killed process
WAYS_OUT = (
    "use VICREG_DATA=npz:/path/to/cifar10_mini.npz, "
    "archive:/path/to/cifar10_jpeg.tar.gz, folder:/path/to/images, or synthetic"
)


class DataSpecError(ValueError):
    """A data spec that cannot be loaded; the message names the spec and what to use instead."""


def default_data_spec() -> str:
    """The spec used when none is given: env VICREG_DATA, else "cifar10"."""
    return os.environ.get("VICREG_DATA", "") or "cifar10"


def default_data_root() -> str:
    """Where torchvision downloads and unpacked archives go: env VICREG_DATA_ROOT, else "data"."""
    return os.environ.get("VICREG_DATA_ROOT", "") or "data"


def load_dataset(
    spec: str | None = None, split: str = "train", root: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load one split of a data set.

    Returns images uint8 (N, 3, H, W), labels int64 (N,) in 0..K-1, class names list[str] (K,).
    spec None -> `default_data_spec()` (an empty string is an error, not the default);
    root None -> `default_data_root()`.
    """
    if spec is not None and not spec.strip():
        raise DataSpecError(
            f"empty data spec {spec!r}: pass one, e.g. cifar10, npz:PATH, archive:PATH, folder:PATH or "
            "synthetic, or None for the default (env VICREG_DATA, else cifar10)"
        )
    spec = default_data_spec() if spec is None else spec
    root = Path(default_data_root() if root is None else root)
    if split not in SPLITS:
        raise DataSpecError(f"unknown split {split!r} for data spec {spec!r}: use one of {SPLITS}")
    kind, _, arg = spec.partition(":")
    if kind in ("cifar10", "cifar100") and not arg:
        loaded = _load_torchvision_cifar(kind, split, root)
    elif kind == "npz" and arg:
        loaded = _load_npz(spec, Path(arg).expanduser(), split)
    elif kind == "folder" and arg:
        loaded = _load_folder(spec, arg, split)
    elif kind == "archive" and arg:
        loaded = _load_archive(spec, arg, split, root)
    elif kind == "synthetic":
        loaded = _load_synthetic(spec, arg, split)
    else:
        raise DataSpecError(
            f"malformed data spec {spec!r}: expected cifar10, cifar100, npz:PATH, folder:PATH[?size=S], "
            f"archive:PATH[?size=S] or synthetic[:N[,M]]; {WAYS_OUT}"
        )
    if min(loaded[0].shape[2:]) < MIN_IMAGE_SIDE:
        height, width = loaded[0].shape[2:]
        raise DataSpecError(f"data spec {spec!r}: split {split!r} has {height}x{width} images; the augmentations "
                            f"need at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}: use larger images (folder: and "
                            f"archive: take ?size=32)")
    _warn_if_odd(spec, split, loaded[0], loaded[2])
    return loaded  # labels are checked where they are read from a user's file (npz); the rest make them


def _warn_if_odd(spec: str, split: str, images: torch.Tensor, classes: list[str]) -> None:
    """Data that loads but makes the numbers meaningless: one class, or no images at all."""
    if images.shape[0] == 0:
        warnings.warn(f"data spec {spec!r}: split {split!r} holds no images; add some, or evaluation on it "
                      f"(kNN, linear probes) will fail", UserWarning, stacklevel=3)
    if len(classes) == 1:
        warnings.warn(f"data spec {spec!r}: split {split!r} has a single class ({classes[0]!r}): every "
                      f"classifier scores 100% on it; use data with several classes", UserWarning, stacklevel=3)


def check_labels(labels, num_classes: int, num_images: int, where: str) -> None:
    """Raise DataSpecError naming ``where`` unless labels (num_images,) are integers in
    0..num_classes-1. labels: a tensor or numpy array. Called when data is loaded, so that a bad
    label stops the run before training, not at the first evaluation."""
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise DataSpecError(f"{where}: labels are {labels.dtype}, expected integers 0..{num_classes - 1}")
    if tuple(labels.shape) != (num_images,):
        raise DataSpecError(
            f"{where}: labels have shape {tuple(labels.shape)}, expected ({num_images},), one per image"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise DataSpecError(
            f"{where}: {bad.numel()} label(s) outside 0..{num_classes - 1} for {num_classes} classes "
            f"(e.g. {bad[0].item()}); fix the labels or list every class"
        )


# ----------------------------------------------------------------------------- cifar (torchvision)


def random_subset(
    images: torch.Tensor, labels: torch.Tensor, size: int | None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of ``size`` images (N, 3, H, W) and their labels (N,), kept in the
    set's original order; all of them when ``size`` is None or not smaller than N."""
    if size is None or size >= images.shape[0]:
        return images, labels
    keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return images[keep], labels[keep]


def _load_torchvision_cifar(
    name: str, split: str, root: Path
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """CIFAR-10/100 via torchvision. A first use downloads into a temporary folder inside
    `root` and moves the extracted data into place only once it is complete and verified."""
    from torchvision import datasets

    dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    train = split == "train"
    final_dir = root / dataset_class.base_folder
    try:
        if not final_dir.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".{name}-download-", dir=root))
            try:
                dataset_class(str(scratch), train=train, download=True)  # download + extract + md5 check
                os.replace(scratch / dataset_class.base_folder, final_dir)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        dataset = dataset_class(str(root), train=train, download=False)
    except Exception as error:  # network, disk, checksum: all end in the same advice
        raise DataSpecError(
            f"could not download or read data spec {name!r} into {str(root)!r} ({type(error).__name__}: "
            f"{error}); {WAYS_OUT}"
        ) from error
    images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return images, labels, list(dataset.classes)


# ----------------------------------------------------------------------------- npz


def _load_npz(spec: str, path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Arrays {split}_images (N, H, W, 3) uint8 and {split}_labels (N,) integer, optional classes."""
    if not path.is_file():
        raise DataSpecError(f"data spec {spec!r}: file {str(path)!r} does not exist; {WAYS_OUT}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:
        raise DataSpecError(
            f"data spec {spec!r}: cannot read {str(path)!r} as .npz ({error}); {WAYS_OUT}"
        ) from error
    image_key, label_key = f"{split}_images", f"{split}_labels"
    missing = [key for key in (image_key, label_key) if key not in arrays]
    if missing:
        raise DataSpecError(
            f"data spec {spec!r}: {str(path)!r} lacks array(s) {missing} (has {sorted(arrays)}); "
            "an npz needs train_images/test_images (N, H, W, 3) uint8 and train_labels/test_labels (N,); "
            f"{WAYS_OUT}"
        )
    images, labels = arrays[image_key], arrays[label_key]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataSpecError(
            f"data spec {spec!r}: {image_key} is {images.dtype} {images.shape}, expected uint8 (N, H, W, 3); "
            f"convert it with (x * 255).round().astype(np.uint8) and channels last, or {WAYS_OUT}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (images.shape[0],):
        raise DataSpecError(
            f"data spec {spec!r}: {label_key} is {labels.dtype} {labels.shape}, expected integers of shape "
            f"({images.shape[0]},) matching {image_key}; {WAYS_OUT}"
        )
    if np.issubdtype(labels.dtype, np.unsignedinteger):
        if labels.size and labels.max() > np.iinfo(np.int64).max:
            raise DataSpecError(f"data spec {spec!r}: {label_key} holds values beyond int64 (up to {labels.max()}); "
                                f"labels must be class indices 0..K-1")
        labels = labels.astype(np.int64)  # torch has no uint64 to check them as
    _warn_other_split_size(spec, split, arrays)
    if "classes" in arrays:
        if arrays["classes"].ndim != 1:
            raise DataSpecError(f"data spec {spec!r}: array classes has shape {arrays['classes'].shape}, expected "
                                f"(K,): one name per class, e.g. np.array(['cat', 'dog'])")
        classes = [str(name) for name in arrays["classes"]]
    else:  # name classes "0".."K-1", K counted over both splits so train and test agree
        label_arrays = [arrays[key] for key in ("train_labels", "test_labels") if key in arrays]
        num_classes = max((int(y.max()) + 1 for y in label_arrays if y.size), default=0)
        classes = [str(k) for k in range(num_classes)]
    check_labels(labels, len(classes), images.shape[0], f"data spec {spec!r}: array {label_key}")
    image_tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return image_tensor, torch.from_numpy(labels.astype(np.int64)), classes


def _warn_other_split_size(spec: str, split: str, arrays: dict[str, np.ndarray]) -> None:
    """Train and test images of different sizes load, but a network trained on one size sees another."""
    other = SPLITS[1 - SPLITS.index(split)]
    mine, theirs = arrays[f"{split}_images"], arrays.get(f"{other}_images")
    if theirs is not None and theirs.ndim == 4 and theirs.shape[1:3] != mine.shape[1:3]:
        warnings.warn(f"data spec {spec!r}: {split}_images are {mine.shape[1]}x{mine.shape[2]} but {other}_images "
                      f"{theirs.shape[1]}x{theirs.shape[2]}; resize them to one size", UserWarning, stacklevel=4)


# ----------------------------------------------------------------------------- folder


def _parse_size_option(spec: str, arg: str) -> tuple[str, int]:
    """"PATH[?size=S]" -> (PATH, S), S = 32 when absent."""
    path_text, _, query = arg.partition("?")
    if not query:
        return path_text, 32
    key, _, value = query.partition("=")
    if key != "size" or not value.isdigit() or int(value) < 1:
        kind = spec.partition(":")[0]
        raise DataSpecError(
            f"data spec {spec!r}: unknown option {query!r}; the only option is ?size=S, e.g. "
            f"{kind}:{path_text}?size=64"
        )
    return path_text, int(value)


def _load_folder(spec: str, arg: str, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """An ImageFolder tree. With PATH/train and PATH/test those are the splits; with PATH/<class>/
    only, every 5th image of each class (sorted by name) is the test split, the rest train."""
    path_text, size = _parse_size_option(spec, arg)
    path = Path(path_text).expanduser()
    if not path.is_dir():
        raise DataSpecError(f"data spec {spec!r}: folder {str(path)!r} does not exist; {WAYS_OUT}")
    has_train, has_test = (path / "train").is_dir(), (path / "test").is_dir()
    if has_train != has_test:
        present, absent = ("train", "test") if has_train else ("test", "train")
        raise DataSpecError(
            f"data spec {spec!r}: {str(path)!r} has {present}/ but no {absent}/ folder; add "
            f"{absent}/<class>/ beside it, or put the class folders at the top (every 5th image is then held "
            f"out for testing)"
        )
    has_split_dirs = has_train and has_test
    class_root = path / split if has_split_dirs else path
    classes = class_names(path / "train") if has_split_dirs else class_names(path)
    files, labels = _list_image_folder(spec, class_root, classes)
    if not has_split_dirs:  # hold out every 5th image of each class
        keep = _every_fifth(labels, test=split == "test")
        files, labels = [files[i] for i in keep], labels[keep]
    if not files:
        raise DataSpecError(
            f"data spec {spec!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) found for split {split!r} under "
            f"{str(class_root)!r}; expected PATH/<class>/*.png or PATH/train/<class>/ and PATH/test/<class>/"
        )
    images = decode_images(spec, files, size, split)
    return torch.from_numpy(images), torch.from_numpy(labels), classes


def class_names(class_root: Path) -> list[str]:
    """The class folders of class_root, sorted by name. Hidden folders (.name) and macOS's
    __MACOSX are not classes."""
    return sorted(entry.name for entry in os.scandir(class_root)
                  if entry.is_dir() and not entry.name.startswith(".") and entry.name != "__MACOSX")


def _list_image_folder(spec: str, class_root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image files of class_root/<class>/ sorted by name -> files, labels int64 (N,), where a
    label is the position of the folder's name in ``classes`` (the train split's), so both splits
    label a class alike even when one lacks some classes. A class folder whose name ``classes``
    lacks is refused. Hidden files are skipped (macOS leaves ._name.jpg beside each image)."""
    found = class_names(class_root)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataSpecError(
            f"data spec {spec!r}: {str(class_root)!r} has class folder(s) {unknown} that the train split lacks "
            f"(its classes: {classes}); rename them to a train class, add them to train/, or remove them"
        )
    files: list[Path] = []
    labels: list[int] = []
    for name in found:
        names = sorted(entry.name for entry in os.scandir(class_root / name)
                       if entry.is_file() and not entry.name.startswith(".")
                       and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS)
        files += [class_root / name / file_name for file_name in names]
        labels += [classes.index(name)] * len(names)
    return files, np.asarray(labels, dtype=np.int64)


def _every_fifth(labels: np.ndarray, test: bool) -> np.ndarray:
    """Indices of the images that are (test) or are not (train) the 5th, 10th, ... of their class;
    labels (N,) sorted by class."""
    rank_in_class = np.arange(len(labels)) - np.searchsorted(labels, labels)  # 0, 1, ... within a class
    return np.flatnonzero((rank_in_class % 5 == 4) == test)


def decode_images(spec: str, files: list[Path], size: int, split: str = "") -> np.ndarray:
    """Decode image files into uint8 (N, 3, size, size), resizing only those of another size.

    torchvision's decoder reads a 32x32 JPEG about 6x faster than Pillow (some 15 against 85 us,
    the same pixels); Pillow reads what it cannot (other formats, a torchvision without its image
    decoders) and resizes (bilinear). 16-bit images are scaled to 8 bits. ``spec`` and ``split``
    name the data in errors, and in the warning that images of several sizes were found.
    """
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    sizes: dict[tuple[int, int], Path] = {}  # each original size, with its first file
    with warnings.catch_warnings():
        # torchvision >= 0.29 deprecates its decoders in favour of torchcodec; Pillow takes over
        # once they are gone, so the warning tells a user of this function nothing to do
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.")
        decode = _torchvision_decoder()
        for index, file in enumerate(files):
            images[index], original = _decode_image(spec, file, size, decode)
            sizes.setdefault(original, file)
    if len(sizes) > 1:
        examples = ", ".join(f"{h}x{w} ({str(file)!r})" for (h, w), file in list(sizes.items())[:3])
        warnings.warn(f"data spec {spec!r}{f', split {split!r}' if split else ''}: images of {len(sizes)} sizes, "
                      f"e.g. {examples}; all are resized to {size}x{size}, which distorts some of them",
                      UserWarning, stacklevel=3)
    return images


def _torchvision_decoder():
    """torchvision's decode_image as bytes (uint8 (B,)) -> uint8 or uint16 (3, H, W) RGB, or None without it."""
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return None
    return lambda data: decode_image(data, mode=ImageReadMode.RGB)


_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # Pillow's modes for 16-bit grayscale


def _pillow_rgb8(pil_image):
    """A Pillow image as 8-bit RGB; 16-bit grayscale scaled, not clipped (convert would make it white)."""
    from PIL import Image

    if pil_image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(pil_image, dtype=np.float64)
        pil_image = Image.fromarray(np.clip(np.round(values / 257), 0, 255).astype(np.uint8), mode="L")
    return pil_image.convert("RGB")


def _decode_image(spec: str, file: Path, size: int, decode) -> tuple[np.ndarray, tuple[int, int]]:
    """One image file -> (uint8 (3, size, size), its original (height, width)), by ``decode``
    (see _torchvision_decoder) or Pillow."""
    if decode is not None:
        try:
            image = decode(torch.frombuffer(bytearray(file.read_bytes()), dtype=torch.uint8))
            if image.dtype == torch.uint16:  # a 16-bit PNG: 65535 / 257 = 255
                image = torch.div(image.to(torch.int32), 257, rounding_mode="floor").to(torch.uint8)
            if image.dtype == torch.uint8 and tuple(image.shape) == (3, size, size):
                return image.numpy(), (size, size)
        except (RuntimeError, ValueError, OSError):
            pass  # a format or bit depth torchvision does not read, or a broken file: Pillow says which
    try:
        from PIL import Image

        with Image.open(file) as pil_image:
            original = (pil_image.height, pil_image.width)
            pil_image = _pillow_rgb8(pil_image)
            if pil_image.size != (size, size):
                pil_image = pil_image.resize((size, size), Image.BILINEAR)
            return np.asarray(pil_image).transpose(2, 0, 1), original
    except Exception as error:
        raise DataSpecError(f"data spec {spec!r}: cannot read image {str(file)!r} ({error})") from error


# ----------------------------------------------------------------------------- archive


def _load_archive(
    spec: str, arg: str, split: str, root: Path
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """An archive holding train/<class>/ and test/<class>/: unpacked once into ``root``, each
    split decoded once and cached beside the unpacked tree as .npy files."""
    path_text, size = _parse_size_option(spec, arg)
    archive = Path(path_text).expanduser()
    if not archive.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise DataSpecError(
            f"data spec {spec!r}: {archive.name!r} is not a {', '.join(ARCHIVE_SUFFIXES)} file; "
            f"for an unpacked tree use folder:{path_text}"
        )
    if not archive.is_file():
        raise DataSpecError(f"data spec {spec!r}: file {str(archive)!r} does not exist; {WAYS_OUT}")
    if (root / _unpacked_name(archive)).is_dir() or _writable(root):
        return _load_unpacked(spec, archive, root, split, size, cache=True)
    warnings.warn(f"note: data root {str(root)!r} is read-only, so {str(archive)!r} is unpacked into a temporary "
                  f"folder and decoded on every load, without caching; set --data-root (VICREG_DATA_ROOT) to a "
                  f"writable folder to cache it", UserWarning, stacklevel=3)
    with tempfile.TemporaryDirectory(prefix="vicreg-unpack-") as scratch:
        return _load_unpacked(spec, archive, Path(scratch), split, size, cache=False)


def _writable(root: Path) -> bool:
    """Whether root, or the nearest existing folder above it, can be written into."""
    existing = next((folder for folder in [root, *root.parents] if folder.exists()), Path("."))
    return os.access(existing, os.W_OK | os.X_OK)


def _load_unpacked(spec: str, archive: Path, root: Path, split: str, size: int,
                   cache: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One split of ``archive``, unpacked into ``root`` (once) and decoded (once, when caching)."""
    try:
        unpacked = unpack_archive(archive, root)
    except DataSpecError:
        raise
    except Exception as error:  # a broken or truncated archive, a full disk: the same advice
        raise DataSpecError(
            f"data spec {spec!r}: cannot unpack {str(archive)!r} into {str(root)!r} "
            f"({type(error).__name__}: {error}); check the file (tar tzf / unzip -l) or {WAYS_OUT}"
        ) from error
    split_root = _split_root(spec, unpacked)
    class_root, classes = split_root / split, class_names(split_root / "train")
    cached = _read_decoded(unpacked, split, size, len(classes)) if cache else None
    if cached is not None:
        return torch.from_numpy(cached[0]), torch.from_numpy(cached[1]), classes
    files, labels = _list_image_folder(spec, class_root, classes)
    if not files:
        raise DataSpecError(
            f"data spec {spec!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {str(class_root)!r} "
            f"unpacked from {str(archive)!r}; expected train/<class>/*.jpg and test/<class>/*.jpg"
        )
    images = decode_images(spec, files, size, split)
    if cache:
        _write_decoded(unpacked, split, size, images, labels)
    return torch.from_numpy(images), torch.from_numpy(labels), classes


def _decoded_paths(unpacked: Path, split: str, size: int) -> tuple[Path, Path]:
    """The cache files of one decoded split: images uint8 (N, 3, S, S) and labels int64 (N,).

    They live beside the unpacked tree, not in it: nothing an archive holds can pose as a cache
    (unpacking refuses members outside the tree).
    """
    folder = unpacked.parent / f".{unpacked.name}.decoded"
    return folder / f"{split}-{size}-images.npy", folder / f"{split}-{size}-labels.npy"


def _write_decoded(unpacked: Path, split: str, size: int, images: np.ndarray, labels: np.ndarray) -> None:
    from .runstate import atomic_write

    image_path, label_path = _decoded_paths(unpacked, split, size)
    try:
        # labels first: a reader needs both, so a crash between the two leaves no usable half
        atomic_write(label_path, lambda handle: np.save(handle, labels))
        atomic_write(image_path, lambda handle: np.save(handle, images))
    except OSError as error:  # a read-only or full data root: the images are decoded, only not cached
        warnings.warn(f"note: cannot cache the decoded {split!r} images in {str(image_path.parent)!r} "
                      f"({error.strerror or error}); they are decoded again on the next load", UserWarning,
                      stacklevel=4)


def _read_decoded(
    unpacked: Path, split: str, size: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (images, labels) of a split, or None when absent or not what was written."""
    image_path, label_path = _decoded_paths(unpacked, split, size)
    if not (image_path.is_file() and label_path.is_file()):
        return None
    try:
        images, labels = np.load(image_path), np.load(label_path)
    except (OSError, ValueError):
        return None
    sound = (
        images.dtype == np.uint8 and images.shape[1:] == (3, size, size)
        and labels.dtype == np.int64 and labels.shape == (images.shape[0],)
        and (labels.size == 0 or 0 <= labels.min() <= labels.max() < num_classes)
    )
    return (images, labels) if sound else None


def _split_root(spec: str, unpacked: Path) -> Path:
    """The folder holding train/ and test/: the archive's top, or its one top-level folder."""
    folders = [entry for entry in unpacked.iterdir()
               if entry.is_dir() and not entry.name.startswith((".", "__MACOSX"))]
    for candidate in [unpacked] + (folders if len(folders) == 1 else []):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    raise DataSpecError(
        f"data spec {spec!r}: the archive holds no train/ and test/ folders (its top level: "
        f"{sorted(entry.name for entry in folders)}); an archive: spec needs train/<class>/ and "
        "test/<class>/ at its top or inside one folder; for a tree without splits unpack it and use "
        "folder:PATH"
    )


def unpack_archive(archive: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Unpack a .tar.gz/.tgz/.tar/.zip into ``root`` once and return the folder it went into.

    The folder is ``root/<name>-<key>``, the key a hash of the archive's contents (``archive_key``),
    so a replaced archive is unpacked afresh however its name, size and modification time compare
    (the old folder can then be deleted). It is
    unpacked into a hidden sibling and renamed into place when complete, so a folder that exists is
    whole: an interrupted unpacking (Ctrl-C, a full disk, a broken archive) leaves nothing that a
    later call would use. Members with an absolute path, '..', or that are neither file nor folder
    (links, devices) are refused with a DataSpecError.
    """
    archive, root = Path(archive), Path(root)
    final = root / _unpacked_name(archive)
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_unpacking(root)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.unpacking-", dir=root))
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(scratch, 0o777 & ~mask)  # mkdtemp's 0700 would make the data private
        _extract(archive, scratch)
        try:
            os.rename(scratch, final)
        except OSError:
            if not final.is_dir():
                raise
            # another process unpacked the same archive first: use its copy
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # gone already after a successful rename
    return final


def archive_key(archive: Path) -> str:
    """A hash of the archive's bytes (20 hex digits): about 1 GB/s, some 20 ms for CIFAR-10 as JPEG."""
    digest = hashlib.blake2b(digest_size=10)
    with open(archive, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _unpacked_name(archive: Path) -> str:
    stem = next((archive.name[: -len(s)] for s in ARCHIVE_SUFFIXES if archive.name.lower().endswith(s)),
                archive.name)
    return f"{stem}-{archive_key(archive)}"


def _remove_stale_unpacking(root: Path) -> None:
    """Delete unpacking folders that a killed process left (untouched for STALE_UNPACKING_S)."""
    for leftover in root.glob(".*.unpacking-*"):
        try:
            if time.time() - leftover.stat().st_mtime > STALE_UNPACKING_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


def _unsafe_member(name: str, is_file_or_dir: bool) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or not is_file_or_dir or (name[1:2] == ":")


def _extract(archive: Path, destination: Path) -> None:
    """Extract every member of a tar or zip archive into destination, refusing unsafe members."""
    def refuse(name: str) -> DataSpecError:
        return DataSpecError(
            f"archive {str(archive)!r} holds an unsafe member {name!r} (an absolute path, '..', a link "
            "or a device); nothing was unpacked. Repack it with relative paths and plain files"
        )

    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                if _unsafe_member(info.filename, True):
                    raise refuse(info.filename)
                bundle.extract(info, destination)
        return
    # the "data" filter (Python >= 3.11.4 and backports) is a second guard on what is written
    safety = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archive, "r:*") as bundle:
        for member in bundle:  # streams: a .tar.gz is read once, front to back
            if _unsafe_member(member.name, member.isfile() or member.isdir()):
                raise refuse(member.name)
            bundle.extract(member, destination, **safety)
        if not _ends_with_marker(bundle):
            last = bundle.members[-1].name if bundle.members else "its start"
            raise DataSpecError(
                f"archive {str(archive)!r} stops after {last!r} without tar's end-of-archive marker: "
                "it was cut short (an interrupted download or copy?) and may lack images or whole classes; "
                "nothing was unpacked. Download or copy it again"
            )


def _ends_with_marker(bundle: tarfile.TarFile) -> bool:
    """Whether a read tar goes on with a zero block after its last member. A tar cut exactly between
    two members reads without any error, only shorter; this is how to tell."""
    bundle.fileobj.seek(bundle.offset)
    block = bundle.fileobj.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


# ----------------------------------------------------------------------------- synthetic


def _load_synthetic(spec: str, arg: str, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Parse "synthetic[:N[,M]]" and make the requested split."""
    sizes = list(SYNTHETIC_SIZES)
    if arg:
        parts = arg.split(",")
        if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise DataSpecError(
                f"malformed data spec {spec!r}: use synthetic, synthetic:N (N train, N//4 test "
                f"images) or synthetic:N,M (N train, M test images)"
            )
        sizes = [int(parts[0]), int(parts[1]) if len(parts) == 2 else max(1, int(parts[0]) // 4)]
    n = sizes[SPLITS.index(split)]
    images, labels = make_synthetic(n, seed=0 if split == "train" else 1)
    return images, labels, list(SYNTHETIC_CLASSES)


SYNTHETIC_CLASSES = tuple(f"pattern{k}" for k in range(10))


def make_synthetic(n: int, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """n class-structured colour images (n, 3, size, size) uint8 and labels (n,) int64.

    Class k is a sine grating with its own orientation (k * 18 degrees) and frequency
    (2, 3 or 4 cycles per image) blending two class colours, plus a random phase, a random
    brightness and pixel noise per image. Colour tells classes apart on raw pixels; the
    grating's orientation survives colour jitter and grayscale, so augmented views still
    carry the class.
    """
    generator = torch.Generator().manual_seed(seed)
    num_classes = len(SYNTHETIC_CLASSES)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=generator)]
    palette = torch.Generator().manual_seed(1234)  # fixed class colours, the same for every split
    colour_a = 0.15 + 0.7 * torch.rand(num_classes, 3, generator=palette)
    colour_b = 0.15 + 0.7 * torch.rand(num_classes, 3, generator=palette)
    angle = labels.float() * (math.pi / num_classes)
    frequency = (2 + labels % 3).float()
    phase = 2 * math.pi * torch.rand(n, generator=generator)
    coords = (torch.arange(size).float() + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (size, size) each
    along = x * angle.cos()[:, None, None] + y * angle.sin()[:, None, None]  # (n, size, size)
    blend = 0.5 + 0.5 * torch.sin(2 * math.pi * frequency[:, None, None] * along + phase[:, None, None])
    blend = blend[:, None]  # (n, 1, size, size)
    images = blend * colour_a[labels][:, :, None, None] + (1 - blend) * colour_b[labels][:, :, None, None]
    images = images * (0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator))
    images = images + 0.06 * torch.randn(n, 3, size, size, generator=generator)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels.to(torch.int64)


# ----------------------------------------------------------------------------- fingerprint


def fingerprint(*tensors: torch.Tensor | np.ndarray) -> str:
    """A short hash (16 hex digits) of the tensors' shapes, dtypes and contents, in order.

    For cache keys that must change when the data does (e.g. the same file path with new contents).
    blake2b over the raw bytes: about 1 GB/s, a fraction of a second for all of CIFAR-10.
    """
    digest = hashlib.blake2b(digest_size=8)
    for tensor in tensors:
        tensor = torch.as_tensor(tensor).detach()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)};".encode())
        raw = tensor.cpu().contiguous().reshape(-1).view(torch.uint8)  # any dtype, bfloat16 included
        digest.update(memoryview(raw.numpy()))
    return digest.hexdigest()
