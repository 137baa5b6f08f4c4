"""The job file: read and validate every row before any model loads, then expand rows into clips.

A job file is CSV (a header row, then one row per source frame) or JSONL (one JSON object per line) with the
columns :data:`COLUMNS`; only ``image`` and ``tracks`` are required, an empty cell takes the command-line default.
Relative paths are relative to the job file's folder. Each bad row becomes one sentence naming the job file, its
line number, what is wrong and how to fix it (:class:`RowProblem`); problems of the file itself (not found, unknown
columns) are a :class:`JobError`.

Clip ids: a row's ``id`` (or, without one, the image's name plus a digest of the row's cells, so it does not
change when rows are added or reordered) followed by ``-v<k>``, k = 0 for the motion as drawn and 1..variants for
the jittered copies. The seed of a clip depends on its row and variant only (:func:`clip_seed`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["COLUMNS", "MODES", "MAX_VARIANTS", "JobError", "RowProblem", "Defaults", "JobRow", "Clip",
           "read_job_file", "validate_rows", "expand_clips", "clip_seed", "file_sha256", "ID_PATTERN"]

COLUMNS = ("id", "image", "tracks", "mode", "frames", "size", "seed", "variants", "masks", "clicks")
REQUIRED = ("image", "tracks")
MODES = ("ttm", "mofa", "surgsora")
MAX_VARIANTS = 1000
# An id names a folder: no separators, no leading dot (hidden) and nothing that could climb out of clips/.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
MAX_JOB_FILE = 256 << 20


class JobError(ValueError):
    """The job file itself cannot be used (one sentence)."""


class RowProblem(ValueError):
    """One bad row: ``line`` and one sentence naming it and the fix."""

    def __init__(self, line: int, message: str, row_id: str | None = None):
        super().__init__(message)
        self.line, self.row_id = line, row_id


@dataclass(frozen=True)
class Defaults:
    """What an empty cell means (the command line's flags)."""

    mode: str | None = None  # None: the best mode whose files are present
    frames: int = 14
    size: tuple[int, int] | None = None  # None: about 448x256 with the frame's aspect
    seed: int = 0
    variants: int = 0


@dataclass
class JobRow:
    """A validated row. ``tracks`` [N, T, 2] float32 at the working ``size``; ``frame_size`` the source frame's."""

    line: int
    id: str
    image: Path
    image_text: str
    tracks_text: str
    tracks_source: str
    mode: str | None
    frames: int
    size: tuple[int, int]
    seed: int
    variants: int
    frame_size: tuple[int, int]
    tracks: np.ndarray = field(repr=False)
    masks: tuple[Path, ...] = ()
    clicks: tuple[tuple[float, float], ...] = ()
    mask_texts: tuple[str, ...] = ()  # the masks as the job file names them (for meta.json)


@dataclass(frozen=True)
class Clip:
    """One clip to make: ``variant`` 0 is the motion as drawn; ``order`` its place in the job (for the index)."""

    id: str
    row: JobRow
    variant: int
    seed: int
    order: int


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def clip_seed(row_seed: int, variant: int) -> int:
    """Variant 0 samples with the row's seed (as ``generate --seed`` would); variant k > 0 with a seed derived from
    (row seed, k) alone, so a clip gets the same seed on any number of processes and in any job order."""
    if variant == 0:
        return int(row_seed)
    digest = hashlib.sha256(f"surgsora-synth:{int(row_seed)}:{int(variant)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: a valid torch seed


# ----------------------------------------------------------------------------------------------- reading

def read_job_file(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, cells) of every row of a CSV or JSONL job file; :class:`JobError` for the file itself."""
    path = Path(path)
    if not path.is_file():
        raise JobError(f"--jobs: {path} does not exist" + (" (it is a folder)" if path.is_dir() else "")
                       + "; give a .csv or .jsonl job file.")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise JobError(f"--jobs: {path} is neither .csv nor .jsonl; give a CSV with a header row or a JSONL file "
                       "(one JSON object per line).")
    if path.stat().st_size > MAX_JOB_FILE:
        raise JobError(f"--jobs: {path} is larger than {MAX_JOB_FILE >> 20} MB; split it into several job files.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise JobError(f"--jobs: {path} is not UTF-8 text (undecodable byte at position {e.start}); save it as "
                       "UTF-8.") from None
    rows = _read_csv(path, text) if suffix == ".csv" else _read_jsonl(path, text)
    if not rows:
        raise JobError(f"--jobs: {path} holds no rows; add one row per source frame (columns "
                       f"{','.join(COLUMNS[1:])}).")
    return rows


def _read_csv(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    import io

    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return []
    header = [h.strip().lower() for h in header]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise JobError(f"--jobs: {path} line 1 has the unknown column {unknown[0]!r}; the columns are "
                       f"{', '.join(COLUMNS)}.")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise JobError(f"--jobs: {path} has no {missing[0]!r} column in its header (line 1); the columns are "
                       f"{', '.join(COLUMNS)} ({' and '.join(REQUIRED)} required).")
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise JobError(f"--jobs: {path} line 1 names the column {dup!r} twice; keep one.")
    rows = []
    start = reader.line_num + 1
    for cells in reader:
        line = start
        start = reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue  # a blank line
        if len(cells) > len(header):
            rows.append((line, {"__error__": f"line {line} has {len(cells)} fields but the header has "
                                             f"{len(header)}; quote cells that contain commas (inline JSON)"}))
            continue
        rows.append((line, {h: c.strip() for h, c in zip(header, cells)}))
    return rows


def _read_jsonl(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for i, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            rows.append((i, {"__error__": f"line {i} is not valid JSON ({e.msg} at column {e.colno}); write one JSON "
                                          "object per line"}))
            continue
        if not isinstance(obj, dict):
            rows.append((i, {"__error__": f"line {i} is a JSON {type(obj).__name__}, not an object; write "
                                          '{"image": ..., "tracks": ...} per line'}))
            continue
        unknown = [k for k in obj if str(k).lower() not in COLUMNS]
        if unknown:
            rows.append((i, {"__error__": f"line {i} has the unknown key {unknown[0]!r}; the keys are "
                                          f"{', '.join(COLUMNS)}"}))
            continue
        rows.append((i, {str(k).lower(): v for k, v in obj.items()}))
    return rows


# ----------------------------------------------------------------------------------------------- cells

def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v).strip()


def _whole(where: str, name: str, v: Any, default: int, example: str) -> int:
    if v is None or (isinstance(v, str) and not v.strip()):
        return default
    if isinstance(v, bool):
        raise ValueError(f"{where}: {name} must be a whole number such as {example}; got {v!r}")
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
            raise ValueError(f"{where}: {name} must be a whole number such as {example}; got {v!r}")
        return int(v)
    try:
        return int(str(v).strip())
    except ValueError:
        raise ValueError(f"{where}: {name} must be a whole number such as {example}; got {_text(v)!r}") from None


def _paths(v: Any) -> list[str]:
    if v is None:
        return []
    items = v if isinstance(v, list) else str(v).split(";")
    return [str(p).strip() for p in items if str(p).strip()]


def _clicks(where: str, v: Any) -> list[tuple[float, float]]:
    if v is None or (isinstance(v, str) and not v.strip()):
        return []
    how = "clicks must be x,y points in pixels of the frame separated by ';' (CSV) or [[x, y], ...] (JSONL)"
    try:
        if isinstance(v, list):
            pts = [(float(p[0]), float(p[1])) for p in v if len(p) == 2]
            if len(pts) != len(v):
                raise ValueError
        else:
            pts = []
            for part in str(v).split(";"):
                if part.strip():
                    x, y = part.split(",")
                    pts.append((float(x), float(y)))
    except (ValueError, TypeError, IndexError):
        raise ValueError(f"{where}: {how}; got {_text(v)!r}") from None
    return pts


def _resolve(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def _strip_flag(message: str, flag: str) -> str:
    return message[len(flag) + 2:] if message.startswith(flag + ": ") else message


def _derived_id(cells: dict[str, Any]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(_text(cells.get("image"))).stem)[:40].lstrip("._-") or "row"
    canonical = json.dumps({k: _text(cells.get(k)) for k in COLUMNS if k != "id"}, sort_keys=True)
    return f"{stem}-{hashlib.sha256(canonical.encode()).hexdigest()[:10]}"


def validate_row(line: int, cells: dict[str, Any], base: Path, name: str, defaults: Defaults,
                 tiny: bool = False) -> JobRow:
    """One row checked in full (the frame read, the tracks parsed and prepared, the masks read), or
    :class:`RowProblem` with one sentence."""
    from ..cli_inputs import UsageError, auto_size, load_frame, load_tracks_arg, masks_arg
    from ..motion.tracks import TrackError, check_canvas, parse_track_data, prepare_tracks
    from ..sampling.settings import SVD_MULTIPLE, SettingError, check_settings, check_video_size

    where = f"{name} line {line}"

    def problem(msg: str) -> RowProblem:
        return RowProblem(line, msg.rstrip(".") + ".", row_id)

    row_id = _text(cells.get("id")) or None
    if "__error__" in cells:
        raise problem(f"{name} {cells['__error__']}")
    if row_id is not None and not ID_PATTERN.match(row_id):
        raise problem(f"{where}: id {row_id!r} names the clip folder, so it may hold only letters, digits, '.', '_' "
                      "and '-' (at most 80, starting with a letter or digit); rename it")
    row_id = row_id or _derived_id(cells)
    for col in REQUIRED:
        if not _text(cells.get(col)):
            raise problem(f"{where}: the {col} column is empty; give "
                          + ("the path of the source frame (relative to the job file)" if col == "image" else
                             "a tracks JSON file (relative to the job file) or inline JSON"))
    try:
        frames = _whole(where, "frames", cells.get("frames"), defaults.frames, "14")
        seed = _whole(where, "seed", cells.get("seed"), defaults.seed, "0")
        variants = _whole(where, "variants", cells.get("variants"), defaults.variants, "3")
        clicks = _clicks(where, cells.get("clicks"))
    except ValueError as e:
        raise problem(str(e)) from None
    if seed < 0:  # -1 means "random" elsewhere; a dataset's clips must be reproducible
        raise problem(f"{where}: seed must be 0 or more (a dataset's clips are reproducible, so there is no random "
                      f"seed); got {seed}")
    try:
        check_settings({"frames": f"{where}: frames", "seed": f"{where}: seed"}, frames=frames, seed=seed)
    except SettingError as e:
        raise problem(str(e)) from None
    if not 0 <= variants <= MAX_VARIANTS:
        raise problem(f"{where}: variants must be between 0 and {MAX_VARIANTS} (jittered copies besides the motion "
                      f"as drawn); got {variants}")
    mode = _text(cells.get("mode")).lower() or defaults.mode
    if mode is not None and mode not in MODES:
        raise problem(f"{where}: unknown mode {_text(cells.get('mode'))!r}; use ttm, mofa, surgsora or leave it empty "
                      "(the best one whose files are present)")
    if tiny and mode == "mofa":
        raise problem(f"{where}: mode mofa needs MOFA-Video-Traj's ControlNet, which --tiny-models does not have; use "
                      "surgsora or ttm, or give --models")

    image_text = _text(cells.get("image"))
    image = _resolve(base, image_text)
    if not image.exists():
        raise problem(f"{where}: the image {image_text} does not exist (looked at {image}); fix the path (relative "
                      "to the job file's folder)")
    try:
        frame = load_frame(image)
    except UsageError as e:
        raise problem(f"{where}: {_strip_flag(e.message, '--image')}") from None
    H0, W0 = frame.shape[:2]
    size_text = _text(cells.get("size"))
    if size_text:
        try:
            w, h = (int(v) for v in size_text.lower().split("x"))
        except ValueError:
            raise problem(f"{where}: size must look like 448x256 (width x height, multiples of 64); got "
                          f"{size_text!r}") from None
        size = (w, h)
    else:
        size = defaults.size or auto_size(W0, H0, SVD_MULTIPLE, 448 * 256)
    try:
        check_video_size(*size, what=f"{where}: size")
    except SettingError as e:
        raise problem(str(e)) from None
    if max(size) > 8192:
        raise problem(f"{where}: size {size[0]}x{size[1]} is larger than 8192 on a side; choose a working size such "
                      "as 1024x576")

    tracks_cell = cells.get("tracks")
    tracks_text = _text(tracks_cell)
    inline = isinstance(tracks_cell, (dict, list)) or tracks_text.lstrip("\ufeff")[:1] in ("[", "{")
    source = "inline" if inline else tracks_text
    try:
        text = tracks_text if inline else load_tracks_arg(str(_resolve(base, tracks_text)))
        ts = parse_track_data(text)
        if ts.canvas is not None:
            check_canvas(ts.canvas, (W0, H0), f"the image {Path(image_text).name}")
        tracks = prepare_tracks(ts, canvas_size=(W0, H0), size=size, num_frames=frames)
    except UsageError as e:
        raise problem(f"{where}: tracks: {_strip_flag(e.message, '--tracks')}") from None
    except TrackError as e:
        raise problem(f"{where}: tracks: {e}") from None

    mask_texts = _paths(cells.get("masks"))
    masks = tuple(_resolve(base, m) for m in mask_texts)
    if masks and clicks:
        raise problem(f"{where}: give masks or clicks, not both (clicks are segmented with SAM into region masks)")
    if masks:
        try:
            masks_arg([str(m) for m in masks], size, (W0, H0))
        except UsageError as e:
            raise problem(f"{where}: masks: {_strip_flag(e.message, '--masks')}") from None
    for x, y in clicks:
        if not (math.isfinite(x) and math.isfinite(y) and 0 <= x < W0 and 0 <= y < H0):
            raise problem(f"{where}: the click ({x:g}, {y:g}) is outside the {W0}x{H0} frame; give clicks in pixels of "
                          "the frame")
    return JobRow(line=line, id=row_id, image=image, image_text=image_text, tracks_text=text,
                  tracks_source=source, mode=mode, frames=frames, size=size, seed=seed, variants=variants,
                  frame_size=(W0, H0), tracks=tracks, masks=masks, clicks=tuple(clicks),
                  mask_texts=tuple(mask_texts))


def validate_rows(rows: list[tuple[int, dict[str, Any]]], job_path: Path, defaults: Defaults,
                  tiny: bool = False) -> tuple[list[JobRow], list[RowProblem]]:
    """Every row validated: (good rows in job order, problems in job order). Duplicate ids are problems of the
    later row."""
    base = Path(job_path).parent
    good, problems, seen = [], [], {}
    for line, cells in rows:
        try:
            row = validate_row(line, cells, base, Path(job_path).name, defaults, tiny)
        except RowProblem as p:
            problems.append(p)
            continue
        if row.id in seen:
            problems.append(RowProblem(line, f"{Path(job_path).name} line {line}: the id {row.id!r} is already used by "
                                             f"line {seen[row.id]}; give each row its own id (or remove the repeated "
                                             "row).", row.id))
            continue
        seen[row.id] = line
        good.append(row)
    return good, problems


def expand_clips(rows: list[JobRow]) -> list[Clip]:
    """Every clip of the job, in job order: per row the motion as drawn (v0), then its variants."""
    clips = []
    for row in rows:
        for k in range(row.variants + 1):
            clips.append(Clip(id=f"{row.id}-v{k}", row=row, variant=k, seed=clip_seed(row.seed, k), order=len(clips)))
    return clips
