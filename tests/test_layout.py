"""The package's layout: no import cycles between its modules, and moved names still import."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recipe_chain"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the package imported when ``path`` is imported (not in functions or TYPE_CHECKING)."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = {f"{node.module}.{a.name}" for a in node.names} & modules
                found.update(submodules)
                if node.module in modules and len(submodules) < len(node.names):  # names defined in the module
                    found.add(node.module)

    visit(ast.parse(path.read_text()).body)
    return found


def test_no_import_cycles_inside_the_package() -> None:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {name: _top_level_imports(path, modules) - {name} for name, path in paths.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("recipe_chain.evaluation.harness", "select_examples", "recipe_chain.evaluation.selection"),
        ("recipe_chain.evaluation.harness", "EvalResults", "recipe_chain.evaluation.results"),
        ("recipe_chain.evaluation.harness", "PARTIAL_FILE", "recipe_chain.evaluation.resume"),
        ("recipe_chain.demo", "EditingModels", "recipe_chain.models"),
        ("recipe_chain.training.trainer", "TrainResult", "recipe_chain.training.config"),
        ("integrations", "ChromaServer", "recipe_chain.integrations"),  # the checkout-only alias
        ("integrations.chroma_server", "connect", "recipe_chain.integrations.chroma_server"),
    ],
)
def test_moved_names_still_import_from_their_old_module(old: str, name: str, new: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)
