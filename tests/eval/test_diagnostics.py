from __future__ import annotations

import pytest
import torch

from vicreg_lib.eval.diagnostics import (
    COLLAPSED,
    DIMENSIONAL_COLLAPSE,
    HEALTHY,
    collapse_report,
    correlation_matrix,
    covariance_matrix,
    effective_rank,
    heldout_batch,
    per_dim_std,
    singular_values,
)


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rank_k(n: int, d: int, k: int, seed: int = 0) -> torch.Tensor:
    """n points spread isotropically inside a random k-dim subspace of R^d."""
    basis, _ = torch.linalg.qr(_randn(d, k, seed=seed))  # (d, k), orthonormal columns
    return _randn(n, k, seed=seed + 1) @ basis.T


# ---- the matrices -----------------------------------------------------------


def test_std_and_covariance_match_torch() -> None:
    z = _randn(50, 6)
    torch.testing.assert_close(per_dim_std(z), z.double().std(dim=0))
    torch.testing.assert_close(covariance_matrix(z), torch.cov(z.double().T))
    assert covariance_matrix(z).dtype == torch.float64


def test_correlation_matches_torch_corrcoef() -> None:
    z = _randn(40, 5) @ _randn(5, 5, seed=1)  # correlated dims
    torch.testing.assert_close(correlation_matrix(z), torch.corrcoef(z.double().T))


