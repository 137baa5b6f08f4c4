"""MOFA-Video-Traj's released ControlNet, described once: its constants, the adapter config that runs it as
published, and how its files are told from a SurgSora adapter's.

Standard library only, and it imports neither torch nor the model: the loaders (:mod:`.warm_start`,
:mod:`.adapters`), the adapter class (which re-exports :data:`MOFA_HEADS` and :data:`MOFA_SEMANTICS`) and
``python -m train``'s argument checks all read this one description.

Kinds of adapter file (:func:`adapter_kind`): a SurgSora adapter is a folder written by ``python -m train``
(``config.json`` with ``_class_name`` SurgSoraAdapter + weights); MOFA's is its ``ckpts/controlnet`` folder
(``_class_name`` FlowControlNet), the folder above it, or its weights file alone under any name
(recognised by its tensor names).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .files import ModelFileError, read_config, read_safetensors_header

__all__ = ["SURGSORA", "MOFA", "MOFA_HEADS", "MOFA_SEMANTICS", "MOFA_FPS", "MOFA_TIME_IDS", "MOFA_CLIP_NORMALIZE",
           "MOFA_SVD_FRAMES", "MOFA_TRUNK_KEYS", "MOFA_DEFAULTS", "MOFA_RENAMES", "SAME_NAME_PREFIXES", "PARTIAL_LOADS",
           "MOFA_WHERE", "adapter_key", "per_block", "mofa_heads", "mofa_adapter_config", "runs_as_mofa", "config_class",
           "kind_of_class", "kind_of_keys", "mofa_weights", "adapter_kind"]

SURGSORA, MOFA = "surgsora", "mofa"
# config.json ``_class_name`` of each kind, and tensor-name prefixes only that kind has.
_CLASSES = {"SurgSoraAdapter": SURGSORA, "FlowControlNet": MOFA}
_MARKERS = {SURGSORA: ("rgb_processor.", "rgb_encoder."), MOFA: ("controlnet_cond_embedding.", "flow_encoder.")}
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# The attention heads MOFA-Video's FlowControlNet really runs at SVD-xt widths: it calls its parent's
# constructor with no arguments, so ControlNetSDVModel's defaults win over whatever config.json says.
MOFA_HEADS = (5, 10, 10, 20)

# How MOFA's released weights were trained to be used (trunk side). A SurgSora adapter warm-started
# from MOFA keeps these, so that at step 0 it computes exactly what MOFA computes.
MOFA_SEMANTICS = dict(condition_injection="mofa", residual_multiplicity="mofa", flow_resize="nearest",
                      splat_normalize="softsplat")

# MOFA's pipeline conditions SVD on added_time_ids [fps - 1, motion_bucket_id, noise_aug_strength] =
# [6, 128, 0.02] whatever is asked, and feeds CLIP the resized [0, 1] image without mean/std normalisation.
MOFA_FPS = 7
MOFA_TIME_IDS = (6, 128, 0.02)
MOFA_CLIP_NORMALIZE = False

# MOFA-Video-Traj's ControlNet was trained on SVD-xt (25 frames); a 14-frame SVD is another model.
MOFA_SVD_FRAMES = 25
# FlowControlNet config fields that shape the trunk (the rest describe the UNet it was cut from).
MOFA_TRUNK_KEYS = ("in_channels", "down_block_types", "block_out_channels", "addition_time_embed_dim",
                   "projection_class_embeddings_input_dim", "layers_per_block", "cross_attention_dim",
                   "transformer_layers_per_block")
# ControlNetSDVModel's defaults: what the published FlowControlNet really builds (it ignores its arguments).
MOFA_DEFAULTS = dict(
    in_channels=8,
    down_block_types=["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    block_out_channels=[320, 640, 1280, 1280], addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768, layers_per_block=2, cross_attention_dim=1024,
    transformer_layers_per_block=1, num_attention_heads=[5, 10, 10, 20],
    conditioning_embedding_out_channels=[16, 32, 96, 256],
)

# MOFA prefix -> adapter prefix; keys under other prefixes must keep their name.
MOFA_RENAMES = (
    ("controlnet_cond_embedding.", "rgb_processor."),
    ("flow_encoder.", "rgb_encoder."),
)
SAME_NAME_PREFIXES = ("conv_in.", "time_embedding.", "add_embedding.", "down_blocks.", "mid_block.",
                      "controlnet_down_blocks.", "controlnet_mid_block.")
# Adapter tensors that take a smaller MOFA tensor in their leading slice along one dim (rest zero).
PARTIAL_LOADS = {"rgb_processor.conv_out.weight": 1}

MOFA_WHERE = ("Point to MOFA-Video-Traj's ckpts/controlnet folder (config.json + diffusion_pytorch_model.safetensors), "
              "for example copied to ComfyUI/models/surgsora/mofa_controlnet.")


def adapter_key(mofa_key: str) -> str | None:
    """Adapter name of a MOFA ControlNet tensor, or None if MOFA's layout has no such group."""
    for src, dst in MOFA_RENAMES:
        if mofa_key.startswith(src):
            return dst + mofa_key[len(src):]
    if mofa_key.startswith(SAME_NAME_PREFIXES):
        return mofa_key
    return None


