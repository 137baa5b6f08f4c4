"""An independent reference of MOFA-Video-Traj's inference step, for testing the project's MOFA mode.

Written from reading the published code (github MyNiuuu/MOFA-Video, folder MOFA-Video-Traj):
``models/svdxt_featureflow_forward_controlnet_s2d_fixcmp_norefine.py`` (FlowControlNet),
``models/controlnet_sdv.py`` (its parent ControlNetSDVModel), ``models/softsplat.py``,
``models/unet_spatio_temporal_condition_controlnet.py`` and ``pipeline/pipeline.py``. None of that code is
imported or copied; only diffusers building blocks are used. Nothing here imports ``surgsora`` either, so the
reference cannot inherit a bug from the implementation it checks.

What the published code does, and this file reproduces:

* FlowControlNet = a copy of the SVD UNet's encoder half (conv_in, time and added-time embeddings, down blocks,
  mid block) plus 1x1 zero convolutions on every skip (``controlnet_down_blocks``) and on the mid output
  (``controlnet_mid_block``), a conditioning embedding of the first frame (``controlnet_cond_embedding``: 3x3
  conv + SiLU, then pairs (3x3 conv, 3x3 stride-2 conv) each + SiLU, then a zero-initialised 3x3 conv out) and a
  "first frame encoder" (``flow_encoder``: stride-2 3x3 conv + SiLU per deeper scale; its 1x1 zero conv output
  is the feature, the un-zero-conved activation feeds the next layer).
* Condition features: ``[embedding] + flow_encoder(embedding)``, one per scale 8, 16, 32, 64 (image pixels per
  feature pixel). Each is forward-warped by softmax-splatting in 'avg' mode to every later frame with the
  flow resized to its scale by ``F.interpolate(flow, scale_factor=1/s)`` (nearest) and divided by s; frame 0
  is the unwarped feature.
* Injection into the trunk: feature 0 after conv_in, then after down block i the feature
  ``min(i + 1, last)``, and the deepest feature once more right before the mid block (so for SVD-xt the
  deepest feature enters three times).
* The UNet adds the residual tuple inside its down-block loop, after every down block, with ``zip``
  truncating to the skips collected so far; residual k therefore reaches its skip several times
  (SVD-xt: 4,4,4,4,3,3,3,2,2,2,1,1). The mid residual is added once.
* Pipeline: CLIP embedding of the [0, 1] frame resized to 224 (diffusers' ``_resize_with_antialiasing``),
  **without** CLIP mean/std normalisation; VAE latent (``latent_dist.mode()``, unscaled) of the [-1, 1] frame
  plus ``noise_aug_strength`` times noise drawn from the generator *before* the initial latents; zeros for the
  unconditional embedding and latent; both CFG halves get the same conditioning image and flow;
  ``added_time_ids = [6, 128, 0.02]`` for both halves whatever fps / motion bucket is passed; per-frame
  guidance ``linspace(min, max, T)``.
* Scheduler: MOFA's ``utils/scheduling_euler_discrete_karras_fix.py`` computes, for the SVD scheduler config,
  the same timesteps, sigmas, ``init_noise_sigma``, ``scale_model_input`` and ``step`` as diffusers'
  ``EulerDiscreteScheduler`` (Karras sigmas from the config's sigma_min / sigma_max, final sigma 0,
  timesteps 0.25 log sigma). The only difference is that MOFA's ``step`` always draws an unused noise tensor
  from the global RNG; with s_churn = 0 that changes no number. So the reference uses diffusers' scheduler
  (see :func:`ref_svd_scheduler`); ``test_mofa_reference.py`` checks the sigmas against the Karras formula.

Released-checkpoint quirk, kept: FlowControlNet's ``__init__`` does not forward its arguments to its parent,
so the released model's structure is always the parent's defaults and its config records
``num_attention_heads = [5, 10, 10, 20]`` (the SVD UNet has [5, 10, 20, 20]). :class:`RefFlowControlNet`
builds its trunk with the heads of *its own* config, never the UNet's.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "MOFA_ADDED_TIME_IDS", "CONTROLNET_DEFAULTS", "RefFlowControlNet", "softsplat_avg", "mofa_flow_pyramid",
    "ref_unet_forward", "ref_encode_image", "ref_encode_vae_image", "ref_mofa_step", "ref_mofa_sample",
    "ref_svd_scheduler", "residual_multiplicities_in_loop",
]

REPO = Path(__file__).resolve().parents[1]
SVD_SCHEDULER_CONFIG = REPO / "surgsora" / "configs" / "svd" / "scheduler" / "scheduler_config.json"

#: fps id, motion bucket id, noise augmentation: what MOFA's pipeline feeds both CFG halves, always.
MOFA_ADDED_TIME_IDS = (6.0, 128.0, 0.02)

#: ControlNetSDVModel's constructor defaults (= the released FlowControlNet's effective structure).
CONTROLNET_DEFAULTS = dict(
    sample_size=None,
    in_channels=8,
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768,
    layers_per_block=2,
    cross_attention_dim=1024,
    transformer_layers_per_block=1,
    num_attention_heads=(5, 10, 10, 20),
    num_frames=25,
    conditioning_channels=3,
    conditioning_embedding_out_channels=(16, 32, 96, 256),
)


def _per_block(value, n: int) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} per-block values, got {list(value)}")
        return list(value)
    return [value] * n


def _zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# ---------------------------------------------------------------------------------------------- softsplat
def _splat_sum(ten_in: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear forward splatting, summed: what the CuPy kernel ``softsplat_out`` computes.

    Every source pixel (x, y) lands at (x + u, y + v) and adds ``value * weight`` to the four integer neighbours
    in the image, with weights ``(x1 - X)(y1 - Y)``, ``(X - x0)(y1 - Y)``, ``(x1 - X)(Y - y0)``, ``(X - x0)(Y - y0)``
    where x0 = floor(X), x1 = x0 + 1 (same for y). Neighbours outside the image are dropped; pixels whose
    target is not finite are skipped. Same size output as input.
    """
    n, c, h, w = ten_in.shape
    if flow.shape != (n, 2, h, w):
        raise ValueError(f"flow must be [{n}, 2, {h}, {w}], got {tuple(flow.shape)}")
    ten_in = ten_in.float()
    flow = flow.float()
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=ten_in.device),
                            torch.arange(w, dtype=torch.float32, device=ten_in.device), indexing="ij")
    fx = gx + flow[:, 0]  # [n, h, w]
    fy = gy + flow[:, 1]
    finite = torch.isfinite(fx) & torch.isfinite(fy)
    fx = torch.where(finite, fx, torch.zeros_like(fx))
    fy = torch.where(finite, fy, torch.zeros_like(fy))
    x0 = torch.floor(fx)
    y0 = torch.floor(fy)
    x1 = x0 + 1.0
    y1 = y0 + 1.0
    corners = (
        (x0, y0, (x1 - fx) * (y1 - fy)),  # north-west
        (x1, y0, (fx - x0) * (y1 - fy)),  # north-east
        (x0, y1, (x1 - fx) * (fy - y0)),  # south-west
        (x1, y1, (fx - x0) * (fy - y0)),  # south-east
    )
    batch = torch.arange(n, device=ten_in.device).view(n, 1, 1).expand(n, h, w)
    src = ten_in.permute(1, 0, 2, 3).reshape(c, -1)  # [c, n*h*w]
    out = ten_in.new_zeros(c, n * h * w)
    for cx, cy, weight in corners:
        valid = finite & (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
        sel = valid.reshape(-1)
        if not sel.any():
            continue
        target = (batch * (h * w) + cy.long().clamp(0, h - 1) * w + cx.long().clamp(0, w - 1)).reshape(-1)
        out.index_add_(1, target[sel], src[:, sel] * weight.reshape(-1)[sel])
    return out.view(c, n, h, w).permute(1, 0, 2, 3).contiguous()


def softsplat_avg(ten_in: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """MOFA's ``softsplat(tenIn, tenFlow, None, 'avg')``: splat ``[x, 1]``, divide by (splatted weight + 1e-7).

    ten_in [N, C, H, W], flow [N, 2, H, W] in pixels (u = x displacement, v = y displacement) -> [N, C, H, W]
    float32. Holes (no source lands there) come out exactly 0.
    """
    ones = ten_in.new_ones(ten_in.shape[0], 1, *ten_in.shape[2:])
    out = _splat_sum(torch.cat([ten_in.float(), ones.float()], dim=1), flow)
    return out[:, :-1] / (out[:, -1:] + 0.0000001)


def mofa_flow_pyramid(flow: torch.Tensor, scale: int) -> torch.Tensor:
    """flow [B, T-1, 2, H, W] (pixels) -> [B, T-1, 2, H/s, W/s]: nearest ``F.interpolate(scale_factor=1/s)`` / s."""
    b, l, c, h, w = flow.shape
    scaled = F.interpolate(flow.reshape(-1, c, h, w), scale_factor=1 / scale)
    return scaled.reshape(b, l, c, h // scale, w // scale) / scale


def _warp_to_frames(feature: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """feature [B, C, h, w], flow [B, T-1, 2, h, w] -> [B*T, C, h, w]: frame 0 unwarped, frame i+1 splatted."""
    frames = [feature.unsqueeze(1)]
    for i in range(flow.shape[1]):
        frames.append(softsplat_avg(feature.float(), flow[:, i].float()).to(feature.dtype).unsqueeze(1))
    video = torch.cat(frames, dim=1)
    return video.reshape(-1, *video.shape[2:])


# ---------------------------------------------------------------------------------------------- embeddings
def _time_embedding(model: nn.Module, sample: torch.Tensor, timestep, added_time_ids: torch.Tensor) -> torch.Tensor:
    """emb [B, 4*c0]: sinusoidal timestep -> MLP, plus sinusoidal added time ids -> MLP (SVD's step 1)."""
    batch_size = sample.shape[0]
    timesteps = timestep
    if not torch.is_tensor(timesteps):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
    elif timesteps.ndim == 0:
        timesteps = timesteps[None].to(sample.device)
    timesteps = timesteps.expand(batch_size)
    emb = model.time_embedding(model.time_proj(timesteps).to(dtype=sample.dtype))
    time_embeds = model.add_time_proj(added_time_ids.flatten()).reshape(batch_size, -1).to(emb.dtype)
    return emb + model.add_embedding(time_embeds)


def _run_down_block(block: nn.Module, sample, emb, encoder_hidden_states, image_only_indicator):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
                     image_only_indicator=image_only_indicator)
    return block(hidden_states=sample, temb=emb, image_only_indicator=image_only_indicator)


# ---------------------------------------------------------------------------------------------- controlnet
class _CondEmbedding(nn.Module):
    """FlowControlNetConditioningEmbeddingSVD: first frame [B,3,H,W] -> [B, c0, H/8, W/8] (for 4 widths)."""

    def __init__(self, out_channels: int, in_channels: int, widths: Sequence[int]):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = _zero_(nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(x))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)


class _EncoderLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, downsample: bool):
        super().__init__()
        self.conv_in = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2 if downsample else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.conv_in(x))


