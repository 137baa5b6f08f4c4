"""The labels of a clip, from what the pipeline computed to make it.

* :func:`instance_ids` / :func:`carry_regions` -- instance masks: 0 background, k = the k-th region (the row's
  masks in order, its clicks, or SAM's masks of the track starts), carried along its own flow by
  :func:`surgsora.motion.splat.softmax_splat` with the motion signal's metric (``50 * disparity``: Depth Anything's
  depth when it was computed, else :func:`surgsora.motion.occlusion.region_disparity`), so where two regions land
  on one pixel the nearer one is labelled, as the motion signal shows it.
* :func:`write_npz` -- ``flow.npz`` (``flow``: float16 [T-1, 2, H, W], pixels, frame 0 -> t) in a zip with fixed
  timestamps, so the same flow gives the same bytes.
* :func:`tracks_json` -- the tracks in ComfyUI's core TRACKS layout (read back by
  :func:`surgsora.motion.tracks.parse_track_data`).
* :func:`follow_score` -- DIS optical flow of the generated clip (chained frame to frame) against the conditioning
  flow: end-point error inside the regions (else the moving pixels, else the whole frame).
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import torch

__all__ = ["STRENGTH", "COVERAGE", "instance_ids", "order_metric", "carry_regions", "write_npz", "tracks_json",
           "follow_score"]

STRENGTH = 50.0  # motion_signal's default: a disparity gap of 0.2 weighs e^10 : 1 (a z-buffer)
COVERAGE = 0.1  # below this splatted weight a pixel is a hole (motion_signal's threshold for landed mask mass)


def instance_ids(regions: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
    """Frame-0 ids [H, W] int64 of ``regions`` [1, M, H, W] (> 0.5 inside): where regions overlap, the nearer one
    in region_disparity's order (the smaller region; of equal areas the later-listed one)."""
    w, h = size
    if regions is None or regions.shape[1] == 0:
        return torch.zeros(h, w, dtype=torch.int64)
    inside = regions[0] > 0.5  # [M, H, W]
    area = inside.flatten(1).sum(-1)
    m = inside.shape[0]
    # Larger area first, stable: the position in this order is region_disparity's rank (last = nearest).
    order = torch.sort(area, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(m)
    score = torch.where(inside, rank.view(m, 1, 1) + 1, torch.zeros_like(inside, dtype=torch.int64))
    best = score.max(0)
    return torch.where(best.values > 0, best.indices + 1, torch.zeros_like(best.indices))


def order_metric(regions: torch.Tensor | None, depth: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
    """The softmax-splat metric [1, 1, H, W] of the motion signal: ``STRENGTH`` times depth's disparity if known,
    else the regions' order, else 0 (average splatting)."""
    from ..motion.occlusion import region_disparity

    w, h = size
    if depth is not None:
        disparity = depth.float().cpu()
    elif regions is not None and regions.shape[1] > 0:
        disparity = region_disparity(regions.float().cpu())
    else:
        disparity = torch.zeros(1, 1, h, w)
    return STRENGTH * disparity


@torch.no_grad()
def carry_regions(ids0: torch.Tensor, flow: torch.Tensor, metric: torch.Tensor, count: int) -> torch.Tensor:
    """Instance ids [T, H, W] uint8: frame 0 is ``ids0``; frame t every region's pixels softmax-splatted by flow t
    (``flow`` [1, T-1, 2, H, W], ``metric`` [1, 1, H, W]), each pixel labelled with the id that weighs most there,
    0 where nothing (or less than :data:`COVERAGE`) lands. Runs on ``flow``'s device."""
    from ..motion.preview import chunk_frames
    from ..motion.splat import softmax_splat

    n = flow.shape[1]
    h, w = ids0.shape
    dev = flow.device
    onehot = torch.nn.functional.one_hot(ids0.to(dev), count + 1).permute(2, 0, 1).float()  # [M+1, H, W], 0 = bg
    out = torch.empty(n + 1, h, w, dtype=torch.uint8, device=dev)
    out[0] = ids0.to(dev)
    # Frame t needs only frame 0 and flow t: a chunk of frames at a time keeps the one-hot splat (~(M + 3) x 4
    # bytes per pixel and frame, plus the scatter's buffers) to a chunk, whatever the clip's length.
    step = chunk_frames(h, w, max(1, (count + 4) // 4))
    for a in range(0, n, step):
        f = flow[0, a:a + step].float()
        k = f.shape[0]
        splat, coverage = softmax_splat(onehot.unsqueeze(0).expand(k, -1, -1, -1), f,
                                        metric.to(dev).expand(k, -1, -1, -1).float(), return_coverage=True)
        out[1 + a:1 + a + k] = torch.where(coverage[:, 0] > COVERAGE, splat.argmax(1),
                                           torch.zeros(k, h, w, dtype=torch.int64, device=dev))
    return out


def write_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with a fixed timestamp on every member (numpy stamps the current time), so equal
    arrays give equal bytes; readable with ``np.load``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, buf.getvalue())


def tracks_json(tracks: np.ndarray, size: tuple[int, int]) -> str:
    """Tracks [N, T, 2] at the working ``size`` in the core TRACKS layout: ``track_path`` [T, N, 2],
    ``track_visibility`` [T, N] (all visible), and the canvas ``width`` / ``height``."""
    t = np.asarray(tracks, dtype=np.float32)
    path = [[[float(x), float(y)] for x, y in t[:, i]] for i in range(t.shape[1])]
    return json.dumps({"track_path": path, "track_visibility": [[True] * t.shape[0]] * t.shape[1],
                       "width": int(size[0]), "height": int(size[1])}) + "\n"


def follow_score(frames: np.ndarray, flow: np.ndarray, ids0: np.ndarray) -> dict:
    """How well the clip follows its conditioning flow: DIS flow of ``frames`` [T, H, W, 3] uint8 against ``flow``
    [T-1, 2, H, W], end-point error (pixels) at the frame-0 pixels of the regions (``ids0`` > 0), else of the pixels
    the flow moves by more than half a pixel, else of the whole frame."""
    from ..motion.optical_flow import chained_dis_flow

    flow = np.asarray(flow, dtype=np.float32)
    moving = np.linalg.norm(flow, axis=1).max(0) > 0.5
    if (ids0 > 0).any():
        inside, where = ids0 > 0, "regions"
    elif moving.any():
        inside, where = moving, "moving pixels"
    else:
        inside, where = np.ones(ids0.shape, bool), "whole frame"
    est = chained_dis_flow(frames)
    err = np.linalg.norm(est - flow, axis=1)[:, inside].mean(1)
    asked = np.linalg.norm(flow, axis=1)[:, inside].mean(1)
    return {"epe_px": round(float(err.mean()), 4), "per_frame_epe_px": [round(float(e), 4) for e in err],
            "asked_motion_px": round(float(asked.mean()), 4), "inside": where, "method": "DIS (chained), OpenCV"}
