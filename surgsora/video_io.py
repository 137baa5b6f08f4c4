"""Reading and writing videos and frame folders as RGB uint8 arrays ``[T, H, W, 3]``.

OpenCV decodes to BGR; everything returned here is RGB, so nothing downstream (depth, SAM, CLIP)
ever sees BGR by mistake.

Videos are written as H.264 (``yuv420p``) with PyAV, in an MP4 (``+faststart``), MOV or MKV container:
the format browsers and the ComfyUI preview play (OpenCV's ``mp4v`` does not). Outputs are checked before
any compute (:func:`check_output_path`) and written safely (:func:`atomic_output`): to a temporary file in
the same folder, flushed to disk, then renamed, so a failure (a full disk, an interrupt) never leaves a
truncated file under the final name, nor the temporary one.
"""

from __future__ import annotations

import os
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

# OpenCV's FFmpeg would print the decoder's complaints about damaged data on stderr; damage is found and named
# in one sentence by check_video_decodes instead (read once, when OpenCV first opens a video).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from .atomic import atomic_output  # noqa: E402
from .sampling.settings import check_settings  # noqa: E402

__all__ = ["VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS", "VIDEO_OUT_EXTENSIONS", "OutputPathError", "read_video",
           "read_frames", "read_image", "check_video_decodes", "threshold_mask",
           "MaskThresholdWarning", "write_video", "encode_video", "video_info", "check_output_path",
           "check_fps", "atomic_output"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Containers write_video writes (all H.264 / yuv420p); the value is the FFmpeg muxer.
VIDEO_OUT_EXTENSIONS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """One image file as RGB uint8 [H, W, 3] (grey and RGBA are converted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path} is not a readable image (supported: {', '.join(IMAGE_EXTENSIONS)}).")
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


class MaskThresholdWarning(UserWarning):
    """A mask that is not binary was thresholded; the message gives the threshold and how much was in between."""


LABEL_LEVELS = 16  # a mask with at most this many values is binary or a label map (EndoVis parts: 0/10/20/30)
EDGE_BAND = 2  # pixels either side of a region's edge where anti-aliasing puts in-between values
NOISE_FRACTION = 0.005  # in-between pixels away from the edge above this fraction of the mask: say so


def threshold_mask(mask: np.ndarray, name: str = "the mask", threshold: float | None = None) -> np.ndarray:
    """A mask ``[H, W]`` (any numbers) -> bool ``[H, W]`` (True = inside), warning once when it was not binary.

    The rule (``threshold`` None): a mask with at most :data:`LABEL_LEVELS` distinct values is binary or a
    label map, and every non-zero pixel is inside. A mask with more values is soft (anti-aliased edges, a
    probability map, noise) and is thresholded at half its maximum. ``threshold`` given (a node's MASK in
    [0, 1]: 0.5, what the decoders use) replaces that rule: inside = above it.

    Silent when the in-between values (neither 0 nor the maximum) lie only within :data:`EDGE_BAND` pixels of
    the region's edge, as anti-aliasing puts them. Otherwise, when they cover more than
    :data:`NOISE_FRACTION` of the mask, a :class:`MaskThresholdWarning` names the threshold applied and the
    fraction, since the region may not be what was drawn.
    """
    m = np.asarray(mask)
    if m.ndim != 2 or not m.size:
        raise ValueError(f"{name} must be one mask [H, W]; got shape {m.shape}.")
    m = m.astype(np.float32, copy=False)
    if not np.isfinite(m).all():
        raise ValueError(f"{name} contains NaN or infinite values; masks must be finite (0 = outside).")
    top = float(m.max())
    if threshold is None:
        if len(np.unique(m)) <= LABEL_LEVELS:
            return m > 0
        threshold = top / 2
    inside = m > threshold
    between = (m > 0) & (m < top)
    if between.mean() > NOISE_FRACTION:
        kernel = np.ones((2 * EDGE_BAND + 1,) * 2, np.uint8)
        core = inside.astype(np.uint8)
        band = cv2.dilate(core, kernel).astype(bool) & ~cv2.erode(core, kernel).astype(bool)
        away = float((between & ~band).mean())
        if away > NOISE_FRACTION:
            warnings.warn(f"{name} is not binary: {away:.1%} of its pixels hold in-between values away from the "
                          f"region's edge (noise or a soft mask), and it was thresholded at {threshold:g} (above = "
                          f"inside, {float(inside.mean()):.1%} of the pixels); save a clean 0/255 mask if that is not "
                          "the region meant.", MaskThresholdWarning, stacklevel=2)
    return inside


def video_info(path: str | os.PathLike) -> dict:
    """Frame count, fps and size of a video file without decoding it."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError(f"{path} could not be opened as a video.")
        return {
            "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            "fps": float(cap.get(cv2.CAP_PROP_FPS)) or 0.0,
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        }
    finally:
        cap.release()


def read_video(path: str | os.PathLike, start: int = 0, count: int | None = None) -> np.ndarray:
    """Frames ``start .. start+count-1`` of a video file (or frame folder) as RGB uint8 [T, H, W, 3].

    A file damaged before the last frame asked for is refused (:func:`check_video_decodes`), never read as
    garbage frames."""
    path = Path(path)
    if path.is_dir():
        return read_frames(path, start, count)
    if not path.is_file():
        raise FileNotFoundError(f"Video not found: {path}")
    if start < 0 or (count is not None and count < 0):
        raise ValueError(f"read_video: start and count must be 0 or more; got start {start} and count {count}.")
    check_video_decodes(path, None if count is None else start + count)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path} could not be opened as a video (supported: {', '.join(VIDEO_EXTENSIONS)}).")
    frames = []
    try:
        index = 0
        while count is None or len(frames) < count:
            ok, frame = cap.read()
            if not ok:
                break
            if index >= start:
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            index += 1
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"{path} has no decodable frames from index {start}.")
    return np.stack(frames)