class _FlowEncoder(nn.Module):
    """FlowControlNetFirstFrameEncoder: one stride-2 layer per deeper scale; zero-conv outputs are the features."""

    def __init__(self, c_in: int, channels: Sequence[int]):
        super().__init__()
        self.encoders = nn.ModuleList()
        self.zeroconvs = nn.ModuleList()
        for c in channels:
            self.encoders.append(_EncoderLayer(c_in, c, downsample=True))
            self.zeroconvs.append(_zero_(nn.Conv2d(c, c, kernel_size=1)))
            c_in = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for encoder, zeroconv in zip(self.encoders, self.zeroconvs):
            x = encoder(x)
            features.append(zeroconv(x))
        return features


class RefFlowControlNet(nn.Module):
    """MOFA-Video-Traj's FlowControlNet (state-dict names identical to the released checkpoint).

    Built from a FlowControlNet ``config.json`` dict (missing fields take ControlNetSDVModel's defaults), with
    the trunk's attention heads from that config. The flow encoder has ``len(block_out_channels) - 1`` layers of
    widths ``block_out_channels[:-1]`` starting from ``block_out_channels[0]`` (the released [320, 640, 1280]);
    MOFA's injection needs ``block_out_channels[-2] == block_out_channels[-1]`` (the last down block adds the
    deepest feature again without a downsample).
    """

    def __init__(self, config: dict | None = None):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block

        cfg = dict(CONTROLNET_DEFAULTS)
        cfg.update({k: v for k, v in (config or {}).items() if not k.startswith("_")})
        self.config = cfg
        channels = list(cfg["block_out_channels"])
        down_types = list(cfg["down_block_types"])
        n = len(down_types)
        if len(channels) != n:
            raise ValueError(f"block_out_channels {channels} and down_block_types {down_types} differ in length")
        if n < 2 or channels[-2] != channels[-1]:
            raise ValueError(
                f"MOFA's feature injection needs block_out_channels[-2] == block_out_channels[-1] (the last down "
                f"block, which does not downsample, gets the deepest feature again); got {channels}")
        if len(cfg["conditioning_embedding_out_channels"]) != 4:
            raise ValueError("conditioning_embedding_out_channels needs 4 widths (three stride-2 convs = 1/8)")
        heads = _per_block(cfg["num_attention_heads"], n)
        cross = _per_block(cfg["cross_attention_dim"], n)
        layers = _per_block(cfg["layers_per_block"], n)
        tlayers = _per_block(cfg["transformer_layers_per_block"], n)
        self.layers_per_block = layers

        c0 = channels[0]
        temb = c0 * 4
        self.conv_in = nn.Conv2d(cfg["in_channels"], c0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(c0, True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, temb)
        self.add_time_proj = Timesteps(cfg["addition_time_embed_dim"], True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(cfg["projection_class_embeddings_input_dim"], temb)

        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList([_zero_(nn.Conv2d(c0, c0, kernel_size=1))])
        out_c = c0
        for i, block_type in enumerate(down_types):
            in_c, out_c = out_c, channels[i]
            final = i == n - 1
            self.down_blocks.append(get_down_block(
                block_type, num_layers=layers[i], transformer_layers_per_block=tlayers[i], in_channels=in_c,
                out_channels=out_c, temb_channels=temb, add_downsample=not final, resnet_eps=1e-5,
                cross_attention_dim=cross[i], num_attention_heads=heads[i], resnet_act_fn="silu",
            ))
            for _ in range(layers[i] + (0 if final else 1)):
                self.controlnet_down_blocks.append(_zero_(nn.Conv2d(out_c, out_c, kernel_size=1)))
        self.controlnet_mid_block = _zero_(nn.Conv2d(channels[-1], channels[-1], kernel_size=1))
        self.mid_block = UNetMidBlockSpatioTemporal(
            channels[-1], temb_channels=temb, transformer_layers_per_block=tlayers[-1],
            cross_attention_dim=cross[-1], num_attention_heads=heads[-1],
        )
        self.controlnet_cond_embedding = _CondEmbedding(c0, cfg["conditioning_channels"],
                                                        cfg["conditioning_embedding_out_channels"])
        self.flow_encoder = _FlowEncoder(c0, channels[:-1])

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, folder, dtype: torch.dtype = torch.float32) -> "RefFlowControlNet":
        """Folder with ``config.json`` + ``diffusion_pytorch_model.safetensors``; strict load; eval mode."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        model = cls(config)
        state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
        return model.to(dtype).eval()

    # ------------------------------------------------------------------ pieces (for finer-grained tests)
    def condition_features(self, controlnet_cond: torch.Tensor) -> list[torch.Tensor]:
        """First frame [B, 3, H, W] in [-1, 1] -> [embedding (1/8)] + flow-encoder features (1/16, 1/32, ...)."""
        embedding = self.controlnet_cond_embedding(controlnet_cond)
        return [embedding] + self.flow_encoder(embedding)

    def warped_features(self, features: Sequence[torch.Tensor], controlnet_flow: torch.Tensor) -> list[torch.Tensor]:
        """Each feature [B, C, h, w] -> [B*T, C, h, w], warped with the flow resized to its scale (H // h)."""
        fh = controlnet_flow.shape[-2]
        out = []
        for feature in features:
            scale = fh // feature.shape[-2]
            out.append(_warp_to_frames(feature, mofa_flow_pyramid(controlnet_flow, scale)))
        return out

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        controlnet_cond: torch.Tensor,
        controlnet_flow: torch.Tensor,
        conditioning_scale: float = 1.0,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """sample [B,T,8,h,w], encoder_hidden_states [B,1,D], added_time_ids [B,3], controlnet_cond [B,3,8h,8w]
        in [-1, 1], controlnet_flow [B,T-1,2,8h,8w] (pixels) -> (down residuals [B*T, C, ., .] * 12, mid [B*T, ...]).
        """
        batch_size, num_frames = sample.shape[:2]
        if controlnet_flow.shape[0] != batch_size or controlnet_flow.shape[1] != num_frames - 1:
            raise ValueError(f"controlnet_flow must be [{batch_size}, {num_frames - 1}, 2, H, W], "
                             f"got {tuple(controlnet_flow.shape)}")
        emb = _time_embedding(self, sample, timestep, added_time_ids)
        sample = sample.flatten(0, 1)
        emb = emb.repeat_interleave(num_frames, dim=0)
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0)

        sample = self.conv_in(sample)
        features = self.warped_features(self.condition_features(controlnet_cond), controlnet_flow)
        image_only_indicator = torch.zeros(batch_size, num_frames, dtype=sample.dtype, device=sample.device)

        last = len(features) - 1
        sample = sample + features[0]
        count = 1
        skips = (sample,)
        for block in self.down_blocks:
            sample, res = _run_down_block(block, sample, emb, encoder_hidden_states, image_only_indicator)
            sample = sample + features[min(count, last)]
            count += 1
            skips += tuple(res)
        sample = sample + features[-1]
        sample = self.mid_block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
                                image_only_indicator=image_only_indicator)

        down = tuple(conv(skip) * conditioning_scale for skip, conv in zip(skips, self.controlnet_down_blocks))
        mid = self.controlnet_mid_block(sample) * conditioning_scale
        return down, mid


