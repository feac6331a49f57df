"""Load image sets as tensors: images uint8 (N, 3, H, W), labels int64 (N,), class names.

One entry point, `load_dataset(spec, split)`, where `spec` says where the images come from:

    "cifar10", "cifar100"      torchvision's data sets, downloaded into `root` on first use
    "npz:PATH"                 arrays train_images / test_images (N, H, W, 3) uint8,
                               train_labels / test_labels (N,), optional classes (K,)
    "folder:PATH[?size=S]"     an ImageFolder tree PATH/<class>/*.png|jpg (or PATH/train/<class>/
                               and PATH/test/<class>/), every image resized to S x S (default 32)
    "synthetic[:N[,M]]"        deterministic class-structured 32x32 images made by code
                               (N train / M test images, default 2000 / 500)

Every failure (no network, missing file, malformed spec or file) is one `DataSpecError`
that names the spec and the ways out.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SYNTHETIC_SIZES = (2000, 500)  # default (train, test) sizes of the synthetic set
WAYS_OUT = (
    "use VICREG_DATA=npz:/path/to/cifar10_mini.npz (e.g. ../shared/data/cifar10_mini.npz), "
    "folder:/path/to/images, or synthetic"
)


class DataSpecError(ValueError):
    """A data spec that cannot be loaded; the message names the spec and what to use instead."""


def default_data_spec() -> str:
    """The spec used when none is given: env VICREG_DATA, else "cifar10"."""
    return os.environ.get("VICREG_DATA", "") or "cifar10"


def default_data_root() -> str:
    """Where torchvision downloads go: env VICREG_DATA_ROOT, else "data"."""
    return os.environ.get("VICREG_DATA_ROOT", "") or "data"


def load_dataset(
    spec: str | None = None, split: str = "train", root: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load one split of a data set.

    Returns images uint8 (N, 3, H, W), labels int64 (N,), class names list[str] (K,).
    spec None -> `default_data_spec()`; root None -> `default_data_root()`.
    """
    spec = default_data_spec() if spec is None else spec
    root = Path(default_data_root() if root is None else root)
    if split not in SPLITS:
        raise DataSpecError(f"unknown split {split!r} for data spec {spec!r}: use one of {SPLITS}")
    kind, _, arg = spec.partition(":")
    if kind in ("cifar10", "cifar100") and not arg:
        return _load_torchvision_cifar(kind, split, root)
    if kind == "npz" and arg:
        return _load_npz(spec, Path(arg).expanduser(), split)
    if kind == "folder" and arg:
        return _load_folder(spec, arg, split)
    if kind == "synthetic":
        return _load_synthetic(spec, arg, split)
    raise DataSpecError(
        f"malformed data spec {spec!r}: expected cifar10, cifar100, npz:PATH, folder:PATH[?size=S] "
        f"or synthetic[:N[,M]]; {WAYS_OUT}"
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
    if "classes" in arrays:
        classes = [str(name) for name in arrays["classes"]]
    else:  # name classes "0".."K-1", K counted over both splits so train and test agree
        label_arrays = [arrays[key] for key in ("train_labels", "test_labels") if key in arrays]
        num_classes = max((int(y.max()) + 1 for y in label_arrays if y.size), default=0)
        classes = [str(k) for k in range(num_classes)]
    image_tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return image_tensor, torch.from_numpy(labels.astype(np.int64)), classes


# ----------------------------------------------------------------------------- folder


def _load_folder(spec: str, arg: str, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """An ImageFolder tree. With PATH/train and PATH/test those are the splits; with PATH/<class>/
    only, every 5th image of each class (sorted by name) is the test split, the rest train."""
    from PIL import Image

    path_text, _, query = arg.partition("?")
    size = 32
    if query:
        key, _, value = query.partition("=")
        if key != "size" or not value.isdigit() or int(value) < 1:
            raise DataSpecError(
                f"data spec {spec!r}: unknown option {query!r}; the only option is ?size=S, e.g. "
                f"folder:{path_text}?size=64"
            )
        size = int(value)
    path = Path(path_text).expanduser()
    if not path.is_dir():
        raise DataSpecError(f"data spec {spec!r}: folder {str(path)!r} does not exist; {WAYS_OUT}")
    has_split_dirs = (path / "train").is_dir() and (path / "test").is_dir()
    class_root = path / split if has_split_dirs else path
    classes = sorted(entry.name for entry in class_root.iterdir() if entry.is_dir())
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        class_files = sorted(f for f in (class_root / name).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not has_split_dirs:
            class_files = [f for index, f in enumerate(class_files) if (index % 5 == 4) == (split == "test")]
        files += [(f, label) for f in class_files]
    if not files:
        raise DataSpecError(
            f"data spec {spec!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) found for split {split!r} under "
            f"{str(class_root)!r}; expected PATH/<class>/*.png or PATH/train/<class>/ and PATH/test/<class>/"
        )
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for index, (file, _) in enumerate(files):
        try:
            with Image.open(file) as image:
                images[index] = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
        except Exception as error:
            raise DataSpecError(f"data spec {spec!r}: cannot read image {str(file)!r} ({error})") from error
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, classes


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
