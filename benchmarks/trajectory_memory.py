"""Peak memory of the motion preview as the number of tracks (and frames) grows.

    python benchmarks/trajectory_memory.py [--tracks 10 100 1000 5000] [--frames 14] [--masks]

Each point runs ``python -m surgsora preview`` on frame 6 of the real EndoVis clip at the default preview
size (512x288, 14 frames) in a fresh subprocess, with N random tracks (fixed seed; 3 points each, 40 %
of them static anchors) and, with ``--masks``, the two instrument masks of the clip (tracks inside them
go through the regions' smooth fields, the rest through the background). Reported per point: the peak
resident memory of that process (``ru_maxrss``), the resident memory after imports alone, and the wall
time. ``--frames-sweep`` instead varies ``--frames`` at 10 tracks, which is what calibrates the CLI's
memory estimate (``surgsora.cli.estimate_memory``). Target: peak RSS flat within 2x from 10 to 5000
tracks. Ends with one JSON line.

``--sizes 25x512x288 81x832x480 81x1280x720`` (FRAMESxWIDTHxHEIGHT) instead runs ``python -m surgsora preview`` on
the demo frame and the demo tracks (``demo/``) at each size, one fresh process at a time, and reports its wall time,
peak RSS (``ru_maxrss`` of the child, from ``wait4``), the CLI's estimate and the ratios against the first size
(target for the video-model sizes: peak RSS within 1.5x of 25x512x288, issue 21).
"""

from __future__ import annotations

import argparse
import json
import os
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


def preview_runs(sizes: list[str], extra: list[str] | None = None, repo: Path = REPO) -> list[dict]:
    """``python -m surgsora preview`` on the demo frame and tracks per FRAMESxWIDTHxHEIGHT, each in a fresh process:
    wall time and that process's peak RSS; ratios against the first size. ``repo``: the checkout whose ``surgsora``
    runs (another one gives a baseline on the same machine)."""
    sys.path.insert(0, str(REPO))
    from surgsora.cli import estimate_memory

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            frames, width, height = (int(v) for v in size.lower().split("x"))
            demo = REPO / "demo"
            cmd = [sys.executable, "-m", "surgsora", "preview", "--image", str(demo / "surgsora_endovis_frame6.png"),
                   "--tracks", str(demo / "tracks_endovis.json"), "--frames", str(frames),
                   "--size", f"{width}x{height}", "--out", str(Path(tmp) / f"preview_{size}.mp4"), *(extra or [])]
            log = Path(tmp) / "log.txt"
            with open(log, "wb") as sink:  # a file, not a pipe: wait4 reaps the child itself (for its rusage)
                t0 = time.perf_counter()
                proc = subprocess.Popen(cmd, cwd=repo, stdout=sink, stderr=subprocess.STDOUT)
                _, status, usage = os.wait4(proc.pid, 0)
                seconds = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode:
                raise SystemExit(f"preview at {size} failed:\n{log.read_text(errors='replace')[-2000:]}")
            peak = usage.ru_maxrss / 1024
            rows.append({"size": size, "seconds": round(seconds, 1), "peak_rss_mb": round(peak),
                         "estimate_mb": round(estimate_memory((width, height), frames, streamed=True) / 2**20)})
            print(f"{size:>14}  {rows[-1]['seconds']:7.1f} s  peak RSS {rows[-1]['peak_rss_mb']:6d} MB  "
                  f"(CLI estimate {rows[-1]['estimate_mb']} MB)", flush=True)
    for r in rows:
        r["rss_vs_first"] = round(r["peak_rss_mb"] / rows[0]["peak_rss_mb"], 2)
        r["time_vs_first"] = round(r["seconds"] / rows[0]["seconds"], 2)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tracks", type=int, nargs="+", default=[10, 100, 1000, 5000])
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--masks", action="store_true", help="also pass the clip's two instrument masks")
    ap.add_argument("--frames-sweep", type=int, nargs="*", default=None,
                    help="vary --frames (10 tracks) instead, e.g. --frames-sweep 14 56 112")
    ap.add_argument("--sizes", nargs="+", default=None,
                    help="FRAMESxWIDTHxHEIGHT: time and peak RSS of the demo preview per size (see above)")
    ap.add_argument("--repo", default=str(REPO), help="with --sizes: run the surgsora package of this checkout (a "
                    "baseline), on this checkout's demo frame and tracks")
    a = ap.parse_args()
    if a.child:
        _child(json.loads(a.child))
        return
    if a.sizes:
        rows = preview_runs(a.sizes, repo=Path(a.repo).resolve())
        print(json.dumps({"sizes": rows, "rss_ratio_max": max(r["rss_vs_first"] for r in rows)}))
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
