"""The VICReg objective (Bardes, Ponce & LeCun, ICLR 2022).

Two batches of embeddings ``z1, z2: (n, d)`` come from two augmented views of
the same ``n`` images. The paper (section 3.2) defines, with ``z^j`` the
j-th column of ``Z`` (one embedding dimension across the batch):

    (1) v(Z)     = 1/d  sum_j max(0, gamma - S(z^j, eps))
    (2) S(x,eps) = sqrt(Var(x) + eps)
    (3) C(Z)     = 1/(n-1) sum_i (z_i - zbar)(z_i - zbar)^T,   zbar = 1/n sum_i z_i
    (4) c(Z)     = 1/d  sum_{i != j} C(Z)_{ij}^2
    (5) s(Z,Z')  = 1/n  sum_i ||z_i - z'_i||_2^2
    (6) l(Z,Z')  = lam s(Z,Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')]

Paper vs. official code vs. the blog post -- they do not compute the same numbers.
The blog post is the CIFAR-10 tutorial this project started from ("Self-Supervised
Learning of Image Representations With VICReg", sigmoid prime, 2023, and its code in
github.com/augustwester/vicreg):

- eps: inside the square root in the paper (eq. 2) and the official
  ``main_vicreg.py`` (``sqrt(x.var(dim=0) + 0.0001)``); the blog post has none, it
  takes ``z.std(0)``, whose gradient is undefined (NaN) once a dimension collapses.
  ``Var`` is the unbiased (n-1) variance, as ``torch.var`` computes it.
- invariance: the paper's s is a sum over the d dimensions divided by n; the
  official code and the blog post use ``F.mse_loss``, a mean over all n*d
  entries, i.e. s/d.
- variance: the paper and the blog post *sum* v(Z) + v(Z'); the official code
  *averages* them, (v(Z) + v(Z'))/2, so the blog post's mu = 25 weighs the
  variance term twice as much as the official code's.
- covariance: all three sum c(Z) + c(Z').

This module follows the **official code**, because the coefficients
lam = mu = 25, nu = 1 reported in the paper were tuned with it. Under the
paper's literal equations the same coefficients would weight invariance d
times more and variance twice as much.

Two details of the official code live elsewhere in this package: it gathers
embeddings from all GPUs before the variance/covariance terms (see
``distributed.gather_with_grad``), and it calls this loss inside
``torch.autocast``. Here every term is computed in float32 regardless of
autocast: the covariance sums n products per entry and the variance takes a
square root near zero, both of which lose too much precision in bf16/fp16.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F


class VICRegLoss(NamedTuple):
    """The weighted total and the three *unweighted* terms (all float32 scalars)."""

    total: torch.Tensor  # lam * invariance + mu * variance + nu * covariance
    invariance: torch.Tensor  # MSE over n*d
    variance: torch.Tensor  # (v(Z) + v(Z')) / 2
    covariance: torch.Tensor  # c(Z) + c(Z')


def _check_embeddings(z: torch.Tensor, name: str = "z") -> None:
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (n, d), got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (n, d) embeddings, got shape {tuple(z.shape)}; "
            "flatten the features first, e.g. z.flatten(1)"
        )
    n, d = z.shape
    if n < 2:
        raise ValueError(
            f"{name} has batch size n={n}; the variance and covariance terms need n >= 2 "
            "samples per batch -- use a larger batch"
        )
    if d < 1:
        raise ValueError(f"{name} has d={d} embedding dimensions; need d >= 1")


def _check_coefficient(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}; pass a finite number >= 0")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}; pass a non-negative number")


def _float32(z: torch.Tensor) -> torch.Tensor:
    # Autocast only touches the ops it lists; casting explicitly covers bf16 inputs too.
    return z.to(torch.float32)


def variance_loss(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """Hinge on the per-dimension standard deviation, eq. (1)-(2).

    v(Z) = 1/d sum_j max(0, gamma - sqrt(Var(z^j) + eps))

    z: (n, d). Returns a float32 scalar. ``Var`` is unbiased (divides by n-1).
    ``eps`` keeps the gradient finite when a dimension has collapsed: the
    derivative of sqrt(v) is 1/(2 sqrt(v)), infinite at v = 0.
    """
    _check_embeddings(z)
    _check_coefficient(gamma, "gamma")
    _check_coefficient(eps, "eps")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = _float32(z)
        std = torch.sqrt(z.var(dim=0) + eps)  # S(z^j, eps), (d,)
        return F.relu(gamma - std).mean()  # eq. (1)


def invariance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the two views' embeddings.

    Official code: mean over all n*d entries = s(Z, Z') / d, with the paper's
    eq. (5) s(Z, Z') = 1/n sum_i ||z_i - z'_i||^2.

    z1, z2: (n, d). Returns a float32 scalar.
    """
    _check_pair(z1, z2)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        return F.mse_loss(_float32(z1), _float32(z2))


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances divided by d, eq. (3)-(4).

    C(Z) = 1/(n-1) sum_i (z_i - zbar)(z_i - zbar)^T,  c(Z) = 1/d sum_{i != j} C(Z)_ij^2

    z: (n, d). Returns a float32 scalar. Dividing by d (not d*(d-1)) is the
    paper's and the official code's choice; it makes the term grow with d.
    """
    _check_embeddings(z)
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = _float32(z)
        n, d = z.shape
        centred = z - z.mean(dim=0)
        cov = centred.T @ centred / (n - 1)  # C(Z), (d, d), eq. (3)
        off_diagonal = cov - torch.diag_embed(torch.diagonal(cov))
        return off_diagonal.pow(2).sum() / d  # eq. (4)


def _check_pair(z1: torch.Tensor, z2: torch.Tensor) -> None:
    _check_embeddings(z1, "z1")
    _check_embeddings(z2, "z2")
    if z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must have the same shape (n, d), got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}; row i of each must embed two views of the same image"
        )


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    lam: float = 25.0,
    mu: float = 25.0,
    nu: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> VICRegLoss:
    """The VICReg objective with the official code's scaling.

    total = lam * MSE(Z, Z') + mu * (v(Z) + v(Z')) / 2 + nu * (c(Z) + c(Z'))

    compare the paper's eq. (6): lam s(Z,Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')].

    z1, z2: (n, d) embeddings of two views (row i of each from the same image).
    Returns ``VICRegLoss(total, invariance, variance, covariance)``, float32
    scalars; the three terms are unweighted, so ``total`` can be rebuilt from them.
    """
    _check_pair(z1, z2)
    for value, name in ((lam, "lam"), (mu, "mu"), (nu, "nu"), (gamma, "gamma"), (eps, "eps")):
        _check_coefficient(value, name)
    invariance = invariance_loss(z1, z2)
    variance = (variance_loss(z1, gamma, eps) + variance_loss(z2, gamma, eps)) / 2
    covariance = covariance_loss(z1) + covariance_loss(z2)
    total = lam * invariance + mu * variance + nu * covariance
    return VICRegLoss(total, invariance, variance, covariance)
