"""Stage-2 sparse samples: where a user would have clicked, drawn from a real clip's flow.

The published recipe (CMP / MOFA ``flow_sampler(flow, ['grid', 'watershed'])``) picks guide points
on a coarse background grid plus at the centres of motion regions: the flow's edges are found, the
distance to the nearest edge is computed, and its local maxima (non-maximum suppression, minimum
spacing) are the points deepest inside coherently moving regions. Points are chosen on the flow of
the last frame (largest motion) and their displacement is read from every frame's flow 0 -> t,
giving trajectories that the stage-2 decoder turns back into dense flow.

As published, the points are drawn on the flow at CMP's 384x384 (grid stride sqrt(6400) = 80 px, NMS
window 15 px there) and then mapped to the working size, so a 256 px clip gets the published density
(about 2.25x the points of sampling the 256 px flow with the same pixel settings).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["sample_guide_points", "sparse_samples", "SAMPLE_SIZE"]

SAMPLE_SIZE = 384  # CMP's input size, where the published sampler runs


def _flow_edges(flow_hw2: np.ndarray) -> np.ndarray:
    mag = np.zeros(flow_hw2.shape[:2], dtype=np.float64)
    for c in range(2):
        gx = ndimage.sobel(flow_hw2[..., c], axis=1, mode="reflect")
        gy = ndimage.sobel(flow_hw2[..., c], axis=0, mode="reflect")
        mag += np.hypot(gx, gy)
    return mag


def sample_guide_points(flow_2hw: np.ndarray, rng: np.random.Generator, bg_ratio: float = 1 / 6400,
                        nms_ks: int = 15, max_points: int | None = None) -> np.ndarray:
    """Guide points [N, 2] (x, y) on a flow [2, H, W]: a background grid plus watershed maxima.

    ``bg_ratio`` (grid density: stride sqrt(1/bg_ratio) px) and ``nms_ks`` (peak spacing, px) are the
    published values, in pixels of the flow given (the published sampler gets the 384x384 flow).
    """
    _, h, w = flow_2hw.shape
    flow = np.moveaxis(flow_2hw, 0, -1).astype(np.float64)
    stride = max(1, int(round(np.sqrt(1.0 / bg_ratio))))
    nms_ks = max(3, int(nms_ks) | 1)
    ys = np.arange((h - h // stride * stride) // 2, h, stride)
    xs = np.arange((w - w // stride * stride) // 2, w, stride)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    points = [np.stack([gx.ravel(), gy.ravel()], axis=1)]

    edges = _flow_edges(flow)
    edges /= max(edges.max(), 0.01)
    inside = edges <= 0.1
    dist = ndimage.distance_transform_edt(inside)
    peaks = dist * (dist >= ndimage.maximum_filter(dist, size=nms_ks))
    peaks[0, :] = peaks[-1, :] = peaks[:, 0] = peaks[:, -1] = 0
    py, px = np.nonzero(peaks > 0)
    order = rng.permutation(len(py))
    keep: list[tuple[int, int]] = []
    radius = (nms_ks - 1) / 2
    for i in order:  # greedy minimum spacing, in random order as the published sampler
        if all(abs(py[i] - ky) >= radius or abs(px[i] - kx) >= radius for ky, kx in keep):
            keep.append((py[i], px[i]))
    if keep:
        points.append(np.array([[x, y] for y, x in keep]))

    pts = np.unique(np.concatenate(points).astype(np.int64), axis=0)
    pts = pts[rng.permutation(len(pts))]
    if max_points is not None:
        pts = pts[:max_points]
    return pts


def _resize_flow(flow_2hw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Flow [2, H, W] -> [2, h, w], values rescaled to the new pixels."""
    _, H, W = flow_2hw.shape
    h, w = size
    out = np.stack([cv2.resize(np.ascontiguousarray(c, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
                    for c in flow_2hw])
    out[0] *= w / W
    out[1] *= h / H
    return out


def sparse_samples(flows: np.ndarray, rng: np.random.Generator, sample_size: int | None = SAMPLE_SIZE,
                   **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """For flows 0 -> t [T-1, 2, H, W]: guide points [N, 2] (x, y pixel indices) and displacements [T-1, N, 2].

    Points are drawn on the last flow resized to ``sample_size`` x ``sample_size`` (None: as given) and
    mapped to the pixel of the working size holding their centre; displacements are read from the
    working-size flows, in working-size pixels.
    """
    _, _, h, w = flows.shape
    if sample_size is None:
        points = sample_guide_points(flows[-1], rng, **kwargs)
    else:
        pts = sample_guide_points(_resize_flow(flows[-1], (sample_size, sample_size)), rng, **kwargs)
        x = np.clip(((pts[:, 0] + 0.5) * w / sample_size).astype(np.int64), 0, w - 1)
        y = np.clip(((pts[:, 1] + 0.5) * h / sample_size).astype(np.int64), 0, h - 1)
        # Points that land on the same working pixel are one point (keep the sampler's random order).
        _, first = np.unique(y * w + x, return_index=True)
        keep = np.sort(first)
        points = np.stack([x[keep], y[keep]], axis=1)
    disp = flows[:, :, points[:, 1], points[:, 0]].transpose(0, 2, 1)
    return points.astype(np.float32), np.ascontiguousarray(disp, dtype=np.float32)
