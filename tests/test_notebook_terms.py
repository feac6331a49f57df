"""Notebook 02 writes the three VICReg terms out in a few lines; these tests hold them equal to
vicreg_lib.loss's, so the lesson's code and the library's cannot drift apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vicreg_lib.loss import covariance_loss, invariance_loss, variance_loss

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_loss_terms.ipynb"
MARKER = "# the three VICReg terms"


def terms_cell_source() -> str:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    marked = ["".join(c["source"]) for c in cells
              if c["cell_type"] == "code" and "".join(c["source"]).startswith(MARKER)]
    assert len(marked) == 1, f"{NOTEBOOK.name} must have one code cell starting with {MARKER!r}"
    return marked[0]


def notebook_terms(source: str) -> dict:
    """The cell's three functions (its demonstration lines run too, on the library's names)."""
    namespace = {"torch": torch, "SEED": 0, "variance_loss": variance_loss, "invariance_loss": invariance_loss,
                 "covariance_loss": covariance_loss}
    exec(compile(source, f"{NOTEBOOK.name}: {MARKER[2:]}", "exec"), namespace)
    return {name: namespace[name] for name in ("variance", "invariance", "covariance")}


def assert_same_as_library(terms: dict) -> None:
    generator = torch.Generator().manual_seed(3)
    for n, d, scale in ((16, 4, 1.0), (128, 32, 0.3), (64, 64, 0.01)):
        z1 = scale * torch.randn(n, d, generator=generator)
        z2 = z1 + 0.1 * torch.randn(n, d, generator=generator)
        torch.testing.assert_close(terms["variance"](z1), variance_loss(z1))
        torch.testing.assert_close(terms["invariance"](z1, z2), invariance_loss(z1, z2))
        torch.testing.assert_close(terms["covariance"](z1), covariance_loss(z1))


def test_the_notebook_s_terms_equal_the_library_s():
    assert_same_as_library(notebook_terms(terms_cell_source()))


@pytest.mark.parametrize("old, new", [
    ("z.var(dim=0) + eps", "z.var(dim=0)"),  # the variance without eps: differs at small spreads
    (" - cov.diagonal().pow(2).sum()", ""),  # the covariance with its diagonal
    ("(z1 - z2).pow(2).mean()", "(z1 - z2).pow(2).sum(dim=1).mean()"),  # the paper's s, not the code's s / d
])
def test_the_comparison_notices_a_changed_term(old, new):
    source = terms_cell_source()
    assert old in source
    with pytest.raises(AssertionError):
        assert_same_as_library(notebook_terms(source.replace(old, new)))
