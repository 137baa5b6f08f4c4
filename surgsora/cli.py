"""Command line: ``python -m surgsora preview | generate | download | models``.

* ``preview``  -- the motion a set of trajectories asks for, with no weights at all: the tracks are
  decoded into dense flow (the mask-aware analytic decoder, or a CMP checkpoint if given) and the
  frame is warped along it (nearer wins, disocclusions filled from the background); writes the preview
  video, a flow-colour video and the mask video of the moved content.
* ``generate`` -- the whole SurgSora pipeline (SAM features, Depth Anything V2 depth, trajectory
  decoding, DSI + DFM + MSF conditions, SVD sampling with the adapter, chunked decoding) with real
  weights from a ComfyUI-style models folder, with a progress bar and a timing breakdown per stage.
  Without weights it lists exactly which files are missing and which folder each one goes in, before
  loading anything.
* ``download`` -- fetch one of the known public files into the right sub-folder (explicit, never implicit).
* ``models``   -- show what a models folder holds and what is missing.

The models folder follows ComfyUI's layout; the catalogue of known files, the folder search and the
downloads live in :mod:`surgsora.loading.catalogue` (shared with the ComfyUI nodes).
Frames: an image file, or a video plus ``--frame-index``. Trajectories: a JSON file or inline JSON in
any format :mod:`surgsora.motion.tracks` accepts, drawn on the frame at its own resolution unless the JSON
declares its canvas (``width``/``height``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .loading.catalogue import COMPONENTS, KNOWN_FILES, best_model, download_model, find_model, list_models

__all__ = ["MissingModels", "resolve_generate_models", "load_frame", "load_tracks_arg", "parse_size",
           "run_preview", "run_generate", "main"]


# ================================================================================= inputs

def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"448x256"`` -> (448, 256); ``None``/``"auto"`` -> None."""
    if text is None or text == "auto":
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size must look like 448x256 (width x height); got {text!r}.") from None
    if w < 8 or h < 8:
        raise SystemExit(f"--size must be at least 8x8; got {w}x{h}.")
    return w, h


def load_frame(path: str | os.PathLike, frame_index: int = 0):
    """RGB uint8 [H, W, 3] from an image file, or frame ``frame_index`` of a video file."""
    from .video_io import VIDEO_EXTENSIONS, read_image, read_video

    path = Path(path)
    if not path.exists():
        raise SystemExit(f"--image: {path} does not exist.")
    if path.suffix.lower() in VIDEO_EXTENSIONS or path.is_dir():
        try:
            return read_video(path, start=frame_index, count=1)[0]
        except ValueError as e:
            raise SystemExit(f"--image: {e} (--frame-index {frame_index}).") from None
    if frame_index:
        raise SystemExit(f"--frame-index only applies to videos; {path} is an image.")
    try:
        return read_image(path)
    except ValueError as e:
        raise SystemExit(f"--image: {e}") from None


def load_tracks_arg(text: str):
    """The ``--tracks`` argument: a JSON file path, or inline JSON."""
    p = Path(text)
    if len(text) < 4096 and p.suffix.lower() == ".json":
        if not p.is_file():
            raise SystemExit(f"--tracks: {p} does not exist.")
        return p.read_text()
    if len(text) < 4096 and p.is_file():
        return p.read_text()
    return text


def _auto_size(width: int, height: int, multiple: int, area: int) -> tuple[int, int]:
    """A working size near ``area`` pixels with the frame's aspect ratio, both sides multiples of ``multiple``."""
    scale = math.sqrt(area / (width * height))
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    return w, h


def _resize(frame, size: tuple[int, int]):
    import cv2

    w, h = size
    if frame.shape[1] == w and frame.shape[0] == h:
        return frame
    interp = cv2.INTER_AREA if w < frame.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(frame, (w, h), interpolation=interp)


def _masks_arg(paths, size):
    import numpy as np
    import torch

    from .video_io import read_image

    if not paths:
        return None
    masks = []
    for p in paths:
        m = read_image(p).max(-1) > 0
        masks.append(_resize(m.astype(np.float32), size) > 0.5)
    return torch.from_numpy(np.stack(masks).astype(np.float32)).unsqueeze(0)


