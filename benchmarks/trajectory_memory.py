"""Peak memory of the motion preview as the number of tracks (and frames) grows.

    python benchmarks/trajectory_memory.py [--tracks 10 100 1000 5000] [--frames 14] [--masks]

Each point runs ``python -m surgsora preview`` on frame 6 of the real EndoVis clip at the default preview
size (512x288, 14 frames) in a fresh subprocess, with N random tracks (fixed seed; 3 points each, 40 %
of them static anchors) and, with ``--masks``, the two instrument masks of the clip (tracks inside them
go through the regions' smooth fields, the rest through the background). Reported per point: the peak
resident memory of that process (``ru_maxrss``), the resident memory after imports alone, and the wall
time. ``--frames-sweep`` instead varies ``--frames`` at 10 tracks, which is what calibrates the CLI's
memory estimate (``surgsora.cli.BYTES_PER_PIXEL_FRAME``). Target: peak RSS flat within 2x from 10 to 5000
tracks. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child(argv: list[str]) -> None:
    """Run one preview in this process and print its peak RSS (MB) as JSON."""
    sys.path.insert(0, str(REPO))
    import torch  # noqa: F401 - measured as part of the baseline

    import surgsora.cli as cli

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    print(json.dumps({"code": code, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "after_imports_mb": base, "seconds": round(time.perf_counter() - t0, 2)}))


def _tracks(n: int, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    w, h = 1920, 1080
    tracks = []
    for i in range(n):
        x, y = rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h
        if rng.random() < 0.4:
            tracks.append([[x, y]])
        else:
            dx, dy = rng.normal(0, 60, 2)
            tracks.append([[x, y], [x + dx / 2, y + dy / 2], [x + dx, y + dy]])
    return {"width": w, "height": h, "tracks": tracks}


def run_point(n: int, frames: int, masks: bool, tmp: Path, data: Path) -> dict:
    tracks = tmp / f"tracks_{n}.json"
    tracks.write_text(json.dumps(_tracks(n)))
    argv = ["preview", "--image", str(data / "clip.mp4"), "--frame-index", "6", "--tracks", str(tracks),
            "--frames", str(frames), "--out", str(tmp / f"p{n}_{frames}.mp4")]
    if masks:
        argv += ["--masks", str(data / "mask_left_instrument_f06.png"), str(data / "mask_right_instrument_f06.png")]
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(argv)], capture_output=True, text=True,
                          cwd=REPO, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"preview with {n} tracks failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(tracks=n, frames=frames, masks=masks)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tracks", type=int, nargs="+", default=[10, 100, 1000, 5000])
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--masks", action="store_true", help="also pass the clip's two instrument masks")
    ap.add_argument("--frames-sweep", type=int, nargs="*", default=None,
                    help="vary --frames (10 tracks) instead, e.g. --frames-sweep 14 56 112")
    a = ap.parse_args()
    if a.child:
        _child(json.loads(a.child))
        return
    from endovis_clip import endovis_folder

    data = endovis_folder()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        points = [(10, f) for f in a.frames_sweep] if a.frames_sweep else [(n, a.frames) for n in a.tracks]
        for n, frames in points:
            r = run_point(n, frames, a.masks, Path(d), data)
            rows.append(r)
            print(f"tracks {n:>5}  frames {frames:>4}  peak RSS {r['peak_mb']:8.1f} MB  (after imports "
                  f"{r['after_imports_mb']:.1f} MB)  {r['seconds']:6.2f} s", flush=True)
    peaks = [r["peak_mb"] for r in rows]
    summary = {"rows": rows, "peak_ratio_max_over_min": round(max(peaks) / min(peaks), 3)}
    if a.frames_sweep and len(rows) >= 2:
        import numpy as np

        px = 512 * 288  # the default preview size of the clip
        slope = np.polyfit([r["frames"] for r in rows], [r["peak_mb"] * 2**20 for r in rows], 1)[0]
        summary["bytes_per_pixel_frame"] = round(float(slope) / px, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
