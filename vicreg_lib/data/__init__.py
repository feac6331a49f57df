"""Image sets as tensors: images uint8 (N, 3, H, W), labels int64 (N,), class names (K,).

`load_dataset(spec, split, root)` reads one split; the spec says where the images come from:

    "cifar10", "cifar100"     torchvision's sets, downloaded into `root` on first use
    "npz:PATH"                train_images / test_images (N, H, W, 3) uint8, train_labels /
                              test_labels (N,), optional classes (K,)
    "folder:PATH[?size=S]"    PATH/train/<class>/ and PATH/test/<class>/, or PATH/<class>/ with
                              every 5th image held out for test; resized to S x S (default 32)
    "archive:PATH[?size=S]"   a .tar.gz/.tgz/.tar/.zip of train/<class>/ and test/<class>/ (at its
                              top or in one folder), unpacked once into `root`, splits cached decoded
    "synthetic[:N[,M]]"       class-structured 32x32 images made by code (N train, M test images)

Importing the package is cheap: torchvision and Pillow are imported only to read images.
"""

from .specs import default_data_root, default_data_spec, load_dataset
from .synthetic import make_synthetic
from .tensors import DataSpecError, LabelError, check_labels, fingerprint, random_subset

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per channel, in [0, 1]: what the views are normalised with
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

__all__ = ["load_dataset", "default_data_spec", "default_data_root", "make_synthetic", "DataSpecError",
           "LabelError", "check_labels", "fingerprint", "random_subset", "CIFAR10_MEAN", "CIFAR10_STD"]
