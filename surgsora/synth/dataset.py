"""The dataset folder: its identity, which clips are done, the index merge and the dataset card.

Layout::

    DATASET/dataset.json        what this folder is (format, job file SHA-256, every setting): a rerun with another
                                job file or other settings is refused instead of mixing two datasets
    DATASET/models.json         SHA-256 of every model file used (computed once, reused by reruns)
    DATASET/clips/<id>/         one folder per clip; done when its meta.json exists (written last)
    DATASET/index.jsonl         one line per finished clip, in job order (merged from the processes' shards)
    DATASET/failures.jsonl      rows and clips that failed, with --on-error skip
    DATASET/README.md           the dataset card

Every file is written under a temporary name and renamed (:func:`surgsora.atomic.atomic_output`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from ..atomic import atomic_output

__all__ = ["FORMAT", "DatasetMismatch", "check_out", "write_json", "write_text", "clip_folder", "read_done",
           "remove_partials",
           "index_entry", "shard_paths", "write_shard", "wait_for_shards", "merge", "write_card", "LICENCES"]

FORMAT = "surgsora-synth/1"
INDEX_DIR = "index"


class DatasetMismatch(ValueError):
    """The output folder holds something else (one sentence)."""


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def check_out(out: Path, identity: dict) -> bool:
    """None of this dataset's business is in ``out`` yet (True: a new dataset), or it is this same dataset (False:
    resume); anything else is a :class:`DatasetMismatch` naming the difference. Reads only."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetMismatch(f"--out {out} is a file; give a folder for the dataset.")
    if not out.exists() or not any(not _ours_partial(p) for p in out.iterdir()):
        return True
    marker = out / "dataset.json"
    if not marker.is_file():
        raise DatasetMismatch(f"--out {out} holds other files and no dataset.json, so it is not a synth dataset; give "
                              "an empty or new folder.")
    try:
        old = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DatasetMismatch(f"--out {out}: its dataset.json is unreadable; give another folder (or restore the "
                              "file).") from None
    if old.get("format") != identity["format"]:
        raise DatasetMismatch(f"--out {out} holds a dataset of format {old.get('format')!r}, not {FORMAT}; give "
                              "another folder.")
    if old.get("jobs_sha256") != identity["jobs_sha256"]:
        raise DatasetMismatch(f"--out {out} holds another dataset, made from a different job file (SHA-256 "
                              f"{str(old.get('jobs_sha256'))[:12]}..., this one {identity['jobs_sha256'][:12]}...); "
                              "give another --out, or the job file it was made from.")
    a, b = old.get("settings", {}), identity["settings"]
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            raise DatasetMismatch(f"--out {out} holds a dataset made with {key} = {a.get(key)!r}, but this run has "
                                  f"{b.get(key)!r}; rerun with the same settings to resume it, or give another --out.")
    return False


def _ours_partial(path: Path) -> bool:
    """A temporary file :func:`~surgsora.atomic.atomic_output` left when a run was killed mid-write."""
    return path.is_file() and path.name.startswith(".") and ".partial" in path.name


def remove_partials(out: Path) -> None:
    """Temporary files a killed run left in the dataset folder itself (clip folders are remade whole)."""
    for p in Path(out).glob(".*"):
        if _ours_partial(p):
            p.unlink()


def clip_folder(out: Path, clip_id: str) -> Path:
    return Path(out) / "clips" / clip_id


def read_done(folder: Path) -> dict | None:
    """The clip's meta (dict) if it is done: meta.json parses and every file it lists is there with its size."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        for name, info in meta["files"].items():
            if (folder / name).stat().st_size != info["bytes"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


def index_entry(meta: dict, meta_sha256: str) -> dict:
    """The index line of a finished clip (from its meta alone, so a resumed clip lists the same)."""
    return {"id": meta["id"], "path": f"clips/{meta['id']}", "order": meta["order"], "line": meta["row"]["line"],
            "row_id": meta["row"]["id"], "variant": meta["variant"], "mode": meta["mode"], "seed": meta["seed"],
            "frames": meta["settings"]["frames"], "width": meta["settings"]["width"],
            "height": meta["settings"]["height"], "regions": meta["regions"]["count"],
            "follow_epe_px": meta["follow"]["epe_px"], "meta_sha256": meta_sha256}


def shard_paths(out: Path, rank: int) -> tuple[Path, Path]:
    """(index shard, its stats file: written after the shard, it says the process finished)."""
    base = Path(out) / INDEX_DIR / f"shard-{rank:05d}"
    return base.with_suffix(".jsonl"), base.with_suffix(".stats.json")


def write_shard(out: Path, rank: int, entries: list[dict], failures: list[dict], stats: dict) -> None:
    shard, stats_path = shard_paths(out, rank)
    write_text(shard, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    write_json(stats_path, {**stats, "failures": failures})


def wait_for_shards(out: Path, n: int, poll: float = 0.5) -> list[dict]:
    """Every process's stats, once all have written theirs (polling the files, not a collective: processes may
    finish hours apart, longer than a process group's timeout)."""
    paths = [shard_paths(out, r)[1] for r in range(n)]
    while not all(p.is_file() for p in paths):
        time.sleep(poll)
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths]


