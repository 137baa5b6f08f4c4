"""Load Stable Video Diffusion from the single file ComfyUI users already have, or a diffusers folder.

ComfyUI users keep SVD as one Stability-format file in ``models/checkpoints`` (``svd.safetensors``,
``svd_xt.safetensors``, ``svd_xt_1_1.safetensors``). Its keys follow Stability's generative-models
("sgm") modules::

    model.diffusion_model.*                      VideoUNet            -> diffusers UNetSpatioTemporalConditionModel
    first_stage_model.{encoder,decoder}.*        VAE + VideoDecoder   -> diffusers AutoencoderKLTemporalDecoder
    conditioner.embedders.0.open_clip.model.visual.*  OpenCLIP ViT-H/14 -> transformers CLIPVisionModelWithProjection

:func:`load_svd` converts it on the fly, so nobody needs a second 9 GB copy in diffusers format.

Design:

* **One rule per diffusers tensor.** :func:`plan_rules` walks the state-dict keys of the three
  diffusers models (built from their configs on the ``meta`` device) and names, for each, the
  single-file key it comes from and the transform: a plain copy, a 1x1 conv <-> linear reshape (VAE
  attention), one third of OpenCLIP's fused ``in_proj`` (CLIP q/k/v) or a transpose (CLIP
  projection). The same rules run backwards in the tests' exporter (``tests/svd_export.py``).
* **Every tensor accounted for.** Before any data is read, the rules are checked against the file
  header: a missing key, an unknown extra key or a shape mismatch raises :class:`SVDCheckpointError`
  naming the keys. Only these are skipped on purpose, as ComfyUI does: the six OpenCLIP text-tower
  remnants sgm keeps (``token_embedding``, ``positional_embedding``, ``ln_final``,
  ``text_projection``, ``logit_scale``) and ``conditioner.embedders.3.*`` (a second 2D VAE that sgm
  uses to encode the conditioning frame; SVD in ComfyUI and here encodes it with the main VAE).
* **VAE quant_conv.** The diffusers VAE has a 1x1 ``quant_conv`` after its encoder; sgm's
  ``first_stage_model`` has none. It is loaded as the identity, which reproduces exactly what sgm
  and ComfyUI compute with this file.
* **Streaming, one copy in memory.** Tensors are read one at a time with safetensors ``safe_open``,
  converted to the requested dtype and assigned straight into the meta-built modules
  (``load_state_dict(assign=True)``). The file is re-opened every few hundred MB so pages of the
  memory map that were already copied are released; peak memory stays near one copy of the model.
* **SVD vs SVD-xt, fp16.** Both files have the same tensors; only the UNet's default frame count
  differs (14 vs 25). It comes from ``num_frames=``, else the file's metadata (files written by
  the tests' exporter record it), else the file name (``xt`` -> 25, otherwise ``svd`` ->
  14), else 25. The stored dtype (``svd_xt_1_1`` is fp16) is read from the header;
  ``dtype=None`` keeps it.
* **Configs ship with the package** (``surgsora/configs/svd``, no hub access). Provenance:
  ``unet/config.json`` and ``feature_extractor/preprocessor_config.json`` are verbatim public copies
  of the SVD-xt diffusers files; ``vae``, ``image_encoder`` and ``model_index`` are reconstructions
  whose weight-shaping fields are validated by exact file-size matches against the published weights;
  ``scheduler/scheduler_config.json`` is a quoted public copy (EulerDiscrete, v-prediction, EDM sigmas
  0.002..700, Karras) that agrees with other SVD integrations.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

from .io import ModelFileError, SafetensorsReader, load_state_dict

__all__ = [
    "SVDCheckpointError",
    "SVDCheckpointInfo",
    "TensorRule",
    "CONFIG_DIR",
    "IGNORED_KEYS",
    "IGNORED_PREFIXES",
    "load_svd",
    "inspect_svd_checkpoint",
    "build_empty_models",
    "plan_rules",
    "check_rules",
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "svd"

UNET_PREFIX = "model.diffusion_model."
VAE_ENCODER_PREFIX = "first_stage_model.encoder."
VAE_DECODER_PREFIX = "first_stage_model.decoder."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model.visual."

# Tensors of the real files that SVD inference never uses (ComfyUI skips them too).
IGNORED_KEYS = frozenset(
    "conditioner.embedders.0.open_clip.model." + k
    for k in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
              "text_projection", "logit_scale")
)
IGNORED_PREFIXES = ("conditioner.embedders.3.",)

_WHERE = ("Put the single file (svd_xt.safetensors, svd.safetensors, svd_xt_1_1.safetensors) in "
          "ComfyUI/models/checkpoints, or a diffusers folder (with model_index.json) in ComfyUI/models/diffusers.")

# Transforms between a diffusers tensor and its single-file source.
COPY = "copy"
CONV1X1 = "conv1x1"        # diffusers Linear [o, i]  <->  sgm 1x1 Conv2d [o, i, 1, 1]
QKV = "qkv"                # diffusers q/k/v proj     <->  one third of OpenCLIP's fused in_proj
TRANSPOSE = "transpose"    # diffusers Linear weight  <->  OpenCLIP's x @ proj matrix
QUANT_CONV = "quant_conv"  # no source: identity on load, folded into the encoder's conv_out on export



class SVDCheckpointError(ModelFileError):
    """An SVD checkpoint is missing, of the wrong kind, or its tensors do not match SVD's."""