class Timer:
    """Wall-clock time per named stage, printed as a table and a JSON line."""

    def __init__(self):
        self.stages: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.stages[name] = timer.stages.get(name, 0.0) + time.perf_counter() - self.t0

        return _Stage()

    def report(self, stream=sys.stdout) -> None:
        total = sum(self.stages.values())
        print("\nTiming:", file=stream)
        for k, v in self.stages.items():
            print(f"  {k:<22} {v:8.2f} s", file=stream)
        print(f"  {'total':<22} {total:8.2f} s", file=stream)


def _decoder(spec: str, device):
    """``analytic`` (no weights) or a path to a CMP checkpoint."""
    if spec == "analytic":
        from .motion.analytic_flow import AnalyticDecoder

        return AnalyticDecoder()
    from .motion.cmp import load_cmp

    return load_cmp(spec, device=device)


def _tracks_to_flow(decoder, image_t, tracks, size, regions):
    """tracks [N, T, 2] at the working size -> dense flow [1, T-1, 2, H, W]."""
    from .motion.tracks import rasterize

    w, h = size
    sparse, mask = rasterize(tracks, (h, w))
    return decoder(image_t, sparse, mask, region_masks=regions)


def _write_flow_video(path: Path, flow, fps: float):
    import torch

    from .motion.flow_viz import flow_to_rgb
    from .video_io import write_video

    colours = flow_to_rgb(flow[0])  # [T-1, 3, H, W]
    first = torch.ones_like(colours[:1])  # frame 0: no motion yet (white)
    video = torch.cat([first, colours]).permute(0, 2, 3, 1).numpy()
    return write_video(path, video, fps=fps)


def _flow_video_path(out: Path, explicit: str | None) -> Path:
    return Path(explicit) if explicit else out.with_name(f"{out.stem}_flow{out.suffix}")


def _frame_and_tracks(args, multiple: int, area: int):
    """The frame resized to the working size and the tracks prepared for it (shared by preview and generate).

    Returns (frame uint8 [H, W, 3] at the working size, image tensor [1, 3, H, W] in [0, 1], tracks [N, T, 2],
    (width, height)).
    """
    import torch

    from .motion.tracks import TrackError, prepare_tracks

    frame = load_frame(args.image, args.frame_index)
    H0, W0 = frame.shape[:2]
    size = parse_size(args.size) or _auto_size(W0, H0, multiple, area)
    if size[0] % multiple or size[1] % multiple:
        raise SystemExit(f"--size {size[0]}x{size[1]}: width and height must be multiples of {multiple}"
                         + (" for SVD (e.g. 448x256, 512x320, 1024x576)." if multiple == 64 else "."))
    frame_s = _resize(frame, size)
    try:
        tracks = prepare_tracks(load_tracks_arg(args.tracks), canvas_size=(W0, H0), size=size,
                                num_frames=args.frames)
    except TrackError as e:
        raise SystemExit(f"--tracks: {e}") from None
    image_t = torch.from_numpy(frame_s).permute(2, 0, 1).float().div(255).unsqueeze(0)
    return frame_s, image_t, tracks, size


# ================================================================================= preview

def run_preview(args) -> dict:
    import numpy as np
    import torch

    from .motion.flow_viz import draw_tracks
    from .motion.preview import motion_preview, motion_signal
    from .video_io import read_image, write_video

    timer = Timer()
    with timer("read inputs"):
        frame_s, image_t, tracks, size = _frame_and_tracks(args, 8, 512 * 288)
        regions = _masks_arg(args.masks, size)
        depth = None
        if args.depth:
            # A disparity image (brighter = nearer), normalised per image like Depth Anything's output.
            d = _resize(read_image(args.depth).max(-1).astype(np.float32), size)
            d = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
            depth = torch.from_numpy(d)[None, None]
    with timer("load decoder"):
        decoder = _decoder(args.decoder, "cpu")
    with timer("tracks -> flow"):
        flow = _tracks_to_flow(decoder, image_t, tracks, size, regions)
    mask = None
    with timer("motion preview"):
        if args.warp == "average":
            video = motion_preview(image_t, flow)[0]  # [T, 3, H, W]
        else:
            video, mask = (x[0] for x in motion_signal(image_t, flow, depth=depth, regions=regions, fill=args.fill))
        if args.draw_tracks:
            # Each frame shows the tracks up to that frame.
            video = torch.stack([draw_tracks(video[t], tracks[:, : t + 1]) for t in range(len(video))])
    out = Path(args.out)
    with timer("write videos"):
        write_video(out, video.permute(0, 2, 3, 1).numpy(), fps=args.fps)
        flow_path = _write_flow_video(_flow_video_path(out, args.flow_out), flow, args.fps)
        mask_path = None
        if mask is not None:  # the dual-clock sampler's anchor region, white = anchored
            mask_path = Path(args.mask_out) if args.mask_out else out.with_name(f"{out.stem}_mask{out.suffix}")
            write_video(mask_path, mask.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy(), fps=args.fps)
        if args.save_flow:
            np.save(args.save_flow, flow[0].numpy())
    print(f"Wrote {out} ({len(video)} frames, {size[0]}x{size[1]}), {flow_path}"
          + (f" and {mask_path}." if mask_path else "."))
    timer.report()
    result = {"out": str(out), "flow_video": str(flow_path), "mask_video": str(mask_path) if mask_path else None,
              "warp": args.warp, "frames": int(len(video)), "width": size[0],
              "height": size[1], "max_flow_px": float(flow.norm(dim=2).max()),
              "timing_s": {k: round(v, 4) for k, v in timer.stages.items()}}
    print(json.dumps(result))
    return result


