"""Trajectory nodes: the editor-backed trajectories node, decoders, trajectories -> flow, real-clip flow, preview.

Trajectories travel as ComfyUI's core ``TRACKS`` type (``track_path [T, N, 2]``, ``track_visibility
[T, N]``) with two extra keys, ``width``/``height``, the pixel frame the points are in; core nodes that
take ``TRACKS`` ignore them. Dense flow has no standard type: ``SURGSORA_FLOW`` is a float tensor
``[B, T-1, 2, H, W]`` in pixels of its own size, frame 0 -> t (channel 0 = x right, 1 = y down).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from surgsora.motion.flow_viz import draw_tracks, flow_to_rgb, max_magnitude
from surgsora.motion.preview import chunk_frames, motion_preview_chunks, motion_signal_chunks
from surgsora.motion.splat import resize_flow
from surgsora.motion.tracks import TrackError, check_canvas, parse_track_data, prepare_tracks, rasterize
from surgsora.sampling.settings import MAX_FRAMES, check_settings
from surgsora.video_io import threshold_mask

from .models import download_widget, model_choices, model_widget, resolve_model, validate_choice
from .runtime import (CATEGORY, Progress, bchw_to_image, comfy_module, image_to_bchw, image_to_depth,
                      mask_to_regions, offload_device, on_device, torch_device)

FLOW_TYPE = "SURGSORA_FLOW"
# Tracks, masks, flows and depth made on a frame still fit a resized copy of it whose shape differs this much
# (resizing to SVD's multiples of 64 stretches the frame and its tracks alike); beyond it they were made for
# another picture and are refused, naming both sizes.
SHAPE_TOLERANCE = 0.15
DECODER_TYPE = "SURGSORA_FLOW_DECODER"


def _tracks_dict(tracks: np.ndarray, width: int, height: int) -> dict:
    """Our [N, T, 2] tracks as core TRACKS (+ the pixel frame they are in)."""
    path = torch.from_numpy(np.ascontiguousarray(tracks.transpose(1, 0, 2))).float()  # [T, N, 2]
    return {"track_path": path, "track_visibility": torch.ones(path.shape[:2], dtype=torch.bool),
            "width": int(width), "height": int(height)}


def tracks_at(tracks, size: tuple[int, int], num_frames: int | None = None) -> np.ndarray:
    """TRACKS (ours or core) -> [N, T, 2] in pixels of ``size = (W, H)``; core TRACKS without a size are
    taken to be in pixels of ``size`` already. Tracks whose declared size has another shape than ``size``
    were drawn on another picture: refused, naming both sizes (rescaling would stretch them)."""
    if isinstance(tracks, dict) and "track_path" in tracks:
        path = tracks["track_path"]
        frames = int(np.shape(path)[-3]) if num_frames is None and np.ndim(path) >= 3 else (num_frames or 14)
    else:
        frames = num_frames or 14
    try:
        ts = parse_track_data(tracks)
        if ts.canvas is not None:
            check_canvas(ts.canvas, size, "the image", tolerance=SHAPE_TOLERANCE)
        return prepare_tracks(ts, canvas_size=size, size=size, num_frames=frames)
    except TrackError as e:
        raise ValueError(str(e)) from None


def _regions_for(region_masks, size: tuple[int, int]):
    """MASK [M, H, W] -> regions [1, M, H, W] at ``size = (H, W)``, refusing empty masks and other shapes.

    A mask at another resolution of the same shape (a downscaled copy) is resized; another aspect ratio
    means it was made for another picture, and an all-zero mask would be dropped without a word.
    """
    if region_masks is None:
        return None
    if isinstance(region_masks, torch.Tensor) and region_masks.ndim in (2, 3) and region_masks.numel():
        m = region_masks if region_masks.ndim == 3 else region_masks.unsqueeze(0)
        if not bool(torch.isfinite(m.float()).all()):
            raise ValueError("region_masks contain NaN or infinite values; masks must be in [0, 1].")
        empty = [i for i in range(m.shape[0]) if not bool((m[i] > 0.5).any())]
        if empty:
            raise ValueError(f"region_masks: mask {empty[0]} of {m.shape[0]} is empty (all zeros); remove it or "
                             "segment again (click inside the object).")
        for i in range(m.shape[0]):  # the decoders read > 0.5 as inside: a noisy mask says so, once, in the log
            threshold_mask(m[i].float().cpu().numpy(), f"region_masks mask {i}", threshold=0.5)
        mh, mw = m.shape[-2:]
        h, w = size
        if (mh, mw) != (h, w):
            try:
                check_canvas((mw, mh), (w, h), "the image", tolerance=SHAPE_TOLERANCE, warn=False)
            except TrackError:
                raise ValueError(f"region_masks are {mw}x{mh} but the image is {w}x{h}, another shape; give masks "
                                 "made on this image (e.g. SAM Masks from Clicks on it).") from None
    return mask_to_regions(region_masks, size)


def _flow_for(flow: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Flow resized to the image (values rescaled); another aspect ratio is refused, naming both sizes."""
    fh, fw = flow.shape[-2:]
    if (fh, fw) == (h, w):
        return flow
    try:
        check_canvas((fw, fh), (w, h), "the image", tolerance=SHAPE_TOLERANCE, warn=False)
    except TrackError:
        raise ValueError(f"flow is {fw}x{fh} but the image is {w}x{h}, another shape; compute the flow on this "
                         "image (SurgSora Trajectories to Flow with it connected).") from None
    return resize_flow(flow, (h, w))


