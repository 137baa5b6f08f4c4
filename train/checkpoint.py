"""Crash-safe training checkpoints with exact resume.

A checkpoint is a folder ``step_00001234/`` holding the adapter (``save_pretrained``: safetensors +
config.json), the optimizer and LR-scheduler states, the random generator state(s) and
``state.json`` (step and settings). It is written under a temporary name ``.tmp-step_...`` and
renamed into place only once every file is on disk, so a kill at any moment leaves either a complete
checkpoint or a temporary folder that :func:`latest_checkpoint` ignores (and :func:`clean_partial`
removes). Only the last ``keep`` checkpoints are kept. Everything is read back with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint", "clean_partial", "prune"]

_PREFIX = "step_"
# Fault injection for the crash-safety tests: seconds to pause in the middle of a checkpoint write.
_WRITE_DELAY_ENV = "SURGSORA_CKPT_WRITE_DELAY"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out_dir: Path, step: int, adapter, optimizer, lr_scheduler, generators: dict, state: dict,
                    keep: int = 3) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{_PREFIX}{step:08d}"
    tmp = out_dir / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    adapter.save_pretrained(tmp / "adapter", safe_serialization=True)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    delay = float(os.environ.get(_WRITE_DELAY_ENV, "0") or 0)
    if delay:
        time.sleep(delay)
    torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
    torch.save({k: g.get_state() for k, g in generators.items()}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
    if final.exists():  # re-saving the same step after a resume
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(out_dir)
    prune(out_dir, keep)
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


def load_checkpoint(path: Path, adapter, optimizer, lr_scheduler, generators: dict) -> dict:
    """Restore everything saved by :func:`save_checkpoint`; returns the saved state dict (with ``step``)."""
    from safetensors.torch import load_file

    path = Path(path)
    weights = path / "adapter" / "diffusion_pytorch_model.safetensors"
    missing, unexpected = adapter.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not match this adapter: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    lr_scheduler.load_state_dict(torch.load(path / "lr_scheduler.pt", map_location="cpu", weights_only=True))
    rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    for k, g in generators.items():
        g.set_state(rng[k])
    return json.loads((path / "state.json").read_text())
