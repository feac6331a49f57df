from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vicreg_lib.data import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from vicreg_lib.plotting import show_image_grid, to_display  # noqa: E402


def _images(n: int = 5) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 8, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_to_display_scales_uint8_to_channels_last_unit_range():
    images = _images()
    pictures = to_display(images)
    assert pictures.shape == (5, 8, 6, 3) and pictures.dtype == np.float32
    np.testing.assert_allclose(pictures, images.permute(0, 2, 3, 1).numpy() / 255.0, atol=1e-6)


def test_to_display_undoes_the_normalisation_of_views():
    pixels = torch.rand(4, 3, 5, 5)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    views = (pixels - mean) / std
    np.testing.assert_allclose(to_display(views), pixels.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_to_display_clips_out_of_range_views_and_accepts_one_image():
    picture = to_display(torch.full((3, 2, 2), 50.0))
    assert picture.shape == (1, 2, 2, 3)
    assert picture.max() == 1.0


@pytest.mark.parametrize("bad", [torch.zeros(2, 4, 4, 3), torch.zeros(4, 4), torch.zeros(2, 3, 4, 4, dtype=torch.int64)])
def test_to_display_rejects_wrong_shapes_and_dtypes(bad):
    with pytest.raises(ValueError, match="images must"):
        to_display(bad)


def test_show_image_grid_lays_out_rows_titles_and_labels():
    fig = show_image_grid(_images(5), titles=[f"t{i}" for i in range(5)], ncols=3, row_labels=["a", "b"])
    axes = fig.axes
    assert len(axes) == 6  # 2 rows x 3 columns
    shown = [ax for ax in axes if ax.images]
    assert len(shown) == 5
    assert [ax.get_title() for ax in shown] == [f"t{i}" for i in range(5)]
    assert axes[0].get_ylabel() == "a" and axes[3].get_ylabel() == "b"
    assert not axes[5].axison  # the empty cell is hidden
    plt.close(fig)


def test_show_image_grid_draws_a_list_of_batches_in_order():
    originals = _images(2)
    views = torch.zeros(2, 3, 8, 6)  # normalised views: the dataset mean colour
    fig = show_image_grid([originals, views], ncols=2)
    drawn = [ax.images[0].get_array() for ax in fig.axes]
    np.testing.assert_allclose(drawn[0], to_display(originals)[0])
    np.testing.assert_allclose(drawn[3][0, 0], CIFAR10_MEAN, atol=1e-6)
    plt.close(fig)


def test_show_image_grid_rejects_mismatched_titles_and_labels():
    with pytest.raises(ValueError, match="one title per image"):
        show_image_grid(_images(3), titles=["only one"])
    with pytest.raises(ValueError, match="one per row"):
        show_image_grid(_images(4), ncols=2, row_labels=["a"])
    with pytest.raises(ValueError, match="at least one image"):
        show_image_grid(torch.zeros(0, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least one image"):
        show_image_grid([])
