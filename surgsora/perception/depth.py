"""Depth Anything V2 relative depth, loaded from the files users actually have.

Design
------
One model class runs every format: transformers' ``DepthAnythingForDepthEstimation`` (DINOv2 backbone +
DPT neck/head). The three file layouts users bring are mapped onto it at load time:

* a Hugging Face folder (``config.json`` + ``model.safetensors``/``pytorch_model.bin``), written by
  transformers 4.x (``attention.attention.query`` names) or 5.x (``attention.q_proj`` names);
* the original ``depth_anything_v2_vit{s,b,l}.pth`` (keys ``pretrained.*`` / ``depth_head.*``);
* kijai's ``depth_anything_v2_vit{s,b,l}_fp16.safetensors`` / ``_fp32.safetensors`` (same keys as the .pth).

:func:`convert_original_to_transformers` is a pure function on state dicts (it only renames and splits
the fused ``qkv`` projection), so it runs on ``meta`` tensors and is checked against the full-size
manifests without weights. It emits transformers 5.x names; transformers 4.x calls DINOv2's attention
projections ``attention.attention.{query,key,value}`` / ``attention.output.dense``, so the loader renames
to whatever the instantiated model's ``state_dict`` uses (:func:`match_model_key_names`), and the same
files load under transformers 4.45+ and 5.x. The model size (vits/vitb/vitl) is read from tensor shapes, never from the
file name: width from the class token, depth from the number of blocks, neck/fusion widths from the DPT
convolutions. Two things cannot be read from shapes and follow DINOv2/DAv2 conventions: attention heads
(head dim 64: 6/12/16 heads) and which blocks feed the DPT neck (the published ``[2,5,8,11]`` for 12
blocks, ``[4,11,17,23]`` for 24; evenly spaced for other depths). HF folders carry both in config.json.

Inference follows the original ``infer_image`` (not the transformers image processor): RGB in [0,1],
resize so the shorter side is ``input_size`` keeping the aspect ratio with both sides rounded to a
multiple of 14 (never below ``input_size``), bicubic, ImageNet normalisation; the predicted disparity is
resized back bilinearly (align_corners=True) and normalised per image to [0,1] (1 = nearest). The one
numerical difference from the original code is transformers' position-embedding interpolation for
non-square inputs (``size=`` instead of ``scale_factor=`` with a 0.1 offset); on a 1920x1080 frame it moves
depth by about 0.1% of its range (square inputs match the original code to float precision).

Not handled: Depth Anything V1 files (same key names but a different choice of DINOv2 blocks, which shapes
cannot reveal) and the metric-depth DAv2 .pth files (same keys, a sigmoid head); a metric *HF folder* is
supported and its depth is turned into disparity (1/depth) before normalising.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..loading.io import ModelFileError, describe_key_mismatch, load_state_dict, safe_join

__all__ = [
    "DEPTH_FOLDER",
    "DEPTH_VARIANTS",
    "DepthEstimator",
    "build_depth_model",
    "check_input_size",
    "checkpoint_layout",
    "convert_original_to_transformers",
    "convert_transformers_to_original",
    "depth_config",
    "depth_to_rgb",
    "infer_depth_config",
    "load_depth_anything",
    "match_model_key_names",
    "target_size",
    "upgrade_legacy_transformers_keys",
]

DEPTH_FOLDER = "models/depthanything"

# Published sizes (original model_configs + HF configs). out_indices count the embedding as stage 0, so
# the original block indices [2, 5, 8, 11] are stages [3, 6, 9, 12].
DEPTH_VARIANTS = {
    "vits": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, out_indices=[3, 6, 9, 12],
                 neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64),
    "vitb": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, out_indices=[3, 6, 9, 12],
                 neck_hidden_sizes=[96, 192, 384, 768], fusion_hidden_size=128),
    "vitl": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, out_indices=[5, 12, 18, 24],
                 neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256),
}
# Blocks feeding the DPT neck for published depths (vitg's 40 blocks included for completeness).
_OUT_INDICES_BY_DEPTH = {12: [3, 6, 9, 12], 24: [5, 12, 18, 24], 40: [10, 20, 30, 40]}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_PATCH = 14


# --------------------------------------------------------------------------------------------------
# key conversion (pure functions on state dicts; work on meta tensors)
# --------------------------------------------------------------------------------------------------

# original DAv2 name -> transformers name. refinenetN is applied deepest-first, i.e. refinenet4 is the
# first fusion layer in transformers (it reverses the feature list), hence the 4 - N below.
_ORIGINAL_RULES: list[tuple[re.Pattern, object]] = [
    (re.compile(r"pretrained\.cls_token"), "backbone.embeddings.cls_token"),
    (re.compile(r"pretrained\.mask_token"), "backbone.embeddings.mask_token"),
    (re.compile(r"pretrained\.pos_embed"), "backbone.embeddings.position_embeddings"),
    (re.compile(r"pretrained\.patch_embed\.proj\.(weight|bias)"),
     r"backbone.embeddings.patch_embeddings.projection.\1"),
    (re.compile(r"pretrained\.blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)"), r"backbone.encoder.layer.\1.\2.\3"),
    (re.compile(r"pretrained\.blocks\.(\d+)\.attn\.proj\.(weight|bias)"),
     r"backbone.encoder.layer.\1.attention.o_proj.\2"),
    (re.compile(r"pretrained\.blocks\.(\d+)\.ls1\.gamma"), r"backbone.encoder.layer.\1.layer_scale1.lambda1"),
    (re.compile(r"pretrained\.blocks\.(\d+)\.ls2\.gamma"), r"backbone.encoder.layer.\1.layer_scale2.lambda1"),
    (re.compile(r"pretrained\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)"), r"backbone.encoder.layer.\1.mlp.\2.\3"),
    (re.compile(r"pretrained\.norm\.(weight|bias)"), r"backbone.layernorm.\1"),
    (re.compile(r"depth_head\.projects\.(\d)\.(weight|bias)"), r"neck.reassemble_stage.layers.\1.projection.\2"),
    (re.compile(r"depth_head\.resize_layers\.(\d)\.(weight|bias)"), r"neck.reassemble_stage.layers.\1.resize.\2"),
    (re.compile(r"depth_head\.scratch\.layer([1-4])_rn\.weight"),
     lambda m: f"neck.convs.{int(m[1]) - 1}.weight"),
    (re.compile(r"depth_head\.scratch\.refinenet([1-4])\.out_conv\.(weight|bias)"),
     lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.projection.{m[2]}"),
    (re.compile(r"depth_head\.scratch\.refinenet([1-4])\.resConfUnit([12])\.conv([12])\.(weight|bias)"),
     lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}.{m[4]}"),
    (re.compile(r"depth_head\.scratch\.output_conv1\.(weight|bias)"), r"head.conv1.\1"),
    (re.compile(r"depth_head\.scratch\.output_conv2\.0\.(weight|bias)"), r"head.conv2.\1"),
    (re.compile(r"depth_head\.scratch\.output_conv2\.2\.(weight|bias)"), r"head.conv3.\1"),
]
_QKV = re.compile(r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)")

# transformers 4.x DINOv2 names (the HF hub folders were written with them) -> transformers 5.x names.
_LEGACY_RULES = [
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
]


def _strip_module_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DataParallel-saved copies prefix every key with "module."; nothing else in these files does.
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def checkpoint_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """Which family a state dict belongs to, from its key names.

    Returns ``"original"`` (DAv2 .pth / kijai safetensors), ``"transformers"`` (HF 5.x names),
    ``"transformers_legacy"`` (HF 4.x names), ``"sam"``, ``"sam2"`` or ``"unknown"``.
    """
    keys = list(sd)
    if any(k.startswith("pretrained.") for k in keys) and any(k.startswith("depth_head.") for k in keys):
        return "original"
    if any(k.startswith("backbone.embeddings.") for k in keys) and any(k.startswith("neck.") for k in keys):
        legacy = any(".attention.attention." in k or ".attention.output.dense." in k for k in keys)
        return "transformers_legacy" if legacy else "transformers"
    if any(k.startswith("image_encoder.trunk.") or k.startswith("sam_mask_decoder.") for k in keys):
        return "sam2"
    if any(k.startswith("image_encoder.") for k in keys) and any(k.startswith("mask_decoder.") for k in keys):
        return "sam"
    return "unknown"


def convert_original_to_transformers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original DAv2 state dict (``pretrained.*``, ``depth_head.*``) to transformers' names.

    The fused ``attn.qkv`` projection is split into ``q_proj``/``k_proj``/``v_proj`` (rows in q, k, v
    order, as the original reshapes ``qkv`` to ``[3, heads, head_dim]``). Every input key must be used:
    leftovers raise :class:`ModelFileError`. Pure; tensors are not copied except by the qkv split.
    """
    out: dict[str, torch.Tensor] = {}
    leftover = []
    for key, value in sd.items():
        m = _QKV.fullmatch(key)
        if m:
            q, k, v = value.chunk(3, dim=0)
            prefix = f"backbone.encoder.layer.{m[1]}.attention"
            out[f"{prefix}.q_proj.{m[2]}"] = q
            out[f"{prefix}.k_proj.{m[2]}"] = k
            out[f"{prefix}.v_proj.{m[2]}"] = v
            continue
        for pattern, target in _ORIGINAL_RULES:
            m = pattern.fullmatch(key)
            if m:
                out[target(m) if callable(target) else m.expand(target)] = value
                break
        else:
            leftover.append(key)
    if leftover:
        raise ModelFileError(
            f"This Depth Anything checkpoint has {len(leftover)} tensors that Depth Anything V2 does not have "
            f"(e.g. {', '.join(leftover[:3])}); it is a different model. Use a depth_anything_v2_vit{{s,b,l}} "
            f"file in {DEPTH_FOLDER}."
        )
    return out


