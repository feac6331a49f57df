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
    draw_joint_embedding,
    plot_ablation_accuracy,
    plot_ablation_rms_std,
    plot_ablation_spectra,
    plot_ablation_std_history,
    plot_ablation_std_per_dim,
    plot_accuracy_vs_compute,
    plot_confusion_matrix,
    plot_embedding_scatter,
    plot_label_efficiency,

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


def test_ablation_plots_show_each_seed_and_one_legend_entry_per_setting():
    rows = [ABLATION_ROWS[0], {**ABLATION_ROWS[1], "seed": 0},
            {**ABLATION_ROWS[1], "seed": 1, "knn_top1": 33.0, "linear_top1": 38.0}]
    for row, rms in zip(rows, (0.004, 0.3, 0.4)):
        row["report"] = {"rms_std": rms, "thresholds": {"std_threshold": 0.05}}
    fig, axes = plt.subplots(1, 3)
    plot_ablation_accuracy(rows, axes[0], test_images=1017)
    bars = [patch.get_height() for patch in axes[0].patches]
    assert bars == [20.0, 34.0, 21.0, 37.0]  # the mean over the seeds
    seed_dots = [list(line.get_ydata()) for line in axes[0].lines]
    assert seed_dots == [[35.0, 33.0], [36.0, 38.0]]  # each seed's own accuracy, for the two-seed setting
    assert "1,017 test images" in axes[0].get_title()
    plot_ablation_accuracy(rows, axes[1], baseline={"linear_top1": {"mean": 12.0, "min": 11.0, "max": 13.0}})
    assert axes[1].lines[0].get_ydata()[0] == 12.0  # the untrained seeds' mean, their range a band
    band = axes[1].transData.inverted().transform(axes[1].patches[0].get_window_extent())[:, 1]
    assert list(band) == pytest.approx([11.0, 13.0])
    axes[1].clear()
    plot_ablation_std_history(rows, axes[1])
    labelled = [line.get_label() for line in axes[1].lines if not line.get_label().startswith("_")]
    assert labelled == ["(1, 0, 0) collapsed", "(25, 25, 1) healthy, 2 seeds"]
    assert len(axes[1].lines) == 4  # a line per run, and the dotted target std
    plot_ablation_rms_std(rows, axes[2])
    assert [list(line.get_ydata()) for line in axes[2].lines[:2]] == [[0.004], [0.3, 0.4]]
    assert axes[2].lines[2].get_ydata()[0] == 0.05  # the collapse threshold
    plt.close(fig)


def test_ablation_plots_make_their_own_axes():
    ax = plot_ablation_spectra(ABLATION_ROWS)
    assert len(ax.lines) == 2 and ax.get_yscale() == "log"
    plt.close("all")


def test_the_joint_embedding_diagram_shows_the_image_and_both_views():
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    view_a, view_b = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)  # normalised views
    fig = draw_joint_embedding(image, view_a, view_b)
    insets = [ax for ax in fig.axes[0].child_axes]
    assert [ax.get_title() for ax in insets] == ["image", "view x", "view x'"]
    shown = [ax.images[0].get_array() for ax in insets]
    assert np.allclose(shown[0], to_display(image[None])[0])
    assert np.allclose(shown[1], to_display(view_a)[0]) and np.allclose(shown[2], to_display(view_b)[0])
    plt.close(fig)

# ---- kNN accuracy against minutes -------------------------------------------------------------


def test_knn_by_minutes_adds_up_epoch_times_and_fills_in_an_interrupted_epoch():
    from vicreg_lib.tutorial.plotting import knn_by_minutes

    records = [
        {"epoch": 0, "step": 0, "knn_top1": 20.0},
        {"epoch": 1, "step": 10, "epoch_time_s": 60.0, "train_time_s": 50.0},
        # interrupted after 4 of its 10 steps: the record times the 6 after (30 s): 4 more at 5 s each
        {"epoch": 2, "step": 20, "epoch_time_s": 40.0, "train_time_s": 30.0, "resumed_at_step": 4,
         "knn_top1": 30.0},
        {"epoch": 3, "step": 30, "epoch_time_s": 90.0, "train_time_s": 60.0, "knn_top1": 35.0},
    ]
    assert knn_by_minutes(records) == [(0.0, 0, 20.0), (2.0, 2, 30.0), (3.5, 3, 35.0)]
    assert knn_by_minutes([]) == []


