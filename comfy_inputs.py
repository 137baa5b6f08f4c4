"""The shipped templates' example files, put into ComfyUI's input folder so the templates open in a fresh install.

The templates load ``surgsora_endovis_frame6.png`` (Load Image) and ``surgsora_endovis_clip.mp4`` (Load Video,
in "SurgSora Ground-Truth Flow"), which a new ComfyUI does not have. The pack ships them in ``demo/`` (a git
clone, ComfyUI-Manager and the Comfy Registry all carry that folder) and, when ComfyUI loads it, copies each one
into ``folder_paths.get_input_directory()`` if no file of that name is there: a user's file is never replaced.
No torch and no ComfyUI import at module level, so the workflow generator and the tests use the same names.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DEMO = Path(__file__).resolve().parent / "demo"
FRAME_FILE = "surgsora_endovis_frame6.png"
CLIP_FILE = "surgsora_endovis_clip.mp4"
# input-folder name -> the shipped file (provenance: demo/endovis17/README.md)
EXAMPLE_INPUTS = {FRAME_FILE: DEMO / "surgsora_endovis_frame6.png", CLIP_FILE: DEMO / "endovis17" / "clip.mp4"}


def _copy_if_absent(src: Path, dest: Path) -> bool:
    """Copy ``src`` to ``dest`` unless ``dest`` exists (checked and created in one step, so a file that appears
    meanwhile is not replaced either); a half-written copy is removed. Returns whether it copied."""
    try:
        out = open(dest, "xb")
    except FileExistsError:
        return False
    try:
        with out, open(src, "rb") as f:
            shutil.copyfileobj(f, out)
    except BaseException:
        os.unlink(dest)  # ours, and incomplete
        raise
    return True


def copy_example_inputs(input_dir: str | os.PathLike) -> list[str]:
    """Copy the templates' example files into ``input_dir`` where absent; returns the names copied."""
    input_dir = Path(input_dir)
    input_dir.mkdir(parents=True, exist_ok=True)
    return [name for name, src in EXAMPLE_INPUTS.items() if _copy_if_absent(src, input_dir / name)]


def install_example_inputs() -> None:
    """At the pack's load: the example files into ComfyUI's input folder. Never raises: the nodes work without
    them, so a failure (a read-only folder, a full disk) is one printed line."""
    try:
        import folder_paths  # ComfyUI's
    except ImportError:  # imported outside ComfyUI (tests, tools): there is no input folder to fill
        return
    try:
        copy_example_inputs(folder_paths.get_input_directory())
    except Exception as e:  # noqa: BLE001 - the pack must load whatever went wrong here
        print(f"[SurgSora] the templates' example image and clip were not copied into ComfyUI's input folder "
              f"({type(e).__name__}: {e}); copy them from {DEMO} to use the templates as shipped.")
