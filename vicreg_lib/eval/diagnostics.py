"""Is the embedding collapsed? Numbers computed from a batch of embeddings z: (n, d).

Two failure modes matter for joint-embedding methods:

- collapse (the paper's word): every input maps to (nearly) the same vector,
  so every dimension has ~zero spread across the batch. VICReg's variance
  term exists to prevent it.
- dimensional collapse (Jing, Vincent, LeCun & Tian, "Understanding
  Dimensional Collapse in Contrastive Self-supervised Learning", ICLR 2022,
  arXiv:2110.09348): the embeddings vary, but only along a few directions,
  so the (d, d) covariance has only a few non-negligible eigenvalues.
  VICReg's covariance term works against it.

``collapse_report`` gives the verdict ("collapsed", "dimensional collapse" or
"healthy") and the numbers behind it.

Collapse is judged on the absolute spread (against VICReg's target std
gamma = 1), not on a scale-free one: the effective rank, and the spread of
l2-normalised embeddings, ignore scale, and a collapse without a bias in the
last layer shrinks every embedding towards 0 while their directions stay
varied. On 512 CIFAR-10 test images, after 6 epochs of the small model
(width-8 ResNet-18, 512-d embeddings, Adam, lr 1e-3, batch 64), the spread
of the l2-normalised embeddings, sqrt(trace C(z / ||z||)), was 0.57 and 0.60
for the two settings without the variance term, (lam, mu, nu) = (1, 0, 0)
and (25, 0, 1), 0.88 for (25, 25, 1), and 0.18 for the untrained network: no
scale-free line calls the first two collapsed and the last not. The rms std
(0.005, 0.006 and 0.31) separates them.

An untrained network must be measured with BatchNorm statistics of the data.
In eval mode its BatchNorm layers still hold their initial running statistics
(mean 0, variance 1), pass activations through unnormalised, and give an rms
std of about 0.005: a measurement artefact that reads as collapse. The same
network in train mode, or after its running statistics are estimated on
training images, gives about 0.34.

Measure every model on the same held-out images (``heldout_batch``): the
effective rank depends on the batch size n, so only values measured at the
same n compare.

All functions run without gradients and in float64 (sums over n samples of
products, and logs of tiny probabilities, lose too much in float32). Tensors
come back as float64 on z's device; scalars as Python floats.
"""

from __future__ import annotations

import math

import torch

from ..loss import check_embeddings

__all__ = [
    "COLLAPSED", "DIMENSIONAL_COLLAPSE", "HEALTHY", "HELDOUT_BATCH_SIZE",
    "heldout_batch", "per_dim_std", "covariance_matrix", "correlation_matrix", "singular_values",
    "effective_rank", "collapse_report",
]

# the verdicts of collapse_report
COLLAPSED = "collapsed"
DIMENSIONAL_COLLAPSE = "dimensional collapse"
HEALTHY = "healthy"

# images in the held-out batch every model is measured on: at least the embedding width of the
# small models (512), so the effective rank can reach d and is not capped by n - 1
HELDOUT_BATCH_SIZE = 512

_FLOAT64_EPS = torch.finfo(torch.float64).eps


def _as_float64(z: torch.Tensor) -> torch.Tensor:
    check_embeddings(z)
    return z.detach().to(torch.float64)


def heldout_batch(images: torch.Tensor, n: int = HELDOUT_BATCH_SIZE, seed: int = 0) -> torch.Tensor:
    """The fixed held-out batch to measure embeddings on: n images (n, 3, H, W) of ``images``
    (N, 3, H, W), the held-out (test) split, chosen at random with ``seed`` and kept in the split's
    order. The same split, n and seed give the same batch in every notebook and run, so effective
    ranks and verdicts compare across them.

    Raises ValueError when the split has fewer than n images: pass a smaller n explicitly, and
    compare its numbers only with numbers measured at that n.
    """
    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        raise ValueError(f"images must be a torch.Tensor (N, 3, H, W), got {getattr(images, 'shape', type(images))}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if images.shape[0] < n:
        raise ValueError(
            f"the held-out split has {images.shape[0]} images, fewer than n={n}; pass "
            f"n={images.shape[0]} (or fewer) and compare effective ranks only between batches of the same n"
        )
    chosen = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return images[chosen.sort().values]


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

    Batch size: n points span at most n - 1 directions, so with n < d the value
    is capped by n and grows with it; even with n > d a finite sample
    under-counts (an isotropic Gaussian scores about 0.8 d at n = d, about d
    when n >> d). Measure with n >= d (``heldout_batch``: 512 images for the
    512-d embeddings of the small models) and compare values only between
    batches of the same n.
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
      - "collapsed" (``COLLAPSED``, the paper's collapse): the total spread is
        below ``std_threshold``. The spread is the root-mean-square of the
        per-dimension stds, rms_std = sqrt(trace C(Z) / d): every dimension
        together, so one straggler dimension cannot hide a collapse (as it would
        with the max std), and a few live dimensions among many dead ones are
        not called collapsed (as they would be with a threshold on most
        dimensions) but dimensional collapse. The default 0.05 is 5% of
        VICReg's target std gamma = 1, so it suits projector outputs; pass a
        threshold in your features' units for others (e.g. 5% of a healthy or
        untrained model's rms_std).
      - "dimensional collapse" (``DIMENSIONAL_COLLAPSE``, Jing et al., 2022):
        not collapsed, but rank_fraction = effective_rank / min(n - 1, d) is
        below ``rank_fraction_threshold`` (default 0.1): the spread lives in
        under a tenth of the directions available. For scale, an isotropic
        Gaussian batch scores about 0.8 at n = d and about 1 when n >> d, so
        0.1 flags a spectrum far from "uses its dimensions" without firing on
        ordinary finite-sample anisotropy.
      - "healthy" (``HEALTHY``): neither.

    Why the spread is judged in absolute units, and how to measure an untrained
    network: see the module docstring.

    The numbers: n, d, rms_std, mean_std / min_std / max_std (``per_dim_std``),
    fraction_low_std (dims with std below ``std_threshold``), effective_rank
    (``effective_rank``), max_rank = min(n - 1, d) (centring removes one degree
    of freedom, so n - 1 is the most a batch of n can reach), rank_fraction =
    effective_rank / max_rank, and "thresholds" with the two values used.
    Compare reports measured on the same ``heldout_batch``.
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
        report["verdict"] = COLLAPSED
    elif report["rank_fraction"] < rank_fraction_threshold:
        report["verdict"] = DIMENSIONAL_COLLAPSE
    else:
        report["verdict"] = HEALTHY
    return report
