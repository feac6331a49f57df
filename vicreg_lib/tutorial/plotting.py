"""Every figure of the tutorial: ``ax=None`` functions return the Axes, grid layouts the Figure.
matplotlib is imported inside the functions, so importing the package does not need it.

    show_image_grid([images, views], ncols=8)          # uint8 images and/or normalised views
    plot_ablation_spectra(table)                        # one curve per row of an ablation.AblationTable
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..data import CIFAR10_MEAN, CIFAR10_STD

__all__ = [
    "to_display", "show_image_grid", "draw_joint_embedding",
    "plot_embedding_scatter", "plot_thumbnails", "plot_retrieval",
    "METRIC_PANELS", "plot_metrics", "LiveMetricsFigure",
    "plot_ablation_std_history", "plot_ablation_std_per_dim", "plot_ablation_spectra", "plot_ablation_accuracy",
    "plot_ablation_rms_std",

    "plot_confusion_matrix", "plot_label_efficiency", "plot_accuracy_vs_compute",

    "plot_invariance_probe",
]


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _new_axes_if_none(ax, size: tuple[float, float] = (6, 4)):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=size)
    return ax


def _finish(ax, title: str | None = None):
    if title:
        ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def to_display(images: torch.Tensor, mean: Sequence[float] = CIFAR10_MEAN,
               std: Sequence[float] = CIFAR10_STD) -> np.ndarray:
    """uint8, or float views normalised with mean/std, (n, 3, h, w) or (3, h, w) -> (n, h, w, 3) in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor (n, 3, h, w), got {type(images).__name__}")
    images = (images[None] if images.ndim == 3 else images).detach().cpu()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (n, 3, h, w) or (3, h, w), got {tuple(images.shape)}; "
                         "permute channels-last arrays with .permute(0, 3, 1, 2)")
    if images.dtype == torch.uint8:
        pixels = images.float() / 255.0
    elif images.is_floating_point():
        mean_t, std_t = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (mean, std))
        pixels = images.float() * std_t + mean_t
    else:
        raise ValueError(f"images must be uint8 (0..255) or normalised float views, got {images.dtype}")
    return pixels.clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()