def _image_and_flow(image, flow) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE -> [B, 3, H, W] and a flow of batch B or 1 -> [B, T-1, 2, H, W] at the image's size."""
    x = image_to_bchw(image, "image")
    b, _, h, w = x.shape
    f = _check_flow(flow)
    if f.shape[0] not in (1, b):
        raise ValueError(f"flow has a batch of {f.shape[0]} but the image {b}; they must match (or flow 1).")
    return x, _flow_for(f, h, w).expand(b, *f.shape[1:])


def depth_for(depth, b: int, h: int, w: int) -> torch.Tensor:
    """Any depth node's IMAGE/MASK -> [B, 1, H, W] at the image's size; another aspect ratio is refused."""
    d = image_to_depth(depth)
    if d.shape[0] not in (1, b):
        raise ValueError(f"depth has {d.shape[0]} images but the frame batch has {b}.")
    if d.shape[-2:] != (h, w):  # another pack's depth at another size: same picture, resample it
        try:
            check_canvas((d.shape[-1], d.shape[-2]), (w, h), "the image", tolerance=SHAPE_TOLERANCE, warn=False)
        except TrackError:
            raise ValueError(f"depth is {d.shape[-1]}x{d.shape[-2]} but the image is {w}x{h}, another shape; "
                             "estimate depth on this image.") from None
        d = torch.nn.functional.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)
    return d.expand(b, *d.shape[1:])


def flow_colours(flow: torch.Tensor) -> torch.Tensor:
    """flow [B, T-1, 2, H, W] -> IMAGE [B*T, H, W, 3]: frame 0 white (no motion), then the flow colours."""
    b, nf, _, h, w = flow.shape
    f = flow.float()
    out = torch.empty(b, nf + 1, h, w, 3)
    out[:, 0] = 1
    # One colour scale for the whole input, then a chunk of frames at a time into the output (no second copy).
    max_flow = max_magnitude(f)
    step = chunk_frames(h, w, b)
    for a in range(0, nf, step):
        out[:, 1 + a:1 + a + step] = flow_to_rgb(f[:, a:a + step], max_flow=max_flow).movedim(2, -1).clamp(0, 1)
    return out.flatten(0, 1)


