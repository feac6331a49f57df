"""Is the embedding collapsed? Numbers of a batch of embeddings z: (n, d). Collapse: every input maps
to (nearly) one vector (the variance term prevents it); dimensional collapse (Jing et al., ICLR 2022):
they vary along a few directions only (the covariance term works against it). Collapse is judged on
the absolute spread (target std gamma = 1): without a last-layer bias a collapse shrinks embeddings
towards 0 with varied directions, so l2-normalised spreads (0.57, 0.60 collapsed vs 0.88 healthy) do
not separate what the rms std (0.005, 0.006 vs 0.31) does. The effective rank depends on n: use the
same `heldout_batch`. All in float64 (float32 loses too much in sums of n products), without
gradients, returned on z's device.
"""

from __future__ import annotations

import math

import torch

from ..loss import check_embeddings

__all__ = ["COLLAPSED", "DIMENSIONAL_COLLAPSE", "HEALTHY", "HELDOUT_BATCH_SIZE", "heldout_batch", "per_dim_std",
           "covariance_matrix", "correlation_matrix", "singular_values", "effective_rank", "collapse_report"]

COLLAPSED, DIMENSIONAL_COLLAPSE, HEALTHY = "collapsed", "dimensional collapse", "healthy"  # the verdicts

HELDOUT_BATCH_SIZE = 512  # at least the small models' embedding width: the effective rank is not capped by n - 1

_FLOAT64_EPS = torch.finfo(torch.float64).eps


def _as_float64(z: torch.Tensor) -> torch.Tensor:
    check_embeddings(z)
    return z.detach().to(torch.float64)


def heldout_batch(images: torch.Tensor, n: int = HELDOUT_BATCH_SIZE, seed: int = 0) -> torch.Tensor:
    """n seeded images (n, 3, H, W) of images (N, 3, H, W), in order: the same in every run."""
    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        raise ValueError(f"images must be a tensor (N, 3, H, W), got {getattr(images, 'shape', type(images))}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if images.shape[0] < n:
        raise ValueError(f"the held-out split has {images.shape[0]} images, fewer than n={n}; pass "
                         f"n={images.shape[0]} (or fewer) and compare effective ranks only at the same n")
    chosen = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return images[chosen.sort().values]


def _centred(z64: torch.Tensor) -> torch.Tensor:
    return z64 - z64.mean(dim=0)


@torch.no_grad()
def per_dim_std(z: torch.Tensor) -> torch.Tensor:
    """Unbiased std of each dimension, z: (n, d) -> (d,): what VICReg's variance term hinges at gamma."""
    return _as_float64(z).std(dim=0)


@torch.no_grad()
def covariance_matrix(z: torch.Tensor) -> torch.Tensor:
    """C(Z) = 1/(n-1) sum_i (z_i - zbar)(z_i - zbar)^T, z: (n, d) -> (d, d) (paper eq. 3)."""
    centred = _centred(_as_float64(z))
    return centred.T @ centred / (centred.shape[0] - 1)


@torch.no_grad()
def correlation_matrix(z: torch.Tensor) -> torch.Tensor:
    """Pearson correlations, z: (n, d) -> (d, d) in [-1, 1]. A dimension without spread has none
    defined: its row and column are 0, diagonal included (blank lines in a heat map, not NaN)."""
    z64 = _as_float64(z)
    cov = covariance_matrix(z64)
    std = cov.diagonal().clamp(min=0).sqrt()
    # round-off from centring a constant column is at most ~ n * eps * max|z_j|
    alive = std > z64.shape[0] * _FLOAT64_EPS * z64.abs().amax(dim=0)
    safe_std = torch.where(alive, std, torch.ones_like(std))
    corr = cov / torch.outer(safe_std, safe_std)
    corr = (corr * torch.outer(alive, alive).to(corr.dtype)).clamp(-1.0, 1.0)
    corr.diagonal().copy_(alive.to(corr.dtype))  # exactly 1 (or 0 for a dead dim), not 1 - round-off
    return corr


@torch.no_grad()
def singular_values(z: torch.Tensor) -> torch.Tensor:
    """Singular values of the centred z: (n, d) -> (min(n, d),), descending (sigma^2 / (n-1): C(Z)'s eigenvalues)."""
    return torch.linalg.svdvals(_centred(_as_float64(z)))


@torch.no_grad()
def effective_rank(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023) of centred z: (n, d): exp(-sum_k p_k log p_k), p_k = sigma_k /
    ||sigma||_1 + eps; round-off sigmas count as 0. An isotropic Gaussian scores ~0.8 d at n = d."""
    z64 = _as_float64(z)
    sigma = singular_values(z64)
    noise_floor = max(z64.shape) * _FLOAT64_EPS * torch.linalg.norm(z64).item()  # round-off from centring
    sigma = torch.where(sigma > noise_floor, sigma, torch.zeros_like(sigma))
    total = sigma.sum()
    if total == 0:
        return 0.0
    p = sigma / total + eps
    return math.exp(-(p * p.log()).sum().item())


def _check_threshold(value: float, name: str, upper: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= upper:
        raise ValueError(f"{name} must be a number in (0, {upper}], got {value!r}")


@torch.no_grad()
def collapse_report(z: torch.Tensor, std_threshold: float = 0.05, rank_fraction_threshold: float = 0.1) -> dict:
    """The verdict on z: (n, d) with the numbers behind it: "collapsed" when rms_std = sqrt(trace C(Z) / d)
    < std_threshold (5% of gamma, for projector outputs), else "dimensional collapse" when effective_rank
    / min(n - 1, d) < rank_fraction_threshold, else "healthy"."""
    _check_threshold(std_threshold, "std_threshold", upper=math.inf)
    _check_threshold(rank_fraction_threshold, "rank_fraction_threshold", upper=1.0)
    z64 = _as_float64(z)
    n, d = z64.shape
    std = per_dim_std(z64)
    rank = effective_rank(z64)
    max_rank = min(n - 1, d)
    rms_std = std.pow(2).mean().sqrt().item()  # sqrt(trace C(Z) / d)
    verdict = (COLLAPSED if rms_std < std_threshold else
               DIMENSIONAL_COLLAPSE if rank / max_rank < rank_fraction_threshold else HEALTHY)
    return {"n": n, "d": d, "rms_std": rms_std, "mean_std": std.mean().item(), "min_std": std.min().item(),
            "max_std": std.max().item(), "fraction_low_std": (std < std_threshold).double().mean().item(),
            "effective_rank": rank, "max_rank": max_rank, "rank_fraction": rank / max_rank,
            "thresholds": {"std_threshold": std_threshold, "rank_fraction_threshold": rank_fraction_threshold},
            "verdict": verdict}
