"""Crash-safe training checkpoints with exact resume, for one process or many.

A checkpoint is a folder ``step_00001234/`` holding the adapter (``save_pretrained``: safetensors +
config.json), the optimizer and LR-scheduler states, one ``rank{i}.pt`` per process (that process's
random generator state(s) and, with fp16 mixed precision, its GradScaler state) and ``state.json``
(step, number of processes and settings). Every process writes its own file into the temporary folder
``.tmp-step_...``; after a barrier the main process writes ``state.json``, and only once every file is
on disk renames the folder into place. A kill at any moment therefore leaves either a complete
checkpoint or a temporary folder that :func:`latest_checkpoint` ignores (and :func:`clean_partial`
removes). Only the last ``keep`` checkpoints are kept. Everything is read back with
``torch.load(weights_only=True)``. A checkpoint resumes only with the number of processes that wrote
it: exact resume needs every process's own random state.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from surgsora.atomic import fsync_dir

__all__ = ["CheckpointError", "save_checkpoint", "latest_checkpoint", "load_checkpoint", "check_checkpoint",
           "clean_partial", "prune"]

_PREFIX = "step_"
# Fault injection for the crash-safety tests: "SECONDS" or "SECONDS@STEP" to pause the main process in
# the middle of a checkpoint write (of every checkpoint, or only of the one at STEP).
_WRITE_DELAY_ENV = "SURGSORA_CKPT_WRITE_DELAY"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be resumed (incomplete, another adapter, or another number of processes)."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _write_delay(step: int) -> float:
    text = os.environ.get(_WRITE_DELAY_ENV, "").strip()
    if not text:
        return 0.0
    seconds, _, at = text.partition("@")
    return float(seconds) if not at or int(at) == step else 0.0


def _no_barrier() -> None:
    pass


def save_checkpoint(out_dir: Path, step: int, adapter, optimizer, lr_scheduler, generators: dict, state: dict,
                    keep: int = 3, *, scaler=None, rank: int = 0, world: int = 1,
                    barrier: Callable[[], None] | None = None) -> Path:
    """Write the checkpoint of ``step``; with several processes every rank calls this (collective).

    ``generators`` and ``scaler`` are this process's own; ``barrier`` synchronises all processes
    (``accelerator.wait_for_everyone``). The adapter, optimizer and scheduler are saved by rank 0 only
    (identical on every rank under data parallelism). Returns the final folder.
    """
    barrier = barrier or _no_barrier
    out_dir = Path(out_dir)
    final = out_dir / f"{_PREFIX}{step:08d}"
    tmp = out_dir / f".tmp-{final.name}"
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()  # the temporary folder exists (and is empty) for everyone
    written = []
    if rank == 0:
        adapter.save_pretrained(tmp / "adapter", safe_serialization=True)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        written = [f for f in tmp.rglob("*") if f.is_file()]
    own = tmp / f"rank{rank}.pt"
    torch.save({"generators": {k: g.get_state() for k, g in generators.items()},
                "scaler": scaler.state_dict() if scaler is not None else None}, own)
    _fsync_file(own)
    if rank == 0:
        delay = _write_delay(step)
        if delay:
            time.sleep(delay)
    barrier()  # every rank file is on disk
    if rank == 0:
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "world_size": world}, indent=1))
        for f in written + [tmp / "state.json"]:
            _fsync_file(f)
        if final.exists():  # re-saving the same step after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(out_dir)
        prune(out_dir, keep)
    barrier()  # no rank runs ahead of a checkpoint that is not yet in place
    return final


def _complete(out_dir: Path) -> list[Path]:
    return sorted(p for p in Path(out_dir).glob(f"{_PREFIX}*") if p.is_dir() and (p / "state.json").is_file())


def latest_checkpoint(out_dir: Path) -> Path | None:
    done = _complete(out_dir) if Path(out_dir).is_dir() else []
    return done[-1] if done else None


def clean_partial(out_dir: Path) -> list[Path]:
    """Remove temporary folders left by a checkpoint write that was killed."""
    removed = []
    for p in Path(out_dir).glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def prune(out_dir: Path, keep: int) -> None:
    if keep > 0:
        for old in _complete(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


_FIX = "resume from a checkpoint written by this version of `python -m train fit`, or start fresh without --resume"


def _check_pt(path: Path) -> None:
    """One sentence unless ``path`` is a torch file that ``weights_only`` loading accepts; reads only its pickle
    (the list of the globals it names), never its tensors, so checking a large optimizer state is cheap."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; {_FIX}.")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - a cut-off zip, a text file, an old pickle-only format: all the same to a user
        raise CheckpointError(f"checkpoint file {path} is truncated or not a torch checkpoint; {_FIX}.") from None
    if unsafe:
        raise CheckpointError(f"checkpoint file {path} holds pickled Python objects ({', '.join(unsafe[:3])}) that "
                              f"are not loaded for safety (weights_only); {_FIX}.")


