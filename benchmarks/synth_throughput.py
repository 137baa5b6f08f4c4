"""`python -m surgsora synth`: throughput over processes, and what a clip costs outside the sampler.

1. Clips per minute with 1 and 2 processes on this machine (tiny random models, ``--clips`` clips of the real
   EndoVis frame with its demo tracks and instrument masks): one process runs ``python -m surgsora.synth``, N > 1
   run ``torchrun --nproc_per_node N -m surgsora.synth`` (without GPUs ``accelerate launch`` starts one process). Rates are clips over the run's own time
   (from its summary line: validation, model loading and merging included) and over the wall clock of the command
   (interpreter start-up too), with ``--threads`` torch threads in every process. Target: 2 processes >= 1.6x one.
2. Everything after the sampler for one 25-frame 1024x576 clip (labels carried along the flow, follow score, H.264
   encoding, masks, flow.npz, tracks.json, checksums and meta.json): time and peak RSS, measured in a fresh process
   on a stand-in video (the motion signal of the real frame: real content, the sampler's output shape).
3. One real-size SVD UNet step (diffusers defaults = SVD/SVD-xt, random weights) at 1024x576, measured in the same
   run on ``--step-frames`` frames (a full 25-frame CFG step does not fit a small CPU machine's time) and scaled
   linearly to 25 frames x 2 (classifier-free guidance): a lower bound, since temporal attention grows faster.
   Target: (2) below one step.

    python benchmarks/synth_throughput.py [--clips 64] [--processes 1 2] [--threads 1] [--mode ttm] [--step-frames 1]
        [--skip-throughput] [--skip-cost] [--skip-step]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared" / "data" / "endovis17_clip"  # full-resolution copy, when present
FRAME = REPO / "demo" / "surgsora_endovis_frame6.png"
TRACKS = REPO / "demo" / "tracks_endovis.json"
MASKS = [REPO / "demo" / "endovis17" / f"mask_{s}_instrument_f06.png" for s in ("left", "right")]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


# ================================================================================= 1. throughput

def write_jobs(folder: Path, clips: int, mode: str, per_row: int = 8) -> Path:
    """``clips`` clips: rows of the real frame, each with ``per_row`` clips (the drawn motion and its variants)."""
    rows, left = [], clips
    while left > 0:
        n = min(per_row, left)
        rows.append(f"r{len(rows):03d},{FRAME},{TRACKS},{mode},,,{len(rows)},{n - 1},{';'.join(map(str, MASKS))}")
        left -= n
    path = folder / "jobs.csv"
    path.write_text("\n".join(["id,image,tracks,mode,frames,size,seed,variants,masks", *rows]) + "\n")
    return path


def run_synth(jobs: Path, out: Path, processes: int, size: int, frames: int, steps: int, threads: int) -> dict:
    flags = ["--jobs", str(jobs), "--out", str(out), "--tiny-models", "--steps", str(steps), "--frames", str(frames),
             "--size", f"{size}x{size}", "--no-progress"]
    if processes == 1:
        cmd = [sys.executable, "-m", "surgsora.synth", *flags]
    else:
        # torchrun's environment, which accelerate's PartialState reads: `accelerate launch --cpu --num_processes N`
        # starts a single process on a machine without GPUs
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(port), "-m", "surgsora.synth", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # per process, the same for every N
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"synth with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    summary = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    return {"processes": processes, "clips": summary["clips"], "run_s": summary["seconds"], "wall_s": round(wall, 2),
            "clips_per_min": round(60 * summary["clips"] / summary["seconds"], 2),
            "clips_per_min_wall": round(60 * summary["clips"] / wall, 2)}


# ================================================================================= 2. after the sampler

def _cost_worker(size: tuple[int, int], frames: int, repeats: int, queue) -> None:
    import numpy as np
    import torch

    from surgsora.cli_inputs import masks_arg, resize_frame as resize
    from surgsora.motion.analytic_flow import AnalyticDecoder
    from surgsora.motion.preview import motion_signal
    from surgsora.motion.tracks import prepare_tracks, tracks_to_flow
    from surgsora.sampling.generate import Generated
    from surgsora.synth.clip import ClipEnv, encode_mp4, write_labelled_clip
    from surgsora.synth.jobs import Clip, JobRow
    from surgsora.synth.labels import carry_regions, follow_score, instance_ids, order_metric
    from surgsora.synth.run import versions
    from surgsora.video_io import read_image, read_video

    frame = read_video(SHARED / "clip.mp4", start=6, count=1)[0] if (SHARED / "clip.mp4").is_file() \
        else read_image(FRAME)
    h0, w0 = frame.shape[:2]
    image = torch.from_numpy(resize(frame, size)).permute(2, 0, 1).float().div(255)[None]
    tracks = prepare_tracks(TRACKS.read_text(), canvas_size=(640, 360), size=size, num_frames=frames)
    regions = masks_arg([str(m) for m in MASKS], size, (640, 360), resize=True)
    with torch.no_grad():
        flow = tracks_to_flow(AnalyticDecoder(), image, tracks, size, regions)
        video = motion_signal(image, flow, regions=regions)[0][0]  # [T, 3, H, W]: the sampler's output shape
    made = Generated(video=video, flow=flow, regions=regions)
    rss_inputs = peak_rss_gb()
    row = JobRow(line=2, id="bench", image=FRAME, image_text=str(FRAME), tracks_text=TRACKS.read_text(),
                 tracks_source=str(TRACKS), mode="ttm", frames=frames, size=size, seed=0, variants=0,
                 frame_size=(w0, h0), tracks=tracks, masks=tuple(MASKS))
    sampling = dict(steps=50, min_cfg=1.0, max_cfg=3.0, fps=7.0, motion_bucket_id=17, noise_aug_strength=0.02,
                    control_scale=1.0, t_weak=0.32, t_strong=0.42, decode_chunk=8)
    stages: dict[str, list[float]] = {"total": [], "labels": [], "follow score": [], "encode": []}
    with tempfile.TemporaryDirectory() as tmp:
        env = ClipEnv(out=Path(tmp), models={}, mode_of={"bench": "ttm"}, sampling={"ttm": sampling},
                      model_info={"ttm": {}}, jitter=(15.0, 0.25), versions=versions())
        for r in range(repeats):
            clip = Clip(id=f"bench-v{r}", row=row, variant=0, seed=0, order=r)
            t0 = time.perf_counter()
            write_labelled_clip(clip, env, "ttm", made, tracks, [], regions, "masks")
            stages["total"].append(time.perf_counter() - t0)
            # The main parts alone, for the breakdown.
            t0 = time.perf_counter()
            ids0 = instance_ids(regions, size)
            carry_regions(ids0, flow, order_metric(regions, None, size), 2)
            stages["labels"].append(time.perf_counter() - t0)
            u8 = (np.clip(video.permute(0, 2, 3, 1).numpy(), 0, 1) * 255 + 0.5).astype(np.uint8)
            t0 = time.perf_counter()
            follow_score(u8, flow[0].numpy(), ids0.numpy())
            stages["follow score"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            encode_mp4(Path(tmp) / "x.mp4", u8, 7.0)
            stages["encode"].append(time.perf_counter() - t0)
    queue.put({"size": list(size), "frames": frames, "median_s": {k: round(sorted(v)[len(v) // 2], 3)
                                                                   for k, v in stages.items()},
               "peak_rss_gb": round(peak_rss_gb(), 2), "peak_rss_inputs_gb": round(rss_inputs, 2)})


def after_sampler_cost(size, frames, repeats) -> dict:
    ctx = mp.get_context("spawn")  # a fresh process: its peak RSS is this measurement's alone
    q = ctx.Queue()
    p = ctx.Process(target=_cost_worker, args=(size, frames, repeats, q))
    p.start()
    out = q.get()
    p.join()
    return out


# ================================================================================= 3. one SVD step

def svd_step(size: tuple[int, int], frames: int, full_frames: int) -> dict:
    import torch
    from diffusers import UNetSpatioTemporalConditionModel

    from surgsora.model.unet import unet_forward

    t0 = time.perf_counter()
    unet = UNetSpatioTemporalConditionModel().eval().requires_grad_(False)  # diffusers defaults = SVD / SVD-xt
    build = time.perf_counter() - t0
    w, h = size
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, frames, 8, h // 8, w // 8, generator=g)
    ehs = torch.randn(1, 1, 1024, generator=g)
    time_ids = torch.tensor([[6.0, 127.0, 0.02]])
    with torch.no_grad():
        t0 = time.perf_counter()
        unet_forward(unet, sample, torch.tensor(1.5), ehs, time_ids)
        step = time.perf_counter() - t0
    return {"size": list(size), "frames_measured": frames, "build_s": round(build, 1), "step_s": round(step, 2),
            "step_25_frames_cfg_s_estimate": round(step * full_frames / frames * 2, 1),
            "peak_rss_gb": round(peak_rss_gb(), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mode", default="ttm", choices=["ttm", "surgsora"], help="tiny models' mode (ttm: fastest)")
    ap.add_argument("--size", type=int, default=64, help="throughput clips: square working size")
    ap.add_argument("--frames", type=int, default=4, help="throughput clips: frames")
    ap.add_argument("--steps", type=int, default=2, help="throughput clips: denoising steps")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (OMP_NUM_THREADS), the same for every process count: the scaling "
                         "then measures the sharding, not a change of threads")
    ap.add_argument("--repeats", type=int, default=2, help="after-sampler cost: repeats (median)")
    ap.add_argument("--step-frames", type=int, default=1, help="real-size SVD step: frames measured")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-step", action="store_true")
    args = ap.parse_args()
    result: dict = {"cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}

    if not args.skip_throughput:
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            jobs = write_jobs(Path(tmp), args.clips, args.mode)
            for n in args.processes:
                out = Path(tmp) / f"out{n}"
                runs.append(run_synth(jobs, out, n, args.size, args.frames, args.steps, args.threads))
                print(f"{n} process(es): {runs[-1]['clips']} clips in {runs[-1]['run_s']:.1f} s "
                      f"({runs[-1]['clips_per_min']:.1f} clips/min; wall {runs[-1]['wall_s']:.1f} s, "
                      f"{runs[-1]['clips_per_min_wall']:.1f} clips/min)", flush=True)
                if n != args.processes[0]:  # the same bytes whatever the process count (same threads each)
                    runs[-1]["same_index_as_first"] = (out / "index.jsonl").read_bytes() == \
                        (Path(tmp) / f"out{args.processes[0]}" / "index.jsonl").read_bytes()
                shutil.rmtree(out / "clips", ignore_errors=True)
        result["throughput"] = runs
        if len(runs) > 1:
            result["scaling"] = round(runs[-1]["clips_per_min"] / runs[0]["clips_per_min"], 2)
            print(f"scaling {runs[-1]['processes']} / {runs[0]['processes']} processes: {result['scaling']}x "
                  f"(target >= 1.6x for 2)")
    if not args.skip_cost:
        cost = after_sampler_cost((1024, 576), 25, args.repeats)
        result["after_sampler"] = cost
        print(f"after the sampler, one 25-frame 1024x576 clip: {cost['median_s']['total']:.2f} s "
              f"({', '.join(f'{k} {v:.2f} s' for k, v in cost['median_s'].items() if k != 'total')}), peak RSS "
              f"{cost['peak_rss_gb']:.2f} GB ({cost['peak_rss_inputs_gb']:.2f} GB with the inputs alone)", flush=True)
    if not args.skip_step:
        step = svd_step((1024, 576), args.step_frames, 25)
        result["svd_step"] = step
        print(f"one real-size SVD UNet step at 1024x576: {step['step_s']:.1f} s for {step['frames_measured']} "
              f"frame(s), so about {step['step_25_frames_cfg_s_estimate']:.0f} s for 25 frames with CFG (lower bound)")
        if not args.skip_cost:
            result["after_sampler_over_step"] = round(result["after_sampler"]["median_s"]["total"]
                                                      / step["step_25_frames_cfg_s_estimate"], 4)
            print(f"after-sampler cost / one step: {result['after_sampler_over_step']} (target < 1)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
