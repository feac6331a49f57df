"""Image sets as tensors: images uint8 (N, 3, H, W), labels int64 (N,), class names (K,).

`load_dataset(spec, split, root)` reads one split (its docstring lists the specs); torchvision and
Pillow are imported only when images are read.
"""

from .specs import default_data_root, default_data_spec, load_dataset
from .synthetic import make_synthetic
from .tensors import DataSpecError, LabelError, check_labels, fingerprint, random_subset

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per channel, in [0, 1]: what the views are normalised with
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

__all__ = ["load_dataset", "default_data_spec", "default_data_root", "make_synthetic", "DataSpecError",
           "LabelError", "check_labels", "fingerprint", "random_subset", "CIFAR10_MEAN", "CIFAR10_STD"]