def show_image_grid(images: torch.Tensor | Sequence[torch.Tensor], titles: Sequence[str] | None = None,
                    ncols: int | None = None, row_labels: Sequence[str] | None = None, cell_size: float = 1.4,
                    suptitle: str | None = None, title_size: float = 8.0):
    """Images (n, 3, h, w), or a list of batches, in a grid of `ncols` (default: one row)."""
    import matplotlib.pyplot as plt

    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    pictures = np.concatenate([to_display(batch) for batch in batches]) if batches else np.zeros((0,))
    n = pictures.shape[0]
    if n == 0:
        raise ValueError("show_image_grid needs at least one image, got an empty list or batch")
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images; pass one title per image or None")
    ncols = n if ncols is None else ncols
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = math.ceil(n / ncols)
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"got {len(row_labels)} row labels for {nrows} rows; pass one per row or None")
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_size * ncols, cell_size * nrows + 0.3), squeeze=False)
    for index, ax in enumerate(axes.flat):
        _finish(ax)
        if index >= n:
            ax.axis("off")
            continue
        ax.imshow(pictures[index], interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[index], fontsize=title_size)
    for row, label in enumerate(row_labels or ()):
        axes[row, 0].set_ylabel(label, fontsize=title_size + 1)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def draw_joint_embedding(image: torch.Tensor, view_a: torch.Tensor, view_b: torch.Tensor):
    """The joint-embedding diagram: an image (3, h, w), its two views through one encoder and projector, a loss."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(12, 3.6))
    ax.set(xlim=(0, 12), ylim=(0, 4))
    ax.axis("off")

    def picture(tensor, x, y, title):
        inset = ax.inset_axes([x, y, 1.0, 1.0], transform=ax.transData)
        inset.imshow(to_display(tensor)[0], interpolation="nearest")
        _finish(inset).set_title(title, fontsize=9)

    def box(x, y, text, colour):
        ax.add_patch(FancyBboxPatch((x, y), 1.5, 0.8, boxstyle="round,pad=0.05", fc=colour, ec="k"))
        ax.text(x + 0.75, y + 0.4, text, ha="center", va="center", fontsize=10)

    def arrow(x0, y0, x1, y1, text=""):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "lw": 1.5})
        if text:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, text, ha="center", fontsize=9)

    picture(image, 0.2, 1.5, "image")
    for y, view, t, name in ((2.7, view_a, "t ~ T", "x"), (0.3, view_b, "t' ~ T", "x'")):
        arrow(1.25, 2.0, 2.45, y + 0.5)
        ax.text(1.45, y + 0.55 if y > 2 else y + 1.0, t, ha="right", fontsize=10)
        picture(view, 2.5, y, f"view {name}")
        arrow(3.55, y + 0.5, 4.2, y + 0.5)
        box(4.25, y + 0.1, "encoder $f_\\theta$", "#cfe2f3")
        arrow(5.85, y + 0.5, 6.8, y + 0.5, "repr.")
        box(6.85, y + 0.1, "projector $h_\\phi$", "#d9ead3")
        arrow(8.45, y + 0.5, 9.2, y + 0.5)
        ax.text(9.35, y + 0.5, "z" if name == "x" else "z'", fontsize=13, va="center")
        arrow(9.7, y + 0.5, 10.3, 2.0)
    ax.text(6.55, 1.9, "shared weights", ha="center", fontsize=9, style="italic")
    for x in (5.0, 7.6):  # the two branches are one network: dashed links between their boxes
        ax.annotate("", (x, 1.2), (x, 2.7), arrowprops={"arrowstyle": "<->", "ls": "--", "color": "grey"})
    box(10.35, 1.6, "loss\nV + I + C", "#fce5cd")
    ax.set_title("Joint-embedding architecture: two views, one network, a loss on the pair of embeddings")
    return fig


def _coords_array(coords: torch.Tensor | np.ndarray) -> np.ndarray:
    array = _numpy(coords)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"coords must be (n, 2) map positions (from umap_2d), got shape {array.shape}")
    return array.astype(np.float32, copy=False)


def _to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    array = _numpy(image)
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got an image of shape {array.shape}")
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def plot_embedding_scatter(coords: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                           classes: Sequence[str] | None = None, ax=None, title: str | None = None,
                           point_size: float = 4.0, legend: bool = True):
    """Scatter coords (n, 2) coloured by integer labels (n,); returns the Axes."""
    import matplotlib.pyplot as plt

    coords, labels = _coords_array(coords), _numpy(labels)
    if labels.shape != (coords.shape[0],):
        raise ValueError(f"expected one label per point: coords {coords.shape}, labels {labels.shape}")
    ax = _new_axes_if_none(ax, (5, 5))
    cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
    for c in np.unique(labels):
        here = labels == c
        ax.scatter(coords[here, 0], coords[here, 1], s=point_size, color=cmap(int(c) % cmap.N),
                   label=classes[c] if classes is not None else str(c))
    if legend:
        ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    return _finish(ax, title)


def _spread_points(coords: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of up to n points by farthest-point sampling, so thumbnails do not hide each other."""
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(coords.shape[0]))]
    nearest = np.linalg.norm(coords - coords[chosen[0]], axis=1)  # distance to the closest chosen point
    for _ in range(min(n, coords.shape[0]) - 1):
        chosen.append(int(nearest.argmax()))
        nearest = np.minimum(nearest, np.linalg.norm(coords - coords[chosen[-1]], axis=1))
    return np.array(chosen)


