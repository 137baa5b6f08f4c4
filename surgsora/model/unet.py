"""The frozen SVD UNet forward pass, with ControlNet residuals added where they belong.

diffusers' ``UNetSpatioTemporalConditionModel.forward`` takes no ControlNet residuals, so this module
runs the same modules in the same order (bit-identical when the residuals are zero or absent) and
adds each adapter residual exactly once: the down residuals to the skip connections after the whole
down path has run, the mid residual to the mid-block output. (The published code added them inside
the down-block loop, so early skips received them several times.)
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["time_embedding", "unet_forward"]


def _timesteps(timestep, sample: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(timestep):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        if sample.device.type == "mps":
            dtype = torch.float32 if dtype == torch.float64 else torch.int32
        return torch.tensor([timestep], dtype=dtype, device=sample.device)
    if timestep.ndim == 0:
        return timestep[None].to(sample.device)
    return timestep


def time_embedding(model, sample: torch.Tensor, timestep, added_time_ids: torch.Tensor | None,
                   time_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Timestep + micro-conditioning embedding [B, D] of an SVD UNet or of the adapter trunk.

    ``added_time_ids`` = [fps - 1, motion_bucket_id, noise_aug_strength] per batch row, or
    ``time_embeds`` [B, 3 * 256]: those ids already through the sinusoidal projection (ComfyUI's ``y``).
    """
    batch_size = sample.shape[0]
    timesteps = _timesteps(timestep, sample).expand(batch_size)
    t_emb = model.time_proj(timesteps).to(dtype=sample.dtype)
    emb = model.time_embedding(t_emb)
    if time_embeds is None:
        time_embeds = model.add_time_proj(added_time_ids.flatten())
    time_embeds = time_embeds.reshape((batch_size, -1)).to(emb.dtype)
    return emb + model.add_embedding(time_embeds)


def unet_forward(
    unet,
    sample: torch.Tensor,
    timestep,
    encoder_hidden_states: torch.Tensor,
    added_time_ids: torch.Tensor,
    down_block_residuals: Sequence[torch.Tensor] | None = None,
    mid_block_residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``unet(sample, ...)`` with optional adapter residuals; returns the model output [B, T, C, h, w]."""
    hook = getattr(unet, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):  # diffusers' model CPU offload: bring the UNet to the GPU
        hook.pre_forward(unet)  # (it hooks unet.forward, which this function replaces)
    batch_size, num_frames = sample.shape[:2]
    up_factor = 2 ** unet.num_upsamplers
    forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
    upsample_size = None

    emb = time_embedding(unet, sample, timestep, added_time_ids)
    sample = sample.flatten(0, 1)
    emb = emb.repeat_interleave(num_frames, dim=0)
    encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0)

    sample = unet.conv_in(sample)
    image_only_indicator = torch.zeros(batch_size, num_frames, dtype=sample.dtype, device=sample.device)

    skips = (sample,)
    for block in unet.down_blocks:
        kwargs = dict(hidden_states=sample, temb=emb, image_only_indicator=image_only_indicator)
        if getattr(block, "has_cross_attention", False):
            kwargs["encoder_hidden_states"] = encoder_hidden_states
        sample, res = block(**kwargs)
        skips += res

    if down_block_residuals is not None:
        if len(down_block_residuals) != len(skips):
            raise ValueError(
                f"the adapter gave {len(down_block_residuals)} down residuals but the UNet has {len(skips)} "
                "skip connections: adapter and UNet configs do not match"
            )
        skips = tuple(s + r for s, r in zip(skips, down_block_residuals))

    sample = unet.mid_block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
                            image_only_indicator=image_only_indicator)
    if mid_block_residual is not None:
        sample = sample + mid_block_residual

    for i, block in enumerate(unet.up_blocks):
        is_final = i == len(unet.up_blocks) - 1
        res = skips[-len(block.resnets):]
        skips = skips[: -len(block.resnets)]
        if not is_final and forward_upsample_size:
            upsample_size = skips[-1].shape[2:]
        kwargs = dict(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size,
                      image_only_indicator=image_only_indicator)
        if getattr(block, "has_cross_attention", False):
            kwargs["encoder_hidden_states"] = encoder_hidden_states
        sample = block(**kwargs)

    sample = unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
    return sample.reshape(batch_size, num_frames, *sample.shape[1:])
