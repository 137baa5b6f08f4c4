"""Adapter files: load a SurgSora adapter or MOFA-Video-Traj's released ControlNet, and say which it is.

Both live in ``models/surgsora``; :func:`~surgsora.loading.mofa.adapter_kind` tells them apart (re-exported
here). One loader serves the CLI and the ComfyUI node, so both accept the same files and say the same things.

A folder whose ``config.json`` was cut short or hand-edited but still parses is refused at load, in one sentence:
against its own weights (:func:`load_adapter` compares every tensor shape before reading any), and against the UNet
it will drive (:func:`check_adapter_fits`: down blocks, widths, layers, input channels, text and time-embedding
widths, frame count), never inside the UNet's forward with a stack trace.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .files import ModelFileError, read_config
from .mofa import MOFA, SURGSORA, adapter_kind, per_block, runs_as_mofa

__all__ = ["SURGSORA", "MOFA", "adapter_kind", "load_adapter", "describe_adapter", "check_adapter_fits",
           "unet_structure", "AdapterMismatchError"]


class AdapterMismatchError(ModelFileError, ValueError):
    """An adapter made for another UNet (a ``ValueError`` too, as the pipeline's own check has always raised)."""


_RETRAIN = "use the adapter trained for this SVD, or retrain it on this SVD with `python -m train fit`"


def _per_block(value, n: int):
    return None if value is None else per_block(value, n)


def unet_structure(config) -> dict:
    """What an adapter must share with a UNet, from a diffusers config (UNetSpatioTemporalConditionModel's or an
    adapter's) or ComfyUI's SVD ``unet_config`` (``model_channels``, ``channel_mult``, ...): down blocks, their
    widths and layers, input channels, text (cross-attention) width, added-time-embedding widths, frame count."""
    c = dict(config)
    if "model_channels" in c:  # ComfyUI's naming of the same UNet
        widths = [c["model_channels"] * m for m in c["channel_mult"]]
        n = len(widths)
        return {"down blocks": n, "block_out_channels": widths,
                "layers_per_block": _per_block(c.get("num_res_blocks", 2), n), "in_channels": c.get("in_channels"),
                "cross_attention_dim": _per_block(c.get("context_dim"), n),
                "projection_class_embeddings_input_dim": c.get("adm_in_channels"), "addition_time_embed_dim": None,
                "num_frames": None}
    n = len(c.get("down_block_types") or ())
    return {"down blocks": n, "block_out_channels": list(c.get("block_out_channels") or ()),
            "layers_per_block": _per_block(c.get("layers_per_block", 2), n), "in_channels": c.get("in_channels"),
            "cross_attention_dim": _per_block(c.get("cross_attention_dim"), n),
            "projection_class_embeddings_input_dim": c.get("projection_class_embeddings_input_dim"),
            "addition_time_embed_dim": c.get("addition_time_embed_dim"),
            "num_frames": c.get("num_frames", c.get("svd_num_frames"))}


def check_adapter_fits(adapter, unet, source: str | os.PathLike | None = None) -> None:
    """One :class:`AdapterMismatchError` sentence unless ``adapter`` (or its config) was made for ``unet`` (a diffusers UNet,
    its config, or ComfyUI's SVD ``unet_config``): the same down blocks, widths, layers per block, input channels,
    cross-attention and added-time widths, and the SVD's frame count. ``source`` names the adapter (default: the
    folder it was loaded from)."""
    if adapter is None or unet is None:
        return
    acfg = getattr(adapter, "config", adapter)
    ucfg = getattr(unet, "config", unet)
    where = source or acfg.get("_name_or_path") or "this adapter"
    a, u = unet_structure(acfg), unet_structure(ucfg)
    a["num_frames"] = acfg.get("svd_num_frames")
    for key, what in (("down blocks", "down blocks"), ("block_out_channels", "block widths (block_out_channels)"),
                      ("layers_per_block", "layers per down block"), ("in_channels", "input channels"),
                      ("cross_attention_dim", "cross-attention widths"),
                      ("projection_class_embeddings_input_dim", "added-time embedding inputs"),
                      ("addition_time_embed_dim", "added-time embedding widths")):
        if u[key] is None or u[key] == [] or u[key] == 0:  # not stated by this UNet config: nothing to compare
            continue
        if a[key] != u[key]:
            raise AdapterMismatchError(f"The adapter at {where} was made for another UNet ({what}: {a[key]} in the "
                                       f"adapter, {u[key]} in this SVD's UNet); {_RETRAIN} (or restore its config.json "
                                       "if it was edited).")
    if a["num_frames"] and u["num_frames"] and a["num_frames"] != u["num_frames"]:
        wanted, have = a["num_frames"], u["num_frames"]
        raise AdapterMismatchError(f"The adapter at {where} was trained on the {wanted}-frame SVD"
                                   f"{'-xt' if wanted == 25 else ''} but the SVD given is the {have}-frame model; load "
                                   "svd_xt.safetensors or svd_xt_1_1.safetensors instead.")


def _check_config_matches_weights(path: Path):
    """One sentence when ``config.json`` describes another network than the safetensors beside it (cut short or
    edited by hand): every tensor name and shape is compared on a meta-device build, before any weight is read."""
    from safetensors import safe_open

    from ..model.adapter import SurgSoraAdapter

    weights = path / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        return read_config(path) or {}  # from_pretrained says which file is missing
    config_file = path / "config.json"
    try:
        with torch.device("meta"):
            net = SurgSoraAdapter.from_config(SurgSoraAdapter.load_config(str(path)))
        with safe_open(str(weights), "pt") as f:
            saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
        raise ModelFileError(f"{config_file} does not describe a SurgSora adapter ({first}); restore the file or write "
                             "the folder again with `python -m train`.") from None
    wanted = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = sorted(set(wanted) - set(saved))
    unexpected = sorted(set(saved) - set(wanted))
    wrong = [k for k in wanted if k in saved and wanted[k] != saved[k]]
    if missing or unexpected or wrong:
        if wrong:
            k = wrong[0]
            detail = f"{k} is {list(saved[k])} in the weights but {list(wanted[k])} by the config"
        else:
            detail = (f"the weights lack {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                      if missing else f"the weights hold {unexpected[0]}, which the config has no place for")
        raise ModelFileError(f"{config_file} does not match the adapter's weights ({detail}): it was cut short or "
                             "edited; restore it, or use the folder as `python -m train` wrote it.")
    return net.config  # with the defaults of the keys the file leaves out


def load_adapter(path: str | os.PathLike, dtype: torch.dtype | None = None, unet=None):
    """A SurgSora adapter or MOFA's ControlNet (in MOFA mode) from ``path``; one sentence if it is neither, if its
    config.json does not match its weights, or (``unet``: the UNet, its config or ComfyUI's ``unet_config``) if it
    was made for another UNet (:func:`check_adapter_fits`)."""
    from ..model.adapter import SurgSoraAdapter

    path = Path(path)
    kind = adapter_kind(path)
    if kind == MOFA:
        adapter = SurgSoraAdapter.from_mofa(path, dtype=dtype)
        check_adapter_fits(adapter, unet, path)
        return adapter
    if kind is None:
        if path.is_dir() and (path / "config.json").is_file() and read_config(path) is None:
            raise ModelFileError(f"{path / 'config.json'} is not a readable adapter config (invalid JSON); "
                                 "write the folder again with `python -m train` or restore the file.")
        raise ModelFileError(
            f"{path} is neither a SurgSora adapter folder (config.json + diffusion_pytorch_model.safetensors "
            "written by `python -m train`) nor MOFA-Video-Traj's ControlNet (its ckpts/controlnet folder or "
            "diffusion_pytorch_model.safetensors); put one of them in models/surgsora.")
    if path.is_dir():
        config = _check_config_matches_weights(path)
        check_adapter_fits(config, unet, path)  # before any weight is read
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
