"""The settings every notebook starts from, read from the environment in one call.

    settings = notebook_settings("05_linear_eval"); print(settings.describe())

Environment variables, each optional: VICREG_DATA (a data spec, default "cifar10"), VICREG_DATA_ROOT
(downloads and unpacked archives, default "data"), VICREG_FAST (1: quick settings for a first look),
VICREG_RUNS (runs, checkpoints and caches, default "runs"), VICREG_RUN (a run folder or weights file
instead of the notebook's default). Relative paths start at the checkout's root (`find_checkout`), or
outside one (a hosted Jupyter) at the current folder.
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

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_PROJECT_NAME = re.compile(r"""^\s*name\s*=\s*["']vicreg[-_]lib["']\s*$""", re.MULTILINE)
_NOTEBOOK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class NotebookSettings:
    notebook: str  # e.g. "05_linear_eval"
    data: str
    data_root: Path
    fast: bool
    runs: Path
    device: str  # "cuda", "mps" or "cpu"
    run: Path | None = None  # VICREG_RUN's
    checkout: Path | None = None  # the repository root, None outside a checkout

    @property
    def output_dir(self) -> Path:
        return self.output_dir_of(self.notebook)

    def output_dir_of(self, notebook: str) -> Path:
        """runs/<notebook>, or runs/<notebook>_fast: a quick try never overwrites a long one."""
        _check_notebook_name(notebook)
        return self.runs / (f"{notebook}_fast" if self.fast else notebook)

    def describe(self) -> str:
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

    __str__ = describe


def find_checkout(start: str | os.PathLike | None = None) -> Path | None:
    """The first folder at or above `start` (default: cwd) whose pyproject.toml names vicreg-lib, or None."""
    here = (Path.cwd() if start is None else Path(start)).resolve()
    for folder in [here, *here.parents]:
        pyproject = folder / "pyproject.toml"
        try:
            if pyproject.is_file() and _PROJECT_NAME.search(pyproject.read_text(errors="replace")):
                return folder
        except OSError:  # an unreadable folder on the way up is not a checkout
            continue
    return None


def notebook_settings(notebook: str, fast: bool | None = None, device: str = "auto",
                      environ: Mapping[str, str] | None = None,
                      start: str | os.PathLike | None = None) -> NotebookSettings:
    """The settings of `notebook` from `environ` (default ``os.environ``); fast overrides VICREG_FAST."""
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
        notebook=notebook, data=environ.get("VICREG_DATA", "").strip() or "cifar10",
        data_root=_path_setting(environ, "VICREG_DATA_ROOT", "data", base),
        fast=_flag_setting(environ, "VICREG_FAST") if fast is None else fast,
        runs=_path_setting(environ, "VICREG_RUNS", "runs", base),
        device=str(resolve_device(device)), run=run, checkout=checkout)


def _check_notebook_name(notebook: object) -> None:
    if not isinstance(notebook, str) or not _NOTEBOOK_NAME.match(notebook):
        raise ValueError(f"notebook must be a plain name such as '05_linear_eval' (letters, digits, _ . -), "
                         f"got {notebook!r}")


def _flag_setting(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE + _FALSE:
        return value in _TRUE
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
