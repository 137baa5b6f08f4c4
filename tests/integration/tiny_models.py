"""A ComfyUI-style models folder of tiny checkpoints in the real file formats (random weights).

Every file has the key layout of the real one (SAM ``.pth`` state dict, Depth Anything V2 original
``.pth``, MOFA-Video CMP ``.pth.tar`` container with ``module.`` keys, a diffusers SVD folder, a
SurgSora adapter folder from ``save_pretrained``, MOFA-Video-Traj's ControlNet folder) and is saved under the *real* file name, so the shipped
workflows run unchanged: the loaders detect the architecture from tensor shapes, never from names.

ComfyUI's own SVD loader is stricter: :func:`write_core_svd` writes the smallest single file it detects as SVD
(1.8 GiB), for the real-server run of "SurgSora on Core KSampler" only.
"""

from __future__ import annotations

from pathlib import Path

import torch

SAM_NAME = "sam_vit_b_01ec64.pth"
DEPTH_NAME = "depth_anything_v2_vits.pth"
CMP_NAME = "ckpt_iter_42000.pth.tar"
ADAPTER_NAME = "surgsora_adapter"
SVD_FOLDER = "svd-tiny"
# MOFA's ControlNet needs SVD-xt's four-block layout (its deepest feature is added after the last two blocks),
# so the MOFA workflow runs on a second tiny SVD of that layout with a tiny ControlNet in MOFA's release layout.
MOFA_SVD_FOLDER = "svd-xt-layout-tiny"
MOFA_NAME = "mofa-controlnet-tiny"
TINY_DEPTH = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=1, out_indices=[1, 2, 3, 4],
                  neck_hidden_sizes=[8, 16, 32, 64], fusion_hidden_size=16, head_hidden_size=8)


def write_tiny_models(root: str | Path, frames: int = 14, seed: int = 0) -> dict[str, Path]:
    """Write every model the workflows use into ``root`` (ComfyUI ``models`` layout); returns the paths."""
    from diffusers import StableVideoDiffusionPipeline

    from surgsora.motion.cmp import CMPConfig, build_cmp
    from surgsora.perception.depth import build_depth_model, convert_transformers_to_original, depth_config
    from surgsora.perception.sam import build_sam, tiny_sam_config
    from surgsora.tiny import tiny_adapter, tiny_svd_components

    root = Path(root)
    out = {}
    torch.manual_seed(seed)
    sam = build_sam(tiny_sam_config(img_size=256))
    out["sam"] = _save(root / "sams" / SAM_NAME, sam.state_dict())

    depth = build_depth_model(depth_config("custom", **TINY_DEPTH))
    with torch.no_grad():
        for p in depth.parameters():
            p.copy_(torch.randn_like(p) * 0.1 if p.ndim > 1 else torch.rand_like(p) * 1.5 - 0.5)
        depth.head.conv3.bias.fill_(1.5)  # keep the final ReLU from flattening the map
    out["depth"] = _save(root / "depthanything" / DEPTH_NAME, convert_transformers_to_original(depth.state_dict()))

    cmp = build_cmp(CMPConfig(base_width=8, blocks=(1, 1, 1, 1), img_enc_dim=16, sparse_enc_dim=8, dec_dim=16))
    sd = {f"module.{k}": v for k, v in cmp.net.state_dict().items() if not k.endswith("num_batches_tracked")}
    out["cmp"] = _save(root / "surgsora" / CMP_NAME, {"step": 42000, "state_dict": sd})

    parts = tiny_svd_components(seed=seed, num_frames=frames)
    svd_dir = root / "diffusers" / SVD_FOLDER
    StableVideoDiffusionPipeline(**parts).save_pretrained(svd_dir)
    out["svd"] = svd_dir

    adapter = tiny_adapter(parts["unet"], seed=seed, randomize=True)
    adapter_dir = root / "surgsora" / ADAPTER_NAME
    adapter.save_pretrained(adapter_dir)
    out["adapter"] = adapter_dir

    from mofa_fixture import tiny_mofa_svd_components, tiny_mofa_unet_config, write_tiny_mofa_controlnet

    mofa_parts = tiny_mofa_svd_components(seed=seed, num_frames=frames)
    out["mofa_svd"] = root / "diffusers" / MOFA_SVD_FOLDER
    StableVideoDiffusionPipeline(**mofa_parts).save_pretrained(out["mofa_svd"])
    out["mofa"] = write_tiny_mofa_controlnet(root / "surgsora" / MOFA_NAME, tiny_mofa_unet_config(frames), seed=seed)
    return out


