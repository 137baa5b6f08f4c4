"""Training data: clip discovery, the one-time preprocessing cache, and the dataset that reads it.

``python -m train preprocess`` turns videos into clips of T frames and computes, once per clip, what
the published scripts recomputed at every training step: SAM features of frame 0 (fp16), depth of
frame 0, dense flow 0 -> t (OpenCV DIS chained and composed, or RAFT from a local weights file) and the
stage-2 sparse samples. Each clip is one safetensors shard ``clips/<id>.safetensors``:

    frames  uint8   [T, H, W, 3]   RGB
    seg     float16 [256, 64, 64]  SAM image embedding of frame 0
    depth   float16 [1, H, W]      relative depth of frame 0 in [0, 1]
    flow    float16 [T-1, 2, H, W] flow frame 0 -> t in pixels (x, y)
    points  float32 [N, 2]         stage-2 guide points (x, y) at frame 0
    disp    float32 [T-1, N, 2]    their displacement 0 -> t
    regions uint8   [M, H, W/8]    stage-2 region masks of frame 0, bit-packed along x (np.packbits)

with the settings in the safetensors metadata (``cache_version``, source, start frame, fps, padding ...).

Guide points are drawn as published (grid + watershed on the flow resized to 384x384: grid stride 80,
NMS 15; :mod:`train.sparse`) and mapped to the working size. Region masks are what the stage-2 decoder
gets at inference: instrument masks supplied with the data (``--masks``, or ``mask_*_f<N>.png`` next to a
video, N = the clip's first frame in the source) or else SAM masks prompted at the guide points, as the
CLI prompts SAM at the track starts.
Shards are written to a temporary name and renamed; a per-clip lock file (``O_EXCL``) lets several
processes share the work; a shard whose header, size, version or tensors do not check out is rebuilt,
never read. ``index.json`` lists the complete shards and is rewritten only when it changes.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from filelock import FileLock

from surgsora.atomic import atomic_output
from surgsora.loading.io import ModelFileError, read_safetensors_header
from surgsora.video_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_image, read_video, video_info

__all__ = ["CACHE_VERSION", "ClipSpec", "discover_clips", "fit_frames", "content_box", "frame_files", "find_region_masks",
           "load_region_masks", "Preprocessor", "ClipDataset", "validate_shard", "CacheError"]

CACHE_VERSION = 2  # 2: guide points on the 384 px flow, region masks
TENSORS = ("frames", "seg", "depth", "flow", "points", "disp", "regions")
LIST_EXTENSIONS = (".csv", ".txt")


class CacheError(RuntimeError):
    """The preprocessed cache is missing, stale or does not match the training settings."""


@dataclass(frozen=True)
class ClipSpec:
    source: str  # a video file or a folder of frames
    start: int
    clip_id: str


def _clip_id(source: Path, start: int) -> str:
    digest = hashlib.blake2b(str(source.resolve()).encode(), digest_size=4).hexdigest()
    return f"{source.stem}-{digest}-f{start:06d}"


def _natural_key(name: str):
    # frame_2 before frame_10: numbers compare as numbers (zero-padded names sort the same either way).
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def frame_files(folder: Path) -> list[Path]:
    """The image frames of a frame folder in frame order (numbers in the names sorted numerically)."""
    return sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                  key=lambda p: _natural_key(p.name))


def _frame_count(source: Path) -> int:
    if source.is_dir():
        return len(frame_files(source))
    info = video_info(source)
    return info["frames"]


def _read_clip(source: Path, start: int, count: int) -> np.ndarray:
    if not source.is_dir():
        return read_video(source, start=start, count=count)
    files = frame_files(source)[start:start + count]
    if not files:
        raise ValueError(f"{source} has no frames from index {start}")
    frames = [read_image(p) for p in files]
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"frames {files[0].name}..{files[-1].name} in {source} differ in size")
    return np.stack(frames)


def _read_clip_list(path: Path) -> tuple[dict[Path, list[int]], list[str]]:
    """A clip list: CSV with a header naming a ``video`` (or ``frames`` / ``folder`` / ``path``) column and an
    optional ``start`` column, or TXT with one ``PATH [START]`` per line (``#`` comments). Paths are videos
    or frame folders, relative to the list. Returns {source: [starts]} and problems."""
    rows: list[tuple[str, str]] = []
    problems: list[str] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            table = list(csv.DictReader(f))
        column = next((c for c in ("video", "frames", "folder", "path") if table and c in table[0]), None)
        if column is None:
            return {}, [f"{path}: a clip list needs a header with a video (or frames/folder/path) column and "
                        "optionally start"]
        rows = [(r[column], r.get("start") or "0") for r in table]
    else:
        for line in path.read_text().splitlines():
            parts = line.split("#", 1)[0].split()
            if parts:
                rows.append((parts[0], parts[1] if len(parts) > 1 else "0"))
    by_source: dict[Path, list[int]] = {}
    for i, (name, start) in enumerate(rows, start=2 if path.suffix.lower() == ".csv" else 1):
        if not start.strip().isdigit():
            problems.append(f"{path} line {i}: start {start!r} is not a frame number; skipped")
            continue
        source = Path(name)
        source = source if source.is_absolute() else path.parent / source
        by_source.setdefault(source, []).append(int(start))
    return by_source, problems


def discover_clips(inputs, num_frames: int, frame_step: int = 1, clip_stride: int | None = None
                   ) -> tuple[list[ClipSpec], list[str]]:
    """Clips of ``num_frames`` frames (every ``frame_step``-th frame) from videos, frame folders or a CSV.

    ``inputs``: paths, each a video, a frame folder, a folder of videos or of frame folders (CoPESD-style:
    one folder of numbered frames per video), or a clip list (CSV with columns ``video,start`` or TXT lines
    ``PATH [START]``; see :func:`_read_clip_list`). Returns the clips and one message per input that gave
    none (empty folder, too short, unreadable), so the rest still runs.
    """
    span = (num_frames - 1) * frame_step + 1
    stride = clip_stride or span
    specs: list[ClipSpec] = []
    problems: list[str] = []

    def add_source(src: Path, starts=None):
        try:
            n = _frame_count(src)
        except (ValueError, OSError) as e:
            problems.append(f"{src}: unreadable ({e})")
            return
        if n < span:
            problems.append(f"{src}: {n} frames, shorter than one clip of {num_frames} frames "
                            f"(x{frame_step} step = {span}); skipped")
            return
        for s in (starts if starts is not None else range(0, n - span + 1, stride)):
            if s + span > n:
                problems.append(f"{src}: clip at frame {s} runs past the end ({n} frames); skipped")
                continue
            specs.append(ClipSpec(str(src), int(s), _clip_id(src, int(s))))

    for item in map(Path, inputs):
        if not item.exists():
            problems.append(f"{item}: no such file or folder")
        elif item.suffix.lower() in LIST_EXTENSIONS and item.is_file():
            by_source, list_problems = _read_clip_list(item)
            problems.extend(list_problems)
            for source, starts in by_source.items():
                if source.exists():
                    add_source(source, sorted(set(starts)))
                else:
                    problems.append(f"{item}: listed {source} does not exist")
        elif item.is_dir():
            videos = sorted(p for p in item.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
            frame_dirs = sorted(p for p in item.iterdir() if p.is_dir())
            own_frames = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in item.iterdir())
            if own_frames:
                add_source(item)
            for v in videos:
                add_source(v)
            for d in frame_dirs:
                add_source(d)
            if not (videos or frame_dirs or own_frames):
                problems.append(f"{item}: empty folder (no {'/'.join(VIDEO_EXTENSIONS)} videos or frame folders)")
        elif item.suffix.lower() in VIDEO_EXTENSIONS:
            add_source(item)
        else:
            problems.append(f"{item}: not a video, frame folder or CSV clip list")
    return specs, problems


def _resize_stack(frames: np.ndarray, size_wh: tuple[int, int], interpolation=cv2.INTER_AREA) -> np.ndarray:
    """[T, H, W, C] -> [T, h, w, C] (cv2 drops a single channel axis: put it back)."""
    out = np.stack([cv2.resize(f, size_wh, interpolation=interpolation) for f in frames])
    return out.reshape(*out.shape[:3], frames.shape[-1])


def fit_frames(frames: np.ndarray, size: tuple[int, int], mode: str = "pad", pad: str = "center",
               content_size: tuple[int, int] | None = None) -> np.ndarray:
    """Fit frames [T, H, W, C] (uint8) to ``size`` = (h, w).

    ``mode``: ``pad`` (keep the aspect ratio, fill the rest with black), ``resize`` (stretch) or ``crop``
    (keep the aspect ratio, centre crop). With ``pad``, ``content_size`` = (h, w) resizes the content to
    exactly that size first (the paper: 197x256 content padded to 256x256), and ``pad`` places it:
    ``center``, or ``bottom`` (content at the top, all padding rows at the bottom, as the paper pads).
    """
    t, h, w, c = frames.shape
    th, tw = size
    if mode == "resize":
        return _resize_stack(frames, (tw, th))
    if mode not in ("pad", "crop"):
        raise ValueError(f"--fit must be pad, resize or crop; got {mode!r}")
    if pad not in ("center", "bottom"):
        raise ValueError(f"--pad must be center or bottom; got {pad!r}")
    if mode == "pad":
        if content_size is not None:
            nh, nw = content_size
            if nh > th or nw > tw:
                raise ValueError(f"--content-size {nh}x{nw} is larger than --size {th}x{tw}")
        else:
            scale = min(th / h, tw / w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        resized = _resize_stack(frames, (nw, nh))
        out = np.zeros((t, th, tw, c), dtype=frames.dtype)
        y0 = 0 if pad == "bottom" else (th - nh) // 2
        x0 = (tw - nw) // 2
        out[:, y0:y0 + nh, x0:x0 + nw] = resized
        return out
    scale = max(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = _resize_stack(frames, (nw, nh))
    y0, x0 = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(resized[:, y0:y0 + th, x0:x0 + tw])


def content_box(source_hw: tuple[int, int], size: tuple[int, int], mode: str = "pad", pad: str = "center",
                content_size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the picture inside a frame fitted by :func:`fit_frames` (the rest is padding)."""
    th, tw = size
    if mode != "pad":
        return 0, th, 0, tw
    h, w = source_hw
    if content_size is not None:
        nh, nw = content_size
    else:
        scale = min(th / h, tw / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    y0 = 0 if pad == "bottom" else (th - nh) // 2
    x0 = (tw - nw) // 2
    return y0, y0 + nh, x0, x0 + nw


_MASK_FRAME = re.compile(r"_f0*(\d+)$")


def find_region_masks(source: str | os.PathLike, start: int, masks_dir: str | os.PathLike | None = None) -> list[Path]:
    """Region-mask images for frame ``start`` of ``source`` (a video or frame folder).

    A mask file is an image whose name ends in ``_f<N>`` with N the frame index in the source (any zero
    padding: ``mask_left_instrument_f06.png`` is frame 6); each file is one region (label values > 0 are
    inside). Searched in ``masks_dir/<source name>/`` if that folder exists, else ``masks_dir``; without
    ``masks_dir``, the ``mask_*`` files next to a video (EndoVis-style).
    """
    source = Path(source)
    if masks_dir is not None:
        folder = Path(masks_dir) / source.stem if (Path(masks_dir) / source.stem).is_dir() else Path(masks_dir)
        prefix = ""
    elif source.is_file():
        folder, prefix = source.parent, "mask"
    else:
        return []
    found = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _MASK_FRAME.search(p.stem)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.name.startswith(prefix) and m \
                and int(m.group(1)) == start:
            found.append(p)
    return found


def load_region_masks(paths: list[Path], source_hw: tuple[int, int], size: tuple[int, int], fit: str = "pad",
                      pad: str = "center", content_size: tuple[int, int] | None = None) -> np.ndarray:
    """Mask files -> bool [M, h, w] fitted to the working size exactly as the frames are."""
    masks = []
    for p in paths:
        m = read_image(p).max(-1) > 0
        if m.shape != tuple(source_hw):
            raise ValueError(f"mask {p.name} is {m.shape[1]}x{m.shape[0]}, the video is {source_hw[1]}x{source_hw[0]}")
        masks.append(m)
    if not masks:
        return np.zeros((0, *size), dtype=bool)
    stack = (np.stack(masks)[..., None] * np.uint8(255))
    return fit_frames(stack, size, fit, pad, content_size)[..., 0] > 127


def validate_shard(path: Path, num_frames: int | None = None) -> tuple[dict | None, str]:
    """(metadata, "") for a complete, current shard; (None, reason) otherwise. Reads the header only."""
    try:
        header = read_safetensors_header(path)
    except (ModelFileError, OSError) as e:
        return None, str(e)
    meta = header.get("__metadata__", {})
    if meta.get("cache_version") != str(CACHE_VERSION):
        return None, f"cache version {meta.get('cache_version')} (this code writes {CACHE_VERSION})"
    missing = [k for k in TENSORS if k not in header]
    if missing:
        return None, f"missing tensors {missing}"
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
    if path.stat().st_size != 8 + header_len + end:
        return None, f"truncated ({path.stat().st_size} bytes, expected {8 + header_len + end})"
    if num_frames is not None and header["frames"]["shape"][0] != num_frames:
        return None, f"{header['frames']['shape'][0]} frames, not {num_frames}"
    return meta, ""


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _ClipLock:
    """An exclusive per-clip lock file; a lock left by a dead process on this host is taken over."""

    def __init__(self, path: Path):
        self.path = path
        self.held = False

    def acquire(self) -> bool:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    host, pid = self.path.read_text().strip().rsplit(":", 1)
                except (OSError, ValueError):
                    host, pid = "", "0"
                if host == socket.gethostname() and not _pid_alive(int(pid)):
                    self.path.unlink(missing_ok=True)  # stale: its process was killed
                    continue
                return False
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(f"{socket.gethostname()}:{os.getpid()}")
            except OSError:  # a full disk: an empty lock would read as someone else's forever
                self.path.unlink(missing_ok=True)
                raise
            self.held = True
            return True
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class Preprocessor:
    """Computes and caches everything a clip needs for training (see module docstring)."""

    def __init__(self, cache_dir, sam, depth, size: tuple[int, int] = (256, 256), fit: str = "pad",
                 num_frames: int = 21, frame_step: int = 1, flow_method: str = "dis",
                 raft_weights: str | None = None, depth_input_size: int = 518, seed: int = 0,
                 model_names: dict | None = None, log=print, pad: str = "center",
                 content_size: tuple[int, int] | None = None, masks_dir: str | os.PathLike | None = None,
                 regions: str = "auto"):
        if regions not in ("auto", "supplied", "sam", "none"):
            raise ValueError(f"--regions must be auto, supplied, sam or none; got {regions!r}")
        self.cache = Path(cache_dir)
        self.clips_dir = self.cache / "clips"
        self.clips_dir.mkdir(parents=True, exist_ok=True)
        self.sam, self.depth = sam, depth
        self.size, self.fit, self.num_frames, self.frame_step = tuple(size), fit, num_frames, frame_step
        self.pad, self.content_size = pad, tuple(content_size) if content_size else None
        self.masks_dir, self.regions = masks_dir, regions
        self.flow_method, self.raft_weights = flow_method, raft_weights
        self.depth_input_size, self.seed = depth_input_size, seed
        self.model_names = model_names or {}
        self.log = log

    @property
    def settings(self) -> str:
        """What a shard depends on besides its clip: a shard made with other settings is rebuilt."""
        content = "x".join(map(str, self.content_size)) if self.content_size else ""
        return json.dumps([self.size, self.fit, self.pad, content, self.frame_step, self.flow_method,
                           self.depth_input_size, self.seed, self.regions, str(self.masks_dir or ""),
                           self.model_names.get("sam", ""), self.model_names.get("depth", "")])

    def shard_path(self, spec: ClipSpec) -> Path:
        return self.clips_dir / f"{spec.clip_id}.safetensors"

    def _regions(self, spec: ClipSpec, source_hw, first: torch.Tensor, points: np.ndarray) -> tuple[np.ndarray, str]:
        """Region masks bool [M, H, W] of frame 0 and where they came from."""
        h, w = self.size
        if self.regions in ("auto", "supplied"):
            paths = find_region_masks(spec.source, spec.start, self.masks_dir)
            if paths:
                masks = load_region_masks(paths, source_hw, self.size, self.fit, self.pad, self.content_size)
                return masks, "supplied:" + ",".join(p.name for p in paths)
            if self.regions == "supplied":
                raise ValueError(f"no mask files for frame {spec.start} of {spec.source} "
                                 f"(looked in {self.masks_dir or Path(spec.source).parent})")
        if self.regions == "none" or not len(points):
            return np.zeros((0, h, w), dtype=bool), "none"
        # As the CLI prompts SAM at each track start: one mask per guide point (pixel centre), duplicates dropped.
        masks, seen = [], set()
        with torch.no_grad():
            for x, y in points:
                m = self.sam.predict_masks(first, points=np.array([[x + 0.5, y + 0.5]]))[0][0].cpu().numpy()
                key = hashlib.blake2b(np.packbits(m).tobytes(), digest_size=8).digest()
                if m.any() and key not in seen:
                    seen.add(key)
                    masks.append(m)
        return (np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)), "sam"

    def compute(self, spec: ClipSpec) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        from surgsora.motion.optical_flow import estimate_flow

        from .sparse import sparse_samples

        source = Path(spec.source)
        span = (self.num_frames - 1) * self.frame_step + 1
        raw = _read_clip(source, spec.start, span)[:: self.frame_step]
        if len(raw) != self.num_frames:
            raise ValueError(f"{source}: only {len(raw)} frames from {spec.start}, need {self.num_frames}")
        frames = fit_frames(raw, self.size, self.fit, self.pad, self.content_size)
        flow = estimate_flow(frames, method=self.flow_method, raft_weights=self.raft_weights)
        first = torch.from_numpy(frames[0]).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            seg = self.sam.encode(first)[0]
            depth = self.depth(first, input_size=self.depth_input_size)[0]
        rng = np.random.default_rng([self.seed, int(hashlib.blake2b(spec.clip_id.encode(), digest_size=4).hexdigest(), 16)])
        points, disp = sparse_samples(flow, rng)
        regions, regions_from = self._regions(spec, raw.shape[1:3], first, points)
        fps = 0.0 if source.is_dir() else video_info(source)["fps"] / self.frame_step
        box = content_box(raw.shape[1:3], self.size, self.fit, self.pad, self.content_size)
        tensors = {
            "frames": torch.from_numpy(frames),
            "seg": seg.half().cpu(),
            "depth": depth.half().cpu(),
            "flow": torch.from_numpy(flow).half(),
            "points": torch.from_numpy(points),
            "disp": torch.from_numpy(disp),
            "regions": torch.from_numpy(np.packbits(regions, axis=-1)),
        }
        meta = {
            "cache_version": str(CACHE_VERSION), "source": str(source), "start": str(spec.start),
            "frame_step": str(self.frame_step), "fps": f"{fps:.4f}", "fit": self.fit,
            "size": f"{self.size[0]}x{self.size[1]}", "flow_method": self.flow_method,
            "sam": self.model_names.get("sam", ""), "depth": self.model_names.get("depth", ""),
            "pad": self.pad, "content_box": ",".join(map(str, box)), "regions": regions_from,
            "settings": self.settings,
        }
        return tensors, meta

    def process(self, spec: ClipSpec) -> str:
        """'cached', 'built', 'rebuilt', 'busy' (another process has it) or 'failed: reason'."""
        from safetensors.torch import save_file

        path = self.shard_path(spec)
        status = "built"
        if path.exists():
            meta, reason = validate_shard(path, self.num_frames)
            if meta is not None and meta.get("settings") == self.settings:
                return "cached"
            self.log(f"rebuilding {path.name}: {reason or 'made with other preprocessing settings'}")
            status = "rebuilt"
        lock = _ClipLock(path.with_suffix(".lock"))
        if not lock.acquire():
            return "busy"
        try:
            tensors, meta = self.compute(spec)
        except (ValueError, OSError, ModelFileError, cv2.error) as e:
            lock.release()
            return f"failed: {e}"
        try:
            # Under a temporary name, renamed when whole: a full disk or a kill never leaves a shard that counts
            # as done (a failed write is an OSError naming the shard, and stops the run: the next clip would fail
            # the same way).
            with atomic_output(path) as tmp:
                save_file(tensors, str(tmp), metadata=meta)
            return status
        finally:
            lock.release()

    def run(self, specs: list[ClipSpec], progress: bool = True) -> dict[str, int]:
        from tqdm import tqdm

        counts: dict[str, int] = {}
        bar = tqdm(specs, desc="preprocess", unit="clip", disable=not progress)
        for spec in bar:
            try:
                status = self.process(spec)
            except OSError:  # the disk is full: index what is complete (if it still fits), then stop
                bar.close()  # the caller's error goes on a line of its own
                with contextlib.suppress(OSError):
                    self.write_index()
                raise
            if status.startswith("failed"):
                self.log(f"{spec.source} @ {spec.start}: {status}")
                status = "failed"
            counts[status] = counts.get(status, 0) + 1
        self.write_index()
        return counts

    def write_index(self) -> Path:
        """Rewrite ``index.json`` from the complete shards on disk (under a file lock; only if it changed)."""
        index_path = self.cache / "index.json"
        # filelock rather than fcntl: the same code locks on Windows.
        with FileLock(str(self.cache / "index.lock")):
            clips = []
            for path in sorted(self.clips_dir.glob("[!.]*.safetensors")):  # not a shard still being written
                meta, _ = validate_shard(path, self.num_frames)
                if meta is not None:
                    clips.append({"id": path.stem, "file": f"clips/{path.name}", "source": meta["source"],
                                  "start": int(meta["start"]), "fps": float(meta["fps"]),
                                  "content_box": [int(v) for v in meta["content_box"].split(",")],
                                  "regions": meta["regions"].split(":")[0]})
            index = {"cache_version": CACHE_VERSION, "num_frames": self.num_frames,
                     "size": list(self.size), "clips": clips}
            text = json.dumps(index, indent=1)
            if not index_path.exists() or index_path.read_text() != text:
                with atomic_output(index_path) as tmp:
                    tmp.write_text(text)
        return index_path


class ClipDataset(torch.utils.data.Dataset):
    """Reads the preprocessed shards listed in ``index.json``; every item is a dict of tensors."""

    def __init__(self, cache_dir, ids: list[str] | None = None):
        self.cache = Path(cache_dir)
        index_path = self.cache / "index.json"
        if not index_path.is_file():
            raise CacheError(f"No preprocessed data in {self.cache} (index.json missing): run "
                             f"`python -m train preprocess --out {self.cache} VIDEOS...` first.")
        index = json.loads(index_path.read_text())
        if index.get("cache_version") != CACHE_VERSION:
            raise CacheError(f"{self.cache} was preprocessed by cache version {index.get('cache_version')}, this "
                             f"code needs {CACHE_VERSION}: re-run `python -m train preprocess` on it (stale shards "
                             "are rebuilt, current ones kept).")
        self.num_frames = index["num_frames"]
        self.size = tuple(index["size"])
        clips = index["clips"]
        if ids is not None:
            clips = [c for c in clips if c["id"] in set(ids)]
        if not clips:
            raise CacheError(f"{index_path} lists no clips: preprocessing found nothing usable.")
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        from safetensors.torch import load_file

        clip = self.clips[i]
        path = self.cache / clip["file"]
        meta, reason = validate_shard(path, self.num_frames)
        if meta is None:
            raise CacheError(f"{path} is unusable ({reason}): re-run `python -m train preprocess` to rebuild it.")
        item = load_file(str(path))
        width = item["frames"].shape[2]
        item["regions"] = torch.from_numpy(np.unpackbits(item["regions"].numpy(), axis=-1, count=width).astype(bool))
        item["fps"] = torch.tensor(float(meta["fps"]))
        item["index"] = torch.tensor(i)
        # Names this clip's content (the id and the preprocessing settings) for caches of derived values.
        item["clip_id"] = f"{clip['id']}-{hashlib.blake2b(meta.get('settings', '').encode(), digest_size=4).hexdigest()}"
        return item