def test_correlation_of_perfectly_correlated_dims_is_plus_minus_one() -> None:
    a = _randn(30)
    z = torch.stack([a, 2 * a, -3 * a + 5], dim=1)
    expected = torch.tensor([[1.0, 1, -1], [1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    torch.testing.assert_close(correlation_matrix(z), expected)


def test_correlation_is_zero_for_a_dead_dimension() -> None:
    z = _randn(37, 3, dtype=torch.float64)
    z[:, 1] = 7 * _randn(1, dtype=torch.float64).item()  # constant; centring leaves ~1e-15 round-off
    assert (z - z.mean(dim=0))[:, 1].abs().max() > 0  # the case this test is about
    corr = correlation_matrix(z)
    assert torch.isfinite(corr).all()
    assert (corr[1] == 0).all() and (corr[:, 1] == 0).all()
    assert corr[0, 0] == 1.0 and corr[2, 2] == 1.0


def test_singular_values_descending_and_match_covariance_eigenvalues() -> None:
    for n, d in [(20, 6), (5, 12)]:
        z = _randn(n, d) + 3.0
        sigma = singular_values(z)
        assert sigma.shape == (min(n, d),)
        assert (sigma[:-1] >= sigma[1:]).all()
        eigenvalues = torch.linalg.eigvalsh(covariance_matrix(z)).flip(0)[: min(n, d)]
        torch.testing.assert_close(sigma**2 / (n - 1), eigenvalues.clamp(min=0), atol=1e-10, rtol=1e-8)


# ---- effective rank ---------------------------------------------------------


@pytest.mark.parametrize("n, d", [(4000, 16), (20, 2000)])
def test_effective_rank_of_isotropic_gaussian_is_nearly_full(n: int, d: int) -> None:
    max_rank = min(n - 1, d)  # centring removes one degree of freedom
    assert effective_rank(_randn(n, d)) == pytest.approx(max_rank, rel=0.05)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_effective_rank_of_rank_k_data_is_k(k: int) -> None:
    assert effective_rank(_rank_k(3000, 32, k)) == pytest.approx(k, rel=0.05)


def test_effective_rank_of_a_constant_batch_is_zero() -> None:
    z = (7 * _randn(1, 8, dtype=torch.float64)).expand(37, 8)  # every row the same
    assert singular_values(z)[0] > 0  # centring leaves float64 round-off ...
    assert effective_rank(z) == 0.0  # ... which must not count as directions
    assert effective_rank(z + 1e-6 * _randn(37, 8)) > 5  # tiny but real spread does count


def test_effective_rank_ignores_a_common_offset() -> None:
    z = _randn(2000, 16)
    assert effective_rank(z + 1000.0) == pytest.approx(effective_rank(z), rel=1e-6)


def test_effective_rank_by_hand() -> None:
    # two orthogonal directions with singular values in ratio 3:1 -> p = (3/4, 1/4)
    z = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    expected = torch.exp(-(p * p.log()).sum()).item()
    assert effective_rank(z, eps=0.0) == pytest.approx(expected, rel=1e-9)


# ---- collapse report --------------------------------------------------------


def test_report_on_a_collapsed_batch() -> None:
    z = 4.0 + 1e-4 * _randn(256, 32)  # same vector for every input, plus noise
    report = collapse_report(z)
    assert report["verdict"] == COLLAPSED == "collapsed"
    assert report["fraction_low_std"] == 1.0


def test_report_on_a_dimensionally_collapsed_batch() -> None:
    z = 3.0 * _rank_k(256, 64, 2)  # large spread, but along 2 of 64 directions
    report = collapse_report(z)
    assert report["verdict"] == DIMENSIONAL_COLLAPSE == "dimensional collapse"
    assert report["max_std"] > 0.1
    assert report["rank_fraction"] < 0.1


def test_report_on_a_healthy_batch() -> None:
    report = collapse_report(_randn(256, 64))
    assert report["verdict"] == HEALTHY == "healthy"
    assert report["rank_fraction"] > 0.8


def test_report_thresholds_are_used_and_recorded() -> None:
    z = 3.0 * _rank_k(256, 64, 2)
    report = collapse_report(z, rank_fraction_threshold=0.01)
    assert report["verdict"] == HEALTHY
    assert report["thresholds"] == {"std_threshold": 0.05, "rank_fraction_threshold": 0.01}
    assert collapse_report(z, std_threshold=100.0)["verdict"] == COLLAPSED


def test_report_numbers_agree_with_the_functions() -> None:
    z = _randn(128, 16) * torch.linspace(0.01, 2.0, 16)
    report = collapse_report(z, std_threshold=0.5)
    std = per_dim_std(z)
    assert report["n"] == 128 and report["d"] == 16
    assert report["mean_std"] == pytest.approx(std.mean().item())
    assert report["min_std"] == pytest.approx(std.min().item())
    assert report["max_std"] == pytest.approx(std.max().item())
    assert report["fraction_low_std"] == pytest.approx((std < 0.5).double().mean().item())
    assert 0 < report["fraction_low_std"] < 1
    assert report["effective_rank"] == pytest.approx(effective_rank(z))
    assert report["max_rank"] == 16
    assert report["rms_std"] == pytest.approx(std.pow(2).mean().sqrt().item())
    assert report["rank_fraction"] == pytest.approx(effective_rank(z) / 16)


def test_one_straggler_dimension_does_not_hide_a_collapse() -> None:
    # every dimension collapsed but one that keeps 2% of the target spread: still collapsed
    z = 1e-3 * _randn(256, 64)
    z[:, 0] *= 20.0
    report = collapse_report(z)
    assert report["max_std"] > 0.015
    assert report["verdict"] == COLLAPSED


def test_a_few_live_dimensions_among_dead_ones_are_dimensional_collapse() -> None:
    # 8 of 512 dimensions carry unit spread, the rest none: most dims are dead, yet the
    # batch still separates inputs along 8 directions
    z = torch.zeros(256, 512, dtype=torch.float64)
    z[:, :8] = _randn(256, 8)
    report = collapse_report(z)
    assert report["fraction_low_std"] > 0.9
    assert report["verdict"] == DIMENSIONAL_COLLAPSE


def _untrained_vicreg(seed: int = 0):
    from vicreg_lib.model import VICReg, Projector, resnet18_cifar

    torch.manual_seed(seed)
    encoder = resnet18_cifar(width=4)
    return VICReg(encoder, Projector.from_spec(encoder.out_dim, "128-128-128"))


@torch.no_grad()
def test_an_untrained_network_is_not_collapsed_when_measured_with_batch_statistics() -> None:
    model = _untrained_vicreg()
    images = _randn(256, 3, 32, 32, seed=1)
    model.train()  # BatchNorm normalises with the batch's statistics, as in training
    untrained = collapse_report(model.embed(images))
    assert untrained["verdict"] == HEALTHY
    # the measurement artefact the module docstring warns about: in eval mode the BatchNorms
    # still hold their initial running statistics and pass tiny activations through unnormalised
    model.eval()
    assert collapse_report(model.embed(images))["verdict"] == COLLAPSED
    # the collapse that invariance-only training reaches: the last layer shrinks, every
    # embedding moves towards 0 and keeps its direction (the effective rank does not change)
    model.train()
    model.projector[-1].weight.mul_(0.01)
    shrunk = collapse_report(model.embed(images))
    assert shrunk["verdict"] == COLLAPSED
    assert shrunk["effective_rank"] == pytest.approx(untrained["effective_rank"], rel=1e-6)


def test_small_scale_judged_against_its_own_healthy_spread_is_not_collapsed() -> None:
    # features in other units (e.g. an encoder's): the threshold follows the features' scale
    z = 0.01 * _randn(512, 64)
    assert collapse_report(z)["verdict"] == COLLAPSED  # against VICReg's gamma = 1
    assert collapse_report(z, std_threshold=0.05 * 0.01)["verdict"] == HEALTHY


# ---- the held-out batch -----------------------------------------------------


def test_heldout_batch_is_the_same_seeded_subset_every_time() -> None:
    images = torch.arange(2000).view(2000, 1, 1, 1).expand(2000, 3, 2, 2)
    batch = heldout_batch(images)
    assert batch.shape == (512, 3, 2, 2)
    ids = batch[:, 0, 0, 0]
    assert len(set(ids.tolist())) == 512  # no image twice
    assert (ids[1:] > ids[:-1]).all()  # kept in the split's order
    assert torch.equal(heldout_batch(images), batch)  # the same batch for every caller
    assert not torch.equal(heldout_batch(images, seed=1), batch)
    assert torch.equal(heldout_batch(images, n=2000)[:, 0, 0, 0], torch.arange(2000))


def test_heldout_batch_is_the_training_loops_held_out_subset() -> None:
    # train.py measures its per-epoch std and effective rank on random_subset(..., seed=0): the
    # same images, so the numbers of a run and of the notebooks compare
    from vicreg_lib.data import random_subset

    images = torch.randint(0, 256, (1200, 3, 2, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected, _ = random_subset(images, torch.zeros(1200, dtype=torch.long), 512, seed=0)
    assert torch.equal(heldout_batch(images), expected)


def test_heldout_batch_refuses_a_split_smaller_than_n() -> None:
    with pytest.raises(ValueError, match="has 100 images, fewer than n=512; pass n=100"):
        heldout_batch(torch.zeros(100, 3, 4, 4))
    for bad in (1, 2.5, True):
        with pytest.raises(ValueError, match="n must be"):
            heldout_batch(torch.zeros(10, 3, 4, 4), n=bad)


# ---- bad input --------------------------------------------------------------


@pytest.mark.parametrize(
    "function",
    [per_dim_std, covariance_matrix, correlation_matrix, singular_values, effective_rank, collapse_report],
)
@pytest.mark.parametrize("z", [torch.zeros(5), torch.zeros(1, 4), torch.zeros(2, 3, 4), [[1.0, 2.0]]])
def test_bad_embeddings_raise(function, z: object) -> None:
    with pytest.raises(ValueError, match="z"):
        function(z)


@pytest.mark.parametrize(
    "kwargs",
    [dict(std_threshold=0.0), dict(std_threshold=-1.0), dict(rank_fraction_threshold=0.0),
     dict(rank_fraction_threshold=1.5), dict(std_threshold=float("nan"))],
)
def test_bad_thresholds_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        collapse_report(_randn(8, 4), **kwargs)
