"""Transitional: the old home of umap_2d, nearest_neighbors and the embedding plots.

The computations moved to ``vicreg_lib.embedding_maps``, the plots to ``vicreg_lib.plotting``.
This module only forwards the old names until ``vicreg_lib/__init__.py`` and the notebooks
import them from there; delete it then.
"""
from __future__ import annotations

from typing import Any

from .embedding_maps import nearest_neighbors, umap_2d

__all__ = ["umap_2d", "nearest_neighbors"]

_MOVED_TO_PLOTTING = ("plot_embedding_scatter", "plot_thumbnails", "plot_retrieval")


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_PLOTTING:
        from . import plotting

        return getattr(plotting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
