"""What the command-line tools (``python -m surgsora generate | preview | synth``) read and check, in one place:
the frame, the tracks argument, region masks and depth images given for the frame, sizes, devices, and the two
error classes ``main`` turns into one sentence (exit 2 for a user mistake, 1 for a run that failed)."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

__all__ = ["UsageError", "RunFailure", "parse_size", "load_frame", "load_tracks_arg", "auto_size", "resize_frame",
           "read_aux_image", "masks_arg", "check_device", "device_and_dtype", "os_error_sentence"]

# A first frame smaller than this has nothing to generate from (it would only be upscaled blur).
MIN_IMAGE_SIDE = 32
MAX_TRACKS_FILE = 64 << 20


class UsageError(SystemExit):
    """A user mistake: ``main`` prints the sentence and exits with code 2, as argparse does for bad usage."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"448x256"`` -> (448, 256); ``None``/``"auto"`` -> None."""
    if text is None or text == "auto":
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size must look like 448x256 (width x height); got {text!r}.") from None
    if w < 8 or h < 8:
        raise UsageError(f"--size must be at least 8x8; got {w}x{h}.")
    if w > 8192 or h > 8192:
        raise UsageError(f"--size {w}x{h} is larger than 8192 on a side; choose a working size such as 1024x576.")
    return w, h


def load_frame(path: str | os.PathLike, frame_index: int = 0):
    """RGB uint8 [H, W, 3] from an image file, or frame ``frame_index`` of a video file (or frame folder)."""
    from .video_io import VIDEO_EXTENSIONS, read_image, read_video, video_info

    path = Path(path)
    if not path.exists():
        raise UsageError(f"--image: {path} does not exist.")
    if frame_index < 0:
        raise UsageError(f"--frame-index must be 0 or more (0 is the first frame); got {frame_index}.")
    if path.suffix.lower() in VIDEO_EXTENSIONS or path.is_dir():
        count = None
        if path.is_file():
            try:
                count = video_info(path)["frames"] or None
            except ValueError as e:
                raise UsageError(f"--image: {e}") from None
        if count is not None and frame_index >= count:
            raise UsageError(f"--frame-index {frame_index} is beyond the end of {path}, which has {count} frames "
                             f"(0..{count - 1}).")
        try:
            frame = read_video(path, start=frame_index, count=1)[0]
        except (ValueError, OSError) as e:
            raise UsageError(f"--image: {e} (--frame-index {frame_index}).") from None
    else:
        if frame_index:
            raise UsageError(f"--frame-index only applies to videos; {path} is an image.")
        try:
            frame = read_image(path)
        except (ValueError, OSError) as e:
            raise UsageError(f"--image: {e}") from None
    h, w = frame.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise UsageError(f"--image {path} is only {w}x{h} pixels; give a frame of at least {MIN_IMAGE_SIDE}x"
                         f"{MIN_IMAGE_SIDE} (a tiny image upscaled has nothing to generate from).")
    return frame


def load_tracks_arg(text: str) -> str:
    """The ``--tracks`` argument: inline JSON (starting with ``[`` or ``{``), or the path of a JSON file."""
    stripped = text.lstrip("\ufeff").strip()
    if not stripped:
        raise UsageError("--tracks is empty; give a tracks JSON file or inline JSON such as [[x, y], [x, y]].")
    if stripped[0] in "[{":
        return text
    p = Path(stripped)
    # Anything else is a file name: a typo must say "not found", never "not valid JSON".
    if not p.exists():
        raise UsageError(f"--tracks: {p} does not exist (file not found); give the path of a tracks JSON file, or "
                         "inline JSON starting with [ or {.")
    if p.is_dir():
        raise UsageError(f"--tracks: {p} is a folder; give a tracks JSON file.")
    try:
        if p.stat().st_size > MAX_TRACKS_FILE:
            raise UsageError(f"--tracks: {p} is {p.stat().st_size / 2**20:.0f} MB, too large for a tracks file; "
                             "give the JSON the editor saved.")
        data = p.read_bytes()
    except OSError as e:
        raise UsageError(f"--tracks: {p} could not be read ({e.strerror or e}).") from None
    if b"\x00" in data:
        raise UsageError(f"--tracks: {p} is a binary file, not JSON text; give the JSON file the editor saved.")
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is accepted
    except UnicodeDecodeError as e:
        raise UsageError(f"--tracks: {p} is not UTF-8 text (undecodable byte at position {e.start}); save the JSON "
                         "as UTF-8.") from None


