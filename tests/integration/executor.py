"""Run an API-format workflow in-process through the node functions (no ComfyUI server).

Our nodes run as they are. The handful of core ComfyUI nodes the shipped workflows use are replaced by
small test-only equivalents with the same inputs and outputs (load an image or video from the input
folder, resize, make and save a video). Inputs are validated the way ComfyUI validates a prompt before
running it: every required input present, combo values in the node's current list, numbers within
their min/max, links pointing at existing outputs of the declared type.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class PromptError(ValueError):
    pass


# ----------------------------------------------------------------------------- core node stand-ins

class LoadImage:
    FUNCTION, RETURN_TYPES = "load", ("IMAGE", "MASK")

    def __init__(self, input_dir):
        self.input_dir = input_dir

    def load(self, image):
        from surgsora.video_io import read_image

        arr = read_image(Path(self.input_dir) / image)
        x = torch.from_numpy(arr).float().div(255).unsqueeze(0)
        return x, torch.zeros(1, *x.shape[1:3])


class ImageScale:
    FUNCTION, RETURN_TYPES = "upscale", ("IMAGE",)
    MODES = {"nearest-exact": "nearest-exact", "bilinear": "bilinear", "area": "area", "bicubic": "bicubic",
             "lanczos": "bicubic"}

    def upscale(self, image, upscale_method, width, height, crop):
        assert crop == "disabled", "the shipped workflows stretch (crop disabled) so drawn tracks stay aligned"
        x = image.movedim(-1, 1)
        x = F.interpolate(x, size=(height, width), mode=self.MODES[upscale_method])
        return (x.movedim(1, -1).clamp(0, 1),)


class LoadVideo:
    FUNCTION, RETURN_TYPES = "load", ("VIDEO",)

    def __init__(self, input_dir):
        self.input_dir = input_dir

    def load(self, file):
        return ({"path": str(Path(self.input_dir) / file)},)


class GetVideoComponents:
    FUNCTION, RETURN_TYPES = "get", ("IMAGE", "AUDIO", "FLOAT")

    def get(self, video):
        from surgsora.video_io import read_video, video_info

        frames = read_video(video["path"])
        return torch.from_numpy(frames).float().div(255), None, video_info(video["path"])["fps"]


class CreateVideo:
    FUNCTION, RETURN_TYPES = "create", ("VIDEO",)

    def create(self, images, fps, audio=None):
        return ({"images": images, "fps": fps},)


class SaveVideo:
    FUNCTION, RETURN_TYPES = "save", ()

    def __init__(self, output_dir):
        self.output_dir = output_dir

    def save(self, video, filename_prefix, format="auto", codec="auto"):
        from surgsora.video_io import write_video

        folder, prefix = os.path.split(filename_prefix)
        out = Path(self.output_dir) / folder
        n = 1 + len(list(out.glob(f"{prefix}_*.mp4"))) if out.is_dir() else 1
        path = out / f"{prefix}_{n:05d}_.mp4"
        frames = (video["images"].numpy() * 255 + 0.5).astype(np.uint8)
        write_video(path, frames, fps=video["fps"])
        return {"ui": {"images": [{"filename": path.name, "subfolder": folder, "type": "output"}]}, "result": ()}


class PreviewImage:
    FUNCTION, RETURN_TYPES = "preview", ()

    def preview(self, images):
        return {"ui": {"images": []}, "result": ()}


def core_nodes(input_dir, output_dir) -> dict:
    return {"LoadImage": lambda: LoadImage(input_dir), "ImageScale": ImageScale, "LoadVideo": lambda: LoadVideo(input_dir),
            "GetVideoComponents": GetVideoComponents, "CreateVideo": CreateVideo,
            "SaveVideo": lambda: SaveVideo(output_dir), "PreviewImage": PreviewImage}


# ----------------------------------------------------------------------------- validation + execution

def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _validator(class_type: str, classes: dict | None = None):
    """(the node's VALIDATE_INPUTS, the inputs it takes, or None for all of them when it takes ``**kwargs``), or
    (None, set()). ``classes`` defaults to this pack's NODE_CLASS_MAPPINGS (the core stand-ins have none)."""
    import inspect

    if classes is None:
        try:
            from nodes import NODE_CLASS_MAPPINGS as classes  # this pack
        except ImportError:
            return None, set()
    fn = getattr(classes.get(class_type), "VALIDATE_INPUTS", None)
    if fn is None:
        return None, set()
    spec = inspect.getfullargspec(fn)
    return fn, None if spec.varkw else set(spec.args) - {"cls", "self"}


def validate(prompt: dict, info: dict) -> None:
    """ComfyUI's checks before a prompt runs (for the node specs in ``info``), as PromptError. As in ComfyUI, an
    input that the node's own VALIDATE_INPUTS takes skips the range and list checks: that function judges it (see
    :func:`run_prompt`)."""
    for nid, node in prompt.items():
        spec = info.get(node["class_type"])
        if spec is None:
            raise PromptError(f"node {nid}: unknown class {node['class_type']}")
        inputs = node["inputs"]
        _, own = _validator(node["class_type"])
        for group in ("required", "optional"):
            for name, s in spec["input"].get(group, {}).items():
                if name not in inputs:
                    if group == "required":
                        raise PromptError(f"node {nid} {node['class_type']}: required input {name} missing")
                    continue
                value = inputs[name]
                kind = "COMBO" if isinstance(s[0], list) else s[0]
                opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
                if _is_link(value):
                    src = prompt.get(value[0])
                    if src is None:
                        raise PromptError(f"node {nid}: input {name} links to missing node {value[0]}")
                    out_type = info[src["class_type"]]["output"][value[1]]
                    if kind not in (out_type, "*") and not (kind == "STRING" and out_type == "STRING"):
                        raise PromptError(f"node {nid}: {name} expects {kind}, gets {out_type}")
                    continue
                if own is None or name in own:
                    continue
                if kind == "COMBO":
                    options = s[0] if isinstance(s[0], list) else opts.get("options", [])
                    # an empty list is a machine-specific file list left out of the spec snapshot
                    if options and value not in options:
                        raise PromptError(f"node {nid} {node['class_type']}: {name}={value!r} not in {options}")
                elif kind in ("INT", "FLOAT"):
                    if "min" in opts and value < opts["min"] or "max" in opts and value > opts["max"]:
                        raise PromptError(f"node {nid}: {name}={value} outside [{opts.get('min')}, {opts.get('max')}]")


def run_prompt(prompt: dict, classes: dict, info: dict) -> dict:
    """Execute ``prompt`` (API format); returns {node_id: (outputs tuple, ui dict)}."""
    validate(prompt, info)
    for nid, node in prompt.items():  # the nodes' own checks, with their widget values, as ComfyUI calls them
        fn, own = _validator(node["class_type"], classes)
        if fn is not None:
            values = {k: v for k, v in node["inputs"].items() if not _is_link(v) and (own is None or k in own)}
            verdict = fn(**values)
            if verdict is not True:
                raise PromptError(f"node {nid} {node['class_type']}: {verdict}")
    deps = {nid: {v[0] for v in n["inputs"].values() if _is_link(v)} for nid, n in prompt.items()}
    done: dict[str, tuple] = {}
    while len(done) < len(prompt):
        ready = [nid for nid in prompt if nid not in done and deps[nid] <= set(done)]
        if not ready:
            raise PromptError("the prompt has a cycle")
        for nid in sorted(ready, key=int):
            node = prompt[nid]
            obj = classes[node["class_type"]]()
            kwargs = {k: (done[v[0]][0][v[1]] if _is_link(v) else v) for k, v in node["inputs"].items()}
            out = getattr(obj, obj.FUNCTION)(**kwargs)
            ui = {}
            if isinstance(out, dict):
                ui, out = out.get("ui", {}), out.get("result", ())
            done[nid] = (tuple(out), ui)
    return done
