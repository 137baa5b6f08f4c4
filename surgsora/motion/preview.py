"""The motion a set of trajectories asks for, shown on the first frame before any diffusion is run.

* :func:`motion_signal` (what the CLI preview and the Motion Preview node show, and the input of dual-clock
  sampling): the first frame warped by the flow 0 -> t with occlusion-aware softmax splatting (nearer wins),
  holes filled from what lies behind the moved regions (never from their starting pixels), and a mask video
  of where the moved content is.
* :func:`motion_preview`: the plain version kept for comparison (``--warp average``, the node's ``warp`` option):
  average splatting, holes filled from the first frame, so a moved instrument also stays where it was.
"""

from __future__ import annotations

import torch

from .occlusion import backward_warp, dilate, inpaint, motion_disparity, region_disparity
from .splat import forward_splat, softmax_splat, sum_splat

__all__ = ["motion_signal", "motion_preview"]


@torch.no_grad()
def motion_preview(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` [B, 3, H, W] in [0, 1], ``flow`` [B, T-1, 2, H, W] -> video [B, T, 3, H, W] in [0, 1].

    Frame 0 is the image itself; frame t the image forward-warped by flow t, holes filled from the image.
    """
    if image.ndim != 4 or flow.ndim != 5 or flow.shape[2] != 2 or flow.shape[0] != image.shape[0] \
            or flow.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"motion_preview expects image [B, C, H, W] and flow [B, T-1, 2, H, W] of the same B, H, W; "
                         f"got {tuple(image.shape)} and {tuple(flow.shape)}")
    b, c, h, w = image.shape
    f = flow.shape[1]
    img = image.float()
    # A ones channel measures how much splatted weight each target received (1 = fully covered).
    src = torch.cat([img, torch.ones_like(img[:, :1])], 1)
    src = src.unsqueeze(1).expand(b, f, c + 1, h, w).reshape(b * f, c + 1, h, w)
    warped = forward_splat(src, flow.float().reshape(b * f, 2, h, w)).view(b, f, c + 1, h, w)
    coverage = warped[:, :, c:].clamp(0, 1)
    frames = warped[:, :, :c] + (1 - coverage) * img.unsqueeze(1)
    video = torch.cat([img.unsqueeze(1), frames], 1).clamp(0, 1)
    return video.to(image.dtype)


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
    ``motion_threshold`` (pixels) separates moving from still. Bad shapes, non-float images and NaN/inf in
    the image, flow, depth or regions raise ``ValueError``.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or not isinstance(flow, torch.Tensor) \
            or flow.ndim != 5 or flow.shape[2] != 2 or flow.shape[0] != image.shape[0] \
            or flow.shape[-2:] != image.shape[-2:]:
        shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in (image, flow)]
        raise ValueError(f"motion_signal expects image [B, C, H, W] and flow [B, T-1, 2, H, W] of the same B, H, W; "
                         f"got {shapes[0]} and {shapes[1]}.")
    if not image.is_floating_point() or not flow.is_floating_point():
        raise ValueError(f"motion_signal needs floating-point image and flow in [0, 1] and pixels; got "
                         f"{image.dtype} and {flow.dtype}.")
    if fill not in ("pushpull", "telea"):
        raise ValueError(f"motion_signal: fill must be 'pushpull' or 'telea'; got {fill!r}.")
    b, c, h, w = image.shape
    nf = flow.shape[1]
    if nf == 0:
        raise ValueError("motion_signal: the flow has no frames (T-1 = 0); give at least one frame 0 -> t.")
    _finite("the flow", flow)
    _finite("the image", image)
    depth = _per_video("depth", depth, b, h, w, 1)
    regions = _per_video("regions", regions, b, h, w, None)
    work = torch.promote_types(image.dtype, torch.float32)
    img = image.to(work)
    f = flow.to(work).reshape(b * nf, 2, h, w)
    if mask_dilate is None:
        mask_dilate = max(1, round(0.01 * min(h, w)))
    margin = max(1, round(min(h, w) / 128))  # boundary pixels of a mask often still show the object

    def frames(x: torch.Tensor) -> torch.Tensor:  # [B, ...] -> [B * (T-1), ...], one copy per frame
        return x.unsqueeze(1).expand(b, nf, *x.shape[1:]).reshape(b * nf, *x.shape[1:])

    # Motion against the frame's dominant motion (a camera pan moves everything and hides nothing).
    d = f - f.flatten(2).median(-1).values[..., None, None]
    rel = torch.hypot(d[:, 0], d[:, 1]).view(b, nf, h, w)
    has_regions = regions is not None and regions.shape[1] > 0
    if has_regions:
        inside = regions > 0.5  # [B, M, H, W]
        moved = (rel.amax(1, keepdim=True) > motion_threshold) & inside  # [B, M, H, W]
        moved_any = moved.flatten(2).any(-1)[..., None, None]  # which regions move at all
        removed = (inside & moved_any).any(1, keepdim=True)  # [B, 1, H, W]
    else:
        removed = (rel.amax(1) > motion_threshold).unsqueeze(1)

    # Depth order -> z-metric, per source pixel and frame.
    if depth is not None:
        disparity = frames(depth.to(work))
    elif has_regions:
        disparity = frames(region_disparity(regions.to(work)).to(work))
    else:
        disparity = motion_disparity(f).to(work)
    warped, coverage = softmax_splat(frames(img), f, strength * disparity, return_coverage=True)

    # What lies behind: the image with the moved content removed and filled from around it, moved by the
    # background's dominant motion (per-frame median flow outside the removed pixels: 0 for a still
    # camera, the pan otherwise). A global motion, not the per-pixel flow: around a moving instrument the
    # flow is dragged along with it (decoders) or noisy (optical flow), and the tissue behind did not move so.
    hole = dilate(removed.to(work), margin)
    plate = inpaint(img, hole, method=fill)
    keep = frames(hole[:, 0] < 0.5).reshape(b * nf, 1, h * w).expand(-1, 2, -1)
    flat = f.reshape(b * nf, 2, h * w)
    pan = torch.where(keep, flat, torch.full_like(flat, float("nan"))).nanmedian(-1).values  # [B*(T-1), 2]
    pan = torch.nan_to_num(pan, nan=0.0)  # nothing left outside the removed pixels: assume a still camera
    behind = backward_warp(frames(plate), pan[..., None, None].expand(-1, -1, h, w))
    # Fully covered targets keep the splat; thinly covered ones (trailing edges) fade into the background.
    alpha = (2 * coverage).clamp(0, 1)
    moved_frames = alpha * warped + (1 - alpha) * behind
    video = torch.cat([img.unsqueeze(1), moved_frames.view(b, nf, c, h, w)], 1).clamp(0, 1)

    # Mask: moved regions carried along the flow and dilated, plus every moving pixel where it lands.
    # Stretching motion scatters what lands into sparse pixels; a closing (dilate, then erode) of the
    # same radius joins them into one solid area, since the sampler anchors areas, not dots.
    region_src = frames(removed.to(work)) if has_regions else torch.zeros_like(f[:, :1])
    nonzero = (torch.hypot(f[:, :1], f[:, 1:]) > motion_threshold).to(work)
    landed = (sum_splat(torch.cat([region_src, nonzero], 1), f) > 0.1).to(work)
    landed = 1 - dilate(1 - dilate(landed, mask_dilate), mask_dilate)
    mask_t = torch.maximum(dilate(landed[:, :1], mask_dilate), landed[:, 1:])
    start = nonzero.view(b, nf, 1, h, w).amax(1)
    if has_regions:
        start = torch.maximum(start, dilate(removed.to(work), mask_dilate))
    mask = torch.cat([start.unsqueeze(1), mask_t.view(b, nf, 1, h, w)], 1).clamp(0, 1)
    return video.to(image.dtype), mask.to(image.dtype)
