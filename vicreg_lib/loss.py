"""The VICReg objective (Bardes, Ponce & LeCun, ICLR 2022).

Two batches of embeddings ``z1, z2: (n, d)`` come from two augmented views of the same n images.
With ``z^j`` the j-th column of Z (one dimension across the batch), the paper (section 3.2) writes

    (1) v(Z)     = 1/d  sum_j max(0, gamma - S(z^j, eps))
    (2) S(x,eps) = sqrt(Var(x) + eps)
    (3) C(Z)     = 1/(n-1) sum_i (z_i - zbar)(z_i - zbar)^T
    (4) c(Z)     = 1/d  sum_{i != j} C(Z)_{ij}^2
    (5) s(Z,Z')  = 1/n  sum_i ||z_i - z'_i||_2^2
    (6) l(Z,Z')  = lam s(Z,Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')]

The paper, the official code and the blog post (github.com/augustwester/vicreg) do not compute
the same numbers. Invariance: the official code and the blog take ``F.mse_loss``, the mean over
n*d entries, i.e. s/d. Variance: the official code *averages* v(Z) and v(Z') with eps 1e-4 in the
square root; the paper and the blog *sum* them, the blog with ``z.std(0)`` and no eps. Covariance:
all three sum c(Z) + c(Z'). This module follows the official code (``convention="official"``);
``convention="blog"`` is the blog's. Which convention the paper's 25/25/1 was tuned with is
stated neither in the paper nor in the official code.

eps and NaN: torch gives ``z.std(0)`` a gradient of 0 at a constant dimension; ``sqrt(var)``
has an infinite one there (1 / (2 sqrt(var))), which eps keeps finite.

Every term is computed in float32, also under autocast: the covariance sums n products per
entry and the variance takes a square root near zero, too imprecise in bf16. Under DDP the
embeddings are gathered first (``hardware.gather_with_grad``), as the official code does.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

CONVENTIONS = ("official", "blog")


class LossTerms(NamedTuple):
    """The weighted total and the three *unweighted* terms (all float32 scalars)."""

    total: torch.Tensor  # lam * invariance + mu * variance + nu * covariance
    invariance: torch.Tensor  # MSE over n*d
    variance: torch.Tensor  # (v(Z) + v(Z')) / 2 (official) or v(Z) + v(Z') without eps (blog)
    covariance: torch.Tensor  # c(Z) + c(Z')


def check_embeddings(z: torch.Tensor, name: str = "z") -> None:
    """Raise ValueError unless z is a (n, d) tensor with n >= 2 (shape only: no wait for the device)."""
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (n, d), got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, d) embeddings, got shape {tuple(z.shape)}; "
                         "flatten the features first, e.g. z.flatten(1)")
    n, d = z.shape
    if n < 2:
        raise ValueError(f"{name} has batch size n={n}; the variance and covariance terms need n >= 2 "
                         "samples per batch -- use a larger batch")
    if d < 1:
        raise ValueError(f"{name} has d={d} embedding dimensions; need d >= 1")


def _check_coefficient(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}; pass a finite number >= 0")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}; pass a non-negative number")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown loss convention {convention!r}: use one of {', '.join(CONVENTIONS)}")


def variance_loss(z: torch.Tensor, gamma: float = 1.0, eps: float | None = 1e-4) -> torch.Tensor:
    """v(Z), eq. (1)-(2), unbiased Var; z: (n, d) -> float32 scalar. ``eps=None``: the blog's ``z.std(0)``."""
    check_embeddings(z)
    _check_coefficient(gamma, "gamma")
    if eps is not None:
        _check_coefficient(eps, "eps")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()  # autocast only touches the ops it lists: bf16 inputs are cast here
        std = z.std(dim=0) if eps is None else torch.sqrt(z.var(dim=0) + eps)  # S(z^j, eps), (d,), eq. (2)
        return F.relu(gamma - std).mean()  # eq. (1)


def invariance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The official code's MSE over all n*d entries, s(Z, Z') / d; z1, z2: (n, d) -> float32 scalar."""
    check_embeddings(z1, "z1")
    check_embeddings(z2, "z2")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape (n, d), got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}; row i of each must embed two views of the same image")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        return F.mse_loss(z1.float(), z2.float())  # s(Z, Z') / d, eq. (5)


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """c(Z), eq. (3)-(4); z: (n, d) -> float32 scalar. Dividing by d, not d(d-1), as the paper and the
    official code do, makes the term grow with d."""
    check_embeddings(z)
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        n, d = z.shape
        centred = z - z.mean(dim=0)
        cov = centred.T @ centred / (n - 1)  # C(Z), (d, d), eq. (3)
        off_diagonal = cov - torch.diag_embed(torch.diagonal(cov))
        return off_diagonal.pow(2).sum() / d  # eq. (4)


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    lam: float = 25.0,
    mu: float = 25.0,
    nu: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    convention: str = "official",
) -> LossTerms:
    """z1, z2: (n, d), row i of each from the same image -> ``LossTerms``; the coefficients are not
    checked (``VICRegLoss`` checks them once). "official": total = lam MSE(Z, Z') + mu (v(Z) + v(Z')) / 2
    + nu (c(Z) + c(Z')); "blog": the variance terms without eps, summed."""
    _check_convention(convention)
    invariance = invariance_loss(z1, z2)
    if convention == "blog":
        variance = variance_loss(z1, gamma, None) + variance_loss(z2, gamma, None)
    else:
        variance = (variance_loss(z1, gamma, eps) + variance_loss(z2, gamma, eps)) / 2
    covariance = covariance_loss(z1) + covariance_loss(z2)
    total = lam * invariance + mu * variance + nu * covariance  # eq. (6), with the code's conventions
    return LossTerms(total, invariance, variance, covariance)


class VICRegLoss(nn.Module):
    """``vicreg_loss`` as a module (as lightly and solo-learn name it), its coefficients checked once."""

    def __init__(self, lam: float = 25.0, mu: float = 25.0, nu: float = 1.0, gamma: float = 1.0,
                 eps: float = 1e-4, convention: str = "official") -> None:
        super().__init__()
        for value, name in ((lam, "lam"), (mu, "mu"), (nu, "nu"), (gamma, "gamma"), (eps, "eps")):
            _check_coefficient(value, name)
        _check_convention(convention)
        self.lam, self.mu, self.nu, self.gamma, self.eps, self.convention = lam, mu, nu, gamma, eps, convention

    def extra_repr(self) -> str:
        return f"lam={self.lam}, mu={self.mu}, nu={self.nu}, convention={self.convention!r}"

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> LossTerms:
        return vicreg_loss(z1, z2, self.lam, self.mu, self.nu, self.gamma, self.eps, self.convention)
