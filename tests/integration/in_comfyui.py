"""What the in-process ComfyUI scripts (core_parity.py, wan_models.py, cosmos_models.py, test_precision_comfy.py)
and their pytest modules share, in one place.

Scripts run under ComfyUI's own Python: :func:`start` puts ComfyUI first on the path (its own ``nodes`` module must
win, as when it loads the pack) with ``--cpu``, and :func:`load_pack` loads this repository the way ComfyUI's
``load_custom_node`` does. The pytest side runs a script with :func:`measure` and reads the JSON line it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK = "ComfyUI_SurgSora"


def start(threads: int | None = 2) -> None:
    """ComfyUI importable, set up as ``main.py --cpu`` would (run before importing ``comfy``)."""
    sys.path[:0] = [os.environ["COMFYUI_PATH"], str(REPO / "tests")]
    sys.path.append(str(REPO))  # after ComfyUI, whose own `nodes` module must win (as when it loads the pack)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401
    import torch

    if threads:
        torch.set_num_threads(threads)


def load_pack():
    """This repository loaded as ComfyUI loads a custom-node folder; returns the package module."""
    if PACK in sys.modules:
        return sys.modules[PACK]
    import importlib.util

    spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    spec.loader.exec_module(pack)  # as ComfyUI's load_custom_node does
    return pack


def pack_module(name: str):
    """A submodule of the loaded pack, e.g. ``pack_module("nodes.core_svd")``."""
    load_pack()
    return sys.modules[f"{PACK}.{name}"]


def measure(script: str | os.PathLike, *args: str, timeout: int = 600) -> dict:
    """Run ``script`` with ComfyUI's Python (COMFYUI_PYTHON) and return the JSON of its last line."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    run = subprocess.run([python, str(script), *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "COMFYUI_PATH": os.environ["COMFYUI_PATH"]})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
