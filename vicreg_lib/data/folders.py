"""Image trees: the folder: and archive: specs, class folders, decoding, unpacking archives safely.
An archive unpacks once into root/<stem>-<hash of its bytes>, via a hidden folder renamed when complete
(a folder that exists is whole). Decoded splits are cached beside it, never in it, so nothing an
archive ships can pose as a cache.
"""

import contextlib
import hashlib
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

from ..runstate import atomic_write
from .tensors import WAYS_OUT, DataSpecError, Loaded, check_labels

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
STALE_UNPACKING_S = 3600  # an unpacking folder untouched this long was left by a killed process


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
    return sorted(entry.name for entry in os.scandir(folder)
                  if entry.is_dir() and not entry.name.startswith(".") and entry.name != "__MACOSX")


def list_images(spec: str, class_root: Path, classes: list[str], split: str,
                hold_out: bool = False) -> tuple[list[Path], np.ndarray]:
    """Files of class_root/<class>/ and labels int64 (N,) indexing (train's) classes; hold_out: every 5th."""
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
    """Image files -> uint8 (N, 3, size, size), RGB; images of another size resized (bilinear), with a warning."""
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    sizes: dict[tuple[int, int], Path] = {}  # each original size, with its first file
    with warnings.catch_warnings():  # torchvision >= 0.29 deprecates its decoders for torchcodec
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.")
        for index, file in enumerate(files):
            images[index], original = _read_image(spec, file, size)
            sizes.setdefault(original, file)
    if len(sizes) > 1:
        examples = ", ".join(f"{h}x{w} ({str(file)!r})" for (h, w), file in list(sizes.items())[:3])
        warnings.warn(f"data spec {spec!r}, split {split!r}: images of {len(sizes)} sizes, e.g. {examples}; "
                      f"all are resized to {size}x{size}, which distorts some of them", stacklevel=3)
    return images


