"""Training-step time with the preprocessing cache versus recomputing SAM, depth and flow every step.

The published training scripts run SAM, Depth Anything and optical flow for every sample at every
step. ``python -m train`` computes them once (``python -m train preprocess``). This benchmark runs the
same training loop (``train.fit.run``, tiny random SVD + adapter by default) in one process, twice:

  cached:    items read from the preprocessed safetensors shards;
  recompute: items rebuilt at every step from the video with real-size SAM ViT-B and Depth Anything V2
             ViT-S (random weights, their caches cleared each time) and chained DIS flow, as published.

and prints the median step times and one JSON line ``{"cached_step_s", "recompute_step_s", "speedup"}``.

    python benchmarks/train_step.py [--clip PATH] [--size 256] [--frames 14] [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from surgsora.perception.depth import DepthEstimator, build_depth_model, depth_config  # noqa: E402
from surgsora.perception.sam import SAM_VARIANTS, SamSegmenter, build_sam  # noqa: E402
from train.data import ClipDataset, Preprocessor, discover_clips  # noqa: E402
from train.fit import FitConfig, run  # noqa: E402


class RecomputingDataset(torch.utils.data.Dataset):
    """Every item recomputed from the video, as the published training does at every step."""

    def __init__(self, cached: ClipDataset, pre: Preprocessor, specs):
        self.cached, self.pre = cached, pre
        self.specs = {s.clip_id: s for s in specs}
        self.size, self.num_frames = cached.size, cached.num_frames

    def __len__(self):
        return len(self.cached)

    def __getitem__(self, i):
        self.pre.sam.clear_cache()
        self.pre.depth.clear_cache()
        tensors, meta = self.pre.compute(self.specs[self.cached.clips[i]["id"]])
        tensors["fps"] = torch.tensor(float(meta["fps"]))
        tensors["index"] = torch.tensor(i)
        return tensors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default=str(REPO.parent / "shared/data/endovis17_clip/clip.mp4"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    sam = SamSegmenter(build_sam(SAM_VARIANTS["vit_b"]), SAM_VARIANTS["vit_b"])
    depth = DepthEstimator(build_depth_model(depth_config("vits")), variant="vits")
    with tempfile.TemporaryDirectory() as tmp:
        specs, problems = discover_clips([args.clip], num_frames=args.frames)
        if not specs:
            raise SystemExit(f"no clip of {args.frames} frames in {args.clip}: {problems}")
        pre = Preprocessor(Path(tmp) / "cache", sam, depth, size=(args.size, args.size), num_frames=args.frames,
                           log=lambda *a: None)
        t0 = time.perf_counter()
        pre.run(specs, progress=False)
        print(f"preprocessed {len(specs)} clip(s) once in {time.perf_counter() - t0:.1f} s", flush=True)
        cached = ClipDataset(Path(tmp) / "cache")

        def timed(dataset, name):
            cfg = FitConfig(data=str(Path(tmp) / "cache"), out=str(Path(tmp) / name), config="tiny",
                            max_steps=args.steps + 1, checkpoint_every=10 ** 6, lr=1e-4)
            seconds = run(cfg, dataset=dataset)["step_seconds"][1:]  # the first step warms up
            print(f"{name:9s} steps: {', '.join(f'{s:.2f}' for s in seconds)} s", flush=True)
            return statistics.median(seconds)

        cached_s = timed(None, "cached")
        recompute_s = timed(RecomputingDataset(cached, pre, specs), "recompute")
    result = {"cached_step_s": round(cached_s, 3), "recompute_step_s": round(recompute_s, 3),
              "speedup": round(recompute_s / cached_s, 2)}
    print(f"\n{args.size}x{args.size}, {args.frames} frames, tiny SVD + adapter, real-size SAM ViT-B + DAv2 ViT-S "
          f"(random weights), DIS flow, {args.threads} threads:")
    print(f"  cached step    {cached_s:.2f} s\n  recompute step {recompute_s:.2f} s\n  speedup        {result['speedup']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
