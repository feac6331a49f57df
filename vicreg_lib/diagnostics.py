"""Is the embedding collapsed? Numbers computed from a batch of embeddings z: (n, d).

Two failure modes matter for joint-embedding methods:

- complete collapse: every input maps to (nearly) the same vector, so every
  dimension has ~zero spread across the batch. VICReg's variance term exists
  to prevent it.
- dimensional collapse: the embeddings vary, but only along a few directions,
  so the (d, d) covariance has only a few non-negligible eigenvalues. VICReg's
  covariance term works against it.

All functions run without gradients and in float64 (sums over n samples of
products, and logs of tiny probabilities, lose too much in float32). Tensors
come back as float64 on z's device; scalars as Python floats.
"""

from __future__ import annotations

import math

import torch

_FLOAT64_EPS = torch.finfo(torch.float64).eps


def _as_float64(z: torch.Tensor) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"z must be a torch.Tensor of shape (n, d), got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(
            f"z must be 2-D (n, d) embeddings, got shape {tuple(z.shape)}; "
            "flatten it first, e.g. z.flatten(1)"
        )
    if z.shape[0] < 2 or z.shape[1] < 1:
        raise ValueError(f"z needs at least 2 samples and 1 dimension, got shape {tuple(z.shape)}")
    return z.detach().to(torch.float64)


def _centred(z64: torch.Tensor) -> torch.Tensor:
    return z64 - z64.mean(dim=0)


def _noise_floor(z64: torch.Tensor) -> float:
    """Spread below this is float64 round-off from centring, not signal."""
    n, d = z64.shape
    return max(n, d) * _FLOAT64_EPS * torch.linalg.norm(z64).item()


@torch.no_grad()
def per_dim_std(z: torch.Tensor) -> torch.Tensor:
    """Standard deviation of each dimension over the batch, z: (n, d) -> (d,).

    Unbiased (divides by n-1), the quantity VICReg's variance term hinges at gamma.
    """
    return _as_float64(z).std(dim=0)


@torch.no_grad()
def covariance_matrix(z: torch.Tensor) -> torch.Tensor:
    """C(Z) = 1/(n-1) sum_i (z_i - zbar)(z_i - zbar)^T, z: (n, d) -> (d, d) (paper eq. 3)."""
    z64 = _as_float64(z)
    centred = _centred(z64)
    return centred.T @ centred / (z64.shape[0] - 1)


@torch.no_grad()
def correlation_matrix(z: torch.Tensor) -> torch.Tensor:
    """Pearson correlations between dimensions, z: (n, d) -> (d, d), entries in [-1, 1].

    A dimension with no spread (std at the round-off level) has no defined
    correlation: its whole row and column are 0, diagonal included, so dead
    dimensions show up as blank lines in a heat map instead of as NaN.
    """
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
    """Singular values of the centred embeddings, z: (n, d) -> (min(n, d),), descending.

    sigma_k^2 / (n-1) are the eigenvalues of the covariance matrix C(Z).
    """
    return torch.linalg.svdvals(_centred(_as_float64(z)))


@torch.no_grad()
def effective_rank(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023): a smooth count of the directions used.

        p_k  = sigma_k / ||sigma||_1 + eps
        rank = exp(-sum_k p_k log p_k)

    with sigma the singular values of the embeddings. It equals the number of
    singular values when they are all equal (at most min(n - 1, d) after
    centring) and 1 when a single direction carries everything.

    Unlike RankMe, the embeddings are centred first: a common offset (VICReg
    embeddings need not have zero mean) is not a direction the batch varies
    along, and a large offset would otherwise hide the spread. Singular values
    at the float64 round-off level are treated as 0; a batch with no spread at
    all (every row equal) has effective rank 0.
    """
    z64 = _as_float64(z)
    sigma = singular_values(z64)
    sigma = torch.where(sigma > _noise_floor(z64), sigma, torch.zeros_like(sigma))
    total = sigma.sum()
    if total == 0:
        return 0.0
    p = sigma / total + eps
    return math.exp(-(p * p.log()).sum().item())


def _check_threshold(value: float, name: str, upper: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= upper:
        raise ValueError(f"{name} must be a number in (0, {upper}], got {value!r}")


@torch.no_grad()
def collapse_report(
    z: torch.Tensor,
    std_threshold: float = 0.05,
    rank_fraction_threshold: float = 0.1,
) -> dict:
    """Diagnose a batch of embeddings z: (n, d) and give the numbers behind the verdict.

    verdict:
      - "complete": the total spread is below ``std_threshold``. The spread is
        the root-mean-square of the per-dimension stds, rms_std =
        sqrt(trace C(Z) / d): every dimension together, so one straggler
        dimension cannot hide a collapse (as it would with the max std), and a
        few live dimensions among many dead ones are not called complete (as
        they would be with a threshold on most dimensions) but dimensional.
        The default 0.05 is 5% of VICReg's target std gamma = 1, so it suits
        projector outputs; pass a threshold in your data's units for other
        features (e.g. 0.05 * a healthy model's rms_std).
      - "dimensional": not complete, but rank_fraction = effective_rank /
        min(n - 1, d) is below ``rank_fraction_threshold`` (default 0.1): the spread
        lives in under a tenth of the directions available. For scale, an
        isotropic Gaussian batch scores about 0.8 at n = d and about 1 when
        n >> d, so 0.1 flags a spectrum far from "uses its dimensions" without
        firing on ordinary finite-sample anisotropy. The effective rank ignores
        scale, which is why complete collapse is judged on the spread first.
      - "ok": neither.

    The numbers: n, d, rms_std, mean_std / min_std / max_std (``per_dim_std``),
    fraction_low_std (dims with std below ``std_threshold``), effective_rank
    (``effective_rank``), max_rank = min(n - 1, d) (centring removes one degree
    of freedom, so n - 1 is the most a batch of n can reach), rank_fraction =
    effective_rank / max_rank, and
    "thresholds" with the two values used.
    """
    _check_threshold(std_threshold, "std_threshold", upper=math.inf)
    _check_threshold(rank_fraction_threshold, "rank_fraction_threshold", upper=1.0)
    z64 = _as_float64(z)
    n, d = z64.shape
    std = per_dim_std(z64)
    rank = effective_rank(z64)
    max_rank = min(n - 1, d)
    report = {
        "n": n,
        "d": d,
        "rms_std": std.pow(2).mean().sqrt().item(),  # sqrt(trace C(Z) / d)
        "mean_std": std.mean().item(),
        "min_std": std.min().item(),
        "max_std": std.max().item(),
        "fraction_low_std": (std < std_threshold).double().mean().item(),
        "effective_rank": rank,
        "max_rank": max_rank,
        "rank_fraction": rank / max_rank,
        "thresholds": {"std_threshold": std_threshold, "rank_fraction_threshold": rank_fraction_threshold},
    }
    if report["rms_std"] < std_threshold:
        report["verdict"] = "complete"
    elif report["rank_fraction"] < rank_fraction_threshold:
        report["verdict"] = "dimensional"
    else:
        report["verdict"] = "ok"
    return report
