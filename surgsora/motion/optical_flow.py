"""Dense optical flow frame 0 -> t from real frames (the paper's ground-truth-flow mode).

Default: OpenCV DIS between consecutive frames, composed along the clip
(``F_0->t(x) = F_0->t-1(x) + F_t-1->t(x + F_0->t-1(x))``), which stays accurate for the large
accumulated motions that a single 0->t DIS call would miss. Alternative: torchvision RAFT-Large from a
local weights file (no download), estimated directly 0->t.
Output follows the project convention: float32 [T-1, 2, H, W] in pixels, channel 0 = x, 1 = y.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np
import torch

__all__ = ["dis_flow", "compose_flows", "chained_dis_flow", "raft_flow", "estimate_flow"]


def _gray(frame: np.ndarray) -> np.ndarray:
    if frame.dtype != np.uint8:
        frame = (np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8)
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame


def dis_flow(a: np.ndarray, b: np.ndarray, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> np.ndarray:
    """DIS flow from RGB frame ``a`` to ``b`` as float32 [2, H, W]."""
    dis = cv2.DISOpticalFlow_create(preset)
    flow = dis.calc(_gray(a), _gray(b), None)
    return np.ascontiguousarray(flow.transpose(2, 0, 1))


def compose_flows(f0t: np.ndarray, ftt1: np.ndarray) -> np.ndarray:
    """Compose flow 0->t [2,H,W] with flow t->t+1 [2,H,W] into flow 0->t+1 (bilinear lookup, border clamp)."""
    h, w = f0t.shape[1:]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x = xs + f0t[0]
    map_y = ys + f0t[1]
    step = np.stack([
        cv2.remap(ftt1[c], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for c in range(2)
    ])
    return (f0t + step).astype(np.float32)


def chained_dis_flow(frames: np.ndarray) -> np.ndarray:
    """Flow 0 -> t for t = 1..T-1 of RGB frames [T, H, W, 3], by DIS chained frame to frame."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"need at least two frames [T,H,W,3]; got {frames.shape}")
    out = []
    acc = None
    for t in range(1, frames.shape[0]):
        step = dis_flow(frames[t - 1], frames[t])
        acc = step if acc is None else compose_flows(acc, step)
        out.append(acc)
    return np.stack(out)


@functools.lru_cache(maxsize=2)
def _raft(weights: str, device: str):
    """RAFT-Large from a local file, loaded once per (file, device) and kept for the next videos."""
    from torchvision.models.optical_flow import raft_large

    from ..loading.io import load_state_dict

    model = raft_large(weights=None, progress=False)
    model.load_state_dict(load_state_dict(weights, folder_hint="models/optical_flow"))
    return model.eval().to(device)


def raft_flow(frames: np.ndarray, weights: str | os.PathLike, device: str | torch.device = "cpu",
              iters: int = 12) -> np.ndarray:
    """Flow 0 -> t with torchvision RAFT-Large loaded from a local weights file (``raft_large_*.pth``)."""
    model = _raft(str(Path(weights).resolve()), str(device))
    x = torch.from_numpy(np.asarray(frames)).permute(0, 3, 1, 2).float().div(255).mul(2).sub(1).to(device)
    h, w = x.shape[-2:]
    # RAFT needs sizes divisible by 8 and at least 128 (its correlation pyramid).
    ph, pw = max((-h) % 8, 128 - h), max((-w) % 8, 128 - w)
    x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
    out = []
    with torch.no_grad():
        for t in range(1, x.shape[0]):
            flow = model(x[:1], x[t:t + 1], num_flow_updates=iters)[-1]
            out.append(flow[0, :, :h, :w].float().cpu().numpy())
    return np.stack(out)


def estimate_flow(frames: np.ndarray, method: str = "dis", raft_weights: str | os.PathLike | None = None,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """Flow 0 -> t [T-1, 2, H, W] of RGB uint8 frames [T, H, W, 3] by ``method`` ``"dis"`` or ``"raft"``."""
    if method == "dis":
        return chained_dis_flow(frames)
    if method == "raft":
        if raft_weights is None:
            raise ValueError("RAFT flow needs a local weights file (torchvision raft_large_C_T_SKHT_V2-ff5fadd5.pth); "
                             "pass raft_weights=PATH or use method='dis'.")
        return raft_flow(frames, raft_weights, device=device)
    raise ValueError(f"unknown flow method {method!r}; use 'dis' or 'raft'")
