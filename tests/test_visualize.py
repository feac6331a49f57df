"""visualize.py: retrieval is exact cosine nearest neighbours; the plots draw what they are given;
UMAP keeps well-separated clusters apart."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from vicreg_lib.visualize import (
    _spread_points,
    nearest_neighbors,
    plot_embedding_scatter,
    plot_retrieval,
    plot_thumbnails,
    umap_2d,
)


def test_nearest_neighbors_matches_brute_force_cosine():
    g = torch.Generator().manual_seed(0)
    query, bank = torch.randn(4, 8, generator=g), torch.randn(30, 8, generator=g)
    sims, idx = nearest_neighbors(query, bank, k=3)
    assert sims.shape == idx.shape == (4, 3)
    cosine = torch.stack([torch.nn.functional.cosine_similarity(q[None], bank) for q in query])  # (4, 30)
    expected = cosine.argsort(dim=1, descending=True)[:, :3]
    assert torch.equal(idx, expected)
    assert torch.allclose(sims, cosine.gather(1, expected), atol=1e-6)
    assert (sims[:, :-1] >= sims[:, 1:]).all()  # most similar first


def test_nearest_neighbors_ignores_scale():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    _, idx = nearest_neighbors(torch.tensor([[100.0, 1.0]]), bank * torch.tensor([[0.01], [50.0], [3.0]]), k=1)
    assert idx.item() == 0  # direction, not length, decides


def test_nearest_neighbors_rejects_bad_input():
    with pytest.raises(ValueError, match="extract both with one model"):
        nearest_neighbors(torch.randn(2, 8), torch.randn(5, 4))
    with pytest.raises(ValueError, match="k must be between 1 and the bank size 5"):
        nearest_neighbors(torch.randn(2, 4), torch.randn(5, 4), k=6)


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
    assert sum(len(c.get_offsets()) for c in ax.collections) == 30
    plt.close("all")
    with pytest.raises(ValueError, match="coords"):
        plot_embedding_scatter(coords[:, :1], labels)


def test_thumbnails_and_retrieval_draw_images():
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    coords = np.random.default_rng(0).normal(size=(20, 2))
    ax = plot_thumbnails(coords, images, num_thumbnails=5)
    assert len(ax.artists) == 5
    labels = torch.arange(20) % 2
    sims, idx = nearest_neighbors(images[:3].flatten(1).float(), images.flatten(1).float(), k=4)
    fig = plot_retrieval(images[:3], images, idx, labels[:3], labels, ["a", "b"], sims)
    assert len(fig.axes) == 3 * 5
    # each query retrieves itself first: its frame is green (same class)
    assert idx[:, 0].tolist() == [0, 1, 2]
    assert fig.axes[1].spines["left"].get_edgecolor() == matplotlib.colors.to_rgba("tab:green")
    plt.close("all")
    with pytest.raises(ValueError, match="one row per query"):
        plot_retrieval(images[:2], images, idx)


def test_umap_keeps_separated_clusters_apart():
    pytest.importorskip("umap")
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(16)[:2] * 10  # two clusters in different directions
    features = torch.cat([centres[0] + torch.randn(25, 16, generator=g), centres[1] + torch.randn(25, 16, generator=g)])
    coords = umap_2d(features, seed=0, n_neighbors=10)
    assert coords.shape == (50, 2) and coords.dtype == np.float32
    a, b = coords[:25], coords[25:]
    within = max(np.linalg.norm(a - a.mean(0), axis=1).max(), np.linalg.norm(b - b.mean(0), axis=1).max())
    assert np.linalg.norm(a.mean(0) - b.mean(0)) > within
    with pytest.raises(ValueError, match="2-D"):
        umap_2d(torch.randn(5, 2, 2))
