"""One clip: generate it, label it, write every file atomically, ``meta.json`` last (the done marker).

A clip folder without ``meta.json`` is unfinished (a killed run): it is removed whole before the clip is made again,
so a rerun never keeps a file of an interrupted attempt. The bytes of a clip depend only on its row, its variant,
the settings and the models (same device and thread count), never on the process that made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_output
from .dataset import clean_partials, clip_folder, write_text
from .jobs import Clip
from .labels import carry_regions, follow_score, instance_ids, order_metric, tracks_json, write_npz
from .variants import jitter_tracks

__all__ = ["ClipEnv", "make_clip", "write_labelled_clip", "encode_mp4", "PAUSE_ENV"]

# Test hook (as train's SURGSORA_CKPT_WRITE_DELAY): "SECONDS@CLIP_ID" sleeps while that clip's flow.npz is half
# written (its temporary file on disk, video and masks already there), so a test can kill the process mid-clip.
PAUSE_ENV = "SURGSORA_SYNTH_TEST_PAUSE"


@dataclass
class ClipEnv:
    """What every clip of a process shares: the models per mode and the run's settings."""

    out: Path
    models: dict[str, Any]  # mode -> surgsora.sampling.generate.Models
    mode_of: dict[str, str]  # row id -> effective mode (surgsora | mofa | ttm)
    sampling: dict[str, dict]  # mode -> SamplingSettings fields besides frames and seed
    model_info: dict[str, dict]  # mode -> component -> {"path", "sha256"}
    jitter: tuple[float, float]  # (max angle in degrees, max relative scale)
    save_frames: bool = False
    versions: dict = field(default_factory=dict)
    device_type: str = "cpu"
    dtype: str = "fp32"


def _pause(clip_id: str) -> None:
    seconds, _, at = os.environ.get(PAUSE_ENV, "").partition("@")
    if seconds and at == clip_id:
        time.sleep(float(seconds))


def _regions(clip: Clip, env: ClipEnv, image_t: torch.Tensor, mode: str):
    """Region masks [1, M, H, W] and where they came from; None lets generate() ask SAM about the track starts."""
    from ..cli_inputs import masks_arg

    row = clip.row
    if row.masks:
        return masks_arg([str(m) for m in row.masks], row.size, row.frame_size), "masks"
    if row.clicks:
        from ..sampling.generate import _get

        sam = _get(env.models[mode].sam)
        sx, sy = row.size[0] / row.frame_size[0], row.size[1] / row.frame_size[1]
        masks = [sam.predict_masks(image_t, points=torch.tensor([[x * sx, y * sy]], dtype=torch.float32))[0]
                 for x, y in row.clicks]
        return torch.cat(masks).float().unsqueeze(0).cpu(), "clicks (SAM)"
    return None, None


def encode_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """H.264 mp4 as every video of the project is written (the same frames give the same bytes on every run)."""
    from ..video_io import encode_video

    encode_video(path, frames, fps=fps, container="mp4")


def _to_uint8(video: torch.Tensor, chunk: int = 8) -> np.ndarray:
    """Frames [T, 3, H, W] in [0, 1] -> uint8 [T, H, W, 3], a few frames at a time: the float temporaries of the
    rounding stay a chunk's (a whole 81-frame 720p clip would need three float copies of the video)."""
    t, _, h, w = video.shape
    out = np.empty((t, h, w, 3), np.uint8)
    for a in range(0, t, chunk):
        out[a:a + chunk] = (np.clip(video[a:a + chunk].permute(0, 2, 3, 1).numpy(), 0.0, 1.0) * 255.0 + 0.5)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.no_grad()
def make_clip(clip: Clip, env: ClipEnv) -> dict:
    """Make ``clip`` in ``env.out/clips/<id>/`` and return its meta (as written to meta.json)."""
    from ..cli_inputs import load_frame, resize_frame
    from ..sampling.generate import generate
    from ..sampling.settings import SamplingSettings

    row = clip.row
    clean_partials(clip_folder(env.out, clip.id))  # what a killed attempt left
    mode = env.mode_of[row.id]
    frame = load_frame(row.image)
    image_t = torch.from_numpy(resize_frame(frame, row.size)).permute(2, 0, 1).float().div(255).unsqueeze(0)
    tracks, jitter = jitter_tracks(row.tracks, row.id, row.seed, clip.variant, *env.jitter)
    regions, region_source = _regions(clip, env, image_t, mode)
    settings = SamplingSettings(frames=row.frames, seed=clip.seed, **env.sampling[mode])
    models = env.models[mode]
    made = generate(models, image_t, settings, tracks=torch.from_numpy(tracks), regions=regions,
                    mode="ttm" if mode == "ttm" else "adapter", segment=True)
    return write_labelled_clip(clip, env, mode, made, tracks, jitter, regions, region_source)


