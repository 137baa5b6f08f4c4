"""Who is in front, and what lies behind: the pieces of the occlusion-aware motion signal.

* :func:`region_disparity` -- a disparity-like depth order from region masks when no depth map is
  given: the background (no region) is farthest, and of two regions the smaller one is nearer.
* :func:`motion_disparity` -- the order when neither depth nor regions are known: what moves away from
  the frame's dominant motion is in front (instruments move over tissue, not under it).
* :func:`inpaint` -- fill the pixels of a hole from the pixels around it (a pyramid "push-pull" fill in
  pure PyTorch, or OpenCV Telea), used for the background plate behind moved regions and for their flow.
* :func:`backward_warp` -- sample an image at ``p - flow(p)`` (the background follows its own motion).

Everything is batched, pure PyTorch (Telea aside) and runs on any device and float dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["region_disparity", "motion_disparity", "inpaint", "backward_warp", "dilate"]


def region_disparity(regions: torch.Tensor) -> torch.Tensor:
    """Depth order from region masks ``regions`` [B, M, H, W] (> 0.5 = inside) -> [B, 1, H, W] in [0, 1].

    The background is 0. Regions are ranked by area, largest first, and region k of M gets (k + 1) / M,
    so the smallest region is 1 (nearest): a grasper is smaller than the organ it holds, and a region a
    user clicked is in front of the tissue around it. Where regions overlap the nearer one counts.
    """
    if regions.ndim != 4:
        raise ValueError(f"regions must be [B, M, H, W]; got {tuple(regions.shape)}.")
    b, m, h, w = regions.shape
    inside = regions > 0.5
    if m == 0:
        return torch.zeros(b, 1, h, w, device=regions.device)
    area = inside.flatten(2).sum(-1)  # [B, M]
    # rank 0 = largest; ties keep the given order (a stable sort), so the later-listed region is nearer.
    order = torch.sort(area, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(m, device=order.device).expand(b, m))
    level = ((rank + 1).float() / m).view(b, m, 1, 1)
    return (inside * level).amax(1, keepdim=True)


def _dominant_motion(flow: torch.Tensor) -> torch.Tensor:
    """Median displacement of each frame of ``flow`` [N, 2, H, W] -> [N, 2, 1, 1] (a camera pan, or 0)."""
    return flow.flatten(2).median(dim=-1).values[..., None, None]


def motion_disparity(flow: torch.Tensor) -> torch.Tensor:
    """Depth order from motion alone: ``flow`` [N, 2, H, W] -> [N, 1, H, W] in [0, 1] per frame.

    The distance of each pixel's motion from the frame's median motion, divided by its maximum: what
    moves against the scene is nearest, what moves with it (or a uniform pan) is all at 0, which makes
    softmax splatting plain average splatting.
    """
    d = flow - _dominant_motion(flow)
    rel = torch.hypot(d[:, :1], d[:, 1:])
    peak = rel.flatten(1).amax(1).view(-1, 1, 1, 1)
    return torch.where(peak > 0, rel / peak.clamp_min(1e-12), torch.zeros_like(rel))


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-level dilation of ``mask`` [N, C, H, W] by a (2 * radius + 1) square (max filter)."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    # Separable (a row pass, then a column pass): the same square, far cheaper than a k x k window on CPU.
    rows = F.max_pool2d(mask, (1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(rows, (k, 1), stride=1, padding=(radius, 0))


def _pushpull(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill ``values`` [N, C, H, W] where ``known`` [N, 1, H, W] (weights in [0, 1]) is 0.

    Push: halve the resolution, averaging only known pixels, until nothing is unknown or one pixel is
    left. Pull: from the coarsest level up, each pixel keeps its own known value in proportion to how
    known it is and takes the rest from the (bilinearly upsampled) coarser estimate. Known pixels come
    back unchanged; a hole gets a smooth blend of the pixels around it, nearer ones weighing more.
    """
    sums, weights = [values * known], [known]
    # (on the meta device there are no values to look at: the pyramid then goes down to one pixel)
    while min(sums[-1].shape[-2:]) > 1 and (known.device.type == "meta" or bool((weights[-1] <= 0).any())):
        sums.append(F.avg_pool2d(sums[-1], 2, ceil_mode=True))
        weights.append(F.avg_pool2d(weights[-1], 2, ceil_mode=True))
    est = sums[-1] / weights[-1].clamp_min(1e-12)
    for s, wt in zip(reversed(sums[:-1]), reversed(weights[:-1])):
        up = F.interpolate(est, size=s.shape[-2:], mode="bilinear", align_corners=False)
        a = wt.clamp(0, 1)
        est = a * (s / wt.clamp_min(1e-12)) + (1 - a) * up
    return est


