"""Finding the videos to compare, pairing them by name, and reading conditioning flows.

A video folder (``--real`` / ``--fake``) holds video files (``.mp4`` ...) and/or one sub-folder of frame
images per video; a folder that holds only frame images is itself one video. Videos are named by file
stem or folder name, and a real and a generated video with the same name form a pair (paired metrics:
PSNR, SSIM). Frames are read with :func:`surgsora.video_io.read_video` as RGB uint8.

Conditioning flows (``--flows``) are one file per generated video, named like it: ``NAME.npy``,
``NAME.npz`` (array ``flow`` or its only array), ``NAME.safetensors`` (tensor ``flow`` or its only tensor)
or ``NAME.pt`` / ``NAME.pth`` (a tensor or ``{"flow": tensor}``, read with ``weights_only``), shaped
``[T-1, 2, H, W]`` or ``[1, T-1, 2, H, W]``, in pixels, frame 0 -> t (the project's flow convention).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..video_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_video

__all__ = ["VideoEntry", "list_videos", "pair_videos", "load_frames", "resize_frames", "find_flow", "load_flow",
           "FLOW_EXTENSIONS", "NonFiniteFlowError", "frame_count"]

FLOW_EXTENSIONS = (".npy", ".npz", ".safetensors", ".pt", ".pth")


class NonFiniteFlowError(ValueError):
    """A conditioning flow with NaN or inf values (never scored: NaN would count as a perfect match)."""


@dataclass(frozen=True)
class VideoEntry:
    name: str
    path: Path


def _has_frames(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir() if p.is_file())


def list_videos(folder: str | os.PathLike, role: str = "video") -> list[VideoEntry]:
    """The videos in ``folder`` sorted by name (see the module docstring for the layout)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"The {role} folder {folder} does not exist or is not a folder.")
    entries: dict[str, VideoEntry] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS) or (p.is_dir() and _has_frames(p)):
            name = p.stem if p.is_file() else p.name
            if name in entries:
                raise ValueError(f"The {role} folder {folder} holds two videos named {name!r} "
                                 f"({entries[name].path.name} and {p.name}); rename one.")
            entries[name] = VideoEntry(name, p)
    if not entries and _has_frames(folder):
        return [VideoEntry(folder.name, folder)]
    if not entries:
        raise ValueError(f"The {role} folder {folder} holds no videos: put video files "
                         f"({', '.join(VIDEO_EXTENSIONS)}) or one folder of frame images per video in it.")
    return [entries[k] for k in sorted(entries)]


def pair_videos(real: list[VideoEntry], fake: list[VideoEntry]) -> tuple[list[tuple[VideoEntry, VideoEntry]],
                                                                          list[str], list[str]]:
    """(pairs with equal names, names only among the real videos, names only among the generated ones)."""
    r = {e.name: e for e in real}
    f = {e.name: e for e in fake}
    pairs = [(r[n], f[n]) for n in sorted(set(r) & set(f))]
    return pairs, sorted(set(r) - set(f)), sorted(set(f) - set(r))


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 frames [T, H, W, 3] resized to ``size = (h, w)`` (area filter when shrinking, bilinear otherwise)."""
    h, w = frames.shape[1:3]
    if (h, w) == tuple(size):
        return frames
    interp = cv2.INTER_AREA if size[0] < h and size[1] < w else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (size[1], size[0]), interpolation=interp) for f in frames])


def load_frames(entry: VideoEntry, max_frames: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 [T, H, W, 3] of a video, at most ``max_frames`` long, optionally resized to ``size``."""
    try:
        frames = read_video(entry.path, 0, max_frames)
    except (OSError, ValueError) as e:
        raise ValueError(f"Could not read the video {entry.path}: {e}") from None
    return resize_frames(frames, size) if size is not None else frames


def frame_count(entry: VideoEntry) -> int:
    """Frames of a video file (container header) or frame folder (image files), without decoding."""
    from ..video_io import video_info

    if entry.path.is_dir():
        return sum(1 for p in entry.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    try:
        n = video_info(entry.path)["frames"]
    except ValueError as e:
        raise ValueError(f"Could not read the video {entry.path}: {e}") from None
    return n if n > 0 else len(read_video(entry.path))


def find_flow(folder: str | os.PathLike, name: str) -> Path | None:
    """The flow file of video ``name`` in ``folder``, if there is one."""
    folder = Path(folder)
    for ext in FLOW_EXTENSIONS:
        p = folder / f"{name}{ext}"
        if p.is_file():
            return p
    return None


def _pick(mapping, path: Path) -> np.ndarray:
    keys = list(mapping.keys())
    if "flow" in keys:
        return np.asarray(mapping["flow"])
    if len(keys) == 1:
        return np.asarray(mapping[keys[0]])
    raise ValueError(f"{path} holds several arrays ({', '.join(keys[:5])}); name the flow 'flow'.")


def load_flow(path: str | os.PathLike) -> np.ndarray:
    """A conditioning flow file as float32 [T-1, 2, H, W] (see the module docstring for formats)."""
    path = Path(path)
    ext = path.suffix.lower()
    try:
        if ext == ".npy":
            flow = np.load(path, allow_pickle=False)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                flow = _pick(z, path)
        elif ext == ".safetensors":
            from safetensors.torch import load_file

            flow = _pick({k: v.float().numpy() for k, v in load_file(str(path)).items()}, path)
        elif ext in (".pt", ".pth"):
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001
                text = str(e)
                if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
                    # torch's own message advises weights_only=False, i.e. running the file's code: never repeat it.
                    raise ValueError("it holds pickled Python objects, which are not loaded for safety; save the "
                                     "flow as a plain tensor, .npy or .safetensors") from None
                raise
            if isinstance(obj, dict):
                obj = _pick(obj, path)
            flow = obj.float().numpy() if isinstance(obj, torch.Tensor) else np.asarray(obj)
        else:
            raise ValueError(f"unsupported flow file type {ext!r} (use {', '.join(FLOW_EXTENSIONS)})")
    except ValueError as e:
        raise ValueError(f"Could not read the flow file {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - numpy/torch/safetensors raise many kinds; one sentence
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in msg:
            msg = "it could not be loaded safely"
        raise ValueError(f"Could not read the flow file {path}: {msg}.") from None
    try:
        flow = np.asarray(flow, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"The flow file {path} does not hold a numeric array; expected [T-1, 2, H, W] floats.") \
            from None
    if flow.ndim == 5 and flow.shape[0] == 1:
        flow = flow[0]
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"The flow file {path} has shape {flow.shape}; expected [T-1, 2, H, W] "
                         "(or [1, T-1, 2, H, W]) in pixels, frame 0 -> t.")
    if flow.shape[0] < 1 or flow.shape[2] < 1 or flow.shape[3] < 1:
        raise ValueError(f"The flow file {path} is empty (shape {flow.shape}); expected at least one step 0 -> 1.")
    bad = ~np.isfinite(flow)
    if bad.any():
        raise NonFiniteFlowError(f"The flow file {path} has {int(bad.sum()):,} NaN or infinite values (of "
                                 f"{flow.size:,}); a conditioning flow must be finite everywhere: write it again.")
    return flow