def _save(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


# ------------------------------------------------------------------------------------ core-ComfyUI SVD
# ComfyUI's ImageOnlyCheckpointLoader builds SVD only from a file its detection calls SVD_img2vid
# (comfy/model_detection.py + comfy/supported_models.py): model_channels = input_blocks.0.0's width = 320;
# in_channels 8; two res blocks on each of four levels with one spatial + temporal transformer on the first
# three (transformer_depth [1, 1, 1, 1, 1, 1, 0, 0]); context_dim 1024 (CLIP ViT-H's projection); adm_in_channels
# 768 (3 x 256 micro-conditioning sinusoids); temporal res blocks and attention. channel_mult is read as
# width // 320 and not matched, so every level can stay 320 wide (attention heads of 64 channels: 5). The CLIP
# vision tower (comfy/clip_vision.py) is chosen by its layer count and built from a fixed JSON config, so it is
# the full OpenCLIP ViT-H/14 (32 layers); missing keys would stay uninitialised. The temporal VAE
# (comfy/sd.py, 'decoder.mid.block_1.mix_factor') is built from a fixed config too: SVD's full-size one.
CORE_SVD_NAME = "svd_xt.safetensors"  # the name the "SurgSora on Core KSampler" template loads
CORE_ADAPTER_NAME = "surgsora_adapter_core_svd"  # adapter for that UNet's widths (the tiny one is ADAPTER_NAME)
CORE_UNET_WIDTHS = (320, 320, 320, 320)


def core_svd_unet_config(num_frames: int = 14) -> dict:
    """SVD-xt's UNet config with every level 320 wide: the smallest UNet ComfyUI detects as SVD_img2vid."""
    import json

    from surgsora.loading.svd_checkpoint import CONFIG_DIR

    config = {k: v for k, v in json.loads((CONFIG_DIR / "unet" / "config.json").read_text()).items()
              if not k.startswith("_")}
    config.update(block_out_channels=list(CORE_UNET_WIDTHS), num_attention_heads=[w // 64 for w in CORE_UNET_WIDTHS],
                  num_frames=num_frames)
    return config


@torch.no_grad()
def write_core_svd(root: str | Path, frames: int = 14, seed: int = 0) -> dict[str, Path]:
    """The smallest SVD single file ComfyUI's ImageOnlyCheckpointLoader loads as SVD, ``checkpoints/svd_xt.safetensors``
    (random fp16 weights: 320-wide UNet, full-size OpenCLIP ViT-H/14 and temporal VAE, written by
    :func:`svd_export.save_svd_single_file`), and a SurgSora adapter for its UNet, ``surgsora/<CORE_ADAPTER_NAME>``
    (fp16). Every module is built in fp16 directly: about 3 GB of memory at the peak, 20-35 s here."""
    import json

    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig

    from surgsora.loading.svd_checkpoint import CONFIG_DIR
    from surgsora.tiny import tiny_adapter
    from svd_export import save_svd_single_file

    root = Path(root)
    adapter_dir = root / "surgsora" / CORE_ADAPTER_NAME
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        torch.manual_seed(seed)
        unet = UNetSpatioTemporalConditionModel(**core_svd_unet_config(frames)).eval()
        tiny_adapter(unet, seed=seed, randomize=True).save_pretrained(adapter_dir)
        torch.manual_seed(seed + 1)
        vae_config = {k: v for k, v in json.loads((CONFIG_DIR / "vae" / "config.json").read_text()).items()
                      if not k.startswith("_")}
        vae = AutoencoderKLTemporalDecoder(**vae_config).eval()
    finally:
        torch.set_default_dtype(default)
    clip_config = CLIPVisionConfig.from_dict(json.loads((CONFIG_DIR / "image_encoder" / "config.json").read_text()))
    image_encoder = random_clip_vision(clip_config, seed=seed + 2)
    ckpt = save_svd_single_file(root / "checkpoints" / CORE_SVD_NAME, unet, vae, image_encoder, dtype=torch.float16,
                                num_frames=frames)
    return {"core_svd": ckpt, "core_adapter": adapter_dir}


@torch.no_grad()
def random_clip_vision(config, seed: int = 0, dtype: torch.dtype = torch.float16):
    """A CLIPVisionModelWithProjection with random weights drawn once, straight in ``dtype`` (transformers' init draws
    ViT-H's 632 M weights twice, about 15 s here), at scales like CLIP's own init: norms 1 and 0, biases 0, weights
    of std width ** -0.5, times (2 * layers) ** -0.5 in the attention and the second MLP layer."""
    from accelerate import init_empty_weights
    from transformers import CLIPVisionModelWithProjection

    with init_empty_weights(include_buffers=False):
        model = CLIPVisionModelWithProjection(config)
    g = torch.Generator().manual_seed(seed)
    width, depth = config.hidden_size, config.num_hidden_layers
    state = {}
    for name, p in model.named_parameters():
        t = torch.empty(p.shape, dtype=dtype)
        if "norm" in name:  # layer_norm1/2, pre_layrnorm, post_layernorm
            t.fill_(1.0 if name.endswith("weight") else 0.0)
        elif name.endswith("bias"):
            t.zero_()
        else:
            deep = "self_attn" in name or "fc2" in name
            t.normal_(0.0, width ** -0.5 * ((2 * depth) ** -0.5 if deep else 1.0), generator=g)
        state[name] = t
    model.load_state_dict(state, assign=True)
    return model.eval()
