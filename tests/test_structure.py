"""The package's shape: no import cycles (imports inside functions included), the training loop
imported only by the command line, the ablation runner and the monitor, and short functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vicreg_lib"
MAX_FUNCTION_LINES = 80
TRAIN_LOOP_USERS = {"cli", "ablation", "tutorial.monitor", "tutorial.pretrained"}


def _modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name below vicreg_lib ("train", "tutorial.plotting")."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__"):
            continue
        modules[".".join(parts)] = ast.parse(path.read_text(), filename=str(path))
    return modules


def _imports(name: str, tree: ast.Module, names: set[str]) -> set[str]:
    """The package modules a module imports anywhere in it (top level or inside functions)."""
    package = name.split(".")[:-1]  # the module's own package, as a path below vicreg_lib
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif (node.module or "").startswith("vicreg_lib"):
                base = node.module.split(".")[1:]
            else:
                continue
            found.add(".".join(base))
            found.update(".".join(base + [alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name.removeprefix("vicreg_lib.") for alias in node.names
                         if alias.name.startswith("vicreg_lib."))
    return found & names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                pytest.fail(f"import cycle: {' -> '.join(path[path.index(target):] + [target])}")
            if target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_only_the_cli_the_ablation_runner_the_monitor_and_the_stand_in_import_the_training_loop():
    users = {name for name, targets in _graph().items() if "train" in targets}
    assert users <= TRAIN_LOOP_USERS, f"unexpected importers of train.py: {sorted(users - TRAIN_LOOP_USERS)}"


def test_the_training_loop_reaches_only_features_and_diagnostics_of_eval():
    """Training measures kNN and collapse each epoch; the probes, reports and baselines stay outside it."""
    graph, reached, todo = _graph(), set(), ["train"]
    while todo:
        for target in graph[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    assert {m for m in reached if m.startswith("eval.")} <= {"eval.features", "eval.diagnostics"}
    assert "eval.features" in reached  # the check above is not vacuous


def test_functions_are_short():
    long = [f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, tree in _modules().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_public_name_is_defined_in_two_modules():
    """One of everything: a public function, class or constant lives in one module (others import it)."""
    defined: dict[str, list[str]] = {}
    for name, tree in _modules().items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [target.id for target in node.targets if isinstance(target, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            else:
                continue
            for public in (n for n in names if not n.startswith("_") and n != "__all__"):
                defined.setdefault(public, []).append(name)
    twice = {public: modules for public, modules in defined.items() if len(modules) > 1}
    assert not twice, f"defined in more than one module: {twice}"
