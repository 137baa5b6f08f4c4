"""Cost of the perception front-ends at real size: SAM ViT-B image encoding and Depth Anything V2 ViT-S.

Random weights in the real architectures and real file layouts (written to a temporary folder and loaded
through the public loaders), one 256x256 EndoVis frame, CPU, 2 threads. For each model: load time, first
call, second call on the same frame (served by the content cache), and peak RSS. Each model runs in its own
child process so that the peak RSS figures do not mix. Ends with one JSON line.

    python benchmarks/perception.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _frame_256(clip: Path):
    import cv2

    from surgsora.video_io import read_video

    frame = read_video(clip, start=6, count=1)[0]
    return cv2.resize(frame, (256, 256), interpolation=cv2.INTER_AREA)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _cached_calls(fn, n: int = 5) -> tuple[float, float]:
    """(first, median) of ``n`` repeated calls; the median filters out scheduler noise on a shared machine."""
    times = [_timed(fn)[1] for _ in range(n)]
    return times[0], sorted(times)[n // 2]


def run_sam(tmp: Path, clip: Path) -> dict:
    import torch

    from surgsora.perception.sam import SAM_VARIANTS, build_sam, load_sam

    torch.manual_seed(0)
    path = tmp / "sam_vit_b_random.pth"
    torch.save(build_sam(SAM_VARIANTS["vit_b"]).state_dict(), path)
    image = torch.from_numpy(_frame_256(clip)).permute(2, 0, 1)[None].float() / 255
    rss_before = _rss_mb()
    seg, t_load = _timed(lambda: load_sam(path))
    emb, t_first = _timed(lambda: seg.encode(image))
    t_second, t_cached_median = _cached_calls(lambda: seg.encode(image))
    (masks, _), t_mask = _timed(lambda: seg.predict_masks(image, points=[[128, 128]]))
    assert emb.shape == (1, 256, 64, 64) and masks.shape == (1, 256, 256) and seg.encoder_images == 1
    return {"variant": seg.variant, "load_s": t_load, "first_s": t_first, "second_s": t_second,
            "cached_median_s": t_cached_median, "mask_from_click_s": t_mask, "peak_rss_mb": _rss_mb(),
            "rss_before_load_mb": rss_before}


def run_depth(tmp: Path, clip: Path) -> dict:
    import torch

    from surgsora.perception.depth import build_depth_model, convert_transformers_to_original, depth_config, load_depth_anything

    torch.manual_seed(0)
    path = tmp / "depth_anything_v2_vits_random.pth"  # the original layout, converted on load
    torch.save(convert_transformers_to_original(build_depth_model(depth_config("vits")).state_dict()), path)
    image = torch.from_numpy(_frame_256(clip)).permute(2, 0, 1)[None].float() / 255
    rss_before = _rss_mb()
    est, t_load = _timed(lambda: load_depth_anything(path))
    depth, t_first = _timed(lambda: est(image, input_size=266))
    t_second, t_cached_median = _cached_calls(lambda: est(image, input_size=266))
    _, t_518 = _timed(lambda: est(image, input_size=518))
    assert depth.shape == (1, 1, 256, 256) and est.model_images == 2
    return {"variant": est.variant, "load_s": t_load, "first_s": t_first, "second_s": t_second,
            "cached_median_s": t_cached_median, "first_at_518_s": t_518, "peak_rss_mb": _rss_mb(),
            "rss_before_load_mb": rss_before}


def child(part: str, clip: Path) -> None:
    import os

    import torch

    torch.set_num_threads(2)
    load = os.getloadavg()[0]
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        result = (run_sam if part == "sam" else run_depth)(Path(tmp), clip)
    result["load_avg_1min"] = load
    print(json.dumps(result))


def main() -> None:
    from endovis_clip import endovis_folder

    clip = endovis_folder() / "clip.mp4"
    results = {}
    for part in ("sam", "depth"):
        proc = subprocess.run([sys.executable, __file__, "--part", part, str(clip)], capture_output=True, text=True,
                              cwd=REPO)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"benchmark part {part!r} failed")
        results[part] = json.loads(proc.stdout.strip().splitlines()[-1])
    sam, depth = results["sam"], results["depth"]
    print(f"SAM ViT-B ({sam['variant']}), 256x256 frame, CPU 2 threads")
    print(f"  load {sam['load_s']:.2f} s   encode first {sam['first_s']:.3f} s   "
          f"second (cached) {sam['second_s'] * 1000:.2f} ms (median of 5: {sam['cached_median_s'] * 1000:.2f} ms)")
    print(f"  mask from one click {sam['mask_from_click_s'] * 1000:.1f} ms   peak RSS {sam['peak_rss_mb']:.0f} MB")
    print(f"Depth Anything V2 ViT-S ({depth['variant']}), 256x256 frame at input 266, CPU 2 threads")
    print(f"  load {depth['load_s']:.2f} s   first {depth['first_s']:.3f} s   "
          f"second (cached) {depth['second_s'] * 1000:.2f} ms (median of 5: {depth['cached_median_s'] * 1000:.2f} ms)")
    print(f"  first at input 518 {depth['first_at_518_s']:.3f} s   peak RSS {depth['peak_rss_mb']:.0f} MB")
    summary = {
        "benchmark": "perception",
        "frame": "endovis17 f06 256x256",
        "clip": str(clip),
        "sam_vit_b_load_s": round(sam["load_s"], 3),
        "sam_vit_b_encode_first_s": round(sam["first_s"], 3),
        "sam_vit_b_encode_second_s": round(sam["second_s"], 5),
        "sam_cached_median_s": round(sam["cached_median_s"], 5),
        "sam_second_over_first": round(sam["second_s"] / sam["first_s"], 5),
        "sam_mask_from_click_s": round(sam["mask_from_click_s"], 4),
        "sam_peak_rss_mb": round(sam["peak_rss_mb"]),
        "dav2_vits_load_s": round(depth["load_s"], 3),
        "dav2_vits_first_s": round(depth["first_s"], 3),
        "dav2_vits_second_s": round(depth["second_s"], 5),
        "dav2_cached_median_s": round(depth["cached_median_s"], 5),
        "dav2_second_over_first": round(depth["second_s"] / depth["first_s"], 5),
        "dav2_vits_first_at_518_s": round(depth["first_at_518_s"], 3),
        "dav2_peak_rss_mb": round(depth["peak_rss_mb"]),
        "cpu_load_avg_at_start": round(max(sam["load_avg_1min"], depth["load_avg_1min"]), 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--part":
        child(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
