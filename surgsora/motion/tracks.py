"""User trajectories: parsing, validation, resampling and rasterisation into sparse flow.

The Trajectory Controller starts from a few paths a user draws on the first frame. This module turns
any of the formats users already have into one array ``[N, T, 2]`` (x, y pixel positions of N
tracks over T frames at the working resolution) and then into the sparse flow + mask that the
dense-flow decoders (:mod:`surgsora.motion.cmp`, :mod:`surgsora.motion.analytic_flow`) take.

Accepted inputs (a JSON string or the already-parsed object), see :func:`parse_track_data`:

* KJNodes SplineEditor / PointsEditor: ``[{"x": .., "y": ..}, ..]`` (one track) or a list of such
  lists; also a list of JSON strings, one per track, and single-quoted pseudo-JSON as KJNodes emits.
* DragNUWA / MOFA-Video: ``[[[x, y], ..], ..]`` (tracks of points); a plain ``[[x, y], ..]`` is one track.
* ComfyUI core ``TRACKS``: ``{"track_path": [T, N, 2], "track_visibility": [T, N]}`` (tensor, array or
  list). Every point is tied to its frame; invisible points are dropped and the track holds still
  before its first and after its last visible point.
* Our editor format (what the SurgSora trajectory editor stores)::

      {"width": W, "height": H,
       "tracks": [[[x, y], ..], ..],          # points may also be {"x": .., "y": ..}
       "start_end": [[s, e] or null, ..]}     # optional, one entry per track, output frame indices

Coordinates are continuous canvas pixels: pixel ``i`` covers ``[i, i + 1)``, so rescaling to another
resolution is a plain multiplication and rasterising takes ``floor``.

Timing (:func:`prepare_tracks`): each track is resampled to T frames with monotone PCHIP over a uniform
parameter (one drawn point per equal time step, as KJNodes and MOFA-Video sample their splines), so
the path never overshoots between points. One point = a static anchor (zero motion at that spot),
two points = a straight constant-speed path. An optional per-track ``(start, end)`` frame range lets
a track begin late or stop early: it holds its first point before ``start`` and its last after ``end``.

Validation, documented clamps: empty tracks inside a list are skipped (an editor's deleted track);
no track at all, NaN/inf, non-numeric points, T < 2, more tracks than pixels or a first point far
outside the canvas raise :class:`TrackError` with one sentence saying what to fix. A first point at
most 5 % of the canvas outside it is clamped onto the canvas edge; later points may leave the frame
(an instrument can move out of view), up to 10 canvas sizes away.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .splat import _check_size  # the one rule for (height, width) sizes

__all__ = [
    "CanvasScaledWarning",
    "tracks_to_flow",
    "TrackError",
    "TrackSet",
    "parse_track_data",
    "parse_tracks",
    "resample_track",
    "prepare_tracks",
    "rasterize",
    "tracks_to_editor_json",
    "check_canvas",
]

# A first point may sit this far outside the canvas (fraction of its size) and is clamped onto it.
START_MARGIN = 0.05
# Later points further than this many canvas sizes away are certainly a unit or canvas-size mistake.
FAR_LIMIT = 10.0


class TrackError(ValueError):
    """Trajectory input that cannot be used; the message says what was wrong and how to fix it."""


class CanvasScaledWarning(UserWarning):
    """Tracks declared on a canvas of the image's shape but another resolution were rescaled to the image."""


@dataclass
class TrackSet:
    """Parsed trajectories, before resampling.

    ``tracks``: list of float64 ``[P, 2]`` (x, y) canvas pixels. ``canvas``: ``(width, height)`` the data
    declares (editor format) or ``None``. ``start_end``: per-track ``(start, end)`` output frames or ``None``.
    ``times``: per-track point times in ``[0, 1]`` of the clip (ComfyUI ``TRACKS``) or ``None`` (uniform).
    """

    tracks: list[np.ndarray]
    canvas: tuple[int, int] | None = None
    start_end: list[tuple[int, int] | None] | None = None
    times: list[np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.tracks)

    def prepare(self, size: tuple[int, int] | None = None, num_frames: int = 14,
                canvas_size: tuple[int, int] | None = None, start_end=None) -> np.ndarray:
        """Resampled tracks ``[N, T, 2]`` at ``size = (W, H)``; see :func:`prepare_tracks`."""
        return prepare_tracks(self, canvas_size=canvas_size, size=size, num_frames=num_frames, start_end=start_end)


