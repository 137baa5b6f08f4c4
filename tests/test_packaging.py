"""Install metadata: requirements.txt (ComfyUI-Manager, Comfy Registry) says what pyproject.toml says."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _names(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[<>=!~ ;\[]", line, maxsplit=1)[0].lower().replace("_", "-")
            out[name] = line
    return out


def test_requirements_txt_is_pyproject_runtime_minus_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _names(project["dependencies"])
    required = _names((REPO / "requirements.txt").read_text().splitlines())
    assert required == {k: v for k, v in runtime.items() if k not in ("torch", "torchvision")}
    # training-only packages stay out of ComfyUI's environment
    assert not {"tensorboard", "filelock"} & set(required)
    assert {"tensorboard", "filelock"} <= set(_names(project["optional-dependencies"]["train"]))


def test_every_imported_third_party_module_is_declared():
    """A module the library, nodes or training import at module level or in functions must be installed by
    the project's metadata (or come with Python / torch)."""
    declared = {"torch", "torchvision", "diffusers", "transformers", "segment_anything", "safetensors", "cv2",
                "numpy", "accelerate", "scipy", "PIL", "tqdm", "matplotlib", "huggingface_hub", "av",
                "tensorboard", "filelock"}
    imported = set()
    for folder in ("surgsora", "nodes", "train"):
        for path in (REPO / folder).rglob("*.py"):
            for m in re.finditer(r"^\s*(?:from ([A-Za-z_]\w*)[\w.]* import |import ([A-Za-z_]\w*))", path.read_text(),
                                 re.M):
                imported.add(m.group(1) or m.group(2))
    import sys

    stdlib = set(sys.stdlib_module_names)
    ours = {"surgsora", "nodes", "train", "comfy", "folder_paths", "latent_preview", "server"}
    optional = {"bitsandbytes", "skimage", "torch_fidelity", "psutil"}  # used only when present / asked for
    assert imported - stdlib - ours - optional - declared == set()
