"""Dual-clock (Time-to-Move) settings and the rules for its inputs (value range, resize, mask), light enough for the ComfyUI nodes to import at start-up.

The sampling itself is :class:`surgsora.sampling.pipeline.SurgSoraPipeline` with ``motion_signal``
(see its module docstring), or, on ComfyUI's own SVD, the ``SurgSora Dual-Clock Guider`` node; the motion
signal is :func:`surgsora.motion.preview.motion_signal`.
"""

from __future__ import annotations

import torch

from .settings import TTM_MOTION_BUCKET, TTM_STEPS, TTM_T_STRONG, TTM_T_WEAK, check_settings

__all__ = ["TTM_T_WEAK", "TTM_T_STRONG", "TTM_STEPS", "TTM_MOTION_BUCKET", "dual_clock_indices", "latent_mask",
           "check_unit_range", "resize_frames"]



def dual_clock_indices(t_weak: float, t_strong: float, steps: int) -> tuple[int, int]:
    """t_weak / t_strong as fractions of the schedule -> step indices for any step count (TTM's 0.32 / 0.42
    of 50 steps = 16 / 21); with few steps t_strong is kept at least one step after t_weak."""
    check_settings(t_weak=t_weak, t_strong=t_strong, steps=steps)
    weak = min(round(t_weak * steps), steps - 1)
    return weak, min(max(round(t_strong * steps), weak + 1), steps)


def latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A pixel mask [N, 1, H, W] in [0, 1] on the latent grid ``size`` as TTM does it: thresholded at 0.5, then
    nearest sampling (so a latent is anchored or free, never half of each)."""
    hard = (mask.float() > 0.5).float()
    return torch.nn.functional.interpolate(hard, size=tuple(size), mode="nearest")


def check_unit_range(name: str, x: torch.Tensor, fix: str = "") -> None:
    """One sentence unless ``x`` is finite and in [0, 1] (1e-3 of slack for rounding); ``fix`` ends it."""
    if not bool(torch.isfinite(x).all()) or x.min() < -1e-3 or x.max() > 1 + 1e-3:
        raise ValueError(f"{name} values must be finite and in [0, 1]{fix}")


def resize_frames(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1] -> (height, width): bilinear, antialiased when shrinking, kept in [0, 1]. The
    whole canvas is scaled (no crop), so a frame and its motion signal stay aligned at any video size."""
    if images.shape[-2:] == (height, width):
        return images
    down = height < images.shape[-2] or width < images.shape[-1]
    return torch.nn.functional.interpolate(images, size=(height, width), mode="bilinear", align_corners=False,
                                           antialias=down).clamp(0, 1)
