"""The training step written out in notebook 04 and the library's step compute the same thing.

Notebook 04 shows VICReg's training step as about twenty lines of its own (the cell whose first
line is ``# the VICReg training step``) so that a learner reads the method, while every real run
goes through ``vicreg_lib.train.training_step``. These tests take that cell's code from the
committed notebook, run it, and compare it with the library's step on one batch: the same
starting weights, the same two views, the `fast` preset's optimizer and loss. The loss, its
three terms, every parameter's gradient and the weights after the step must agree, so neither
side can change without the other.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from vicreg_lib.config import TrainConfig
from vicreg_lib.loss import VICRegLoss
from vicreg_lib.model import build_model
from vicreg_lib.optim import build_optimizer
from vicreg_lib.train import training_step

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_pretraining.ipynb"
MARKER = "# the VICReg training step"
STEP_NAME = "vicreg_step"  # the function the cell defines: vicreg_step(model, optimizer, view1, view2, ...)
PRESET = "fast"  # the preset whose loss convention and coefficients the notebook's step claims


def step_cell_source(path: Path | None = None) -> str:
    """The code of the one cell of `path` (default: notebook 04) whose first line is MARKER."""
    path = NOTEBOOK if path is None else path
    cells = json.loads(path.read_text())["cells"]
    sources = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    marked = [source for source in sources if source.lstrip().splitlines()[:1] == [MARKER]]
    assert len(marked) == 1, (f"{path.name} must have exactly one code cell starting with {MARKER!r}, "
                              f"found {len(marked)}")
    return marked[0]


def notebook_step(source: str):
    """Run the cell's code in a fresh namespace and return the step function it defines."""
    namespace: dict = {}
    exec(compile(source, f"{NOTEBOOK.name}: {MARKER[2:]}", "exec"), namespace)
    assert callable(namespace.get(STEP_NAME)), f"the marked cell must define {STEP_NAME}()"
    return namespace[STEP_NAME]


def _setup(seed: int = 0):
    """A small model of the preset's architecture family, its optimizer settings, and one batch of views."""
    config = TrainConfig.from_preset(PRESET, width=4, projector="64-64-64", batch_size=16)
    torch.manual_seed(seed)
    model = build_model(**config.arch()).train()
    generator = torch.Generator().manual_seed(seed + 1)
    view1 = torch.randn(config.batch_size, 3, 32, 32, generator=generator)
    view2 = view1 + 0.5 * torch.randn(view1.shape, generator=generator)  # a second, related view
    return config, model, view1, view2


def _optimizer(model, config: TrainConfig):
    return build_optimizer(model, config.optimizer, config.lr, config.weight_decay, eta=config.lars_eta,
                           clip=config.lars_clip)


def compare_with_library(step, steps: int = 2, **step_kwargs) -> None:
    """Run `step` and the library's training_step side by side for `steps` steps on copies of one
    model; raise AssertionError at the first loss term, gradient or weight that differs."""
    config, model, view1, view2 = _setup()
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    our_optimizer, their_optimizer = _optimizer(ours, config), _optimizer(theirs, config)
    loss_fn = VICRegLoss(config.lam, config.mu, config.nu, convention=config.loss_convention)
    for index in range(steps):
        our_terms = step(ours, our_optimizer, view1, view2, **step_kwargs)
        their_terms = training_step(theirs, loss_fn, their_optimizer, view1, view2, lr=config.lr)
        assert len(our_terms) == 4, "the step returns [loss, invariance, variance, covariance]"
        for name, our, their in zip(("loss", "invariance", "variance", "covariance"), our_terms, their_terms):
            torch.testing.assert_close(torch.tensor(float(our)), their.detach().float(), rtol=1e-5, atol=1e-6,
                                       msg=lambda m, name=name: f"step {index}: {name} differs: {m}")
        for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
            assert (p.grad is None) == (q.grad is None), f"step {index}: one side has no gradient for {name}"
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6,
                                           msg=lambda m, name=name: f"step {index}: gradient of {name}: {m}")
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-4, atol=1e-6,
                                       msg=lambda m, name=name: f"step {index}: {name} after the step: {m}")


def test_notebook_step_matches_library_training_step():
    compare_with_library(notebook_step(step_cell_source()))


def test_comparison_notices_a_changed_coefficient():
    # the same cell with another variance weight: the comparison above must fail
    step = notebook_step(step_cell_source())
    with pytest.raises(AssertionError):
        compare_with_library(step, mu=20.0)


def test_comparison_notices_a_changed_convention():
    # the blog post's convention (variance summed over the views, no eps) is not what `fast` trains with
    source = step_cell_source()
    averaged = "(variance(z1) + variance(z2)) / 2"
    assert averaged in source, "the notebook's step should average the two views' variance terms"
    with pytest.raises(AssertionError):
        compare_with_library(notebook_step(source.replace(averaged, "(variance(z1) + variance(z2))")))


def test_marked_cell_is_found_only_once(tmp_path):
    notebook = json.loads(NOTEBOOK.read_text())
    cell = next(c for c in notebook["cells"]
                if c["cell_type"] == "code" and "".join(c["source"]).startswith(MARKER))
    notebook["cells"].append(copy.deepcopy(cell))
    twice = tmp_path / "twice.ipynb"
    twice.write_text(json.dumps(notebook))
    with pytest.raises(AssertionError, match="exactly one"):
        step_cell_source(twice)
