"""Import structure: no import circle between the modules of surgsora/ and train/, and the torch-free
modules stay torch-free.

The graph is read from the source (``ast``), so imports inside functions count too: a lazy import only
hides a circle until someone calls the function.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("surgsora", "train")  # the library and the training module built on it
# Modules that must import without torch (and with nothing outside the standard library): train/config.py
# rejects bad arguments in a fraction of a second, and the MOFA description is shared by it and the loaders.
TORCH_FREE = ("surgsora.loading.mofa", "surgsora.loading.files", "train.config")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules(packages=LIBRARY, root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for package in packages for p in sorted((root / package).rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The library modules ``name`` imports anywhere in its source (module level or inside functions)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:  # `import a.b.c` of a name inside a module: that module
            target = target.rpartition(".")[0]
        if target:
            out.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this module is in (a package is its own)
                package = name.split(".") if is_package else name.split(".")[:-1]
                base_parts = package[: len(package) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in known else base)
    out.discard(name)
    return out


def import_graph(packages=LIBRARY, root: Path = ROOT) -> dict[str, set[str]]:
    modules = library_modules(packages, root)
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (as a path that returns to its start) per group of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_circle_in(graph, group) for group in groups]


def _circle_in(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, staying inside the group."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{group} is not strongly connected")  # cannot happen for a Tarjan component


# ------------------------------------------------------------------------------------- the checker itself

def test_the_checker_finds_relative_and_function_level_imports_and_their_circles(tmp_path):
    pkg = tmp_path / "lib"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from . import x\n")
    (pkg / "a" / "x.py").write_text("import os\nfrom ..b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from .a.x import g\n    import lib.c\n")
    (pkg / "c.py").write_text("from lib import b\n")
    graph = import_graph(("lib",), tmp_path)
    assert graph == {"lib": set(), "lib.a": {"lib.a.x"}, "lib.a.x": {"lib.b"}, "lib.b": {"lib.a.x", "lib.c"},
                     "lib.c": {"lib.b"}}
    assert find_cycles(graph) == [["lib.a.x", "lib.b", "lib.a.x"]]
    assert find_cycles({"p": {"q"}, "q": {"r"}, "r": set()}) == []


# ------------------------------------------------------------------------------------- the library

def test_no_import_circle_between_library_modules():
    graph = import_graph()
    assert "surgsora.loading.mofa" in graph["surgsora.model.adapter"]  # the graph is read, across packages too
    assert "surgsora.loading.mofa" in graph["train.config"]
    cycles = find_cycles(graph)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_mofa_description_and_training_settings_import_without_torch():
    """A fresh interpreter that refuses torch (and reports anything else outside the standard library)."""
    code = f"""
import importlib, importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "numpy", "safetensors", "diffusers", "transformers"):
            raise ImportError(f"{{name}} imported")

sys.meta_path.insert(0, Refuse())
before = set(sys.modules)  # what site start-up loaded (editable-install finders and the like)
for name in {TORCH_FREE!r}:
    importlib.import_module(name)
allowed = set(sys.stdlib_module_names) | {{"surgsora", "train", "__main__"}}
print(sorted(m for m in set(sys.modules) - before if m.split(".")[0] not in allowed))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