def check_checkpoint(path: Path) -> dict:
    """Check, before any model is loaded, that the checkpoint folder ``path`` can be resumed: ``state.json`` is a
    readable step, the adapter's safetensors open, and every torch file loads with ``weights_only`` (no pickled
    objects, not truncated). Returns the state; raises :class:`CheckpointError` with one sentence naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no state.json); give a step_* folder written by "
                              "`python -m train fit`, or --resume latest")
    try:
        state = json.loads((path / "state.json").read_text())
        int(state["step"])
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        raise CheckpointError(f"{path / 'state.json'} is damaged (not the JSON of a step); {_FIX}.") from None
    weights = path / "adapter" / "diffusion_pytorch_model.safetensors"
    try:
        with safe_open(str(weights), "pt") as f:
            f.keys()
    except Exception:  # noqa: BLE001 - missing, truncated header or not safetensors
        raise CheckpointError(f"{weights} is missing or damaged (not readable safetensors); {_FIX}.") from None
    files = ["optimizer.pt", "lr_scheduler.pt"]
    ranks = sorted(p.name for p in path.glob("rank*.pt")) or (["rng.pt"] if (path / "rng.pt").is_file() else [])
    for name in files + ranks:
        _check_pt(path / name)
    return state


def _load(path: Path):
    _check_pt(path)  # a sentence instead of torch's weights_only advice and a traceback
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: Path, adapter, optimizer, lr_scheduler, generators: dict, *, scaler=None,
                    rank: int = 0, world: int = 1) -> dict:
    """Restore everything saved by :func:`save_checkpoint` for process ``rank`` of ``world``.

    Returns the saved state dict (with ``step``); raises :class:`CheckpointError` with one sentence when
    the folder cannot be resumed here.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no state.json); give a step_* folder "
                              "or --resume latest")
    state = json.loads((path / "state.json").read_text())
    saved_world = int(state.get("world_size", 1))
    if saved_world != world:
        raise CheckpointError(f"{path} was written by {saved_world} process(es) and this run has {world}; "
                              f"resume with {saved_world} process(es) to continue exactly")
    weights = path / "adapter" / "diffusion_pytorch_model.safetensors"
    missing, unexpected = adapter.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match this adapter: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    optimizer.load_state_dict(_load(path / "optimizer.pt"))
    lr_scheduler.load_state_dict(_load(path / "lr_scheduler.pt"))
    own = path / f"rank{rank}.pt"
    if own.is_file():
        saved = _load(own)
    elif rank == 0 and (path / "rng.pt").is_file():  # single-process checkpoints of earlier versions
        saved = {"generators": _load(path / "rng.pt"), "scaler": None}
    else:
        raise CheckpointError(f"{path} has no random state for process {rank} ({own.name} is missing)")
    for k, g in generators.items():
        if k not in saved["generators"]:
            raise CheckpointError(f"{own} has no generator {k!r} (saved: {sorted(saved['generators'])})")
        g.set_state(saved["generators"][k])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    return state
