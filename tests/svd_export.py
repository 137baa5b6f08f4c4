"""Write diffusers SVD modules as one Stability-format single file: the inverse of :func:`load_svd`.

Test and benchmark support only (nothing in the product writes SVD files): the tests build tiny SVD
models, save them in the exact layout ComfyUI users have, and load them back through the real loader.
The same :func:`plan_rules` run backwards; a non-identity VAE ``quant_conv`` (which sgm files lack) is
folded into the encoder's ``conv_out`` (exact algebra, in float64), so any diffusers VAE can be written.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from surgsora.loading.svd_checkpoint import CONV1X1, COPY, QKV, TRANSPOSE, VAE_ENCODER_PREFIX, plan_rules

__all__ = ["to_single_file_state_dict", "save_svd_single_file"]


@torch.no_grad()
def to_single_file_state_dict(unet, vae, image_encoder, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The Stability single-file state dict of diffusers SVD modules (inverse of :func:`load_svd`).

    The OpenCLIP text remnants and ``conditioner.embedders.3`` are not written (nothing reads them).
    A non-identity VAE ``quant_conv`` is folded into ``first_stage_model.encoder.conv_out``.
    """
    models = dict(unet=unet, vae=vae, image_encoder=image_encoder)
    rules = plan_rules(models)
    states = {c: m.state_dict() for c, m in models.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, list] = defaultdict(lambda: [None, None, None])
    for r in rules:
        t = states[r.component][r.target]
        if r.kind == COPY:
            out[r.source] = t
        elif r.kind == CONV1X1:
            out[r.source] = t.reshape(*t.shape, 1, 1)
        elif r.kind == TRANSPOSE:
            out[r.source] = t.t()
        elif r.kind == QKV:
            qkv[r.source][r.part] = t
    for key, parts in qkv.items():
        out[key] = torch.cat(parts, dim=0)

    # fold quant_conv (1x1) into the encoder's last 3x3 conv: W' = Q W, b' = Q b + b_q
    vs = states["vae"]
    q = vs["quant_conv.weight"][:, :, 0, 0].double()
    w_key, b_key = VAE_ENCODER_PREFIX + "conv_out.weight", VAE_ENCODER_PREFIX + "conv_out.bias"
    w, b = out[w_key], out[b_key]
    out[w_key] = torch.einsum("oc,cikl->oikl", q, w.double()).to(w.dtype)
    out[b_key] = (q @ b.double() + vs["quant_conv.bias"].double()).to(b.dtype)

    result = {}
    for k, v in out.items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        result[k] = v.contiguous()
    return result


def save_svd_single_file(
    path: str | os.PathLike,
    unet,
    vae,
    image_encoder,
    *,
    dtype: torch.dtype | None = None,
    num_frames: int | None = None,
) -> Path:
    """Write diffusers SVD modules as one Stability-format .safetensors file (loadable by ComfyUI and :func:`load_svd`).

    The file records ``num_frames`` (default: the UNet config's) in its metadata. Written atomically.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: the single file must end in .safetensors")
    from safetensors.torch import save_file

    state = {k: v.cpu() for k, v in to_single_file_state_dict(unet, vae, image_encoder, dtype=dtype).items()}
    frames = int(num_frames if num_frames is not None else unet.config.num_frames)
    metadata = {"format": "pt", "surgsora.num_frames": str(frames)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
