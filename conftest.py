"""Test-session settings shared by the unit tests and nbval (at the root, so that
`pytest notebooks/NN.ipynb` alone gets them too).

The notebooks read their settings from the environment, and nbval's kernels inherit
this process's environment, so the defaults set here reach them too:

- ``VICREG_FAST=1`` unless set: notebooks run their quick settings under pytest.
- ``VICREG_DATA``: the real CIFAR-10 subset beside the checkout when it exists
  (``../shared/data/cifar10_mini.npz``), else the offline ``synthetic`` set.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
SHARED_MINI = REPO.parent / "shared" / "data" / "cifar10_mini.npz"

os.environ.setdefault("VICREG_FAST", "1")
if "VICREG_DATA" not in os.environ:
    os.environ["VICREG_DATA"] = f"npz:{SHARED_MINI}" if SHARED_MINI.exists() else "synthetic"
# numba (umap-learn) caches its compiled code here, so the second run starts fast
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "vicreg_numba"))
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collectstart(collector):
    # nbval compares only cells marked NBVAL_CHECK_OUTPUT; their stderr (warnings from
    # third-party packages) and HTML reprs vary between machines, so never compare them.
    if str(getattr(collector, "path", "")).endswith(".ipynb"):
        collector.skip_compare = tuple(getattr(collector, "skip_compare", ())) + (
            "stderr",
            "text/html",
            "application/javascript",
            "application/vnd.jupyter.widget-view+json",
        )


@pytest.fixture
def mini_cifar_path() -> Path:
    """Path of the real CIFAR-10 subset; the test is skipped where it is absent."""
    spec = os.environ.get("VICREG_DATA", "")
    if spec.startswith("npz:") and Path(spec[4:]).exists():
        return Path(spec[4:])
    if SHARED_MINI.exists():
        return SHARED_MINI
    pytest.skip("the CIFAR-10 subset ../shared/data/cifar10_mini.npz is not present")
