from __future__ import annotations

import math

import pytest
import torch

from vicreg_lib.loss import (
    LossTerms,
    VICRegLoss,
    covariance_loss,
    invariance_loss,
    variance_loss,
    vicreg_loss,
)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- invariance -------------------------------------------------------------


def test_identical_views_have_zero_invariance() -> None:
    z = _randn(8, 5)
    assert invariance_loss(z, z.clone()).item() == 0.0


def test_invariance_is_paper_s_divided_by_d() -> None:
    z1, z2 = _randn(6, 4, seed=1), _randn(6, 4, seed=2)
    n, d = z1.shape
    paper_s = ((z1 - z2) ** 2).sum(dim=1).sum() / n  # eq. (5)
    assert invariance_loss(z1, z2).item() == pytest.approx(paper_s.item() / d, rel=1e-6)


# ---- variance ---------------------------------------------------------------


def test_collapsed_batch_variance_is_gamma_minus_sqrt_eps() -> None:
    z = torch.full((16, 8), 3.0)  # every row identical: Var = 0 in every dim
    for gamma, eps in [(1.0, 1e-4), (2.0, 1e-2)]:
        expected = gamma - math.sqrt(0.0 + eps)  # max(0, gamma - sqrt(0 + eps))
        assert variance_loss(z, gamma=gamma, eps=eps).item() == pytest.approx(expected, rel=1e-6)


def test_wide_batch_has_zero_variance_loss() -> None:
    z = 10.0 * _randn(64, 8)  # std ~10 >> gamma = 1 in every dim
    assert variance_loss(z).item() == 0.0


def test_variance_hinge_by_hand() -> None:
    # column 0: [0, 2] -> unbiased Var = 2; column 1: [0, 0] -> Var = 0
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    eps = 1e-4
    per_dim = [max(0.0, 1.0 - math.sqrt(2.0 + eps)), 1.0 - math.sqrt(eps)]
    assert variance_loss(z, eps=eps).item() == pytest.approx(sum(per_dim) / 2, rel=1e-6)


def test_eps_keeps_gradient_finite_at_collapse() -> None:
    z = torch.ones(4, 3, requires_grad=True)
    variance_loss(z, eps=1e-4).backward()
    assert torch.isfinite(z.grad).all()

    # Without eps, d sqrt(v)/dv = 1/(2 sqrt(v)) is infinite at v = 0 and the
    # gradient becomes inf * 0 = nan -- which would poison every weight.
    z0 = torch.ones(4, 3, requires_grad=True)
    variance_loss(z0, eps=0.0).backward()
    assert torch.isnan(z0.grad).all()


def test_gradient_near_collapse_is_finite_and_pushes_rows_apart() -> None:
    z = (1.0 + 1e-3 * _randn(8, 3)).requires_grad_(True)
    variance_loss(z).backward()
    assert torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0
    # a gradient step increases the spread of every dimension
    with torch.no_grad():
        stepped = z - 10.0 * z.grad
    assert (stepped.std(dim=0) > z.detach().std(dim=0)).all()


# ---- covariance -------------------------------------------------------------