def check_video_decodes(path: str | os.PathLike, frames: int | None = None) -> None:
    """One sentence (``ValueError``) naming ``path`` and its first damaged frame unless the first ``frames``
    frames (None: all) decode cleanly.

    OpenCV conceals damaged data: it logs the decoder's complaints on stderr and returns garbage frames (or
    fewer frames) as if nothing happened. This pass decodes with FFmpeg's error detection set to fail on the
    first error (``err_detect=explode``; decoding only, no colour conversion, FFmpeg's log kept quiet), so a
    corrupt middle is refused before any frame of it is used. A file that ends before the frames its header
    declares is refused too. Limit: video streams carry no checksums, so damage that still decodes as valid
    syntax (rare; some runs of zeros do) cannot be told from content and is not caught here.
    """
    import av

    path = Path(path)
    av.logging.set_level(None)  # the sentence below replaces FFmpeg's own lines on stderr
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise ValueError(f"{path} could not be opened as a video ({getattr(e, 'strerror', None) or e}); "
                         f"re-export or re-download it (supported: {', '.join(VIDEO_EXTENSIONS)}).") from None
    decoded, declared = 0, 0
    with container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream; give a video file ({', '.join(VIDEO_EXTENSIONS)}).")
        stream = container.streams.video[0]
        declared = stream.frames or 0
        stream.codec_context.options = {"err_detect": "explode"}
        try:
            for frame in container.decode(stream):
                if getattr(frame, "is_corrupt", False):
                    break
                decoded += 1
                if frames is not None and decoded >= frames:
                    return
        except av.error.FFmpegError:
            pass
        else:
            if not declared or decoded >= declared:
                return  # a clean end (a video shorter than asked is the caller's business)
    raise ValueError(f"{path} is damaged at frame {decoded} (the decoder found invalid data there, so frames from "
                     f"{decoded} on would be garbage); re-export or re-download the video"
                     + (f", or use only its first {decoded} frames." if decoded else "."))


def read_frames(folder: str | os.PathLike, start: int = 0, count: int | None = None) -> np.ndarray:
    """A folder of image files, sorted by name, as RGB uint8 [T, H, W, 3]."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    files = files[start:] if count is None else files[start:start + count]
    if not files:
        raise ValueError(f"{folder} holds no image frames (supported: {', '.join(IMAGE_EXTENSIONS)}).")
    frames = [read_image(p) for p in files]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"Frames in {folder} differ in size: {sorted(shapes)}.")
    return np.stack(frames)


class OutputPathError(ValueError):
    """An output path that cannot be written (wrong extension, a folder, a read-only place); one sentence."""


def check_fps(fps, what: str = "fps") -> float:
    """``fps`` as a float, or ValueError: the sampling settings' fps rule, a finite number in (0, 1000] (inf used to
    hang the writer)."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of frames per second such as 7; got {fps!r}.") from None
    check_settings({"fps": what}, fps=value)
    return value


def check_output_path(path: str | os.PathLike, what: str = "--out",
                      extensions: Iterable[str] = tuple(VIDEO_OUT_EXTENSIONS)) -> Path:
    """Check, before any compute, that ``path`` can be written as a file with one of ``extensions``.

    Raises :class:`OutputPathError` for a missing or unsupported extension, an existing folder, a path
    through a file, or a folder that is not writable. A missing parent folder is fine (it is created at
    write time).
    """
    text = os.fspath(path)
    exts = tuple(e.lower() for e in extensions)
    if not text.strip():
        raise OutputPathError(f"{what} is empty; give a file name such as out{exts[0]}.")
    path = Path(text)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is an existing folder; give a file name inside it, such as "
                              f"{path / ('out' + exts[0])}.")
    suffix = path.suffix.lower()
    if suffix not in exts:
        got = f"has the extension {path.suffix!r}" if suffix else "has no extension"
        video = exts[0] in VIDEO_OUT_EXTENSIONS
        hint = " (an H.264 video that plays in browsers and in ComfyUI)" if video else ""
        raise OutputPathError(f"{what} {path} {got}; name a {' or '.join(exts)} file{hint}, e.g. "
                              f"{path.with_suffix(exts[0]).name}.")
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputPathError(f"{what} {path}: {parent} is a file, not a folder; choose another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path}: the folder {parent} is not writable; choose a folder you can "
                              "write to.")
    return path


