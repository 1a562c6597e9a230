"""The house rules of ARCHITECTURE.md, read from the source: which package may import which.

Training and serving are two wings joined only by container/contract; contract/spec is the
standard library only (the host scripts import it with the system python); insights reads what
training saved and never imports the serving wing.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from helpers.training import CONTAINER, ROOT

FIRST_PARTY = {"contract", "trainer", "insights", "server"}
# package -> the first-party packages it may import
ALLOWED = {
    "contract": {"contract"},
    "trainer": {"contract", "trainer", "insights"},  # insights only deferred, at the end of a job (job.py)
    "insights": {"contract", "insights"},
    "server": {"contract", "server"},
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (deferred imports inside functions count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def files_of(package: str) -> list[Path]:
    return sorted((CONTAINER / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_wing_imports_only_what_it_may(package):
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files_of(package)
        for name in imported_modules(path)
        if name.split(".")[0] in FIRST_PARTY and name.split(".")[0] not in ALLOWED[package]
    }
    assert not wrong, sorted(wrong)


def test_the_spec_is_standard_library_only():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    outside = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files_of("contract/spec")
        for name in imported_modules(path)
        if name.split(".")[0] not in stdlib and not name.startswith("contract.spec")
    }
    assert not outside, sorted(outside)


def test_the_rule_sees_a_forbidden_import(tmp_path):
    # the checker itself: a server module importing the trainer, deferred inside a function
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from trainer.loop import evaluate\n    return evaluate\n")
    assert "trainer.loop" in imported_modules(bad)


def module_name(path: Path) -> str:
    parts = path.relative_to(CONTAINER).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports (deferred imports too);
    `from package import module` counts as importing the module."""
    modules = {module_name(path): path for package in ALLOWED for path in files_of(package)}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            edges.update(target for target in targets if target in modules and target != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each module that lies on one (depth-first search)."""
    found, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_module_imports_itself_in_a_circle():
    """A circle (app imports multi_model_routes, which imports app) makes the import order
    matter and the two modules one: shared code goes into a module both import."""
    # packages import their modules through __init__ by design; those edges are not circles
    graph = {
        name: {edge for edge in edges if not name.startswith(edge + ".")} for name, edges in import_graph().items()
    }
    assert not cycles(graph), cycles(graph)


def test_the_circle_check_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
