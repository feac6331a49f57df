"""Image trees: the folder: spec, the <class>/ folders archive: shares, and decoding images."""

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .tensors import WAYS_OUT, DataSpecError, Loaded

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_folder(spec: str, path_text: str, size: int, split: str) -> Loaded:
    """PATH/train/<class>/ and PATH/test/<class>/ are the splits; with PATH/<class>/ only, every
    5th image of a class (by name) is the test split and the rest train."""
    path = Path(path_text).expanduser()
    if not path.is_dir():
        raise DataSpecError(f"data spec {spec!r}: folder {str(path)!r} does not exist; {WAYS_OUT}")
    has_train, has_test = (path / "train").is_dir(), (path / "test").is_dir()
    if has_train != has_test:
        there, absent = ("train", "test") if has_train else ("test", "train")
        raise DataSpecError(f"data spec {spec!r}: {str(path)!r} has {there}/ but no {absent}/ folder; add "
                            f"{absent}/<class>/ beside it, or move the class folders to the top")
    classes = class_names(path / "train" if has_train else path)
    files, labels = list_images(spec, path / split if has_train else path, classes, split, not has_train)
    return decode_images(spec, files, size, split), torch.from_numpy(labels), classes


def class_names(folder: Path) -> list[str]:
    """The class folders, sorted; hidden ones (.name) and macOS's __MACOSX are not classes."""
    return sorted(entry.name for entry in os.scandir(folder)
                  if entry.is_dir() and not entry.name.startswith(".") and entry.name != "__MACOSX")


def list_images(spec: str, class_root: Path, classes: list[str], split: str,
                hold_out: bool = False) -> tuple[list[Path], np.ndarray]:
    """Image files of class_root/<class>/, sorted, with labels int64 (N,): the folder's index in
    ``classes`` (train's), so splits agree by name. Hidden files (macOS's ._x.jpg) are skipped.
    hold_out: every 5th image of a class is the test split, the others train."""
    found = class_names(class_root)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataSpecError(f"data spec {spec!r}: {str(class_root)!r} has class folder(s) {unknown} that the "
                            f"train split lacks (its classes: {classes}); rename, add to train/ or remove them")
    files, labels = [], []
    for name in found:
        names = sorted(entry.name for entry in os.scandir(class_root / name)
                       if entry.is_file() and not entry.name.startswith(".")
                       and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS)
        names = [file for i, file in enumerate(names) if not hold_out or (i % 5 == 4) == (split == "test")]
        files += [class_root / name / file for file in names]
        labels += [classes.index(name)] * len(names)
    if not files:
        raise DataSpecError(f"data spec {spec!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) for split "
                            f"{split!r} under {str(class_root)!r}; expected <class>/*.png folders there")
    return files, np.asarray(labels, dtype=np.int64)


def decode_images(spec: str, files: list[Path], size: int, split: str) -> torch.Tensor:
    """Image files -> uint8 (N, 3, size, size): RGB, 16 bits scaled to 8, other sizes resized
    (bilinear, antialiased) with a warning that names a file of each size."""
    from torchvision.transforms.v2.functional import resize

    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    sizes: dict[tuple[int, int], Path] = {}  # each original size, with its first file
    with warnings.catch_warnings():  # torchvision >= 0.29 deprecates its decoders for torchcodec
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.")
        for index, file in enumerate(files):
            image = _read_image(spec, file)
            sizes.setdefault(tuple(image.shape[1:]), file)
            if image.dtype != torch.uint8:  # 16 bits: 65535 // 257 = 255
                image = image.to(torch.int32).div(257, rounding_mode="floor").clamp(0, 255).to(torch.uint8)
            if image.shape[1:] != (size, size):
                image = resize(image, [size, size], antialias=True)
            images[index] = image
    if len(sizes) > 1:
        examples = ", ".join(f"{h}x{w} ({str(file)!r})" for (h, w), file in list(sizes.items())[:3])
        warnings.warn(f"data spec {spec!r}, split {split!r}: images of {len(sizes)} sizes, e.g. {examples}; "
                      f"all are resized to {size}x{size}, which distorts some of them", stacklevel=3)
    return images


def _read_image(spec: str, file: Path) -> torch.Tensor:
    """One file -> RGB (3, H, W), uint8 or wider for 16 bits. torchvision decodes PNG and JPEG (a
    32x32 JPEG 6x faster than Pillow); Pillow the rest, 16-bit gray unclipped (convert() whitens it)."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(torch.frombuffer(bytearray(file.read_bytes()), dtype=torch.uint8),
                            mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError, OSError):
        pass  # a format or bit depth torchvision does not read, or a broken file: Pillow says which
    try:
        from PIL import Image

        with Image.open(file) as pil_image:
            if pil_image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grayscale
                return torch.from_numpy(np.array(pil_image, dtype=np.int32)).expand(3, -1, -1)
            return torch.from_numpy(np.array(pil_image.convert("RGB"))).permute(2, 0, 1)
    except Exception as error:
        raise DataSpecError(f"data spec {spec!r}: cannot read image {str(file)!r} ({error})") from error