def inpaint(image: torch.Tensor, hole: torch.Tensor, method: str = "pushpull") -> torch.Tensor:
    """Fill the pixels of ``image`` [N, C, H, W] where ``hole`` [N, 1, H, W] is true (> 0.5) from the rest.

    ``method="pushpull"`` (default): a pure-PyTorch pyramid fill, any channel count, device and dtype
    (also used for flow fields). ``"telea"``: OpenCV's Telea fast marching (``cv2.INPAINT_TELEA``, radius
    3) per image on the CPU, for 3-channel images in [0, 1]. Pixels outside the hole are returned as
    they were; an image with no pixel outside the hole is returned unchanged (there is nothing to copy).
    """
    if image.ndim != 4 or hole.shape != (image.shape[0], 1, *image.shape[2:]):
        raise ValueError(f"inpaint expects image [N, C, H, W] and hole [N, 1, H, W]; got {tuple(image.shape)} "
                         f"and {tuple(hole.shape)}.")
    hole = hole > 0.5
    if method == "pushpull":
        work = torch.promote_types(image.dtype, torch.float32)
        known = (~hole).to(work)
        filled = _pushpull(image.to(work), known)
        nothing = (known.flatten(1).amax(1) == 0).view(-1, 1, 1, 1)
        out = torch.where(hole & ~nothing, filled, image.to(work))
        return out.to(image.dtype)
    if method == "telea":
        import cv2
        import numpy as np

        if image.shape[1] != 3:
            raise ValueError(f"Telea inpainting needs 3-channel images in [0, 1]; got {image.shape[1]} channels.")
        if image.device.type == "meta" or hole.device.type == "meta":
            raise ValueError("Telea inpainting runs in OpenCV on the CPU and needs values; got tensors on the meta "
                             "device (use method='pushpull', pure PyTorch, to stay on a device).")
        # OpenCV works on the CPU: the image goes there explicitly, once, and the fill comes back to its device.
        out = image.clone()
        pix = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        holes = hole[:, 0].cpu().numpy().astype(np.uint8)
        for i in range(len(pix)):
            if holes[i].any() and not holes[i].all():
                fill = cv2.inpaint(np.ascontiguousarray(pix[i]), holes[i], 3, cv2.INPAINT_TELEA)
                fill_t = torch.from_numpy(fill).to(image.device).permute(2, 0, 1).to(image.dtype) / 255
                out[i] = torch.where(hole[i], fill_t, image[i])
        return out
    raise ValueError(f"inpaint method must be 'pushpull' or 'telea'; got {method!r}.")


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` [N, C, H, W] at ``p - flow(p)`` (bilinear, borders repeated) -> [N, C, H, W].

    For a smooth motion such as the background's, the pixel that arrives at p came from about
    ``p - flow(p)``, so this moves the image along ``flow`` with no holes at all.
    """
    n, _, h, w = image.shape
    work = torch.promote_types(image.dtype, torch.float32)
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=work),
                            torch.arange(w, device=image.device, dtype=work), indexing="ij")
    sx = xs - flow[:, 0].to(work)
    sy = ys - flow[:, 1].to(work)
    # grid_sample's normalised coordinates with align_corners=True: -1 and 1 are the first and last pixel.
    grid = torch.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], dim=-1)
    out = F.grid_sample(image.to(work), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(image.dtype)