def plot_thumbnails(coords: torch.Tensor | np.ndarray, images: torch.Tensor | np.ndarray, num_thumbnails: int = 60,
                    ax=None, zoom: float = 0.8, seed: int = 0, title: str | None = None):
    """Draw a spread-out selection of images (N, 3, H, W) uint8 at their coords (N, 2); returns the Axes."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    coords = _coords_array(coords)
    if len(images) != coords.shape[0]:
        raise ValueError(f"expected one image per point: coords {coords.shape}, {len(images)} images")
    ax = _new_axes_if_none(ax, (7, 7))
    ax.scatter(coords[:, 0], coords[:, 1], s=1, color="lightgray")
    for i in _spread_points(coords, num_thumbnails, seed):
        thumbnail = OffsetImage(_to_hwc(images[i]), zoom=zoom, interpolation="nearest")
        ax.add_artist(AnnotationBbox(thumbnail, coords[i], frameon=False, pad=0.0))
    return _finish(ax, title)


def plot_retrieval(query_images: torch.Tensor, bank_images: torch.Tensor, indices: torch.Tensor,
                   query_labels: torch.Tensor | None = None, bank_labels: torch.Tensor | None = None,
                   classes: Sequence[str] | None = None, similarities: torch.Tensor | None = None,
                   cell_size: float = 1.2):
    """One row per query image: it, then bank_images at indices (q, k) (``nearest_neighbors``), titled
    with similarities (q, k), framed green/red by class agreement when labelled; returns the Figure."""
    import matplotlib.pyplot as plt

    q, k = indices.shape
    if len(query_images) != q:
        raise ValueError(f"{len(query_images)} query images but indices has {q} rows; pass one row per query")
    fig, axes = plt.subplots(q, k + 1, figsize=(cell_size * (k + 1), cell_size * q + 0.4), squeeze=False)
    for row in range(q):
        axes[row, 0].imshow(_to_hwc(query_images[row]), interpolation="nearest")
        if query_labels is not None:
            label = int(query_labels[row])
            axes[row, 0].set_title(f"query: {classes[label] if classes is not None else label}", fontsize=7)
        for col in range(k):
            j, ax = int(indices[row, col]), axes[row, col + 1]
            ax.imshow(_to_hwc(bank_images[j]), interpolation="nearest")
            if similarities is not None:
                ax.set_title(f"{float(similarities[row, col]):.2f}", fontsize=7)
            if query_labels is not None and bank_labels is not None:
                colour = "tab:green" if int(bank_labels[j]) == int(query_labels[row]) else "tab:red"
                for spine in ax.spines.values():
                    spine.set(edgecolor=colour, linewidth=2.5)
    for ax in axes.flat:
        _finish(ax)
    fig.tight_layout()
    return fig


# (panel title, metrics.jsonl keys drawn in it, y scale)
METRIC_PANELS = (
    ("loss terms", ("invariance", "variance", "covariance"), "log"),
    ("embedding std (mean over dims)", ("std",), "linear"),
    ("effective rank of z", ("effective_rank",), "linear"),
    ("kNN top-1 (%)", ("knn_top1",), "linear"),
)


def plot_metrics(records: Sequence[dict], fig=None, total_epochs: int | None = None, title: str | None = None):
    """A run's records (``read_metrics``) by epoch in METRIC_PANELS, into ``fig`` (cleared) or a new one"""
    import matplotlib.pyplot as plt

    fig = fig if fig is not None else plt.figure(figsize=(13, 3.2))
    fig.clear()
    for ax, (panel_title, keys, scale) in zip(fig.subplots(1, len(METRIC_PANELS)), METRIC_PANELS):
        for key in keys:
            points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
            if points:
                epochs, values = zip(*points)
                ax.plot(epochs, values, marker="o" if len(points) < 30 else None, markersize=3, label=key)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("epoch")
        if scale == "log" and ax.lines:
            ax.set_yscale("log")
        if len(keys) > 1 and ax.lines:
            ax.legend(fontsize=8)
        if total_epochs:
            ax.set_xlim(0, total_epochs)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


class LiveMetricsFigure:
    """A ``plot_metrics`` figure redrawn in place at every ``update`` (shown only under IPython)."""

    def __init__(self, total_epochs: int | None = None) -> None:
        import matplotlib.pyplot as plt

        try:
            from IPython.display import display
        except ImportError:  # plain Python: nothing to show the figure in
            display = None
        self.total_epochs = total_epochs
        self.figure = plt.figure(figsize=(13, 3.2))
        self._handle = display(self.figure, display_id=True) if display is not None else None

    def update(self, records: Sequence[dict], title: str | None = None) -> None:
        plot_metrics(records, self.figure, self.total_epochs, title=title)
        if self._handle is not None:
            self._handle.update(self.figure)

    def close(self) -> None:
        import matplotlib.pyplot as plt

        plt.close(self.figure)  # shown through the handle already: do not let the notebook draw it again


