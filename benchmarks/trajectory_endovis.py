"""Trajectory Controller on a real surgical clip: decoded flow vs ground-truth flow, and the motion preview.

    python benchmarks/trajectory_endovis.py [--clip CLIP.mp4] [--size 256]

Default clip: the full-resolution one in ../shared when present, else the repository's copy (endovis_clip.py).

Frames 6..19 of the EndoVis 2017 clip are resized to 256x256. Ground-truth flow 0 -> t comes from the
real frames (OpenCV DIS, chained frame to frame and composed: ``surgsora.motion.optical_flow.estimate_flow``).
A few tracks are picked on each instrument from that ground truth (k-means centres of the instrument
mask at frame 6, each following the median ground-truth motion of a 9x9 patch), rasterised, and decoded by the
mask-aware analytic decoder with the ground-truth instrument masks. Reported, as end-point error
(mean pixel distance) inside the instrument masks and over the whole frame:

* ``epe_mask`` / ``epe_all``: the analytic decoder;
* ``epe_mask_zero`` / ``epe_all_zero``: zero flow;
* ``epe_all_nomask``: each track's motion copied to the whole frame without masks (every pixel takes
  the motion of its nearest track).

The motion preview (first frame forward-warped by the decoded flow) is compared with the real frames
(PSNR / SSIM over frames 1..13) next to the repeated first frame. ``decode_ms`` is the median decoder
time on one CPU thread (``decode_ms_t21``: the same tracks resampled to 21 frames).

The motion signal (what fills the pixels an instrument uncovers) is compared three ways, each warped by
the ground-truth flow (``gt_*``, as the issue measured it) and by the decoded flow (no prefix):

* ``preview_*``: the old preview, average splatting with holes filled from the first frame;
* ``telea_*``: the same, with the holes (coverage < 0.5) inpainted per frame by OpenCV Telea instead;
* ``signal_*``: :func:`surgsora.motion.preview.motion_signal` with the instrument masks as regions
  (softmax splatting with the smaller instrument in front, disocclusions from the inpainted background).

For each, ``*_psnr`` / ``*_ssim`` over the whole frame and ``*_disocc_psnr``, the PSNR pooled over the
disoccluded pixels: instrument pixels of frame 0 that the instruments, moved by their ground-truth flow,
no longer cover at frame t (a property of the real scene, the same pixels for every method;
``disocc_fraction`` of all pixels of frames 1..13). ``static_disocc_psnr``: the repeated first frame
there. ``signal_ms``: motion_signal's time (one thread).

Targets: ``epe_mask <= 0.5 * epe_mask_zero``, ``epe_all < epe_all_nomask``, ``preview_psnr > static_psnr``,
and on the ground-truth flow ``gt_signal_disocc_psnr`` above both ``gt_telea_disocc_psnr`` (Telea is the floor)
and ``gt_preview_disocc_psnr``. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from surgsora.motion.analytic_flow import AnalyticDecoder  # noqa: E402
from surgsora.motion.optical_flow import estimate_flow  # noqa: E402
from surgsora.motion.occlusion import inpaint  # noqa: E402
from surgsora.motion.preview import motion_preview, motion_signal  # noqa: E402
from surgsora.motion.splat import sum_splat  # noqa: E402
from surgsora.motion.tracks import rasterize, resample_track  # noqa: E402
from surgsora.video_io import read_image, read_video  # noqa: E402


# ------------------------------------------------------------------------------------- metric code

def flow_epe(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean end-point error between flows [F, 2, H, W] over all frames, inside ``mask`` [H, W] if given."""
    err = np.sqrt(((np.asarray(pred, np.float64) - np.asarray(gt, np.float64)) ** 2).sum(1))  # [F, H, W]
    if mask is None:
        return float(err.mean())
    m = np.asarray(mask, bool)
    if not m.any():
        raise ValueError("the mask is empty; EPE inside it is undefined")
    return float(err[:, m].mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1] (any matching shape)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def video_scores(pred: np.ndarray, real: np.ndarray) -> tuple[float, float]:
    """Mean per-frame PSNR and SSIM of videos [T, H, W, 3] in [0, 1], over frames 1..T-1 (frame 0 is given)."""
    from skimage.metrics import structural_similarity

    p = [psnr(pred[t], real[t]) for t in range(1, len(real))]
    s = [structural_similarity(pred[t], real[t], channel_axis=-1, data_range=1.0) for t in range(1, len(real))]
    return float(np.mean(p)), float(np.mean(s))


