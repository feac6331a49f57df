"""The two-view augmentations of VICReg, per image (torchvision) and batched (tensor ops).

A recipe is two `ViewRecipe`s, one per branch (`RECIPES`: "blog", "paper", "fast"). Both apply

    random resized crop -> horizontal flip -> colour jitter (random op order) -> grayscale
    -> Gaussian blur -> solarize -> normalise with the CIFAR-10 mean/std

`two_views_transform(recipe)` per image (torchvision, for a DataLoader); `BatchAugment(recipe)` on a
whole batch (N, 3, H, W) with a few tensor ops, independent random parameters per image, any device.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vicreg_lib.data import CIFAR10_MEAN, CIFAR10_STD

# torchvision's rgb_to_grayscale weights (ITU-R 601 luma 0.299, 0.587, 0.114, red rounded as
# torchvision does) so that the two pipelines agree to float precision.
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)
SOLARIZE_THRESHOLD = 0.5  # half of the [0, 1] range
CROP_TRIES = 10  # RandomResizedCrop's rejection-sampling attempts before its centre-crop fallback


@dataclass(frozen=True)
class ViewRecipe:
    crop_scale: tuple[float, float] = (0.2, 1.0)  # crop area as a fraction of the image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w/h, sampled log-uniformly
    flip_p: float = 0.0
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 3  # ~10% of a 32-pixel image, as SimCLR sizes the kernel
    solarize_p: float = 0.0
    crop_interpolation: str = "bilinear"  # or "bicubic" (solo-learn's, and the official code's)

    def __post_init__(self) -> None:
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ViewRecipe.{name} = {getattr(self, name)} is not a probability in [0, 1]")
        if self.crop_interpolation not in ("bilinear", "bicubic"):
            raise ValueError(
                f"ViewRecipe.crop_interpolation = {self.crop_interpolation!r}: use 'bilinear' or 'bicubic'"
            )
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(
                f"ViewRecipe.blur_kernel = {self.blur_kernel} must be a positive odd number, e.g. 3"
            )


# The blog post's code (augustwester/vicreg, train.py, as of 89eab04): one pipeline for both views,
# RandomResizedCrop(32, scale 0.2-1) -> flip 0.5 -> ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8 ->
# grayscale 0.2 -> GaussianBlur(3) p 0.5 -> RandomSolarize(0.5) p 0.2 -> Normalize. Flip and
# grayscale are in every version of its train.py.
_BLOG_VIEW = ViewRecipe(
    crop_scale=(0.2, 1.0), flip_p=0.5, jitter_p=0.8, gray_p=0.2, blur_p=0.5, solarize_p=0.2
)

# The official VICReg augmentations (facebookresearch/vicreg, augmentations.py, after BYOL) at 32x32:
# - crop scale 0.2-1, not 0.08-1: 8% of a 32x32 image is a 9x9 patch with little left to recognise,
#   so CIFAR setups (the blog's code, solo-learn) use 0.2-1;
# - bilinear, not bicubic, crops: BatchAugment's one grid_sample then reproduces torchvision's resized
#   crop to float precision, so both pipelines give the same views (the tests hold them to it);
# - a 3x3 Gaussian kernel (~10% of 32 pixels, as SimCLR sizes it), sigma 0.1-2 (PIL's: no kernel size).
# View 1 always blurs, never solarizes; view 2 blurs with p 0.1, solarizes with p 0.2 (the official code).
_PAPER_VIEW = ViewRecipe(crop_scale=(0.2, 1.0), flip_p=0.5, jitter_p=0.8, gray_p=0.2)

# The augmentation of our `fast` preset: solo-learn's CIFAR recipe for VICReg
# (scripts/pretrain/cifar/vicreg.yaml), the same for both views: crop 0.2-1, flip 0.5,
# ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, no blur, solarize p 0.1.
_FAST_VIEW = ViewRecipe(
    crop_scale=(0.2, 1.0), flip_p=0.5, jitter_p=0.8, gray_p=0.2, blur_p=0.0, solarize_p=0.1
)
RECIPES: dict[str, tuple[ViewRecipe, ViewRecipe]] = {
    "blog": (_BLOG_VIEW, _BLOG_VIEW),
    "paper": (
        dataclasses.replace(_PAPER_VIEW, blur_p=1.0, solarize_p=0.0),
        dataclasses.replace(_PAPER_VIEW, blur_p=0.1, solarize_p=0.2),
    ),
    "fast": (_FAST_VIEW, _FAST_VIEW),
}


def get_recipe(recipe: str | tuple[ViewRecipe, ViewRecipe],
               crop_interpolation: str | None = None) -> tuple[ViewRecipe, ViewRecipe]:
    """A recipe name from RECIPES, or a pair of ViewRecipes passed through; ``crop_interpolation``
    ("bilinear" or "bicubic") replaces both views' when given."""
    if crop_interpolation is not None:
        return tuple(dataclasses.replace(view, crop_interpolation=crop_interpolation)
                     for view in get_recipe(recipe))
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {recipe!r}: use one of {sorted(RECIPES)}")
        return RECIPES[recipe]
    if isinstance(recipe, (tuple, list)) and len(recipe) == 2 and all(
            isinstance(v, ViewRecipe) for v in recipe):
        return recipe[0], recipe[1]
    raise ValueError(
        f"augmentation recipe must be a name in {sorted(RECIPES)} or a pair of ViewRecipe, got {recipe!r}"
    )


# ----------------------------------------------------------------------------- per image (torchvision)


def view_transform(view: ViewRecipe, size: int = 32):
    """The torchvision v2 pipeline of one view: image (PIL or uint8 (3, H, W)) -> float (3, size, size)."""
    from torchvision.transforms import v2

    brightness, contrast, saturation, hue = view.jitter
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, scale=view.crop_scale, ratio=view.crop_ratio, antialias=True,
                                 interpolation=v2.InterpolationMode(view.crop_interpolation)),
            v2.RandomHorizontalFlip(view.flip_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=view.jitter_p),
            v2.RandomGrayscale(view.gray_p),
            v2.RandomApply([v2.GaussianBlur(view.blur_kernel, sigma=view.blur_sigma)], p=view.blur_p),
            v2.RandomSolarize(SOLARIZE_THRESHOLD, p=view.solarize_p),
            v2.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )


class TransformedImages(torch.utils.data.Dataset):
    """uint8 images (n, 3, h, w) -> transform(image), one image per item (for a DataLoader)."""

    def __init__(self, images: torch.Tensor, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index])


class TwoViews:
    """image -> (transform1(image), transform2(image))."""

    def __init__(self, transform1, transform2) -> None:
        self.transform1, self.transform2 = transform1, transform2

    def __call__(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform1(image), self.transform2(image)

    def __repr__(self) -> str:
        return f"TwoViews(\n  view1={self.transform1},\n  view2={self.transform2})"


def two_views_transform(recipe: str | tuple[ViewRecipe, ViewRecipe] = "paper", size: int = 32) -> TwoViews:
    """Per-image transform for a DataLoader: image (PIL or uint8 (3, H, W)) -> two float (3, size, size)."""
    view1, view2 = get_recipe(recipe)
    return TwoViews(view_transform(view1, size), view_transform(view2, size))


# ----------------------------------------------------------------------------- batched building blocks


@functools.lru_cache(maxsize=None)
def _luma(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(LUMA_WEIGHTS, dtype=dtype).view(1, 3, 1, 1).to(device)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """x: (n, 3, h, w) -> luma (n, 1, h, w) = 0.2989 R + 0.587 G + 0.114 B."""
    return (x * _luma(x.device, x.dtype)).sum(1, keepdim=True)


def blend_with_gray(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """x: (n, 3, h, w); a, b, c: (n,) -> clamp(a x + b gray(x) + c mean(gray(x)), 0, 1) per image.

    Brightness, contrast and saturation are each one such blend; (1, 0, 0) is the identity."""
    gray = grayscale(x)  # (n, 1, h, w)
    mean = gray.mean(dim=(2, 3), keepdim=True)  # (n, 1, 1, 1)
    out = torch.addcmul(b.view(-1, 1, 1, 1) * gray, a.view(-1, 1, 1, 1), x)
    return out.addcmul_(c.view(-1, 1, 1, 1), mean).clamp_(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of x (n, 3, h, w) by `shift` (n,) turns, keeping saturation and value.

    RGB -> HSV -> RGB fused: with V = max, chroma C = max - min (= V S) and hue in sixths H6,
        H6 = (G - B)/C if R is the max, 2 + (B - R)/C if G is, else 4 + (R - G)/C,
        channel = V - C clamp(min(k, 4 - k), 0, 1),  k = (m + H6 + 6 shift) mod 6,  m = 5, 3, 1 for R, G, B.
    """
    red, green, blue = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    value = x.amax(1, keepdim=True)
    chroma = value - x.amin(1, keepdim=True)
    hue6 = torch.where(
        value == red,
        green - blue,
        torch.where(
            value == green, (blue - red).add_(chroma, alpha=2.0), (red - green).add_(chroma, alpha=4.0)
        ),
    )
    # grey pixels (C = 0) have numerator 0 and drop out below, any non-zero divisor will do
    hue6.div_(chroma.clamp_min(1e-12)).add_(6.0 * shift.view(-1, 1, 1, 1))
    m = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = (hue6 + m).remainder_(6.0)  # (n, 3, h, w)
    k = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return k.mul_(-chroma).add_(value)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """x: (n, c, h, w), sigma: (n,) -> x blurred with a per-image Gaussian, separable, reflect padding.

    Kernel w_t = exp(-t^2 / (2 sigma^2)) / sum, t = -k//2..k//2, as torchvision's. Each 1-D pass (width,
    then height) is a weighted sum of shifted copies, the symmetric taps t and -t added first; k is 3
    for 32x32 images. (A grouped conv2d would need a new oneDNN primitive for every batch size.)
    """
    n = x.shape[0]
    half = kernel_size // 2
    offsets = torch.arange(0, half + 1, device=x.device, dtype=x.dtype)
    weights = torch.exp(-0.5 * (offsets / sigma.to(x.dtype).view(-1, 1)) ** 2)  # (n, half + 1): taps 0..half
    weights = weights / (2 * weights.sum(1, keepdim=True) - weights[:, :1])  # the full kernel sums to 1
    weights = weights.view(n, half + 1, 1, 1, 1)
    for dim in (3, 2):  # width, then height
        size = x.shape[dim]
        padding = (half, half, 0, 0) if dim == 3 else (0, 0, half, half)
        padded = F.pad(x, padding, mode="reflect")
        x = padded.narrow(dim, half, size) * weights[:, 0]
        for t in range(1, half + 1):
            pair = padded.narrow(dim, half - t, size) + padded.narrow(dim, half + t, size)
            x.addcmul_(pair, weights[:, t])
    return x


@functools.lru_cache(maxsize=None)
def _pixel_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(h, w) as a tensor, the output pixel centres in normalised coordinates (h,) and (w,), and which
    of the axes (y, x) a flip mirrors."""
    dims = torch.tensor([h, w], dtype=dtype)
    v = (torch.arange(h, dtype=dtype) * 2 + 1) / h - 1
    u = (torch.arange(w, dtype=dtype) * 2 + 1) / w - 1
    return dims.to(device), v.to(device), u.to(device), torch.tensor([False, True], device=device)


def resized_crop_flip(x: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Crop box (n, 4) = (top, left, height, width) in pixels out of x (n, c, h, w), resize it back to
    (h, w), mirror it where flip (n,) is True: one affine map per image, sampled with F.grid_sample
    (``mode`` "bilinear" or "bicubic"). Bilinear matches torchvision's resized_crop + hflip (upsampling)
    to float precision; bicubic reads its 4x4 neighbourhood past the crop's edge where torchvision would
    repeat the edge, and is clamped to [0, 1] as PIL clamps its bicubic output.

    With align_corners=False, pixel edge p maps to normalised 2p/W - 1, so output coordinate u in [-1, 1]
    reads the input at  x_in = (2 left + width)/W - 1 + (width/W) u  (-(width/W) u when flipped), and
    likewise for y. The affine map is axis-aligned, so its sampling grid is the outer product of two 1-D
    coordinate vectors: built directly, it equals F.affine_grid's at a fraction of the cost.
    """
    n, _, h, w = x.shape
    box = box.to(x.dtype)
    start, size = box[:, :2], box[:, 2:]  # (n, 2) each: (top, left), (height, width)
    dims, steps_y, steps_x, axis_x = _pixel_grid(h, w, x.device, x.dtype)
    centre = (2 * start + size) / dims - 1  # (n, 2) in normalised coordinates
    scale = size / dims * torch.where(flip[:, None] & axis_x, -1.0, 1.0)  # mirrored x
    # keep samples inside the crop's outer pixel centres, as resizing the cropped image would
    lowest, highest = (2 * start + 1) / dims - 1, (2 * (start + size) - 1) / dims - 1
    grid_y, grid_x = (
        torch.addcmul(centre[:, i, None], scale[:, i, None], steps).clamp_(lowest[:, i, None], highest[:, i, None])
        for i, steps in enumerate((steps_y, steps_x))
    )  # (n, h), (n, w)
    grid = torch.stack((grid_x[:, None, :].expand(n, h, w), grid_y[:, :, None].expand(n, h, w)), -1)
    out = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    return out if mode == "bilinear" else out.clamp_(0.0, 1.0)


def _crop_constants(view_scale: tuple[float, float], view_ratio: tuple[float, float], height: int,
                    width: int) -> list[float]:
    """What _crop_boxes needs of one view: scale low and span, log-ratio low and span, and the
    fallback box's height and width (the whole image, narrowed to the nearest allowed aspect ratio)."""
    low, high = min(view_ratio), max(view_ratio)
    in_ratio = width / height
    fallback_h = round(width / low) if in_ratio < low else height
    fallback_w = round(height * high) if in_ratio > high else width
    log_low, log_high = math.log(view_ratio[0]), math.log(view_ratio[1])
    return [view_scale[0], view_scale[1] - view_scale[0], log_low, log_high - log_low, fallback_h, fallback_w]


def _crop_boxes(u: torch.Tensor, height: int, width: int, constants: torch.Tensor) -> torch.Tensor:
    """RandomResizedCrop's boxes from uniform draws u (n, 2 CROP_TRIES + 2) and _crop_constants (n, 6)
    -> (n, 4) int (top, left, height, width): the first of CROP_TRIES candidates (area uniform in scale,
    log aspect ratio uniform) that fits, else the centre crop clamped to the ratio range."""
    scale_low, scale_span, log_low, log_span = constants[:, :4, None].unbind(1)  # (n, 1) each
    area = torch.addcmul(scale_low, scale_span, u[:, :CROP_TRIES]).mul_(height * width)  # (n, tries)
    aspect = torch.addcmul(log_low, log_span, u[:, CROP_TRIES:2 * CROP_TRIES]).exp_()
    sizes = torch.stack((area / aspect, area * aspect), 2).sqrt_().round_()  # (n, tries, 2): crop h, w
    limits = torch.tensor([height, width], dtype=sizes.dtype, device=sizes.device)
    fits = ((sizes > 0) & (sizes <= limits)).all(2)  # (n, tries)
    first = fits.int().argmax(1)  # argmax returns the first maximal index
    sizes = sizes[torch.arange(sizes.shape[0], device=sizes.device), first]  # (n, 2)
    any_fits = fits.any(1, keepdim=True)
    sizes = torch.where(any_fits, sizes, constants[:, 4:6])
    room = limits - sizes  # (n, 2)
    # position uniform over the valid offsets, as torch.randint(0, H - h + 1) does; the fallback is centred
    offsets = torch.where(any_fits, (u[:, -2:] * (room + 1)).floor_().minimum(room), room.div(2).floor_())
    return torch.cat((offsets, sizes), 1).long()


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                      generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """RandomResizedCrop's box sampling for n images at once -> (n, 4) int (top, left, height, width)."""
    u = torch.rand(n, 2 * CROP_TRIES + 2, device=device, generator=generator)
    constants = torch.tensor([_crop_constants(scale, ratio, height, width)], device=device)
    return _crop_boxes(u, height, width, constants)


# ----------------------------------------------------------------------------- batched augmentation

# The columns of one image's uniform draws (BatchAugment.sample_params draws them in one torch.rand call).
_CROP = slice(0, 2 * CROP_TRIES + 2)  # candidate areas, candidate aspect ratios, position
_COINS = slice(2 * CROP_TRIES + 2, 2 * CROP_TRIES + 7)  # flip, jitter, gray, blur, solarize
_FACTORS = slice(2 * CROP_TRIES + 7, 2 * CROP_TRIES + 11)  # brightness, contrast, saturation, hue
_ORDER = slice(2 * CROP_TRIES + 11, 2 * CROP_TRIES + 15)  # argsort -> a random order of the 4 jitter ops
_SIGMA = 2 * CROP_TRIES + 15
_DRAWS = 2 * CROP_TRIES + 16
COIN_KEYS = ("flipped", "jittered", "gray", "blurred", "solarized")
HUE = 3  # jitter op indices: 0 brightness, 1 contrast, 2 saturation, 3 hue


def _view_constants(view: ViewRecipe, height: int, width: int) -> list[float]:
    """The constants that turn one view's uniform draws into its parameters: _crop_constants (6), the
    five probabilities, the jitter factors' lows (4) and spans (4), sigma's low and span."""
    brightness, contrast, saturation, hue = view.jitter
    lows = [max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue]
    highs = [1 + brightness, 1 + contrast, 1 + saturation, hue]
    return [*_crop_constants(view.crop_scale, view.crop_ratio, height, width),
            view.flip_p, view.jitter_p, view.gray_p, view.blur_p, view.solarize_p,
            *lows, *(high - low for low, high in zip(lows, highs)),
            view.blur_sigma[0], view.blur_sigma[1] - view.blur_sigma[0]]


class BatchAugment(nn.Module):
    """Two augmented views of a batch, ``v1, v2[, (p1, p2)] = BatchAugment("paper")(images, generator=g,
    return_params=...)``. images: (n, 3, h, w) uint8 in 0..255 or float in [0, 1]; views: float32
    (n, 3, h, w), normalised. The parameters are drawn on the generator's device (else the images'),
    so a CPU generator gives the same views on CPU and GPU.

    Both views are one batch of 2n images and every op runs on all of it: an image that an op skips
    gets identity parameters (factor 1, shift 0, sigma ~0) or is kept by torch.where. So a call is a
    fixed, small number of tensor ops whatever the recipe, batch size or coin flips: no device wait.
    """

    def __init__(
        self,
        recipe: str | tuple[ViewRecipe, ViewRecipe] = "paper",
        mean: tuple[float, float, float] = CIFAR10_MEAN,
        std: tuple[float, float, float] = CIFAR10_STD,
    ):
        super().__init__()
        self.views = get_recipe(recipe)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._constants: dict[tuple, torch.Tensor] = {}  # (height, width, device) -> (2, 21) table
        self.blurs = any(view.blur_p > 0 for view in self.views)
        self.interpolations = {view.crop_interpolation for view in self.views}

    def extra_repr(self) -> str:
        return f"view1={self.views[0]},\nview2={self.views[1]}"

    def sample_params(self, n: int, height: int, width: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu", per_view: bool = True):
        """The parameters of 2n images (view 1's n, then view 2's n), from one torch.rand call: one dict,
        or with ``per_view`` two dicts of n rows each. crop_box (2n, 4) (top, left, h, w), crop_area and
        crop_aspect (2n,), flipped, jittered, gray, blurred, solarized (2n,) bool, jitter_factors (2n, 4)
        (brightness, contrast, saturation, hue), jitter_order (2n, 4) (a permutation of 0..3 per image),
        blur_sigma (2n,)."""
        u = torch.rand(2 * n, _DRAWS, device=device, generator=generator)
        key = (height, width, str(device))
        if key not in self._constants:
            self._constants[key] = torch.tensor([_view_constants(view, height, width) for view in self.views],
                                                device=device)
        constants = self._constants[key].repeat_interleave(n, 0)  # (2n, 21): each image's view constants
        box = _crop_boxes(u[:, _CROP], height, width, constants[:, :6])
        coins = u[:, _COINS] < constants[:, 6:11]  # (2n, 5)
        factor_low, factor_span, sigma = constants[:, 11:15], constants[:, 15:19], constants[:, 19:21]
        crop_h, crop_w = box[:, 2:].float().unbind(1)
        params = {
            "crop_box": box,
            "crop_area": crop_h * crop_w / (height * width),
            "crop_aspect": crop_w / crop_h,
            **dict(zip(COIN_KEYS, coins.unbind(1))),
            "jitter_factors": torch.addcmul(factor_low, factor_span, u[:, _FACTORS]),
            "jitter_order": u[:, _ORDER].argsort(1),  # a random permutation per image
            "blur_sigma": torch.addcmul(sigma[:, 0], sigma[:, 1], u[:, _SIGMA]),
        }
        return _halves(params, n) if per_view else params

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                return_params: bool = False):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"BatchAugment expects a batch of RGB images (n, 3, h, w), got shape "
                f"{tuple(images.shape)}; add a batch dimension with images[None] or convert to RGB"
            )
        if images.dtype == torch.uint8:
            x = images.float().div_(255.0)
        elif images.is_floating_point():
            x = images.float()
        else:
            raise ValueError(f"BatchAugment expects uint8 (0..255) or float (0..1) images, "
                             f"got {images.dtype}")
        n, _, height, width = x.shape
        param_device = generator.device if generator is not None else x.device
        params = self.sample_params(n, height, width, generator, param_device, per_view=False)
        if param_device != x.device:
            params = {key: value.to(x.device) for key, value in params.items()}
        views = self.apply(x.repeat(2, 1, 1, 1), params)  # (2n, 3, h, w): view 1's rows, then view 2's
        mean, std = self.mean.to(x.device), self.std.to(x.device)  # works without .to(device) on the module
        view1, view2 = views.sub_(mean).div_(std).split(n)
        return (view1, view2, _halves(params, n)) if return_params else (view1, view2)

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Augment x (2n, 3, h, w) float in [0, 1] with sample_params(per_view=False)'s -> (2n, 3, h, w)."""
        n = x.shape[0] // 2
        if len(self.interpolations) == 1:
            x = resized_crop_flip(x, params["crop_box"], params["flipped"], self.views[0].crop_interpolation)
        else:  # the two views resize differently: one grid_sample each
            x = torch.cat([resized_crop_flip(half, params["crop_box"][i * n:(i + 1) * n],
                                             params["flipped"][i * n:(i + 1) * n], view.crop_interpolation)
                           for i, (half, view) in enumerate(zip(x.split(n), self.views))])
        x = color_jitter(x, params["jittered"], params["jitter_factors"], params["jitter_order"])
        x = torch.where(params["gray"].view(-1, 1, 1, 1), grayscale(x).expand(-1, 3, -1, -1), x)
        if self.blurs:
            x = self._blur(x, params)
        solarize = params["solarized"].view(-1, 1, 1, 1) & (x >= SOLARIZE_THRESHOLD)
        return torch.where(solarize, 1.0 - x, x)

    def _blur(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        # an image that is not blurred gets sigma 0.01: its kernel's side taps, exp(-5000), are 0
        sigma = torch.where(params["blurred"], params["blur_sigma"], 0.01)
        kernels = {view.blur_kernel for view in self.views}
        if len(kernels) == 1:
            return gaussian_blur(x, sigma, kernels.pop())
        n = x.shape[0] // 2
        return torch.cat([gaussian_blur(half, s, view.blur_kernel)
                          for half, s, view in zip(x.split(n), sigma.split(n), self.views)])


def _halves(params: dict[str, torch.Tensor], n: int) -> tuple[dict[str, torch.Tensor], ...]:
    """One dict of 2n rows -> view 1's first n rows and view 2's last n."""
    return tuple({key: value[i * n:(i + 1) * n] for key, value in params.items()} for i in range(2))


def color_jitter(x: torch.Tensor, jittered: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """ColorJitter with per-image factors (n, 4) and op order (n, 4), where jittered (n,) is True.

    Brightness, contrast and saturation are each a clamped blend  clamp(a x + b gray(x) + c mean_gray(x), 0, 1):
    brightness (f, 0, 0), contrast (f, 0, 1 - f), saturation (f, 1 - f, 0), and (1, 0, 0) is the identity.
    So every image's four ops fit one fixed schedule of seven slots: three blends, the hue rotation, three
    blends. The blends before an image's hue go into the first slots, those after into the last, and the
    unused slots are identities. Seven whole-batch ops, whatever the orders drawn.
    """
    n = x.shape[0]
    hue_position = (order == HUE).int().argmax(1, keepdim=True)  # (n, 1)
    position = torch.arange(4, device=x.device)
    slot = torch.where(position < hue_position, position, position + 3 - hue_position)  # (n, 4): 3 is the hue
    f = factors.gather(1, order)  # (n, 4): each position's factor
    blend = (order != HUE) & jittered[:, None]
    a = torch.where(blend, f, 1.0)
    b = torch.where(blend & (order == 2), 1.0 - f, 0.0)
    c = torch.where(blend & (order == 1), 1.0 - f, 0.0)
    coefficients = torch.zeros(n, 7, 3, device=x.device).index_fill_(2, position[:1], 1.0)  # identities
    coefficients.scatter_(1, slot[:, :, None].expand(n, 4, 3), torch.stack((a, b, c), 2))  # (n, 7, 3)
    slots = coefficients.permute(1, 2, 0).reshape(7, 3, n, 1, 1, 1).unbind(0)  # 7 x (3, n, 1, 1, 1)
    for index, (a, b, c) in enumerate(slots):
        if index == HUE:
            x = torch.where(jittered.view(-1, 1, 1, 1), adjust_hue(x, factors[:, HUE]), x)
        else:
            x = blend_with_gray(x, a, b, c)
    return x
