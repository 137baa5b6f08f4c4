"""Perception nodes: Segment Anything features + masks, Depth Anything V2 depth (the DSI inputs).

Outputs use standard types where one exists: depth as an ``IMAGE`` (grey, near = bright, the way other
depth packs produce it, so any of them can replace ours) plus the single-channel map as a ``MASK``;
masks from clicks as a ``MASK``. Only the SAM image embedding has no standard type
(``SURGSORA_SEG_FEATURES``, ``[B, 256, 64, 64]``).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from surgsora.perception.depth import check_input_size, depth_to_rgb, load_depth_anything
from surgsora.perception.sam import load_sam

from .models import download_widget, model_widget, resolve_model, validate_choice
from .runtime import (CATEGORY, PRECISION_TOOLTIP, PRECISIONS, Progress, bchw_to_image, check_interrupted,
                      image_to_bchw, offload_device, on_device, queue_problem, resolve_dtype, torch_device)

SAM_TYPE = "SURGSORA_SAM"
DEPTH_MODEL_TYPE = "SURGSORA_DEPTH_MODEL"
SEG_TYPE = "SURGSORA_SEG_FEATURES"


class SurgSoraLoadSAM:
    """Load a Segment Anything v1 checkpoint (vit_b/l/h detected from its tensor shapes) from models/sams."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": model_widget("sam", "A Segment Anything v1 checkpoint (sam_vit_b, _l or _h) in "
                                              "models/sams."),
            "download": download_widget("sams"),
        }}

    RETURN_TYPES = (SAM_TYPE,)
    RETURN_NAMES = ("sam",)
    OUTPUT_TOOLTIPS = ("The SAM model, for SurgSora SAM Segment Features and SAM Masks from Clicks.",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/loaders"

    @classmethod
    def VALIDATE_INPUTS(cls, model_name=None, download=None):
        return validate_choice("sam", model_name, bool(download))

    def load(self, model_name, download=False):
        path = resolve_model("sam", model_name, download)
        seg = load_sam(path, device=torch_device())
        seg.to(offload_device())
        return (seg,)


def _track_set(data, what: str, size: tuple[int, int]):
    """Tracks in any accepted format, checked against the image's shape; returns (tracks, (sx, sy)) where
    (sx, sy) scale the tracks' canvas to the image's pixels."""
    from surgsora.motion.tracks import TrackError, check_canvas, parse_track_data

    w, h = size
    try:
        ts = parse_track_data(data)
        if ts.canvas is not None:
            check_canvas(ts.canvas, (w, h), "the image", tolerance=0.15)
    except TrackError as e:
        raise ValueError(f"{what}: {e}") from None
    cw, ch = ts.canvas or (w, h)
    return ts.tracks, (w / cw, h / ch)


def _clicks(clicks: str, tracks, size: tuple[int, int]) -> np.ndarray:
    """Clicks (x, y) in pixels of the image of ``size = (W, H)``, from the track starts and/or a JSON list."""
    from surgsora.motion.tracks import START_MARGIN

    w, h = size
    points = []
    if tracks is not None:
        ts, (sx, sy) = _track_set(tracks, "tracks", size)
        points += [(t[0, 0] * sx, t[0, 1] * sy) for t in ts]
    text = (clicks or "").strip()
    if text:
        try:
            data = json.loads(text.lstrip("\ufeff"))
        except json.JSONDecodeError as e:
            raise ValueError(f"clicks must be JSON like [[x, y], [x, y]] in image pixels ({e.msg}).") from None
        ts, (sx, sy) = _track_set(data, "clicks", size)
        points += [(x * sx, y * sy) for t in ts for x, y in t]
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    # A click just past the border (within the tracks' 5 % margin) is still on the image; further out it
    # is a wrong coordinate system, which clipping would silently turn into a click on the edge.
    mx, my = START_MARGIN * w, START_MARGIN * h
    outside = (pts[:, 0] < -mx) | (pts[:, 0] > w + mx) | (pts[:, 1] < -my) | (pts[:, 1] > h + my)
    if outside.any():
        x, y = pts[int(np.argmax(outside))]
        raise ValueError(f"A click at ({x:.1f}, {y:.1f}) is outside the {w}x{h} image; clicks are in pixels of the "
                         "image (or of the canvas the JSON declares with width/height).")
    pts[:, 0] = pts[:, 0].clip(0, w - 1e-3)
    pts[:, 1] = pts[:, 1].clip(0, h - 1e-3)
    return pts


def _overlay(image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """image [3, H, W], masks [M, H, W] -> image with each mask tinted in its own colour."""
    from surgsora.motion.flow_viz import TRACK_COLOURS

    out = image.clone()
    for k, m in enumerate(masks):
        colour = torch.tensor(TRACK_COLOURS[k % len(TRACK_COLOURS)], dtype=out.dtype).view(3, 1, 1) / 255
        a = 0.45 * m.to(out.dtype)
        out = out * (1 - a) + colour * a
    return out


class SurgSoraSAMSegment:
    """SAM image embedding of each frame: the segment features the Dual Semantic Injector takes.

    Depends on the frame only, so editing trajectories or clicks never reruns it (ComfyUI's cache), and
    the mask node reuses the same embedding (the segmenter's own cache).
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sam": (SAM_TYPE, {"tooltip": "From SurgSora Load SAM."}),
            "image": ("IMAGE", {"tooltip": "The frame(s) to encode, any size; one embedding per image."}),
        }}

    RETURN_TYPES = (SEG_TYPE,)
    RETURN_NAMES = ("seg_features",)
    OUTPUT_TOOLTIPS = ("SAM image embeddings [B, 256, 64, 64], one per image: the segment features of DSI Encode.",)
    FUNCTION = "segment"
    CATEGORY = f"{CATEGORY}/perception"

    def segment(self, sam, image):
        x = image_to_bchw(image, "image")
        bar = Progress(x.shape[0])
        with on_device() as device:
            sam.to(device)
            try:
                feats = []
                for i in range(x.shape[0]):
                    check_interrupted()
                    feats.append(sam.encode(x[i:i + 1]).cpu())
                    bar.update()
            finally:
                sam.to(offload_device())
        return (torch.cat(feats),)


class SurgSoraSAMMasks:
    """SAM masks from clicks on the first frame: one mask per click, at the start of each track (connect
    the trajectories) and/or at the points in ``clicks``. They tell the flow node which pixels move together.
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sam": (SAM_TYPE, {"tooltip": "From SurgSora Load SAM."}),
                "image": ("IMAGE", {"tooltip": "The frame the clicks are on (the first image of a batch)."}),
                "clicks": ("STRING", {"default": "", "multiline": False,
                                      "tooltip": "Extra clicks as JSON [[x, y], ...] in pixels of the image; one "
                                                 "mask per click."}),
            },
            "optional": {
                "tracks": ("TRACKS", {"tooltip": "One mask per track, clicked at its start point."}),
            },
        }

    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("masks", "preview")
    OUTPUT_TOOLTIPS = ("One mask per click (0 or 1) at the image's size, in click order: the region masks of the "
                       "flow node.", "The image with each mask tinted in its own colour.")
    FUNCTION = "predict"
    CATEGORY = f"{CATEGORY}/perception"

    def predict(self, sam, image, clicks="", tracks=None):
        x = image_to_bchw(image, "image")[:1]
        pts = _clicks(clicks, tracks, (x.shape[-1], x.shape[-2]))
        if not len(pts):
            raise ValueError("No clicks: connect the trajectories (one mask per track start) or give clicks as "
                             "[[x, y], ...].")
        bar = Progress(len(pts))
        masks = []
        with on_device() as device:
            sam.to(device)
            try:
                for p in pts:
                    check_interrupted()
                    m, _ = sam.predict_masks(x, points=p[None])
                    masks.append(m[:1].float().cpu())
                    bar.update()
            finally:
                sam.to(offload_device())
        masks = torch.cat(masks)
        return (masks, bchw_to_image(_overlay(x[0], masks).unsqueeze(0)))


class SurgSoraLoadDepthAnything:
    """Load Depth Anything V2 from models/depthanything: original .pth, kijai safetensors or an HF folder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": model_widget("depth", "Depth Anything V2: depth_anything_v2_vit{s,b,l}.pth, a "
                                                "*_fp16.safetensors or a Hugging Face folder in models/depthanything."),
            "precision": (PRECISIONS, {"default": "auto", "tooltip": PRECISION_TOOLTIP}),
            "download": download_widget("depthanything"),
        }}

    RETURN_TYPES = (DEPTH_MODEL_TYPE,)
    RETURN_NAMES = ("depth_model",)
    OUTPUT_TOOLTIPS = ("The Depth Anything V2 model, for SurgSora Depth.",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/loaders"

    @classmethod
    def VALIDATE_INPUTS(cls, model_name=None, download=None):
        return validate_choice("depth", model_name, bool(download))

    def load(self, model_name, precision="auto", download=False):
        path = resolve_model("depth", model_name, download)
        device = torch_device()
        model = load_depth_anything(path, device=device, dtype=resolve_dtype(precision, device))
        return (model.to(offload_device()),)


class SurgSoraDepth:
    """Relative depth normalised per image to [0, 1] (1 = nearest), at the image's resolution."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "depth_model": (DEPTH_MODEL_TYPE, {"tooltip": "From SurgSora Load Depth Anything V2."}),
            "image": ("IMAGE", {"tooltip": "The frame(s); depth comes out at their size."}),
            "input_size": ("INT", {"default": 518, "min": 14, "max": 4200, "step": 14,
                                   "tooltip": "Network input: shorter side in pixels, a multiple of 14 (518 as "
                                              "trained; smaller is faster and coarser)."}),
        }}

    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("depth", "depth_map", "depth_colour")
    OUTPUT_TOOLTIPS = ("Relative depth as a grey IMAGE, normalised per image to [0, 1], near = bright: the depth "
                       "input of DSI Encode and Motion Signal.", "The same depth as a one-channel MASK [N, H, W].",
                       "The depth in colour, for viewing.")
    FUNCTION = "estimate"
    CATEGORY = f"{CATEGORY}/perception"

    @classmethod
    def VALIDATE_INPUTS(cls, input_size=None):
        # the step of 14 is the rule, which ComfyUI's widget check does not enforce (it rounds in the UI only)
        return input_size is None or queue_problem(check_input_size, input_size) or True

    def estimate(self, depth_model, image, input_size=518):
        check_input_size(input_size)  # before any work
        x = image_to_bchw(image, "image")
        bar = Progress(x.shape[0])
        out = []
        with on_device(depth_model):
            for i in range(x.shape[0]):
                check_interrupted()
                out.append(depth_model(x[i:i + 1], input_size=int(input_size)).float().cpu())
                bar.update()
        d = torch.cat(out)  # [B, 1, H, W]
        return (bchw_to_image(depth_to_rgb(d, None)), d[:, 0].contiguous(), bchw_to_image(depth_to_rgb(d)))


NODE_CLASS_MAPPINGS = {
    "SurgSoraLoadSAM": SurgSoraLoadSAM,
    "SurgSoraSAMSegment": SurgSoraSAMSegment,
    "SurgSoraSAMMasks": SurgSoraSAMMasks,
    "SurgSoraLoadDepthAnything": SurgSoraLoadDepthAnything,
    "SurgSoraDepth": SurgSoraDepth,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SurgSoraLoadSAM": "SurgSora Load SAM",
    "SurgSoraSAMSegment": "SurgSora SAM Segment Features",
    "SurgSoraSAMMasks": "SurgSora SAM Masks from Clicks",
    "SurgSoraLoadDepthAnything": "SurgSora Load Depth Anything V2",
    "SurgSoraDepth": "SurgSora Depth",
}
