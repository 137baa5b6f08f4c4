"""The motion a set of trajectories asks for, shown on the first frame before any diffusion is run.

* :func:`motion_signal` (what the CLI preview and the Motion Preview node show, and the input of dual-clock
  sampling): the first frame warped by the flow 0 -> t with occlusion-aware softmax splatting (nearer wins),
  holes filled from what lies behind the moved regions (never from their starting pixels), and a mask video
  of where the moved content is.
* :func:`motion_preview`: the plain version kept for comparison (``--warp average``, the node's ``warp`` option):
  average splatting, holes filled from the first frame, so a moved instrument also stays where it was.

Frame t of both depends only on frame 0 and the flow 0 -> t (plus, for the signal, which pixels move at any
frame), so :func:`motion_signal_chunks` / :func:`motion_preview_chunks` compute them a chunk of frames at a time,
bit for bit the same frames, in the memory of a chunk (:func:`chunk_frames`) instead of ~200 bytes per pixel and
frame of the whole video; the whole-video functions are the one-chunk case.
"""

from __future__ import annotations

import math

import torch

from .occlusion import backward_warp, dilate, inpaint, motion_disparity, region_disparity
from .splat import forward_splat, softmax_splat, sum_splat

__all__ = ["motion_signal", "motion_signal_chunks", "motion_preview", "motion_preview_chunks", "chunk_frames",
           "CHUNK_PIXELS"]

# Pixels (frames x height x width) the chunked motion signal works on at once: ~200 bytes each, so ~800 MB
# whatever the video's length (one frame at a time from 2048x2048 up). Smaller chunks save memory but multiply
# the number of tensor operations, each of which can stall for milliseconds on a busy 2-core machine (measured:
# 81 x 1280x720 took 370 s one frame per chunk against ~150 s for the whole video at once).
CHUNK_PIXELS = 1 << 22
_RANGE_SLACK = 1e-3  # float rounding of a [0, 1] image (a resize's overshoot) is not a wrong range


def _check_unit_image(fn: str, image: torch.Tensor) -> None:
    """One sentence unless ``image`` is floating point, finite and in [0, 1]: a uint8 or 0..255 image would
    otherwise be warped as if it were [0, 1] and come back clamped, a silent wrong video."""
    if not image.is_floating_point():
        dtype = str(image.dtype).replace("torch.", "")
        raise ValueError(f"{fn} expects a floating-point image in [0, 1]; got {dtype}: convert it with "
                         "image.float() / 255.")
    if image.device.type == "meta":  # shapes only (a dry run): there are no values to check
        return
    if image.numel() and not bool(torch.isfinite(image).all()):
        raise ValueError(f"{fn}: the image contains NaN or infinite values; every entry must be finite.")
    if image.numel():
        lo, hi = float(image.min()), float(image.max())
        if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
            fix = ("divide by 255" if hi > 1 + _RANGE_SLACK and lo >= -_RANGE_SLACK
                   else "map [-1, 1] to [0, 1] with (x + 1) / 2")
            raise ValueError(f"{fn} expects a float image in [0, 1]; got values from {lo:g} to {hi:g}: {fix}.")


