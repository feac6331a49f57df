from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from support import AtenCalls
from vicreg_lib.augment import RECIPES, BatchAugment, ViewRecipe, sample_crop_boxes, two_views_transform
from vicreg_lib.data import CIFAR10_MEAN, CIFAR10_STD

MEAN = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
# a recipe that does nothing: full-image crop, no random op
IDENTITY = ViewRecipe(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0)


def unnormalise(views: torch.Tensor) -> torch.Tensor:
    return views * STD + MEAN


def random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def within(measured: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    """Is a measured frequency within `sigmas` binomial standard errors of p?"""
    return abs(measured - p) <= sigmas * math.sqrt(max(p * (1 - p), 1e-4) / n)


# What each recipe must be, written out from the sources (../shared/notes/reference-recipes.md),
# one dict of ViewRecipe fields per view. Every recipe: ColorJitter(0.4, 0.4, 0.2, 0.1),
# RandomResizedCrop's default aspect ratios, GaussianBlur(3)'s default sigma range.
COMMON = {"crop_ratio": (3 / 4, 4 / 3), "jitter": (0.4, 0.4, 0.2, 0.1), "blur_kernel": 3,
          "blur_sigma": (0.1, 2.0), "crop_interpolation": "bilinear"}
PAPER_VIEW = {"crop_scale": (0.2, 1.0), "flip_p": 0.5, "jitter_p": 0.8, "gray_p": 0.2}
BLOG_VIEW = {**PAPER_VIEW, "blur_p": 0.5, "solarize_p": 0.2}
FAST_VIEW = {**PAPER_VIEW, "blur_p": 0.0, "solarize_p": 0.1}
REFERENCE = {
    "blog": [BLOG_VIEW, BLOG_VIEW],  # the blog post's code, train.py at 89eab04: one pipeline for both views
    # the official augmentations.py, crop scale 0.2-1 for 32x32 images; asymmetric blur and solarize
    "paper": [{**PAPER_VIEW, "blur_p": 1.0, "solarize_p": 0.0},
              {**PAPER_VIEW, "blur_p": 0.1, "solarize_p": 0.2}],
    "fast": [FAST_VIEW, FAST_VIEW],  # solo-learn's scripts/pretrain/cifar/vicreg.yaml: both views alike
}
PROBABILITIES = ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p")
DECISIONS = ("flipped", "jittered", "gray", "blurred", "solarized")  # sample_view_params' keys, same order


def test_recipes_are_the_documented_ones():
    assert sorted(RECIPES) == sorted(REFERENCE)
    for name, expected in REFERENCE.items():
        for view, reference in zip(RECIPES[name], expected):
            reference = {**COMMON, **reference}
            assert {field: getattr(view, field) for field in reference} == reference, name
            assert set(reference) == {field.name for field in dataclasses.fields(ViewRecipe)}


@pytest.mark.parametrize("recipe", sorted(REFERENCE))
def test_drawn_decisions_fire_at_the_reference_rates(recipe):
    n = 20_000  # parameters only, no image is transformed: 5 sigma is at most +-0.018
    drawn = BatchAugment(recipe).sample_params(n, 32, 32, torch.Generator().manual_seed(0))
    for view_params, reference in zip(drawn, REFERENCE[recipe]):
        for decision, field in zip(DECISIONS, PROBABILITIES):
            rate, p = view_params[decision].float().mean().item(), reference[field]
            assert rate == p if p in (0.0, 1.0) else within(rate, p, n), (recipe, decision, rate, p)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_shapes_dtype_and_range(recipe):
    images = random_images(16, size=24)[:, :, :, :20]  # non-square too
    view1, view2 = BatchAugment(recipe)(images, generator=torch.Generator().manual_seed(0))
    for view in (view1, view2):
        assert view.shape == (16, 3, 24, 20) and view.dtype == torch.float32
        assert torch.isfinite(view).all()
        pixels = unnormalise(view)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert not torch.allclose(view1, view2)


def test_uint8_and_float_inputs_agree():
    images = random_images(8)
    aug = BatchAugment("paper")
    from_uint8 = aug(images, generator=torch.Generator().manual_seed(3))
    from_float = aug(images.float() / 255, generator=torch.Generator().manual_seed(3))
    for a, b in zip(from_uint8, from_float):
        torch.testing.assert_close(a, b)


def test_seeded_generator_is_reproducible():
    images, aug = random_images(8), BatchAugment("blog")
    first = aug(images, generator=torch.Generator().manual_seed(7))
    second = aug(images, generator=torch.Generator().manual_seed(7))
    other = aug(images, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], other[0])


