"""Command line: ``python -m surgsora preview | generate | synth | download | models``.

* ``preview``  -- the motion a set of trajectories asks for, with no weights at all: the tracks are
  decoded into dense flow (the mask-aware analytic decoder, or a CMP checkpoint if given) and the
  frame is warped along it (nearer wins, disocclusions filled from the background); writes the preview
  video, a flow-colour video and the mask video of the moved content.
* ``generate`` -- the whole SurgSora pipeline (SAM features, Depth Anything V2 depth, trajectory
  decoding, DSI + DFM + MSF conditions, SVD sampling with the adapter, chunked decoding) with real
  weights from a ComfyUI-style models folder, with a progress bar and a timing breakdown per stage.
  Without weights it lists exactly which files are missing and which folder each one goes in, before
  loading anything.
* ``synth``    -- a labelled synthetic video dataset from a job file (:mod:`surgsora.synth`): one folder per clip with
  the video, instance masks, flow, tracks and a follow score; sharded with ``accelerate launch``, resumable.
* ``download`` -- fetch one of the known public files into the right sub-folder (explicit, never implicit).
* ``models``   -- show what a models folder holds and what is missing.

``generate`` parses and checks its arguments, resolves the models folder (:mod:`surgsora.loading.models_folder`),
runs :func:`surgsora.sampling.generate.generate` (the composition ``python -m train sample`` and the ComfyUI sampler
share) and writes the files. The models folder follows ComfyUI's layout; the catalogue of known files, the folder
search and the downloads live in :mod:`surgsora.loading.catalogue` (shared with the ComfyUI nodes).
Frames: an image file, or a video plus ``--frame-index``. Trajectories: a JSON file or inline JSON in
any format :mod:`surgsora.motion.tracks` accepts, drawn on the frame at its own resolution unless the JSON
declares its canvas (``width``/``height``).

Bad input never reaches a traceback: every argument is checked before any compute (numbers finite and in
range, files that exist and are what they claim, masks and tracks that belong to the frame, outputs that
can be written, a memory estimate for the requested size and length), and a mistake ends with one
sentence on stderr saying what was wrong and how to fix it, and exit code 2 (argparse's usage code).
Outputs are written to temporary files in their folder and renamed only when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

from .loading.catalogue import COMPONENTS, KNOWN_FILES, corrupt_configs, download_model, list_models
from .loading.models_folder import MissingModels, resolve_generate_models
from .cli_inputs import (RunFailure, UsageError, auto_size, check_device, device_and_dtype, load_frame,
                         load_tracks_arg, masks_arg, os_error_sentence, parse_size, read_aux_image, resize_frame)
from .sampling.settings import (MAX_FRAMES, MAX_STEPS, SVD_MULTIPLE, SettingError, add_precision_argument,
                                check_settings, check_video_size)

__all__ = ["MissingModels", "UsageError", "resolve_generate_models", "load_frame", "load_tracks_arg", "parse_size",
           "estimate_memory", "run_preview", "run_generate", "main"]

# The sampling settings under their flags: the library checks them and its sentences name the flag.
CLI_NAMES = {"steps": "--steps", "frames": "--frames", "min_cfg": "--min-cfg", "max_cfg": "--max-cfg", "fps": "--fps",
             "motion_bucket_id": "--motion-bucket", "noise_aug_strength": "--noise-aug",
             "control_scale": "--control-scale", "seed": "--seed", "t_weak": "--t-weak", "t_strong": "--t-strong",
             "decode_chunk": "--decode-chunk"}
MODEL_FLAGS = {"sam": "--sam", "depth": "--depth", "svd": "--svd", "adapter": "--adapter", "cmp": "--decoder"}
# Host memory per pixel per frame of generate's host-side stages, which hold whole videos (flow, warped frames,
# softmax-splat scatter buffers, masks), measured with benchmarks/trajectory_memory.py --frames-sweep.
BYTES_PER_PIXEL_FRAME = 240
BASE_BYTES = 700 << 20
# The preview streams (a chunk of about CHUNK_PIXELS pixel-frames at a time, surgsora.motion.preview.chunk_frames),
# so what grows with the video is one chunk's working set, buffers of one frame's size (image, plate, masks,
# decoder grids, encoder), the mask video kept at one byte per pixel and frame until it is encoded and, with a
# CMP checkpoint (which decodes every frame at once), the whole flow and its rasterised input. Measured with
# benchmarks/trajectory_memory.py --sizes.
PREVIEW_CHUNK_BYTES = 280  # per pixel of a chunk
PREVIEW_FRAME_BYTES = 300  # per pixel of one frame
PREVIEW_MASK_BYTES = 1  # per pixel and frame
CMP_FLOW_BYTES = 40  # per pixel and frame, --decoder CHECKPOINT only


# ================================================================================= inputs

def available_memory() -> int | None:
    """Bytes of memory available to this process now, or None when unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform: fall back to /proc
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _memory_terms(size: tuple[int, int], frames: int, n_masks: int, streamed: bool, cmp: bool) -> tuple[int, int]:
    """(bytes that do not grow with the frame count, bytes per frame) of a preview (``streamed``) or generate run."""
    w, h = size
    fixed = BASE_BYTES + 16 * w * h * n_masks
    if not streamed:
        return fixed, BYTES_PER_PIXEL_FRAME * w * h
    from .motion.preview import chunk_frames

    chunk = min(max(1, frames - 1), chunk_frames(h, w))
    fixed += PREVIEW_CHUNK_BYTES * chunk * w * h + PREVIEW_FRAME_BYTES * w * h
    return fixed, (PREVIEW_MASK_BYTES + (CMP_FLOW_BYTES if cmp else 0)) * w * h


