"""The import graph of time_ray/core/merging, read from the source with ast (every import statement,
inside functions and ``TYPE_CHECKING`` blocks too): no circle, and the spec layer imports nothing of the
implementation (the implementation uses the spec, never the other way round)."""

import ast
import pathlib

import pytest

import time_ray.core.merging as merging

ROOT = pathlib.Path(merging.__file__).parent
PACKAGE = merging.__name__


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join((PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts)))


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imported(name: str) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in its source (``from X import m`` counts
    as importing X.m when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names
            ]
        else:
            continue
        out |= {t for t in targets if t in MODULES and t != name}
    return out


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of the graph (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def graph() -> dict[str, set[str]]:
    # a package's __init__ runs before its modules anyway: the edges to it from its own modules are not circles
    return {name: {m for m in imported(name) if not name.startswith(m + ".")} for name in MODULES}


def test_the_cycle_finder_finds_a_circle_and_only_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_merging_package_has_no_import_circle():
    edges = graph()
    assert f"{PACKAGE}.executor" in edges[f"{PACKAGE}.base"]  # the graph is read (base runs merges on it)
    assert cycle(edges) is None, " -> ".join(cycle(edges) or [])


SPEC_LAYER = sorted(n for n in MODULES if n == f"{PACKAGE}.spec" or n.startswith(f"{PACKAGE}.spec."))


@pytest.mark.parametrize("name", SPEC_LAYER)
def test_the_spec_layer_imports_no_implementation(name):
    allowed = {f"{PACKAGE}.notation", *SPEC_LAYER}
    assert imported(name) <= allowed, imported(name) - allowed
