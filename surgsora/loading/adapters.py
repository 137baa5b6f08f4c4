"""Adapter files: load a SurgSora adapter or MOFA-Video-Traj's released ControlNet, and say which it is.

Both live in ``models/surgsora``; :func:`~surgsora.loading.mofa.adapter_kind` tells them apart (re-exported
here). One loader serves the CLI and the ComfyUI node, so both accept the same files and say the same things.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .files import ModelFileError, read_config
from .mofa import MOFA, SURGSORA, adapter_kind, runs_as_mofa

__all__ = ["SURGSORA", "MOFA", "adapter_kind", "load_adapter", "describe_adapter"]


def load_adapter(path: str | os.PathLike, dtype: torch.dtype | None = None):
    """A SurgSora adapter or MOFA's ControlNet (in MOFA mode) from ``path``; one sentence if it is neither."""
    from ..model.adapter import SurgSoraAdapter

    path = Path(path)
    kind = adapter_kind(path)
    if kind == MOFA:
        return SurgSoraAdapter.from_mofa(path, dtype=dtype)
    if kind is None:
        if path.is_dir() and (path / "config.json").is_file() and read_config(path) is None:
            raise ModelFileError(f"{path / 'config.json'} is not a readable adapter config (invalid JSON); "
                                 "write the folder again with `python -m train` or restore the file.")
        raise ModelFileError(
            f"{path} is neither a SurgSora adapter folder (config.json + diffusion_pytorch_model.safetensors "
            "written by `python -m train`) nor MOFA-Video-Traj's ControlNet (its ckpts/controlnet folder or "
            "diffusion_pytorch_model.safetensors); put one of them in models/surgsora.")
    try:
        adapter = SurgSoraAdapter.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelFileError(f"The adapter folder {path} could not be loaded: {first}") from None
    return adapter.eval()


def describe_adapter(adapter) -> str:
    """One line saying what kind of adapter this is and the conventions it brings."""
    cfg = adapter.config
    if runs_as_mofa(cfg):
        return ("MOFA-Video-Traj ControlNet, run as published (RGB stream only; added_time_ids fixed at "
                f"{list(cfg['fixed_time_ids'])}, so fps and motion bucket are not used; CLIP input not normalised)")
    parts = ["SAM features" if cfg.get("use_seg_features", True) else "no SAM features",
             "depth branch" if cfg.get("use_depth_branch", True) else "no depth branch",
             f"fusion {cfg.get('fusion_type') or 'msf'}"]
    if cfg.get("condition_injection") == "mofa":
        parts.append("MOFA semantics (warm-started from MOFA)")
    return f"SurgSora adapter ({', '.join(parts)}; trained at fps {cfg.get('fps', 7)})"
