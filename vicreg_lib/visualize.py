"""Look at a representation: UMAP maps, image thumbnails on the map, nearest-neighbour retrieval.

    coords = umap_2d(features, seed=0)                      # (n, d) -> (n, 2)
    plot_embedding_scatter(coords, labels, classes, ax=ax)  # one colour per class
    plot_thumbnails(coords, images, ax=ax)                  # a few images at their map positions
    sims, idx = nearest_neighbors(query_feats, bank_feats, k=5)
    plot_retrieval(query_images, bank_images, idx, ...)     # query | its k closest bank images

umap-learn and matplotlib are imported inside the functions that need them, so the package
imports without them (umap's first import also compiles numba code, ~15 s).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["umap_2d", "plot_embedding_scatter", "plot_thumbnails", "nearest_neighbors", "plot_retrieval"]


def _as_numpy_2d(features: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    array = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {array.shape}; flatten images with .flatten(1)")
    return array.astype(np.float32, copy=False)


def _to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """One image (3, H, W) uint8 -> (H, W, 3) uint8 for imshow."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got an image of shape {array.shape}")
    return np.ascontiguousarray(array.transpose(1, 2, 0))


# ----------------------------------------------------------------------------- UMAP


def umap_2d(
    features: torch.Tensor | np.ndarray,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
) -> np.ndarray:
    """UMAP of features (n, d) into the plane -> coords (n, 2) float32.

    Cosine distance, because kNN evaluation and retrieval compare representations by angle.
    A fixed `seed` makes the map reproducible (UMAP then runs single-threaded).
    """
    x = _as_numpy_2d(features, "features")
    if x.shape[0] < 3:
        raise ValueError(f"UMAP needs at least 3 points, got {x.shape[0]}")
    try:
        import umap
    except ImportError as error:
        raise ImportError("umap_2d needs umap-learn: pip install umap-learn") from error
    import warnings

    # n_neighbors must stay below the number of points, or UMAP's graph is ill-defined
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, x.shape[0] - 1), min_dist=min_dist,
                        metric=metric, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")  # the price of a fixed seed
        return reducer.fit_transform(x).astype(np.float32)


def plot_embedding_scatter(
    coords: np.ndarray,
    labels: torch.Tensor | np.ndarray,
    classes: Sequence[str] | None = None,
    ax=None,
    title: str | None = None,
    point_size: float = 4.0,
    legend: bool = True,
):
    """Scatter coords (n, 2) coloured by integer labels (n,); returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    coords = _as_numpy_2d(coords, "coords")
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if coords.shape[1] != 2 or labels.shape != (coords.shape[0],):
        raise ValueError(f"expected coords (n, 2) and labels (n,), got {coords.shape} and {labels.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
    for c in np.unique(labels):
        name = classes[c] if classes is not None else str(c)
        here = labels == c
        ax.scatter(coords[here, 0], coords[here, 1], s=point_size, color=cmap(int(c) % cmap.N), label=name)
    if title:
        ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if legend:
        ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    return ax


def _spread_points(coords: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of up to n points chosen greedily far apart (farthest-point sampling), so
    thumbnails do not hide each other."""
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(coords.shape[0]))]
    nearest = np.linalg.norm(coords - coords[chosen[0]], axis=1)  # distance to the closest chosen point
    for _ in range(min(n, coords.shape[0]) - 1):
        chosen.append(int(nearest.argmax()))
        nearest = np.minimum(nearest, np.linalg.norm(coords - coords[chosen[-1]], axis=1))
    return np.array(chosen)


def plot_thumbnails(
    coords: np.ndarray,
    images: torch.Tensor | np.ndarray,
    num_thumbnails: int = 60,
    ax=None,
    zoom: float = 0.8,
    seed: int = 0,
    title: str | None = None,
):
    """Draw a spread-out selection of images (N, 3, H, W) uint8 at their coords (N, 2)."""
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    coords = _as_numpy_2d(coords, "coords")
    if coords.shape[1] != 2 or len(images) != coords.shape[0]:
        raise ValueError(f"expected coords (n, 2) and n images, got {coords.shape} and {len(images)} images")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 7))
    ax.scatter(coords[:, 0], coords[:, 1], s=1, color="lightgray")
    for i in _spread_points(coords, num_thumbnails, seed):
        box = AnnotationBbox(OffsetImage(_to_hwc(images[i]), zoom=zoom, interpolation="nearest"), coords[i], frameon=False, pad=0.0)
        ax.add_artist(box)
    if title:
        ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


# ----------------------------------------------------------------------------- retrieval


def nearest_neighbors(
    query_feats: torch.Tensor, bank_feats: torch.Tensor, k: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most cosine-similar bank rows of every query row.

    query_feats (q, d), bank_feats (n, d) -> similarities (q, k), indices (q, k) into the bank,
    most similar first.
    """
    if query_feats.ndim != 2 or bank_feats.ndim != 2 or query_feats.shape[1] != bank_feats.shape[1]:
        raise ValueError(f"expected query (q, d) and bank (n, d) features, got shapes "
                         f"{tuple(query_feats.shape)} and {tuple(bank_feats.shape)}; extract both with one model")
    if not 1 <= k <= bank_feats.shape[0]:
        raise ValueError(f"k must be between 1 and the bank size {bank_feats.shape[0]}, got {k}")
    sim = F.normalize(query_feats.float(), dim=1) @ F.normalize(bank_feats.float(), dim=1).T  # (q, n) cosine
    return sim.topk(k, dim=1)


def plot_retrieval(
    query_images: torch.Tensor,
    bank_images: torch.Tensor,
    indices: torch.Tensor,
    query_labels: torch.Tensor | None = None,
    bank_labels: torch.Tensor | None = None,
    classes: Sequence[str] | None = None,
    similarities: torch.Tensor | None = None,
    cell_size: float = 1.2,
):
    """One row per query: the query image, then its retrieved bank images (indices (q, k)).

    With labels, each neighbour's frame is green when its class matches the query's, red when not.
    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    q, k = indices.shape
    if len(query_images) != q:
        raise ValueError(f"{len(query_images)} query images but indices has {q} rows; pass one row per query")
    fig, axes = plt.subplots(q, k + 1, figsize=(cell_size * (k + 1), cell_size * q + 0.4), squeeze=False)
    for row in range(q):
        axes[row, 0].imshow(_to_hwc(query_images[row]), interpolation="nearest")
        if query_labels is not None:
            name = classes[int(query_labels[row])] if classes is not None else str(int(query_labels[row]))
            axes[row, 0].set_title(f"query: {name}", fontsize=7)
        for col in range(k):
            j = int(indices[row, col])
            ax = axes[row, col + 1]
            ax.imshow(_to_hwc(bank_images[j]), interpolation="nearest")
            if similarities is not None:
                ax.set_title(f"{float(similarities[row, col]):.2f}", fontsize=7)
            if query_labels is not None and bank_labels is not None:
                colour = "tab:green" if int(bank_labels[j]) == int(query_labels[row]) else "tab:red"
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2.5)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].figure.tight_layout()
    return fig