@dataclass(frozen=True)
class TensorRule:
    """Where one diffusers tensor comes from in the single file."""

    component: str          # "unet" | "vae" | "image_encoder"
    target: str             # key in the diffusers model's state dict
    source: str | None      # key in the single file (None for the VAE quant_conv)
    kind: str = COPY
    part: int = 0           # QKV: 0 = q, 1 = k, 2 = v


@dataclass(frozen=True)
class SVDCheckpointInfo:
    """What :func:`inspect_svd_checkpoint` finds out without reading weights."""

    path: str
    layout: str             # "single_file" | "diffusers"
    variant: str            # "svd" (14 frames) | "svd_xt" (25 frames)
    num_frames: int
    num_frames_from: str    # "argument" | "metadata" | "file name" | "config" | "default"
    dtype: torch.dtype | None  # dtype of the stored UNet weights
    num_tensors: int        # tensors in the single file (-1 for a diffusers folder: not counted)
    num_ignored: int        # of which skipped on purpose (IGNORED_KEYS / IGNORED_PREFIXES)


# ----------------------------------------------------------------------------------------- rules
class _NoRule(KeyError):
    pass


_RES_NAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_TIME_NAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3"}
_VAE_ATTN_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_CLIP_LAYER_NAMES = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                     "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def _split_leaf(rest: str) -> tuple[str, str]:
    name, _, leaf = rest.rpartition(".")
    return name, leaf


def _unet_resnet(rest: str) -> str:
    # VideoResBlock: spatial ResBlock params at top level, temporal ResBlock under time_stack.
    if rest == "time_mixer.mix_factor":
        return rest
    for prefix, sgm in (("spatial_res_block.", ""), ("temporal_res_block.", "time_stack.")):
        if rest.startswith(prefix):
            name, leaf = _split_leaf(rest[len(prefix):])
            if name in _RES_NAMES:
                return f"{sgm}{_RES_NAMES[name]}.{leaf}"
    raise _NoRule(rest)


def _unet_attention(rest: str) -> str:
    # SpatialVideoTransformer keeps diffusers' inner names except for the temporal stack.
    for d, s in (("temporal_transformer_blocks.", "time_stack."),
                 ("time_pos_embed.linear_1.", "time_pos_embed.0."),
                 ("time_pos_embed.linear_2.", "time_pos_embed.2.")):
        if rest.startswith(d):
            return s + rest[len(d):]
    return rest


_UNET_FIXED = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
               "time_embedding.linear_2.": "time_embed.2.", "add_embedding.linear_1.": "label_emb.0.0.",
               "add_embedding.linear_2.": "label_emb.0.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}


