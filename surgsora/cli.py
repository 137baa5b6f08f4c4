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

Bad input never reaches a traceback: every argument is checked before any compute (numbers finite and in
range, files that exist and are what they claim, masks and tracks that belong to the frame, outputs that
can be written, a memory estimate for the requested size and length), and a mistake ends with one
sentence on stderr saying what was wrong and how to fix it, and exit code 2 (argparse's usage code).
Outputs are written to temporary files in their folder and renamed only when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .loading.catalogue import (COMPONENTS, KNOWN_FILES, best_model, corrupt_configs, download_model, find_model,
                                list_models)

__all__ = ["MissingModels", "UsageError", "resolve_generate_models", "load_frame", "load_tracks_arg", "parse_size",
           "estimate_memory", "run_preview", "run_generate", "main"]

# A first frame smaller than this has nothing to generate from (it would only be upscaled blur).
MIN_IMAGE_SIDE = 32
MAX_FRAMES = 4096
MAX_STEPS = 1000
MAX_TRACKS_FILE = 64 << 20
# Host memory per pixel per frame of the preview / generate stages that hold whole videos (flow, warped
# frames, softmax-splat scatter buffers, masks), measured with benchmarks/trajectory_memory.py --frames.
BYTES_PER_PIXEL_FRAME = 240
BASE_BYTES = 700 << 20


class UsageError(SystemExit):
    """A user mistake: ``main`` prints the sentence and exits with code 2, as argparse does for bad usage."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


# ================================================================================= inputs

def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"448x256"`` -> (448, 256); ``None``/``"auto"`` -> None."""
    if text is None or text == "auto":
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size must look like 448x256 (width x height); got {text!r}.") from None
    if w < 8 or h < 8:
        raise UsageError(f"--size must be at least 8x8; got {w}x{h}.")
    if w > 8192 or h > 8192:
        raise UsageError(f"--size {w}x{h} is larger than 8192 on a side; choose a working size such as 1024x576.")
    return w, h


def load_frame(path: str | os.PathLike, frame_index: int = 0):
    """RGB uint8 [H, W, 3] from an image file, or frame ``frame_index`` of a video file (or frame folder)."""
    from .video_io import VIDEO_EXTENSIONS, read_image, read_video, video_info

    path = Path(path)
    if not path.exists():
        raise UsageError(f"--image: {path} does not exist.")
    if frame_index < 0:
        raise UsageError(f"--frame-index must be 0 or more (0 is the first frame); got {frame_index}.")
    if path.suffix.lower() in VIDEO_EXTENSIONS or path.is_dir():
        count = None
        if path.is_file():
            try:
                count = video_info(path)["frames"] or None
            except ValueError as e:
                raise UsageError(f"--image: {e}") from None
        if count is not None and frame_index >= count:
            raise UsageError(f"--frame-index {frame_index} is beyond the end of {path}, which has {count} frames "
                             f"(0..{count - 1}).")
        try:
            frame = read_video(path, start=frame_index, count=1)[0]
        except (ValueError, OSError) as e:
            raise UsageError(f"--image: {e} (--frame-index {frame_index}).") from None
    else:
        if frame_index:
            raise UsageError(f"--frame-index only applies to videos; {path} is an image.")
        try:
            frame = read_image(path)
        except (ValueError, OSError) as e:
            raise UsageError(f"--image: {e}") from None
    h, w = frame.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise UsageError(f"--image {path} is only {w}x{h} pixels; give a frame of at least {MIN_IMAGE_SIDE}x"
                         f"{MIN_IMAGE_SIDE} (a tiny image upscaled has nothing to generate from).")
    return frame


def load_tracks_arg(text: str) -> str:
    """The ``--tracks`` argument: inline JSON (starting with ``[`` or ``{``), or the path of a JSON file."""
    stripped = text.lstrip("\ufeff").strip()
    if not stripped:
        raise UsageError("--tracks is empty; give a tracks JSON file or inline JSON such as [[x, y], [x, y]].")
    if stripped[0] in "[{":
        return text
    p = Path(stripped)
    # Anything else is a file name: a typo must say "not found", never "not valid JSON".
    if not p.exists():
        raise UsageError(f"--tracks: {p} does not exist (file not found); give the path of a tracks JSON file, or "
                         "inline JSON starting with [ or {.")
    if p.is_dir():
        raise UsageError(f"--tracks: {p} is a folder; give a tracks JSON file.")
    try:
        if p.stat().st_size > MAX_TRACKS_FILE:
            raise UsageError(f"--tracks: {p} is {p.stat().st_size / 2**20:.0f} MB, too large for a tracks file; "
                             "give the JSON the editor saved.")
        data = p.read_bytes()
    except OSError as e:
        raise UsageError(f"--tracks: {p} could not be read ({e.strerror or e}).") from None
    if b"\x00" in data:
        raise UsageError(f"--tracks: {p} is a binary file, not JSON text; give the JSON file the editor saved.")
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is accepted
    except UnicodeDecodeError as e:
        raise UsageError(f"--tracks: {p} is not UTF-8 text (undecodable byte at position {e.start}); save the JSON "
                         "as UTF-8.") from None


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


def _read_aux_image(path, flag: str, frame_size: tuple[int, int], resize: bool):
    """A mask or depth image given for the frame: readable, and of the frame's size unless ``resize``."""
    from .video_io import read_image

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag}: {p} does not exist" + (" (it is a folder)." if p.is_dir() else "."))
    try:
        img = read_image(p)
    except (ValueError, OSError) as e:
        raise UsageError(f"{flag}: {e}") from None
    h, w = img.shape[:2]
    if (w, h) != tuple(frame_size) and not resize:
        raise UsageError(f"{flag}: {p} is {w}x{h} but the frame is {frame_size[0]}x{frame_size[1]}; give one drawn "
                         "on this frame, or add --resize-masks to resize it to the frame.")
    return img


