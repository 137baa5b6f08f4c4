"""One temporary ComfyUI-like environment per test process: fakes installed, tiny models, input files."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.lru_cache(maxsize=None)
def tiny_env():
    """Install the ComfyUI fakes over a temp folder holding tiny models and the input files (once)."""
    from . import comfy_fakes
    from .tiny_models import write_tiny_models

    root = Path(tempfile.mkdtemp(prefix="surgsora-nodes-"))
    atexit.register(shutil.rmtree, root, True)
    fakes = comfy_fakes.install(root)
    fakes.paths = write_tiny_models(root / "models")
    from comfy_inputs import copy_example_inputs  # what the pack does when ComfyUI loads it

    copy_example_inputs(root / "input")
    from nodes.models import register_folders

    register_folders()
    return fakes