# ----------------------------------------------------------------------------------------------- parsing

def _loads(text: str) -> Any:
    text = text.lstrip("\ufeff").strip()  # a UTF-8 byte-order mark (Windows editors) is not part of the JSON
    if "\x00" in text:
        raise TrackError("The trajectory text contains NUL characters: it is a binary file, not JSON; give the "
                         "JSON file the editor saved.")
    if not text:
        raise TrackError("The trajectory text is empty: draw at least one track in the editor.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        # KJNodes editors and some workflows store Python-style single-quoted lists.
        try:
            return json.loads(text.replace("'", '"'))
        except json.JSONDecodeError:
            raise TrackError(f"The trajectory text is not valid JSON ({e.msg} at character {e.pos}).") from None


def _as_array(value: Any) -> np.ndarray | None:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        kind = value.dtype == torch.bool if isinstance(value, torch.Tensor) else value.dtype.kind == "b"
        if kind:  # True/False are not coordinates (they would silently become 1/0)
            raise TrackError(f"Trajectory coordinates must be numbers; got a boolean array of shape "
                             f"{tuple(value.shape)}.")
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TrackError("Trajectory coordinates must be real numbers; got a complex tensor.")
        return value.detach().to("cpu", torch.float64).numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf":
            try:
                return value.astype(np.float64)
            except (TypeError, ValueError):
                raise TrackError(f"Trajectory coordinates must be numbers; got an array of {value.dtype}.") from None
        return value
    return None


def _is_number(v: Any) -> bool:
    """A real number that is not a boolean (JSON true/false must never become 1/0)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _point(p: Any, where: str) -> tuple[float, float]:
    if isinstance(p, dict):
        if "x" not in p or "y" not in p:
            raise TrackError(f"{where} is a dict without both 'x' and 'y' keys: {_short(p)}.")
        x, y = p["x"], p["y"]
    elif isinstance(p, (list, tuple, np.ndarray)) and len(p) >= 2:
        x, y = p[0], p[1]
    else:
        raise TrackError(f"{where} is not a point: expected [x, y] or {{\"x\": .., \"y\": ..}}, got {_short(p)}.")
    if not (_is_number(x) and _is_number(y)):
        if isinstance(x, str) or isinstance(y, str):
            try:  # numbers written as strings ("12.5") are what some editors store
                return float(x), float(y)
            except (TypeError, ValueError):
                pass
        raise TrackError(f"{where} has non-numeric coordinates: {_short(p)}; coordinates must be numbers "
                         "(true/false and text are not).")
    return float(x), float(y)


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _is_point(p: Any) -> bool:
    if isinstance(p, dict):
        return "x" in p and "y" in p
    if isinstance(p, (list, tuple)) and len(p) in (2, 3):
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
    return False


def _track(points: Any, index: int) -> np.ndarray:
    if isinstance(points, str):
        points = _loads(points)
    arr = _as_array(points)
    if arr is not None:
        if arr.size == 0:
            return np.zeros((0, 2))
        if arr.ndim != 2 or arr.shape[1] < 2:
            raise TrackError(f"Track {index} must be an array of points [P, 2]; got shape {tuple(arr.shape)}.")
        return np.asarray(arr[:, :2], dtype=np.float64)
    if not isinstance(points, (list, tuple)):
        raise TrackError(f"Track {index} must be a list of points, got {_short(points)}.")
    return np.array([_point(p, f"Point {j} of track {index}") for j, p in enumerate(points)],
                    dtype=np.float64).reshape(-1, 2)


def _from_track_dict(data: dict) -> TrackSet:
    """ComfyUI core TRACKS: ``track_path`` [T, N, 2] (optionally [1, T, N, 2]), ``track_visibility`` [T, N]."""
    path = _as_array(data["track_path"])
    if path is None:
        try:
            path = np.asarray(data["track_path"], dtype=np.float64)
        except (TypeError, ValueError):
            raise TrackError("TRACKS 'track_path' must be a numeric [T, N, 2] tensor or nested list.") from None
    path = np.asarray(path, dtype=np.float64)
    if path.ndim == 4 and path.shape[0] == 1:
        path = path[0]
    if path.ndim == 2 and path.shape[-1] == 2:
        path = path[:, None]
    if path.ndim != 3 or path.shape[-1] != 2:
        raise TrackError(f"TRACKS 'track_path' must be [T, N, 2]; got shape {tuple(path.shape)}.")
    t_src, n = path.shape[:2]
    vis = data.get("track_visibility")
    if vis is None:
        vis = np.ones((t_src, n), dtype=bool)
    else:
        vis = vis.detach().cpu().numpy() if isinstance(vis, torch.Tensor) else np.asarray(vis)
        if vis.ndim == 3 and vis.shape[0] == 1:
            vis = vis[0]
        if vis.ndim == 1:
            vis = vis[:, None]
        try:
            vis = np.broadcast_to(vis.astype(bool), (t_src, n))
        except ValueError:
            raise TrackError(f"TRACKS 'track_visibility' must be [T, N] = [{t_src}, {n}] to match 'track_path'; "
                             f"got shape {tuple(vis.shape)}.") from None
    tracks, times = [], []
    frame_time = np.arange(t_src, dtype=np.float64) / max(t_src - 1, 1)
    for k in range(n):
        keep = vis[:, k]
        tracks.append(path[keep, k])
        times.append(frame_time[keep])
    canvas = _canvas(data) if "width" in data and "height" in data else None
    return TrackSet(tracks=tracks, canvas=canvas, times=times)


def _int(v: Any) -> int:
    """An integer from JSON: whole numbers only (no booleans, no 12.7 silently truncated to 12)."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError("a boolean is not an integer")
    if isinstance(v, (float, np.floating)):
        if not float(v).is_integer():
            raise ValueError("not a whole number")
        return int(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, str):
        return int(v.strip())
    raise TypeError("not an integer")


def _canvas(data: dict) -> tuple[int, int]:
    try:
        w, h = _int(data["width"]), _int(data["height"])
    except (TypeError, ValueError, KeyError):
        raise TrackError(f"The trajectory canvas size must be integers (whole pixels); got "
                         f"width={_short(data.get('width'))}, height={_short(data.get('height'))}.") from None
    if w < 1 or h < 1:
        raise TrackError(f"The trajectory canvas must be at least 1x1 pixels; got {w}x{h}.")
    return w, h


def _start_end_list(value: Any, n: int) -> list[tuple[int, int] | None] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise TrackError(f"'start_end' must hold one [start, end] (or null) per track: {n} entries; "
                         f"got {_short(value)}.")
    out: list[tuple[int, int] | None] = []
    for k, se in enumerate(value):
        if se is None:
            out.append(None)
            continue
        try:
            if isinstance(se, (str, dict)) or len(se) != 2:
                raise TypeError("not a pair")
            s, e = _int(se[0]), _int(se[1])
        except (TypeError, ValueError, IndexError, KeyError):
            raise TrackError(f"'start_end' entry {k} must be [start, end] frame numbers or null; got {_short(se)}.") \
                from None
        out.append((s, e))
    return out


def parse_track_data(data: Any) -> TrackSet:
    """Parse trajectories in any accepted format (see module docstring) into a :class:`TrackSet`."""
    if isinstance(data, TrackSet):
        return data
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise TrackError(f"The trajectory data is not UTF-8 text (undecodable byte at position {e.start}); "
                             "save the JSON as UTF-8.") from None
    if isinstance(data, str):
        data = _loads(data)
    if data is None:
        raise TrackError("No trajectories were given: draw at least one track.")

    if isinstance(data, dict):
        if "track_path" in data:
            ts = _from_track_dict(data)
        elif "tracks" in data:
            raw = data["tracks"]
            if isinstance(raw, str):
                raw = _loads(raw)
            if not isinstance(raw, (list, tuple)) and _as_array(raw) is None:
                raise TrackError(f"The editor 'tracks' entry must be a list of tracks; got {_short(raw)}.")
            if isinstance(raw, (list, tuple)) and raw and _is_point(raw[0]):
                raw = [raw]  # a single track stored without the outer list
            ts = TrackSet(tracks=[_track(t, k) for k, t in enumerate(raw)],
                          canvas=_canvas(data) if "width" in data or "height" in data else None)
            ts.start_end = _start_end_list(data.get("start_end"), len(ts.tracks))
        elif "x" in data and "y" in data:
            ts = TrackSet(tracks=[_track([data], 0)])
        else:
            raise TrackError("Unrecognised trajectory dict: expected ComfyUI TRACKS ('track_path') or the editor "
                             f"format ('width', 'height', 'tracks'); got keys {sorted(data)[:8]}.")
    else:
        arr = _as_array(data)
        if arr is not None:
            if arr.ndim == 2:
                ts = TrackSet(tracks=[_track(arr, 0)])
            elif arr.ndim == 3:
                ts = TrackSet(tracks=[_track(a, k) for k, a in enumerate(arr)])
            else:
                raise TrackError(f"A trajectory array must be [P, 2] (one track) or [N, P, 2]; got {tuple(arr.shape)}.")
        elif isinstance(data, (list, tuple)):
            if len(data) == 0:
                raise TrackError("The trajectory list is empty: draw at least one track.")
            if all(isinstance(t, str) for t in data):
                # KJNodes: one JSON string per track (each may itself hold one or several tracks).
                tracks: list[np.ndarray] = []
                for s in data:
                    tracks.extend(parse_track_data(s).tracks)
                ts = TrackSet(tracks=tracks)
            elif _is_point(data[0]):
                ts = TrackSet(tracks=[_track(data, 0)])
            else:
                ts = TrackSet(tracks=[_track(t, k) for k, t in enumerate(data)])
        else:
            raise TrackError(f"Unrecognised trajectory data of type {type(data).__name__}: expected JSON text, "
                             "a list of tracks or a ComfyUI TRACKS dict.")

    keep = [k for k, t in enumerate(ts.tracks) if len(t) > 0]
    if not keep:
        raise TrackError("No trajectories were given (every track is empty): draw at least one track.")
    if len(keep) < len(ts.tracks):
        ts.tracks = [ts.tracks[k] for k in keep]
        if ts.times is not None:
            ts.times = [ts.times[k] for k in keep]
        if ts.start_end is not None:
            ts.start_end = [ts.start_end[k] for k in keep]
    for k, t in enumerate(ts.tracks):
        bad = ~np.isfinite(t).all(axis=1)
        if bad.any():
            j = int(np.argmax(bad))
            raise TrackError(f"Track {k} point {j} has a non-finite coordinate ({t[j, 0]}, {t[j, 1]}); "
                             "remove it or redraw the track.")
    return ts


def parse_tracks(data: Any) -> list[np.ndarray]:
    """Every track of ``data`` (any accepted format) as float ``[P, 2]`` (x, y) canvas pixels."""
    return [t.astype(np.float64, copy=True) for t in parse_track_data(data).tracks]


def tracks_to_editor_json(tracks: Sequence[np.ndarray], width: int, height: int,
                          start_end: Sequence[tuple[int, int] | None] | None = None) -> str:
    """Serialise tracks into the editor format (the inverse of :func:`parse_track_data` for that format)."""
    obj: dict[str, Any] = {
        "width": int(width),
        "height": int(height),
        "tracks": [[[round(float(x), 3), round(float(y), 3)] for x, y in np.asarray(t)[:, :2]] for t in tracks],
    }
    if start_end is not None:
        obj["start_end"] = [None if se is None else [int(se[0]), int(se[1])] for se in start_end]
    return json.dumps(obj)


# ------------------------------------------------------------------------------------------- resampling

def resample_track(points: np.ndarray, num_frames: int, times: np.ndarray | None = None,
                   start: int = 0, end: int | None = None) -> np.ndarray:
    """Resample one track ``[P, 2]`` to ``[num_frames, 2]`` with monotone PCHIP.

    Points are spread uniformly over frames ``start..end`` (or placed at ``times`` in ``[0, 1]`` of that
    span); before ``start`` and after ``end`` the track holds its first / last point.
    """
    from scipy.interpolate import PchipInterpolator

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    end = num_frames - 1 if end is None else end
    out = np.empty((num_frames, 2), dtype=np.float64)
    if len(pts) == 1:
        out[:] = pts[0]  # a static anchor
        return out
    if not 0 <= start < end <= num_frames - 1:
        raise TrackError(f"A moving track needs 0 <= start < end <= {num_frames - 1}; got start={start}, end={end}.")

    if times is None:
        u = np.linspace(0.0, 1.0, len(pts))
    else:
        u = np.asarray(times, dtype=np.float64).reshape(-1)
        # PCHIP needs strictly increasing abscissae: keep the last of duplicate times.
        order = np.argsort(u, kind="stable")
        u, pts = u[order], pts[order]
        last = np.r_[np.diff(u) > 0, True]
        u, pts = u[last], pts[last]
        if len(u) == 1:
            out[:] = pts[0]
            return out
    frames = np.arange(num_frames, dtype=np.float64)
    q = np.clip((frames - start) / float(end - start), u[0], u[-1])
    if len(u) == 2:
        # Two points: straight constant-speed path (PCHIP would give the same line; this is exact).
        w = ((q - u[0]) / (u[1] - u[0]))[:, None]
        return (1 - w) * pts[0] + w * pts[1]
    out[:, 0] = PchipInterpolator(u, pts[:, 0])(q)
    out[:, 1] = PchipInterpolator(u, pts[:, 1])(q)
    return out


def _validate_canvas_points(ts: TrackSet, canvas: tuple[int, int]) -> list[np.ndarray]:
    w, h = canvas
    out = []
    for k, t in enumerate(ts.tracks):
        t = t.copy()
        x0, y0 = t[0]
        mx, my = START_MARGIN * w, START_MARGIN * h
        if not (-mx <= x0 <= w + mx and -my <= y0 <= h + my):
            raise TrackError(f"Track {k} starts at ({x0:.1f}, {y0:.1f}), outside the {w}x{h} canvas it was drawn on; "
                             "check the canvas size (width/height) or redraw the track on the image.")
        # Clamp the start just inside the canvas so it lands on a pixel; keep the drawn motion unchanged.
        t[0, 0] = min(max(x0, 0.0), np.nextafter(w, 0))
        t[0, 1] = min(max(y0, 0.0), np.nextafter(h, 0))
        far = (np.abs(t[:, 0] - w / 2) > FAR_LIMIT * w) | (np.abs(t[:, 1] - h / 2) > FAR_LIMIT * h)
        if far.any():
            j = int(np.argmax(far))
            raise TrackError(f"Track {k} point {j} ({t[j, 0]:.1f}, {t[j, 1]:.1f}) is more than {FAR_LIMIT:g} canvas "
                             f"sizes away from the {w}x{h} canvas; coordinates must be canvas pixels.")
        out.append(t)
    return out


def check_canvas(canvas: tuple[int, int], size: tuple[int, int], what: str = "the image",
                 tolerance: float = 0.01, *, warn: bool = True) -> None:
    """Raise :class:`TrackError` when tracks drawn on ``canvas = (w, h)`` cannot belong to ``size = (W, H)``.

    A canvas with the image's shape at another resolution (an editor preview, a downscaled copy) is legitimate:
    the tracks are rescaled, and a :class:`CanvasScaledWarning` says so once ("tracks drawn on a 1280x720
    canvas were scaled to the image (640x360)"), since wrong width/height in the JSON would otherwise misplace
    every track without a word. A shape that differs by more than ``tolerance`` (relative aspect ratio; one
    pixel of rounding is always allowed) means they were drawn on another picture or a crop, and rescaling
    would stretch them: refused, naming both sizes and the fix (a stretch is never a guess worth making).
    Front ends that resize frames to SVD's multiples of 64 (which changes the shape slightly, the frame and
    its tracks alike) pass a larger tolerance. ``warn=False``: the shape rule alone, for maps (masks, flow,
    depth) that a caller resamples to the image by design.
    """
    import math

    cw, ch = int(canvas[0]), int(canvas[1])
    W, H = int(size[0]), int(size[1])
    if cw < 1 or ch < 1 or W < 1 or H < 1:
        raise TrackError(f"Sizes must be at least 1x1; got canvas {cw}x{ch} and {what} {W}x{H}.")
    rounding = abs(cw * H / W - ch) <= 1.0 or abs(ch * W / H - cw) <= 1.0
    if not rounding and abs(math.log((cw / ch) / (W / H))) > math.log1p(tolerance):
        raise TrackError(f"The tracks were drawn on a {cw}x{ch} canvas but {what} is {W}x{H}, another shape; "
                         "draw the tracks on this image (or give the image they were drawn on).")
    if warn and (cw, ch) != (W, H):  # legitimate (an editor preview, a downscaled copy), but never silent
        warnings.warn(f"tracks drawn on a {cw}x{ch} canvas were scaled to {what} ({W}x{H}); if they were drawn "
                      f"on it at full size, declare width {W} and height {H} in the tracks JSON.",
                      CanvasScaledWarning, stacklevel=2)


def prepare_tracks(data: Any, canvas_size: tuple[int, int] | None = None, size: tuple[int, int] | None = None,
                   num_frames: int = 14, start_end: Sequence[tuple[int, int] | None] | None = None) -> np.ndarray:
    """Trajectories in any format -> float32 ``[N, T, 2]`` (x, y) at the working resolution.

    ``canvas_size = (w, h)``: the canvas the tracks were drawn on (the data's own width/height, in the
    editor format, takes precedence); ``None`` means the working size. ``size = (W, H)``: the working
    resolution (``None``: the canvas). ``num_frames``: T >= 2. ``start_end``: optional per-track
    ``(start, end)`` output frames (``end`` may be negative, counted from the last frame), overriding
    the data's own.
    """
    ts = parse_track_data(data)
    try:
        num_frames = _int(num_frames)
    except (TypeError, ValueError):
        raise TrackError(f"num_frames must be an integer >= 2; got {_short(num_frames)}.") from None
    if num_frames < 2:
        raise TrackError(f"num_frames must be at least 2 to describe motion; got {num_frames}.")
    canvas = ts.canvas or (tuple(int(v) for v in canvas_size) if canvas_size is not None else None)
    if size is not None:
        size = (int(size[0]), int(size[1]))
        if size[0] < 1 or size[1] < 1:
            raise TrackError(f"The working size must be at least 1x1; got {size[0]}x{size[1]}.")
    if canvas is None:
        if size is None:
            raise TrackError("The canvas size is unknown: pass canvas_size=(width, height) of the image the tracks "
                             "were drawn on, or size=(W, H).")
        canvas = size
    if canvas[0] < 1 or canvas[1] < 1:
        raise TrackError(f"The trajectory canvas must be at least 1x1 pixels; got {canvas[0]}x{canvas[1]}.")
    size = size or canvas
    W, H = size
    if len(ts) > W * H:
        raise TrackError(f"{len(ts)} tracks cannot fit on a {W}x{H} frame ({W * H} pixels); use fewer tracks.")

    se = _start_end_list(list(start_end), len(ts)) if start_end is not None else ts.start_end
    tracks = _validate_canvas_points(ts, canvas)
    sx, sy = W / canvas[0], H / canvas[1]
    out = np.empty((len(tracks), num_frames, 2), dtype=np.float64)
    for k, t in enumerate(tracks):
        s, e = 0, num_frames - 1
        if se is not None and se[k] is not None:
            s, e = se[k]
            if s < 0:  # only the end counts from the last frame; a negative start is a mistake, not frame 0
                raise TrackError(f"Track {k} starts at frame {s}; the start frame must be 0 or more.")
            if e < 0:
                e += num_frames
            if not (0 <= s <= e <= num_frames - 1) or (s == e and len(t) > 1):
                raise TrackError(f"Track {k} start/end frames ({se[k][0]}, {se[k][1]}) must satisfy "
                                 f"0 <= start < end <= {num_frames - 1}.")
        times = ts.times[k] if ts.times is not None else None
        out[k] = resample_track(t, num_frames, times=times, start=s, end=e)
    out[..., 0] *= sx
    out[..., 1] *= sy
    # The scaled start must stay on a pixel (floating point may push W*x/w onto W).
    out[:, 0, 0] = np.clip(out[:, 0, 0], 0, np.nextafter(W, 0))
    out[:, 0, 1] = np.clip(out[:, 0, 1], 0, np.nextafter(H, 0))
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------ rasterising

def rasterize(tracks: np.ndarray | torch.Tensor, size: tuple[int, int], mask_channels: int = 1,
              device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tracks ``[N, T, 2]`` (or ``[B, N, T, 2]``) -> ``(sparse_flow [B, T-1, 2, H, W], mask [B, T-1, C, H, W])``.

    ``size = (H, W)``. For every track the displacement from frame 0, ``track[t] - track[0]``, is written
    at its start pixel ``(floor(y0), floor(x0))`` (the published CMP input); the mask is 1 there for all
    T-1 frames (a static anchor says "zero motion here"). Tracks starting on the same pixel are averaged.
    ``mask_channels=2`` repeats the mask as the CMP network wants it.
    """
    t = torch.as_tensor(np.asarray(tracks) if not isinstance(tracks, torch.Tensor) else tracks)
    t = t.to(torch.float64)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] != 2:
        raise TrackError(f"rasterize expects tracks [N, T, 2] or [B, N, T, 2]; got {tuple(t.shape)}.")
    b, n, T, _ = t.shape
    try:
        H, W = _check_size("rasterize", size)
    except ValueError as e:
        raise TrackError(str(e)) from None
    if T < 2:
        raise TrackError(f"Tracks need at least 2 frames to describe motion; got T={T}.")
    if n > H * W:
        raise TrackError(f"{n} tracks cannot fit on a {W}x{H} frame; use fewer tracks.")
    if not torch.isfinite(t).all():
        raise TrackError("Tracks contain NaN or infinite coordinates; prepare them with prepare_tracks().")
    dev = torch.device(device) if device is not None else (tracks.device if isinstance(tracks, torch.Tensor)
                                                            else torch.device("cpu"))
    t = t.to(dev)
    start = t[:, :, 0]  # [B, N, 2]
    xi = start[..., 0].floor().long().clamp(0, W - 1)
    yi = start[..., 1].floor().long().clamp(0, H - 1)
    disp = (t[:, :, 1:] - start.unsqueeze(2)).permute(0, 2, 3, 1)  # [B, T-1, 2, N]
    index = (torch.arange(b, device=dev).view(b, 1) * (H * W) + yi * W + xi).reshape(-1)  # [B*N]

    flat = torch.zeros(T - 1, 2, b * H * W, dtype=torch.float64, device=dev)
    flat.index_add_(2, index, disp.permute(1, 2, 0, 3).reshape(T - 1, 2, b * n))
    count = torch.zeros(b * H * W, dtype=torch.float64, device=dev)
    count.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
    hit = count > 0
    flat = torch.where(hit, flat / count.clamp_min(1), flat)
    sparse = flat.view(T - 1, 2, b, H, W).permute(2, 0, 1, 3, 4).to(torch.float32).contiguous()
    mask = hit.view(b, 1, 1, H, W).to(torch.float32).expand(b, T - 1, mask_channels, H, W).contiguous()
    return sparse, mask


def tracks_to_flow(decoder, image, tracks, size: tuple[int, int], regions=None):
    """Tracks [N, T, 2] in pixels of the working ``size`` = (width, height) -> dense flow [1, T-1, 2, H, W],
    decoded by ``decoder`` (CMP or analytic) from the sparse flow :func:`rasterize` writes.

    The one way trajectories become flow: the CLI, the nodes' callers and stage-2 training all use it, so
    an adapter trains on the flow it is sampled with.
    """
    w, h = size
    sparse, mask = rasterize(tracks, (h, w))
    return decoder(image, sparse, mask, region_masks=regions)
