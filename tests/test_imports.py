"""The import structure of sener_jax: no module imports another that (directly or not) imports it
back, and no module reaches into another's private names.

The graph is read from the source (AST), not from running imports, so imports inside functions
count too (a circle hidden in a function is still a circle at run time), as do
`importlib.import_module("sener_jax...")` calls with a literal name. An edge goes to the module
actually named: `from sener_jax import train` is an edge to `sener_jax.train`, `from
sener_jax.data import load_tokenizer` one to the package `sener_jax.data` (its __init__).
"""
from __future__ import annotations

import ast
import pathlib
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def module_files(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
    """{dotted module name: file} of every module of `package` under `root`."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


class _Imports(ast.NodeVisitor):
    """Edges (target module, line) and private-name uses (text, line) of one module."""

    def __init__(self, name: str, is_package: bool, modules: set[str], package: str):
        self.name, self.modules, self.package = name, modules, package
        self.current_package = name if is_package else name.rpartition(".")[0]
        self.edges: list[tuple[str, int]] = []
        self.private: list[tuple[str, int]] = []
        self.module_aliases: set[str] = set()  # local names bound to a project module

    def _module(self, dotted: str) -> str | None:
        """The longest prefix of `dotted` that is a project module."""
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in self.modules:
                return candidate
        return None

    def _edge(self, target: str | None, line: int) -> None:
        if target is not None and target != self.name:
            self.edges.append((target, line))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == self.package or alias.name.startswith(self.package + "."):
                self._edge(self._module(alias.name), node.lineno)
                if alias.asname:
                    self.module_aliases.add(alias.asname)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base_parts = self.current_package.split(".")
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if base != self.package and not base.startswith(self.package + "."):
            return
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in self.modules:
                self._edge(submodule, node.lineno)
                self.module_aliases.add(alias.asname or alias.name)
            else:
                self._edge(self._module(base), node.lineno)
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                self.private.append((f"from {base} import {alias.name}", node.lineno))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            target = node.args[0].value
            if isinstance(target, str) and (target == self.package or target.startswith(self.package + ".")):
                self._edge(self._module(target), node.lineno)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        value = node.value
        if (isinstance(value, ast.Name) and value.id in self.module_aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            self.private.append((f"{value.id}.{node.attr}", node.lineno))
        self.generic_visit(node)


def import_graph(root: pathlib.Path, package: str):
    """({module: [(target, line)]}, [(module, text, line)] private-name uses, {module: file})."""
    files = module_files(root, package)
    graph, private = {}, []
    for name, path in files.items():
        visitor = _Imports(name, path.name == "__init__.py", set(files), package)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges = visitor.edges
        graph[name] = sorted(set(edges))
        private += [(name, text, line) for text, line in visitor.private]
    return graph, private, files


def find_cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """One cycle (as a closed path of module names) per strongly connected component that has one."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def connect(node):  # Tarjan; the graph has a few dozen nodes, recursion depth is no concern
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _ in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(set(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles = []
    for component in components:  # a concrete path around each component, for the message
        start = min(component)
        path, seen = [start], {start}
        while True:
            target = next(t for t, _ in graph[path[-1]] if t in component and (t == start or t not in seen))
            if target == start:
                break
            path.append(target)
            seen.add(target)
            if len(path) > len(component):
                break
        cycles.append(path + [start])
    return cycles


def _describe(cycle, graph, files) -> str:
    hops = []
    for source, target in zip(cycle, cycle[1:]):
        line = min(line for t, line in graph[source] if t == target)
        hops.append(f"{files[source].relative_to(ROOT)}:{line} imports {target}")
    return "; ".join(hops)


def test_sener_jax_has_no_import_cycles():
    graph, _, files = import_graph(ROOT, "sener_jax")
    assert any(t == "sener_jax.export" for t, _ in graph["sener_jax.predict"]), "the graph lost predict -> export"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c, graph, files) for c in cycles)


def test_no_sener_jax_module_uses_another_modules_private_names():
    _, private, files = import_graph(ROOT, "sener_jax")
    assert not private, "\n".join(f"{files[m].relative_to(ROOT)}:{line}: {text}" for m, text, line in private)


def test_the_checks_catch_a_function_level_cycle_and_a_private_import(tmp_path):
    """The same checks on a small package made to fail, so that a passing run above means something."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "a.py": "from pkg.b import helper\n",
        "b.py": "def helper():\n    from pkg.sub import c\n    return c._secret\n",
        "sub/__init__.py": "",
        "sub/c.py": "import importlib\n\ndef f():\n    return importlib.import_module('pkg.a')\n",
        "d.py": "from .b import _hidden\nfrom . import a\n",
    }
    for name, text in sources.items():
        (package / name).write_text(textwrap.dedent(text))
    graph, private, _ = import_graph(tmp_path, "pkg")
    assert graph["pkg.d"] == [("pkg.a", 2), ("pkg.b", 1)]
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    assert sorted((m, text) for m, text, _ in private) == [("pkg.b", "c._secret"), ("pkg.d", "from pkg.b import _hidden")]
    (package / "sub" / "c.py").write_text("def f():\n    return 1\n")
    assert find_cycles(import_graph(tmp_path, "pkg")[0]) == []


@pytest.mark.parametrize("module", ["sener_jax.render", "sener_jax.prediction_io"])
def test_light_modules_stay_light(module):
    """render and prediction_io work without jax (the lazy `sener_jax.Extractor` keeps it so)."""
    import subprocess
    import sys

    code = f"import sys, {module}; sys.exit('jax' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"importing {module} imported jax\n{result.stderr}"
