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
    "to_display", "show_image_grid",
    "plot_embedding_scatter", "plot_thumbnails", "plot_retrieval",
    "METRIC_PANELS", "plot_metrics", "LiveMetricsFigure",
    "plot_ablation_std_history", "plot_ablation_std_per_dim", "plot_ablation_spectra", "plot_ablation_accuracy",
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


# The plot_ablation_* take an ``ablation.AblationTable`` or its rows (dicts with lam, mu, nu, verdict, ...).


def _setting_lines(table: Iterable[dict[str, Any]], ax, curve, gamma: bool, marker: str | None = None, **labels):
    """One log-scale line per row, (xs, ys) = curve(row); gamma: the variance term's target std 1, dotted."""
    ax = _new_axes_if_none(ax)
    for row in table:
        ax.plot(*curve(row), marker=marker, label=f"({row['lam']:g}, {row['mu']:g}, {row['nu']:g}) {row['verdict']}")
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


def plot_ablation_accuracy(table: Iterable[dict[str, Any]], ax=None, baseline: dict[str, Any] | None = None):
    """kNN and linear top-1 (%) bars per row; ``baseline`` (``evaluate_random_init``'s) a dashed line."""
    ax, rows = _new_axes_if_none(ax), list(table)
    if baseline is not None:
        ax.axhline(baseline["linear_top1"], color="gray", linestyle="--", linewidth=1,
                   label=f"random init, linear ({baseline['linear_top1']:.1f} %)")
    positions = range(len(rows))
    for shift, key, label in ((-0.2, "knn_top1", "kNN"), (0.2, "linear_top1", "linear")):
        ax.bar([p + shift for p in positions], [r[key] for r in rows], width=0.4, label=label)
    ax.set_xticks(list(positions), [f"({r['lam']:g},{r['mu']:g},{r['nu']:g})" for r in rows], rotation=20)
    tallest = max([r["knn_top1"] for r in rows] + [r["linear_top1"] for r in rows] + [1.0])
    ax.set_ylim(0, 1.3 * tallest)  # room for the legend above the bars
    ax.set(xlabel="(λ, μ, ν)", ylabel="top-1 accuracy (%)", title="Accuracy on the held-out split")
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    return ax


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
