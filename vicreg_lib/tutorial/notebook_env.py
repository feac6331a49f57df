"""The settings every notebook starts from, read from the environment in one call.

    settings = notebook_settings("05_linear_eval")
    print(settings.describe())           # one paragraph for the learner
    images, labels, classes = load_dataset(settings.data, "train", settings.data_root)
    checkpoint = settings.run or settings.output_dir_of("04_pretraining") / "checkpoint.pt"

Environment variables (each optional):

    VICREG_DATA       the data spec (see ``data.load_dataset``); default "cifar10"
    VICREG_DATA_ROOT  where downloads and unpacked archives go; default "data"
    VICREG_FAST       1 for quick settings for a first look, 0 (default) for the full settings
    VICREG_RUNS       where runs, checkpoints and caches are saved; default "runs"
    VICREG_RUN        a run folder or weights file to use instead of the notebook's default
                      (notebook 05 evaluates it)

Relative paths are taken from the checkout's root when the notebook sits in one (a folder at or
above the current one whose pyproject.toml names the vicreg-lib project), otherwise from the
current folder, so a notebook opened on its own (e.g. on a hosted Jupyter service) works too.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ..hardware import resolve_device

__all__ = ["NotebookSettings", "notebook_settings", "find_checkout"]

DEFAULT_DATA = "cifar10"
DEFAULT_DATA_ROOT = "data"
DEFAULT_RUNS = "runs"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_PROJECT_NAME = re.compile(r"""^\s*name\s*=\s*["']vicreg[-_]lib["']\s*$""", re.MULTILINE)
_NOTEBOOK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class NotebookSettings:
    """What a notebook needs to know about where it runs.

    notebook: its name (e.g. "05_linear_eval"); data: the data spec; data_root: where downloads
    and unpacked archives go; fast: quick settings for a first look; runs: the folder for runs,
    checkpoints and caches; device: "cuda", "mps" or "cpu"; run: the run folder or weights file named in
    VICREG_RUN (None if unset); checkout: the repository root, None outside a checkout.
    """

    notebook: str
    data: str
    data_root: Path
    fast: bool
    runs: Path
    device: str
    run: Path | None = None
    checkout: Path | None = None

    @property
    def output_dir(self) -> Path:
        """Where this notebook saves its runs and caches (``output_dir_of(self.notebook)``)."""
        return self.output_dir_of(self.notebook)

    def output_dir_of(self, notebook: str) -> Path:
        """Where `notebook` saves its runs: runs/<notebook>, or runs/<notebook>_fast with quick
        settings, so a quick try never overwrites the result of a long one."""
        _check_notebook_name(notebook)
        return self.runs / (f"{notebook}_fast" if self.fast else notebook)

    def describe(self) -> str:
        """One paragraph for the learner: what the settings are and how to change them."""
        base = self.checkout or Path.cwd()
        mode = ("Quick settings for a first look: smaller models, fewer images and epochs, so every "
                "cell finishes in minutes and the numbers are rough (VICREG_FAST=0 gives the full "
                "settings)." if self.fast else
                "Full settings (VICREG_FAST=1 gives quick settings for a first look).")
        if self.device == "cpu":
            threads = torch.get_num_threads()
            device = f"the CPU ({threads} thread{'s' if threads != 1 else ''}; no GPU found)"
        elif self.device == "mps":
            device = "the Apple-silicon GPU (mps)"
        else:
            device = f"the GPU {self.device} ({torch.cuda.get_device_name(torch.device(self.device))})"
        text = (f"{self.notebook}: data {_shown_spec(self.data)} (VICREG_DATA); downloads and unpacked "
                f"archives go to {_shown(self.data_root, base, folder=True)} (VICREG_DATA_ROOT). {mode} "
                f"Computing on {device}. Runs, checkpoints and caches are saved in "
                f"{_shown(self.runs, base, folder=True)} (VICREG_RUNS)")
        if self.run is not None:
            text += f"; the run used is {_shown(self.run, base)} (VICREG_RUN)"
        return text + "."

    def __str__(self) -> str:
        return self.describe()


def find_checkout(start: str | os.PathLike | None = None) -> Path | None:
    """The repository root at or above `start` (default: the current folder), i.e. the first
    folder whose pyproject.toml names the vicreg-lib project; None outside a checkout."""
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    for folder in [here, *here.parents]:
        pyproject = folder / "pyproject.toml"
        try:
            if pyproject.is_file() and _PROJECT_NAME.search(pyproject.read_text(errors="replace")):
                return folder
        except OSError:  # an unreadable folder on the way up is not a checkout
            continue
    return None


def notebook_settings(
    notebook: str,
    fast: bool | None = None,
    device: str = "auto",
    environ: Mapping[str, str] | None = None,
    start: str | os.PathLike | None = None,
) -> NotebookSettings:
    """The settings of `notebook` (its name, e.g. "05_linear_eval") from the environment.

    fast: True or False overrides VICREG_FAST (None: read it).
    device: "auto" (a CUDA GPU when there is one, else Apple's MPS, else the CPU), "cpu", "mps",
    "cuda" or "cuda:N".
    environ: the variables to read (default ``os.environ``); start: the folder to look for the
    checkout from (default the current folder). Raises ValueError for a bad value (naming the
    variable and what it accepts) and FileNotFoundError when VICREG_RUN names nothing.
    """
    _check_notebook_name(notebook)
    if fast is not None and not isinstance(fast, bool):
        raise ValueError(f"fast must be True, False or None (read VICREG_FAST), got {fast!r}")
    environ = os.environ if environ is None else environ
    checkout = find_checkout(start)
    base = checkout or (Path.cwd() if start is None else Path(start)).resolve()
    run_text = environ.get("VICREG_RUN", "").strip()
    run = _path_setting(environ, "VICREG_RUN", "", base) if run_text else None
    if run is not None and not run.exists():
        raise FileNotFoundError(
            f"VICREG_RUN={run_text!r} names nothing ({run} does not exist): name a run folder "
            "(the out_dir of a pretraining run) or a weights file, or unset VICREG_RUN for the default"
        )
    return NotebookSettings(
        notebook=notebook,
        data=environ.get("VICREG_DATA", "").strip() or DEFAULT_DATA,
        data_root=_path_setting(environ, "VICREG_DATA_ROOT", DEFAULT_DATA_ROOT, base),
        fast=_flag_setting(environ, "VICREG_FAST") if fast is None else fast,
        runs=_path_setting(environ, "VICREG_RUNS", DEFAULT_RUNS, base),
        device=str(resolve_device(device)),
        run=run,
        checkout=checkout,
    )


def _check_notebook_name(notebook: object) -> None:
    if not isinstance(notebook, str) or not _NOTEBOOK_NAME.match(notebook):
        raise ValueError(f"notebook must be a plain name such as '05_linear_eval' (letters, digits, _ . -), "
                         f"got {notebook!r}")


def _flag_setting(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={environ[name]!r} is not a yes/no value: use {name}=1 (on) or {name}=0 (off)")


def _path_setting(environ: Mapping[str, str], name: str, default: str, base: Path) -> Path:
    text = environ.get(name, "").strip() or default
    if "\0" in text:
        raise ValueError(f"{name}={text!r} is not a path: it holds a NUL character")
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~user of a user this machine does not know
        raise ValueError(f"{name}={text!r}: cannot find the home folder of {text.split('/')[0]!r}; write the path "
                         f"out in full, or use ~/ for your own home") from None
    return path if path.is_absolute() else base / path


def _shown(path: Path, base: Path, folder: bool = False) -> str:
    """`path` relative to `base` when inside it (no machine-specific prefix), else as it is;
    a folder ends in "/"."""
    try:
        shown = path.relative_to(base).as_posix()
    except ValueError:
        shown = str(path)
    return shown + "/" if folder or path.is_dir() else shown


def _shown_spec(spec: str) -> str:
    """A data spec with its folders left out (npz:.../cifar10_mini.npz): the file name says which set."""
    kind, _, where = spec.partition(":")
    if "/" in where or os.sep in where:
        return f"{kind}:.../{Path(where).name}"
    return spec