def test_decorrelated_dims_have_zero_covariance() -> None:
    # columns of a 4x4 Hadamard matrix other than the all-ones column:
    # zero-mean, mutually orthogonal +-1 patterns
    hadamard = torch.tensor(
        [[1.0, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]
    )
    z = 3.0 * hadamard[:, 1:]
    assert covariance_loss(z).item() == pytest.approx(0.0, abs=1e-7)


def test_whitened_batch_has_zero_covariance() -> None:
    z = _randn(64, 6)
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (z.shape[0] - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov.double())
    whitened = (centred.double() @ eigenvectors / eigenvalues.sqrt()).float()
    assert covariance_loss(whitened).item() == pytest.approx(0.0, abs=1e-8)
    assert covariance_loss(z).item() > 1e-3  # the raw batch is not decorrelated


def test_perfectly_correlated_2d_by_hand() -> None:
    # a = [1, 2, 3], b = 2a.  Centred: a = [-1, 0, 1], b = [-2, 0, 2].
    # C = 1/(n-1) * [[2, 4], [4, 8]] = [[1, 2], [2, 4]];  c = (2^2 + 2^2) / d = 8 / 2 = 4
    a = torch.tensor([1.0, 2.0, 3.0])
    z = torch.stack([a, 2 * a], dim=1)
    assert covariance_loss(z).item() == pytest.approx(4.0, rel=1e-6)


def test_covariance_ignores_the_diagonal() -> None:
    z = torch.tensor([[1.0], [5.0], [-2.0]])  # d = 1: no off-diagonal entries
    assert covariance_loss(z).item() == 0.0


# ---- the full objective -----------------------------------------------------


def test_vicreg_total_is_weighted_sum_of_unweighted_terms() -> None:
    z1, z2 = _randn(16, 8, seed=3), _randn(16, 8, seed=4)
    lam, mu, nu = 2.0, 3.0, 0.5
    out = vicreg_loss(z1, z2, lam=lam, mu=mu, nu=nu)
    assert isinstance(out, LossTerms)
    assert out.invariance.item() == pytest.approx(invariance_loss(z1, z2).item(), rel=1e-6)
    # official code: variance averaged over branches, covariance summed
    expected_var = (variance_loss(z1) + variance_loss(z2)) / 2
    expected_cov = covariance_loss(z1) + covariance_loss(z2)
    assert out.variance.item() == pytest.approx(expected_var.item(), rel=1e-6)
    assert out.covariance.item() == pytest.approx(expected_cov.item(), rel=1e-6)
    weighted = lam * out.invariance + mu * out.variance + nu * out.covariance
    assert out.total.item() == pytest.approx(weighted.item(), rel=1e-6)


def test_vicreg_total_backpropagates() -> None:
    z1 = _randn(8, 4, seed=5).requires_grad_(True)
    z2 = _randn(8, 4, seed=6).requires_grad_(True)
    vicreg_loss(z1, z2).total.backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0
    assert torch.isfinite(z2.grad).all() and z2.grad.abs().sum() > 0


def test_float32_under_bf16_autocast() -> None:
    z1, z2 = 0.3 * _randn(64, 16, seed=7), 0.3 * _randn(64, 16, seed=8)
    reference = vicreg_loss(z1, z2)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        # float32 inputs: the covariance matmul must not be run in bf16
        inside = vicreg_loss(z1, z2)
        # bf16 inputs (what a bf16 projector emits) are upcast
        from_bf16 = vicreg_loss(z1.bfloat16(), z2.bfloat16())
    for field in LossTerms._fields:
        assert getattr(inside, field).dtype == torch.float32
        assert getattr(from_bf16, field).dtype == torch.float32
        assert getattr(inside, field).item() == pytest.approx(getattr(reference, field).item(), rel=1e-5)
    expected_from_bf16 = vicreg_loss(z1.bfloat16().float(), z2.bfloat16().float())
    assert from_bf16.total.item() == pytest.approx(expected_from_bf16.total.item(), rel=1e-5)


# ---- bad input --------------------------------------------------------------


@pytest.mark.parametrize(
    "z, match",
    [
        (torch.zeros(1, 4), "n >= 2"),
        (torch.zeros(4), "2-D"),
        (torch.zeros(2, 3, 4), "2-D"),
        ([[0.0, 1.0], [1.0, 0.0]], "torch.Tensor"),
    ],
)
def test_bad_embeddings_raise(z: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        variance_loss(z)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        covariance_loss(z)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        vicreg_loss(z, z)  # type: ignore[arg-type]


def test_mismatched_shapes_raise() -> None:
    with pytest.raises(ValueError, match="same shape"):
        vicreg_loss(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="same shape"):
        invariance_loss(torch.zeros(4, 3), torch.zeros(5, 3))


@pytest.mark.parametrize("name", ["lam", "mu", "nu", "gamma", "eps"])
@pytest.mark.parametrize("value, match", [(-1.0, ">= 0"), (math.inf, "finite"), (math.nan, "finite")])
def test_bad_coefficients_raise(name: str, value: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VICRegLoss(**{name: value})


def test_bad_gamma_eps_raise_in_variance_loss() -> None:
    z = _randn(4, 3)
    with pytest.raises(ValueError, match="gamma"):
        variance_loss(z, gamma=-0.5)
    with pytest.raises(ValueError, match="eps"):
        variance_loss(z, eps=-1e-4)


def test_the_blog_convention_sums_the_std_hinges_without_eps() -> None:
    z1, z2 = 0.3 * _randn(32, 8, seed=9), 0.3 * _randn(32, 8, seed=10)
    blog = vicreg_loss(z1, z2, convention="blog")
    hinge = lambda z: torch.relu(1 - z.std(0)).mean()  # noqa: E731  (the blog code's line)
    assert blog.variance.item() == pytest.approx((hinge(z1) + hinge(z2)).item(), rel=1e-6)
    official = vicreg_loss(z1, z2)
    assert blog.invariance.item() == official.invariance.item()
    assert blog.covariance.item() == official.covariance.item()
    with pytest.raises(ValueError, match="unknown loss convention"):
        vicreg_loss(z1, z2, convention="paper")


def test_the_module_checks_its_coefficients_once_and_gives_the_function_s_terms() -> None:
    z1, z2 = _randn(16, 8, seed=11), _randn(16, 8, seed=12)
    module = VICRegLoss(lam=2.0, mu=3.0, nu=0.5)
    assert module(z1, z2) == vicreg_loss(z1, z2, lam=2.0, mu=3.0, nu=0.5)
    with pytest.raises(ValueError, match="mu must be >= 0"):
        VICRegLoss(mu=-1.0)


def test_std_gradient_at_a_constant_dimension_is_zero_but_sqrt_var_is_nan() -> None:
    """What loss.py's docstring says: torch's z.std(0) has gradient 0 there, sqrt(var) gives NaN."""
    z = torch.ones(8, 2).requires_grad_(True)
    torch.relu(1 - z.std(0)).mean().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    z.grad = None
    torch.relu(1 - torch.sqrt(z.var(0))).mean().backward()
    assert torch.isnan(z.grad).all()
