"""settings.py: the environment is read as documented, bad values are one clear error, and the
settings work from a folder outside the checkout."""
from __future__ import annotations

from pathlib import Path

import pytest

from vicreg_lib.hardware import resolve_device
from vicreg_lib.tutorial.notebook_env import find_checkout, notebook_settings

REPO = Path(__file__).resolve().parents[2]


def _settings(environ: dict[str, str], start: Path, **kwargs):
    return notebook_settings("05_linear_eval", environ=environ, start=start, **kwargs)


def test_defaults_outside_a_checkout(tmp_path):
    settings = _settings({}, tmp_path)
    assert settings.checkout is None
    assert settings.data == "cifar10"
    assert settings.data_root == tmp_path.resolve() / "data"
    assert settings.runs == tmp_path.resolve() / "runs"
    assert settings.fast is False and settings.run is None
    assert settings.device == str(resolve_device("auto"))


def test_works_from_the_current_folder_outside_a_checkout(tmp_path, monkeypatch):
    # the old settings cell searched upward for the repository and raised StopIteration here
    monkeypatch.chdir(tmp_path)
    settings = notebook_settings("01_augmentations", environ={"VICREG_RUNS": "my_runs"})
    assert settings.checkout is None
    assert settings.runs == tmp_path.resolve() / "my_runs"
    assert "my_runs/" in settings.describe()


def test_inside_the_checkout_relative_paths_start_at_its_root():
    settings = _settings({"VICREG_RUNS": "elsewhere/runs", "VICREG_DATA_ROOT": "/abs/data"}, REPO / "notebooks")
    assert settings.checkout == REPO
    assert settings.runs == REPO / "elsewhere" / "runs"
    assert settings.data_root == Path("/abs/data")  # absolute paths are kept
    assert find_checkout(REPO / "vicreg_lib") == REPO


def test_a_checkout_is_a_pyproject_naming_vicreg_lib(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "vicreg-lib"\nversion = "0.1.0"\n')
    nested = tmp_path / "notebooks" / "drafts"
    nested.mkdir(parents=True)
    other = tmp_path / "notebooks" / "pyproject.toml"  # another project's file on the way up is skipped
    other.write_text('[project]\nname = "something-else"\n')
    assert find_checkout(nested) == tmp_path.resolve()
    assert _settings({}, nested).runs == tmp_path.resolve() / "runs"
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "not-vicreg-lib"\n')
    assert find_checkout(nested) is None


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), (" YES ", True), ("on", True),
                                             ("0", False), ("", False), ("no", False), ("Off", False)])
def test_fast_flag_values(tmp_path, value, expected):
    assert _settings({"VICREG_FAST": value}, tmp_path).fast is expected


def test_fast_argument_overrides_the_environment(tmp_path):
    assert _settings({"VICREG_FAST": "1"}, tmp_path, fast=False).fast is False
    assert _settings({}, tmp_path, fast=True).fast is True
    with pytest.raises(ValueError, match="fast must be True, False or None"):
        _settings({}, tmp_path, fast="yes")


@pytest.mark.parametrize("value", ["2", "maybe", "fast"])
def test_bad_fast_value_is_one_clear_error(tmp_path, value):
    with pytest.raises(ValueError, match=f"VICREG_FAST='{value}' is not a yes/no value: use VICREG_FAST=1"):
        _settings({"VICREG_FAST": value}, tmp_path)


def test_data_spec_and_data_root_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = _settings({"VICREG_DATA": " npz:/some/where/cifar10_mini.npz ", "VICREG_DATA_ROOT": "~/datasets"},
                         tmp_path)
    assert settings.data == "npz:/some/where/cifar10_mini.npz"
    assert settings.data_root == tmp_path / "datasets"
    assert "npz:.../cifar10_mini.npz" in settings.describe()  # no machine-specific folders
    assert "/some/where" not in settings.describe()


def test_run_names_a_folder_or_a_weights_file(tmp_path):
    run_dir = tmp_path / "runs" / "my_run"
    run_dir.mkdir(parents=True)
    (run_dir / "weights.pt").write_bytes(b"")
    assert _settings({"VICREG_RUN": "runs/my_run"}, tmp_path).run == run_dir.resolve()
    weights = _settings({"VICREG_RUN": str(run_dir / "weights.pt")}, tmp_path)
    assert weights.run == run_dir / "weights.pt"
    assert "runs/my_run/weights.pt (VICREG_RUN)" in weights.describe()
    assert _settings({"VICREG_RUN": "  "}, tmp_path).run is None


def test_missing_run_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="VICREG_RUN='runs/nope' names nothing"):
        _settings({"VICREG_RUN": "runs/nope"}, tmp_path)


def test_output_dirs_keep_quick_runs_apart(tmp_path):
    full = _settings({}, tmp_path)
    quick = _settings({"VICREG_FAST": "1"}, tmp_path)
    assert full.output_dir == full.runs / "05_linear_eval"
    assert quick.output_dir_of("04_pretraining") == quick.runs / "04_pretraining_fast"
    with pytest.raises(ValueError, match="plain name"):
        full.output_dir_of("../04_pretraining")


def test_describe_explains_the_settings_to_a_learner(tmp_path):
    quick = _settings({"VICREG_FAST": "1"}, REPO / "notebooks").describe()
    assert "Quick settings for a first look" in quick
    assert "runs/ (VICREG_RUNS)" in quick and str(REPO) not in quick
    full = _settings({}, tmp_path).describe()
    assert full.startswith("05_linear_eval: data cifar10") and "Full settings" in full
    for word in ("CI", "nbval", "test"):
        assert word not in quick.split() and word not in full.split()


@pytest.mark.parametrize("name", ["", "../x", "a/b", 5, None])
def test_bad_notebook_name(tmp_path, name):
    with pytest.raises(ValueError, match="notebook must be a plain name"):
        notebook_settings(name, environ={}, start=tmp_path)


def test_bad_device(tmp_path):
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        _settings({}, tmp_path, device="gpu")


def test_a_home_folder_of_an_unknown_user_is_a_one_line_error_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"VICREG_RUNS='~nosuchuser4821/x': cannot find the home folder of "
                                         r"'~nosuchuser4821'"):
        notebook_settings("01_augmentations", environ={"VICREG_RUNS": "~nosuchuser4821/x"})
