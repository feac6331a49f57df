"""embedding_maps.py: retrieval is exact cosine nearest neighbours; UMAP keeps well-separated clusters apart."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vicreg_lib.tutorial.embedding_maps import nearest_neighbors, umap_2d


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


def test_umap_rejects_bad_input_before_importing_umap():
    with pytest.raises(ValueError, match="2-D"):
        umap_2d(torch.randn(5, 2, 2))
    with pytest.raises(ValueError, match="at least 3 points"):
        umap_2d(np.zeros((2, 4)))


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