# ================================================================================= generate

class MissingModels(Exception):
    """The list of missing files and where each goes (``main`` prints it and exits with code 2)."""


def _pick(models_dir: Path, component: str, name: str | None) -> tuple[Path | None, str]:
    folders = COMPONENTS[component][0]
    roots = [models_dir / f for f in folders]
    if name:
        p = Path(name)
        if p.is_absolute() or p.exists():
            return (p if p.exists() else None), str(p)
        found = find_model(roots, name)
        return found, str(roots[0] / name)
    names = []
    for root in roots:
        names += [(root, n) for n in list_models([root], component)]
    if component == "adapter":  # a trained SurgSora adapter first, else MOFA's released ControlNet
        from .loading.adapters import SURGSORA, adapter_kind

        names.sort(key=lambda rn: adapter_kind(rn[0] / rn[1]) != SURGSORA)
        return (names[0][0] / names[0][1], names[0][1]) if names else (None, str(roots[0]))
    if component == "svd":  # prefer the catalogue's names, then diffusers folders
        best = best_model([n for _, n in names], component)
        for root, n in names:
            if n == best:
                return root / n, str(root / n)
        return None, str(roots[0])
    best = best_model([n for _, n in names], component)
    if best is None:
        return None, str(roots[0])
    return find_model(roots, best), best


def resolve_generate_models(models_dir: str | os.PathLike, sam=None, depth=None, svd=None, adapter=None,
                            decoder="auto", mode: str = "adapter") -> dict[str, Path | str]:
    """Paths of every model ``generate`` needs, or :class:`MissingModels` listing each missing one.

    With MOFA-Video-Traj's ControlNet as the adapter, SAM is optional (used for region masks when
    present) and Depth Anything is not used. ``mode="ttm"`` (dual-clock on plain SVD) needs only SVD:
    SAM (region masks) and Depth Anything (what is in front) are used when present, an adapter only
    when named.
    """
    from .loading.adapters import MOFA, adapter_kind

    models_dir = Path(models_dir)
    found, missing = {}, []
    ttm = mode == "ttm"
    path, where = _pick(models_dir, "adapter", adapter)
    mofa = path is not None and adapter_kind(path) == MOFA
    for component, name in (("sam", sam), ("depth", depth), ("svd", svd), ("adapter", adapter)):
        if not name and ((ttm and component == "adapter") or (mofa and not ttm and component == "depth")):
            continue
        path, where = _pick(models_dir, component, name)
        if path is None:
            optional = (ttm and component in ("sam", "depth")) or (mofa and component == "sam")
            if name or not optional:
                missing.append((component, name, where))
        else:
            found[component] = path
    if decoder == "auto":
        path, _ = _pick(models_dir, "cmp", None)
        found["decoder"] = path if path is not None else "analytic"
    elif decoder == "analytic":
        found["decoder"] = "analytic"
    else:
        path, where = _pick(models_dir, "cmp", decoder)
        if path is None:
            missing.append(("cmp", decoder, where))
        else:
            found["decoder"] = path
    if missing:
        lines = [f"Missing model files under {models_dir}:"]
        for component, name, where in missing:
            folders, _, what = COMPONENTS[component]
            target = " or ".join(str(models_dir / f) + "/" for f in folders)
            lines.append(f"  - {what}" + (f" (asked for {name!r}, looked at {where})" if name else "")
                         + f"\n      put it in {target}")
            for k in KNOWN_FILES.values():
                if k.component == component:
                    gated = " (gated: accept the licence, then `huggingface-cli login`)" if k.gated else ""
                    lines.append(f"      {k.name:<44} {k.source}{gated}")
        lines.append("Known public files can be fetched with `python -m surgsora download NAME --models "
                     f"{models_dir}`; a SurgSora adapter comes from `python -m train`, and MOFA-Video-Traj's "
                     "released ControlNet (mofa_traj_controlnet.safetensors) generates without one.")
        raise MissingModels("\n".join(lines))
    return found