# The plot_ablation_* take an ``ablation.AblationTable`` or its rows (dicts with lam, mu, nu, verdict, ...);
# several rows of one (lam, mu, nu) are its seeds: one colour, one legend entry, the spread drawn.


def _by_setting(table: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in table:
        groups.setdefault((row["lam"], row["mu"], row["nu"]), []).append(row)
    return list(groups.values())


def _setting_label(runs: list[dict[str, Any]], short: bool = False) -> str:
    row = runs[0]
    if short:
        return f"({row['lam']:g},{row['mu']:g},{row['nu']:g})"
    verdicts = sorted({r["verdict"] for r in runs})
    seeds = f", {len(runs)} seeds" if len(runs) > 1 else ""
    return f"({row['lam']:g}, {row['mu']:g}, {row['nu']:g}) {' / '.join(verdicts)}{seeds}"


def _setting_lines(table: Iterable[dict[str, Any]], ax, curve, gamma: bool, marker: str | None = None, **labels):
    """Log-scale lines, (xs, ys) = curve(row): one colour and legend entry per setting, a line per seed;
    gamma: the variance term's target std 1, dotted."""
    ax = _new_axes_if_none(ax)
    for index, runs in enumerate(_by_setting(table)):
        for seed_index, row in enumerate(runs):
            ax.plot(*curve(row), marker=marker, color=f"C{index % 10}", alpha=1.0 if len(runs) == 1 else 0.7,
                    label=_setting_label(runs) if seed_index == 0 else "_nolegend_")
    if gamma:
        ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
    ax.set(yscale="log", **labels)
    ax.legend(fontsize=8)
    return ax


def plot_ablation_std_history(table: Iterable[dict[str, Any]], ax=None):
    """Mean per-dimension std of z over training (row["history"], the run's records) per row."""
    def curve(row):
        records = [r for r in row["history"] if "std" in r]
        # a fully collapsed std of exactly 0 would vanish from a log axis: floor it at 1e-8
        return [r["epoch"] for r in records], [max(r["std"], 1e-8) for r in records]

    return _setting_lines(table, ax, curve, True, marker=".", xlabel="epoch", ylabel="mean std of z over the batch",
                          title="Per-dimension std over training")


def plot_ablation_std_per_dim(table: Iterable[dict[str, Any]], ax=None):
    """Each dimension's std on the held-out batch after training (row["std_per_dim"] (d,)), sorted."""
    def curve(row):
        std = sorted(row["std_per_dim"], reverse=True)
        return range(1, len(std) + 1), [max(s, 1e-8) for s in std]

    return _setting_lines(table, ax, curve, True, xlabel="dimension (sorted)", ylabel="std over the held-out batch",
                          title="Per-dimension std of the embeddings")


def plot_ablation_spectra(table: Iterable[dict[str, Any]], ax=None):
    """row["singular_values"] over the largest: dimensional collapse is a sudden drop."""
    def curve(row):
        sigma = row["singular_values"]
        top = sigma[0] if sigma and sigma[0] > 0 else 1.0
        return range(1, len(sigma) + 1), [max(s / top, 1e-12) for s in sigma]

    return _setting_lines(table, ax, curve, False, xlabel="index k", ylabel="σ_k / σ_1",
                          title="Singular value spectrum of the embeddings")


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def plot_ablation_accuracy(table: Iterable[dict[str, Any]], ax=None, baseline: dict[str, Any] | None = None,
                           test_images: int | None = None):
    """kNN and linear top-1 (%) per setting: a bar at the mean over its seeds, a black dot per seed and a
    min-max bar when there are several; ``baseline``: ``evaluate_random_init``'s (a dashed line), or
    ``ablation.summarise_runs`` of several (a dashed line at the mean, a band from min to max)."""
    ax, groups = _new_axes_if_none(ax), _by_setting(table)
    if baseline is not None:
        linear = baseline["linear_top1"]
        mean = linear["mean"] if isinstance(linear, dict) else linear
        ax.axhline(mean, color="gray", linestyle="--", linewidth=1, label=f"random init, linear ({mean:.1f} %)")
        if isinstance(linear, dict) and linear["max"] > linear["min"]:
            ax.axhspan(linear["min"], linear["max"], color="gray", alpha=0.2, linewidth=0)
    positions = range(len(groups))
    for shift, key, label in ((-0.2, "knn_top1", "kNN"), (0.2, "linear_top1", "linear")):
        values = [[float(r[key]) for r in runs] for runs in groups]
        ax.bar([p + shift for p in positions], [_finite_mean(v) for v in values], width=0.4, label=label)
        for position, seeds in zip(positions, values):
            if len(seeds) > 1:
                ax.vlines(position + shift, min(seeds), max(seeds), color="black", linewidth=1)
                ax.plot([position + shift] * len(seeds), seeds, "o", color="black", markersize=3,
                        label="_nolegend_")
    ax.set_xticks(list(positions), [_setting_label(runs, short=True) for runs in groups], rotation=20)
    tallest = max([float(r[key]) for runs in groups for r in runs for key in ("knn_top1", "linear_top1")
                   if not math.isnan(float(r[key]))] + [1.0])
    ax.set_ylim(0, 1.3 * tallest)  # room for the legend above the bars
    where = f" ({test_images:,} test images)" if test_images else ""
    seeds = max((len(runs) for runs in groups), default=1)
    ax.set(xlabel="(λ, μ, ν)", ylabel="top-1 accuracy (%)",
           title=f"Accuracy on the held-out split{where}" + (", dots: seeds" if seeds > 1 else ""))
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    return ax


def plot_ablation_rms_std(table: Iterable[dict[str, Any]], ax=None):
    """Each run's rms std of z (row["report"]["rms_std"]), a dot per seed on a log axis, beside the collapse
    threshold (row["report"]["thresholds"]["std_threshold"], dashed): how far each verdict is from it."""
    ax, groups = _new_axes_if_none(ax), _by_setting(table)
    threshold = None
    for position, runs in enumerate(groups):
        reports = [r.get("report") or {} for r in runs]
        values = [max(r["rms_std"], 1e-8) for r in reports if "rms_std" in r]
        ax.plot([position] * len(values), values, "o", color=f"C{position % 10}", label="_nolegend_")
        threshold = next((r["thresholds"]["std_threshold"] for r in reports if "thresholds" in r), threshold)
    if threshold is not None:
        ax.axhline(threshold, color="gray", linestyle="--", linewidth=1, label=f"collapse threshold {threshold:g}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(list(range(len(groups))), [_setting_label(runs, short=True) for runs in groups], rotation=20)
    ax.set(yscale="log", xlabel="(λ, μ, ν)", ylabel="rms std of z (held-out batch)",
           title="Spread of the embeddings, a dot per seed")

# ---- a run's kNN accuracy against the minutes it took ---------------------------------------------

__all__ += ["knn_by_minutes", "plot_knn_against_minutes"]


def knn_by_minutes(records: Sequence[dict]) -> list[tuple[float, int, float]]:
    """(minutes, epoch, kNN top-1 %) of a run's records (``read_metrics``), as ReferenceRun.knn_curve: the
    minutes add up each epoch's ``epoch_time_s`` (steps, checkpoint and evaluation). An epoch resumed after an
    interruption records only the time after it: its steps before are counted at the speed of those after."""
    minutes, previous_step, curve = 0.0, 0, []
    for record in records:
        if "epoch_time_s" in record:
            seconds, resumed = record["epoch_time_s"], record.get("resumed_at_step", 0)
            if resumed:
                timed_steps = max(record["step"] - previous_step - resumed, 1)
                seconds += resumed * record["train_time_s"] / timed_steps
            minutes += seconds / 60
        previous_step = record.get("step", previous_step)
        if record.get("knn_top1") is not None:
            curve.append((minutes, record["epoch"], record["knn_top1"]))
    return curve


def plot_knn_against_minutes(curves: dict[str, Sequence[Sequence[float]]], ax=None, title: str | None = None,
                             log_x: bool = False):
    """One line per named curve of (minutes, epoch, kNN top-1 %) points (``knn_by_minutes``,
    ``ReferenceRun.knn_curve``), its last point labelled with its epoch; returns the Axes. log_x: minutes on
    a log scale, where minute 0 (the untrained network) has no place: those points are left out."""
    ax = _new_axes_if_none(ax, (7, 3.6))
    for name, curve in curves.items():
        points = [tuple(point) for point in curve]
        if not points or any(len(point) != 3 for point in points):
            raise ValueError(f"curve {name!r} must be a non-empty list of (minutes, epoch, kNN %) points, "
                             f"got {str(curve)[:80]}")
        points = [point for point in points if point[0] > 0] if log_x else points
        if not points:
            continue
        minutes, epochs, accuracy = zip(*points)
        line, = ax.plot(minutes, accuracy, marker="o", markersize=4, label=name)
        ax.annotate(f"epoch {epochs[-1]}", (minutes[-1], accuracy[-1]), textcoords="offset points",
                    xytext=(4, -10), fontsize=8, color=line.get_color())
    ax.set(xlabel="minutes since the start of training", ylabel="kNN top-1 (%)",
           xscale="log" if log_x else "linear")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return ax

# ---- linear evaluation and fair comparisons (notebook 05) -----------------------------------------------------


def plot_confusion_matrix(matrix: torch.Tensor | np.ndarray, classes: Sequence[str], ax=None,
                          title: str | None = None):
    """matrix (C, C): % of each true class (row) given each predicted class (column), written in its cells."""
    matrix = _numpy(matrix).astype(float)
    if matrix.ndim != 2 or matrix.shape != (len(classes), len(classes)):
        raise ValueError(f"matrix must be (C, C) with C = len(classes) = {len(classes)}, got {matrix.shape}")
    ax = _new_axes_if_none(ax, (6.5, 5.5))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=100)
    for i, j in np.ndindex(*matrix.shape):
        ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", fontsize=7,
                color="white" if matrix[i, j] > 50 else "black")  # readable on dark cells
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted class", ylabel="true class", title=title or "% of each true class")
    ax.figure.colorbar(image, ax=ax)
    return ax


