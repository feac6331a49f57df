"""plotting.py: every figure draws the data it is given, checks its input, and importing the
module does not import matplotlib."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from support import RECORDS
from vicreg_lib.data import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from vicreg_lib.tutorial.plotting import (  # noqa: E402
    METRIC_PANELS,
    LiveMetricsFigure,
    _spread_points,
    plot_ablation_accuracy,
    plot_ablation_spectra,
    plot_ablation_std_history,
    plot_ablation_std_per_dim,
    plot_embedding_scatter,
    plot_invariance_probe,
    plot_metrics,
    plot_retrieval,
    plot_thumbnails,
    show_image_grid,
    to_display,
)


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


def test_importing_plotting_leaves_matplotlib_unloaded():
    import subprocess
    import sys

    code = "import sys, vicreg_lib.tutorial.plotting; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---- embedding maps and retrieval ---------------------------------------------------------


def test_spread_points_are_distinct_and_far_apart():
    rng = np.random.default_rng(0)
    coords = np.concatenate([rng.normal(0, 0.01, (50, 2)), rng.normal(10, 0.01, (50, 2))])
    chosen = _spread_points(coords, 2, seed=0)
    assert len(set(chosen.tolist())) == 2
    # farthest-point sampling takes one point from each far-apart cluster
    assert (chosen < 50).sum() == 1


def test_scatter_draws_one_group_per_class():
    coords = np.random.default_rng(0).normal(size=(30, 2))
    labels = np.repeat([0, 1, 2], 10)
    ax = plot_embedding_scatter(coords, labels, ["cat", "dog", "frog"], title="t")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cat", "dog", "frog"]
    np.testing.assert_allclose(ax.collections[1].get_offsets(), coords[10:20])  # the dogs where they are
    plt.close("all")
    with pytest.raises(ValueError, match="coords must be"):
        plot_embedding_scatter(coords[:, :1], labels)
    with pytest.raises(ValueError, match="one label per point"):
        plot_embedding_scatter(coords, labels[:5])


def test_thumbnails_and_retrieval_draw_images():
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    coords = np.random.default_rng(0).normal(size=(20, 2))
    ax = plot_thumbnails(coords, images, num_thumbnails=5)
    assert len(ax.artists) == 5
    first = ax.artists[0]
    np.testing.assert_array_equal(first.offsetbox.get_data(), images[_spread_points(coords, 5, 0)[0]].permute(1, 2, 0))
    with pytest.raises(ValueError, match="one image per point"):
        plot_thumbnails(coords, images[:3])
    labels = torch.arange(20) % 2
    indices = torch.tensor([[0, 1, 2, 3], [1, 0, 5, 3], [2, 4, 6, 8]])
    sims = torch.linspace(1, 0, 12).view(3, 4)
    fig = plot_retrieval(images[:3], images, indices, labels[:3], labels, ["a", "b"], sims)
    axes = np.array(fig.axes).reshape(3, 5)
    np.testing.assert_array_equal(axes[1, 2].images[0].get_array(), images[0].permute(1, 2, 0))
    assert axes[0, 0].get_title() == "query: a" and axes[0, 1].get_title() == f"{sims[0, 0]:.2f}"
    green, red = matplotlib.colors.to_rgba("tab:green"), matplotlib.colors.to_rgba("tab:red")
    assert axes[0, 1].spines["left"].get_edgecolor() == green  # bank image 0: class 0 like query 0
    assert axes[0, 2].spines["left"].get_edgecolor() == red  # bank image 1: class 1
    plt.close("all")
    with pytest.raises(ValueError, match="one row per query"):
        plot_retrieval(images[:2], images, indices)


# ---- a run's training curves --------------------------------------------------------------



def test_plot_metrics_draws_every_series():
    fig = plot_metrics(RECORDS, total_epochs=4, title="run")
    loss_ax, std_ax, rank_ax, knn_ax = fig.axes
    assert [ax.get_title() for ax in fig.axes] == [title for title, _, _ in METRIC_PANELS]
    assert [line.get_label() for line in loss_ax.lines] == ["invariance", "variance", "covariance"]
    assert list(loss_ax.lines[1].get_ydata()) == [0.8, 0.5]
    assert list(std_ax.lines[0].get_ydata()) == [0.2, 0.4]
    assert list(rank_ax.lines[0].get_xdata()) == [1, 2]
    assert list(knn_ax.lines[0].get_xdata()) == [0, 2]  # only the evaluated epochs
    assert loss_ax.get_yscale() == "log" and std_ax.get_yscale() == "linear"
    assert std_ax.get_xlim() == (0, 4)
    plt.close("all")


def test_plot_metrics_redraws_into_the_same_figure():
    fig = plot_metrics(RECORDS[:2])
    again = plot_metrics(RECORDS, fig)
    assert again is fig and len(fig.axes) == 4  # cleared, not stacked
    assert list(fig.axes[1].lines[0].get_ydata()) == [0.2, 0.4]
    plt.close("all")


def test_live_metrics_figure_redraws_and_closes():
    live = LiveMetricsFigure(total_epochs=2)
    live.update(RECORDS[:2], title="first")
    live.update(RECORDS, title="second")
    assert live.figure.get_suptitle() == "second"
    assert list(live.figure.axes[3].lines[0].get_xdata()) == [0, 2]
    assert plt.fignum_exists(live.figure.number)
    live.close()
    assert not plt.fignum_exists(live.figure.number)


# ---- the collapse ablation ----------------------------------------------------------------


def _ablation_row(setting, verdict, std, sigma, knn, linear):
    lam, mu, nu = setting
    return {"lam": lam, "mu": mu, "nu": nu, "verdict": verdict, "knn_top1": knn, "linear_top1": linear,
            "history": [{"epoch": 0, "knn_top1": 10.0}, {"epoch": 1, "std": std}, {"epoch": 2, "std": std / 2}],
            "std_per_dim": [std, 0.0, 2 * std], "singular_values": sigma}


ABLATION_ROWS = [
    _ablation_row((1, 0, 0), "collapsed", 0.004, [0.02, 0.01, 0.0], 20.0, 21.0),
    _ablation_row((25, 25, 1), "healthy", 0.3, [4.0, 2.0, 1.0], 35.0, 36.0),
]


def test_ablation_plots_draw_one_line_per_setting():
    fig, axes = plt.subplots(1, 4)
    plot_ablation_std_history(ABLATION_ROWS, axes[0])
    plot_ablation_std_per_dim(ABLATION_ROWS, axes[1])
    plot_ablation_spectra(ABLATION_ROWS, axes[2])
    plot_ablation_accuracy(ABLATION_ROWS, axes[3], baseline={"linear_top1": 12.5})
    history = [line for line in axes[0].lines if line.get_label().startswith("(")]
    assert [line.get_label() for line in history] == ["(1, 0, 0) collapsed", "(25, 25, 1) healthy"]
    assert list(history[1].get_xdata()) == [1, 2] and list(history[1].get_ydata()) == [0.3, 0.15]
    per_dim = [line for line in axes[1].lines if line.get_label().startswith("(")]
    assert list(per_dim[0].get_ydata()) == [0.008, 0.004, 1e-8]  # sorted, a dead dim floored for the log axis
    spectra = axes[2].lines
    assert list(spectra[1].get_ydata()) == [1.0, 0.5, 0.25]  # divided by the largest
    assert spectra[0].get_ydata()[-1] == 1e-12
    assert axes[3].lines[0].get_ydata()[0] == 12.5  # the random-init line
    bars = [patch.get_height() for patch in axes[3].patches]
    assert bars == [20.0, 35.0, 21.0, 36.0]  # kNN bars, then linear bars
    plt.close(fig)


def test_ablation_plots_make_their_own_axes():
    ax = plot_ablation_spectra(ABLATION_ROWS)
    assert len(ax.lines) == 2 and ax.get_yscale() == "log"
    plt.close("all")


# ---- what the features keep of the augmentations --------------------------------------------


def test_invariance_probe_draws_one_bar_per_parameter_and_feature_set():
    scores = {"crop area": {"VICReg h": 0.6, "VICReg z": 0.0, "random h": 0.2},
              "flip": {"VICReg h": 0.05, "VICReg z": -0.2, "random h": 0.0}}
    ax = plot_invariance_probe(scores)
    heights = [patch.get_height() for patch in ax.patches]
    assert heights == [0.6, 0.05, 0.0, -0.2, 0.2, 0.0]  # feature set by feature set, parameters in order
    centres = [patch.get_x() + patch.get_width() / 2 for patch in ax.patches]
    assert centres[0] < centres[2] < centres[4] < 0.5 < centres[1]  # crop area's group, then flip's
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["VICReg h", "VICReg z", "random h"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["crop area", "flip"]
    assert ax.get_ylim()[0] <= -0.25  # the negative score stays in view
    plt.close("all")
    with pytest.raises(ValueError, match="missing"):
        plot_invariance_probe({"crop area": {"a": 1.0, "b": 0.5}, "flip": {"a": 0.0}})
    with pytest.raises(ValueError, match="at least one"):
        plot_invariance_probe({})