def _device_and_dtype(device: str, dtype: str):
    import torch

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dtype == "auto":
        dt = torch.float16 if dev.type == "cuda" else torch.float32
    else:
        dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    return dev, dt


def run_generate(args) -> dict:
    import torch

    from .loading.adapters import describe_adapter, load_adapter
    from .motion.preview import motion_signal
    from .perception.depth import load_depth_anything
    from .sampling.dual_clock import TTM_MOTION_BUCKET, TTM_STEPS, dual_clock_indices
    from .loading.io import ModelFileError
    from .sampling.pipeline import SurgSoraPipeline
    from .perception.sam import load_sam
    from .loading.svd_checkpoint import load_svd
    from .video_io import write_video

    ttm = args.mode == "ttm"
    steps = args.steps or (TTM_STEPS if ttm else 25)
    motion_bucket = args.motion_bucket if args.motion_bucket is not None else (TTM_MOTION_BUCKET if ttm else 127)
    models = resolve_generate_models(args.models, args.sam, args.depth, args.svd, args.adapter, args.decoder,
                                     args.mode)
    device, dtype = _device_and_dtype(args.device, args.dtype)
    timer = Timer()
    with timer("read inputs"):
        frame_s, image_t, tracks, size = _frame_and_tracks(args, 64, 448 * 256)
    print("Models: " + ", ".join(f"{k}={v}" for k, v in models.items()))
    try:
        adapter = None
        if "adapter" in models:
            with timer("load adapter"):
                adapter = load_adapter(models["adapter"], dtype=dtype).to(device)
            print(f"Adapter: {describe_adapter(adapter)}.")
            if adapter.config.get("fixed_time_ids") is not None and (args.fps != 7 or motion_bucket != 127):
                print("Note: this adapter fixes added_time_ids, so --fps only sets the video file's frame rate and "
                      "--motion-bucket is not used.")
        if ttm:
            print(f"Dual-clock sampling (Time-to-Move) on {'plain SVD' if adapter is None else 'SVD + adapter'}: "
                  f"t_weak {args.t_weak}, t_strong {args.t_strong} of {steps} steps.")
        seg = depth = regions = None
        regions = _masks_arg(args.masks, size)
        if "sam" in models:
            with timer("SAM features"):
                sam = load_sam(models["sam"], device=device)
                seg = sam.encode(image_t) if adapter is not None and adapter.needs_seg else None
                if regions is None and not args.no_masks:
                    starts = tracks[:, 0]
                    masks = [sam.predict_masks(image_t, points=starts[i:i + 1])[0] for i in range(len(starts))]
                    regions = torch.cat(masks).float().unsqueeze(0).cpu()
                del sam
        if "depth" in models and ((adapter is not None and adapter.needs_depth) or ttm):
            with timer("depth"):
                depth_model = load_depth_anything(models["depth"], device=device)
                depth = depth_model(image_t)
                del depth_model
        with timer("tracks -> flow"):
            decoder = _decoder(str(models["decoder"]), device)
            flow = _tracks_to_flow(decoder, image_t.to(device) if models["decoder"] != "analytic" else image_t,
                                   tracks, size, regions)
            del decoder
        with timer("load SVD"):
            svd = load_svd(models["svd"], device=device, dtype=dtype)
            try:
                pipe = SurgSoraPipeline(adapter=adapter, **svd)
            except ValueError as e:  # an adapter made for another SVD
                raise SystemExit(f"{e}.") from None
        generator = torch.Generator("cpu").manual_seed(args.seed)
        with timer("first frame + conditions"):
            first = pipe.encode_first_frame(image_t, size[1], size[0], args.noise_aug, generator)
            conditions = pipe.prepare_conditions(image_t, depth, seg, flow) if adapter is not None else None
        anchor = None
        if ttm:
            with timer("motion signal"):
                signal, mask = motion_signal(image_t, flow.float().cpu(), depth=None if depth is None else depth.cpu(),
                                             regions=regions)
                weak, strong = dual_clock_indices(args.t_weak, args.t_strong, steps)
                anchor = pipe.encode_motion_signal(signal, mask, weak, strong, size[1], size[0], args.decode_chunk)
        from tqdm.auto import tqdm

        with timer("denoise"), tqdm(total=steps - (anchor.t_weak_index if anchor else 0), desc="denoise",
                                    unit="step") as bar:
            latents = pipe.denoise(first, conditions, args.frames, steps, args.min_cfg, args.max_cfg, args.fps,
                                   motion_bucket, args.control_scale, generator,
                                   callback=lambda i, n, _: bar.update(1), anchor=anchor)
        with timer("decode"):
            video = pipe.decode(latents, args.decode_chunk)[0]  # [T, 3, H, W]
    except ModelFileError as e:
        raise SystemExit(str(e)) from None
    out = Path(args.out)
    with timer("write video"):
        write_video(out, video.permute(0, 2, 3, 1).float().cpu().numpy(), fps=args.fps)
        flow_path = _write_flow_video(_flow_video_path(out, args.flow_out), flow.float().cpu(), args.fps) \
            if args.flow_out else None
    print(f"Wrote {out} ({video.shape[0]} frames, {size[0]}x{size[1]}).")
    timer.report()
    result = {"out": str(out), "flow_video": str(flow_path) if flow_path else None, "frames": int(video.shape[0]),
              "width": size[0], "height": size[1], "device": str(device), "dtype": str(dtype).replace("torch.", ""),
              "mode": args.mode, "steps": steps, "models": {k: str(v) for k, v in models.items()},
              "timing_s": {k: round(v, 3) for k, v in timer.stages.items()}}
    print(json.dumps(result))
    return result