def _fill(pieces, b: int, frames: int, h: int, w: int, draw=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Video pieces ``[B, t, 3, H, W]`` (or ``(video, mask)`` pairs) in frame order -> IMAGE ``[B*T, H, W, 3]`` (and
    MASK ``[B*T, H, W]``), written into the outputs as they come so no whole float video is held twice.
    ``draw(video_frame, b, t)`` may draw on each frame first."""
    image = torch.empty(b, frames, h, w, 3)
    mask = None
    t = 0
    for piece in pieces:
        video, m = piece if isinstance(piece, tuple) else (piece, None)
        n = video.shape[1]
        if draw is not None:
            video = torch.stack([torch.stack([draw(v[k], i, t + k) for k in range(n)]) for i, v in enumerate(video)])
        image[:, t:t + n] = video.detach().movedim(2, -1).float().clamp(0, 1).cpu()
        if m is not None:
            if mask is None:
                mask = torch.empty(b, frames, h, w)
            mask[:, t:t + n] = m[:, :, 0].float().cpu()
        t += n
    return image.flatten(0, 1), None if mask is None else mask.flatten(0, 1)


def _save_temp_frame(image: torch.Tensor, prefix: str) -> list[dict]:
    """Save the editor's background to ComfyUI's temp folder; the ``ui`` entry the frontend reads."""
    fp = comfy_module("folder_paths")
    if fp is None:
        return []
    import hashlib

    from PIL import Image

    arr = (image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    name = f"{prefix}_{hashlib.blake2b(arr.tobytes(), digest_size=8).hexdigest()}.png"
    folder = fp.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        tmp = path + ".partial"
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, path)
    return [{"filename": name, "subfolder": "", "type": "temp", "width": arr.shape[1], "height": arr.shape[0]}]


def _canvas_problem(width, height) -> str | None:
    """The trajectories node's canvas widgets: both 0 (the image's size) or both positive whole numbers; one sentence
    or None (a None value is a linked widget, not known yet)."""
    given = [v for v in (width, height) if v is not None]
    whole = all(not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 0 for v in given)
    if whole and (len(given) < 2 or (width > 0) == (height > 0)):
        return None
    return (f"canvas_width and canvas_height are {width} and {height}: set both canvas_width and canvas_height to the "
            "size of the picture the tracks were drawn on, or leave both at 0 (use the image's size).")


class SurgSoraTrajectories:
    """Trajectories drawn in the node's editor (click to start a track, click/drag to add points).

    Also takes tracks from other nodes: a JSON string (KJNodes SplineEditor ``coord_str``, DragNUWA lists)
    or core ``TRACKS``. Each track is resampled to ``frames`` frames (one drawn point per equal time
    step, monotone interpolation); a one-point track is a static anchor. With an ``image`` connected
    the tracks come out in its pixels and the editor shows it after a run.
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "tracks": ("STRING", {"default": "", "multiline": True,
                                      "tooltip": "Tracks as JSON (written by the editor above): "
                                                 "{\"width\": W, \"height\": H, \"tracks\": [[[x, y], ...], ...]}."}),
                "frames": ("INT", {"default": 14, "min": 2, "max": MAX_FRAMES,
                                   "tooltip": "Video length T the tracks are resampled to."}),
                "canvas_width": ("INT", {"default": 0, "min": 0, "max": 16384,
                                         "tooltip": "Size of the picture the tracks were drawn on, if the JSON does "
                                                    "not say (0 = the image's size)."}),
                "canvas_height": ("INT", {"default": 0, "min": 0, "max": 16384,
                                          "tooltip": "Height of that picture (0 = the image's size); set both or "
                                                     "neither."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "The first frame: shown in the editor, and the output pixel frame."}),
                "tracks_json": ("STRING", {"forceInput": True,
                                           "tooltip": "Tracks from another node (e.g. KJNodes Spline Editor "
                                                      "coord_str); replaces the drawn tracks."}),
                "tracks_in": ("TRACKS", {"tooltip": "Core TRACKS; replaces the drawn tracks."}),
            },
        }

    RETURN_TYPES = ("TRACKS", "IMAGE")
    RETURN_NAMES = ("tracks", "preview")
    OUTPUT_TOOLTIPS = ("The tracks resampled to the frame count, in pixels of the image (core TRACKS plus their "
                       "width and height).", "The tracks drawn on the image (black without one).")
    FUNCTION = "build"
    CATEGORY = f"{CATEGORY}/trajectory"

    @classmethod
    def VALIDATE_INPUTS(cls, canvas_width=None, canvas_height=None):
        return _canvas_problem(canvas_width, canvas_height) or True

    def build(self, tracks, frames=14, canvas_width=0, canvas_height=0, image=None, tracks_json=None,
              tracks_in=None):
        check_settings(frames=frames)
        problem = _canvas_problem(canvas_width, canvas_height)
        if problem:
            raise ValueError(problem)
        data = tracks_in if tracks_in is not None else (tracks_json if tracks_json is not None else tracks)
        x = image_to_bchw(image, "image") if image is not None else None
        try:
            ts = parse_track_data(data)
        except TrackError as e:
            raise ValueError(str(e)) from None
        canvas = ts.canvas
        if canvas is None and canvas_width > 0:
            canvas = (int(canvas_width), int(canvas_height))
        if canvas is None and x is not None:
            canvas = (x.shape[-1], x.shape[-2])
        if canvas is None:
            raise ValueError("The canvas size of the tracks is unknown: connect the image they were drawn on, or set "
                             "canvas_width and canvas_height.")
        size = (x.shape[-1], x.shape[-2]) if x is not None else canvas
        try:
            check_canvas(canvas, size, "the image", tolerance=SHAPE_TOLERANCE)
            prepared = prepare_tracks(ts, canvas_size=canvas, size=size, num_frames=int(frames))
        except TrackError as e:
            raise ValueError(str(e)) from None
        background = x[0] if x is not None else torch.zeros(3, size[1], size[0])
        preview = draw_tracks(background, prepared).unsqueeze(0)
        ui = {"surgsora_frame": _save_temp_frame(x[0].permute(1, 2, 0), "surgsora_frame")} if x is not None else {}
        return {"ui": ui, "result": (_tracks_dict(prepared, *size), bchw_to_image(preview))}