def plot_label_efficiency(curves: dict[str, dict[float, Sequence[float]]], ax=None, title: str | None = None):
    """Test top-1 (%) against the fraction of labels (log axis): for each method {fraction: [top-1 of each
    seed]}, every seed a point and a line through the means."""
    ax = _new_axes_if_none(ax, (6, 4))
    for index, (name, by_fraction) in enumerate(curves.items()):
        if not by_fraction or any(not 0 < f <= 1 or len(v) == 0 for f, v in by_fraction.items()):
            raise ValueError(f"{name!r}: give {{fraction in (0, 1]: [top-1 of each seed, at least one]}}, "
                             f"got {by_fraction!r}")
        color, fractions = f"C{index}", sorted(by_fraction)
        ax.plot(fractions, [float(np.mean(by_fraction[f])) for f in fractions], color=color, marker="o",
                markersize=4, label=name)
        for f in fractions:
            ax.scatter([f] * len(by_fraction[f]), by_fraction[f], color=color, alpha=0.5, s=25)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:.0%}")
    ax.set(xlabel="fraction of training labels", ylabel="test top-1 (%)",
           title=title or "Accuracy against the number of labels")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def _own_runs(ax, own_runs: dict[str, Sequence[Sequence[float]]], column: int, suffix: str) -> None:
    for index, (name, curve) in enumerate(own_runs.items()):
        points = [point for point in curve if point[column] > 0]  # a log axis: epoch 0 / minute 0 left out
        ax.plot([p[column] for p in points], [p[2] for p in points], linestyle="--", marker="o", fillstyle="none",
                color=f"C{3 + index}", label=f"{name}{suffix}")