def estimate_memory(size: tuple[int, int], frames: int, n_masks: int = 0, streamed: bool = False,
                    cmp: bool = False) -> int:
    """Bytes of host memory generate's host-side stages (or, ``streamed``, a preview; ``cmp``: with a CMP
    checkpoint) need at ``size = (W, H)`` for ``frames``."""
    fixed, per_frame = _memory_terms(size, frames, n_masks, streamed, cmp)
    return fixed + per_frame * frames


def _check_memory(size: tuple[int, int], frames: int, n_masks: int, streamed: bool = False, cmp: bool = False) -> None:
    need = estimate_memory(size, frames, n_masks, streamed, cmp)
    have = available_memory()
    if have is None or need <= have:
        return
    fixed, per_frame = _memory_terms(size, frames, n_masks, streamed, cmp)
    fit = max(0, int((have - fixed) // per_frame))
    raise UsageError(f"--frames {frames} at {size[0]}x{size[1]} needs about {need / 2**30:.1f} GB of memory, more than "
                     f"the {have / 2**30:.1f} GB available; use fewer --frames (about {fit} fit) or a smaller "
                     "--size.")


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

    def report(self, stream=None) -> None:
        total = sum(self.stages.values())
        print("\nTiming:", file=stream)
        for k, v in self.stages.items():
            print(f"  {k:<22} {v:8.2f} s", file=stream)
        print(f"  {'total':<22} {total:8.2f} s", file=stream)


def _flow_pieces(flow, chunk: int):
    """Flow [1, T-1, 2, H, W] ``chunk`` frames at a time, from a tensor or a lazy flow (``frames(a, b)``)."""
    read = flow.frames if hasattr(flow, "frames") else (lambda a, b: flow[:, a:b])
    for a in range(0, flow.shape[1], max(1, chunk)):
        yield read(a, a + chunk)


def _flow_frames(flow, chunk: int = 8, max_flow: float | None = None):
    """Flow-colour frames [t, H, W, 3] of flow [1, T-1, 2, H, W] (a tensor, or a lazy flow with its ``max_flow``),
    a chunk at a time (frame 0 white: no motion yet)."""
    import torch

    from .motion.flow_viz import flow_to_rgb

    if max_flow is None:
        f = flow[0]
        max_flow = float(f.norm(dim=1).max()) if f.numel() else 0.0  # one scale for every frame
    yield torch.ones(1, flow.shape[-2], flow.shape[-1], 3).numpy()
    for piece in _flow_pieces(flow, chunk):
        yield flow_to_rgb(piece[0], max_flow=max_flow).permute(0, 2, 3, 1).numpy()


def _flow_video_path(out: Path, explicit: str | None) -> Path:
    return Path(explicit) if explicit else out.with_name(f"{out.stem}_flow{out.suffix}")


def _mask_video_path(out: Path, explicit: str | None) -> Path:
    return Path(explicit) if explicit else out.with_name(f"{out.stem}_mask{out.suffix}")


def _outputs(args) -> dict[str, Path]:
    """Every file this run will write, checked (extension, folder, writable, distinct) before any compute."""
    from .video_io import VIDEO_OUT_EXTENSIONS, OutputPathError, check_output_path

    out = Path(args.out)
    outs = {"--out": out}
    if args.command == "preview":
        outs["--flow-out"] = _flow_video_path(out, args.flow_out)
        if args.warp == "occlusion":
            outs["--mask-out"] = _mask_video_path(out, args.mask_out)
        if args.save_flow:
            outs["--save-flow"] = Path(args.save_flow)
    elif args.flow_out:
        outs["--flow-out"] = Path(args.flow_out)
    seen: dict[Path, str] = {Path(os.path.abspath(args.image)): "--image"}
    for flag, path in outs.items():
        try:
            check_output_path(path, flag, (".npy",) if flag == "--save-flow" else tuple(VIDEO_OUT_EXTENSIONS))
        except OutputPathError as e:
            raise UsageError(str(e)) from None
        key = Path(os.path.abspath(path))
        if key in seen:
            raise UsageError(f"{flag} {path} is the same file as {seen[key]}; give each output its own name.")
        seen[key] = flag
    return outs


@contextlib.contextmanager
def _writing(paths):
    """Temporary files for all ``paths`` at once: renamed together when the block succeeds, all removed if not."""
    from .video_io import atomic_output

    with contextlib.ExitStack() as stack:
        yield {k: stack.enter_context(atomic_output(p)) for k, p in paths.items()}


def _frame_and_tracks(args, multiple: int, area: int):
    """The frame resized to the working size and the tracks prepared for it (shared by preview and generate).

    Returns (image tensor [1, 3, H, W] in [0, 1] at the working size, tracks [N, T, 2], (width, height),
    (original width, original height)).
    """
    import torch

    from .motion.tracks import TrackError, check_canvas, parse_track_data, prepare_tracks

    text = load_tracks_arg(args.tracks)  # cheap checks first: a typo should not wait for a video to decode
    frame = load_frame(args.image, args.frame_index)
    H0, W0 = frame.shape[:2]
    size = parse_size(args.size) or auto_size(W0, H0, multiple, area)
    if multiple == SVD_MULTIPLE:  # generate: SVD's rule, the library's sentence
        try:
            check_video_size(*size, what="--size")
        except SettingError as e:
            raise UsageError(str(e)) from None
    elif size[0] % multiple or size[1] % multiple:
        raise UsageError(f"--size {size[0]}x{size[1]}: width and height must be multiples of {multiple}.")
    preview = args.command == "preview"  # streamed: see estimate_memory
    _check_memory(size, args.frames, len(args.masks or ()), streamed=preview,
                  cmp=preview and args.decoder != "analytic")
    try:
        ts = parse_track_data(text)
        if ts.canvas is not None:
            check_canvas(ts.canvas, (W0, H0), f"--image {Path(args.image).name}")
        tracks = prepare_tracks(ts, canvas_size=(W0, H0), size=size, num_frames=args.frames)
    except TrackError as e:
        raise UsageError(f"--tracks: {e}") from None
    image_t = torch.from_numpy(resize_frame(frame, size)).permute(2, 0, 1).float().div(255).unsqueeze(0)
    return image_t, tracks, size, (W0, H0)


# ================================================================================= preview

def run_preview(args) -> dict:
    """The preview, streamed: the flow is decoded, warped and encoded a chunk of frames at a time (each frame t
    needs only frame 0 and the flow 0 -> t), so memory does not grow with frames x pixels; only the mask video
    (one byte per pixel and frame) is kept whole until its encoder runs."""
    import numpy as np
    import torch

    from .motion.analytic_flow import AnalyticDecoder
    from .motion.flow_viz import draw_tracks
    from .motion.preview import chunk_frames, motion_preview_chunks, motion_signal_chunks
    from .sampling.generate import load_decoder
    from .video_io import encode_video

    outs = _outputs(args)
    args.fps = 7.0 if args.fps is None else args.fps
    if args.decoder != "analytic" and not Path(args.decoder).is_file():
        raise UsageError(f"--decoder: {args.decoder} does not exist; use 'analytic' (no weights) or the path of the "
                         "CMP checkpoint ckpt_iter_42000.pth.tar.")
    timer = Timer()
    with timer("read inputs"):
        image_t, tracks, size, frame_size = _frame_and_tracks(args, 8, 512 * 288)
        regions = masks_arg(args.masks, size, frame_size, args.resize_masks)
        depth = None
        if args.depth:
            # A disparity image (brighter = nearer), normalised per image like Depth Anything's output.
            img = read_aux_image(args.depth, "--depth", frame_size, args.resize_masks)
            d = resize_frame(img.max(-1).astype(np.float32), size)
            d = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
            depth = torch.from_numpy(d)[None, None]
    with timer("load decoder"):
        decoder = load_decoder(args.decoder, "cpu")
    w, h = size
    chunk = chunk_frames(h, w)
    with timer("tracks -> flow"):
        from .motion.tracks import tracks_to_flow

        if isinstance(decoder, AnalyticDecoder):  # solved once, evaluated a chunk of frames at a time
            flow = decoder.lazy_tracks(image_t, tracks, size, regions, chunk=chunk)
        else:  # the CMP network decodes every frame at once
            flow = tracks_to_flow(decoder, image_t, tracks, size, regions)
    nf = flow.shape[1]
    mask = np.zeros((nf + 1, h, w), bool) if args.warp == "occlusion" else None
    shown = [0]  # frames computed so far

    def pieces():
        if mask is None:
            yield from motion_preview_chunks(image_t, flow, chunk)
            return
        for video, m in motion_signal_chunks(image_t, flow, depth=depth, regions=regions, chunk=chunk,
                                             fill=args.fill):
            mask[shown[0]:shown[0] + m.shape[1]] = m[0, :, 0].numpy() > 0.5  # 0 or 1
            yield video

    def preview_frames():  # one frame at a time: drawing the tracks never holds a second copy of a chunk
        it = pieces()
        while True:
            with timer("motion preview"):
                video = next(it, None)
            if video is None:
                return
            for frame in video[0]:
                t = shown[0]
                shown[0] += 1
                yield (draw_tracks(frame, tracks[:, : t + 1]) if args.draw_tracks else frame).permute(1, 2, 0).numpy()

    with _writing(outs) as tmp:
        with timer("tracks -> flow"):  # one pass for the colour scale (and the saved flow)
            max_flow = 0.0
            save = open(tmp["--save-flow"], "wb") if args.save_flow else contextlib.nullcontext()
            with save as f:
                if args.save_flow:  # np.save's format, written a chunk at a time
                    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                              "shape": (nf, 2, h, w)}
                    np.lib.format.write_array_header_1_0(f, header)
                for piece in _flow_pieces(flow, chunk):
                    if piece.numel():
                        max_flow = max(max_flow, float(piece.norm(dim=2).max()))
                    if args.save_flow:
                        f.write(np.ascontiguousarray(piece[0].numpy(), dtype=np.float32).tobytes())
        t0 = time.perf_counter()
        encode_video(tmp["--out"], preview_frames(), fps=args.fps, container=_container(outs["--out"]))
        encode_video(tmp["--flow-out"], _flow_frames(flow, chunk, max_flow), fps=args.fps,
                     container=_container(outs["--flow-out"]))
        if mask is not None:  # the dual-clock sampler's anchor region, white = anchored
            encode_video(tmp["--mask-out"], (np.repeat(m[..., None], 3, -1) for m in mask), fps=args.fps,
                         container=_container(outs["--mask-out"]))
        # Computing the frames happened inside the first encode: count it once, under "motion preview".
        timer.stages["write videos"] = time.perf_counter() - t0 - timer.stages.get("motion preview", 0.0)
    out, flow_path, mask_path = outs["--out"], outs["--flow-out"], outs.get("--mask-out") if mask is not None else None
    frames = shown[0]
    print(f"Wrote {out} ({frames} frames, {size[0]}x{size[1]}), {flow_path}"
          + (f" and {mask_path}." if mask_path else "."))
    timer.report()
    result = {"out": str(out), "flow_video": str(flow_path), "mask_video": str(mask_path) if mask_path else None,
              "warp": args.warp, "frames": int(frames), "width": size[0],
              "height": size[1], "max_flow_px": max_flow,
              "timing_s": {k: round(v, 4) for k, v in timer.stages.items()}}
    print(json.dumps(result))
    return result


def _container(path: Path) -> str:
    from .video_io import VIDEO_OUT_EXTENSIONS

    return VIDEO_OUT_EXTENSIONS[path.suffix.lower()]


# ================================================================================= generate

class _StepBar:
    """A tqdm bar over the denoising steps, opened at the first step (dual-clock starts at t_weak)."""

    def __init__(self):
        self.bar = None

    def __call__(self, step: int, total: int, _latents) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="denoise", unit="step")
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_generate(args) -> dict:
    from .loading.adapters import describe_adapter
    from .loading.mofa import runs_as_mofa
    from .sampling.conditioning import default_fps
    from .sampling.generate import Models, NonFiniteVideo, generate
    from .sampling.settings import TTM_MOTION_BUCKET, TTM_STEPS, SamplingSettings, resolve_seed
    from .video_io import encode_video

    ttm = args.mode == "ttm"
    steps = args.steps or (TTM_STEPS if ttm else 25)
    motion_bucket = args.motion_bucket if args.motion_bucket is not None else (TTM_MOTION_BUCKET if ttm else 127)
    outs = _outputs(args)
    try:
        paths = resolve_generate_models(args.models, args.sam, args.depth, args.svd, args.adapter, args.decoder,
                                        args.mode, names=MODEL_FLAGS)
    except ValueError as e:  # a model name outside the models folder
        raise UsageError(str(e)) from None
    device, dtype = device_and_dtype(args.device, args.precision)
    timer = Timer()
    with timer("read inputs"):
        image_t, tracks, size, frame_size = _frame_and_tracks(args, SVD_MULTIPLE, 448 * 256)
        regions = masks_arg(args.masks, size, frame_size, args.resize_masks)
    print("Models: " + ", ".join(f"{k}={v}" for k, v in paths.items()))
    with timer("load adapter") if "adapter" in paths else contextlib.nullcontext():
        models = Models.load(paths, device, dtype)  # the adapter now, the other models when generate needs them
    adapter = models.adapter
    if adapter is not None:
        print(f"Adapter: {describe_adapter(adapter)}.")
        trained_fps = default_fps(adapter.config)
        if runs_as_mofa(adapter.config) and (args.fps not in (None, 7) or motion_bucket != 127):
            print("Note: this adapter fixes added_time_ids, so --fps only sets the video file's frame rate and "
                  "--motion-bucket is not used.")
        elif args.fps is not None and args.fps != trained_fps:
            print(f"Note: this adapter was trained at fps {trained_fps}; sampling at --fps {args.fps:g} conditions SVD "
                  "off its training distribution.")
    fps = float(args.fps if args.fps is not None else default_fps(None if adapter is None else adapter.config))
    if ttm:
        print(f"Dual-clock sampling (Time-to-Move) on {'plain SVD' if adapter is None else 'SVD + adapter'}: "
              f"t_weak {args.t_weak}, t_strong {args.t_strong} of {steps} steps.")
    seed = resolve_seed(args.seed, "--seed")  # -1: a random seed, printed so that the video can be made again
    settings = SamplingSettings(steps=steps, frames=args.frames, min_cfg=args.min_cfg, max_cfg=args.max_cfg, fps=fps,
                                motion_bucket_id=motion_bucket, noise_aug_strength=args.noise_aug,
                                control_scale=args.control_scale, seed=seed, t_weak=args.t_weak,
                                t_strong=args.t_strong, decode_chunk=args.decode_chunk)
    bar = _StepBar()
    try:
        made = generate(models, image_t, settings, tracks=tracks, regions=regions, mode=args.mode,
                        segment=not args.no_masks, callback=bar, timer=timer)
    except NonFiniteVideo:  # a NaN video would be written as a black one with exit 0: say so instead
        raise RunFailure("the generated video contains NaN or infinite values (often fp16 overflow), so nothing was "
                         "written; try --precision fp32 or bf16, or a smaller --control-scale.") from None
    except ValueError as e:  # e.g. an adapter made for another SVD
        raise UsageError(str(e)) from None
    finally:
        bar.close()
    video = made.video
    out = outs["--out"]
    with timer("write video"), _writing(outs) as tmp:
        encode_video(tmp["--out"], (f.permute(1, 2, 0).numpy() for f in video), fps=fps, container=_container(out))
        if "--flow-out" in outs:
            encode_video(tmp["--flow-out"], _flow_frames(made.flow.float().cpu()), fps=fps,
                         container=_container(outs["--flow-out"]))
    flow_path = outs.get("--flow-out")
    print(f"Wrote {out} ({video.shape[0]} frames, {size[0]}x{size[1]}).")
    timer.report()
    result = {"out": str(out), "flow_video": str(flow_path) if flow_path else None, "frames": int(video.shape[0]),
              "width": size[0], "height": size[1], "device": str(device), "dtype": str(dtype).replace("torch.", ""),
              "mode": args.mode, "steps": steps, "fps": fps, "seed": seed,
              "models": {k: str(v) for k, v in paths.items()},
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
    for bad in corrupt_configs([root / f for f in sorted({f for fs, _, _ in COMPONENTS.values() for f in fs})]):
        print(f"corrupt  {bad} is not a valid JSON config: its folder is ignored until the file is restored.")


def run_download(args) -> None:
    known = KNOWN_FILES.get(args.name)
    if known is None:
        raise UsageError(f"{args.name} is not a known file; choose one of: {', '.join(KNOWN_FILES)}.")
    path = download_model(args.name, Path(args.models) / known.folder)
    print(f"{path}")


# ================================================================================= argument parsing

def _common(p: argparse.ArgumentParser, frames_default: int) -> None:
    p.add_argument("--image", required=True, help="the first frame: an image file, or a video (see --frame-index)")
    p.add_argument("--frame-index", type=int, default=0, help="frame of --image to use when it is a video (0 = first)")
    p.add_argument("--tracks", required=True,
                   help="trajectories: a JSON file or inline JSON (editor, KJNodes, DragNUWA or TRACKS format), "
                        "in pixels of the frame unless the JSON declares width/height (of the same shape)")
    p.add_argument("--frames", type=int, default=frames_default,
                   help=f"number of video frames T (2..{MAX_FRAMES}, within the memory estimate)")
    p.add_argument("--out", required=True, help="output video (.mp4, H.264; also .mov, .mkv); missing folders are "
                                                "created")
    p.add_argument("--flow-out", default=None, help="flow-colour video path (default: OUT_flow.mp4 for preview)")
    p.add_argument("--masks", nargs="+", default=None,
                   help="region masks on the frame (images of the frame's size; binary or label masks: > 0 = region, "
                        "soft ones: above half their maximum, with a warning if noisy) for the trajectory "
                        "decoder")
    p.add_argument("--resize-masks", action="store_true",
                   help="resize --masks (and preview's --depth) of another size to the frame instead of refusing them")
    p.add_argument("--fps", type=float, default=None,
                   help="frames per second of the video, and SVD's fps condition (0 < fps <= 1000; default: the "
                        "adapter's training fps, else 7)")


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
    g.add_argument("--steps", type=int, default=None, help=f"denoising steps, 1..{MAX_STEPS} (default 25; 50 with "
                                                           "--mode ttm)")
    g.add_argument("--min-cfg", type=float, default=1.0, help="guidance at the first frame (finite, >= 0)")
    g.add_argument("--max-cfg", type=float, default=3.0, help="guidance at the last frame (finite, >= --min-cfg)")
    g.add_argument("--motion-bucket", type=int, default=None, help="SVD motion bucket, 0..1023 (default 127; 17 with "
                                                                    "--mode ttm, as TTM)")
    g.add_argument("--noise-aug", type=float, default=0.02, help="noise added to the first frame, 0..1")
    g.add_argument("--control-scale", type=float, default=1.0, help="strength of the adapter's residuals (finite, "
                                                                    ">= 0)")
    g.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default 0; -1 = a random seed, "
                                                       "printed so that the video can be made again)")
    g.add_argument("--decode-chunk", type=int, default=8, help="frames decoded by the VAE at once (>= 1)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    add_precision_argument(g)
    g.set_defaults(func=run_generate)

    d = sub.add_parser("download", help="download a known public weights file into its models sub-folder")
    d.add_argument("name", help=f"one of: {', '.join(KNOWN_FILES)}")
    d.add_argument("--models", required=True, help="the models folder (the file goes in its sub-folder)")
    d.set_defaults(func=run_download)

    m = sub.add_parser("models", help="list what a models folder holds")
    m.add_argument("--models", required=True)
    m.set_defaults(func=run_models)

    from .synth.cli import add_parser as add_synth_parser

    add_synth_parser(sub)
    return ap


def _check_args(args) -> None:
    """Every check that needs no file contents, before anything is imported or read."""
    if args.command not in ("preview", "generate"):
        if args.command in ("models", "download") and Path(args.models).exists() and not Path(args.models).is_dir():
            raise UsageError(f"--models: {args.models} is a file; give a ComfyUI-style models folder.")
        return
    settings = dict(frames=args.frames, fps=args.fps)
    if args.command == "generate":
        settings.update(steps=args.steps, min_cfg=args.min_cfg, max_cfg=args.max_cfg,
                        motion_bucket_id=args.motion_bucket, noise_aug_strength=args.noise_aug,
                        control_scale=args.control_scale, seed=args.seed, t_weak=args.t_weak, t_strong=args.t_strong,
                        decode_chunk=args.decode_chunk)
    try:
        check_settings(CLI_NAMES, **settings)
    except SettingError as e:
        raise UsageError(str(e)) from None
    parse_size(args.size)
    if args.command == "generate":
        if not Path(args.models).is_dir():
            raise UsageError(f"--models: {args.models} is not a folder; give a ComfyUI-style models folder "
                             "(with sams/, depthanything/, checkpoints/ or diffusers/, surgsora/).")
        check_device(args.device)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The library's own warnings (what it assumed: a rescaled canvas, a thresholded mask) as one stderr line;
    anyone else's as Python shows them."""
    if category.__module__.split(".")[0] == "surgsora":
        print(f"warning: {message}", file=sys.stderr)
    else:
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


_PYTHON_SHOWWARNING = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns 0, or exits with 2 (usage error: one sentence on stderr) or 1 (the run failed)."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from .loading.io import ModelFileError
    from .motion.tracks import TrackError
    from .video_io import OutputPathError

    if args.command in ("preview", "generate", "synth"):
        # Nothing but `download` may touch the network: model folders are read as local files only.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        _check_args(args)
        import torch

        torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
        args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise
    except MissingModels as e:
        print(str(e), file=sys.stderr)
        return 2
    except (ModelFileError, TrackError, OutputPathError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise UsageError(str(e)) from None
    except RunFailure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:  # loading a model says which; running out later gets the general advice
        print(f"error: {str(e) or 'out of memory; use fewer --frames, a smaller --size or fewer tracks.'}",
              file=sys.stderr)
        return 1
    except OSError as e:  # a full disk or a folder that became read-only mid-run: outputs were cleaned up
        flag = "--models" if args.command == "download" else "--out"
        print(f"error: {os_error_sentence(e, flag)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; no partial output was left.", file=sys.stderr)
        return 130
    return 0