def auto_size(width: int, height: int, multiple: int, area: int) -> tuple[int, int]:
    """A working size near ``area`` pixels with the frame's aspect ratio, both sides multiples of ``multiple``."""
    scale = math.sqrt(area / (width * height))
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    return w, h


def resize_frame(frame, size: tuple[int, int]):
    import cv2

    w, h = size
    if frame.shape[1] == w and frame.shape[0] == h:
        return frame
    interp = cv2.INTER_AREA if w < frame.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(frame, (w, h), interpolation=interp)


def read_aux_image(path, flag: str, frame_size: tuple[int, int], resize: bool):
    """A mask or depth image given for the frame: readable, and of the frame's size unless ``resize``."""
    from .video_io import read_image

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag}: {p} does not exist" + (" (it is a folder)." if p.is_dir() else "."))
    try:
        img = read_image(p)
    except (ValueError, OSError) as e:
        raise UsageError(f"{flag}: {e}") from None
    h, w = img.shape[:2]
    if (w, h) != tuple(frame_size) and not resize:
        raise UsageError(f"{flag}: {p} is {w}x{h} but the frame is {frame_size[0]}x{frame_size[1]}; give one drawn "
                         "on this frame, or add --resize-masks to resize it to the frame.")
    return img


def masks_arg(paths, size, frame_size=None, resize: bool = False):
    """Region masks as [1, M, H, W] at the working ``size`` (inside: see :func:`~surgsora.video_io.threshold_mask`);
    refuses empty or mis-sized ones."""
    import numpy as np
    import torch

    from .video_io import threshold_mask

    if not paths:
        return None
    masks = []
    for p in paths:
        img = read_aux_image(p, "--masks", frame_size or size, resize or frame_size is None)
        m = threshold_mask(img.max(-1), f"--masks {p}")  # > 0 for binary and label masks; warns on a noisy one
        if not m.any():
            raise UsageError(f"--masks: {p} is empty (all zeros); draw the region (> 0 = inside) or leave it out.")
        r = resize_frame(m.astype(np.float32), size) > 0.5
        if not r.any():
            raise UsageError(f"--masks: the region of {p} vanishes at the working size {size[0]}x{size[1]}; draw a "
                             "larger region or use a larger --size.")
        masks.append(r)
    return torch.from_numpy(np.stack(masks).astype(np.float32)).unsqueeze(0)


class RunFailure(Exception):
    """The run could not produce a valid result (not a usage error): ``main`` prints it and exits with code 1."""


def check_device(text: str) -> None:
    """Refuse a device this machine does not have, with the way out (before anything is loaded)."""
    if text == "auto":
        return
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA GPU visible"
            raise UsageError(f"--device {text}: this machine has {build}; use --device cpu (or auto).")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: there are only {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1}).")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"--device {text}: Apple MPS is not available here; use --device cpu (or auto).")
    elif dev.type != "cpu":
        raise UsageError(f"--device {text}: only auto, cpu, cuda, cuda:N and mps are supported.")


def device_and_dtype(device: str, precision: str):
    """The torch device of ``--device`` (auto: CUDA when present) and the dtype of ``--precision`` on it."""
    import torch

    from .sampling.generate import precision_dtype

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    return dev, precision_dtype(precision, dev)


def os_error_sentence(e: OSError, flag: str = "--out") -> str:
    from .atomic import describe_write_error

    if (full := describe_write_error(e, flag)) is not None:  # a full disk or quota: the file and the fix
        return full
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where}; choose a folder you can write to."
    return f"{e.strerror or e}{where}."