def _unet_source(key: str, layers: int, up_has_attention: list[bool]) -> str:
    """sgm VideoUNet key of a diffusers UNetSpatioTemporalConditionModel key (without prefix)."""
    for d, s in _UNET_FIXED.items():
        if key.startswith(d) and key.count(".") == d.count("."):
            return s + key[len(d):]
    step = layers + 1  # sgm numbers resnets and the down/upsampler of a level consecutively
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = 1 + b * step + j
        return f"input_blocks.{idx}.0.{_unet_resnet(rest)}" if kind == "resnets" else \
            f"input_blocks.{idx}.1.{_unet_attention(rest)}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key)
    if m:
        return f"input_blocks.{1 + int(m[1]) * step + layers}.0.op.{m[2]}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        j = int(m[2])
        return f"middle_block.{2 * j}.{_unet_resnet(m[3])}" if m[1] == "resnets" else \
            f"middle_block.{2 * j + 1}.{_unet_attention(m[3])}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = b * step + j
        return f"output_blocks.{idx}.0.{_unet_resnet(rest)}" if kind == "resnets" else \
            f"output_blocks.{idx}.1.{_unet_attention(rest)}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key)
    if m:
        b = int(m[1])
        # the upsampler follows the last resnet (and its attention, if the level has one)
        return f"output_blocks.{b * step + layers}.{2 if up_has_attention[b] else 1}.conv.{m[2]}"
    raise _NoRule(key)


def _vae_resnet(rest: str, temporal: bool) -> str:
    if temporal:
        if rest == "time_mixer.mix_factor":
            return "mix_factor"
        if rest.startswith("temporal_res_block."):
            name, leaf = _split_leaf(rest[len("temporal_res_block."):])
            if name in _VAE_TIME_NAMES:
                return f"time_stack.{_VAE_TIME_NAMES[name]}.{leaf}"
            raise _NoRule(rest)
        if not rest.startswith("spatial_res_block."):
            raise _NoRule(rest)
        rest = rest[len("spatial_res_block."):]
    name, leaf = _split_leaf(rest)
    if name in ("norm1", "conv1", "norm2", "conv2"):
        return rest
    if name == "conv_shortcut":
        return f"nin_shortcut.{leaf}"
    raise _NoRule(rest)


def _vae_attention(rest: str) -> tuple[str, str]:
    name, leaf = _split_leaf(rest)
    if name not in _VAE_ATTN_NAMES:
        raise _NoRule(rest)
    kind = CONV1X1 if name != "group_norm" and leaf == "weight" else COPY
    return f"mid.attn_1.{_VAE_ATTN_NAMES[name]}.{leaf}", kind


def _vae_source(key: str, num_levels: int) -> tuple[str | None, str]:
    """(sgm key, kind) of a diffusers AutoencoderKLTemporalDecoder key."""
    if key.startswith("quant_conv."):
        return None, QUANT_CONV
    if key.startswith("encoder."):
        k, p = key[len("encoder."):], VAE_ENCODER_PREFIX
        fixed = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
        name, leaf = _split_leaf(k)
        if name in fixed:
            return f"{p}{fixed[name]}.{leaf}", COPY
        m = re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k)
        if m:
            return f"{p}down.{m[1]}.block.{m[2]}.{_vae_resnet(m[3], False)}", COPY
        m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", k)
        if m:
            return f"{p}down.{m[1]}.downsample.conv.{m[2]}", COPY
        m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", k)
        if m:
            return f"{p}mid.block_{int(m[1]) + 1}.{_vae_resnet(m[2], False)}", COPY
        m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", k)
        if m:
            src, kind = _vae_attention(m[1])
            return p + src, kind
    elif key.startswith("decoder."):
        k, p = key[len("decoder."):], VAE_DECODER_PREFIX
        fixed = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out",
                 "time_conv_out": "conv_out.time_mix_conv"}
        name, leaf = _split_leaf(k)
        if name in fixed:
            return f"{p}{fixed[name]}.{leaf}", COPY
        m = re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k)
        if m:
            # diffusers counts decoder levels from the bottom (first applied), sgm by resolution
            return f"{p}up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{_vae_resnet(m[3], True)}", COPY
        m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", k)
        if m:
            return f"{p}up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}", COPY
        m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", k)
        if m:
            return f"{p}mid.block_{int(m[1]) + 1}.{_vae_resnet(m[2], True)}", COPY
        m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", k)
        if m:
            src, kind = _vae_attention(m[1])
            return p + src, kind
    raise _NoRule(key)