def per_block(value, n: int) -> list:
    """A diffusers per-block setting (one value for all blocks, or a list) as one value per down block."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def mofa_heads(mofa_config: dict, width: int) -> list:
    """The attention heads MOFA's ControlNet runs, given the width of its weights (``conv_in`` outputs):
    (5, 10, 10, 20) at SVD-xt's 320 whatever config.json says (FlowControlNet builds its parent with
    default arguments); the config's value for other widths (small models written in MOFA's layout)."""
    if width == MOFA_DEFAULTS["block_out_channels"][0]:
        return list(MOFA_HEADS)
    n = len(mofa_config.get("block_out_channels", MOFA_DEFAULTS["block_out_channels"]))
    return per_block(mofa_config.get("num_attention_heads", MOFA_HEADS), n)


def mofa_adapter_config(mofa_config: dict, width: int) -> dict:
    """SurgSoraAdapter config that runs MOFA-Video-Traj's ControlNet (``width`` = its conv_in outputs)
    exactly as published."""
    cfg = {k: mofa_config.get(k, MOFA_DEFAULTS[k]) for k in MOFA_TRUNK_KEYS}
    cfg.update(
        num_attention_heads=mofa_heads(mofa_config, width),
        conditioning_embedding_channels=list(mofa_config.get("conditioning_embedding_out_channels",
                                                             MOFA_DEFAULTS["conditioning_embedding_out_channels"])),
        use_seg_features=False, use_depth_branch=False, fusion_type="rgb", **MOFA_SEMANTICS,
        fps=MOFA_FPS, fixed_time_ids=list(MOFA_TIME_IDS), clip_normalize=MOFA_CLIP_NORMALIZE,
        svd_num_frames=int(mofa_config.get("num_frames", MOFA_SVD_FRAMES)),
    )
    return cfg


def runs_as_mofa(adapter_config) -> bool:
    """Whether an adapter config runs MOFA's ControlNet as published (made by :func:`mofa_adapter_config`,
    which alone fixes the time ids), as opposed to a SurgSora adapter, warm-started from MOFA or not."""
    return adapter_config.get("fixed_time_ids") is not None


def config_class(folder: str | os.PathLike) -> str | None:
    """The ``_class_name`` in a folder's config.json; None without one (no file, not JSON, no such entry)."""
    name = (read_config(folder) or {}).get("_class_name")
    return name if isinstance(name, str) else None


def kind_of_class(class_name: str | None) -> str | None:
    """``"surgsora"`` or ``"mofa"`` for a config.json ``_class_name``; None for any other model."""
    return _CLASSES.get(class_name) if isinstance(class_name, str) else None


def kind_of_keys(keys: Iterable[str]) -> str | None:
    """``"surgsora"`` or ``"mofa"`` from tensor names; None for weights of neither. An adapter's own names
    win: weights holding any are not MOFA's release, whatever else they hold."""
    keys = list(keys)
    for kind in (SURGSORA, MOFA):
        if any(k.startswith(_MARKERS[kind]) for k in keys):
            return kind
    return None


def mofa_weights(path: str | os.PathLike) -> Path | None:
    """The weights file of MOFA's ControlNet given its folder, the folder above it (``ckpts``) or the file
    itself; None if a folder holds no ``diffusion_pytorch_model.safetensors`` (or ``.bin``)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return path if path.is_file() else None
    for folder in (path, path / "controlnet"):
        for name in _WEIGHTS:
            if (folder / name).is_file():
                return folder / name
    return None


def adapter_kind(path: str | os.PathLike) -> str | None:
    """``"surgsora"``, ``"mofa"`` or None (not an adapter) for a folder or weights file; reads config.json and
    safetensors headers only."""
    path = Path(path)
    if path.is_dir():
        kind = kind_of_class(config_class(path))
        if kind is None and kind_of_class(config_class(path / "controlnet")) == MOFA:
            kind = MOFA
        return kind
    if path.is_file() and path.suffix == ".safetensors":
        try:
            keys = read_safetensors_header(path).keys()
        except (ModelFileError, OSError):
            return None
        return MOFA if kind_of_keys(keys) == MOFA else None  # a SurgSora adapter is a folder, not a file
    return None
