"""`python -m train preprocess|fit`: fit the SurgSora adapter on surgical videos.

    python -m train preprocess --out cache/ videos/ --sam models/sams/sam_vit_b_01ec64.pth \
        --depth models/depthanything/depth_anything_v2_vits.pth --frames 21 --size 256 --fit pad
    python -m train fit --data cache/ --svd models/checkpoints/svd_xt.safetensors --out runs/stage1 --stage 1
    python -m train fit --data cache/ --svd ... --adapter runs/stage1/adapter --out runs/stage2 --stage 2
    accelerate launch -m train fit ...        # several GPUs / nodes

`--config tiny` (fit) and `--tiny-models` (preprocess) use tiny random models so the whole loop runs on a
CPU in seconds (tests, smoke runs); they learn nothing useful.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from .fit import FitConfig


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if h % 64 or w % 64:
        raise argparse.ArgumentTypeError(f"size {h}x{w}: height and width must be multiples of 64 (SVD latents /8, "
                                         "adapter scales down to /64)")
    return h, w


def preprocess_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m train preprocess",
                                 description="Cache frames, SAM features, depth, flow and sparse samples per clip.")
    ap.add_argument("inputs", nargs="+", help="videos, folders of videos or frame folders, or CSV clip lists")
    ap.add_argument("--out", required=True, help="cache folder")
    ap.add_argument("--sam", help="SAM v1 checkpoint (sam_vit_{b,l,h}_*.pth)")
    ap.add_argument("--depth", help="Depth Anything V2 checkpoint (.pth / .safetensors / HF folder)")
    ap.add_argument("--tiny-models", action="store_true", help="tiny random SAM/depth (tests and smoke runs only)")
    ap.add_argument("--frames", type=int, default=21, help="frames per clip (default 21)")
    ap.add_argument("--frame-step", type=int, default=1, help="take every n-th frame (default 1)")
    ap.add_argument("--clip-stride", type=int, default=None, help="frames between clip starts (default: one clip span)")
    ap.add_argument("--size", type=_size, default=(256, 256), help="N or HxW, multiples of 64 (default 256)")
    ap.add_argument("--fit", choices=("pad", "resize", "crop"), default="pad")
    ap.add_argument("--flow", choices=("dis", "raft"), default="dis")
    ap.add_argument("--raft-weights", help="torchvision raft_large weights file for --flow raft")
    ap.add_argument("--depth-input-size", type=int, default=518)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.frames < 2:
        ap.error("--frames must be at least 2")

    from .data import Preprocessor, discover_clips

    if args.tiny_models:
        from surgsora.tiny import tiny_depth, tiny_sam

        sam, depth, names = tiny_sam(), tiny_depth(), {"sam": "tiny-random", "depth": "tiny-random"}
    else:
        if not (args.sam and args.depth):
            ap.error("give --sam PATH and --depth PATH (put the files in models/sams and models/depthanything), "
                     "or --tiny-models for a smoke run")
        from surgsora.perception.depth import load_depth_anything
        from surgsora.perception.sam import load_sam

        sam, depth = load_sam(args.sam, device=args.device), load_depth_anything(args.depth, device=args.device)
        names = {"sam": Path(args.sam).name, "depth": Path(args.depth).name}
    specs, problems = discover_clips(args.inputs, args.frames, args.frame_step, args.clip_stride)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if not specs:
        print("error: no usable clips found in the inputs", file=sys.stderr)
        return 2
    pre = Preprocessor(args.out, sam, depth, size=args.size, fit=args.fit, num_frames=args.frames,
                       frame_step=args.frame_step, flow_method=args.flow, raft_weights=args.raft_weights,
                       depth_input_size=args.depth_input_size, seed=args.seed, model_names=names)
    counts = pre.run(specs)
    print("preprocess: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f" -> {Path(args.out) / 'index.json'}")
    return 1 if counts.get("failed") and len(counts) == 1 else 0


def fit_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m train fit", description="Train the SurgSora adapter.")
    defaults = FitConfig()
    for f in fields(FitConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            ap.add_argument(flag, action="store_true", default=None)
        else:
            ap.add_argument(flag, type=type(default), default=None, help=f"default: {default!r}")
    args = ap.parse_args(argv)
    from .fit import config_from_args, run

    cfg = config_from_args(args)
    if not cfg.data:
        ap.error("--data CACHE_DIR is required (made by `python -m train preprocess --out CACHE_DIR ...`)")
    if cfg.stage not in (1, 2):
        ap.error("--stage must be 1 or 2")
    from .checkpoint import CheckpointError
    from .data import CacheError
    from .objective import check_sigma_args

    try:
        check_sigma_args(cfg.sigma_scheme, cfg.sigma_min, cfg.sigma_max, cfg.sigma_data, cfg.image_d,
                         cfg.noise_d_low, cfg.noise_d_high)
    except ValueError as e:
        ap.error(str(e))
    try:
        summary = run(cfg)
    except (CacheError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: step {summary['step']}, last loss {summary['last_loss']}, adapter in {Path(summary['out']) / 'adapter'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("preprocess", "fit"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return {"preprocess": preprocess_main, "fit": fit_main}[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