def _read_image(spec: str, file: Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """One file -> (uint8 (3, size, size), its (height, width)): torchvision (6x faster), else Pillow."""
    from torchvision.io import ImageReadMode, decode_image

    with contextlib.suppress(RuntimeError, ValueError, OSError):  # what torchvision cannot read: Pillow's
        data = torch.frombuffer(bytearray(file.read_bytes()), dtype=torch.uint8)
        image = decode_image(data, mode=ImageReadMode.RGB)
        if image.dtype == torch.uint16:  # 65535 // 257 = 255
            image = image.to(torch.int32).div(257, rounding_mode="floor").to(torch.uint8)
        if image.dtype == torch.uint8 and image.shape[1:] == (size, size):
            return image, (size, size)
    try:
        from PIL import Image

        with Image.open(file) as pil_image:
            original = (pil_image.height, pil_image.width)
            if pil_image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit gray: convert() would clip it
                gray = np.clip(np.round(np.asarray(pil_image, dtype=np.float64) / 257), 0, 255)
                pil_image = Image.fromarray(gray.astype(np.uint8))
            pil_image = pil_image.convert("RGB")
            if pil_image.size != (size, size):
                pil_image = pil_image.resize((size, size), Image.BILINEAR)
            return torch.from_numpy(np.array(pil_image)).permute(2, 0, 1), original
    except Exception as error:
        raise DataSpecError(f"data spec {spec!r}: cannot read image {str(file)!r} ({error})") from error


def load_archive(spec: str, path_text: str, size: int, split: str, root: Path) -> Loaded:
    archive = Path(path_text).expanduser()
    if not archive.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise DataSpecError(f"data spec {spec!r}: {archive.name!r} is not a {', '.join(ARCHIVE_SUFFIXES)} "
                            f"file; for an unpacked tree use folder:{path_text}")
    if not archive.is_file():
        raise DataSpecError(f"data spec {spec!r}: file {str(archive)!r} does not exist; {WAYS_OUT}")
    existing = next((folder for folder in [root, *root.parents] if folder.exists()), Path("."))
    cache = (root / _unpacked_name(archive)).is_dir() or os.access(existing, os.W_OK | os.X_OK)
    if not cache:
        warnings.warn(f"note: data root {str(root)!r} is read-only, so {str(archive)!r} is unpacked and "
                      "decoded on every load, without caching; set --data-root (VICREG_DATA_ROOT) to cache it",
                      stacklevel=3)
    with contextlib.nullcontext(root) if cache else tempfile.TemporaryDirectory(prefix="vicreg-") as where:
        unpacked = unpack_archive(archive, where)
        folders = [entry for entry in unpacked.iterdir()
                   if entry.is_dir() and not entry.name.startswith((".", "__MACOSX"))]
        split_root = next((folder for folder in [unpacked, *(folders if len(folders) == 1 else [])]
                           if (folder / "train").is_dir() and (folder / "test").is_dir()), None)
        if split_root is None:
            raise DataSpecError(f"data spec {spec!r}: the archive holds no train/ and test/ folders (at its top: "
                                f"{sorted(entry.name for entry in folders)}); for one without splits use folder:")
        classes = class_names(split_root / "train")
        cached = unpacked.parent / f".{unpacked.name}.decoded" / f"{split}-{size}.npz"
        with contextlib.suppress(Exception):  # absent (or not cached), unreadable, unsound: decoded afresh
            with np.load(cached) as arrays:
                images, labels = torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"])
            check_labels(labels, images.shape[0], "cached", len(classes))
            if images.dtype == torch.uint8 and images.shape[1:] == (3, size, size) and labels.dtype == torch.int64:
                return images, labels, classes
        files, labels = list_images(spec, split_root / split, classes, split)
        images = decode_images(spec, files, size, split)
    try:  # images and labels in one file, written whole or not at all
        if cache:
            atomic_write(cached, lambda handle: np.savez(handle, images=images.numpy(), labels=labels))
    except OSError as error:  # a read-only or full data root: the images are decoded, only not cached
        warnings.warn(f"note: cannot cache the decoded {split!r} images in {str(cached.parent)!r} "
                      f"({error.strerror or error}); they are decoded again on the next load", stacklevel=3)
    return images, torch.from_numpy(labels), classes


def unpack_archive(archive: Path, root: str | os.PathLike) -> Path:
    """Unpack into root/<stem>-<content hash> once; return it. Ctrl-C or a broken archive leave nothing used."""
    root = Path(root)
    final = root / _unpacked_name(archive)
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".*.unpacking-*"):  # left by killed processes
        with contextlib.suppress(OSError):  # another process removed it first
            if time.time() - leftover.stat().st_mtime > STALE_UNPACKING_S:
                shutil.rmtree(leftover, ignore_errors=True)
    scratch = root / f".{final.name}.unpacking-{os.urandom(6).hex()}"
    try:
        scratch.mkdir()  # not mkdtemp: its 0700 would make the data private
        _extract(archive, scratch)
        os.rename(scratch, final)
    except DataSpecError:
        raise
    except Exception as error:  # a broken or truncated archive, a full disk: the same advice
        if not final.is_dir():  # else another process unpacked the same archive first: use its copy
            raise DataSpecError(f"cannot unpack {str(archive)!r} into {str(root)!r} ({type(error).__name__}: "
                                f"{error}); check the file (tar tzf / unzip -l) or {WAYS_OUT}") from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # gone already after a successful rename
    return final


def _unpacked_name(archive: Path) -> str:
    digest = hashlib.blake2b(digest_size=10)
    with open(archive, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    suffix = next((s for s in ARCHIVE_SUFFIXES if archive.name.lower().endswith(s)), "")
    return f"{archive.name[:len(archive.name) - len(suffix)]}-{digest.hexdigest()}"


def _extract(archive: Path, destination: Path) -> None:
    """Extract member by member (Ctrl-C stops it), refusing absolute paths, '..', links and devices,
    and a tar without its end-of-archive marker (cut short, maybe exactly between two members)."""
    def check(name: str, is_file_or_dir: bool) -> None:
        path = PurePosixPath(name.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or not is_file_or_dir or name[1:2] == ":":
            raise DataSpecError(f"archive {str(archive)!r} holds an unsafe member {name!r} (an absolute path, "
                                "'..', a link or a device); nothing was unpacked. Repack it with plain files")

    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                check(info.filename, True)
                bundle.extract(info, destination)
        return
    # tarfile's "data" filter (Python >= 3.10.12 / 3.11.4) is a second guard on what is written
    safety = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archive, "r:*") as bundle:
        for member in bundle:  # streams: a .tar.gz is read once, front to back
            check(member.name, member.isfile() or member.isdir())
            bundle.extract(member, destination, **safety)
        bundle.fileobj.seek(bundle.offset)  # a tar cut between members reads without error, only shorter
        if bundle.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
            last = bundle.members[-1].name if bundle.members else "its start"
            raise DataSpecError(f"archive {str(archive)!r} stops after {last!r} without tar's end-of-archive "
                                "marker: it was cut short; nothing was unpacked. Download or copy it again")
