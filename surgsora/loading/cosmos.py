"""Cosmos-H-Surgical (NVIDIA, v0.2.0 Predict, OpenMDW-1.1): what its checkpoint must hold, and the text embedding
it was trained with. Pure torch: the ComfyUI model itself is built in ``nodes/cosmos.py`` from ComfyUI's classes.

The published model is a Cosmos-Predict2.5 2B DiT (28 blocks x 2048, 16 heads of 128, AdaLN-LoRA 256, patch
1x2x2) whose input is the 16-channel Wan 2.1 latent plus a condition-mask channel plus a padding-mask channel
(``x_embedder.proj.1`` takes (16 + 1 + 1) x 4 = 72 features), with a ``crossattn_proj`` (Linear 100352 -> 1024,
then GELU) that maps the Reason1 embedding (every hidden layer of Qwen2.5-VL-7B, 28 x 3584, each normalised) to
the 1024-wide cross-attention context. :func:`expected_tensors` lists its keys and shapes from those numbers;
``tests/fixtures/checkpoint_manifests/cosmos_h_surgical_predict_2b.json`` holds the same list built from the
architecture on the ``meta`` device, and a test holds the two equal.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .io import ModelFileError, load_state_dict

__all__ = ["CosmosArch", "ARCH_2B", "PREDICT_FILE", "expected_tensors", "normalise_keys", "arch_from_state_dict",
           "check_state_dict", "load_cosmos_state_dict", "reason1_embedding", "REASON1_LAYERS", "REASON1_WIDTH",
           "REASON1_SYSTEM_PROMPT", "REASON1_TOKENS", "reason1_prompt"]

PREDICT_FILE = "cosmos-h-surgical-predict_model_ema_bf16.pt"  # openmdw-1.1/predict/ in nvidia/Cosmos-H-Surgical
USE = (f"use the v0.2.0 Predict checkpoint ({PREDICT_FILE}, from openmdw-1.1/predict/ of nvidia/Cosmos-H-Surgical) "
       "or a safetensors conversion of it")

REASON1_LAYERS, REASON1_WIDTH = 28, 3584  # Qwen2.5-VL-7B (Cosmos-Reason1-7B): 28 x 3584 = 100352 features
REASON1_TOKENS = 512  # prompts are padded (pad id 151643) or cut to this many tokens, as in training
REASON1_SYSTEM_PROMPT = "You are a helpful assistant who will provide prompts to an image generator."


@dataclass(frozen=True)
class CosmosArch:
    """The numbers that fix every key and shape of a Predict2.5 DiT (2B by default)."""
    blocks: int = 28
    channels: int = 2048
    head_dim: int = 128
    latent_channels: int = 16
    condition_channels: int = 1  # the condition-mask channel (I2V / V2W models)
    padding_mask: bool = True
    patch_spatial: int = 2
    patch_temporal: int = 1
    adaln_lora: int = 256
    context: int = 1024
    mlp_ratio: int = 4
    crossattn_proj_in: int | None = REASON1_LAYERS * REASON1_WIDTH

    @property
    def in_features(self) -> int:
        per_voxel = self.latent_channels + self.condition_channels + int(self.padding_mask)
        return per_voxel * self.patch_spatial ** 2 * self.patch_temporal


ARCH_2B = CosmosArch()


def expected_tensors(arch: CosmosArch = ARCH_2B) -> dict[str, tuple[int, ...]]:
    """Every key and shape of the DiT, in the order of ComfyUI's ``MiniTrainDIT.state_dict()`` (derived buffers
    such as the RoPE ranges are not weights and are left out: ComfyUI recomputes them)."""
    d, lora, ctx, hd = arch.channels, arch.adaln_lora, arch.context, arch.head_dim
    out = {
        "t_embedder.1.linear_1.weight": (d, d),
        "t_embedder.1.linear_2.weight": (3 * d, d),
        "x_embedder.proj.1.weight": (d, arch.in_features),
    }
    for i in range(arch.blocks):
        b = f"blocks.{i}."
        for attn, kv in (("self_attn", d), ("cross_attn", ctx)):
            out.update({f"{b}{attn}.q_proj.weight": (d, d), f"{b}{attn}.q_norm.weight": (hd,),
                        f"{b}{attn}.k_proj.weight": (d, kv), f"{b}{attn}.k_norm.weight": (hd,),
                        f"{b}{attn}.v_proj.weight": (d, kv), f"{b}{attn}.output_proj.weight": (d, d)})
        out[f"{b}mlp.layer1.weight"] = (arch.mlp_ratio * d, d)
        out[f"{b}mlp.layer2.weight"] = (d, arch.mlp_ratio * d)
        for part in ("self_attn", "cross_attn", "mlp"):
            out[f"{b}adaln_modulation_{part}.1.weight"] = (lora, d)
            out[f"{b}adaln_modulation_{part}.2.weight"] = (3 * d, lora)
    patch_out = arch.latent_channels * arch.patch_spatial ** 2 * arch.patch_temporal
    out.update({"final_layer.linear.weight": (patch_out, d), "final_layer.adaln_modulation.1.weight": (lora, d),
                "final_layer.adaln_modulation.2.weight": (2 * d, lora), "t_embedding_norm.weight": (d,)})
    if arch.crossattn_proj_in:
        out["crossattn_proj.0.weight"] = (ctx, arch.crossattn_proj_in)
        out["crossattn_proj.0.bias"] = (ctx,)
    return out


# Derived buffers the training code saves (RoPE position ranges) and TransformerEngine's FP8 bookkeeping: not
# weights, recomputed from the configuration.
_DERIVED = ("pos_embedder.seq", "pos_embedder.dim_spatial_range", "pos_embedder.dim_temporal_range")
_WRAPPERS = ("net_ema.", "net.", "module.", "_orig_mod.", "model.diffusion_model.")


def normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DiT's own keys: the EMA network when a file holds both (``net_ema.`` over ``net.``), wrapper prefixes
    stripped, derived buffers and ``_extra_state`` entries dropped."""
    if any(k.startswith("net_ema.") for k in sd):
        sd = {k: v for k, v in sd.items() if k.startswith("net_ema.")}
    out = {}
    for key, value in sd.items():
        name = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPERS:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix):], True
        if name.endswith("_extra_state") or name in _DERIVED:
            continue
        out[name] = value
    return out