def _clip_source(key: str) -> tuple[str, str, int]:
    """(OpenCLIP key, kind, part) of a transformers CLIPVisionModelWithProjection key."""
    fixed = {"vision_model.embeddings.class_embedding": "class_embedding",
             "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
             "vision_model.embeddings.position_embedding.weight": "positional_embedding"}
    if key in fixed:
        return CLIP_PREFIX + fixed[key], COPY, 0
    if key == "visual_projection.weight":
        return CLIP_PREFIX + "proj", TRANSPOSE, 0
    for d, s in (("vision_model.pre_layrnorm.", "ln_pre."), ("vision_model.post_layernorm.", "ln_post.")):
        if key.startswith(d):
            return CLIP_PREFIX + s + key[len(d):], COPY, 0
    m = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m:
        i, name, leaf = m[1], m[2], m[3]
        block = f"{CLIP_PREFIX}transformer.resblocks.{i}."
        qkv = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}
        if name in qkv:
            return f"{block}attn.in_proj_{leaf}", QKV, qkv[name]
        if name in _CLIP_LAYER_NAMES:
            return f"{block}{_CLIP_LAYER_NAMES[name]}.{leaf}", COPY, 0
    raise _NoRule(key)


def plan_rules(models: Mapping[str, torch.nn.Module]) -> list[TensorRule]:
    """One :class:`TensorRule` per state-dict tensor of ``models`` (keys ``unet``, ``vae``, ``image_encoder``).

    Works for any config of the three architectures (full size or tiny), as long as the UNet uses
    one ``layers_per_block`` for every level, like all SVD releases.
    """
    rules: list[TensorRule] = []
    unknown: list[str] = []
    for component, model in models.items():
        keys = list(model.state_dict().keys())
        if component == "unet":
            layers = model.config.layers_per_block
            if not isinstance(layers, int):
                if len(set(layers)) != 1:
                    raise SVDCheckpointError(
                        f"UNet layers_per_block={list(layers)} differs between levels; the single-file "
                        "layout of SVD needs one value for all levels."
                    )
                layers = layers[0]
            up_attn = ["CrossAttn" in t for t in model.config.up_block_types]
        elif component == "vae":
            levels = len(model.config.block_out_channels)
        elif component != "image_encoder":
            raise ValueError(f"unknown SVD component {component!r}; expected unet, vae or image_encoder")
        for key in keys:
            try:
                if component == "unet":
                    rules.append(TensorRule("unet", key, UNET_PREFIX + _unet_source(key, layers, up_attn)))
                elif component == "vae":
                    src, kind = _vae_source(key, levels)
                    rules.append(TensorRule("vae", key, src, kind))
                else:
                    src, kind, part = _clip_source(key)
                    rules.append(TensorRule("image_encoder", key, src, kind, part))
            except _NoRule:
                unknown.append(f"{component}.{key}")
    if unknown:
        raise SVDCheckpointError(
            f"{len(unknown)} tensors of the diffusers models have no place in the single-file layout "
            f"({_names(unknown)}); these model configs are not SVD's."
        )
    return rules