# ================================================================================= models / download

def run_models(args) -> None:
    root = Path(args.models)
    for component, (folders, _, what) in COMPONENTS.items():
        names = [f"{f}/{n}" for f in folders for n in list_models([root / f], component)]
        print(f"{component:<8} {what}")
        print("         " + (", ".join(names) if names else f"(none in {' or '.join(str(root / f) for f in folders)})"))


def run_download(args) -> None:
    from .loading.io import ModelFileError

    known = KNOWN_FILES.get(args.name)
    if known is None:
        raise SystemExit(f"{args.name} is not a known file; choose one of: {', '.join(KNOWN_FILES)}.")
    try:
        path = download_model(args.name, Path(args.models) / known.folder)
    except ModelFileError as e:
        raise SystemExit(str(e)) from None
    print(f"{path}")


# ================================================================================= argument parsing

def _common(p: argparse.ArgumentParser, frames_default: int) -> None:
    p.add_argument("--image", required=True, help="the first frame: an image file, or a video (see --frame-index)")
    p.add_argument("--frame-index", type=int, default=0, help="frame of --image to use when it is a video")
    p.add_argument("--tracks", required=True,
                   help="trajectories: a JSON file or inline JSON (editor, KJNodes, DragNUWA or TRACKS format), "
                        "in pixels of the frame unless the JSON declares width/height")
    p.add_argument("--frames", type=int, default=frames_default, help="number of video frames T (any >= 2)")
    p.add_argument("--out", required=True, help="output video (.mp4)")
    p.add_argument("--flow-out", default=None, help="flow-colour video path (default: OUT_flow.mp4 for preview)")
    p.add_argument("--masks", nargs="+", default=None,
                   help="region masks on the frame (images, > 0 = region) for the trajectory decoder")
    p.add_argument("--fps", type=float, default=7.0)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m surgsora", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("preview", help="motion preview from trajectories, no weights needed")
    _common(p, 14)
    p.add_argument("--size", default=None, help="working size WxH (default: about 512x288 with the frame's aspect)")
    p.add_argument("--decoder", default="analytic", help="'analytic' (default, no weights) or a CMP checkpoint path")
    p.add_argument("--draw-tracks", action="store_true", help="draw the trajectories on the preview")
    p.add_argument("--save-flow", default=None, help="also save the flow [T-1, 2, H, W] as .npy")
    p.add_argument("--warp", default="occlusion", choices=["occlusion", "average"],
                   help="occlusion (default): softmax splatting, nearer wins (order from --depth, else --masks: "
                        "smaller in front), disocclusions filled from the background, plus a mask video; "
                        "average: the old preview (average splatting, holes keep the first frame), for comparison")
    p.add_argument("--depth", default=None,
                   help="disparity image of the frame (brighter = nearer, e.g. saved from Depth Anything) for --warp "
                        "occlusion")
    p.add_argument("--fill", default="pushpull", choices=["pushpull", "telea"],
                   help="how the background behind moved regions is inpainted (--warp occlusion)")
    p.add_argument("--mask-out", default=None,
                   help="mask video path for --warp occlusion (default: OUT_mask.mp4; white = moved content)")
    p.set_defaults(func=run_preview)

    g = sub.add_parser("generate", help="the full SurgSora pipeline with real weights")
    _common(g, 14)
    g.add_argument("--mode", default="adapter", choices=["adapter", "ttm"],
                   help="adapter (default): a SurgSora adapter or MOFA-Video-Traj's ControlNet steers SVD; ttm: "
                        "dual-clock sampling after Time-to-Move, needs only SVD (SAM and Depth Anything are used "
                        "when present; an adapter only if --adapter is given)")
    g.add_argument("--t-weak", type=float, default=0.32,
                   help="ttm: start from the motion signal noised to this fraction of the schedule (TTM: 16/50)")
    g.add_argument("--t-strong", type=float, default=0.42,
                   help="ttm: follow the signal inside its mask until this fraction, then denoise freely (TTM: 21/50)")
    g.add_argument("--models", required=True, help="a ComfyUI-style models folder (sams/, depthanything/, "
                                                   "checkpoints/ or diffusers/, surgsora/)")
    g.add_argument("--size", default=None, help="working size WxH, multiples of 64 (default: ~448x256 by aspect)")
    g.add_argument("--sam", default=None, help="file in models/sams (default: the best one present)")
    g.add_argument("--depth", default=None, help="file or folder in models/depthanything")
    g.add_argument("--svd", default=None, help="file in models/checkpoints or folder in models/diffusers")
    g.add_argument("--adapter", default=None, help="adapter folder in models/surgsora")
    g.add_argument("--decoder", default="auto", help="'auto' (CMP if present, else analytic), 'analytic', or a "
                                                     "CMP file in models/surgsora")
    g.add_argument("--no-masks", action="store_true", help="do not segment the tracked objects with SAM")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default 25; 50 with --mode ttm)")
    g.add_argument("--min-cfg", type=float, default=1.0)
    g.add_argument("--max-cfg", type=float, default=3.0)
    g.add_argument("--motion-bucket", type=int, default=None, help="SVD motion bucket (default 127; 17 with "
                                                                    "--mode ttm, as TTM)")
    g.add_argument("--noise-aug", type=float, default=0.02)
    g.add_argument("--control-scale", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--decode-chunk", type=int, default=8)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    g.set_defaults(func=run_generate)

    d = sub.add_parser("download", help="download a known public weights file into its models sub-folder")
    d.add_argument("name", help=f"one of: {', '.join(KNOWN_FILES)}")
    d.add_argument("--models", required=True, help="the models folder (the file goes in its sub-folder)")
    d.set_defaults(func=run_download)

    m = sub.add_parser("models", help="list what a models folder holds")
    m.add_argument("--models", required=True)
    m.set_defaults(func=run_models)
    return ap


def _check_args(args) -> None:
    if getattr(args, "frames", 2) < 2:
        raise SystemExit(f"--frames must be at least 2; got {args.frames}.")
    if getattr(args, "fps", 1) <= 0:
        raise SystemExit(f"--fps must be positive; got {args.fps}.")
    if args.command == "generate":
        for name in ("steps", "decode_chunk"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise SystemExit(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)}.")
        if args.min_cfg > args.max_cfg:
            raise SystemExit(f"--min-cfg ({args.min_cfg}) must not exceed --max-cfg ({args.max_cfg}).")
        if not 0 <= args.t_weak < args.t_strong <= 1:
            raise SystemExit(f"--t-weak ({args.t_weak}) must be smaller than --t-strong ({args.t_strong}), both "
                             "fractions of the schedule in [0, 1].")
        if not Path(args.models).is_dir():
            raise SystemExit(f"--models: {args.models} is not a folder; give a ComfyUI-style models folder "
                             "(with sams/, depthanything/, checkpoints/ or diffusers/, surgsora/).")


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    _check_args(args)
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    try:
        args.func(args)
    except MissingModels as e:
        print(str(e), file=sys.stderr)
        return 2
    return 0
