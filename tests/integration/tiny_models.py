"""A ComfyUI-style models folder of tiny checkpoints in the real file formats (random weights).

Every file has the key layout of the real one (SAM ``.pth`` state dict, Depth Anything V2 original
``.pth``, MOFA-Video CMP ``.pth.tar`` container with ``module.`` keys, a diffusers SVD folder, a
SurgSora adapter folder from ``save_pretrained``, MOFA-Video-Traj's ControlNet folder) and is saved under the *real* file name, so the shipped
workflows run unchanged: the loaders detect the architecture from tensor shapes, never from names.
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
