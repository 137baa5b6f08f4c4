"""Pictures of motion: Middlebury flow colours and a trajectory overlay.

:func:`flow_to_rgb` maps a flow field to the Middlebury colour wheel (Baker et al., IJCV 2011): hue =
direction, saturation = magnitude. The wheel has 55 colours in six ramps (red-yellow 15, yellow-green 6,
green-cyan 4, cyan-blue 11, blue-magenta 13, magenta-red 6); +x (right) is red, -x cyan-blue, +y (down)
yellow-green side, -y blue-violet side. Normalisation: the flow is divided by ``max_flow``; by default
that is the largest magnitude over the *whole input* (all frames of all videos), so colours are
comparable between frames. Zero motion is white, a magnitude of ``max_flow`` gives the full colour,
and anything beyond (only with a fixed ``max_flow``) is shown darkened (x 0.75).

:func:`draw_tracks` draws tracks on an image: the path as a line, a dot at the start, an arrow head at
the end; a static anchor (no motion) is drawn as a ring. One colour per track. Coordinates follow
:mod:`surgsora.motion.tracks` (pixel i spans [i, i + 1), so (i + 0.5, j + 0.5) is the centre of pixel (i, j)).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

__all__ = ["colour_wheel", "flow_to_rgb", "max_magnitude", "draw_tracks", "TRACK_COLOURS"]

_RAMPS = (15, 6, 4, 11, 13, 6)  # RY, YG, GC, CB, BM, MR

# Distinct, saturated colours that read on pink/red surgical tissue.
TRACK_COLOURS = ((0, 255, 255), (255, 255, 0), (0, 255, 0), (255, 128, 0), (64, 160, 255), (255, 0, 255),
                 (255, 255, 255), (160, 255, 160))


def colour_wheel() -> torch.Tensor:
    """The 55 Middlebury wheel colours [55, 3] in [0, 1]."""
    cols = []
    for ramp, n in enumerate(_RAMPS):
        i = torch.arange(n, dtype=torch.float64)
        up = torch.floor(255 * i / n)
        down = 255 - up
        full = torch.full_like(i, 255.0)
        zero = torch.zeros_like(i)
        r, g, b = {
            0: (full, up, zero),    # red -> yellow
            1: (down, full, zero),  # yellow -> green
            2: (zero, full, up),    # green -> cyan
            3: (zero, down, full),  # cyan -> blue
            4: (up, zero, full),    # blue -> magenta
            5: (full, zero, down),  # magenta -> red
        }[ramp]
        cols.append(torch.stack([r, g, b], 1))
    return (torch.cat(cols) / 255.0).float()


def _checked(flow) -> torch.Tensor:
    if not isinstance(flow, torch.Tensor):
        flow = torch.as_tensor(np.asarray(flow))
    if flow.ndim < 3 or flow.shape[-3] != 2:
        raise ValueError(f"flow must be [..., 2, H, W]; got {tuple(flow.shape)}")
    return flow


def _pieces(flow: torch.Tensor):
    """The flow's images ``[n, 2, H, W]`` a few at a time (~1M pixels): the colour maths holds ~80 bytes per pixel."""
    flat = flow.reshape(-1, *flow.shape[-3:])
    step = max(1, (1 << 20) // max(1, flow.shape[-1] * flow.shape[-2]))
    for a in range(0, flat.shape[0], step):
        yield a, flat[a:a + step]


def max_magnitude(flow: torch.Tensor) -> float:
    """The largest displacement ``sqrt(u^2 + v^2)`` of a flow ``[..., 2, H, W]`` (0 for an empty one): the colour
    scale :func:`flow_to_rgb` uses by default, computed a few frames at a time."""
    flow = _checked(flow)
    best = 0.0
    for _, piece in _pieces(flow):
        f = piece.detach().float()
        if f.numel():
            best = max(best, float(torch.sqrt(f[:, 0] * f[:, 0] + f[:, 1] * f[:, 1]).max()))
    return best


def flow_to_rgb(flow: torch.Tensor, max_flow: float | None = None) -> torch.Tensor:
    """Flow ``[..., 2, H, W]`` (pixels) -> RGB ``[..., 3, H, W]`` in [0, 1] (see module docstring)."""
    flow = _checked(flow)
    if not bool(torch.isfinite(flow.detach().float()).all()):
        # NaN would come out as arbitrary colours (and inf as all-white): refuse instead.
        raise ValueError("flow_to_rgb: the flow contains NaN or infinite values (or values beyond float32); every "
                         "displacement must be finite.")
    if max_flow is not None:
        if isinstance(max_flow, bool) or not math.isfinite(float(max_flow)) or float(max_flow) < 0:
            raise ValueError(f"max_flow must be a finite number >= 0 (or None for the largest magnitude); got "
                             f"{max_flow!r}")
    if max_flow is None:
        max_flow = max_magnitude(flow)
    scale = max(float(max_flow), 1e-8)
    wheel = colour_wheel().to(flow.device)
    out = torch.empty(*flow.shape[:-3], 3, *flow.shape[-2:], device=flow.device)
    flat = out.view(-1, 3, *flow.shape[-2:])
    for a, piece in _pieces(flow):  # per pixel: a chunk of frames at a time gives the same colours
        f = piece.detach().float()
        u, v = f[:, 0], f[:, 1]
        rad = torch.sqrt(u * u + v * v) / scale
        n = wheel.shape[0]
        angle = torch.atan2(-v, -u) / torch.pi  # in [-1, 1]
        fk = (angle + 1) / 2 * (n - 1)
        k0 = fk.floor().long().clamp(0, n - 1)
        k1 = torch.where(k0 + 1 == n, torch.zeros_like(k0), k0 + 1)
        w = (fk - k0.float()).unsqueeze(-1)
        col = (1 - w) * wheel[k0] + w * wheel[k1]  # [n, H, W, 3]
        r = rad.unsqueeze(-1)
        col = torch.where(r <= 1, 1 - r * (1 - col), col * 0.75)
        flat[a:a + len(f)] = col.movedim(-1, -3).clamp(0, 1)
    return out


def _to_uint8_hwc(image) -> tuple[np.ndarray, str]:
    """The image as uint8 [H, W, 3] and its layout; one sentence for anything that is not one RGB picture in a
    known layout and range (it would otherwise come back as a plausible but wrong picture: all white, or
    transposed)."""
    is_torch = isinstance(image, torch.Tensor)
    arr = image.detach().cpu().numpy() if is_torch else np.asarray(image)
    shape = tuple(arr.shape)
    chw = is_torch and arr.ndim == 3 and shape[0] == 3
    hwc = arr.ndim == 3 and shape[-1] == 3
    if not (chw or hwc) or 0 in shape:
        hint = (" (a batch: draw on each image, or pass a torch [B, 3, H, W])" if arr.ndim == 4 else
                " (numpy images are [H, W, 3]: use image.transpose(1, 2, 0))" if arr.ndim == 3 and shape[0] == 3 else
                " (RGB: 3 channels)" if arr.ndim == 3 else "")
        raise ValueError(f"draw_tracks expects one RGB image, torch [3, H, W] or [H, W, 3] or numpy [H, W, 3]; got "
                         f"shape {shape}{hint}.")
    if chw and hwc:  # [3, H, 3]: a 3-pixel-wide CHW image or a 3-pixel-high HWC one
        raise ValueError(f"draw_tracks cannot tell the layout of a {shape} image (CHW or HWC); draw on a larger image.")
    if arr.dtype == np.uint8 and not is_torch:
        return arr.copy(), "np8"
    if not np.issubdtype(arr.dtype, np.floating):
        also = "" if is_torch else " or a numpy uint8 one"
        raise ValueError(f"draw_tracks expects a float image in [0, 1]{also}; got {arr.dtype}: convert it with "
                         ".float() / 255.")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("draw_tracks: the image contains NaN or infinite values; every entry must be finite.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3 or hi > 1 + 1e-3:  # clipping would show a white (0..255) or half-black ([-1, 1]) picture
        fix = "divide by 255" if lo >= -1e-3 else "map [-1, 1] to [0, 1] with (x + 1) / 2"
        raise ValueError(f"draw_tracks expects a float image in [0, 1]; got values from {lo:g} to {hi:g}: {fix}.")
    if chw:
        arr = arr.transpose(1, 2, 0)
    return (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8), ("chw" if chw else "hwc") if is_torch else "npf"


def _from_uint8(canvas: np.ndarray, kind: str, like):
    if kind == "np8":
        return canvas
    if kind == "npf":
        return canvas.astype(np.float32) / 255.0
    out = torch.from_numpy(canvas.astype(np.float32) / 255.0)
    out = out.permute(2, 0, 1) if kind == "chw" else out
    return out.to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float32)


def draw_tracks(image, tracks, thickness: int | None = None, colours=TRACK_COLOURS, opacity: float = 1.0):
    """Overlay tracks on an image; returns a new image of the same kind.

    ``image``: torch ``[3, H, W]`` / ``[H, W, 3]`` / ``[B, 3, H, W]`` in [0, 1], or numpy ``[H, W, 3]``
    (uint8 or float). ``tracks``: ``[N, T, 2]`` (x, y) in pixels of the image, or a list of ``[P, 2]``
    (``[B, N, T, 2]`` for a batch). Start = dot, path = line, end = arrow head, static anchor = ring.
    Another layout (numpy CHW, 2 or 4 channels, a numpy batch, [B, H, W, 3]), a layout that cannot be told
    ([3, H, 3]) or a float image outside [0, 1] raises ``ValueError``: it would be drawn as a wrong picture.
    """
    if isinstance(image, torch.Tensor) and image.ndim == 4:
        if image.shape[1] != 3:  # the loop below would take a ComfyUI IMAGE [B, H, W, 3] row by row
            raise ValueError(f"draw_tracks expects a batch as torch [B, 3, H, W]; got shape {tuple(image.shape)} "
                             "(a ComfyUI IMAGE [B, H, W, 3]: use image.permute(0, 3, 1, 2)).")
        per_image = getattr(tracks, "ndim", None) == 4  # [B, N, T, 2]: one track set per image
        tr = tracks if per_image else [tracks] * image.shape[0]
        return torch.stack([draw_tracks(im, t, thickness, colours, opacity) for im, t in zip(image, tr)])
    canvas, kind = _to_uint8_hwc(image)
    h, w = canvas.shape[:2]
    th = thickness or max(1, round(min(h, w) / 128))
    overlay = canvas.copy()
    if isinstance(tracks, torch.Tensor):
        tracks = tracks.detach().cpu().numpy()
    for k, track in enumerate(tracks):
        pts = np.asarray(track, dtype=np.float64).reshape(-1, 2)
        if len(pts) == 0:
            continue
        if not np.isfinite(pts).all():
            raise ValueError(f"draw_tracks: track {k} has NaN or infinite coordinates; prepare the tracks with "
                             "surgsora.motion.tracks.prepare_tracks first.")
        colour = tuple(int(c) for c in colours[k % len(colours)])
        # Track coordinates put pixel i on [i, i+1); cv2 puts its centre at i: shift by half a pixel.
        # cv2 draws with 4 fractional bits so paths stay smooth at low resolution.
        shift = 4
        ip = np.round((pts - 0.5) * (1 << shift)).astype(np.int32)
        moving = np.abs(pts - pts[0]).max() >= 0.5
        dot = max(2, 2 * th)
        if moving:
            cv2.polylines(overlay, [ip.reshape(-1, 1, 2)], False, colour, th, cv2.LINE_AA, shift)
            # Arrow head along the last stretch of the path that has a visible length.
            end = pts[-1]
            j = len(pts) - 2
            while j > 0 and np.hypot(*(end - pts[j])) < 3 * dot:
                j -= 1
            seg = end - pts[j]
            length = float(np.hypot(*seg))
            if length > 1e-6:
                tip = min(0.9, max(3.0 * dot / length, 0.2))
                cv2.arrowedLine(overlay, tuple(ip[j]), tuple(ip[-1]), colour, th, cv2.LINE_AA, shift, tip)
            cv2.circle(overlay, tuple(ip[0]), dot << shift, colour, -1, cv2.LINE_AA, shift)
            cv2.circle(overlay, tuple(ip[0]), dot << shift, (0, 0, 0), 1, cv2.LINE_AA, shift)
        else:
            cv2.circle(overlay, tuple(ip[0]), (dot + th) << shift, colour, th, cv2.LINE_AA, shift)
            cv2.circle(overlay, tuple(ip[0]), max(1, th) << shift, colour, -1, cv2.LINE_AA, shift)
    if opacity < 1.0:
        overlay = cv2.addWeighted(overlay, float(opacity), canvas, 1 - float(opacity), 0)
    return _from_uint8(overlay, kind, image if isinstance(image, torch.Tensor) else None)
