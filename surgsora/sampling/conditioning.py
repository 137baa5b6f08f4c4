"""SVD's image conditioning, written once for the pipeline and for ComfyUI's own SVD (``SurgSora SVD Conditioning``).

* :func:`time_ids` -- ``added_time_ids = [fps - 1, motion_bucket_id, noise_aug_strength]``, or the adapter's fixed
  ids (MOFA-Video-Traj's released pipeline always feeds [6, 128, 0.02]); fps defaults to the adapter's training fps.
* :func:`clip_pixels` -- the CLIP image encoder's input: the whole frame resized (antialiased, no crop) to the
  encoder's resolution, then CLIP's mean/std, unless the adapter says its weights saw it without (MOFA).
* :func:`noise_augmented` -- the frame in [-1, 1] plus ``strength`` times Gaussian noise, before the VAE: SVD's
  frame-0 condition (training builds it with the same function).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

try:  # diffusers' private helper: the exact CLIP resize of its SVD pipeline (bit parity with it)
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
except ImportError:  # pragma: no cover - a diffusers release without it: same antialiased bicubic resize
    def _resize_with_antialiasing(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=True, antialias=True)

__all__ = ["DEFAULT_FPS", "default_fps", "time_ids", "clip_normalize", "clip_pixels", "noise_augmented"]

DEFAULT_FPS = 7  # SVD's usual frame rate, and what SurgSora adapters are trained at unless told otherwise


def _config(adapter_config: Mapping | None, key: str, default):
    return default if adapter_config is None else adapter_config.get(key, default)


def default_fps(adapter_config: Mapping | None) -> float:
    """The fps a video is conditioned on (and written at) when none is asked for: the adapter's training fps, else 7."""
    return _config(adapter_config, "fps", DEFAULT_FPS)


def time_ids(adapter_config: Mapping | None, fps: float | None, motion_bucket_id: int,
             noise_aug_strength: float) -> list[float]:
    """``added_time_ids`` of one video for an adapter (its ``config``; None = plain SVD): the adapter's
    ``fixed_time_ids`` if it has them (MOFA), else [fps - 1, motion_bucket_id, noise_aug_strength] with ``fps``
    None meaning the adapter's training fps (7 without an adapter)."""
    fixed = _config(adapter_config, "fixed_time_ids", None)
    if fixed is not None:
        return [float(v) for v in fixed]
    fps = default_fps(adapter_config) if fps is None else fps
    return [fps - 1, motion_bucket_id, noise_aug_strength]


def clip_normalize(adapter_config: Mapping | None) -> bool:
    """Whether the CLIP input gets CLIP's mean/std: yes, unless the adapter was trained without (MOFA's pipeline)."""
    return bool(_config(adapter_config, "clip_normalize", True))


def clip_pixels(image: torch.Tensor, size: int, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> torch.Tensor:
    """CLIP input [B, 3, size, size] (float32, on the CPU) of images [B, 3, H, W] in [0, 1]: the whole frame resized
    with diffusers' antialiased resize, then ``(x - mean) / std`` when ``mean`` and ``std`` are given.

    With normalisation the resize runs in [-1, 1] and the result is mapped back, as diffusers and SVD's reference
    code do; without it (MOFA) the [0, 1] frame is resized directly, as MOFA's released pipeline does.
    """
    x = image.to(dtype=torch.float32).cpu()
    if mean is None or std is None:
        return _resize_with_antialiasing(x, (size, size))
    x = (_resize_with_antialiasing(x * 2.0 - 1.0, (size, size)) + 1.0) / 2.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def noise_augmented(pixels: torch.Tensor, strength: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``pixels`` [B, 3, H, W] in [-1, 1] plus ``strength`` (a float or one value per image) times ``noise``."""
    s = torch.as_tensor(strength, dtype=pixels.dtype, device=pixels.device)
    return pixels + (s.view(-1, 1, 1, 1) if s.ndim else s) * noise