class SurgSoraLoadTrajectoryDecoder:
    """The Trajectory Controller's sparse-to-dense decoder: ``analytic`` (no weights, mask-aware) or the
    MOFA-Video CMP network (ckpt_iter_42000.pth.tar in models/surgsora)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "decoder": model_widget("cmp", "'analytic' needs no weights; MOFA-Video's CMP checkpoint "
                                           "(ckpt_iter_42000.pth.tar) goes in models/surgsora.", extra=("analytic",)),
            "region_motion": (["smooth", "rigid"], {"default": "smooth",
                                                   "tooltip": "Analytic decoder: how a masked region follows its "
                                                              "tracks: smooth = affine fit that follows every "
                                                              "track, rigid = one rotation + translation."}),
            "download": download_widget("surgsora"),
        }}

    RETURN_TYPES = (DECODER_TYPE,)
    RETURN_NAMES = ("decoder",)
    OUTPUT_TOOLTIPS = ("The sparse-to-dense flow decoder, for SurgSora Trajectories to Flow.",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/loaders"

    @classmethod
    def VALIDATE_INPUTS(cls, decoder=None, download=None):
        return validate_choice("cmp", decoder, bool(download), extra=("analytic",))

    def load(self, decoder, region_motion="smooth", download=False):
        if decoder == "analytic":
            from surgsora.motion.analytic_flow import AnalyticDecoder

            return (AnalyticDecoder(region_motion=region_motion),)
        from surgsora.motion.cmp import load_cmp

        path = resolve_model("cmp", decoder, download)
        return (load_cmp(path, device=torch_device()).to(offload_device()),)


class SurgSoraTracksToFlow:
    """Trajectories -> dense flow frame 0 -> t at the image's size, with a flow-colour video.

    ``region_masks`` (any MASK: SAM masks from the track starts, or another pack's segmentation) tells the
    decoder which pixels move together. Masks at another resolution of the image's shape are resized; an
    empty mask, or masks of another aspect ratio (made for another picture), are refused with both sizes.
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "decoder": (DECODER_TYPE, {"tooltip": "From SurgSora Load Trajectory Decoder."}),
                "tracks": ("TRACKS", {"tooltip": "Trajectories (SurgSora Trajectories or core TRACKS), frame 0 at "
                                                 "their first point."}),
                "image": ("IMAGE", {"tooltip": "The first frame; the flow comes out at its size."}),
            },
            "optional": {"region_masks": ("MASK", {"tooltip": "Masks of the objects the tracks move, made on this "
                                                              "image (another resolution of the same shape is "
                                                              "resized; empty masks or another shape are refused)."})},
        }

    RETURN_TYPES = (FLOW_TYPE, "IMAGE")
    RETURN_NAMES = ("flow", "flow_colours")
    OUTPUT_TOOLTIPS = ("Dense flow frame 0 -> t [B, T-1, 2, H, W] in pixels, for DFM Warp + MSF Fuse, Motion Preview "
                       "and Motion Signal.", "The flow as colours, one image per frame (frame 0 white: no motion).")
    FUNCTION = "decode"
    CATEGORY = f"{CATEGORY}/trajectory"

    def decode(self, decoder, tracks, image, region_masks=None):
        x = image_to_bchw(image, "image")
        b, _, h, w = x.shape
        t = tracks_at(tracks, (w, h))
        sparse, mask = rasterize(t, (h, w))
        regions = _regions_for(region_masks, (h, w))
        if b > 1:
            sparse, mask = sparse.expand(b, *sparse.shape[1:]), mask.expand(b, *mask.shape[1:])
            regions = regions.expand(b, *regions.shape[1:]) if regions is not None else None
        with on_device(decoder if any(True for _ in decoder.parameters()) else None):
            flow = decoder(x, sparse, mask, region_masks=regions)
        flow = flow.float().cpu()
        return (flow, flow_colours(flow))


FLOW_METHODS = ["dis", "raft"]


def _flow_method_problem(method, raft_weights) -> str | None:
    """The optical-flow node's method and weights together (None values: linked widgets, not known yet)."""
    if method is not None and method not in FLOW_METHODS:
        return f"method must be one of {', '.join(FLOW_METHODS)}; got {method!r}."
    if method == "raft" and raft_weights == "none":
        return ("RAFT needs a weights file: put raft_large_C_T_SKHT_V2-ff5fadd5.pth in models/optical_flow and "
                "choose it in raft_weights, or use method 'dis'.")
    return None


class SurgSoraVideoFlow:
    """Optical flow frame 0 -> t of a real clip (the paper's ground-truth-flow mode): OpenCV DIS chained
    frame to frame, or torchvision RAFT-Large from a local weights file (models/optical_flow)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": ("IMAGE", {"tooltip": "The clip as an IMAGE batch (e.g. Load Video -> Get Video Components)."}),
            "method": (FLOW_METHODS, {"default": "dis",
                                      "tooltip": "dis: OpenCV DIS, no weights, chained frame to frame; raft: "
                                                 "torchvision RAFT-Large (needs raft_weights)."}),
            "raft_weights": (model_choices("raft", extra=("none",)),
                             {"tooltip": "RAFT-Large weights in models/optical_flow (method raft only)."}),
            "start": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "First frame of the clip used."}),
            "num_frames": ("INT", {"default": 14, "min": 0, "max": 4096, "tooltip": "Frames used (0 = all)."}),
            "stride": ("INT", {"default": 1, "min": 1, "max": 100,
                               "tooltip": "Take every stride-th frame (2 = half the frame rate)."}),
        }}

    RETURN_TYPES = (FLOW_TYPE, "IMAGE", "IMAGE", "IMAGE")
    RETURN_NAMES = ("flow", "first_frame", "clip", "flow_colours")
    OUTPUT_TOOLTIPS = ("Flow frame 0 -> t of the clip [1, T-1, 2, H, W] in pixels, like Trajectories to Flow's.",
                       "The clip's first frame used, as a one-image IMAGE.", "The frames used, as an IMAGE batch.",
                       "The flow as colours, one image per frame (frame 0 white).")
    FUNCTION = "estimate"
    CATEGORY = f"{CATEGORY}/trajectory"

    @classmethod
    def VALIDATE_INPUTS(cls, method=None, raft_weights=None):
        problem = _flow_method_problem(method, raft_weights)
        if problem is None and method != "dis":  # with 'dis' the weights are not used
            problem = validate_choice("raft", raft_weights, extra=("none",))
        return problem or True

    def estimate(self, frames, method="dis", raft_weights="none", start=0, num_frames=14, stride=1):
        from surgsora.motion.optical_flow import estimate_flow

        problem = _flow_method_problem(method, raft_weights)
        if problem:
            raise ValueError(problem)
        for name, v, lo in (("start", start, 0), ("num_frames", num_frames, 0), ("stride", stride, 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be a whole number >= {lo}; got {v!r}.")
        x = image_to_bchw(frames, "frames")
        if start >= x.shape[0]:
            raise ValueError(f"start={start} is beyond the clip, which has {x.shape[0]} frames (0..{x.shape[0] - 1}).")
        stop = x.shape[0] if num_frames == 0 else start + num_frames * stride
        clip = x[start:stop:stride]
        if clip.shape[0] < 2 or (num_frames and clip.shape[0] < num_frames):
            raise ValueError(f"The clip has {x.shape[0]} frames; start={start}, num_frames={num_frames}, "
                             f"stride={stride} needs {start + (max(num_frames, 2) - 1) * stride + 1}.")
        weights = resolve_model("raft", raft_weights) if method == "raft" else None
        u8 = (clip.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        bar = Progress(1)
        flow = torch.from_numpy(estimate_flow(u8, method=method, raft_weights=weights,
                                              device=torch_device() if method == "raft" else "cpu")).unsqueeze(0)
        bar.update()
        return (flow, bchw_to_image(clip[:1]), bchw_to_image(clip), flow_colours(flow))


WARPS = ["occlusion", "average"]


class SurgSoraMotionPreview:
    """The first frame pushed along the flow: the motion the trajectories ask for, in a fraction of a second and
    without any diffusion model. By default the picture of the CLI's preview and of the dual-clock motion signal
    (nearer wins, disocclusions filled from the background); ``warp`` average is the plain average splat."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The first frame."}),
                "flow": (FLOW_TYPE, {"tooltip": "Flow frame 0 -> t (SurgSora Trajectories to Flow or Optical Flow "
                                                "from Clip)."}),
                "warp": (WARPS, {"default": "occlusion",
                                 "tooltip": "occlusion: the motion signal (nearer wins, holes filled from the "
                                            "background), as the CLI preview; average: plain average splatting, "
                                            "holes filled from the frame (a moved object also stays where it was)."}),
            },
            "optional": {
                "tracks": ("TRACKS", {"tooltip": "Draw these tracks on the preview."}),
                "depth": ("IMAGE", {"tooltip": "Optional depth (near = bright): decides what is in front (warp "
                                               "occlusion)."}),
                "region_masks": ("MASK", {"tooltip": "Optional masks of the moved objects: smaller regions are in "
                                                     "front, and the background behind them fills the holes (warp "
                                                     "occlusion)."}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("video",)
    OUTPUT_TOOLTIPS = ("The frame pushed along the flow, one image per frame (frame 0 first).",)
    FUNCTION = "preview"
    CATEGORY = f"{CATEGORY}/trajectory"

    @torch.no_grad()
    def preview(self, image, flow, warp="occlusion", tracks=None, depth=None, region_masks=None):
        if warp not in WARPS:
            raise ValueError(f"warp must be one of {', '.join(WARPS)}; got {warp!r}.")
        x, f = _image_and_flow(image, flow)
        b, _, h, w = x.shape
        frames = f.shape[1] + 1
        if warp == "average":
            pieces = motion_preview_chunks(x, f, chunk_frames(h, w, b))
        else:
            pieces = (v for v, _ in _motion_signal(x, f, depth, region_masks))
        draw = None
        if tracks is not None:
            t = tracks_at(tracks, (w, h), num_frames=frames)
            draw = lambda frame, i, k: draw_tracks(frame, t[:, : k + 1])  # noqa: E731
        return (_fill(pieces, b, frames, h, w, draw)[0],)


def _motion_signal(x: torch.Tensor, f: torch.Tensor, depth, region_masks):
    """The occlusion-aware motion signal of frames [B, 3, H, W] and their flow, with the nodes' optional depth and
    region masks brought to the frames' size: ``(video, mask)`` pieces a chunk of frames at a time."""
    b, _, h, w = x.shape
    d = None if depth is None else depth_for(depth, b, h, w)
    return motion_signal_chunks(x, f, depth=d, regions=_regions_for(region_masks, (h, w)),
                                chunk=chunk_frames(h, w, b))


class SurgSoraMotionSignal:
    """The crude animation the trajectories ask for and the mask of what moves, for dual-clock (Time-to-Move)
    sampling on plain SVD: occlusion-aware forward warping (the nearer of two things wins), disocclusions
    filled from the inpainted background, each moved region's mask carried along its own flow."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"image": ("IMAGE", {"tooltip": "The first frame."}),
                         "flow": (FLOW_TYPE, {"tooltip": "Flow frame 0 -> t from SurgSora Tracks -> Flow."})},
            "optional": {
                "depth": ("IMAGE", {"tooltip": "Optional depth (near = bright): decides what is in front."}),
                "region_masks": ("MASK", {"tooltip": "Optional masks of the moved objects (e.g. SAM masks of "
                                                     "the track starts): smaller regions are in front."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("motion_signal", "motion_mask")
    OUTPUT_TOOLTIPS = ("The warped animation, one IMAGE per frame.", "Where the sampler follows it, one MASK per frame.")
    FUNCTION = "build"
    CATEGORY = f"{CATEGORY}/trajectory"

    @torch.no_grad()
    def build(self, image, flow, depth=None, region_masks=None):
        x, f = _image_and_flow(image, flow)
        b, _, h, w = x.shape
        return _fill(_motion_signal(x, f, depth, region_masks), b, f.shape[1] + 1, h, w)


def _check_flow(flow) -> torch.Tensor:
    if not isinstance(flow, torch.Tensor) or flow.ndim != 5 or flow.shape[2] != 2 or 0 in flow.shape:
        shape = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise ValueError(f"flow must be [B, T-1, 2, H, W] (from a SurgSora flow node); got {shape}.")
    f = flow.float()
    if not bool(torch.isfinite(f).all()):
        raise ValueError("flow contains NaN or infinite values; recompute it (every displacement must be finite).")
    return f


NODE_CLASS_MAPPINGS = {
    "SurgSoraTrajectories": SurgSoraTrajectories,
    "SurgSoraLoadTrajectoryDecoder": SurgSoraLoadTrajectoryDecoder,
    "SurgSoraTracksToFlow": SurgSoraTracksToFlow,
    "SurgSoraVideoFlow": SurgSoraVideoFlow,
    "SurgSoraMotionPreview": SurgSoraMotionPreview,
    "SurgSoraMotionSignal": SurgSoraMotionSignal,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SurgSoraTrajectories": "SurgSora Trajectories (editor)",
    "SurgSoraLoadTrajectoryDecoder": "SurgSora Load Trajectory Decoder",
    "SurgSoraTracksToFlow": "SurgSora Trajectories to Flow",
    "SurgSoraVideoFlow": "SurgSora Optical Flow from Clip",
    "SurgSoraMotionPreview": "SurgSora Motion Preview",
    "SurgSoraMotionSignal": "SurgSora Motion Signal (dual-clock)",
}
