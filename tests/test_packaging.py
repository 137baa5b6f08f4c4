"""Install metadata: requirements.txt (ComfyUI-Manager, Comfy Registry) says what pyproject.toml says, every imported
package is declared there, and the Python floor pyproject and the README state is the one the code needs."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SOURCES = ("surgsora", "nodes", "train", "tests", "benchmarks", "workflows_src")
# Imported only when present or asked for, each behind its own check: never a requirement.
OPTIONAL = {"bitsandbytes": "--adam8bit", "psutil": "the memory estimate (falls back to /proc/meminfo)"}


def _dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            out[_dist(re.split(r"[<>=!~ ;\[]", line, maxsplit=1)[0])] = line
    return out


def _python_files():
    for folder in SOURCES:
        yield from (REPO / folder).rglob("*.py")
    yield from REPO.glob("*.py")  # the ComfyUI entry and comfy_inputs.py


def test_requirements_txt_is_pyproject_runtime_minus_torch():
    runtime = _names(PROJECT["dependencies"])
    required = _names((REPO / "requirements.txt").read_text().splitlines())
    assert required == {k: v for k, v in runtime.items() if k not in ("torch", "torchvision")}
    # training-only packages stay out of ComfyUI's environment
    assert not {"tensorboard", "filelock"} & set(required)
    assert {"tensorboard", "filelock"} <= set(_names(PROJECT["optional-dependencies"]["train"]))


def test_every_imported_third_party_module_is_declared_in_pyproject():
    """A module the library, nodes or training import (at module level or in functions) is installed by a
    distribution pyproject.toml declares (runtime or an extra), comes with Python, or is one of ours."""
    declared = set(_names(PROJECT["dependencies"]))
    for extra in PROJECT["optional-dependencies"].values():
        declared |= set(_names(extra))
    imported = set()
    for folder in ("surgsora", "nodes", "train"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    ours = {"surgsora", "nodes", "train", "comfy", "folder_paths", "latent_preview", "server"}
    providers = importlib.metadata.packages_distributions()
    undeclared = []
    for module in sorted(imported - set(sys.stdlib_module_names) - ours - set(OPTIONAL)):
        dists = {_dist(d) for d in providers.get(module, ())}
        if not dists & declared:
            undeclared.append(f"{module} (from {', '.join(sorted(dists)) or 'no installed distribution'})")
    assert undeclared == [], "imported but not declared in pyproject.toml: " + "; ".join(undeclared)


def test_python_floor_is_the_same_everywhere_and_the_code_parses_at_it():
    floor = tuple(int(v) for v in re.fullmatch(r">=\s*(\d+)\.(\d+)", PROJECT["requires-python"].strip()).groups())
    assert sys.version_info[:2] >= floor
    readme = (REPO / "README.md").read_text()
    stated = set(re.findall(r"Python (\d+\.\d+)\+", readme))
    assert stated == {f"{floor[0]}.{floor[1]}"}, f"README states Python {stated}, pyproject {floor}"
    for path in _python_files():
        ast.parse(path.read_text(), filename=str(path), feature_version=floor)  # no syntax newer than the floor
