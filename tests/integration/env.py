"""One temporary ComfyUI-like environment per test process: fakes installed, tiny models, input files."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "demo"
CLIP = DEMO / "endovis17" / "clip.mp4"
FRAME_FILE = "surgsora_endovis_frame6.png"
CLIP_FILE = "surgsora_endovis_clip.mp4"


def write_inputs(input_dir: Path) -> None:
    """The shipped workflows' input files: the demo frame (frame 6 of the EndoVis clip) and the clip itself."""
    input_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DEMO / FRAME_FILE, input_dir / FRAME_FILE)
    shutil.copyfile(CLIP, input_dir / CLIP_FILE)


@functools.lru_cache(maxsize=None)
def tiny_env():
    """Install the ComfyUI fakes over a temp folder holding tiny models and the input files (once)."""
    from . import comfy_fakes
    from .tiny_models import write_tiny_models

    root = Path(tempfile.mkdtemp(prefix="surgsora-nodes-"))
    atexit.register(shutil.rmtree, root, True)
    fakes = comfy_fakes.install(root)
    fakes.paths = write_tiny_models(root / "models")
    write_inputs(root / "input")
    from nodes.models import register_folders

    register_folders()
    return fakes