def plot_accuracy_vs_compute(reference: Any, supervised: Iterable[dict], quoted: Iterable[dict] = (),
                             own_runs: dict[str, Sequence[Sequence[float]]] | None = None, fig=None):
    """Two panels. Left, top-1 against GPU minutes (log): the reference run's kNN curve (a ReferenceRun:
    knn_curve [(minutes, epoch, top-1)], fast_probe_top1, train_minutes, epochs, knn_k, device), its fast probe,
    the supervised runs on all labels (rows: fraction, budget_s, test_top1) and own_runs {name: [(minutes,
    epoch, top-1)]} marked as CPU minutes. Right, against epochs (log): the reference, own_runs and the quoted
    results (rows: name, epochs, top1), which have no minutes."""
    curve = [tuple(point) for point in reference.knn_curve]
    if not curve or any(len(point) != 3 for point in curve):
        raise ValueError(f"reference.knn_curve must be a non-empty list of (minutes, epoch, top-1), got {curve!r}")
    own_runs = own_runs or {}
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(13, 4.5))
    left, right = fig.subplots(1, 2, sharey=True)
    trained = [point for point in curve if point[1] > 0]
    untrained = [point[2] for point in curve if point[1] == 0]
    full = sorted((row["budget_s"] / 60, row["test_top1"]) for row in supervised if row["fraction"] == 1.0)
    left.plot([p[0] for p in trained], [p[2] for p in trained], marker="o", markersize=4, color="C0",
              label=f"VICReg kNN (k={reference.knn_k}), {reference.device}")
    left.plot([reference.train_minutes], [reference.fast_probe_top1], marker="*", markersize=13, color="C0",
              linestyle="none", label="VICReg + fast linear probe")
    if full:
        left.plot(*zip(*full), marker="s", color="C1", label=f"supervised, all labels, {reference.device}")
    _own_runs(left, own_runs, 0, " (CPU minutes)")
    right.plot([p[1] for p in trained], [p[2] for p in trained], marker="o", markersize=4, color="C0",
               label=f"VICReg kNN (k={reference.knn_k})")
    right.plot([reference.epochs], [reference.fast_probe_top1], marker="*", markersize=13, color="C0",
               linestyle="none", label="VICReg + fast linear probe")
    for index, row in enumerate(quoted):
        right.plot([row["epochs"]], [row["top1"]], marker="D", color=f"C{6 + index}", linestyle="none",
                   label=f"{row['name']} (quoted)")
    _own_runs(right, own_runs, 1, "")
    for ax, xlabel in ((left, "training minutes (log)"), (right, "pretraining epochs (log)")):
        if untrained:
            ax.axhline(untrained[0], color="gray", linestyle=":", label="untrained network, kNN")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    left.set(ylabel="test top-1 (%)", title="Accuracy against compute")
    right.set_title("Accuracy against epochs")
    return fig