def _names(keys: Iterable[str], limit: int = 6) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _target_shape(kind: str, source_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    if kind == COPY:
        return tuple(source_shape)
    if kind == CONV1X1:
        return tuple(source_shape[:2]) if len(source_shape) == 4 and source_shape[2:] == (1, 1) else None
    if kind == QKV:
        return (source_shape[0] // 3, *source_shape[1:]) if source_shape and source_shape[0] % 3 == 0 else None
    if kind == TRANSPOSE:
        return tuple(reversed(source_shape)) if len(source_shape) == 2 else None
    raise ValueError(kind)


def _is_ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def check_rules(
    rules: list[TensorRule],
    source_shapes: Mapping[str, tuple[int, ...]],
    target_shapes: Mapping[str, Mapping[str, tuple[int, ...]]],
    name: str = "the checkpoint",
) -> int:
    """Check that ``rules`` use every tensor of the file and fill every target with the right shape.

    Raises :class:`SVDCheckpointError` naming the missing, unexpected or mis-shaped keys. Returns the
    number of file tensors skipped on purpose (:data:`IGNORED_KEYS`, :data:`IGNORED_PREFIXES`).
    """
    used = {r.source for r in rules if r.source is not None}
    missing = sorted(used - set(source_shapes))
    extra = sorted(k for k in source_shapes if k not in used and not _is_ignored(k))
    if missing and not any(k.startswith(UNET_PREFIX) for k in source_shapes):
        hint = ""
        if any(k.startswith(("down_blocks.", "conv_in.", "encoder.", "vision_model.")) for k in source_shapes):
            hint = (" It holds diffusers-format weights of one component; pass the whole diffusers folder "
                    "(the one with model_index.json) instead.")
        raise SVDCheckpointError(
            f"{name} is not a Stable Video Diffusion single-file checkpoint: it has no "
            f"{UNET_PREFIX}* tensors.{hint} {_WHERE}"
        )
    problems = []
    if missing:
        problems.append(f"{len(missing)} SVD tensors are missing ({_names(missing)})")
    if extra:
        problems.append(f"{len(extra)} tensors are not part of SVD ({_names(extra)})")
    bad = []
    filled: dict[str, set[str]] = defaultdict(set)
    for r in rules:
        filled[r.component].add(r.target)
        if r.source is None or r.source not in source_shapes:
            continue
        want = tuple(target_shapes[r.component][r.target])
        got = _target_shape(r.kind, tuple(source_shapes[r.source]))
        if got != want:
            bad.append(f"{r.source} {list(source_shapes[r.source])} -> {r.component}.{r.target} {list(want)}")
    if bad:
        problems.append(f"{len(bad)} tensors have the wrong shape ({_names(bad, 4)})")
    unfilled = [f"{c}.{k}" for c, shapes in target_shapes.items() for k in shapes if k not in filled[c]]
    if unfilled:
        problems.append(f"{len(unfilled)} model tensors have no source ({_names(unfilled)})")
    if problems:
        raise SVDCheckpointError(
            f"{name} does not match Stable Video Diffusion: " + "; ".join(problems)
            + ". It may be another model or a modified SVD; use an original svd/svd_xt/svd_xt_1_1 file "
            "or a diffusers SVD folder."
        )
    return sum(1 for k in source_shapes if _is_ignored(k))


# ----------------------------------------------------------------------------------------- configs
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SVDCheckpointError(f"Config file not found: {path}.") from None
    except json.JSONDecodeError as e:
        raise SVDCheckpointError(f"{path} is not valid JSON ({e}).") from None


def build_empty_models(config_dir: str | os.PathLike | None = None, num_frames: int | None = None) -> dict:
    """unet, vae and image_encoder built from ``config_dir`` with parameters on the ``meta`` device.

    ``config_dir`` has ``unet/config.json``, ``vae/config.json`` and ``image_encoder/config.json``
    (default: the packaged SVD-xt configs). Buffers that are not saved in checkpoints (CLIP
    position ids) are created normally.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config_dir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    unet_config = _read_json(config_dir / "unet" / "config.json")
    if num_frames is not None:
        unet_config["num_frames"] = int(num_frames)
    vae_config = _read_json(config_dir / "vae" / "config.json")
    clip_config = CLIPVisionConfig.from_dict(_read_json(config_dir / "image_encoder" / "config.json"))
    with init_empty_weights(include_buffers=False):
        unet = UNetSpatioTemporalConditionModel.from_config(unet_config)
        vae = AutoencoderKLTemporalDecoder.from_config(vae_config)
        image_encoder = CLIPVisionModelWithProjection(clip_config)
    return dict(unet=unet, vae=vae, image_encoder=image_encoder)


def _scheduler_and_feature_extractor(folder: Path | None):
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPImageProcessor

    sched_file = folder / "scheduler" / "scheduler_config.json" if folder else None
    if sched_file is None or not sched_file.is_file():
        sched_file = CONFIG_DIR / "scheduler" / "scheduler_config.json"
    scheduler = EulerDiscreteScheduler.from_config(_read_json(sched_file))
    fe_dir = folder / "feature_extractor" if folder else None
    if fe_dir is None or not (fe_dir / "preprocessor_config.json").is_file():
        fe_dir = CONFIG_DIR / "feature_extractor"
    return scheduler, CLIPImageProcessor.from_pretrained(str(fe_dir), local_files_only=True)


# ----------------------------------------------------------------------------------------- sources
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class _SafetensorsSource(SafetensorsReader):
    """Tensors of a .safetensors file, read one at a time (see :class:`surgsora.loading.io.SafetensorsReader`)."""

    def __init__(self, path: Path):
        try:
            super().__init__(path)
        except ModelFileError as e:
            raise SVDCheckpointError(str(e)) from None

    def dtype_of(self, key: str) -> torch.dtype | None:
        return _ST_DTYPES.get(self.dtypes.get(key, ""))


class _DictSource:
    """Tensors already in memory (a .ckpt/.pth file loaded through surgsora.loading.io)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None):
        self._sd = state_dict
        self.metadata = dict(metadata or {})
        self.shapes = {k: tuple(v.shape) for k, v in state_dict.items()}

    def dtype_of(self, key: str) -> torch.dtype | None:
        t = self._sd.get(key)
        return t.dtype if t is not None else None

    def get(self, key: str) -> torch.Tensor:
        return self._sd[key]

    def close(self):
        self._sd = {}


def _open_source(path: Path):
    if path.suffix == ".safetensors":
        return _SafetensorsSource(path)
    return _DictSource(load_state_dict(path, folder_hint="ComfyUI/models/checkpoints"))


_XT = re.compile(r"(^|[^a-z]|svd)xt([^a-z]|$)")


def _detect_frames(path: Path, metadata: Mapping[str, str], num_frames: int | None) -> tuple[int, str]:
    if num_frames is not None:
        return int(num_frames), "argument"
    value = metadata.get("surgsora.num_frames")
    if value is not None and str(value).isdigit():
        return int(value), "metadata"
    # Stability's modelspec metadata, if present, names the model
    spec = " ".join(str(metadata.get(k, "")) for k in ("modelspec.architecture", "modelspec.title")).lower()
    if _XT.search(spec):
        return 25, "metadata"
    stem = path.stem.lower()
    if _XT.search(stem):
        return 25, "file name"
    if "svd" in stem or "img2vid" in stem:
        return 14, "file name"
    return 25, "default"


def _variant(num_frames: int) -> str:
    return "svd" if num_frames <= 14 else "svd_xt"


# ----------------------------------------------------------------------------------------- loading
def inspect_svd_checkpoint(path: str | os.PathLike, num_frames: int | None = None) -> SVDCheckpointInfo:
    """Layout, SVD vs SVD-xt, stored dtype and tensor count of a checkpoint, reading only headers/configs."""
    path = _check_path(path)
    if path.is_dir():
        folder = _diffusers_folder(path)
        config = _read_json(folder / "unet" / "config.json")
        frames, origin = (int(num_frames), "argument") if num_frames is not None else \
            (int(config.get("num_frames", 25)), "config")
        return SVDCheckpointInfo(str(path), "diffusers", _variant(frames), frames, origin,
                                 _folder_dtype(folder), -1, 0)
    source = _open_source(path)
    try:
        frames, origin = _detect_frames(path, source.metadata, num_frames)
        unet_keys = [k for k in source.shapes if k.startswith(UNET_PREFIX)]
        dtype = source.dtype_of(unet_keys[0]) if unet_keys else None
        ignored = sum(1 for k in source.shapes if _is_ignored(k))
        return SVDCheckpointInfo(str(path), "single_file", _variant(frames), frames, origin, dtype,
                                 len(source.shapes), ignored)
    finally:
        source.close()


def _check_path(path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise SVDCheckpointError(f"SVD model not found: {path}. {_WHERE}")
    if path.is_file() and path.stat().st_size == 0:
        raise SVDCheckpointError(f"{path} is empty (0 bytes); the download did not finish. Download it again.")
    return path


def load_svd(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = torch.float32,
    *,
    num_frames: int | None = None,
    config_dir: str | os.PathLike | None = None,
) -> dict:
    """Load SVD as diffusers/transformers modules from a single file or a diffusers folder.

    Args:
        path: a Stability single file (``svd_xt.safetensors`` ...) or a diffusers folder with
            ``model_index.json``, ``unet/``, ``vae/``, ``image_encoder/``.
        device: where the weights go. ``"meta"`` checks the file against SVD and builds the
            modules without reading any weights.
        dtype: weight dtype; ``None`` keeps the stored one (fp16 for ``svd_xt_1_1``).
        num_frames: the UNet's default frame count; default detected (14 for SVD, 25 for SVD-xt).
        config_dir: model configs for a single file (default: the packaged SVD configs).

    Returns ``dict(unet=, vae=, image_encoder=, scheduler=, feature_extractor=)``, in eval mode;
    ``diffusers.StableVideoDiffusionPipeline(**load_svd(path))`` is a working pipeline.
    """
    path = _check_path(path)
    if path.is_dir():
        return _load_diffusers_folder(path, device, dtype, num_frames)

    source = _open_source(path)
    try:
        frames, _ = _detect_frames(path, source.metadata, num_frames)
        models = build_empty_models(config_dir, frames)
        rules = plan_rules(models)
        target_shapes = {c: {k: tuple(v.shape) for k, v in m.state_dict().items()} for c, m in models.items()}
        check_rules(rules, source.shapes, target_shapes, name=str(path))
        if dtype is None:
            dtype = source.dtype_of(next(r.source for r in rules if r.component == "unet")) or torch.float32
        device = torch.device(device)
        if device.type == "meta":
            for m in models.values():
                m.to(dtype=dtype)
        else:
            _fill(models, rules, source, device, dtype)
    finally:
        source.close()
    scheduler, feature_extractor = _scheduler_and_feature_extractor(Path(config_dir) if config_dir else None)
    return dict(unet=models["unet"].eval(), vae=models["vae"].eval(), image_encoder=models["image_encoder"].eval(),
                scheduler=scheduler, feature_extractor=feature_extractor)


def _to_target(t: torch.Tensor, rule: TensorRule) -> torch.Tensor:
    if rule.kind == COPY:
        return t
    if rule.kind == CONV1X1:
        return t.reshape(t.shape[:2])
    if rule.kind == QKV:
        return t.chunk(3, dim=0)[rule.part].clone()  # own storage, so save_pretrained works later
    if rule.kind == TRANSPOSE:
        return t.t().contiguous()
    raise ValueError(rule.kind)


@torch.no_grad()
def _fill(models, rules, source, device, dtype):
    by_component: dict[str, list[TensorRule]] = defaultdict(list)
    for r in rules:
        by_component[r.component].append(r)
    for component, model in models.items():
        state: dict[str, torch.Tensor] = {}
        last_key, last = None, None
        for r in by_component[component]:
            if r.kind == QUANT_CONV:
                continue
            if r.source != last_key:  # q, k, v rules share one source tensor
                last_key, last = r.source, source.get(r.source)
            t = _to_target(last, r).to(device=device, dtype=dtype)
            if t.device.type == "cpu" and t.data_ptr() % 64:
                # safetensors hands out tensors at arbitrary byte offsets; CPU kernels pick other
                # (slower, differently rounded) paths for unaligned data, so give each its own buffer
                t = t.clone()
            state[r.target] = t
        last = None
        if component == "vae":
            # sgm's first_stage_model has no quant_conv: the identity reproduces it exactly
            qc = model.quant_conv
            c = qc.out_channels
            state["quant_conv.weight"] = torch.eye(c, dtype=dtype, device=device).reshape(c, c, 1, 1)
            state["quant_conv.bias"] = torch.zeros(c, dtype=dtype, device=device)
        model.load_state_dict(state, strict=True, assign=True)
        del state
        model.to(device)
        leftover = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
        if leftover:
            raise SVDCheckpointError(f"{component} tensors were not loaded: {_names(leftover)}.")


# ----------------------------------------------------------------------------------------- diffusers folders
@torch.no_grad()
def _realign(model: torch.nn.Module) -> None:
    # same reason as in _fill: tensors read from safetensors may sit at unaligned addresses
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()


def _diffusers_folder(path: Path) -> Path:
    if not (path / "model_index.json").is_file():
        if (path.parent / "model_index.json").is_file():
            raise SVDCheckpointError(
                f"{path} is one component of a diffusers folder; pass its parent {path.parent} instead."
            )
        files = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f" To load a single file, pick the file itself (e.g. {path / files[0]})." if files else ""
        raise SVDCheckpointError(
            f"{path} is a folder without model_index.json, so it is not a diffusers SVD folder.{hint} {_WHERE}"
        )
    index = _read_json(path / "model_index.json")
    cls = index.get("_class_name", "")
    if cls and "VideoDiffusion" not in cls:
        raise SVDCheckpointError(
            f"{path} is a diffusers {cls} folder, not Stable Video Diffusion (expected "
            f"StableVideoDiffusionPipeline in model_index.json)."
        )
    return path


# Weight files diffusers/transformers look for, without and with the "fp16" variant.
_WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model", "diffusion_pytorch_model"),
    "vae": ("diffusion_pytorch_model", "diffusion_pytorch_model"),
    "image_encoder": ("model", "pytorch_model"),
}


def _folder_variant(folder: Path, component: str) -> str | None:
    sub = folder / component
    if not (sub / "config.json").is_file():
        raise SVDCheckpointError(f"{sub} is missing (or has no config.json); the diffusers SVD folder is incomplete.")
    st, pt = _WEIGHT_FILES[component]
    for variant, infix in ((None, ""), ("fp16", ".fp16")):
        names = (f"{st}{infix}.safetensors", f"{st}{infix}.safetensors.index.json", f"{pt}{infix}.bin")
        if any((sub / n).is_file() for n in names):
            return variant
    raise SVDCheckpointError(
        f"{sub} has no weights ({st}.safetensors or {st}.fp16.safetensors); the download is incomplete."
    )


def _folder_dtype(folder: Path) -> torch.dtype | None:
    from .io import read_safetensors_header

    sub = folder / "unet"
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        if (sub / name).is_file():
            header = read_safetensors_header(sub / name)
            first = next((v for k, v in header.items() if k != "__metadata__"), None)
            return _ST_DTYPES.get(first["dtype"]) if first else None
    return None


def _load_diffusers_folder(path: Path, device, dtype, num_frames):
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionModelWithProjection

    folder = _diffusers_folder(path)
    variants = {c: _folder_variant(folder, c) for c in ("unet", "vae", "image_encoder")}
    device = torch.device(device)
    if device.type == "meta":
        raise SVDCheckpointError("device='meta' is only supported for single-file checkpoints.")
    kwargs = {} if dtype is None else {"torch_dtype": dtype}
    try:
        unet = UNetSpatioTemporalConditionModel.from_pretrained(
            folder, subfolder="unet", variant=variants["unet"], local_files_only=True, **kwargs)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(
            folder, subfolder="vae", variant=variants["vae"], local_files_only=True, **kwargs)
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            folder / "image_encoder", variant=variants["image_encoder"], local_files_only=True,
            **({} if dtype is None else {"dtype": dtype}))
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SVDCheckpointError(f"The diffusers SVD folder {folder} could not be loaded: {first}") from None
    if num_frames is not None:
        unet.register_to_config(num_frames=int(num_frames))
    for model in (unet, vae, image_encoder):
        _realign(model)
    scheduler, feature_extractor = _scheduler_and_feature_extractor(folder)
    return dict(unet=unet.to(device).eval(), vae=vae.to(device).eval(), image_encoder=image_encoder.to(device).eval(),
                scheduler=scheduler, feature_extractor=feature_extractor)