def disoccluded_pixels(masks: np.ndarray, gt_flow: np.ndarray) -> np.ndarray:
    """Instrument pixels of frame 0 that the instruments no longer cover at frame t -> [T-1, H, W] bool.

    ``masks`` [M, H, W] at frame 0; each instrument is moved by the ground-truth flow [T-1, 2, H, W]
    (summation splatting of its mask) and counts as covering a pixel where at least half a pixel lands.
    """
    union = torch.from_numpy(np.asarray(masks, bool).any(0).astype(np.float32))
    flow = torch.from_numpy(np.asarray(gt_flow, np.float32))
    moved = sum_splat(union[None, None].expand(len(flow), 1, *union.shape).contiguous(), flow)[:, 0].numpy()
    return union.numpy()[None].astype(bool) & (moved < 0.5)


def pooled_psnr(pred: np.ndarray, real: np.ndarray, where: np.ndarray) -> float:
    """PSNR over the pixels ``where`` [T-1, H, W] of frames 1..T-1 of videos [T, H, W, 3], pooled over frames."""
    if not where.any():
        raise ValueError("no disoccluded pixels: PSNR over them is undefined")
    return psnr(pred[1:][where], real[1:][where])


def telea_preview(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """The old preview with its holes (splat coverage < 0.5) inpainted per frame by OpenCV Telea -> [B, T, 3, H, W]."""
    b, f, _, h, w = flow.shape
    video = motion_preview(image, flow)
    coverage = sum_splat(torch.ones(b * f, 1, h, w), flow.reshape(b * f, 2, h, w))
    frames = inpaint(video[:, 1:].reshape(b * f, 3, h, w), coverage < 0.5, method="telea")
    return torch.cat([video[:, :1], frames.view(b, f, 3, h, w)], 1)


def signal_figures(image: torch.Tensor, flow: torch.Tensor, regions: torch.Tensor, real: np.ndarray,
                   disocc: np.ndarray, prefix: str = "") -> dict:
    """Whole-frame PSNR/SSIM and disoccluded PSNR of the old preview, its Telea variant and the motion signal."""
    videos = {
        "preview": motion_preview(image, flow),
        "telea": telea_preview(image, flow),
        "signal": motion_signal(image, flow, regions=regions)[0],
    }
    out = {}
    for name, video in videos.items():
        v = video[0].permute(0, 2, 3, 1).numpy()
        p, s = video_scores(v, real)
        out[f"{prefix}{name}_psnr"], out[f"{prefix}{name}_ssim"] = p, s
        out[f"{prefix}{name}_disocc_psnr"] = pooled_psnr(v, real, disocc)
    return out


def nearest_track_flow(tracks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """No-mask baseline: every pixel copies the motion of its nearest track. tracks [N, T, 2] -> [T-1, 2, H, W]."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    d2 = (xs[None] - tracks[:, 0, 0, None, None]) ** 2 + (ys[None] - tracks[:, 0, 1, None, None]) ** 2
    nearest = d2.argmin(0)  # [H, W]
    disp = tracks[:, 1:] - tracks[:, :1]  # [N, T-1, 2]
    return disp[nearest].transpose(2, 3, 0, 1).astype(np.float32)


def pick_tracks(gt_flow: np.ndarray, mask: np.ndarray, count: int = 3, patch: int = 9) -> np.ndarray:
    """``count`` tracks spread over ``mask`` [H, W] following ``gt_flow`` [F, 2, H, W] -> [count, F+1, 2].

    Where a user would click: the centres of ``count`` k-means clusters of the mask pixels (started
    from farthest-point sampling, so the result is deterministic), each moved to the nearest pixel at
    least 2 px inside the mask. A track follows the median ground-truth flow of the mask pixels in a
    ``patch`` x ``patch`` window around its start (a user follows what the instrument part does, not
    the noise of one pixel).
    """
    m = np.asarray(mask, bool)
    if not m.any():
        raise ValueError("cannot pick tracks on an empty mask")
    depth = cv2.distanceTransform(np.pad(m, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    ys, xs = np.nonzero(m)
    pts = np.stack([xs, ys], 1).astype(np.float64)
    centres = [pts[int(np.argmax(depth[ys, xs]))]]
    dist = np.full(len(pts), np.inf)
    for _ in range(1, count):
        dist = np.minimum(dist, ((pts - centres[-1]) ** 2).sum(1))
        centres.append(pts[int(np.argmax(dist))])
    centres = np.stack(centres)
    for _ in range(25):  # Lloyd iterations
        label = ((pts[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        centres = np.stack([pts[label == i].mean(0) if (label == i).any() else centres[i] for i in range(count)])
    inner = depth[ys, xs] >= min(2.0, depth.max())
    r = patch // 2
    h, w = m.shape
    tracks = []
    for c in centres:
        cand = np.flatnonzero(inner)
        i = cand[np.argmin(((pts[cand] - c) ** 2).sum(1))]
        x, y = int(xs[i]), int(ys[i])
        y0, y1, x0, x1 = max(0, y - r), min(h, y + r + 1), max(0, x - r), min(w, x + r + 1)
        window = gt_flow[:, :, y0:y1, x0:x1][:, :, m[y0:y1, x0:x1]]  # [F, 2, P]
        disp = np.median(window, axis=2)  # [F, 2]
        start = np.array([x + 0.5, y + 0.5])
        tracks.append(np.concatenate([start[None], start[None] + disp], 0))
    return np.stack(tracks).astype(np.float32)


def evaluate(frames: np.ndarray, gt_flow: np.ndarray, masks: np.ndarray, tracks_per_region: int = 3,
             decoder: AnalyticDecoder | None = None, repeats: int = 10) -> dict:
    """All benchmark figures for frames [T, H, W, 3] uint8, ground truth [T-1, 2, H, W], masks [M, H, W]."""
    decoder = decoder or AnalyticDecoder()
    T, h, w = frames.shape[:3]
    tracks = np.concatenate([pick_tracks(gt_flow, m, tracks_per_region) for m in masks])
    image = torch.from_numpy(frames[0]).permute(2, 0, 1).float().div(255).unsqueeze(0)
    region = torch.from_numpy(masks.astype(np.float32)).unsqueeze(0)
    sparse, smask = rasterize(tracks, (h, w))
    flow = decoder(image, sparse, smask, region_masks=region)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        decoder(image, sparse, smask, region_masks=region)
        times.append(time.perf_counter() - t0)
    # The same tracks over 21 frames (SVD-xt length) for the speed target.
    t21 = np.stack([resample_track(t, 21) for t in tracks])
    sparse21, smask21 = rasterize(t21, (h, w))
    times21 = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        decoder(image, sparse21, smask21, region_masks=region)
        times21.append(time.perf_counter() - t0)

    pred = flow[0].numpy()
    union = masks.any(0)
    zero = np.zeros_like(gt_flow)
    nomask = nearest_track_flow(tracks.astype(np.float64), (h, w))
    real = frames.astype(np.float32) / 255.0
    static = np.repeat(real[:1], T, axis=0)
    static_psnr, static_ssim = video_scores(static, real)
    disocc = disoccluded_pixels(masks, gt_flow)
    # The old preview's scores (preview_psnr, preview_ssim) come with the signal comparison on the decoded flow.
    decoded = signal_figures(image, flow, region, real, disocc)
    truth = signal_figures(image, torch.from_numpy(np.asarray(gt_flow, np.float32))[None], region, real, disocc, "gt_")
    times_signal = []
    for _ in range(max(1, repeats // 5)):
        t0 = time.perf_counter()
        motion_signal(image, flow, regions=region)
        times_signal.append(time.perf_counter() - t0)
    return {
        "epe_mask": flow_epe(pred, gt_flow, union),
        "epe_mask_zero": flow_epe(zero, gt_flow, union),
        "epe_all": flow_epe(pred, gt_flow),
        "epe_all_zero": flow_epe(zero, gt_flow),
        "epe_all_nomask": flow_epe(nomask, gt_flow),
        "epe_mask_nomask": flow_epe(nomask, gt_flow, union),
        "static_psnr": static_psnr,
        "static_ssim": static_ssim,
        **decoded,
        **truth,
        "static_disocc_psnr": pooled_psnr(static, real, disocc),
        "disocc_fraction": float(disocc.mean()),
        "signal_ms": 1000 * float(np.median(times_signal)),
        "decode_ms": 1000 * float(np.median(times)),
        "decode_ms_t21": 1000 * float(np.median(times21)),
        "num_tracks": int(len(tracks)),
    }


# ------------------------------------------------------------------------------------------- main

def load_clip(clip: Path, start: int, count: int, size: int, mask_paths: list[Path]):
    frames = read_video(clip, start=start, count=count)
    if len(frames) < count:
        raise SystemExit(f"{clip} has only {len(frames)} frames from index {start}; need {count}.")
    frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])
    masks = []
    for p in mask_paths:
        m = (read_image(p)[..., 0] > 0).astype(np.float32)
        masks.append(cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA) > 0.5)
    return frames, np.stack(masks)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", type=Path, default=None, help="default: the EndoVis clip (see endovis_clip.py)")
    ap.add_argument("--masks", type=Path, nargs="+", default=None,
                    help="instrument masks at the first frame (>0 is instrument); default: the two next to the clip")
    ap.add_argument("--start", type=int, default=6)
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--tracks", type=int, default=3, help="tracks per instrument")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 by default: an upper bound on the cost, and stable on a shared machine "
                         "(OpenMP threads stall badly when other processes hold the cores)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.clip is None:
        from endovis_clip import endovis_folder

        args.clip = endovis_folder() / "clip.mp4"
    mask_paths = args.masks or [args.clip.parent / "mask_left_instrument_f06.png",
                                args.clip.parent / "mask_right_instrument_f06.png"]
    frames, masks = load_clip(args.clip, args.start, args.frames, args.size, mask_paths)
    gt = estimate_flow(frames, method="dis")
    res = evaluate(frames, gt, masks, tracks_per_region=args.tracks)
    res["targets_met"] = bool(res["epe_mask"] <= 0.5 * res["epe_mask_zero"] and res["epe_all"] < res["epe_all_nomask"]
                              and res["preview_psnr"] > res["static_psnr"]
                              and res["gt_signal_disocc_psnr"] > max(res["gt_telea_disocc_psnr"],
                                                                     res["gt_preview_disocc_psnr"]))
    print(f"clip {args.clip.name}: frames {args.start}..{args.start + args.frames - 1} at {args.size}px, "
          f"{res['num_tracks']} tracks on {len(masks)} instruments")
    print(f"EPE inside instruments: analytic {res['epe_mask']:.3f} px | zero {res['epe_mask_zero']:.3f} | "
          f"no-mask copy {res['epe_mask_nomask']:.3f}")
    print(f"EPE whole frame:        analytic {res['epe_all']:.3f} px | zero {res['epe_all_zero']:.3f} | "
          f"no-mask copy {res['epe_all_nomask']:.3f}")
    print(f"preview PSNR {res['preview_psnr']:.2f} dB / SSIM {res['preview_ssim']:.4f} vs repeated first frame "
          f"{res['static_psnr']:.2f} dB / {res['static_ssim']:.4f}")
    print(f"motion signal vs the real frames, PSNR dB / SSIM over whole frames | PSNR dB on the disoccluded "
          f"pixels ({100 * res['disocc_fraction']:.1f}% of pixels; repeated first frame there "
          f"{res['static_disocc_psnr']:.2f} dB):")
    for flow_name, p in (("ground-truth flow", "gt_"), ("decoded flow", "")):
        for name, label in (("preview", "first-frame fill (old)"), ("telea", "Telea hole fill"),
                            ("signal", "motion_signal (new)")):
            print(f"  {flow_name:<17} {label:<22} {res[p + name + '_psnr']:6.2f} / {res[p + name + '_ssim']:.4f} | "
                  f"{res[p + name + '_disocc_psnr']:6.2f}")
    print(f"motion_signal {res['signal_ms']:.0f} ms (T={args.frames}, {args.size}x{args.size}, one thread)")
    print(f"decode {res['decode_ms']:.1f} ms (T={args.frames}), {res['decode_ms_t21']:.1f} ms (T=21) at "
          f"{args.size}x{args.size}; targets met: {res['targets_met']}")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))
    return res


if __name__ == "__main__":
    main()