@torch.no_grad()
def motion_preview(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` [B, 3, H, W] in [0, 1], ``flow`` [B, T-1, 2, H, W] -> video [B, T, 3, H, W] in [0, 1].

    Frame 0 is the image itself; frame t the image forward-warped by flow t, holes filled from the image.
    """
    video, = motion_preview_chunks(image, flow)
    return video


@torch.no_grad()
def motion_preview_chunks(image: torch.Tensor, flow, chunk: int | None = None):
    """:func:`motion_preview` ``chunk`` flow frames at a time (``None``: all): yields ``[B, t, 3, H, W]`` pieces in
    frame order, the first with frame 0. ``flow`` as in :func:`motion_signal_chunks` (a tensor or a lazy flow)."""
    shape, flow_dtype, read = _flow_source(flow)
    if image.ndim != 4 or shape is None or len(shape) != 5 or shape[2] != 2 or shape[0] != image.shape[0] \
            or shape[-2:] != tuple(image.shape[-2:]):
        got = tuple(flow.shape) if shape is not None else type(flow).__name__
        raise ValueError(f"motion_preview expects image [B, C, H, W] and flow [B, T-1, 2, H, W] of the same B, H, W; "
                         f"got {tuple(image.shape)} and {got}")
    _check_unit_image("motion_preview", image)
    lazy = not isinstance(flow, torch.Tensor)
    if not flow_dtype.is_floating_point or (not lazy and flow.device.type != "meta"
                                            and not bool(torch.isfinite(flow).all())):
        raise ValueError("motion_preview: the flow must be floating point and finite (pixels, frame 0 -> t).")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"motion_preview: chunk must be a whole number of frames >= 1 (or None for all); got "
                         f"{chunk!r}.")
    b, c, h, w = image.shape
    nf = shape[1]
    img = image.float()
    step = max(1, nf if chunk is None else min(chunk, nf))
    for a in range(0, max(nf, 1), step):
        f = read(a, min(a + step, nf))
        n = f.shape[1]
        if lazy and not bool(torch.isfinite(f).all()):
            raise ValueError("motion_preview: the flow must be floating point and finite (pixels, frame 0 -> t).")
        # A ones channel measures how much splatted weight each target received (1 = fully covered).
        src = torch.cat([img, torch.ones_like(img[:, :1])], 1)
        src = src.unsqueeze(1).expand(b, n, c + 1, h, w).reshape(b * n, c + 1, h, w)
        warped = forward_splat(src, f.float().reshape(b * n, 2, h, w)).view(b, n, c + 1, h, w)
        coverage = warped[:, :, c:].clamp(0, 1)
        frames = warped[:, :, :c] + (1 - coverage) * img.unsqueeze(1)
        video = (torch.cat([img.unsqueeze(1), frames], 1) if a == 0 else frames).clamp(0, 1)
        yield video.to(image.dtype)


def _finite(name: str, x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"motion_signal: {name} contains NaN or infinite values; every entry must be finite.")


def _per_video(name: str, x: torch.Tensor | None, b: int, h: int, w: int, channels: int | None) -> torch.Tensor | None:
    """Check an optional [B or 1, C, H, W] input and expand it to batch ``b``."""
    if x is None:
        return None
    want = f"[{b}, {channels if channels else 'M'}, {h}, {w}]"
    if (not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] not in (1, b) or x.shape[-2:] != (h, w)
            or (channels is not None and x.shape[1] != channels)):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"motion_signal: {name} must be {want} (or batch 1) to match the image; got {got}.")
    _finite(name, x)
    return x.expand(b, *x.shape[1:])


@torch.no_grad()
def motion_signal(image: torch.Tensor, flow: torch.Tensor, depth: torch.Tensor | None = None,
                  regions: torch.Tensor | None = None, *, strength: float = 50.0, fill: str = "pushpull",
                  motion_threshold: float = 0.5, mask_dilate: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The crude animation a set of trajectories asks for, and where it moves: ``(video, mask)``.

    Inputs (one batch size B, one frame size H x W; ``depth`` and ``regions`` may have batch 1):

    * ``image`` [B, C, H, W] in [0, 1] (C = 3 for RGB), the first frame;
    * ``flow`` [B, T-1, 2, H, W] in pixels, frame 0 -> frame t (channel 0 = x, 1 = y);
    * ``depth`` [B, 1, H, W], optional: disparity in [0, 1], 1 = nearest (Depth Anything, normalised);
    * ``regions`` [B, M, H, W], optional: masks of the objects the trajectories move (> 0.5 = inside),
      e.g. SAM masks from the clicks.

    Returns, in the image's dtype and device:

    * ``video`` [B, T, C, H, W] in [0, 1]: frame 0 is the image; frame t is the image softmax-splatted
      by flow t (:func:`surgsora.motion.splat.softmax_splat`, metric ``strength * disparity``), so where
      an instrument and the tissue land on one pixel the nearer one is shown instead of a blend.
      Disparity comes from ``depth`` when given, else from ``regions`` (background farthest, the
      smaller region nearer, :func:`~surgsora.motion.occlusion.region_disparity`), else from motion
      (what moves against the dominant motion is nearer). Pixels nothing lands on (disocclusions) show
      the background plate: the image with every moved region (or, without regions, every pixel that
      moves against the dominant motion) removed, grown by a margin, and inpainted from its surroundings
      (``fill``: "pushpull", pure PyTorch, or "telea", OpenCV), then shifted by the background's dominant
      motion (the median flow outside the removed pixels: 0 for a still camera). A moved object
      therefore never stays at its starting position.
    * ``mask`` [B, T, 1, H, W], 0 or 1: at frame t, each moved region splatted along its own flow and
      dilated by ``mask_dilate`` pixels (default ~1% of the short side, at least 1), together with every
      pixel whose flow exceeds ``motion_threshold`` pixels, where it lands (gaps that stretching leaves
      are closed); frame 0 marks the moved regions and the moving pixels where they start. This is the
      area a dual-clock (Time-to-Move) sampler anchors to the video.

    ``strength`` scales disparity into the softmax metric: at 50 a disparity gap of 0.2 weighs e^10 : 1 (a
    z-buffer between instrument and tissue, a soft blend within one surface); 0 is average splatting.
    ``motion_threshold`` (pixels) separates moving from still. Bad shapes, an image that is not float in
    [0, 1] (uint8, 0..255, [-1, 1]) and NaN/inf in the image, flow, depth or regions raise ``ValueError``.
    """
    (video, mask), = motion_signal_chunks(image, flow, depth, regions, strength=strength, fill=fill,
                                          motion_threshold=motion_threshold, mask_dilate=mask_dilate)
    return video, mask


def chunk_frames(height: int, width: int, batch: int = 1, budget: int | None = None) -> int:
    """Frames per chunk so that a chunk of ``batch`` videos holds about ``budget`` pixels (default
    :data:`CHUNK_PIXELS`), at least one frame."""
    budget = CHUNK_PIXELS if budget is None else budget
    return max(1, int(budget) // max(1, batch * height * width))


def _flow_source(flow):
    """(shape, dtype, read(a, b) -> flow[:, a:b]) of a flow tensor or a lazy flow (``shape``, ``dtype``, ``frames``)."""
    if isinstance(flow, torch.Tensor):
        return tuple(flow.shape), flow.dtype, lambda a, b: flow[:, a:b]
    if hasattr(flow, "frames") and hasattr(flow, "shape") and hasattr(flow, "dtype"):
        return tuple(flow.shape), flow.dtype, flow.frames
    return None, None, None


@torch.no_grad()
def motion_signal_chunks(image: torch.Tensor, flow, depth: torch.Tensor | None = None,
                         regions: torch.Tensor | None = None, *, chunk: int | None = None, strength: float = 50.0,
                         fill: str = "pushpull", motion_threshold: float = 0.5, mask_dilate: int | None = None):
    """:func:`motion_signal` a chunk of frames at a time: yields ``(video, mask)`` pieces ``[B, t, C, H, W]`` and
    ``[B, t, 1, H, W]`` in frame order (the first piece also holds frame 0) whose concatenation along dim 1 is
    what :func:`motion_signal` returns (which is this with one chunk).

    ``chunk``: flow frames per piece (``None``: all; :func:`chunk_frames` sizes it for a memory budget), so the
    working memory (warped frames, splat buffers, ~200 bytes per pixel and frame) is that of ``chunk`` frames,
    not of the video. ``flow`` is a tensor ``[B, T-1, 2, H, W]`` or a lazy flow (an object with ``shape``,
    ``dtype`` and ``frames(a, b)`` returning ``flow[:, a:b]``, e.g. :meth:`AnalyticDecoder.lazy_tracks
    <surgsora.motion.analytic_flow.AnalyticDecoder.lazy_tracks>`), read twice: once for which pixels move at all
    (the plate and the frame-0 mask), then for the frames. Every check happens before the first piece.
    """
    shape, flow_dtype, read = _flow_source(flow)
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or shape is None or len(shape) != 5 \
            or shape[2] != 2 or shape[0] != image.shape[0] or shape[-2:] != tuple(image.shape[-2:]):
        shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in (image, flow)]
        raise ValueError(f"motion_signal expects image [B, C, H, W] and flow [B, T-1, 2, H, W] of the same B, H, W; "
                         f"got {shapes[0]} and {shapes[1]}.")
    _check_unit_image("motion_signal", image)
    if not flow_dtype.is_floating_point:
        raise ValueError(f"motion_signal needs a floating-point flow in pixels; got {flow_dtype}.")
    if fill not in ("pushpull", "telea"):
        raise ValueError(f"motion_signal: fill must be 'pushpull' or 'telea'; got {fill!r}.")
    if mask_dilate is not None and (isinstance(mask_dilate, bool) or not isinstance(mask_dilate, int)
                                    or mask_dilate < 0):
        raise ValueError(f"motion_signal: mask_dilate must be a whole number of pixels >= 0 (or None for ~1% of the "
                         f"short side); got {mask_dilate!r}.")
    for name, value in (("strength", strength), ("motion_threshold", motion_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"motion_signal: {name} must be a finite number >= 0; got {value!r}.")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"motion_signal: chunk must be a whole number of frames >= 1 (or None for all); got "
                         f"{chunk!r}.")
    b, c, h, w = image.shape
    nf = shape[1]
    if nf == 0:
        raise ValueError("motion_signal: the flow has no frames (T-1 = 0); give at least one frame 0 -> t.")
    if isinstance(flow, torch.Tensor):
        _finite("the flow", flow)
    depth = _per_video("depth", depth, b, h, w, 1)
    regions = _per_video("regions", regions, b, h, w, None)
    work = torch.promote_types(image.dtype, torch.float32)
    img = image.to(work)
    if mask_dilate is None:
        mask_dilate = max(1, round(0.01 * min(h, w)))
    margin = max(1, round(min(h, w) / 128))  # boundary pixels of a mask often still show the object
    step = nf if chunk is None else min(chunk, nf)
    spans = [(a, min(a + step, nf)) for a in range(0, nf, step)]

    def flow_of(a: int, e: int) -> torch.Tensor:  # [B * n, 2, H, W] in the working dtype
        f = read(a, e)
        if not isinstance(flow, torch.Tensor):
            _finite("the flow", f)
        return f.to(work).reshape(b * (e - a), 2, h, w)

    # Pass 1, what needs every frame: which pixels move at all (the removed regions, the frame-0 mask).
    # Motion against the frame's dominant motion (a camera pan moves everything and hides nothing).
    rel_max = start = None
    cached = None
    for a, e in spans:
        f = flow_of(a, e)
        n = e - a
        d = f - f.flatten(2).median(-1).values[..., None, None]
        rel = torch.hypot(d[:, 0], d[:, 1]).view(b, n, h, w).amax(1, keepdim=True)  # [B, 1, H, W]
        nonzero = (torch.hypot(f[:, :1], f[:, 1:]) > motion_threshold).to(work)
        moving = nonzero.view(b, n, 1, h, w).amax(1)
        rel_max = rel if rel_max is None else torch.maximum(rel_max, rel)
        start = moving if start is None else torch.maximum(start, moving)
        if len(spans) == 1:  # one chunk: pass 2 reuses it instead of reading the flow again
            cached = (f, nonzero)
        del d, rel
    has_regions = regions is not None and regions.shape[1] > 0
    if has_regions:
        inside = regions > 0.5  # [B, M, H, W]
        moved = (rel_max > motion_threshold) & inside  # [B, M, H, W]
        moved_any = moved.flatten(2).any(-1)[..., None, None]  # which regions move at all
        removed = (inside & moved_any).any(1, keepdim=True)  # [B, 1, H, W]
    else:
        removed = rel_max > motion_threshold
    if has_regions:
        start = torch.maximum(start, dilate(removed.to(work), mask_dilate))
    region_level = region_disparity(regions.to(work)).to(work) if depth is None and has_regions else None

    # What lies behind: the image with the moved content removed and filled from around it, moved by the
    # background's dominant motion (per-frame median flow outside the removed pixels: 0 for a still
    # camera, the pan otherwise). A global motion, not the per-pixel flow: around a moving instrument the
    # flow is dragged along with it (decoders) or noisy (optical flow), and the tissue behind did not move so.
    hole = dilate(removed.to(work), margin)
    plate = inpaint(img, hole, method=fill)

    # Pass 2, frame by frame (each frame t needs only frame 0 and the flow 0 -> t).
    for a, e in spans:
        n = e - a
        f, nonzero = cached if cached is not None else (flow_of(a, e), None)

        def frames(x: torch.Tensor) -> torch.Tensor:  # [B, ...] -> [B * n, ...], one copy per frame
            return x.unsqueeze(1).expand(b, n, *x.shape[1:]).reshape(b * n, *x.shape[1:])

        # Depth order -> z-metric, per source pixel and frame.
        if depth is not None:
            disparity = frames(depth.to(work))
        elif has_regions:
            disparity = frames(region_level)
        else:
            disparity = motion_disparity(f).to(work)
        warped, coverage = softmax_splat(frames(img), f, strength * disparity, return_coverage=True)
        del disparity
        keep = frames(hole[:, 0] < 0.5).reshape(b * n, 1, h * w).expand(-1, 2, -1)
        flat = f.reshape(b * n, 2, h * w)
        pan = torch.where(keep, flat, torch.full_like(flat, float("nan"))).nanmedian(-1).values  # [B*n, 2]
        pan = torch.nan_to_num(pan, nan=0.0)  # nothing left outside the removed pixels: assume a still camera
        behind = backward_warp(frames(plate), pan[..., None, None].expand(-1, -1, h, w))
        # Fully covered targets keep the splat; thinly covered ones (trailing edges) fade into the background.
        alpha = (2 * coverage).clamp(0, 1)
        moved_frames = (alpha * warped + (1 - alpha) * behind).view(b, n, c, h, w)
        del warped, coverage, behind, alpha
        video = (torch.cat([img.unsqueeze(1), moved_frames], 1) if a == 0 else moved_frames).clamp(0, 1)
        del moved_frames

        # Mask: moved regions carried along the flow and dilated, plus every moving pixel where it lands.
        # Stretching motion scatters what lands into sparse pixels; a closing (dilate, then erode) of the
        # same radius joins them into one solid area, since the sampler anchors areas, not dots.
        region_src = frames(removed.to(work)) if has_regions else torch.zeros_like(f[:, :1])
        if nonzero is None:
            nonzero = (torch.hypot(f[:, :1], f[:, 1:]) > motion_threshold).to(work)
        landed = (sum_splat(torch.cat([region_src, nonzero], 1), f) > 0.1).to(work)
        landed = 1 - dilate(1 - dilate(landed, mask_dilate), mask_dilate)
        mask_t = torch.maximum(dilate(landed[:, :1], mask_dilate), landed[:, 1:]).view(b, n, 1, h, w)
        mask = (torch.cat([start.unsqueeze(1), mask_t], 1) if a == 0 else mask_t).clamp(0, 1)
        del f, nonzero, landed, mask_t, region_src
        yield video.to(image.dtype), mask.to(image.dtype)
