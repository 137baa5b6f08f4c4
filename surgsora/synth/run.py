"""Sharding, models and progress: one process of ``python -m surgsora synth`` (or of ``accelerate launch``).

* Sharding: clip k of the job (in job order) is made by process ``k mod N`` of the N processes accelerate runs
  (:class:`accelerate.PartialState`: ``process_index``, ``num_processes``; several machines alike, with DATASET on a
  shared file system). A clip's bytes do not depend on N: its seed comes from its row and variant only.
* Models: resolved from the models folder per mode (as ``generate`` picks them) and loaded once per process, each
  model once even when several modes share it.
* Progress: one bar per process (clips done / total, clips per minute, ETA); the main process waits for every
  process's index shard (polling files, not a collective, since processes may finish far apart), merges them into
  ``index.jsonl``, writes the dataset card and prints the summary.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from .dataset import clip_folder, index_entry, merge, read_done, wait_for_shards, write_card, write_json, write_shard
from .jobs import Clip, JobRow

__all__ = ["plan_modes", "model_hashes", "load_models", "versions", "run_process", "finish"]

TINY = "tiny-random"


# ================================================================================= modes and models

def plan_modes(rows: list[JobRow], models_dir: Path | None, decoder: str, job_name: str,
               usage_error) -> tuple[dict[str, str], dict[str, dict]]:
    """(row id -> mode, mode -> model paths), refusing before anything loads: a mode whose models are missing
    raises :class:`~surgsora.loading.models_folder.MissingModels` or ``usage_error`` naming the first row asking."""
    first_line: dict[str, int] = {}
    if models_dir is None:  # --tiny-models: a tiny SurgSora adapter, tiny SVD, SAM and depth
        mode_of = {r.id: r.mode or "surgsora" for r in rows}
        for r in rows:
            first_line.setdefault(mode_of[r.id], r.line)
        return mode_of, {m: {"tiny": TINY} for m in first_line}

    from ..loading.catalogue import COMPONENTS, list_models
    from ..loading.mofa import MOFA, SURGSORA, adapter_kind
    from ..loading.models_folder import pick_model, resolve_generate_models

    adapters: dict[str | None, str] = {}
    for root in (models_dir / f for f in COMPONENTS["adapter"][0]):
        for name in list_models([root], "adapter"):
            adapters.setdefault(adapter_kind(root / name), name)
    auto = SURGSORA if SURGSORA in adapters else MOFA if MOFA in adapters else "ttm"
    mode_of = {r.id: r.mode or auto for r in rows}
    for r in rows:
        first_line.setdefault(mode_of[r.id], r.line)
    plan = {}
    for mode, line in first_line.items():
        if mode == "ttm":
            plan[mode] = resolve_generate_models(models_dir, decoder=decoder, mode="ttm")
            continue
        if mode not in adapters:
            what = "a SurgSora adapter (train one with `python -m train`)" if mode == SURGSORA else \
                "MOFA-Video-Traj's ControlNet folder"
            raise usage_error(f"{job_name} line {line}: mode {mode} needs {what} in {models_dir}/surgsora, which holds "
                              "none; put it there, or use another mode (ttm needs only SVD).")
        plan[mode] = resolve_generate_models(models_dir, adapter=adapters[mode], decoder=decoder, mode="adapter")
    for r in rows:
        if r.clicks and "sam" not in plan[mode_of[r.id]] and pick_model(models_dir, "sam", None)[0] is None:
            raise usage_error(f"{job_name} line {r.line}: clicks are segmented with SAM, and {models_dir}/sams holds "
                              "no SAM checkpoint; put one there (e.g. sam_vit_b_01ec64.pth) or give masks instead.")
    return mode_of, plan


def _fingerprint(path: Path) -> list:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(p.relative_to(path)) if p != path else "", p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _digest(path: Path) -> str:
    """SHA-256 of a file; of a model folder, the SHA-256 of its files' relative names and SHA-256s."""
    from .jobs import file_sha256

    if path.is_file():
        return file_sha256(path)
    lines = "".join(f"{p.relative_to(path).as_posix()}\0{file_sha256(p)}\n"
                    for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith("."))
    return hashlib.sha256(lines.encode()).hexdigest()


def model_hashes(out: Path, plan: dict[str, dict], models_dir: Path | None) -> dict[str, dict]:
    """mode -> component -> {"path" (inside the models folder), "sha256"}; the hashes are cached in
    DATASET/models.json by size and modification time, so a rerun does not read gigabytes again."""
    cache_path = out / "models.json"
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    before = json.dumps(cache, sort_keys=True)
    info: dict[str, dict] = {}
    for mode, paths in plan.items():
        info[mode] = {}
        for key, p in sorted(paths.items()):
            if p in (TINY, "analytic"):
                info[mode][key] = {"path": str(p), "sha256": None}
                continue
            p = Path(p)
            name = str(p.relative_to(models_dir)) if models_dir and p.is_relative_to(models_dir) else str(p)
            fp = _fingerprint(p)
            hit = cache.get(name)
            if not hit or hit.get("fingerprint") != fp:
                hit = cache[name] = {"fingerprint": fp, "sha256": _digest(p)}
            info[mode][key] = {"path": name, "sha256": hit["sha256"]}
    if json.dumps(cache, sort_keys=True) != before or not cache_path.exists():  # else another process wrote it
        write_json(cache_path, cache)
    return info