@torch.no_grad()
def write_labelled_clip(clip: Clip, env: ClipEnv, mode: str, made, tracks: np.ndarray, jitter: list[dict],
                        regions: torch.Tensor | None, region_source: str | None) -> dict:
    """Everything after the sampler: labels, follow score, the files (each atomic) and meta.json last; returns
    the meta. ``made`` is what :func:`~surgsora.sampling.generate.generate` returned for ``tracks``."""
    row = clip.row
    folder = clip_folder(env.out, clip.id)
    w, h = row.size
    if regions is None and made.regions is not None:
        regions, region_source = made.regions, "SAM (track starts)"
    flow = made.flow.float().cpu()  # [1, T-1, 2, H, W]
    count = 0 if regions is None else int(regions.shape[1])
    if count > 255:
        raise ValueError(f"{count} regions do not fit 8-bit instance masks; give at most 255.")
    ids0 = instance_ids(regions, row.size)
    # On the sampler's device: splatting a 25-frame 1024x576 clip is seconds on a CPU, milliseconds on a GPU.
    dev = made.flow.device
    ids = carry_regions(ids0.to(dev), made.flow.float(), order_metric(regions, made.depth, row.size).to(dev),
                        count).cpu()
    video = _to_uint8(made.video)
    follow = follow_score(video, flow[0].numpy(), ids0.numpy())
    speed = flow[0].norm(dim=1).amax(0)  # [H, W] largest motion of each frame-0 pixel
    moved = [bool((speed[ids0 == k + 1] > 0.5).any()) for k in range(count)]

    import cv2

    files: list[str] = []

    def png(name: str, img: np.ndarray) -> None:
        with atomic_output(folder / name) as tmp:
            if not cv2.imwrite(str(tmp), img):
                raise OSError(f"could not write {folder / name}")
        files.append(name)

    with atomic_output(folder / "video.mp4") as tmp:
        encode_mp4(tmp, video, float(env.sampling[mode]["fps"]))
    files.append("video.mp4")
    if env.save_frames:
        for t, f in enumerate(video):
            png(f"frames/{t:03d}.png", np.ascontiguousarray(f[..., ::-1]))  # OpenCV writes BGR
    for t, m in enumerate(ids.numpy()):
        png(f"masks/{t:03d}.png", m)
    with atomic_output(folder / "flow.npz") as tmp:
        _pause(clip.id)
        with open(tmp, "wb") as f:
            write_npz(f, {"flow": flow[0].numpy().astype(np.float16)})
    files.append("flow.npz")
    write_text(folder / "tracks.json", tracks_json(tracks, row.size))
    files.append("tracks.json")

    s = env.sampling[mode]
    meta = {
        "format": "surgsora-synth/1", "id": clip.id, "order": clip.order, "variant": clip.variant,
        "row": {"line": row.line, "id": row.id},
        "source": {"image": row.image_text, "image_sha256": _sha256(row.image), "frame_size": list(row.frame_size),
                   "tracks": row.tracks_source,
                   "tracks_sha256": hashlib.sha256(row.tracks_text.encode("utf-8")).hexdigest(),
                   "masks": list(row.mask_texts), "clicks": [list(c) for c in row.clicks]},
        "mode": mode, "seed": clip.seed, "row_seed": row.seed,
        "settings": {"width": w, "height": h, "frames": row.frames, **{k: v for k, v in s.items()},
                     "dtype": env.dtype, "device_type": env.device_type},
        "jitter": {"max_angle_deg": env.jitter[0], "max_scale": env.jitter[1], "tracks": jitter},
        "regions": {"count": count, "source": region_source, "moved": moved},
        "follow": follow, "models": env.model_info[mode], "versions": env.versions,
        "files": {name: {"sha256": _sha256(folder / name), "bytes": (folder / name).stat().st_size}
                  for name in files},
    }
    write_text(folder / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta
