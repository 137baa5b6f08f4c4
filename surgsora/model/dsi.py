"""Dual Semantic Injector (DSI): the RGB and depth streams, each enriched with SAM features.

Paper Sec. 2.1. Two processors turn the first frame into condition features at 1/8 of the image
(the latent resolution of SVD):

* ``phi_RGB(image, seg)``: a conditioning embedding 3->16->32->96->256 (3x3 convs + SiLU, three
  stride-2), concatenated with projected SAM features, then a zero-initialised 3x3 output conv.
* ``phi_D(depth, seg)``: depth 1->32->256 by two stride-2 convs (1/4), concatenated with the SAM
  features at 1/4, SiLU, then a zero-initialised stride-2 output conv (1/8).

Each stream then has its own multi-scale encoder (three stride-2 3x3 conv + SiLU layers, e.g.
320->320->640->1280, each tapped through a zero-initialised 1x1 conv), giving one feature map per
UNet scale: (320, /8), (320, /16), (640, /32), (1280, /64) for SVD.

SAM embeddings are 64x64 over the image resized so its longest side is 1024 and padded at the
bottom/right; :func:`align_seg_features` crops the valid part and resizes it to the feature grid, so
any image size and aspect ratio lines up pixel for pixel (the published code assumes 256x256).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["zero_module", "align_seg_features", "RGBProcessor", "DepthProcessor", "FeatureEncoder"]


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def align_seg_features(seg: torch.Tensor, image_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Crop the part of a SAM embedding that covers the image and resize it to ``size``.

    ``seg`` [B, C, S, S] was computed on the image resized to longest side 1024 and padded to a
    square; ``image_size`` = (H, W) of that image.
    """
    h, w = image_size
    s = seg.shape[-1]
    scale = s / max(h, w)
    vh = max(1, min(s, round(h * scale)))
    vw = max(1, min(s, round(w * scale)))
    valid = seg[..., :vh, :vw]
    if (vh, vw) == tuple(size):
        return valid
    # antialiased resize has no fp16/bf16 kernel on the CPU: resize in fp32, hand back the input dtype
    out = F.interpolate(valid.float(), size=size, mode="bilinear", align_corners=False,
                        antialias=vh > size[0] or vw > size[1])
    return out.to(seg.dtype)


class RGBProcessor(nn.Module):
    """phi_RGB: first frame in [-1, 1] and SAM features -> features at 1/8 resolution.

    ``use_seg_features=False`` drops the SAM input (the paper's "w/o SAM" ablation, and MOFA-Video's layout).
    """

    def __init__(self, out_channels: int = 320, embedding_channels: Sequence[int] = (16, 32, 96, 256),
                 seg_channels: int = 256, use_seg_features: bool = True):
        super().__init__()
        self.conv_in = nn.Conv2d(3, embedding_channels[0], kernel_size=3, padding=1)
        blocks = []
        for c_in, c_out in zip(embedding_channels[:-1], embedding_channels[1:]):
            blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        # Without SAM features this is exactly MOFA-Video's conditioning embedding.
        self.seg_proj = nn.Conv2d(seg_channels, seg_channels, kernel_size=3, padding=1) if use_seg_features else None
        self.conv_out = zero_module(
            nn.Conv2d(embedding_channels[-1] + (seg_channels if use_seg_features else 0), out_channels,
                      kernel_size=3, padding=1)
        )
        self.downscale = 2 ** (len(embedding_channels) - 1)

    def forward(self, image: torch.Tensor, seg: torch.Tensor | None = None) -> torch.Tensor:
        x = F.silu(self.conv_in(image))
        for block in self.blocks:
            x = F.silu(block(x))
        if self.seg_proj is not None:
            seg = align_seg_features(seg.to(x.dtype), image.shape[-2:], x.shape[-2:])
            x = torch.cat([x, self.seg_proj(seg)], dim=1)
        return self.conv_out(x)


class DepthProcessor(nn.Module):
    """phi_D: depth map in [0, 1] and SAM features -> features at 1/8 resolution.

    ``hidden_channels`` are stride-2 convs (1->32->256 by default, reaching 1/4), where the SAM
    features are concatenated; the zero-initialised stride-2 output conv reaches 1/8.
    """

    def __init__(self, out_channels: int = 320, hidden_channels: Sequence[int] = (32, 256), seg_channels: int = 256,
                 use_seg_features: bool = True):
        super().__init__()
        chans = [1, *hidden_channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2) for c_in, c_out in zip(chans[:-1], chans[1:])
        )
        self.use_seg_features = use_seg_features  # False: the "w/o SAM" ablation, depth alone
        self.conv_out = zero_module(
            nn.Conv2d(chans[-1] + (seg_channels if use_seg_features else 0), out_channels, kernel_size=3, padding=1,
                      stride=2)
        )
        self.downscale = 2 ** (len(hidden_channels) + 1)

    def forward(self, depth: torch.Tensor, seg: torch.Tensor | None = None) -> torch.Tensor:
        x = depth
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.silu(x)
        if self.use_seg_features:
            seg = align_seg_features(seg.to(x.dtype), depth.shape[-2:], x.shape[-2:])
            x = torch.cat([x, seg], dim=1)
        return self.conv_out(F.silu(x))


class _EncoderLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_in = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.conv_in(x))


class FeatureEncoder(nn.Module):
    """Multi-scale encoder of one stream: the processor output plus one map per deeper UNet scale."""

    def __init__(self, in_channels: int = 320, channels: Sequence[int] = (320, 640, 1280)):
        super().__init__()
        self.encoders = nn.ModuleList()
        self.zeroconvs = nn.ModuleList()
        for c in channels:
            self.encoders.append(_EncoderLayer(in_channels, c))
            self.zeroconvs.append(zero_module(nn.Conv2d(c, c, kernel_size=1)))
            in_channels = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        for encoder, zeroconv in zip(self.encoders, self.zeroconvs):
            x = encoder(x)
            features.append(zeroconv(x))
        return features