def load_models(plan: dict[str, dict], device, dtype) -> dict[str, Any]:
    """mode -> Models, every model loaded now (once per process, shared between modes)."""
    from ..sampling.generate import Models, _get, load_decoder

    if any("tiny" in p for p in plan.values()):
        from ..tiny import tiny_adapter, tiny_depth, tiny_sam, tiny_svd_components

        svd = tiny_svd_components(seed=0)
        for k in ("vae", "image_encoder", "unet"):
            svd[k] = svd[k].to(device)
        adapter = tiny_adapter(svd["unet"], seed=0, randomize=True).to(device)
        shared = dict(svd=svd, sam=tiny_sam(0), depth=tiny_depth(0), decoder=load_decoder("analytic"))
        return {m: Models(adapter=adapter if m == "surgsora" else None, **shared) for m in plan}
    cache: dict[tuple, Any] = {}

    def once(key: str, path, deferred):
        if deferred is None:
            return None
        if (key, str(path)) not in cache:
            cache[key, str(path)] = _get(deferred)
        return cache[key, str(path)]

    models = {}
    for mode, paths in plan.items():
        m = Models.load(paths, device, dtype)
        models[mode] = Models(svd=once("svd", paths.get("svd"), m.svd), adapter=m.adapter,
                              sam=once("sam", paths.get("sam"), m.sam),
                              depth=once("depth", paths.get("depth"), m.depth),
                              decoder=once("decoder", paths.get("decoder", "analytic"), m.decoder))
    return models


def versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("comfyui-surgsora", "torch", "diffusers", "transformers", "numpy", "opencv-python", "av",
                "accelerate"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            if pkg == "opencv-python":
                import cv2

                out[pkg] = cv2.__version__
    return out


# ================================================================================= the loop

class _Bar:
    """One tqdm bar per process: clips done / total, clips per minute (made in this run), ETA."""

    def __init__(self, total: int, done: int, rank: int, n: int, enabled: bool):
        self.bar = None
        self.t0, self.made = time.perf_counter(), 0
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, position=rank, unit="clip", dynamic_ncols=True,
                            desc=f"synth {rank + 1}/{n}" if n > 1 else "synth", file=sys.stderr)

    def update(self) -> None:
        self.made += 1
        if self.bar is not None:
            per_min = 60 * self.made / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{per_min:.1f} clips/min", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_process(clips: list[Clip], env, rank: int, n: int, on_error: str, progress: bool, run_failure) -> dict:
    """Make this process's clips (skipping done ones), then write its index shard. Returns its stats."""
    from ..sampling.generate import NonFiniteVideo
    from .clip import make_clip
    from .dataset import clean_partials

    t0 = time.perf_counter()
    mine = [c for c in clips if c.order % n == rank]
    done = {}
    for c in mine:
        meta = read_done(clip_folder(env.out, c.id))
        if meta is not None:
            done[c.id] = meta
    entries, failures, made = [], [], 0
    bar = _Bar(len(mine), len(done), rank, n, progress)
    error = None
    try:
        for c in mine:
            folder = clip_folder(env.out, c.id)
            if c.id not in done:
                try:
                    make_clip(c, env)
                except (NonFiniteVideo, ValueError) as e:  # this clip cannot be made; the others can
                    clean_partials(folder)
                    sentence = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    if on_error != "skip":
                        raise run_failure(f"clip {c.id} (line {c.row.line}) failed: {sentence} (add --on-error skip "
                                          "to record it in failures.jsonl and go on).") from None
                    failures.append({"line": c.row.line, "id": c.id, "error": sentence})
                    continue
                made += 1
                bar.update()
            meta_bytes = (folder / "meta.json").read_bytes()
            entries.append(index_entry(json.loads(meta_bytes), hashlib.sha256(meta_bytes).hexdigest()))
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        bar.close()
        stats = {"rank": rank, "clips": len(mine), "made": made, "already_done": len(done),
                 "failed": len(failures), "seconds": round(time.perf_counter() - t0, 3)}
        if error is not None:
            stats["error"] = error
        write_shard(env.out, rank, entries, failures, stats)
    return stats


def finish(out: Path, n: int, identity: dict, validation_failures: list[dict], model_info: dict, t_start: float,
           run_failure) -> dict:
    """Main process: wait for every shard, merge, write the card; the summary as a dict."""
    stats = wait_for_shards(out, n)
    bad = [s for s in stats if "error" in s]
    if bad:
        raise run_failure(f"process {bad[0]['rank']} failed ({bad[0]['error']}); rerun the same command to finish "
                          "the dataset (done clips are kept).")
    entries, failures = merge(out, n, validation_failures)
    write_card(out, identity, entries, failures, model_info)
    return {"out": str(out), "clips": len(entries), "made": sum(s["made"] for s in stats),
            "already_done": sum(s["already_done"] for s in stats), "failed": len(failures), "processes": n,
            "seconds": round(time.perf_counter() - t_start, 2)}
