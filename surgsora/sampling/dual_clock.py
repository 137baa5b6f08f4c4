"""Dual-clock (Time-to-Move) settings and the rules for its inputs (value range, resize, mask, latent geometry,
schedule indices), light enough for the ComfyUI nodes to import at start-up.

The sampling itself is :class:`surgsora.sampling.pipeline.SurgSoraPipeline` with ``motion_signal``
(see its module docstring), or, on ComfyUI's own video models (SVD, Wan 2.1, Wan 2.2) and Cosmos-H-Surgical, the
``SurgSora Dual-Clock Guider`` node; the motion signal is :func:`surgsora.motion.preview.motion_signal`.

Geometry is a VAE's (temporal, spatial) compression: SVD (1, 8): one latent per frame; Wan 2.1 (4, 8; also
Cosmos-H-Surgical's) and Wan 2.2 (4, 16): a causal video VAE whose latent frame 0 is pixel frame 0 and latent
frame j >= 1 covers pixel frames 4j-3 .. 4j, so T pixel frames need T = 4 (T' - 1) + 1.
"""

from __future__ import annotations

import torch

from .settings import TTM_MOTION_BUCKET, TTM_STEPS, TTM_T_STRONG, TTM_T_WEAK, check_settings

__all__ = ["TTM_T_WEAK", "TTM_T_STRONG", "TTM_STEPS", "TTM_MOTION_BUCKET", "TTM_PRESETS", "COSMOS_PRESETS",
           "COSMOS_STEPS", "PRESETS", "dual_clock_indices", "stage_indices", "latent_mask", "latent_frames",
           "check_frame_count", "check_unit_range", "resize_frames"]

# Time-to-Move's published step pairs (of 50 steps), as fractions of the whole schedule.
TTM_PRESETS = {
    "SVD (TTM: 16 / 21 of 50)": (0.32, 0.42),
    "Wan cut-and-drag (TTM: 3 / 7 of 50)": (0.06, 0.14),
    "Wan camera (TTM: 2 / 5 of 50)": (0.04, 0.10),
}

# Cosmos-H-Surgical samples 35 steps (UniPC, shift 5). TTM's Wan fractions land on steps 2 / 5 and 1 / 4 of 35, at
# about TTM's noise levels (shift 5, simple schedule: sigma 0.988 / 0.968 vs TTM's 3 / 7 of 50: 0.987 / 0.968; 0.994 /
# 0.975 vs 2 / 5 of 50: 0.992 / 0.978); two-decimal values, as the widgets show them.
COSMOS_PRESETS = {
    "Cosmos-H-Surgical cut-and-drag (2 / 5 of 35)": (0.06, 0.14),
    "Cosmos-H-Surgical camera (1 / 4 of 35)": (0.04, 0.10),
}
COSMOS_STEPS = 35
PRESETS = {**TTM_PRESETS, **COSMOS_PRESETS}  # what the guider's preset widget offers


def dual_clock_indices(t_weak: float, t_strong: float, steps: int) -> tuple[int, int]:
    """t_weak / t_strong as fractions of the schedule -> step indices for any step count (TTM's 0.32 / 0.42
    of 50 steps = 16 / 21); with few steps t_strong is kept at least one step after t_weak."""
    check_settings(t_weak=t_weak, t_strong=t_strong, steps=steps)
    weak = min(round(t_weak * steps), steps - 1)
    return weak, min(max(round(t_strong * steps), weak + 1), steps)


def stage_indices(t_weak: float, t_strong: float, stage: torch.Tensor, full: torch.Tensor | None = None
                  ) -> tuple[int, int]:
    """(t_weak, t_strong) as step indices into ``stage``, the sigmas one sampler run sees.

    Without ``full`` they are fractions of ``stage`` (:func:`dual_clock_indices`). With ``full`` (the whole,
    unsplit schedule) they are fractions of ``full``, so a SplitSigmas stage keeps TTM's step meaning: ``stage``
    must be a run of ``full``, t_weak must not fall before the stage and t_strong not after its end (one
    sentence each)."""
    steps = stage.shape[-1] - 1
    if full is None:
        return dual_clock_indices(t_weak, t_strong, steps)
    total = full.shape[-1] - 1
    weak, strong = dual_clock_indices(t_weak, t_strong, total)
    matches = [j for j in range(total + 1 - steps)
               if torch.allclose(full[j:j + steps + 1].double(), stage.double(), rtol=1e-5, atol=1e-7)]
    if not matches:
        raise ValueError(f"The guider samples {steps} steps that are not a run of the {total}-step schedule given as "
                         "full_sigmas; connect the scheduler's sigmas before SplitSigmas.")
    start = matches[0]
    if weak < start or strong > start + steps:
        raise ValueError(f"t_weak / t_strong are steps {weak} / {strong} of {total} but this stage runs steps {start} "
                         f"to {start + steps}; split the sigmas at step {strong} or later (the guider drives the "
                         "first, high-noise stage) or lower t_strong.")
    return weak - start, strong - start


def latent_frames(frames: int, temporal: int) -> int:
    """Latent frames of ``frames`` pixel frames under a ``temporal`` x causal VAE (1 = one latent per frame)."""
    return frames if temporal == 1 else (frames - 1) // temporal + 1


def check_frame_count(frames: int, temporal: int, latent: int | None = None) -> None:
    """One sentence unless ``frames`` pixel frames fit a ``temporal`` x VAE (T = (T' - 1) k + 1) and, when given,
    make ``latent`` latent frames."""
    if temporal > 1 and (frames - 1) % temporal:
        lo = (frames - 1) // temporal * temporal + 1
        raise ValueError(f"The motion signal has {frames} frames but this video VAE compresses time {temporal}x and "
                         f"needs {temporal}n + 1 frames (e.g. {lo} or {lo + temporal}); set the trajectories' frame "
                         "count to one of those.")
    if latent is not None and latent_frames(frames, temporal) != latent:
        need = (latent - 1) * temporal + 1 if temporal > 1 else latent
        raise ValueError(f"The motion signal has {frames} frames but the video conditioning was made for {need}; "
                         "use the same frame count (length) for both.")


def latent_mask(mask: torch.Tensor, size: tuple[int, int], temporal: int = 1) -> torch.Tensor:
    """A pixel mask [N, 1, H, W] in [0, 1] on the latent grid ``size`` as TTM does it: thresholded at 0.5, then
    nearest sampling (so a latent is anchored or free, never half of each). With a ``temporal`` x video VAE the
    latent frames take pixel frames [0] + [1::temporal] (TTM's Wan rule: the first frame of each latent's group),
    giving [(N - 1) / temporal + 1, 1, h, w]."""
    hard = (mask.float() > 0.5).float()
    if temporal > 1:
        hard = torch.cat([hard[:1], hard[1::temporal]])
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
