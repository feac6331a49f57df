"""The two-view augmentations of VICReg, per image (torchvision) and batched (tensor ops).

A recipe is two `ViewRecipe`s, one per branch; `RECIPES` names three: "blog" (the blog post's code),
"paper" (the official code's, adapted to 32x32 images) and "fast" (solo-learn's CIFAR recipe, the
`fast` preset's). Both implementations apply, in this order:

    random resized crop -> horizontal flip -> colour jitter (random op order) -> grayscale
    -> Gaussian blur -> solarize -> normalise with the CIFAR-10 mean/std

`two_views_transform(recipe)` is the classic per-image torchvision pipeline for a DataLoader.
`BatchAugment(recipe)` does the same on a whole batch (N, 3, H, W) with a few batched tensor ops,
drawing independent random parameters for every image, on any device.
"""

from __future__ import annotations

import dataclasses
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
    """The augmentation of one branch: probabilities and ranges of each random op."""

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

    def __post_init__(self) -> None:
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ViewRecipe.{name} = {getattr(self, name)} is not a probability in [0, 1]")
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

# The official VICReg augmentations (facebookresearch/vicreg, augmentations.py, after BYOL), adapted to
# 32x32 images. It departs from the official code in three ways:
# - crop scale 0.2-1, not torchvision's default 0.08-1: a crop of 8% of a 32x32 image is a 9x9 patch
#   with little left to recognise, so CIFAR setups (the blog's code, solo-learn) use 0.2-1;
# - bilinear, not bicubic, interpolation of the crop: BatchAugment's one grid_sample reproduces
#   torchvision's bilinear resized crop to float precision, so the per-image and batched pipelines
#   give the same views (the tests hold them to it);
# - a 3x3 Gaussian kernel (about 10% of 32 pixels, as SimCLR sizes it) with sigma 0.1-2, where the
#   official code blurs with PIL (sigma 0.1-2, no kernel size).
# View 1 always blurs and never solarizes; view 2 blurs with p 0.1 and solarizes with p 0.2: the
# official code's asymmetry.
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


def get_recipe(recipe: str | tuple[ViewRecipe, ViewRecipe]) -> tuple[ViewRecipe, ViewRecipe]:
    """A recipe name from RECIPES, or a pair of ViewRecipes passed through."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {recipe!r}: use one of {sorted(RECIPES)}")
        return RECIPES[recipe]
    if (
        isinstance(recipe, (tuple, list))
        and len(recipe) == 2
        and all(isinstance(v, ViewRecipe) for v in recipe)
    ):
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
            v2.RandomResizedCrop(size, scale=view.crop_scale, ratio=view.crop_ratio, antialias=True),
            v2.RandomHorizontalFlip(view.flip_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=view.jitter_p),
            v2.RandomGrayscale(view.gray_p),
            v2.RandomApply([v2.GaussianBlur(view.blur_kernel, sigma=view.blur_sigma)], p=view.blur_p),
            v2.RandomSolarize(SOLARIZE_THRESHOLD, p=view.solarize_p),
            v2.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )


class TwoViews:
    """Apply two view transforms to one image: image -> (view1, view2)."""

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


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """x: (n, 3, h, w) -> luma (n, 1, h, w) = 0.2989 R + 0.587 G + 0.114 B."""
    r, g, b = LUMA_WEIGHTS
    return (x[:, 0:1] * r).add_(x[:, 1:2], alpha=g).add_(x[:, 2:3], alpha=b)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x: (n, 3, h, w), factor: (n,) -> clamp(b x, 0, 1)."""
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean luma: clamp(c x + (1 - c) mean(gray(x)), 0, 1)."""
    luma = torch.tensor(LUMA_WEIGHTS, device=x.device, dtype=x.dtype)
    mean = x.mean(dim=(2, 3)) @ luma  # (n,): the mean of the luma is the luma of the channel means
    factor = factor.view(-1, 1, 1, 1)
    return torch.addcmul(((1.0 - factor) * mean.view(-1, 1, 1, 1)), x, factor).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the per-pixel luma: clamp(s x + (1 - s) gray(x), 0, 1)."""
    factor = factor.view(-1, 1, 1, 1)
    return torch.addcmul(grayscale(x).mul_(1.0 - factor), x, factor).clamp_(0.0, 1.0)


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


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


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


def resized_crop_flip(x: torch.Tensor, box: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop box (n, 4) = (top, left, height, width) in pixels out of x (n, c, h, w), resize it back to
    (h, w) bilinearly, mirror it where flip (n,) is True: one affine map per image, sampled with
    F.grid_sample. Matches torchvision's resized_crop + hflip (bilinear, upsampling) to float precision.

    With align_corners=False, pixel edge p maps to normalised 2p/W - 1, so output coordinate u in [-1, 1]
    reads the input at  x_in = (2 left + width)/W - 1 + (width/W) u  (-(width/W) u when flipped), and
    likewise for y. The affine map is axis-aligned, so its sampling grid is the outer product of two 1-D
    coordinate vectors: built directly, it equals F.affine_grid's at a fraction of the cost.
    """
    n, _, h, w = x.shape
    top, left, height, width = box.to(x.dtype).unbind(1)
    u = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1  # (w,) output pixel centres
    v = (torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1  # (h,)
    x_scale = torch.where(flip, -width / w, width / w)
    grid_x = ((2 * left + width) / w - 1)[:, None] + x_scale[:, None] * u  # (n, w)
    grid_y = ((2 * top + height) / h - 1)[:, None] + (height / h)[:, None] * v  # (n, h)
    # keep samples inside the crop's outer pixel centres, as resizing the cropped image would
    grid_x = torch.minimum(
        torch.maximum(grid_x, ((2 * left + 1) / w - 1)[:, None]), ((2 * (left + width) - 1) / w - 1)[:, None]
    )
    grid_y = torch.minimum(
        torch.maximum(grid_y, ((2 * top + 1) / h - 1)[:, None]), ((2 * (top + height) - 1) / h - 1)[:, None]
    )
    grid = torch.stack((grid_x[:, None, :].expand(n, h, w), grid_y[:, :, None].expand(n, h, w)), -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """RandomResizedCrop's box sampling for n images at once -> (n, 4) int (top, left, height, width).

    Draw CROP_TRIES candidates per image (area uniform in scale, log aspect ratio uniform), keep the
    first that fits; images with none fall back to the centre crop clamped to the ratio range.
    """
    area = height * width
    target_area = area * torch.empty(n, CROP_TRIES, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, CROP_TRIES, device=device).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    aspect = torch.exp(log_ratio)
    crop_w = torch.round(torch.sqrt(target_area * aspect))
    crop_h = torch.round(torch.sqrt(target_area / aspect))
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = fits.int().argmax(1, keepdim=True)  # argmax returns the first maximal index
    crop_w = crop_w.gather(1, first).squeeze(1)
    crop_h = crop_h.gather(1, first).squeeze(1)
    # fallback: the whole image, narrowed to the nearest allowed aspect ratio
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = round(height * max(ratio)), height
    else:
        fallback_w, fallback_h = width, height
    any_fits = fits.any(1)
    crop_w = torch.where(any_fits, crop_w, torch.full_like(crop_w, fallback_w))
    crop_h = torch.where(any_fits, crop_h, torch.full_like(crop_h, fallback_h))
    # position uniform over the valid offsets, as torch.randint(0, H - h + 1) does
    u = torch.rand(n, 2, device=device, generator=generator)
    top = torch.floor(u[:, 0] * (height - crop_h + 1)).clamp_max(height - crop_h)
    left = torch.floor(u[:, 1] * (width - crop_w + 1)).clamp_max(width - crop_w)
    top = torch.where(any_fits, top, torch.div(height - crop_h, 2, rounding_mode="floor"))
    left = torch.where(any_fits, left, torch.div(width - crop_w, 2, rounding_mode="floor"))
    return torch.stack((top, left, crop_h, crop_w), 1).long()


# ----------------------------------------------------------------------------- batched augmentation


class BatchAugment(nn.Module):
    """Two augmented views of a whole batch, independent random parameters for every image.

        v1, v2 = BatchAugment("paper")(images, generator=g)            # images: (n, 3, h, w)
        v1, v2, (p1, p2) = BatchAugment("paper")(images, return_params=True)

    images: uint8 in 0..255 or float in [0, 1], on any device. Views: float32 (n, 3, h, w), normalised
    with the CIFAR-10 mean/std. The parameters are drawn on the generator's device (the images'
    device when no generator is given), so a CPU generator gives the same views on CPU and GPU.
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

    def extra_repr(self) -> str:
        return f"view1={self.views[0]},\nview2={self.views[1]}"

    def sample_params(
        self,
        n: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Draw the per-image parameters of both views: two dicts of (n,) or (n, k) tensors."""
        return tuple(sample_view_params(view, n, height, width, generator, device) for view in self.views)

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None, return_params: bool = False
    ):
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
            raise ValueError(
                f"BatchAugment expects uint8 (0..255) or float (0..1) images, got {images.dtype}"
            )
        n, _, height, width = x.shape
        param_device = generator.device if generator is not None else x.device
        params = self.sample_params(n, height, width, generator, param_device)
        params = tuple({key: value.to(x.device) for key, value in p.items()} for p in params)
        view1, view2 = (apply_view(x, p, view) for p, view in zip(params, self.views))
        mean, std = self.mean.to(x.device), self.std.to(x.device)  # works without .to(device) on the module
        view1 = view1.sub_(mean).div_(std)
        view2 = view2.sub_(mean).div_(std)
        return (view1, view2, params) if return_params else (view1, view2)


def sample_view_params(
    view: ViewRecipe,
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Per-image parameters of one view for n images of size (height, width).

    crop_box (n, 4) (top, left, h, w), crop_area and crop_aspect (n,), flipped (n,) bool,
    jittered (n,) bool, jitter_factors (n, 4) (brightness, contrast, saturation, hue),
    jitter_order (n, 4) (a permutation of 0..3 per image), gray, blurred (n,) bool, blur_sigma (n,),
    solarized (n,) bool.
    """

    def coin(p: float) -> torch.Tensor:
        return torch.rand(n, device=device, generator=generator) < p

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(n, device=device).uniform_(low, high, generator=generator)

    box = sample_crop_boxes(n, height, width, view.crop_scale, view.crop_ratio, generator, device)
    brightness, contrast, saturation, hue = view.jitter
    factors = torch.stack(
        (
            uniform(max(0.0, 1 - brightness), 1 + brightness),
            uniform(max(0.0, 1 - contrast), 1 + contrast),
            uniform(max(0.0, 1 - saturation), 1 + saturation),
            uniform(-hue, hue),
        ),
        1,
    )
    # a random permutation per image: argsort of uniform noise
    order = torch.rand(n, 4, device=device, generator=generator).argsort(1)
    return {
        "crop_box": box,
        "crop_area": (box[:, 2] * box[:, 3]).float() / (height * width),
        "crop_aspect": box[:, 3].float() / box[:, 2].float(),
        "flipped": coin(view.flip_p),
        "jittered": coin(view.jitter_p),
        "jitter_factors": factors,
        "jitter_order": order,
        "gray": coin(view.gray_p),
        "blurred": coin(view.blur_p),
        "blur_sigma": uniform(*view.blur_sigma),
        "solarized": coin(view.solarize_p),
    }


def _apply_to_rows(x: torch.Tensor, chosen: torch.Tensor, op, compute_all: bool | None = None) -> torch.Tensor:
    """x (n, 3, h, w) with ``op(rows_of_x, index)`` applied to the rows where ``chosen`` (n,) is True.

    ``index`` selects the matching rows of per-image parameters. On the CPU only the chosen rows
    are computed (finding them is free there); on an accelerator every row is computed and the
    chosen ones kept, because finding the rows (nonzero) would make the host wait for the device
    at every op, some 40 times a training step. ``compute_all`` overrides that choice (tests).
    """
    if compute_all is None:
        compute_all = x.device.type != "cpu"
    if not compute_all:
        rows = torch.nonzero(chosen).squeeze(1)
        if rows.numel():
            x.index_copy_(0, rows, op(x.index_select(0, rows), rows))
        return x
    return torch.where(chosen.view(-1, 1, 1, 1), op(x, slice(None)), x)


def apply_view(x: torch.Tensor, params: dict[str, torch.Tensor], view: ViewRecipe) -> torch.Tensor:
    """Augment x (n, 3, h, w) float in [0, 1] with the drawn params -> (n, 3, h, w) in [0, 1].

    Ops that only some images get run on those images only (``_apply_to_rows``).
    """
    x = resized_crop_flip(x, params["crop_box"], params["flipped"])
    # colour jitter: at each of the 4 positions, each op runs on the images whose order puts it there
    jittered, order, factors = params["jittered"], params["jitter_order"], params["jitter_factors"]
    for position in range(4):
        for op_index, op in enumerate(JITTER_OPS):
            x = _apply_to_rows(x, jittered & (order[:, position] == op_index),
                               lambda v, rows, op=op, k=op_index: op(v, factors[rows, k]))
    x = _apply_to_rows(x, params["gray"], lambda v, rows: grayscale(v).expand(-1, 3, -1, -1))
    sigma = params["blur_sigma"]
    x = _apply_to_rows(x, params["blurred"], lambda v, rows: gaussian_blur(v, sigma[rows], view.blur_kernel))
    return _apply_to_rows(x, params["solarized"],
                          lambda v, rows: torch.where(v >= SOLARIZE_THRESHOLD, 1.0 - v, v))