def _kind_problem(sd: dict[str, torch.Tensor], name: str) -> str | None:
    """One sentence when the keys are another Cosmos model's (or no Cosmos DiT at all)."""
    keys = list(sd)
    if any(k.startswith(("control_blocks.", "control_embedder.")) or ".control_" in k or k.startswith("control_")
           for k in keys):
        return (f"{name} is a Cosmos Transfer checkpoint (it has the control branch's keys), which this loader does "
                f"not run yet; {USE}.")
    if any(("language_model." in k or k.startswith(("visual.", "lm_head.", "model.visual.")) or "moe" in k.lower()
            or "diffusion_expert" in k) for k in keys):
        return (f"{name} is a Cosmos 3 (Cosmos-H-Surgical v0.3.x) checkpoint, a different architecture that ComfyUI "
                f"cannot run yet; {USE}.")
    if "x_embedder.proj.1.weight" not in sd or "blocks.0.mlp.layer1.weight" not in sd:
        return f"{name} is not a Cosmos Predict2.5 DiT checkpoint (it has no x_embedder / blocks keys); {USE}."
    return None


def arch_from_state_dict(sd: dict[str, torch.Tensor]) -> CosmosArch:
    """The architecture numbers read from a (normalised) state dict's shapes, so a smaller model of the same layout
    (the tests' tiny one) is described as exactly as the published 2B."""
    embed = sd["x_embedder.proj.1.weight"]
    channels, patch_in = embed.shape
    blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    head_dim = sd["blocks.0.self_attn.q_norm.weight"].shape[0]
    latent = sd["final_layer.linear.weight"].shape[0] // 4
    per_voxel = patch_in // 4
    proj = sd.get("crossattn_proj.0.weight")
    return CosmosArch(blocks=blocks, channels=channels, head_dim=head_dim, latent_channels=latent,
                      condition_channels=per_voxel - latent - 1,
                      adaln_lora=sd["blocks.0.adaln_modulation_mlp.1.weight"].shape[0],
                      context=sd["blocks.0.cross_attn.k_proj.weight"].shape[1],
                      mlp_ratio=sd["blocks.0.mlp.layer1.weight"].shape[0] // channels,
                      crossattn_proj_in=None if proj is None else proj.shape[1])


