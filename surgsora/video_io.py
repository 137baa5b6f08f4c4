"""Reading and writing videos and frame folders as RGB uint8 arrays ``[T, H, W, 3]``.

OpenCV decodes to BGR; everything returned here is RGB, so nothing downstream (depth, SAM, CLIP)
ever sees BGR by mistake.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

__all__ = ["VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS", "read_video", "read_frames", "read_image", "write_video",
           "video_info"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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
    """Frames ``start .. start+count-1`` of a video file (or frame folder) as RGB uint8 [T, H, W, 3]."""
    path = Path(path)
    if path.is_dir():
        return read_frames(path, start, count)
    if not path.is_file():
        raise FileNotFoundError(f"Video not found: {path}")
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


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0) -> Path:
    """Write RGB uint8 frames [T, H, W, 3] to an mp4 (or any OpenCV container by extension).

    Written to a temporary name and renamed, so a crash never leaves a half-written file behind.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video expects RGB frames [T,H,W,3]; got {frames.shape}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    h, w = frames.shape[1:3]
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix.lower() in (".mp4", ".m4v", ".mov") else "MJPG"))
    writer = cv2.VideoWriter(str(tmp), fourcc, float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"Could not open a video writer for {path}.")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    os.replace(tmp, path)
    return path