def test_every_image_gets_its_own_parameters():
    images = random_images(1).expand(64, -1, -1, -1)  # 64 copies of one image
    view1, view2, (params1, _) = BatchAugment("paper")(
        images, torch.Generator().manual_seed(0), return_params=True
    )
    assert len({tuple(box) for box in params1["crop_box"].tolist()}) > 32
    for key in ("flipped", "jittered", "gray"):
        assert 0 < params1[key].sum() < 64, key  # both decisions occur within one batch
    assert params1["jitter_factors"].unique(dim=0).shape[0] == 64
    assert params1["jitter_order"].unique(dim=0).shape[0] > 6
    # outputs differ across the batch, not just the parameters
    assert len({v.sum().item() for v in view1}) == 64 and len({v.sum().item() for v in view2}) == 64
    _, _, (blog1, _) = BatchAugment("blog")(images, torch.Generator().manual_seed(0), return_params=True)
    for key in ("blurred", "solarized"):
        assert 0 < blog1[key].sum() < 64, key


def test_views_are_drawn_independently():
    n = 4000
    params1, params2 = BatchAugment("paper").sample_params(n, 32, 32, torch.Generator().manual_seed(0))
    for key, p in (("flipped", 0.25), ("gray", 0.04), ("jittered", 0.64)):  # P(both) = P(one)^2
        both = (params1[key] & params2[key]).float().mean().item()
        assert within(both, p, n), (key, both)
    correlation = torch.corrcoef(torch.stack((params1["crop_area"], params2["crop_area"])))[0, 1]
    assert abs(correlation) < 5 / math.sqrt(n)


def reference_view(image: torch.Tensor, params: dict, i: int, view: ViewRecipe) -> torch.Tensor:
    """One image through torchvision's functional ops with the batched version's drawn parameters."""
    top, left, height, width = params["crop_box"][i].tolist()
    y = TF.resized_crop(image, top, left, height, width, list(image.shape[-2:]), antialias=True)
    if params["flipped"][i]:
        y = TF.horizontal_flip(y)
    if params["jittered"][i]:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for op_index in params["jitter_order"][i].tolist():
            y = ops[op_index](y, params["jitter_factors"][i, op_index].item())
    if params["gray"][i]:
        y = TF.rgb_to_grayscale(y, num_output_channels=3)
    if params["blurred"][i]:
        sigma = params["blur_sigma"][i].item()
        y = TF.gaussian_blur(y, [view.blur_kernel] * 2, [sigma, sigma])
    if params["solarized"][i]:
        y = TF.solarize(y, 0.5)
    return TF.normalize(y, CIFAR10_MEAN, CIFAR10_STD)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_batched_equals_torchvision_ops_with_the_same_parameters(recipe):
    images = random_images(48, seed=1).float() / 255
    aug = BatchAugment(recipe)
    views1, views2, params = aug(images, torch.Generator().manual_seed(1), return_params=True)
    for views, view_params, view in zip((views1, views2), params, aug.views):
        expected = torch.stack([reference_view(images[i], view_params, i, view) for i in range(len(images))])
        torch.testing.assert_close(views, expected, atol=2e-5, rtol=0)


