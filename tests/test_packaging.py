"""pyproject.toml and environment.yml must ask for the same packages with the same bounds."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*$")


def _split(requirement: str) -> tuple[str, str]:
    name, spec = _REQ.match(requirement).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def pyproject_requirements() -> dict[str, str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = data["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [r for r in extra if not r.startswith(project["name"] + "[")]  # "vicreg-lib[notebooks]"
    return dict(_split(r) for r in reqs)


def test_the_library_needs_only_torch_torchvision_numpy_and_tqdm():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {_split(r)[0] for r in project["dependencies"]} == {"torch", "torchvision", "numpy", "tqdm"}
    extras = project["optional-dependencies"]
    assert {_split(r)[0] for r in extras["notebooks"]} == {"jupyterlab", "ipywidgets", "umap-learn", "matplotlib",
                                                           "scikit-learn"}
    assert "vicreg-lib[notebooks]" in extras["dev"]  # the README's `.[dev]` still installs everything


def environment_requirements() -> dict[str, str]:
    """The conda and pip entries of environment.yml (a flat list, parsed without PyYAML)."""
    reqs = {}
    in_deps = False
    for raw in (REPO / "environment.yml").read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        if not line.startswith(" "):
            in_deps = line.startswith("dependencies:")
            continue
        item = line.strip()
        if not in_deps or not item.startswith("- ") or item.endswith(":"):
            continue
        item = item[2:].strip()
        if item.startswith("-e ") or item.startswith("python=") or item in {"pip", "python"}:
            continue
        name, spec = _split(item)
        reqs[name] = spec
    return reqs


def test_environment_yml_and_pyproject_list_the_same_packages():
    assert environment_requirements() == pyproject_requirements()


def test_required_packages_are_declared():
    names = set(pyproject_requirements())
    for needed in ["torch", "torchvision", "jupyterlab", "matplotlib", "scikit-learn", "umap-learn", "tqdm", "nbval", "pytest"]:
        assert needed in names


def test_environment_parser_sees_every_entry():
    # guards the hand-written parser: a package dropped from environment.yml must show up as a difference
    env = environment_requirements()
    assert {"torch", "torchvision", "numpy", "nbval"} <= set(env)
    assert env["torch"].startswith(">=")


def test_package_import_leaves_optional_packages_unloaded():
    # the GPU machines and slim installs may lack umap-learn, matplotlib or ipywidgets: importing
    # vicreg_lib must not need them (they are imported inside the functions that use them)
    import subprocess
    import sys

    code = (
        "import sys, vicreg_lib; "
        "print(','.join(m for m in ('umap', 'matplotlib', 'ipywidgets', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == ""


def test_public_names_resolve():
    import vicreg_lib

    missing = [name for name in vicreg_lib.__all__ if not hasattr(vicreg_lib, name)]
    assert missing == []
