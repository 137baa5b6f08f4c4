"""Forward average splatting and flow resizing, in pure PyTorch.

The published SurgSora/MOFA code splats with a CuPy kernel (``softsplat``), which fails on CPU and
breaks with new CUDA toolkits. This module does the same maths with ``index_add_``: every source pixel
is pushed to the four integer neighbours of its target position ``p + flow(p)`` with bilinear weights,
and each target is divided by the total weight it received ("average" splatting). Targets that fall
outside the frame are dropped (never wrapped) and pixels that receive nothing stay exactly 0.
It is batched over every image and frame at once, works on any device and float dtype, and is
differentiable with respect to both the features and the flow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["forward_splat", "forward_splat_video", "resize_flow"]

# Below this total weight a target pixel fades linearly to 0 instead of being divided by a tiny
# number; keeps the output continuous in the flow (and the gradients finite).
_EPS = 1e-4


def forward_splat(features: torch.Tensor, flow: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Forward-warp ``features`` [N, C, H, W] by ``flow`` [N, 2, H, W] (pixels; channel 0 = x, 1 = y).

    Returns the average-splatted features [N, C, H, W] in the input dtype; holes are exactly 0.
    """
    if features.ndim != 4 or flow.ndim != 4:
        raise ValueError(
            f"forward_splat expects features [N,C,H,W] and flow [N,2,H,W]; got {tuple(features.shape)} "
            f"and {tuple(flow.shape)}"
        )
    n, c, h, w = features.shape
    if flow.shape != (n, 2, h, w):
        raise ValueError(
            f"flow must be [N,2,H,W] = [{n},2,{h},{w}] to match the features; got {tuple(flow.shape)}"
        )
    if not features.is_floating_point():
        raise TypeError(f"forward_splat needs floating-point features, got {features.dtype}")

    out_dtype = features.dtype
    # Accumulating many small contributions in half precision loses mass; work in >= fp32.
    work = torch.promote_types(out_dtype, torch.float32)
    feats = features.to(work)
    flow = flow.to(work)

    ys, xs = torch.meshgrid(
        torch.arange(h, device=flow.device, dtype=work),
        torch.arange(w, device=flow.device, dtype=work),
        indexing="ij",
    )
    tx = xs + flow[:, 0]  # [N, H, W] target x
    ty = ys + flow[:, 1]
    x0 = torch.floor(tx)
    y0 = torch.floor(ty)
    fx = tx - x0  # fractional parts carry the gradient with respect to the flow
    fy = ty - y0
    x0 = x0.long()
    y0 = y0.long()

    # Source values with a trailing ones channel, so one index_add_ accumulates features and weights.
    src = torch.cat([feats, feats.new_ones(n, 1, h, w)], dim=1).permute(0, 2, 3, 1).reshape(n * h * w, c + 1)
    batch_offset = (torch.arange(n, device=flow.device) * (h * w)).view(n, 1, 1)
    dump = n * h * w  # out-of-frame contributions go to one extra row that is thrown away
    acc = src.new_zeros(dump + 1, c + 1)

    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi = x0 + dx
        yi = y0 + dy
        wgt = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        index = torch.where(inside, batch_offset + yi * w + xi, torch.full_like(xi, dump))
        acc.index_add_(0, index.reshape(-1), src * (wgt * inside).reshape(-1, 1))

    acc = acc[:dump].view(n, h, w, c + 1).permute(0, 3, 1, 2)
    total = acc[:, c:]
    out = acc[:, :c] / total.clamp_min(eps)
    return out.to(out_dtype)


def forward_splat_video(features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Warp one feature map per video to every frame.

    ``features`` [B, C, h, w] (the frame-0 features), ``flow`` [B, T-1, 2, h, w] (frame 0 -> t).
    Returns [B, T, C, h, w]: frame 0 is the input unchanged, frame t the features splatted by flow t.
    """
    b, c, h, w = features.shape
    if flow.ndim != 5 or flow.shape[0] != b or flow.shape[2] != 2 or flow.shape[3:] != (h, w):
        raise ValueError(
            f"flow must be [B,T-1,2,h,w] = [{b},T-1,2,{h},{w}] for features {tuple(features.shape)}; "
            f"got {tuple(flow.shape)} (resize it with resize_flow first)"
        )
    t1 = flow.shape[1]
    expanded = features.unsqueeze(1).expand(b, t1, c, h, w).reshape(b * t1, c, h, w)
    warped = forward_splat(expanded, flow.reshape(b * t1, 2, h, w)).view(b, t1, c, h, w)
    return torch.cat([features.unsqueeze(1), warped], dim=1)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a flow field ``[..., 2, H, W]`` to ``size = (h, w)`` and rescale its values.

    A flow is measured in pixels of the tensor it belongs to, so resizing by 1/8 also divides the
    displacements by 8 (x by w/W, y by h/H). Downsampling is antialiased so that a small moving
    region still contributes its mean motion instead of being skipped by point sampling.
    """
    if flow.ndim < 3 or flow.shape[-3] != 2:
        raise ValueError(f"flow must be [..., 2, H, W]; got {tuple(flow.shape)}")
    lead = flow.shape[:-3]
    H, W = flow.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return flow
    flat = flow.reshape(-1, 2, H, W)
    down = h < H or w < W
    dtype = flat.dtype
    work = flat if dtype in (torch.float32, torch.float64) else flat.float()
    resized = F.interpolate(work, size=(h, w), mode="bilinear", align_corners=False, antialias=down)
    scale = torch.tensor([w / W, h / H], dtype=resized.dtype, device=resized.device).view(1, 2, 1, 1)
    return (resized * scale).to(dtype).reshape(*lead, 2, h, w)