def test_single_ops_are_exact():
    images = random_images(32, seed=2)
    pixels = images.float() / 255
    generator = torch.Generator().manual_seed(0)
    flip_only = BatchAugment((dataclasses.replace(IDENTITY, flip_p=0.5), IDENTITY))
    flipped_views, unchanged, (params, _) = flip_only(images, generator, return_params=True)
    expected = torch.where(params["flipped"].view(-1, 1, 1, 1), torch.flip(pixels, dims=[3]), pixels)
    torch.testing.assert_close(unnormalise(flipped_views), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(unnormalise(unchanged), pixels, atol=1e-5, rtol=0)

    solarize_only = BatchAugment((dataclasses.replace(IDENTITY, solarize_p=1.0), IDENTITY))
    torch.testing.assert_close(
        unnormalise(solarize_only(images, generator)[0]),
        torch.where(pixels >= 0.5, 1 - pixels, pixels),
        atol=1e-5,
        rtol=0,
    )

    gray_only = BatchAugment((dataclasses.replace(IDENTITY, gray_p=1.0), IDENTITY))
    luma = 0.2989 * pixels[:, 0] + 0.587 * pixels[:, 1] + 0.114 * pixels[:, 2]
    torch.testing.assert_close(
        unnormalise(gray_only(images, generator)[0]), luma[:, None].expand(-1, 3, -1, -1), atol=1e-5, rtol=0
    )


def coordinate_image(size: int = 32) -> torch.Tensor:
    """(3, size, size) float: red rises left to right, green top to bottom, blue constant, all in
    [0.55, 0.95], so solarizing (x >= 0.5 -> 1 - x) always inverts the whole image, never part of it."""
    ramp = 0.55 + 0.4 * (torch.arange(size) + 0.5) / size
    return torch.stack(
        (ramp.expand(size, size), ramp[:, None].expand(size, size), torch.full((size, size), 0.7))
    )


def measure_decisions(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Read each image's decisions back from augmented coordinate images (n, 3, s, s) in [0, 1]."""
    size = pixels.shape[-1]
    solarized = pixels.amax(dim=(1, 2, 3)) < 0.5
    pixels = torch.where(solarized.view(-1, 1, 1, 1), 1 - pixels, pixels)
    gray = (pixels - pixels[:, :1]).abs().amax(dim=(1, 2, 3)) < 1e-3
    column_means = pixels.mean(dim=(1, 2))  # (n, s): rises with x unless mirrored
    flipped = column_means[:, 0] > column_means[:, -1]
    # the first and last output pixels sample the crop's outer pixel centres: span = 0.4 (w - 1) / s
    width = (pixels[:, 0, :, -1] - pixels[:, 0, :, 0]).abs().mean(1) / 0.4 * size + 1
    height = (pixels[:, 1, -1, :] - pixels[:, 1, 0, :]).mean(1) / 0.4 * size + 1
    return {"solarized": solarized, "gray": gray, "flipped": flipped, "crop_area": width * height / size**2}


def test_decision_rates_match_recipe_and_torchvision_pipeline():
    """Crop, flip, grayscale and solarize measured on the OUTPUTS of both pipelines."""
    n = 2000
    probe = dataclasses.replace(RECIPES["paper"][1], jitter_p=0.0, blur_p=0.0, solarize_p=0.3)
    images = coordinate_image()[None].expand(n, -1, -1, -1)
    batched, _, (params, _) = BatchAugment((probe, IDENTITY))(
        images, torch.Generator().manual_seed(0), return_params=True
    )
    batched = measure_decisions(unnormalise(batched))
    torch.manual_seed(0)
    per_image_transform = two_views_transform((probe, IDENTITY))
    per_image = measure_decisions(
        unnormalise(torch.stack([per_image_transform(image)[0] for image in images]))
    )

    for key, p in (("solarized", probe.solarize_p), ("gray", probe.gray_p), ("flipped", probe.flip_p)):
        assert torch.equal(batched[key], params[key]), key  # the measurement reads the decisions exactly
        for measured in (batched, per_image):
            assert within(measured[key].float().mean().item(), p, n), (key, measured[key].float().mean())
    colour = ~batched["gray"]
    torch.testing.assert_close(batched["crop_area"][colour], params["crop_area"][colour], atol=2e-3, rtol=0)
    area_batched = batched["crop_area"][colour].mean()
    area_per_image = per_image["crop_area"][~per_image["gray"]].mean()
    assert 0.45 < area_batched < 0.65
    assert abs(area_batched - area_per_image) < 5 * 0.25 * math.sqrt(2 / (0.8 * n))


OP_PROBES = sorted({(field, view[field]) for views in REFERENCE.values() for view in views
                    for field in PROBABILITIES})


@pytest.mark.parametrize("field, p", OP_PROBES)
def test_each_op_fires_at_the_recipe_rate_in_both_pipelines(field, p):
    """Every op at every probability a recipe gives it, alone, on a noise image that each op changes
    (blur with sigma >= 1, so that no blur is too faint to see): count the changed outputs of the
    batched and the per-image (torchvision) pipeline."""
    n = 400  # per-image colour jitter is slow; 5 sigma is at most +-0.125
    probe = dataclasses.replace(IDENTITY, blur_sigma=(1.0, 2.0), **{field: p})
    image = random_images(1, seed=4)[0]
    batched = BatchAugment((probe, IDENTITY))(image.expand(n, -1, -1, -1), torch.Generator().manual_seed(0))
    batched = batched[0]
    torch.manual_seed(0)
    transform = two_views_transform((probe, IDENTITY)).transform1
    per_image = torch.stack([transform(image) for _ in range(n)])
    original = (image.float() / 255 - MEAN) / STD
    for pipeline, views in (("batched", batched), ("per-image", per_image)):
        rate = ((views - original).abs().amax(dim=(1, 2, 3)) > 1e-3).float().mean().item()
        assert rate == p if p in (0.0, 1.0) else within(rate, p, n), (pipeline, field, rate, p)


def test_crop_sampling_matches_random_resized_crop():
    from torchvision.transforms import v2

    n, generator = 4000, torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(n, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), generator)
    assert (
        (boxes[:, :2] >= 0).all()
        and (boxes[:, 0] + boxes[:, 2] <= 32).all()
        and (boxes[:, 1] + boxes[:, 3] <= 32).all()
    )
    torch.manual_seed(0)
    image = torch.zeros(3, 32, 32)
    reference = torch.tensor(
        [v2.RandomResizedCrop.get_params(image, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    )
    for column in range(4):  # top, left, height, width: same means within sampling error
        ours, theirs = boxes[:, column].float(), reference[:, column].float()
        assert abs(ours.mean() - theirs.mean()) < 5 * math.sqrt((ours.var() + theirs.var()) / n), column
    # no candidate fits (crop larger than the image): centre crop clamped to the ratio range, as torchvision
    fallback = sample_crop_boxes(3, 32, 64, (2.0, 3.0), (0.5, 1.0), generator)
    assert fallback.tolist() == [[0, 16, 32, 32]] * 3
    assert v2.RandomResizedCrop.get_params(torch.zeros(3, 32, 64), [2.0, 3.0], [0.5, 1.0]) == (0, 16, 32, 32)


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """The two-sample Kolmogorov-Smirnov statistic of benchmarks/common.py (one copy for both)."""
    import sys
    from pathlib import Path

    sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from common import ks_statistic as statistic

    return statistic(a, b)


def test_crop_area_and_aspect_distributions_match_random_resized_crop():
    """The whole distribution, not only the mean: a KS test at a 1e-6 false-alarm rate against
    torchvision's box sampler, and the recipe's area range (up to rounding to whole pixels)."""
    from torchvision.transforms import v2

    n, (low, high) = 20_000, RECIPES["paper"][0].crop_scale
    params, _ = BatchAugment("paper").sample_params(n, 32, 32, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    image = torch.zeros(3, 32, 32)
    reference = torch.tensor(
        [v2.RandomResizedCrop.get_params(image, [low, high], [3 / 4, 4 / 3]) for _ in range(n)]
    ).float()
    reference_area = reference[:, 2] * reference[:, 3] / 32**2
    reference_aspect = reference[:, 3] / reference[:, 2]
    critical = math.sqrt(-math.log(1e-6 / 2) / 2) * math.sqrt(2 / n)  # about 0.027
    assert ks_statistic(params["crop_area"], reference_area) < critical
    assert ks_statistic(params["crop_aspect"], reference_aspect) < critical
    rounding = 0.5 * (32 + 32) / 32**2  # half a pixel on each side of the box
    assert low - rounding <= params["crop_area"].min() and params["crop_area"].max() <= high
    # a sampler that ignored the scale range, or drew the side instead of the area, fails these
    wrong = sample_crop_boxes(n, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    assert ks_statistic(wrong[:, 2] * wrong[:, 3] / 32**2, reference_area) > critical


def test_two_views_transform_accepts_tensor_and_pil():
    image = random_images(1)[0]
    view1, view2 = two_views_transform("paper")(image)
    assert view1.shape == view2.shape == (3, 32, 32) and view1.dtype == torch.float32
    pil_view, _ = two_views_transform("blog")(TF.to_pil_image(image))
    assert pil_view.shape == (3, 32, 32) and pil_view.dtype == torch.float32
    assert two_views_transform("blog", size=16)(image)[0].shape == (3, 16, 16)


UNKNOWN_RECIPE = r"unknown augmentation recipe 'simclr'.*\['blog', 'fast', 'paper'\]"


def test_bad_input_errors():
    with pytest.raises(ValueError, match=UNKNOWN_RECIPE):
        BatchAugment("simclr")
    with pytest.raises(ValueError, match=UNKNOWN_RECIPE):
        two_views_transform("simclr")
    aug = BatchAugment("paper")
    with pytest.raises(ValueError, match=r"\(n, 3, h, w\), got shape \(3, 32, 32\).*images\[None\]"):
        aug(random_images(1)[0])
    with pytest.raises(ValueError, match=r"got shape \(2, 1, 32, 32\)"):
        aug(random_images(2)[:, :1])
    with pytest.raises(ValueError, match="uint8 .* or float"):
        aug(random_images(2).long())
    with pytest.raises(ValueError, match="flip_p = 1.5 is not a probability"):
        ViewRecipe(flip_p=1.5)
    with pytest.raises(ValueError, match="blur_kernel = 4 must be a positive odd number"):
        ViewRecipe(blur_kernel=4)


def test_speed_functions_time_both_pipelines():
    from vicreg_lib.tutorial.speed import batched_throughput, per_image_throughput

    images = random_images(24)
    per_image = per_image_throughput(images, "fast", batch_size=8, workers=0)
    batched = batched_throughput(images, "fast", batch_size=8, device="cpu")
    assert math.isfinite(per_image) and math.isfinite(batched) and per_image > 0 and batched > 0
    with pytest.raises(ValueError, match=UNKNOWN_RECIPE):
        batched_throughput(images, "simclr", batch_size=8, device="cpu")


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_call_is_a_fixed_small_number_of_tensor_ops(recipe):
    """Whatever the batch size and the coin flips, one call makes the same few hundred aten calls
    (a GPU launches a kernel for most of them): no op runs per image, per subset or per jitter order."""
    aug, counts = BatchAugment(recipe), set()
    for n, seed in ((8, 0), (64, 1), (200, 2)):
        aug(random_images(n, seed=seed), generator=torch.Generator().manual_seed(seed))  # warm the caches
        with AtenCalls() as calls:
            aug(random_images(n, seed=seed), generator=torch.Generator().manual_seed(seed + 10))
        counts.add(calls.calls)
    assert len(counts) == 1, counts
    assert counts.pop() <= 300


def test_bicubic_crop_keeps_pixels_on_the_grid_and_differs_off_it():
    images = random_images(4, seed=5).float() / 255
    whole = torch.tensor([[0, 0, 32, 32]] * 4)
    no_flip = torch.zeros(4, dtype=torch.bool)
    from vicreg_lib.augment import resized_crop_flip

    torch.testing.assert_close(resized_crop_flip(images, whole, no_flip, "bicubic"), images, atol=1e-5, rtol=0)
    box = torch.tensor([[3, 5, 17, 20]] * 4)
    bilinear, bicubic = (resized_crop_flip(images, box, no_flip, mode) for mode in ("bilinear", "bicubic"))
    assert (bicubic - bilinear).abs().max() > 0.01
    assert bicubic.min() >= 0 and bicubic.max() <= 1
    with pytest.raises(ValueError, match="crop_interpolation = 'nearest'"):
        ViewRecipe(crop_interpolation="nearest")
