"""Decoupled Flow Mapper (DFM) and Multi-Scale Fusion (MSF).

Paper Sec. 2.2. At every scale the RGB and depth features of the first frame are forward-warped to
every frame by the flow (resized to the feature map, magnitudes divided by the scale), and then
fused per scale:

    MSF(f_rgb, f_d) = f_rgb + SiLU(Conv3d_t(Conv3d_pair(interleave(f_rgb, f_d))))

over ``[B, 2C, T, h, w]``. ``interleave`` puts depth channel i right after RGB channel i and
``Conv3d_pair`` is a grouped 1x1x1 conv (groups=C), so RGB channel i meets depth channel i (the
published code paired neighbouring RGB channels by running a stride-2 kernel across the channel
axis). ``Conv3d_t`` mixes channels over a temporal window (replicate-padded, so any frame count
works: nothing is sized by T). The residual on the RGB stream is the published design; ``Conv3d_t``
starts at zero so a fresh fusion passes the RGB stream through unchanged (a MOFA warm start then
begins exactly as MOFA).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dsi import zero_module
from ..motion.splat import forward_splat_video, resize_flow

__all__ = ["FusionBlock", "warp_to_frames", "warp_scales"]


class FusionBlock(nn.Module):
    """MSF at one scale: fuses warped RGB and depth features of shape [B, T, C, h, w]."""

    def __init__(self, channels: int, temporal_kernel: int = 3):
        super().__init__()
        if temporal_kernel % 2 != 1:
            raise ValueError(f"temporal_kernel must be odd, got {temporal_kernel}")
        self.pair_conv = nn.Conv3d(2 * channels, channels, kernel_size=1, groups=channels)
        self.time_conv = zero_module(
            nn.Conv3d(channels, channels, kernel_size=(temporal_kernel, 1, 1),
                      padding=(temporal_kernel // 2, 0, 0), padding_mode="replicate")
        )

    def forward(self, f_rgb: torch.Tensor, f_d: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = f_rgb.shape
        # [B, T, C, 2, h, w] -> [B, 2C, T, h, w] with channels ordered rgb_0, d_0, rgb_1, d_1, ...
        x = torch.stack([f_rgb, f_d], dim=3).reshape(b, t, 2 * c, h, w).transpose(1, 2)
        fused = F.silu(self.time_conv(self.pair_conv(x))).transpose(1, 2)
        return f_rgb + fused


def warp_to_frames(features: torch.Tensor, flow: torch.Tensor, resize: str = "bilinear",
                   normalize: str = "clamp") -> torch.Tensor:
    """Features of frame 0 [B, C, h, w] and full-resolution flow [B, T-1, 2, H, W] -> [B, T, C, h, w].

    ``resize`` is how the flow reaches the feature size (:func:`resize_flow`: ``bilinear`` or ``nearest``);
    ``normalize`` how splatted weights are divided (:func:`forward_splat`: ``clamp`` or ``softsplat``).
    """
    return forward_splat_video(features, resize_flow(flow, features.shape[-2:], mode=resize), normalize)


def warp_scales(features: Sequence[torch.Tensor], flow: torch.Tensor, resize: str = "bilinear",
                normalize: str = "clamp") -> list[torch.Tensor]:
    """Warp a list of multi-scale frame-0 features by the same flow (resized per scale)."""
    return [warp_to_frames(f, flow, resize, normalize) for f in features]
