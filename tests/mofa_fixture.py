"""A tiny MOFA-Video-Traj ControlNet checkpoint in the released folder layout, and the full-size manifest.

The released folder (``ckpts/controlnet`` of huggingface.co/MyNiuuu/MOFA-Video-Traj) holds ``config.json``
(FlowControlNet fields) and ``diffusion_pytorch_model.safetensors`` (683 tensors, names and shapes in
``tests/fixtures/checkpoint_manifests/mofa_traj_controlnet.json``). :func:`write_tiny_mofa_controlnet`
writes the same two files with tiny widths; the tensors come from :class:`mofa_reference.RefFlowControlNet`,
whose full-size key set ``test_mofa_reference.py`` checks against the manifest.

MOFA's injection adds the deepest condition feature after the last two down blocks, so the UNet must have
``block_out_channels[-2] == block_out_channels[-1]`` (SVD-xt: 1280, 1280). ``surgsora.tiny.tiny_unet_config``
(32, 64) does not, so use :func:`tiny_mofa_unet_config` (SVD-xt's four-block layout, widths 32, 64, 96, 96:
the tiny checkpoint then has exactly the released key names, 683 tensors) and :func:`tiny_mofa_svd_components`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mofa_reference import RefFlowControlNet

__all__ = [
    "MANIFEST", "PREDICTED_CONFIG", "TINY_CONDITIONING_CHANNELS", "tiny_mofa_unet_config", "tiny_mofa_svd_components",
    "mofa_heads_for", "mofa_config_from_unet_config", "write_tiny_mofa_controlnet", "mofa_keys_from_manifest",
    "mofa_predicted_config",
]

from data_paths import MANIFESTS

MANIFEST = MANIFESTS / "mofa_traj_controlnet.json"
PREDICTED_CONFIG = MANIFESTS / "mofa_traj_controlnet_config.PREDICTED.json"
TINY_CONDITIONING_CHANNELS = (8, 8, 8, 16)


def tiny_mofa_unet_config(num_frames: int = 4) -> dict:
    """``surgsora.tiny.tiny_unet_config`` in SVD-xt's layout (4 blocks, last two equal widths) so MOFA fits.

    Widths 32, 64, 96, 96 change where SVD-xt's 320, 640, 1280, 1280 change, so the MOFA ControlNet beside it
    has exactly the released tensor names (683, shortcut convs included). Latents must be divisible by 8
    (three downsamples); 16x16 latents = 128x128 images give features of 16, 8, 4 and 2 pixels.
    """
    from surgsora.tiny import tiny_unet_config

    cfg = tiny_unet_config(num_frames)
    cfg.update(
        block_out_channels=(32, 64, 96, 96),
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
        num_attention_heads=(2, 4, 8, 8),
        sample_size=16,
    )
    return cfg


def tiny_mofa_svd_components(seed: int = 0, num_frames: int = 4) -> dict:
    """``surgsora.tiny.tiny_svd_components`` with the UNet rebuilt from :func:`tiny_mofa_unet_config`."""
    from diffusers import UNetSpatioTemporalConditionModel

    from surgsora.tiny import tiny_svd_components

    parts = tiny_svd_components(seed=seed, num_frames=num_frames)
    torch.manual_seed(seed)
    parts["unet"] = UNetSpatioTemporalConditionModel(**tiny_mofa_unet_config(num_frames)).eval()
    return parts


def mofa_heads_for(unet_config: dict) -> list[int]:
    """Trunk heads for a MOFA ControlNet next to this UNet, mirroring the released quirk.

    The released FlowControlNet keeps its parent's default heads (5, 10, 10, 20) while SVD-xt's UNet has
    (5, 10, 20, 20): the third block runs with half the UNet's heads. Same rule here (halve the
    second-to-last block's heads when that divides), so a MOFA mode that takes heads from the UNet fails.
    For SVD-xt's UNet this returns [5, 10, 10, 20].
    """
    n = len(unet_config["block_out_channels"])
    heads = unet_config.get("num_attention_heads", 8)
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * n
    if n >= 3 and heads[n - 2] % 2 == 0:
        half = heads[n - 2] // 2
        if unet_config["block_out_channels"][n - 2] % half == 0:
            heads[n - 2] = half
    return heads


def mofa_config_from_unet_config(unet_config: dict, num_attention_heads=None,
                                 conditioning_embedding_out_channels=TINY_CONDITIONING_CHANNELS) -> dict:
    """The FlowControlNet ``config.json`` fields (released field set) for a ControlNet beside this UNet."""
    channels = list(unet_config["block_out_channels"])
    if len(channels) < 2 or channels[-2] != channels[-1]:
        raise ValueError(
            f"a MOFA ControlNet needs block_out_channels[-2] == block_out_channels[-1] (SVD-xt: 1280, 1280), got "
            f"{channels}; use tiny_mofa_unet_config() instead of surgsora.tiny.tiny_unet_config()")

    def listed(value):
        return list(value) if isinstance(value, (list, tuple)) else value

    heads = mofa_heads_for(unet_config) if num_attention_heads is None else listed(num_attention_heads)
    return {
        "_class_name": "FlowControlNet",
        "_diffusers_version": "0.24.0",
        "addition_time_embed_dim": unet_config.get("addition_time_embed_dim", 256),
        "block_out_channels": channels,
        "conditioning_channels": 3,
        "conditioning_embedding_out_channels": list(conditioning_embedding_out_channels),
        "cross_attention_dim": listed(unet_config.get("cross_attention_dim", 1024)),
        "down_block_types": list(unet_config["down_block_types"]),
        "in_channels": unet_config.get("in_channels", 8),
        "layers_per_block": listed(unet_config.get("layers_per_block", 2)),
        "num_attention_heads": heads,
        "num_frames": unet_config.get("num_frames", 25),
        "out_channels": unet_config.get("out_channels", 4),
        "projection_class_embeddings_input_dim": unet_config.get("projection_class_embeddings_input_dim", 768),
        "sample_size": None,  # the released config records the parent's default, null
        "transformer_layers_per_block": listed(unet_config.get("transformer_layers_per_block", 1)),
        "up_block_types": list(unet_config["up_block_types"]),
    }


ZERO_INIT = ("controlnet_down_blocks.", "controlnet_mid_block.", "flow_encoder.zeroconvs.",
             "controlnet_cond_embedding.conv_out.")


def _randomize_(model: torch.nn.Module, seed: int) -> None:
    """Every tensor random, seeded, sensible scale: the (zero-initialised) zero convs N(0, 0.05), other
    weights N(0, clamp(1/sqrt(fan_in), 0.02, 0.2)), norm weights 1 + N(0, 0.1), everything else (biases,
    scalars) N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.state_dict(keep_vars=True).items()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.startswith(ZERO_INIT):
                p.copy_(0.05 * noise)
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                std = min(0.2, max(0.02, fan_in ** -0.5))
                p.copy_(noise * std)
            elif name.endswith(".weight") and "norm" in name.rsplit(".", 2)[-2]:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def write_tiny_mofa_controlnet(folder, unet_config: dict, seed: int = 0, randomize: bool = True,
                               num_attention_heads=None,
                               conditioning_embedding_out_channels=TINY_CONDITIONING_CHANNELS) -> Path:
    """Write ``folder/config.json`` + ``folder/diffusion_pytorch_model.safetensors`` in MOFA's released layout.

    Widths from ``unet_config`` (use :func:`tiny_mofa_unet_config`), conditioning embedding widths
    (8, 8, 8, 16), heads from :func:`mofa_heads_for` unless given. ``randomize=False`` keeps a fresh MOFA init
    (zero convs zero: residuals are exactly 0); ``randomize=True`` re-draws every tensor from ``seed``.
    Deterministic in ``seed``; the global RNG is left as it was. Returns the folder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = mofa_config_from_unet_config(unet_config, num_attention_heads, conditioning_embedding_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RefFlowControlNet(config)
    if randomize:
        _randomize_(model, seed + 1000)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    return folder


def mofa_keys_from_manifest(path=MANIFEST) -> dict[str, tuple[int, ...]]:
    """Full-size released key -> shape (683 tensors) from the manifest's ``tensors``."""
    tensors = json.loads(Path(path).read_text())["tensors"]
    return {k: tuple(v) for k, v in tensors.items()}


def mofa_predicted_config(path=PREDICTED_CONFIG) -> dict:
    """The released ``config.json`` as diffusers would write it (field names and full-size values)."""
    return json.loads(Path(path).read_text())