def test_plot_knn_against_minutes_draws_each_curve_where_its_points_are():
    from vicreg_lib.tutorial.plotting import plot_knn_against_minutes
    from vicreg_lib.tutorial.reference_runs import reference_run

    gpu = reference_run().knn_curve
    ax = plot_knn_against_minutes({"GPU": gpu, "yours": [(0.0, 0, 20.0), (2.5, 2, 30.0)]}, title="t")
    assert [line.get_label() for line in ax.lines] == ["GPU", "yours"]
    assert list(ax.lines[0].get_xdata()) == [point[0] for point in gpu]
    assert list(ax.lines[1].get_ydata()) == [20.0, 30.0]
    assert [text.get_text() for text in ax.texts] == [f"epoch {gpu[-1][1]}", "epoch 2"]
    assert ax.get_ylim()[0] == 0 and ax.get_title() == "t"
    plt.close("all")
    with pytest.raises(ValueError, match="minutes, epoch, kNN"):
        plot_knn_against_minutes({"yours": []})
    with pytest.raises(ValueError, match="minutes, epoch, kNN"):
        plot_knn_against_minutes({"yours": [(1.0, 30.0)]})
    ax = plot_knn_against_minutes({"GPU": gpu, "yours": [(0.0, 0, 20.0), (2.5, 2, 30.0)]}, log_x=True)
    assert ax.get_xscale() == "log"
    assert list(ax.lines[0].get_xdata()) == [point[0] for point in gpu[1:]]  # minute 0 left out
    assert list(ax.lines[1].get_ydata()) == [30.0]
    plt.close("all")

# ---- linear evaluation and fair comparisons ------------------------------------------------------------------


def test_confusion_matrix_writes_every_cell_and_checks_its_shape():
    matrix = np.array([[90.0, 10.0], [25.0, 75.0]])
    ax = plot_confusion_matrix(matrix, ["cat", "dog"])
    assert [text.get_text() for text in ax.texts] == ["90", "10", "25", "75"]
    assert [label.get_text() for label in ax.get_yticklabels()] == ["cat", "dog"]
    with pytest.raises(ValueError, match="C, C"):
        plot_confusion_matrix(matrix, ["cat", "dog", "bird"])
    plt.close("all")


def test_label_efficiency_draws_every_seed_and_a_line_through_the_means():
    ax = plot_label_efficiency({"VICReg": {0.1: [60.0, 62.0], 0.01: [40.0, 44.0], 1.0: [70.0]},
                                "supervised": {0.01: [30.0]}})
    vicreg, supervised = ax.lines
    assert list(vicreg.get_xdata()) == [0.01, 0.1, 1.0] and list(vicreg.get_ydata()) == [42.0, 61.0, 70.0]
    assert vicreg.get_label() == "VICReg" and list(supervised.get_ydata()) == [30.0]
    seeds = np.concatenate([collection.get_offsets() for collection in ax.collections])
    assert sorted(map(tuple, seeds.tolist())) == [(0.01, 30.0), (0.01, 40.0), (0.01, 44.0), (0.1, 60.0),
                                                  (0.1, 62.0), (1.0, 70.0)]
    assert ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="fraction"):
        plot_label_efficiency({"bad": {0.0: [50.0]}})
    with pytest.raises(ValueError, match="at least one"):
        plot_label_efficiency({"bad": {0.1: []}})
    plt.close("all")


class _Reference:
    knn_curve = ((0.0, 0, 30.0), (1.0, 10, 60.0), (2.0, 20, 70.0))
    fast_probe_top1, train_minutes, epochs, knn_k, device = 75.0, 1.9, 20, 200, "GPU X"


def _line(ax, prefix):
    (line,) = [line for line in ax.lines if line.get_label().startswith(prefix)]
    return list(line.get_xdata()), list(line.get_ydata())


def test_accuracy_vs_compute_puts_minutes_left_and_epochs_right():
    supervised = [{"fraction": 1.0, "budget_s": 120.0, "test_top1": 80.0},
                  {"fraction": 0.1, "budget_s": 45.0, "test_top1": 70.0},  # not all labels: not drawn
                  {"fraction": 1.0, "budget_s": 30.0, "test_top1": 72.0}]
    quoted = [{"name": "long run", "epochs": 500, "top1": 85.0}]
    fig = plot_accuracy_vs_compute(_Reference(), supervised, quoted, own_runs={"mine": [(0.0, 0, 20.0), (9.0, 3, 40.0)]})
    left, right = fig.axes
    assert _line(left, "VICReg kNN") == ([1.0, 2.0], [60.0, 70.0])  # minute 0 is the dotted untrained line
    assert _line(left, "VICReg + fast") == ([1.9], [75.0])
    assert _line(left, "supervised") == ([0.5, 2.0], [72.0, 80.0])  # sorted by minutes, all labels only
    assert _line(left, "mine (CPU minutes)") == ([9.0], [40.0])
    assert _line(left, "untrained")[1] == [30.0, 30.0]
    assert _line(right, "VICReg kNN") == ([10, 20], [60.0, 70.0])
    assert _line(right, "VICReg + fast") == ([20], [75.0])
    assert _line(right, "long run") == ([500], [85.0])
    assert _line(right, "mine") == ([3], [40.0])
    assert left.get_xscale() == right.get_xscale() == "log"
    plt.close(fig)


def test_accuracy_vs_compute_needs_a_curve():
    class Empty(_Reference):
        knn_curve = ()

    with pytest.raises(ValueError, match="knn_curve"):
        plot_accuracy_vs_compute(Empty(), [])

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