def _masks_arg(paths, size, frame_size=None, resize: bool = False):
    """Region masks (> 0 = inside) as [1, M, H, W] at the working ``size``; refuses empty or mis-sized ones."""
    import numpy as np
    import torch

    if not paths:
        return None
    masks = []
    for p in paths:
        img = _read_aux_image(p, "--masks", frame_size or size, resize or frame_size is None)
        m = img.max(-1) > 0
        if not m.any():
            raise UsageError(f"--masks: {p} is empty (all zeros); draw the region (> 0 = inside) or leave it out.")
        r = _resize(m.astype(np.float32), size) > 0.5
        if not r.any():
            raise UsageError(f"--masks: the region of {p} vanishes at the working size {size[0]}x{size[1]}; draw a "
                             "larger region or use a larger --size.")
        masks.append(r)
    return torch.from_numpy(np.stack(masks).astype(np.float32)).unsqueeze(0)


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


def estimate_memory(size: tuple[int, int], frames: int, n_masks: int = 0) -> int:
    """Bytes of host memory a preview (or generate's host-side stages) needs at ``size = (W, H)`` for ``frames``."""
    w, h = size
    return BASE_BYTES + BYTES_PER_PIXEL_FRAME * w * h * frames + 16 * w * h * n_masks


def _check_memory(size: tuple[int, int], frames: int, n_masks: int) -> None:
    need = estimate_memory(size, frames, n_masks)
    have = available_memory()
    if have is None or need <= have:
        return
    per_frame = BYTES_PER_PIXEL_FRAME * size[0] * size[1]
    fit = max(0, int((have - BASE_BYTES - 16 * size[0] * size[1] * n_masks) // per_frame))
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

    def report(self, stream=sys.stdout) -> None:
        total = sum(self.stages.values())
        print("\nTiming:", file=stream)
        for k, v in self.stages.items():
            print(f"  {k:<22} {v:8.2f} s", file=stream)
        print(f"  {'total':<22} {total:8.2f} s", file=stream)


def _load_model(what: str, path, fn):
    """Run a loader; any failure reading a user's model file becomes one sentence (exit 2), never a traceback."""
    from .loading.io import ModelFileError

    try:
        return fn()
    except (ModelFileError, UsageError):
        raise
    except MemoryError:
        raise UsageError(f"Not enough memory to load {what} from {path}; close other programs or use a smaller "
                         "model.") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many library-specific ways
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelFileError(f"{what} at {path} could not be loaded ({type(e).__name__}: {first}); the file may be "
                             "truncated or of another kind: download or write it again.") from None


def _decoder(spec: str, device):
    """``analytic`` (no weights) or a path to a CMP checkpoint."""
    if spec == "analytic":
        from .motion.analytic_flow import AnalyticDecoder

        return AnalyticDecoder()
    from .motion.cmp import load_cmp

    return _load_model("The CMP trajectory decoder", spec, lambda: load_cmp(spec, device=device))


def _flow_frames(flow, chunk: int = 8):
    """Flow-colour frames [t, H, W, 3] of flow [1, T-1, 2, H, W], a chunk at a time (frame 0 white: no motion yet)."""
    import torch

    from .motion.flow_viz import flow_to_rgb

    f = flow[0]
    max_flow = float(f.norm(dim=1).max()) if f.numel() else 0.0  # one scale for every frame
    yield torch.ones(1, f.shape[-2], f.shape[-1], 3).numpy()
    for i in range(0, f.shape[0], chunk):
        yield flow_to_rgb(f[i:i + chunk], max_flow=max_flow).permute(0, 2, 3, 1).numpy()


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

    Returns (frame uint8 [H, W, 3] at the working size, image tensor [1, 3, H, W] in [0, 1], tracks [N, T, 2],
    (width, height), (original width, original height)).
    """
    import torch

    from .motion.tracks import TrackError, check_canvas, parse_track_data, prepare_tracks

    text = load_tracks_arg(args.tracks)  # cheap checks first: a typo should not wait for a video to decode
    frame = load_frame(args.image, args.frame_index)
    H0, W0 = frame.shape[:2]
    size = parse_size(args.size) or _auto_size(W0, H0, multiple, area)
    if size[0] % multiple or size[1] % multiple:
        raise UsageError(f"--size {size[0]}x{size[1]}: width and height must be multiples of {multiple}"
                         + (" for SVD (e.g. 448x256, 512x320, 1024x576)." if multiple == 64 else "."))
    _check_memory(size, args.frames, len(args.masks or ()))
    try:
        ts = parse_track_data(text)
        if ts.canvas is not None:
            check_canvas(ts.canvas, (W0, H0), f"--image {Path(args.image).name}")
        tracks = prepare_tracks(ts, canvas_size=(W0, H0), size=size, num_frames=args.frames)
    except TrackError as e:
        raise UsageError(f"--tracks: {e}") from None
    frame_s = _resize(frame, size)
    image_t = torch.from_numpy(frame_s).permute(2, 0, 1).float().div(255).unsqueeze(0)
    return frame_s, image_t, tracks, size, (W0, H0)


# ================================================================================= preview

def run_preview(args) -> dict:
    import numpy as np
    import torch

    from .motion.flow_viz import draw_tracks
    from .motion.preview import motion_preview, motion_signal
    from .video_io import encode_video

    outs = _outputs(args)
    args.fps = 7.0 if args.fps is None else args.fps
    if args.decoder != "analytic" and not Path(args.decoder).is_file():
        raise UsageError(f"--decoder: {args.decoder} does not exist; use 'analytic' (no weights) or the path of the "
                         "CMP checkpoint ckpt_iter_42000.pth.tar.")
    timer = Timer()
    with timer("read inputs"):
        frame_s, image_t, tracks, size, frame_size = _frame_and_tracks(args, 8, 512 * 288)
        regions = _masks_arg(args.masks, size, frame_size, args.resize_masks)
        depth = None
        if args.depth:
            # A disparity image (brighter = nearer), normalised per image like Depth Anything's output.
            img = _read_aux_image(args.depth, "--depth", frame_size, args.resize_masks)
            d = _resize(img.max(-1).astype(np.float32), size)
            d = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
            depth = torch.from_numpy(d)[None, None]
    with timer("load decoder"):
        decoder = _decoder(args.decoder, "cpu")
    with timer("tracks -> flow"):
        from .motion.tracks import tracks_to_flow

        flow = tracks_to_flow(decoder, image_t, tracks, size, regions)
    mask = None
    with timer("motion preview"):
        if args.warp == "average":
            video = motion_preview(image_t, flow)[0]  # [T, 3, H, W]
        else:
            video, mask = (x[0] for x in motion_signal(image_t, flow, depth=depth, regions=regions, fill=args.fill))

    def preview_frames():  # one frame at a time: drawing the tracks never holds a second copy of the video
        for t in range(len(video)):
            frame = draw_tracks(video[t], tracks[:, : t + 1]) if args.draw_tracks else video[t]
            yield frame.permute(1, 2, 0).numpy()

    with timer("write videos"), _writing(outs) as tmp:
        encode_video(tmp["--out"], preview_frames(), fps=args.fps, container=_container(outs["--out"]))
        encode_video(tmp["--flow-out"], _flow_frames(flow), fps=args.fps, container=_container(outs["--flow-out"]))
        if mask is not None:  # the dual-clock sampler's anchor region, white = anchored
            encode_video(tmp["--mask-out"], (m.expand(3, -1, -1).permute(1, 2, 0).numpy() for m in mask),
                         fps=args.fps, container=_container(outs["--mask-out"]))
        if args.save_flow:
            with open(tmp["--save-flow"], "wb") as f:
                np.save(f, flow[0].numpy())
    out, flow_path, mask_path = outs["--out"], outs["--flow-out"], outs.get("--mask-out") if mask is not None else None
    print(f"Wrote {out} ({len(video)} frames, {size[0]}x{size[1]}), {flow_path}"
          + (f" and {mask_path}." if mask_path else "."))
    timer.report()
    result = {"out": str(out), "flow_video": str(flow_path), "mask_video": str(mask_path) if mask_path else None,
              "warp": args.warp, "frames": int(len(video)), "width": size[0],
              "height": size[1], "max_flow_px": float(flow.norm(dim=2).max()),
              "timing_s": {k: round(v, 4) for k, v in timer.stages.items()}}
    print(json.dumps(result))
    return result


def _container(path: Path) -> str:
    from .video_io import VIDEO_OUT_EXTENSIONS

    return VIDEO_OUT_EXTENSIONS[path.suffix.lower()]


# ================================================================================= generate

class MissingModels(Exception):
    """The list of missing files and where each goes (``main`` prints it and exits with code 2)."""


class RunFailure(Exception):
    """The run could not produce a valid result (not a usage error): ``main`` prints it and exits with code 1."""


def _pick(models_dir: Path, component: str, name: str | None) -> tuple[Path | None, str]:
    folders = COMPONENTS[component][0]
    roots = [models_dir / f for f in folders]
    if name:
        p = Path(name)
        if p.is_absolute() or p.exists():
            return (p if p.exists() else None), str(p)
        try:
            found = find_model(roots, name)
        except ValueError as e:  # "../x": outside the models folder
            raise UsageError(f"--{component if component != 'cmp' else 'decoder'}: {e}") from None
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
    when named. A model folder whose config is corrupt is reported as corrupt, not as missing.
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
        corrupt = [c for component, _, _ in missing for c in
                   corrupt_configs([models_dir / f for f in COMPONENTS[component][0]])]
        if corrupt:
            raise UsageError(f"{corrupt[0]} is corrupt (not a valid JSON config), so its model folder cannot be used; "
                             "restore the file (or write the folder again, e.g. with `python -m train`).")
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


def check_device(text: str) -> None:
    """Refuse a device this machine does not have, with the way out (before anything is loaded)."""
    if text == "auto":
        return
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA GPU visible"
            raise UsageError(f"--device {text}: this machine has {build}; use --device cpu (or auto).")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: there are only {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1}).")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"--device {text}: Apple MPS is not available here; use --device cpu (or auto).")
    elif dev.type != "cpu":
        raise UsageError(f"--device {text}: only auto, cpu, cuda, cuda:N and mps are supported.")


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
    from .sampling.pipeline import SurgSoraPipeline
    from .perception.sam import load_sam
    from .loading.svd_checkpoint import load_svd
    from .video_io import encode_video

    ttm = args.mode == "ttm"
    steps = args.steps or (TTM_STEPS if ttm else 25)
    motion_bucket = args.motion_bucket if args.motion_bucket is not None else (TTM_MOTION_BUCKET if ttm else 127)
    outs = _outputs(args)
    models = resolve_generate_models(args.models, args.sam, args.depth, args.svd, args.adapter, args.decoder,
                                     args.mode)
    device, dtype = _device_and_dtype(args.device, args.dtype)
    timer = Timer()
    with timer("read inputs"):
        frame_s, image_t, tracks, size, frame_size = _frame_and_tracks(args, 64, 448 * 256)
        regions = _masks_arg(args.masks, size, frame_size, args.resize_masks)
    print("Models: " + ", ".join(f"{k}={v}" for k, v in models.items()))
    adapter = None
    if "adapter" in models:
        with timer("load adapter"):
            adapter = _load_model("The adapter", models["adapter"],
                                  lambda: load_adapter(models["adapter"], dtype=dtype).to(device))
        print(f"Adapter: {describe_adapter(adapter)}.")
        trained_fps = adapter.config.get("fps", 7)
        if adapter.config.get("fixed_time_ids") is not None and (args.fps not in (None, 7) or motion_bucket != 127):
            print("Note: this adapter fixes added_time_ids, so --fps only sets the video file's frame rate and "
                  "--motion-bucket is not used.")
        elif args.fps is not None and args.fps != trained_fps:
            print(f"Note: this adapter was trained at fps {trained_fps}; sampling at --fps {args.fps:g} conditions SVD "
                  "off its training distribution.")
    if args.fps is None:  # the adapter's training fps (SVD's id is fps - 1), else SVD's usual 7
        args.fps = float(adapter.config.get("fps", 7)) if adapter is not None else 7.0
    if ttm:
        print(f"Dual-clock sampling (Time-to-Move) on {'plain SVD' if adapter is None else 'SVD + adapter'}: "
              f"t_weak {args.t_weak}, t_strong {args.t_strong} of {steps} steps.")
    seg = depth = None
    if "sam" in models:
        with timer("SAM features"):
            sam = _load_model("SAM", models["sam"], lambda: load_sam(models["sam"], device=device))
            seg = sam.encode(image_t) if adapter is not None and adapter.needs_seg else None
            if regions is None and not args.no_masks:
                starts = tracks[:, 0]
                masks = [sam.predict_masks(image_t, points=starts[i:i + 1])[0] for i in range(len(starts))]
                regions = torch.cat(masks).float().unsqueeze(0).cpu()
            del sam
    if "depth" in models and ((adapter is not None and adapter.needs_depth) or ttm):
        with timer("depth"):
            depth_model = _load_model("Depth Anything", models["depth"],
                                      lambda: load_depth_anything(models["depth"], device=device))
            depth = depth_model(image_t)
            del depth_model
    with timer("tracks -> flow"):
        decoder = _decoder(str(models["decoder"]), device)
        from .motion.tracks import tracks_to_flow

        flow = tracks_to_flow(decoder, image_t.to(device) if models["decoder"] != "analytic" else image_t,
                              tracks, size, regions)
        del decoder
    with timer("load SVD"):
        svd = _load_model("Stable Video Diffusion", models["svd"],
                          lambda: load_svd(models["svd"], device=device, dtype=dtype))
        try:
            pipe = SurgSoraPipeline(adapter=adapter, **svd)
        except ValueError as e:  # an adapter made for another SVD
            raise UsageError(f"{e}.") from None
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
    if not bool(torch.isfinite(video).all()):
        # A NaN video would be written as a black one with exit 0; say so instead.
        raise RunFailure("the generated video contains NaN or infinite values (often fp16 overflow), so nothing was "
                         "written; try --dtype fp32 or bf16, or a smaller --control-scale.")
    out = outs["--out"]
    with timer("write video"), _writing(outs) as tmp:
        encode_video(tmp["--out"], (f.permute(1, 2, 0).float().cpu().numpy() for f in video), fps=args.fps,
                     container=_container(out))
        if "--flow-out" in outs:
            encode_video(tmp["--flow-out"], _flow_frames(flow.float().cpu()), fps=args.fps,
                         container=_container(outs["--flow-out"]))
    flow_path = outs.get("--flow-out")
    print(f"Wrote {out} ({video.shape[0]} frames, {size[0]}x{size[1]}).")
    timer.report()
    result = {"out": str(out), "flow_video": str(flow_path) if flow_path else None, "frames": int(video.shape[0]),
              "width": size[0], "height": size[1], "device": str(device), "dtype": str(dtype).replace("torch.", ""),
              "mode": args.mode, "steps": steps, "fps": args.fps, "models": {k: str(v) for k, v in models.items()},
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
                   help="region masks on the frame (images of the frame's size, > 0 = region) for the trajectory "
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
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--decode-chunk", type=int, default=8, help="frames decoded by the VAE at once (>= 1)")
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


def _number(flag: str, value: float, lo: float | None = None, hi: float | None = None, above: bool = False) -> None:
    """A finite number in [lo, hi] (``above``: strictly greater than lo), else a UsageError naming the range."""
    ok = math.isfinite(value) and (lo is None or value > lo or (value == lo and not above)) and \
        (hi is None or value <= hi)
    if not ok:
        parts = [f"{'>' if above else '>='} {lo:g}" if lo is not None else "", f"<= {hi:g}" if hi is not None else ""]
        rng = " and ".join(p for p in parts if p)
        raise UsageError(f"{flag} must be a finite number{' ' + rng if rng else ''}; got {value}.")


def _integer(flag: str, value: int | None, lo: int, hi: int | None = None) -> None:
    if value is not None and (value < lo or (hi is not None and value > hi)):
        rng = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise UsageError(f"{flag} must be {rng}; got {value}.")


def _check_args(args) -> None:
    """Every check that needs no file contents, before anything is imported or read."""
    from .video_io import check_fps

    if args.command not in ("preview", "generate"):
        if args.command in ("models", "download") and Path(args.models).exists() and not Path(args.models).is_dir():
            raise UsageError(f"--models: {args.models} is a file; give a ComfyUI-style models folder.")
        return
    if args.frames < 2:
        raise UsageError(f"--frames must be at least 2; got {args.frames}.")
    _integer("--frames", args.frames, 2, MAX_FRAMES)
    try:
        if args.fps is not None:
            check_fps(args.fps, "--fps")
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.frame_index < 0:  # -1 used to mean frame 0 without a word
        raise UsageError(f"--frame-index must be 0 or more (0 is the first frame); got {args.frame_index}.")
    parse_size(args.size)
    if args.command == "generate":
        _integer("--steps", args.steps, 1, MAX_STEPS)
        _integer("--decode-chunk", args.decode_chunk, 1)
        _integer("--motion-bucket", args.motion_bucket, 0, 1023)
        _integer("--seed", args.seed, 0, 2 ** 63 - 1)
        _number("--min-cfg", args.min_cfg, 0)
        _number("--max-cfg", args.max_cfg, 0)
        _number("--noise-aug", args.noise_aug, 0, 1)
        _number("--control-scale", args.control_scale, 0)
        if args.min_cfg > args.max_cfg:
            raise UsageError(f"--min-cfg ({args.min_cfg}) must not exceed --max-cfg ({args.max_cfg}).")
        if not 0 <= args.t_weak < args.t_strong <= 1:
            raise UsageError(f"--t-weak ({args.t_weak}) must be smaller than --t-strong ({args.t_strong}), both "
                             "fractions of the schedule in [0, 1].")
        if not Path(args.models).is_dir():
            raise UsageError(f"--models: {args.models} is not a folder; give a ComfyUI-style models folder "
                             "(with sams/, depthanything/, checkpoints/ or diffusers/, surgsora/).")
        check_device(args.device)


def _os_error_sentence(e: OSError) -> str:
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    if e.errno == errno.ENOSPC:
        return f"the disk is full{where}; nothing was left under the output names. Free some space or choose " \
               "another --out."
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where}; choose a folder you can write to."
    return f"{e.strerror or e}{where}."


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns 0, or exits with 2 (usage error: one sentence on stderr) or 1 (the run failed)."""
    args = build_parser().parse_args(argv)
    from .loading.io import ModelFileError
    from .motion.tracks import TrackError
    from .video_io import OutputPathError

    if args.command in ("preview", "generate"):
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
    except MemoryError:
        print("error: out of memory; use fewer --frames, a smaller --size or fewer tracks.", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk or a folder that became read-only mid-run: outputs were cleaned up
        print(f"error: {_os_error_sentence(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; no partial output was left.", file=sys.stderr)
        return 130
    return 0
