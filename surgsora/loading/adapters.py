"""Adapter files: tell a SurgSora adapter from MOFA-Video-Traj's released ControlNet, and load either.

Both live in ``models/surgsora``. A SurgSora adapter is a folder written by ``python -m train``
(``config.json`` with ``_class_name`` SurgSoraAdapter + weights). MOFA's is its released
``ckpts/controlnet`` folder (``_class_name`` FlowControlNet), the folder above it, or its
``diffusion_pytorch_model.safetensors`` alone under any name (recognised by its tensor names). One
loader serves the CLI and the ComfyUI node, so both accept the same files and say the same things.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .io import ModelFileError, read_safetensors_header

__all__ = ["SURGSORA", "MOFA", "adapter_kind", "load_adapter", "describe_adapter"]

SURGSORA, MOFA = "surgsora", "mofa"
_MOFA_MARKERS = ("controlnet_cond_embedding.", "flow_encoder.")


def _config_class(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def adapter_kind(path: str | os.PathLike) -> str | None:
    """``"surgsora"``, ``"mofa"`` or None (not an adapter) for a folder or weights file; reads headers only."""
    path = Path(path)
    if path.is_dir():
        cls = _config_class(path)
        if cls == "SurgSoraAdapter":
            return SURGSORA
        if cls == "FlowControlNet" or _config_class(path / "controlnet") == "FlowControlNet":
            return MOFA
        return None
    if path.is_file() and path.suffix == ".safetensors":
        try:
            keys = read_safetensors_header(path).keys()
        except (ModelFileError, OSError, ValueError):
            return None
        if any(k.startswith(_MOFA_MARKERS) for k in keys):
            return MOFA
    return None


def load_adapter(path: str | os.PathLike, dtype: torch.dtype | None = None):
    """A SurgSora adapter or MOFA's ControlNet (in MOFA mode) from ``path``; one sentence if it is neither."""
    from ..model.adapter import SurgSoraAdapter

    path = Path(path)
    kind = adapter_kind(path)
    if kind == MOFA:
        return SurgSoraAdapter.from_mofa(path, dtype=dtype)
    if kind is None:
        if path.is_dir() and (path / "config.json").is_file() and _config_class(path) is None:
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
    if cfg.get("fixed_time_ids") is not None:
        return ("MOFA-Video-Traj ControlNet, run as published (RGB stream only; added_time_ids fixed at "
                f"{list(cfg['fixed_time_ids'])}, so fps and motion bucket are not used; CLIP input not normalised)")
    parts = ["SAM features" if cfg.get("use_seg_features", True) else "no SAM features",
             "depth branch" if cfg.get("use_depth_branch", True) else "no depth branch",
             f"fusion {cfg.get('fusion_type') or 'msf'}"]
    if cfg.get("condition_injection") == "mofa":
        parts.append("MOFA semantics (warm-started from MOFA)")
    return f"SurgSora adapter ({', '.join(parts)}; trained at fps {cfg.get('fps', 7)})"