# ---------------------------------------------------------------------------------------------- UNet
def residual_multiplicities_in_loop(layers_per_block: Sequence[int]) -> list[int]:
    """How many times MOFA's UNet adds residual k to skip k: the number of down blocks after which skip k
    exists (the in-loop ``zip`` truncates to the skips collected so far). SVD-xt: [4,4,4,4,3,3,3,2,2,2,1,1]."""
    n = len(layers_per_block)
    counts, collected = [], 1
    totals = []
    for i, layers in enumerate(layers_per_block):
        collected += layers + (0 if i == n - 1 else 1)
        totals.append(collected)
    for k in range(totals[-1]):
        counts.append(sum(1 for total in totals if total > k))
    return counts


def ref_unet_forward(
    unet,
    sample: torch.Tensor,
    timestep,
    encoder_hidden_states: torch.Tensor,
    added_time_ids: torch.Tensor,
    down_residuals: Sequence[torch.Tensor] | None,
    mid_residual: torch.Tensor | None,
) -> torch.Tensor:
    """MOFA's UNetSpatioTemporalConditionControlNetModel.forward with a diffusers
    ``UNetSpatioTemporalConditionModel``'s modules -> noise prediction [B, T, 4, h, w].

    After every down block the residual tuple is added to the skips collected so far (zip truncation), so
    residual k is added once per down block from the one that produced skip k on. The mid residual is added
    once after the mid block. ``None`` residuals = plain SVD.
    """
    batch_size, num_frames = sample.shape[:2]
    emb = _time_embedding(unet, sample, timestep, added_time_ids)
    sample = sample.flatten(0, 1)
    emb = emb.repeat_interleave(num_frames, dim=0)
    encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0)

    sample = unet.conv_in(sample)
    image_only_indicator = torch.zeros(batch_size, num_frames, dtype=sample.dtype, device=sample.device)

    skips = (sample,)
    for block in unet.down_blocks:
        sample, res = _run_down_block(block, sample, emb, encoder_hidden_states, image_only_indicator)
        skips += tuple(res)
        if down_residuals is not None:
            skips = tuple(skip + residual for skip, residual in zip(skips, down_residuals))

    sample = unet.mid_block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
                            image_only_indicator=image_only_indicator)
    if mid_residual is not None:
        sample = sample + mid_residual

    for block in unet.up_blocks:
        res = skips[-len(block.resnets):]
        skips = skips[:-len(block.resnets)]
        if getattr(block, "has_cross_attention", False):
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                           encoder_hidden_states=encoder_hidden_states, image_only_indicator=image_only_indicator)
        else:
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                           image_only_indicator=image_only_indicator)

    sample = unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
    return sample.reshape(batch_size, num_frames, *sample.shape[1:])


