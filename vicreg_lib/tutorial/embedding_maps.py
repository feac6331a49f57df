"""Where features put the images: a 2-D UMAP map of them, and each query's nearest neighbours.
umap-learn is imported inside ``umap_2d`` (its first import compiles numba code, ~15 s).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["umap_2d", "nearest_neighbors"]


def umap_2d(features: torch.Tensor | np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
            metric: str = "cosine") -> np.ndarray:
    """UMAP of features (n, d) -> coords (n, 2) float32, cosine distance; seeded: single-threaded."""
    array = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if array.ndim != 2:
        raise ValueError(f"features must be 2-D (n, d), got shape {array.shape}; flatten images with .flatten(1)")
    if array.shape[0] < 3:
        raise ValueError(f"UMAP needs at least 3 points, got {array.shape[0]}")
    try:
        import umap
    except ImportError as error:
        raise ImportError("umap_2d needs umap-learn: pip install umap-learn") from error

    # n_neighbors must stay below the number of points, or UMAP's graph is ill-defined
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, array.shape[0] - 1), min_dist=min_dist,
                        metric=metric, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")  # the price of a fixed seed
        return reducer.fit_transform(array.astype(np.float32, copy=False)).astype(np.float32)


def nearest_neighbors(query_feats: torch.Tensor, bank_feats: torch.Tensor,
                      k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most cosine-similar rows of bank_feats (n, d) per row of query_feats (q, d): (q, k), (q, k)."""
    if query_feats.ndim != 2 or bank_feats.ndim != 2 or query_feats.shape[1] != bank_feats.shape[1]:
        raise ValueError(f"expected query (q, d) and bank (n, d) features, got shapes "
                         f"{tuple(query_feats.shape)} and {tuple(bank_feats.shape)}; extract both with one model")
    if not 1 <= k <= bank_feats.shape[0]:
        raise ValueError(f"k must be between 1 and the bank size {bank_feats.shape[0]}, got {k}")
    sim = F.normalize(query_feats.float(), dim=1) @ F.normalize(bank_feats.float(), dim=1).T  # (q, n) cosine
    return sim.topk(k, dim=1)
