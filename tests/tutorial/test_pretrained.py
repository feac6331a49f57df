"""notebook_model: the model a notebook evaluates and its description (reference run, a run, a stand-in)."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest

from vicreg_lib.tutorial import pretrained
from vicreg_lib.tutorial.notebook_env import notebook_settings
from vicreg_lib.tutorial.reference_runs import reference_run


def _settings(tmp_path, **environ):
    environ = {"VICREG_DATA": "synthetic:256,64", "VICREG_RUNS": str(tmp_path / "runs"), **environ}
    return notebook_settings("05_linear_eval", environ=environ, start=tmp_path, device="cpu")


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("stand_in")
    return tmp_path, pretrained.notebook_model(_settings(tmp_path))


def _split(checkpoint, folder, parts=3):
    blob = checkpoint.read_bytes()
    folder.mkdir()
    size = -(-len(blob) // parts)
    for i in range(parts):
        (folder / f"model.part{i + 1}of{parts}.pt").write_bytes(blob[i * size:(i + 1) * size])
    return hashlib.sha256(blob).hexdigest()


def test_without_a_run_a_stand_in_is_pretrained_and_says_so(stand_in):
    tmp_path, found = stand_in
    assert found.kind == "stand-in" and not found.model.training
    assert found.config["width"] == 4 and found.metrics  # its settings and records come with it
    assert "stand-in" in found.describe() and "width-4 ResNet-18" in found.describe()
    assert str(tmp_path) not in found.describe()  # shown relative to where the notebook runs


def test_weight_parts_of_the_reference_run_are_described_by_its_record(stand_in, tmp_path, monkeypatch):
    home, found = stand_in
    checkpoint = home / "runs" / "05_linear_eval" / "stand_in" / "checkpoint.pt"
    sha = _split(checkpoint, tmp_path / "gpu")
    reference = dataclasses.replace(reference_run(), weights_sha256=sha)
    monkeypatch.setattr(pretrained, "reference_run", lambda: reference)
    got = pretrained.notebook_model(_settings(tmp_path, VICREG_RUN=str(tmp_path / "gpu")))
    assert got.kind == "reference" and got.reference is reference
    assert reference.command in got.describe() and got.knn_curve == [tuple(p) for p in reference.knn_curve]
    for name, tensor in found.model.state_dict().items():
        assert got.model.state_dict()[name].equal(tensor), name


def test_other_weight_parts_are_a_run_not_the_reference(stand_in, tmp_path):
    home, _ = stand_in
    _split(home / "runs" / "05_linear_eval" / "stand_in" / "checkpoint.pt", tmp_path / "gpu")
    got = pretrained.notebook_model(_settings(tmp_path, VICREG_RUN=str(tmp_path / "gpu")))
    assert got.kind == "run" and got.reference is None and "reference" not in got.describe()


def test_a_named_run_without_weights_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt and no weight parts"):
        pretrained.notebook_model(_settings(tmp_path, VICREG_RUN=str(tmp_path / "empty")))


def test_knn_curve_of_sums_minutes_over_every_epoch_and_keeps_the_evaluated_ones():
    from vicreg_lib.tutorial.pretrained import knn_curve_of

    records = [{"epoch": 0, "knn_top1": 20.0}, {"epoch": 1, "epoch_time_s": 60.0},
               {"epoch": 2, "epoch_time_s": 120.0, "knn_top1": 40.0}]
    assert knn_curve_of(records) == [(0.0, 0, 20.0), (3.0, 2, 40.0)]
    assert knn_curve_of([]) == []