def plot_invariance_probe(scores: dict[str, dict[str, float]], ax=None, title: str | None = None):
    """Grouped bars of ``augmentation_probe``'s {parameter: {feature set: score}}: one group per parameter,
    one bar per feature set (in the first parameter's order), a line at 0 (nothing recovered); the Axes."""
    if not scores or not all(scores.values()):
        raise ValueError("scores must be {parameter: {feature set: score}} with at least one of each "
                         "(augmentation_probe's result)")
    parameters, sets = list(scores), list(next(iter(scores.values())))
    missing = [(p, s) for p in parameters for s in sets if s not in scores[p]]
    if missing:
        raise ValueError(f"every parameter needs a score for every feature set; missing {missing}")
    ax = _new_axes_if_none(ax, (8, 4))
    width = 0.8 / len(sets)
    for i, name in enumerate(sets):
        offset = (i - (len(sets) - 1) / 2) * width
        ax.bar([p + offset for p in range(len(parameters))], [scores[p][name] for p in parameters],
               width=width, label=name)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(parameters)), parameters)
    lowest = min(min(row.values()) for row in scores.values())
    ax.set_ylim(min(-0.1, lowest - 0.05), 1.15)
    ax.set(ylabel="recovered by a linear probe\n(R² or 2 x balanced acc. - 1)",
           title=title or "What the features keep of each augmentation")
    ax.legend(fontsize=8, ncol=len(sets), loc="upper center")
    return ax