def convert_transformers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`convert_original_to_transformers` (export to the original/kijai layout)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in upgrade_legacy_transformers_keys(sd).items():
        m = re.fullmatch(r"backbone\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", key)
        if m:
            qkv.setdefault(f"pretrained.blocks.{m[1]}.attn.qkv.{m[3]}", {})[m[2]] = value
        else:
            out[_to_original_name(key)] = value
    for name, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ModelFileError(f"{name}: q/k/v projections are incomplete ({sorted(parts)}).")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


_TO_ORIGINAL_RULES = [
    (r"backbone\.embeddings\.cls_token", "pretrained.cls_token"),
    (r"backbone\.embeddings\.mask_token", "pretrained.mask_token"),
    (r"backbone\.embeddings\.position_embeddings", "pretrained.pos_embed"),
    (r"backbone\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"pretrained.patch_embed.proj.\1"),
    (r"backbone\.encoder\.layer\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"pretrained.blocks.\1.\2.\3"),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.o_proj\.(weight|bias)", r"pretrained.blocks.\1.attn.proj.\2"),
    (r"backbone\.encoder\.layer\.(\d+)\.layer_scale1\.lambda1", r"pretrained.blocks.\1.ls1.gamma"),
    (r"backbone\.encoder\.layer\.(\d+)\.layer_scale2\.lambda1", r"pretrained.blocks.\1.ls2.gamma"),
    (r"backbone\.encoder\.layer\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"pretrained.blocks.\1.mlp.\2.\3"),
    (r"backbone\.layernorm\.(weight|bias)", r"pretrained.norm.\1"),
    (r"neck\.reassemble_stage\.layers\.(\d)\.projection\.(weight|bias)", r"depth_head.projects.\1.\2"),
    (r"neck\.reassemble_stage\.layers\.(\d)\.resize\.(weight|bias)", r"depth_head.resize_layers.\1.\2"),
    (r"neck\.convs\.([0-3])\.weight", lambda m: f"depth_head.scratch.layer{int(m[1]) + 1}_rn.weight"),
    (r"neck\.fusion_stage\.layers\.([0-3])\.projection\.(weight|bias)",
     lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}.out_conv.{m[2]}"),
    (r"neck\.fusion_stage\.layers\.([0-3])\.residual_layer([12])\.convolution([12])\.(weight|bias)",
     lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}.resConfUnit{m[2]}.conv{m[3]}.{m[4]}"),
    (r"head\.conv1\.(weight|bias)", r"depth_head.scratch.output_conv1.\1"),
    (r"head\.conv2\.(weight|bias)", r"depth_head.scratch.output_conv2.0.\1"),
    (r"head\.conv3\.(weight|bias)", r"depth_head.scratch.output_conv2.2.\1"),
]


def _to_original_name(key: str) -> str:
    for pattern, target in _TO_ORIGINAL_RULES:
        m = re.fullmatch(pattern, key)
        if m:
            return target(m) if callable(target) else m.expand(target)
    raise ModelFileError(f"{key} has no counterpart in the original Depth Anything V2 layout.")


def upgrade_legacy_transformers_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename transformers 4.x DINOv2 attention keys to the 5.x names (no-op for 5.x state dicts)."""
    out = {}
    for key, value in sd.items():
        for old, new in _LEGACY_RULES:
            key = key.replace(old, new)
        out[key] = value
    return out


def match_model_key_names(sd: Mapping[str, torch.Tensor], model_keys) -> dict[str, torch.Tensor]:
    """Rename the DINOv2 attention keys of ``sd`` (4.x or 5.x names) to the names in ``model_keys``.

    ``model_keys`` are the keys of the instantiated model's ``state_dict``: they, not a version number,
    say which naming the installed transformers uses.
    """
    sd = upgrade_legacy_transformers_keys(sd)
    if not any(old in k for k in model_keys for old, _ in _LEGACY_RULES):
        return sd
    out = {}
    for key, value in sd.items():
        for old, new in _LEGACY_RULES:
            key = key.replace(new, old)
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------------
# configs and model building
# --------------------------------------------------------------------------------------------------

def depth_config(variant: str = "vits", **overrides):
    """The transformers ``DepthAnythingConfig`` of a published size (``vits``/``vitb``/``vitl``) or a custom one.

    ``overrides`` may set any of the :data:`DEPTH_VARIANTS` fields plus ``image_size``, ``mlp_ratio``,
    ``head_hidden_size`` and ``patch_size`` (tiny test models use this).
    """
    from transformers import DepthAnythingConfig

    if variant not in DEPTH_VARIANTS and variant != "custom":
        raise ValueError(f"Unknown Depth Anything V2 size {variant!r}; use one of {sorted(DEPTH_VARIANTS)}.")
    p = dict(DEPTH_VARIANTS.get(variant, DEPTH_VARIANTS["vits"]))
    p.update(image_size=518, mlp_ratio=4, head_hidden_size=32, patch_size=_PATCH)
    p.update(overrides)
    backbone = dict(
        model_type="dinov2", hidden_size=p["hidden_size"], num_hidden_layers=p["num_hidden_layers"],
        num_attention_heads=p["num_attention_heads"], mlp_ratio=p["mlp_ratio"], image_size=p["image_size"],
        patch_size=p["patch_size"], out_indices=list(p["out_indices"]), reshape_hidden_states=False,
        apply_layernorm=True, layerscale_value=1.0, layer_norm_eps=1e-6,
    )
    return DepthAnythingConfig(
        backbone_config=backbone, patch_size=p["patch_size"], reassemble_hidden_size=p["hidden_size"],
        reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=list(p["neck_hidden_sizes"]),
        fusion_hidden_size=p["fusion_hidden_size"], head_hidden_size=p["head_hidden_size"],
        depth_estimation_type="relative", max_depth=1,
    )


def infer_depth_config(sd: Mapping[str, torch.Tensor]):
    """``(DepthAnythingConfig, variant)`` read from the shapes of a transformers-layout state dict.

    ``variant`` is ``vits``/``vitb``/``vitl`` when every shape-visible size equals the published one,
    otherwise ``custom``. Heads assume DINOv2's head dim of 64; neck blocks follow :data:`_OUT_INDICES_BY_DEPTH`.
    """
    try:
        hidden = sd["backbone.embeddings.cls_token"].shape[-1]
        patch = sd["backbone.embeddings.patch_embeddings.projection.weight"].shape[-1]
        n_pos = sd["backbone.embeddings.position_embeddings"].shape[1] - 1
        layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("backbone.encoder.layer."))
        mlp = sd["backbone.encoder.layer.0.mlp.fc1.weight"].shape[0]
        neck = [sd[f"neck.reassemble_stage.layers.{i}.projection.weight"].shape[0] for i in range(4)]
        fusion = sd["neck.convs.0.weight"].shape[0]
        head_hidden = sd["head.conv2.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise ModelFileError(
            f"This is not a complete Depth Anything V2 checkpoint (missing {e}). Use a "
            f"depth_anything_v2_vit{{s,b,l}} file in {DEPTH_FOLDER}."
        ) from None
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise ModelFileError(f"Depth checkpoint position embedding has {n_pos} patches, not a square grid.")
    if hidden % 64:
        raise ModelFileError(
            f"Depth checkpoint width {hidden} is not a multiple of DINOv2's head size 64, so the number of "
            "attention heads cannot be inferred; use a Hugging Face folder with its config.json."
        )
    if mlp % hidden:
        raise ModelFileError(f"Depth checkpoint MLP width {mlp} is not a multiple of its width {hidden}; "
                             "this is not a DINOv2 backbone.")
    out_indices = _OUT_INDICES_BY_DEPTH.get(layers, [round(layers * (i + 1) / 4) for i in range(4)])
    params = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                  out_indices=out_indices, neck_hidden_sizes=neck, fusion_hidden_size=fusion)
    variant = next((name for name, v in DEPTH_VARIANTS.items() if v == params), "custom")
    if variant != "custom" and (mlp != 4 * hidden or head_hidden != 32 or patch != _PATCH or grid != 37):
        variant = "custom"
    config = depth_config("custom", **params, image_size=grid * patch, mlp_ratio=mlp // hidden,
                          head_hidden_size=head_hidden, patch_size=patch)
    return config, variant


def build_depth_model(config, device: str | torch.device = "cpu"):
    """An uninitialised-weight ``DepthAnythingForDepthEstimation`` for ``config`` (use ``"meta"`` for shapes)."""
    from transformers import DepthAnythingForDepthEstimation

    with torch.device(device):
        model = DepthAnythingForDepthEstimation(config)
    return model.eval()


def _read_hf_folder(folder: Path):
    from transformers import DepthAnythingConfig

    cfg_path = folder / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{cfg_path} could not be read ({e}).") from None
    if raw.get("model_type") != "depth_anything":
        raise ModelFileError(
            f"{folder} holds a {raw.get('model_type')!r} model, not Depth Anything "
            f"(config.json model_type should be 'depth_anything'). Put Depth Anything V2 in {DEPTH_FOLDER}."
        )
    config = DepthAnythingConfig.from_json_file(str(cfg_path))
    for name in ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin"):
        weights = safe_join(folder, name)
        if weights.is_file():
            break
    else:
        raise ModelFileError(
            f"{folder} has a config.json but no model.safetensors or pytorch_model.bin; copy the whole "
            f"Hugging Face folder into {DEPTH_FOLDER}."
        )
    sd = load_state_dict(weights, folder_hint=DEPTH_FOLDER)
    return config, sd


def _resolve_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    if device.type == "cpu":
        if dtype is not None and dtype != torch.float32:
            # Half-precision convolutions are slow or missing on CPU; fp32 keeps results exact.
            warnings.warn(f"{dtype} requested on CPU; running in float32 instead.", stacklevel=3)
        return torch.float32
    if dtype is None:
        return torch.float16
    return dtype


def _materialise(model: nn.Module, sd: Mapping[str, torch.Tensor], where: str, folder: str) -> None:
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise ModelFileError(f"{where} does not match the model it describes: "
                             f"{describe_key_mismatch(missing, unexpected)}. "
                             f"It may be a different model version; use the released files in {folder}.")
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise ModelFileError(f"{where}: tensor {name} was not provided by the file.")


def load_depth_anything(path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> "DepthEstimator":
    """Load Depth Anything V2 from an HF folder, an original ``.pth`` or a kijai ``.safetensors``.

    The size (vits/vitb/vitl, or ``custom``) is detected from tensor shapes. On CPU the model runs in
    float32; on CUDA ``dtype`` defaults to float16 (bf16/fp32 also accepted).
    """
    path = Path(path)
    device = torch.device(device)
    if path.is_dir():
        if (path / "config.json").is_file():
            config, sd = _read_hf_folder(path)
            sd = upgrade_legacy_transformers_keys(_strip_module_prefix(sd))
            if checkpoint_layout(sd) != "transformers":
                raise ModelFileError(f"{path}: the weights do not use transformers' Depth Anything names.")
            if config.max_depth is None:  # transformers 4.x configs store null for relative models
                config.max_depth = 1
            try:  # the folder's config.json is authoritative; shapes only name the size
                variant = infer_depth_config(sd)[1]
            except ModelFileError:
                variant = "custom"
        else:
            raise ModelFileError(
                f"{path} is a folder without config.json; give the path of a Hugging Face Depth Anything V2 "
                f"folder or of a depth_anything_v2_vit{{s,b,l}}.pth / .safetensors file in {DEPTH_FOLDER}."
            )
    else:
        sd = _strip_module_prefix(load_state_dict(path, folder_hint=DEPTH_FOLDER))
        layout = checkpoint_layout(sd)
        if layout in ("sam", "sam2"):
            raise ModelFileError(
                f"{path.name} is a Segment Anything checkpoint, not Depth Anything V2: it belongs in models/sams "
                f"and loads with the SAM loader; the depth loader takes depth_anything_v2_vit{{s,b,l}} files "
                f"from {DEPTH_FOLDER}."
            )
        if layout == "original":
            sd = convert_original_to_transformers(sd)
        elif layout in ("transformers", "transformers_legacy"):
            sd = upgrade_legacy_transformers_keys(sd)
        else:
            raise ModelFileError(
                f"{path.name} is not a Depth Anything V2 checkpoint (expected 'pretrained.*'/'depth_head.*' keys "
                f"or a transformers layout). Put depth_anything_v2_vit{{s,b,l}}.pth or *_fp16.safetensors in "
                f"{DEPTH_FOLDER}."
            )
        config, variant = infer_depth_config(sd)
    model = build_depth_model(config, device="meta")
    _materialise(model, match_model_key_names(sd, model.state_dict().keys()), str(path), DEPTH_FOLDER)
    return DepthEstimator(model, variant=variant, device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------------

def _multiple_of(x: float, base: int, min_val: int) -> int:
    # The original Resize(ensure_multiple_of=14, resize_method="lower_bound"): round, but never below min.
    y = int(round(x / base) * base)
    if y < min_val:
        y = int(math.ceil(x / base) * base)
    return y


def target_size(height: int, width: int, input_size: int = 518) -> tuple[int, int]:
    """Network input ``(h, w)`` for an image: shorter side ``input_size``, aspect kept, multiples of 14."""
    scale = max(input_size / height, input_size / width)
    return (_multiple_of(scale * height, _PATCH, input_size), _multiple_of(scale * width, _PATCH, input_size))


class DepthEstimator(nn.Module):
    """Relative depth (disparity) for RGB images, normalised per image to [0, 1] (1 = nearest).

    Results are cached by image content and ``input_size`` (LRU, ``cache_size`` images), so asking
    again for the same frame within a run costs a hash, not a forward pass.

    Call it as ``estimator(images, input_size=518)`` with ``images`` float RGB ``[B,3,H,W]`` in [0,1]
    (numpy ``[H,W,3]``/``[B,H,W,3]`` uint8 also accepted); returns float32 ``[B,1,H,W]``.
    """

    def __init__(self, model: nn.Module, variant: str = "custom", device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, max_batch: int = 4, cache_size: int = 8):
        super().__init__()
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.model_images = 0  # images the network has processed (cache misses)
        device = torch.device(device)
        self.model = model.to(device=device, dtype=_resolve_dtype(device, dtype)).eval()
        self.variant = variant
        self.max_batch = max_batch
        self.metric = getattr(model.config, "depth_estimation_type", "relative") == "metric"
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN, device=device).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD, device=device).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, images: torch.Tensor, input_size: int = 518) -> torch.Tensor:
        """``[B,3,H,W]`` in [0,1] -> the normalised network input (what the model's forward receives)."""
        h, w = target_size(images.shape[-2], images.shape[-1], input_size)
        x = images.to(self.device, torch.float32)
        # Bicubic without antialiasing, as the original (cv2.INTER_CUBIC) that the weights were trained with.
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
        return ((x - self.mean) / self.std).to(self.dtype)

    @torch.no_grad()
    def raw(self, images, input_size: int = 518) -> torch.Tensor:
        """Unnormalised disparity at the input resolution, float32 ``[B,1,H,W]``."""
        from .sam import as_rgb_batch, content_key

        check_input_size(input_size)
        x = as_rgb_batch(images, what="Depth Anything input")
        keys = [content_key(im, input_size) for im in x]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in self._cache:
                first.setdefault(k, i)  # identical frames in one batch run once
        pending = list(first.values())
        for start in range(0, len(pending), self.max_batch):
            idx = pending[start:start + self.max_batch]
            chunk = x[idx]
            pred = self.model(pixel_values=self.preprocess(chunk, input_size)).predicted_depth
            pred = pred.float().unsqueeze(1)
            if self.metric:
                pred = 1.0 / pred.clamp_min(1e-6)
            pred = F.interpolate(pred, size=chunk.shape[-2:], mode="bilinear", align_corners=True)
            self.model_images += len(idx)
            for j, i in enumerate(idx):
                self._cache[keys[i]] = pred[j].clone()
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        for k in keys:
            self._cache.move_to_end(k)
        # cached maps may sit on another device if the module was moved since (e.g. offloaded)
        return torch.stack([self._cache[k].to(self.device) for k in keys])

    def clear_cache(self) -> None:
        self._cache.clear()

    def forward(self, images, input_size: int = 518) -> torch.Tensor:
        return normalise_per_image(self.raw(images, input_size))


def check_input_size(input_size) -> None:
    """One sentence unless ``input_size`` (the side the image is resized to for the ViT) is a multiple of 14."""
    if not isinstance(input_size, int) or input_size < _PATCH or input_size % _PATCH:
        lo = max(_PATCH, int(input_size) // _PATCH * _PATCH) if isinstance(input_size, (int, float)) else 518
        raise ValueError(
            f"input_size must be a positive multiple of 14 (e.g. 518, or 266 for the 256 px setting); "
            f"got {input_size!r}, try {lo} or {lo + _PATCH}."
        )


def normalise_per_image(depth: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each image of ``[B,1,H,W]`` to [0,1]; a constant map becomes all zeros."""
    flat = depth.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = hi - lo
    return torch.where(span > 1e-8, (depth - lo) / span.clamp_min(1e-8), torch.zeros_like(depth))


def depth_to_rgb(depth: torch.Tensor, cmap: str | None = "Spectral_r") -> torch.Tensor:
    """Visualise ``[B,1,H,W]`` depth in [0,1] as RGB ``[B,3,H,W]`` in [0,1].

    ``cmap`` is a matplotlib colormap name (``Spectral_r`` is what the Depth Anything demos use) or
    ``None``/``"gray"`` for the grey image ControlNet-style depth consumers expect.
    """
    if not isinstance(depth, torch.Tensor) or depth.ndim != 4 or depth.shape[1] != 1:
        shape = tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth).__name__
        raise ValueError(f"depth_to_rgb expects a depth tensor [B,1,H,W]; got {shape}.")
    d = depth.float().clamp(0, 1)
    if cmap in (None, "gray", "grey"):
        return d.expand(-1, 3, -1, -1).clone()
    import matplotlib

    lut = torch.tensor(matplotlib.colormaps[cmap](torch.linspace(0, 1, 256).numpy())[:, :3],
                       dtype=torch.float32, device=d.device)
    idx = (d[:, 0] * 255).round().long()
    return lut[idx].permute(0, 3, 1, 2).contiguous()
