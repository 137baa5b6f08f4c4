"""One temporary ComfyUI-like environment per test process: fakes installed, tiny models, input files."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CLIP = SHARED / "data" / "endovis17_clip" / "clip.mp4"
FRAME_FILE = "surgsora_endovis_frame6.png"
CLIP_FILE = "surgsora_endovis_clip.mp4"


def write_inputs(input_dir: Path) -> None:
    """The shipped workflows' input files: frame 6 of the EndoVis clip as PNG, and the clip itself."""
    import cv2

    from surgsora.video_io import read_video

    input_dir.mkdir(parents=True, exist_ok=True)
    frame = read_video(CLIP, start=6, count=1)[0]
    cv2.imwrite(str(input_dir / FRAME_FILE), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
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