def merge(out: Path, n: int, validation_failures: list[dict]) -> tuple[list[dict], list[dict]]:
    """index.jsonl from every shard (job order) and failures.jsonl; the shards are removed after. Returns
    (entries, failures)."""
    out = Path(out)
    entries, failures = [], list(validation_failures)
    for r in range(n):
        shard, stats_path = shard_paths(out, r)
        entries += [json.loads(line) for line in shard.read_text(encoding="utf-8").splitlines() if line.strip()]
        failures += json.loads(stats_path.read_text(encoding="utf-8"))["failures"]
    entries.sort(key=lambda e: e["order"])
    failures.sort(key=lambda f: (f["line"], f.get("id") or ""))
    write_text(out / "index.jsonl", "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    if failures:
        write_text(out / "failures.jsonl", "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
    elif (out / "failures.jsonl").exists():
        os.remove(out / "failures.jsonl")  # a rerun fixed them
    shutil.rmtree(out / INDEX_DIR, ignore_errors=True)
    return entries, failures


# What users must know before sharing or training on generated clips (the models' own terms apply).
LICENCES = {
    "svd": "Stable Video Diffusion: Stability AI's licence for the checkpoint used (SVD / SVD-xt: the Stability AI "
           "Community License; check the model page)",
    "sam": "Segment Anything (SAM v1): Apache-2.0",
    "depth": "Depth Anything V2: Small Apache-2.0; Base, Large and Giant CC-BY-NC-4.0 (non-commercial)",
    "adapter": "the SurgSora adapter or MOFA-Video-Traj's ControlNet used: the terms of whoever trained it (and of its "
               "training data)",
    "decoder": "the trajectory decoder: analytic (this package's licence) or MOFA-Video's CMP checkpoint (its "
               "repository's terms)",
    "tiny": "tiny random models (tests and smoke runs): no third-party weights",
}


def write_card(out: Path, identity: dict, entries: list[dict], failures: list[dict], models: dict) -> None:
    """DATASET/README.md: counts, settings, label formats, the models used and their licences."""
    modes: dict[str, int] = {}
    for e in entries:
        modes[e["mode"]] = modes.get(e["mode"], 0) + 1
    rows = len({e["row_id"] for e in entries})
    used = sorted({k for m in models.values() for k in m})
    s = identity["settings"]
    lines = [
        "# Synthetic surgical video dataset",
        "",
        f"Made with `python -m surgsora synth` ({FORMAT}) from a job file with SHA-256 `{identity['jobs_sha256']}`.",
        "",
        "## Counts",
        "",
        f"- clips: {len(entries)} from {rows} source rows"
        + ("" if not modes else " (" + ", ".join(f"{k}: {v}" for k, v in sorted(modes.items())) + ")"),
        f"- failed or skipped rows/clips: {len(failures)}" + (" (see failures.jsonl)" if failures else ""),
        "",
        "## Settings",
        "",
        "| setting | value |",
        "| --- | --- |",
        *[f"| {k} | {json.dumps(v)} |" for k, v in sorted(s.items())],
        "",
        "## Layout and label formats",
        "",
        "- `index.jsonl`: one JSON object per clip (id, path, source line, variant, mode, seed, size, follow score).",
        "- `clips/<id>/video.mp4`: the generated clip, H.264 (yuv420p); `frames/NNN.png` the lossless frames when "
        "made with --save-frames.",
        "- `clips/<id>/masks/NNN.png`: 8-bit instance ids per frame: 0 background, k the k-th region (listed in "
        "meta.json `regions`), carried along the flow with occlusion order (the nearer region wins).",
        "- `clips/<id>/flow.npz`: `flow`, float16 [T-1, 2, H, W], pixels, frame 0 -> t (channel 0 = x right, "
        "1 = y down): the flow the clip was conditioned on.",
        "- `clips/<id>/tracks.json`: the trajectories in ComfyUI's core TRACKS layout (`track_path` [T, N, 2] in "
        "pixels of the clip, `track_visibility` [T, N], `width`, `height`).",
        "- `clips/<id>/meta.json`: source, mode, seed, every setting, the jitter of the variant, model SHA-256s, "
        "package versions, the follow score (`follow.epe_px`: DIS optical flow of the clip against the conditioning "
        "flow, mean end-point error in pixels inside the regions; lower follows better) and the SHA-256 of every "
        "file. Written last: a clip without it is unfinished.",
        "",
        "## Models and licences",
        "",
        *[f"- {mode}: " + ", ".join(f"{k} `{v['path']}`" for k, v in sorted(m.items())) for mode, m in
          sorted(models.items())],
        "",
        *[f"- {LICENCES[k]}" for k in used if k in LICENCES],
        "",
        "Generated clips are synthetic: check them (e.g. by the follow score) before training on them.",
        "",
    ]
    write_text(Path(out) / "README.md", "\n".join(lines))


def clean_partials(folder: Path) -> None:
    """Remove an unfinished clip folder (files of a killed run, temporary files included)."""
    if folder.exists():
        shutil.rmtree(folder)


def iter_lines(path: Path) -> Iterable[dict]:
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield json.loads(line)
