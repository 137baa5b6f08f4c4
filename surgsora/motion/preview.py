"""Motion preview: the first frame pushed along the dense flow, before any diffusion is run.

Each frame t is the first frame forward-warped (average splatting, :func:`surgsora.motion.splat.forward_splat`)
by the flow 0 -> t. Pixels that nothing lands on (disocclusions, the trailing edge of a moving
instrument) are filled from the first frame itself, blended by how much splatted weight they got, so
the preview shows the motion a user asked for in a fraction of a second.
"""

from __future__ import annotations

import torch

from .splat import forward_splat

__all__ = ["motion_preview"]


@torch.no_grad()
def motion_preview(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` [B, 3, H, W] in [0, 1], ``flow`` [B, T-1, 2, H, W] -> video [B, T, 3, H, W] in [0, 1].

    Frame 0 is the image itself; frame t the image forward-warped by flow t, holes filled from the image.
    """
    if image.ndim != 4 or flow.ndim != 5 or flow.shape[2] != 2 or flow.shape[0] != image.shape[0] \
            or flow.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"motion_preview expects image [B, C, H, W] and flow [B, T-1, 2, H, W] of the same B, H, W; "
                         f"got {tuple(image.shape)} and {tuple(flow.shape)}")
    b, c, h, w = image.shape
    f = flow.shape[1]
    img = image.float()
    # A ones channel measures how much splatted weight each target received (1 = fully covered).
    src = torch.cat([img, torch.ones_like(img[:, :1])], 1)
    src = src.unsqueeze(1).expand(b, f, c + 1, h, w).reshape(b * f, c + 1, h, w)
    warped = forward_splat(src, flow.float().reshape(b * f, 2, h, w)).view(b, f, c + 1, h, w)
    coverage = warped[:, :, c:].clamp(0, 1)
    frames = warped[:, :, :c] + (1 - coverage) * img.unsqueeze(1)
    video = torch.cat([img.unsqueeze(1), frames], 1).clamp(0, 1)
    return video.to(image.dtype)