# ---------------------------------------------------------------------------------------------- pipeline
def ref_svd_scheduler():
    """diffusers ``EulerDiscreteScheduler`` from the project's SVD scheduler config (= MOFA's scheduler's numbers)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(json.loads(SVD_SCHEDULER_CONFIG.read_text()))


@torch.no_grad()
def ref_encode_image(image_encoder, image: torch.Tensor) -> torch.Tensor:
    """MOFA's ``_encode_image``: image [B, 3, H, W] in [0, 1] -> resized to 224 with diffusers'
    ``_resize_with_antialiasing`` -> CLIP vision tower **without** mean/std normalisation -> [B, 1, D]."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    dtype = next(image_encoder.parameters()).dtype
    pixels = _resize_with_antialiasing(image.float(), (224, 224)).to(dtype)
    return image_encoder(pixels).image_embeds.unsqueeze(1)


@torch.no_grad()
def ref_encode_vae_image(vae, image: torch.Tensor, noise_aug_strength: float = 0.02,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """image [B, 3, H, W] in [0, 1] -> ``vae.encode(2x - 1 + strength * noise).latent_dist.mode()`` [B, 4, h, w]
    (unscaled). Draws the noise from ``generator`` (MOFA draws it before the initial latents)."""
    from diffusers.utils.torch_utils import randn_tensor

    pixels = image.float() * 2.0 - 1.0
    noise = randn_tensor(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
    pixels = pixels + noise_aug_strength * noise
    return vae.encode(pixels.to(vae.dtype)).latent_dist.mode()


def _mofa_time_ids(rows: int, dtype, device) -> torch.Tensor:
    return torch.tensor([MOFA_ADDED_TIME_IDS], dtype=dtype, device=device).repeat(rows, 1)


@torch.no_grad()
def ref_mofa_step(
    unet,
    controlnet: RefFlowControlNet,
    latents: torch.Tensor,
    t,
    scheduler,
    image_embeddings: torch.Tensor,
    image_latents: torch.Tensor,
    cond_image: torch.Tensor,
    flow: torch.Tensor,
    guidance: torch.Tensor,
    conditioning_scale: float = 1.0,
    trace: dict | None = None,
) -> torch.Tensor:
    """One denoising step of MOFA's pipeline, with classifier-free guidance -> next latents [B, T, 4, h, w].

    latents [B, T, 4, h, w] (current, scheduler-scaled noise), t: an element of ``scheduler.timesteps`` (the
    scheduler's step counter advances, so call in order), image_embeddings [B, 1, D] and image_latents
    [B, 4, h, w]: the *conditional* CLIP embedding and VAE latent (zeros are used for the unconditional half),
    cond_image [B, 3, H, W] in [-1, 1], flow [B, T-1, 2, H, W] in pixels, guidance [T] or [B, T].
    If ``trace`` is a dict it receives the ControlNet / UNet inputs (``model_input``, ``encoder_hidden_states``,
    ``added_time_ids``, ``controlnet_cond``, ``controlnet_flow``: both CFG halves, unconditional first) and
    outputs (``down``, ``mid``, ``noise_pred_uncond``, ``noise_pred_cond``, ``noise_pred`` = guided).
    """
    batch_size, num_frames = latents.shape[:2]
    embeddings = torch.cat([torch.zeros_like(image_embeddings), image_embeddings])
    cond_latents = torch.cat([torch.zeros_like(image_latents), image_latents])
    cond_latents = cond_latents.to(latents.dtype).unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
    time_ids = _mofa_time_ids(2 * batch_size, embeddings.dtype, latents.device)
    cond_image = torch.cat([cond_image] * 2).to(latents.device, latents.dtype)
    flow = torch.cat([flow] * 2).to(latents.device, latents.dtype)

    model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
    model_input = torch.cat([model_input, cond_latents], dim=2)
    down, mid = controlnet(model_input, t, embeddings, time_ids, cond_image, flow,
                           conditioning_scale=conditioning_scale)
    noise_pred = ref_unet_forward(unet, model_input, t, embeddings, time_ids, down, mid)
    uncond, cond = noise_pred.chunk(2)
    guidance = torch.as_tensor(guidance, dtype=latents.dtype, device=latents.device)
    if guidance.ndim == 1:
        guidance = guidance.unsqueeze(0).repeat(batch_size, 1)
    guided = uncond + guidance.view(batch_size, num_frames, 1, 1, 1) * (cond - uncond)
    if trace is not None:
        trace.update(model_input=model_input, encoder_hidden_states=embeddings, added_time_ids=time_ids,
                     controlnet_cond=cond_image, controlnet_flow=flow, down=down, mid=mid,
                     noise_pred_uncond=uncond, noise_pred_cond=cond, noise_pred=guided)
    return scheduler.step(guided, t, latents).prev_sample


@torch.no_grad()
def ref_mofa_sample(
    unet,
    controlnet: RefFlowControlNet,
    vae,
    image_encoder,
    scheduler,
    image: torch.Tensor,
    flow: torch.Tensor,
    num_inference_steps: int = 25,
    min_guidance_scale: float = 1.0,
    max_guidance_scale: float = 3.0,
    fps: int = 7,
    motion_bucket_id: int = 127,
    noise_aug_strength: float = 0.02,
    conditioning_scale: float = 1.0,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    trace: list | None = None,
) -> torch.Tensor:
    """MOFA-Video-Traj's ``FlowControlNetPipeline.__call__`` up to the final latents [B, T, 4, h, w] (not decoded).

    image [B, 3, H, W] in [0, 1] (already at the output size), flow [B, T-1, 2, H, W] in pixels; T = flow
    frames + 1. ``fps`` and ``motion_bucket_id`` are accepted and ignored, as in MOFA (it always uses
    [6, 128, 0.02]); ``noise_aug_strength`` only scales the noise added to the VAE input. Generator order:
    noise-augmentation noise [B, 3, H, W] first, then the initial latents (unless ``latents`` is given; those
    are multiplied by ``init_noise_sigma`` like drawn ones). The scheduler is copied, not mutated.
    MOFA's own pipeline only works with CFG (max_guidance_scale > 1); so does this reference.
    If ``trace`` is a list, one dict per step (see :func:`ref_mofa_step`) is appended.
    """
    from diffusers.utils.torch_utils import randn_tensor

    del fps, motion_bucket_id  # MOFA ignores them: added_time_ids are always [6, 128, 0.02]
    if max_guidance_scale <= 1.0:
        raise ValueError("MOFA's pipeline needs classifier-free guidance (max_guidance_scale > 1)")
    batch_size = image.shape[0]
    num_frames = flow.shape[1] + 1
    image_embeddings = ref_encode_image(image_encoder, image)
    image_latents = ref_encode_vae_image(vae, image, noise_aug_strength, generator).to(image_embeddings.dtype)
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(num_inference_steps, device=image.device)
    shape = (batch_size, num_frames, unet.config.in_channels // 2, *image_latents.shape[-2:])
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=image.device, dtype=image_embeddings.dtype)
    latents = latents * scheduler.init_noise_sigma
    cond_image = image.float() * 2.0 - 1.0
    guidance = torch.linspace(min_guidance_scale, max_guidance_scale, num_frames)
    for t in scheduler.timesteps:
        step_trace = {} if trace is not None else None
        latents = ref_mofa_step(unet, controlnet, latents, t, scheduler, image_embeddings, image_latents,
                                cond_image, flow, guidance, conditioning_scale, step_trace)
        if trace is not None:
            trace.append(step_trace)
    return latents
