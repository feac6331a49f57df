"""eval/invariance.py: views with their parameters, the parameter probes, and the calibrated random network."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
from support import random_images

from vicreg_lib.augment import adjust_hue
from vicreg_lib.data import CIFAR10_MEAN, CIFAR10_STD
from vicreg_lib.eval.invariance import (
    PROBE_VIEW,
    PROBED,
    augmentation_probe,
    describe_probe,
    probe_parameter,
    probe_views,
)

MEAN, STD = (torch.tensor(v).view(1, 3, 1, 1) for v in (CIFAR10_MEAN, CIFAR10_STD))
KEEP_ALL = dataclasses.replace(PROBE_VIEW, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                               gray_p=0.0)


def pixels_of(views: torch.Tensor) -> torch.Tensor:
    return views * STD + MEAN


# ----------------------------------------------------------------------------- probe_views


def test_probe_views_records_the_parameters_it_applied():
    images = random_images(200, size=16)
    views, params = probe_views(images, generator=torch.Generator().manual_seed(0), batch_size=64)
    assert views.shape == images.shape and set(params) == set(PROBED)
    pixels = pixels_of(views)
    channel_spread = (pixels.amax(1) - pixels.amin(1)).flatten(1).amax(1)  # (n,): 0 when R = G = B everywhere
    assert torch.all(channel_spread[params["grayscale"]] < 1e-5)
    assert torch.all(channel_spread[~params["grayscale"]] > 0.1)
    assert 0.2 - 1e-6 <= params["crop area"].min() and params["crop area"].max() <= 1.0
    assert params["hue"].abs().max() <= 0.1 and params["hue"].std() > 0.03
    for key in ("flip", "grayscale"):  # p = 0.5 each: both values present, in similar numbers
        assert 60 < params[key].sum() < 140


def test_probe_views_flip_and_hue_match_the_operations():
    images = random_images(64, size=8)
    pixels = images.float() / 255
    flip_only = dataclasses.replace(KEEP_ALL, flip_p=0.5)
    views, params = probe_views(images, flip_only, torch.Generator().manual_seed(1))
    expected = torch.where(params["flip"].view(-1, 1, 1, 1), pixels.flip(3), pixels)
    torch.testing.assert_close(pixels_of(views), expected, atol=1e-5, rtol=0)
    assert params["flip"].any() and not params["flip"].all() and torch.all(params["hue"] == 0)

    hue_only = dataclasses.replace(KEEP_ALL, jitter_p=1.0)
    views, params = probe_views(images, hue_only, torch.Generator().manual_seed(2))
    torch.testing.assert_close(pixels_of(views), adjust_hue(pixels, params["hue"]), atol=1e-5, rtol=0)


def test_probe_views_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        probe_views(torch.rand(2, 3, 8, 8))


# ----------------------------------------------------------------------------- probe_parameter


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 20, generator=g), torch.rand(n, generator=g)


def test_a_parameter_linear_in_the_features_is_recovered():
    (noise_train, target_train), (noise_test, target_test) = _synthetic(400, 0), _synthetic(200, 1)
    # one column is an affine function of the target, the others noise
    train = torch.cat([noise_train, 3 * target_train[:, None] - 1], 1)
    test = torch.cat([noise_test, 3 * target_test[:, None] - 1], 1)
    assert probe_parameter(train, target_train, test, target_test, "continuous") > 0.99
    assert probe_parameter(train, target_train > 0.5, test, target_test > 0.5, "binary") > 0.9


def test_features_that_ignore_the_parameter_score_about_zero():
    (noise_train, target_train), (noise_test, target_test) = _synthetic(400, 0), _synthetic(200, 1)
    assert abs(probe_parameter(noise_train, target_train, noise_test, target_test, "continuous")) < 0.1
    assert abs(probe_parameter(noise_train, target_train > 0.5, noise_test, target_test > 0.5, "binary")) < 0.25
    constant_train, constant_test = torch.ones(400, 5), torch.ones(200, 5)
    assert abs(probe_parameter(constant_train, target_train, constant_test, target_test, "continuous")) < 0.05


def test_probe_parameter_checks_its_inputs():
    features, target = _synthetic(10, 0)
    with pytest.raises(ValueError, match="kind"):
        probe_parameter(features, target, features, target, "ordinal")
    with pytest.raises(ValueError, match="same d"):
        probe_parameter(features, target, features[:, :3], target, "continuous")
    with pytest.raises(ValueError, match="targets"):
        probe_parameter(features, target[:5], features, target, "continuous")
    with pytest.raises(ValueError, match="both values"):
        probe_parameter(features, torch.ones(10, dtype=torch.bool), features, target > 0.5, "binary")


# ----------------------------------------------------------------------------- augmentation_probe


class MeanColour(nn.Module):
    """A model whose h is each image's mean colour (3,): blind to flips, and to nothing else here; z = h."""

    def __init__(self):
        super().__init__()
        self.encoder, self.projector = nn.Identity(), nn.Identity()

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class Pixels(MeanColour):
    """h: the view's pixels, flattened (3 H W,): everything about the view is there."""

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_augmentation_probe_sees_invariance_and_its_absence():
    # smooth images with a left-right gradient: a flip is visible in the pixels, never in the mean colour
    ramp = torch.linspace(0, 1, 8).view(1, 1, 1, 8)
    colour = torch.rand(700, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    images = (255 * (0.2 + 0.6 * colour * ramp)).to(torch.uint8).expand(-1, -1, 8, -1).contiguous()
    scores = augmentation_probe({"mean colour": MeanColour(), "pixels": Pixels()}, images[:500], images[500:])
    assert set(scores) == set(PROBED)
    assert set(scores["flip"]) == {"mean colour h", "mean colour z", "pixels h", "pixels z"}
    assert abs(scores["flip"]["mean colour h"]) < 0.25  # exactly flip-invariant features: chance
    assert scores["flip"]["pixels h"] > 0.9
    assert scores["flip"]["mean colour z"] == scores["flip"]["mean colour h"]  # z = h for these models


def test_augmentation_probe_needs_models():
    with pytest.raises(ValueError, match="models is empty"):
        augmentation_probe({}, random_images(4), random_images(4))


# ----------------------------------------------------------------------------- describe_probe


def test_describe_probe_says_what_the_numbers_show():
    scores = {"crop area": {"M h": 0.6, "M z": 0.0, "R h": 0.2, "R z": 0.1},
              "flip": {"M h": 0.05, "M z": 0.02, "R h": 0.0, "R z": -0.01},
              "hue": {"M h": 0.0, "M z": 0.3, "R h": 0.25, "R z": 0.2}}
    text = describe_probe(scores, model="M", untrained="R")
    assert text.startswith("Compared with M h, M z keeps less of crop area (0.00 vs 0.60), more of hue (0.30 vs "
                           "0.00) and about as much of flip (0.02 vs 0.05).")
    assert "Compared with R h, M h keeps less of hue (0.00 vs 0.25), more of crop area (0.60 vs 0.20)" in text
    assert text.endswith("No feature set recovers flip (every score below 0.1).")
    with pytest.raises(ValueError, match="'VICReg z'"):
        describe_probe(scores)
