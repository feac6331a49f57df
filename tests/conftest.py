"""Fixtures for every unit test (the repository root's conftest.py sets the data and quick settings)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# support.py, the shared helpers, sits here: tests in subfolders (tests/eval/) import it too,
# whatever pytest's import mode
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine's cores are shared: one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