def _frames_iter(frames) -> Iterator[np.ndarray]:
    """Single frames [H, W, 3] from an array [T, H, W, 3] or an iterable of frames or chunks [t, H, W, 3]."""
    if hasattr(frames, "ndim") and frames.ndim == 4:
        frames = [frames]
    for item in frames:
        if hasattr(item, "detach"):
            item = item.detach().cpu().numpy()
        item = np.asarray(item)
        if item.ndim == 3:
            yield item
        elif item.ndim == 4:
            yield from item
        else:
            raise ValueError(f"write_video expects RGB frames [T, H, W, 3]; got a chunk of shape {item.shape}.")


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"write_video expects RGB frames [T, H, W, 3]; got a frame of shape {frame.shape}.")
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype == np.bool_:
        return frame.astype(np.uint8) * 255
    f = frame.astype(np.float32)
    if not np.isfinite(f).all():
        raise ValueError("write_video: the frames contain NaN or infinite values; every pixel must be finite "
                         "(floats in [0, 1]).")
    return (np.clip(f, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_video(path: str | os.PathLike, frames, fps: float = 8.0, crf: int = 17,
                 container: str | None = None) -> Path:
    """Encode RGB frames as H.264 (yuv420p) straight into ``path`` (no temporary file: see :func:`write_video`).

    ``container``: the FFmpeg muxer (default: from the extension, see ``VIDEO_OUT_EXTENSIONS``), so a
    temporary name such as ``.out.partial.mp4`` can be written for ``out.mp4``.
    """
    path = Path(path)
    fmt = container or VIDEO_OUT_EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise OutputPathError(f"{path}: videos are written as H.264 in {', '.join(VIDEO_OUT_EXTENSIONS)} files; got "
                              f"{path.suffix or 'no extension'}.")
    fps = check_fps(fps)
    try:
        import av
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("Writing videos needs PyAV: pip install av") from None
    rate = Fraction(fps).limit_denominator(1001)
    it = _frames_iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError(f"write_video: no frames to write to {path}.")
    first = _to_uint8(first)
    h, w = first.shape[:2]
    if h < 2 or w < 2:
        raise ValueError(f"write_video: frames of {w}x{h} pixels are too small for a video (at least 2x2).")
    ph, pw = h + h % 2, w + w % 2  # yuv420p subsamples chroma 2x2: sizes must be even
    options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}  # playable while it downloads
    with av.open(str(path), mode="w", format=fmt, options=options) as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        # cpu-independent: without it libx264 picks its kernels per run and the same frames can give other bytes
        # (seen under load), so reruns and shards of a dataset would differ.
        stream.options = {"crf": str(int(crf)), "preset": "fast", "x264-params": "cpu-independent=1"}
        frame = first
        while frame is not None:
            frame = _to_uint8(frame)
            if frame.shape[:2] != (h, w):
                raise ValueError(f"write_video: every frame must be {w}x{h}; got one of "
                                 f"{frame.shape[1]}x{frame.shape[0]}.")
            if (ph, pw) != (h, w):
                frame = np.pad(frame, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
            frame = next(it, None)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_video(path: str | os.PathLike, frames, fps: float = 8.0, crf: int = 17) -> Path:
    """Write RGB frames to an H.264 (yuv420p) video safely; returns the path.

    ``frames``: uint8 or float in [0, 1], an array ``[T, H, W, 3]`` or an iterable of frames ``[H, W, 3]``
    or chunks ``[t, H, W, 3]`` (streamed: memory stays at one chunk). Odd sizes are padded to even ones
    (yuv420p needs them) by repeating the last row / column. ``fps``: finite, in (0, 1000]. The container
    follows the extension (.mp4/.m4v/.mov/.mkv). Written through :func:`atomic_output`: a failure leaves
    neither a truncated video nor a temporary file.
    """
    path = Path(path)
    fmt = VIDEO_OUT_EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise OutputPathError(f"{path}: videos are written as H.264 in {', '.join(VIDEO_OUT_EXTENSIONS)} files; got "
                              f"{path.suffix or 'no extension'}.")
    check_fps(fps)
    with atomic_output(path) as tmp:
        encode_video(tmp, frames, fps=fps, crf=crf, container=fmt)
    return path