def check_state_dict(sd: dict[str, torch.Tensor], name: str = "This file") -> CosmosArch:
    """The architecture of a normalised state dict, or one sentence (:class:`ModelFileError`) saying what it is and
    which file to use: another Cosmos model, an image-only (text-to-world) DiT, missing or extra keys, wrong shapes."""
    problem = _kind_problem(sd, name)
    if problem:
        raise ModelFileError(problem)
    try:
        arch = arch_from_state_dict(sd)
    except (KeyError, IndexError, ValueError):
        raise ModelFileError(f"{name} is an incomplete Cosmos Predict2.5 DiT (a core key is missing); {USE}.") from None
    if arch.condition_channels != 1:
        raise ModelFileError(f"{name} is a Cosmos DiT without the condition-mask input (text-to-world), which cannot "
                             f"start from a frame; {USE}.")
    expected = expected_tensors(arch)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} ({v[0]}{' ...' if len(v) > 1 else ''})"
                 for what, v in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong)) if v]
        raise ModelFileError(f"{name} does not match the Cosmos-H-Surgical Predict layout (keys: {', '.join(parts)}); "
                             f"{USE}.")
    return arch


def load_cosmos_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CosmosArch]:
    """Read (``torch.load(weights_only=True)`` or safetensors), normalise and check a Cosmos-H-Surgical file."""
    path = Path(path)
    with open(path, "rb") as f:
        zipped = f.read(2) == b"PK"
    if zipped and not zipfile.is_zipfile(path):  # a torch.save archive without its central directory
        raise ModelFileError(f"{path.name} is truncated (an incomplete download of a .pt file); download it again or "
                             f"{USE}.")
    try:
        sd = load_state_dict(path, unwrap=("model", "state_dict", "ema", "net_ema", "net", "module"))
    except ModelFileError as e:
        reason = str(e).split(": ", 1)[-1].rstrip(".") if " could not be loaded: " in str(e) else "no tensors"
        raise ModelFileError(f"{path.name} is not a readable state dict ({reason}); {USE}.") from None
    return (sd := normalise_keys(sd)), check_state_dict(sd, path.name)


def reason1_prompt(text: str) -> str:
    """The chat the Predict2.5 text encoder saw in training: its system prompt, then the prompt as the user turn
    (no generation prompt), in Qwen2.5's template."""
    return (f"<|im_start|>system\n{REASON1_SYSTEM_PROMPT}<|im_end|>\n"
            f"<|im_start|>user\n{text}<|im_end|>\n")


def reason1_embedding(hidden: torch.Tensor) -> torch.Tensor:
    """The Predict2.5 text embedding from a language model's hidden states ``[B, L, N, D]``: the output of every
    layer (the last one after the final norm, as Hugging Face's ``hidden_states[1:]``), each normalised over its
    features (mean 0, standard deviation 1, unbiased, + 1e-8 as trained), concatenated to ``[B, N, L * D]``."""
    if hidden.ndim != 4:
        raise ValueError(f"Expected hidden states [B, layers, tokens, width], got {tuple(hidden.shape)}.")
    h = hidden.float()
    h = (h - h.mean(dim=-1, keepdim=True)) / (h.std(dim=-1, keepdim=True) + 1e-8)
    return h.permute(0, 2, 1, 3).reshape(h.shape[0], h.shape[2], h.shape[1] * h.shape[3])
