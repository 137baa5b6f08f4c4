"""SurgSoraAdapter: the trainable ControlNet-style adapter that conditions a frozen SVD UNet.

It holds two parts:

* the **condition branch** (no dependence on the noisy latent or the timestep): the Dual Semantic
  Injector (``rgb_processor``/``rgb_encoder``, ``depth_processor``/``depth_encoder``), the Decoupled
  Flow Mapper (forward splatting per scale) and Multi-Scale Fusion (``fusion``). It runs once per
  video in :meth:`SurgSoraAdapter.encode_conditions`.
* the **trunk**: a trainable copy of the UNet's conv_in, time/added-time embeddings, down blocks and
  mid block. Each denoising step it takes the noisy latent, adds the fused condition at each scale
  (once, where the trunk reaches that resolution) and returns one residual per UNet skip connection
  plus one for the mid block, all through zero-initialised 1x1 convs, so a fresh adapter leaves the
  frozen UNet's output untouched.

Module names follow MOFA-Video's FlowControlNet where the parts correspond (``conv_in``,
``down_blocks``, ``controlnet_down_blocks``, ``rgb_encoder.encoders/zeroconvs`` ...) so a MOFA warm
start is a rename.

**One class, several configurations** (all saved in ``config.json``):

* SurgSora (the defaults): SAM features in the RGB stream, a depth stream, MSF fusion; each scale's
  condition added once where the trunk reaches it; each residual added once to its skip.
* Ablations (paper Table 3): ``use_seg_features=False``, ``use_depth_branch=False`` (then
  ``fusion_type`` is ``"rgb"``: the RGB stream alone), ``fusion_type="sum"`` (RGB + depth, no MSF
  parameters). (``fusion`` names the MSF modules, so the switch is ``fusion_type``.)
* MOFA-Video-Traj (:meth:`SurgSoraAdapter.from_mofa`, the released ControlNet run exactly as
  published; see :data:`surgsora.loading.mofa.MOFA_SEMANTICS`): RGB stream only; flow resized by nearest sampling;
  features splatted with softsplat's normalisation (``splat_normalize="softsplat"``); the deepest
  condition added after the third and fourth down blocks and again before the mid block
  (``condition_injection="mofa"``); residual k scaled by the number of times MOFA's UNet adds
  it inside its down-block loop, m_k = [4,4,4,4,3,3,3,2,2,2,1,1] for SVD-xt
  (``residual_multiplicity="mofa"``); heads (5, 10, 10, 20). Its inference conventions travel with it:
  ``fixed_time_ids`` [6, 128, 0.02] and ``clip_normalize=False`` (read by the pipeline).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block
from diffusers.utils.accelerate_utils import apply_forward_hook

from .dfm import FusionBlock, warp_scales
from .dsi import DepthProcessor, FeatureEncoder, RGBProcessor, zero_module
from .unet import time_embedding

# MOFA's heads and semantics live with the rest of MOFA in loading/mofa.py (torch-free, imports nothing from here).
from ..loading.mofa import per_block

__all__ = ["SurgSoraAdapter", "residual_multiplicities"]

_CHOICES = dict(fusion_type=("msf", "sum", "rgb"), condition_injection=("once", "mofa"),
                residual_multiplicity=("once", "mofa"), flow_resize=("bilinear", "nearest"),
                splat_normalize=("clamp", "softsplat"))


def residual_multiplicities(layers_per_block: Sequence[int], mode: str) -> list[int]:
    """How many times each down residual reaches its skip connection.

    ``"once"``: 1 each. ``"mofa"``: MOFA's UNet adds the whole residual tuple after every down block
    (zip truncates it to the skips that exist so far), so residual k is added once per down block
    after which skip k exists: [4,4,4,4,3,3,3,2,2,2,1,1] for SVD-xt.
    """
    n = len(layers_per_block)
    counts, total = [], 1  # conv_in's output is skip 0
    for i, layers in enumerate(layers_per_block):
        total += layers + (0 if i == n - 1 else 1)  # resnets, then the downsampler (not after the last)
        counts.append(total)
    if mode == "once":
        return [1] * total
    return [sum(c > k for c in counts) for k in range(total)]

# UNet config entries the trunk copies; everything else in a UNet config is ignored.
_UNET_KEYS = (
    "in_channels", "down_block_types", "block_out_channels", "addition_time_embed_dim",
    "projection_class_embeddings_input_dim", "layers_per_block", "cross_attention_dim",
    "transformer_layers_per_block", "num_attention_heads",
)


class SurgSoraAdapter(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        down_block_types: Sequence[str] = (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 768,
        layers_per_block: int | Sequence[int] = 2,
        cross_attention_dim: int | Sequence[int] = 1024,
        transformer_layers_per_block: int | Sequence[int] = 1,
        num_attention_heads: int | Sequence[int] = (5, 10, 20, 20),
        conditioning_embedding_channels: Sequence[int] = (16, 32, 96, 256),
        depth_hidden_channels: Sequence[int] = (32, 256),
        seg_channels: int = 256,
        fusion_temporal_kernel: int = 3,
        use_seg_features: bool = True,
        use_depth_branch: bool = True,
        fusion_type: str | None = None,
        condition_injection: str = "once",
        residual_multiplicity: str = "once",
        flow_resize: str = "bilinear",
        splat_normalize: str = "clamp",
        fps: int = 7,
        fixed_time_ids: Sequence[float] | None = None,
        clip_normalize: bool = True,
        svd_num_frames: int | None = None,
    ):
        super().__init__()
        n = len(down_block_types)
        if len(block_out_channels) != n:
            raise ValueError(f"block_out_channels {block_out_channels} must have one entry per down block ({n})")
        if fusion_type is None:  # the only fusion that needs no depth stream is the RGB stream alone
            fusion_type = "msf" if use_depth_branch else "rgb"
            self.register_to_config(fusion_type=fusion_type)
        for name, value in dict(fusion_type=fusion_type, condition_injection=condition_injection,
                                residual_multiplicity=residual_multiplicity, flow_resize=flow_resize,
                                splat_normalize=splat_normalize).items():
            if value not in _CHOICES[name]:
                raise ValueError(f"{name} must be one of {', '.join(_CHOICES[name])}; got {value!r}")
        if use_depth_branch == (fusion_type == "rgb"):
            raise ValueError(f"fusion_type={fusion_type!r} does not fit use_depth_branch={use_depth_branch}: 'rgb' is the RGB "
                             "stream alone (no depth branch); 'msf' and 'sum' fuse it with the depth stream")
        if condition_injection == "mofa" and (n < 2 or block_out_channels[-2] != block_out_channels[-1]):
            raise ValueError(f"condition_injection='mofa' adds the deepest condition after the last two down blocks, "
                             f"so their widths must match (SVD-xt: 1280, 1280); got block_out_channels "
                             f"{list(block_out_channels)}")
        if fixed_time_ids is not None and len(fixed_time_ids) != 3:
            raise ValueError(f"fixed_time_ids must be [fps - 1, motion_bucket_id, noise_aug_strength]; got {fixed_time_ids}")
        heads = per_block(num_attention_heads, n)
        cross = per_block(cross_attention_dim, n)
        layers = per_block(layers_per_block, n)
        tlayers = per_block(transformer_layers_per_block, n)
        c0 = block_out_channels[0]

        # --- trunk: same structure (and parameter names) as the SVD UNet's encoder half ---
        self.conv_in = nn.Conv2d(in_channels, c0, kernel_size=3, padding=1)
        time_embed_dim = c0 * 4
        self.time_proj = Timesteps(c0, True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, time_embed_dim)
        self.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)

        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList([zero_module(nn.Conv2d(c0, c0, 1))])
        out_c = c0
        for i, block_type in enumerate(down_block_types):
            in_c, out_c = out_c, block_out_channels[i]
            last = i == n - 1
            self.down_blocks.append(get_down_block(
                block_type, num_layers=layers[i], transformer_layers_per_block=tlayers[i],
                in_channels=in_c, out_channels=out_c, temb_channels=time_embed_dim, add_downsample=not last,
                resnet_eps=1e-5, cross_attention_dim=cross[i], num_attention_heads=heads[i],
                resnet_act_fn="silu",
            ))
            for _ in range(layers[i] + (0 if last else 1)):
                self.controlnet_down_blocks.append(zero_module(nn.Conv2d(out_c, out_c, 1)))
        self.mid_block = UNetMidBlockSpatioTemporal(
            block_out_channels[-1], temb_channels=time_embed_dim, transformer_layers_per_block=tlayers[-1],
            cross_attention_dim=cross[-1], num_attention_heads=heads[-1],
        )
        self.controlnet_mid_block = zero_module(nn.Conv2d(block_out_channels[-1], block_out_channels[-1], 1))
        self.residual_counts = residual_multiplicities(layers, residual_multiplicity)

        # --- condition branch: one feature scale per place the trunk reaches a new resolution ---
        # (after conv_in, then after every down block that downsamples)
        self.scale_channels = [c0] + list(block_out_channels[: n - 1])
        self.rgb_processor = RGBProcessor(c0, conditioning_embedding_channels, seg_channels, use_seg_features)
        self.rgb_encoder = FeatureEncoder(c0, self.scale_channels[1:])
        self.depth_processor = self.depth_encoder = self.fusion = None
        if use_depth_branch:
            self.depth_processor = DepthProcessor(c0, depth_hidden_channels, seg_channels, use_seg_features)
            if self.rgb_processor.downscale != self.depth_processor.downscale:
                raise ValueError(
                    f"conditioning_embedding_channels downsample by {self.rgb_processor.downscale} but "
                    f"depth_hidden_channels by {self.depth_processor.downscale}; both must match the VAE (8 for SVD)"
                )
            self.depth_encoder = FeatureEncoder(c0, self.scale_channels[1:])
        if fusion_type == "msf":
            self.fusion = nn.ModuleList(FusionBlock(c, fusion_temporal_kernel) for c in self.scale_channels)
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_unet(cls, unet, load_weights_from_unet: bool = True, **config_overrides) -> "SurgSoraAdapter":
        """A fresh adapter whose trunk is a copy of ``unet`` (a diffusers UNetSpatioTemporalConditionModel).

        ``config_overrides`` sets the condition-branch options (``conditioning_embedding_channels``,
        ``depth_hidden_channels``, ``seg_channels``, ``fusion_temporal_kernel``, the ablation switches),
        the semantics (``MOFA_SEMANTICS``) or trunk options that do not change weight shapes, such as
        ``num_attention_heads`` (MOFA-Video's ControlNet runs (5, 10, 10, 20) where the SVD UNet runs
        (5, 10, 20, 20)).
        """
        config = {k: unet.config[k] for k in _UNET_KEYS}
        config.update(config_overrides)
        adapter = cls(**config)
        if load_weights_from_unet:
            for name in ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block"):
                getattr(adapter, name).load_state_dict(getattr(unet, name).state_dict())
        adapter = adapter.to(unet.device)
        return adapter if adapter.dtype == unet.dtype else adapter.to(unet.dtype)

    @classmethod
    def from_mofa(cls, path, dtype: torch.dtype | None = None) -> "SurgSoraAdapter":
        """MOFA-Video-Traj's released ControlNet (its ``controlnet`` folder or safetensors file) as an
        adapter in MOFA mode, computing exactly what the published code computes (see :data:`surgsora.loading.mofa.MOFA_SEMANTICS`).

        ``SurgSoraPipeline(**svd_xt_parts, adapter=adapter)(image, flow=flow)`` then reproduces
        MOFA-Video-Traj's inference; no depth and no SAM features are needed.
        """
        from ..loading.warm_start import load_mofa_controlnet  # loading/ reads files; it never imports this module

        return load_mofa_controlnet(cls, path, dtype=dtype)

    # ------------------------------------------------------------------ condition branch
    @property
    def image_downscale(self) -> int:
        """Ratio between image and first-scale feature size (must equal the VAE's scale factor)."""
        return self.rgb_processor.downscale

    @property
    def needs_depth(self) -> bool:
        return self.depth_processor is not None

    @property
    def needs_seg(self) -> bool:
        return self.rgb_processor.seg_proj is not None

    @apply_forward_hook  # under diffusers' model CPU offload, brings the adapter to the GPU as forward() does
    def encode_conditions(
        self,
        image: torch.Tensor,
        depth: torch.Tensor | None,
        seg: torch.Tensor | None,
        flow: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Run DSI + DFM + MSF once for a video.

        Args:
            image: first frame [B, 3, H, W], RGB in [-1, 1].
            depth: its depth [B, 1, H', W'] in [0, 1] (resized to H, W if needed); ignored (may be None)
                without a depth branch.
            seg: its SAM image embedding [B, 256, 64, 64]; ignored (may be None) without SAM features.
            flow: flow frame 0 -> t [B, T-1, 2, H'', W''] in pixels of its own size (rescaled to H, W).

        Returns one fused condition per scale, [B, T, C_s, H/s, W/s] with s = 8, 16, 32, 64 for SVD.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B,3,H,W] RGB in [-1,1]; got {tuple(image.shape)}")
        b, _, h, w = image.shape
        if h % self.image_downscale or w % self.image_downscale:
            raise ValueError(f"image height and width must be multiples of {self.image_downscale}; got {h}x{w}")
        if self.needs_depth and (depth is None or depth.ndim != 4 or depth.shape[:2] != (b, 1)):
            got = "none" if depth is None else tuple(depth.shape)
            raise ValueError(f"this adapter has a depth branch: depth must be [B,1,H,W] = [{b},1,H,W]; got {got}")
        if self.needs_seg and (seg is None or seg.ndim != 4 or seg.shape[:2] != (b, self.config.seg_channels)):
            got = "none" if seg is None else tuple(seg.shape)
            raise ValueError(f"this adapter uses SAM features: seg must be [B,{self.config.seg_channels},64,64] with "
                             f"B={b}; got {got}")
        if flow is None or flow.ndim != 5 or flow.shape[0] != b or flow.shape[2] != 2:
            got = "none" if flow is None else tuple(flow.shape)
            raise ValueError(f"flow must be [B,T-1,2,H,W] with B={b}; got {got}")

        rgb, dep = self.encode_dsi(image, depth, seg)
        return self.fuse_conditions(rgb, dep, flow)

    @apply_forward_hook
    def encode_dsi(self, image: torch.Tensor, depth: torch.Tensor | None = None, seg: torch.Tensor | None = None
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Dual Semantic Injector alone: frame-0 RGB and depth features at every scale ([B, C_s, h_s, w_s] each).

        Same inputs as :meth:`encode_conditions` minus the flow; depth is resized to the image if needed.
        The depth features are None when the adapter has no depth branch.
        """
        h, w = image.shape[-2:]
        dtype = self.dtype
        seg = seg.to(dtype) if self.needs_seg else None
        rgb = self.rgb_encoder(self.rgb_processor(image.to(dtype), seg))
        if not self.needs_depth:
            return rgb, None
        if depth.shape[-2:] != (h, w):
            depth = F.interpolate(depth.float(), size=(h, w), mode="bilinear", align_corners=False)
        dep = self.depth_encoder(self.depth_processor(depth.to(dtype), seg))
        return rgb, dep

    @apply_forward_hook
    def fuse_conditions(self, rgb: Sequence[torch.Tensor], dep: Sequence[torch.Tensor] | None, flow: torch.Tensor
                        ) -> list[torch.Tensor]:
        """Decoupled Flow Mapper + Multi-Scale Fusion: warp both DSI streams by ``flow`` [B, T-1, 2, H, W]
        (resized per scale, any size) and fuse them into the per-scale conditions [B, T, C_s, h_s, w_s]."""
        warp = (self.config.flow_resize, self.config.get("splat_normalize", "clamp"))
        rgb = warp_scales(rgb, flow, *warp)
        if self.config.fusion_type == "rgb":
            return rgb
        dep = warp_scales(dep, flow, *warp)
        if self.config.fusion_type == "sum":
            return [r + d for r, d in zip(rgb, dep)]
        return [fuse(r, d) for fuse, r, d in zip(self.fusion, rgb, dep)]

    # ------------------------------------------------------------------ trunk
    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        conditions: Sequence[torch.Tensor],
        conditioning_scale: float = 1.0,
        time_embeds: torch.Tensor | None = None,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """One trunk pass. Returns (down residuals, one per UNet skip, [B*T, C, h, w]; mid residual).

        ``time_embeds`` may replace ``added_time_ids`` (pass None) with the ids already projected to
        sinusoids [B, 768], as ComfyUI's SVD model hands them over (``y``).

        ``conditions`` comes from :meth:`encode_conditions`; its batch may be the sample batch or a
        divisor of it (e.g. computed once and shared by both classifier-free-guidance halves). Each
        residual is meant to be added once (:func:`surgsora.model.unet.unet_forward`); under MOFA
        semantics it already carries the multiplicity MOFA's UNet applies.
        """
        batch_size, num_frames = sample.shape[:2]
        conds = [self._match_condition(c, batch_size, num_frames) for c in conditions]
        if len(conds) != len(self.scale_channels):
            raise ValueError(f"expected {len(self.scale_channels)} condition scales, got {len(conds)}")
        mofa_injection = self.config.condition_injection == "mofa"

        emb = time_embedding(self, sample, timestep, added_time_ids, time_embeds)
        sample = sample.flatten(0, 1)
        emb = emb.repeat_interleave(num_frames, dim=0)
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0)
        image_only_indicator = torch.zeros(batch_size, num_frames, dtype=sample.dtype, device=sample.device)

        sample = self.conv_in(sample) + conds[0]
        skips = (sample,)
        for i, block in enumerate(self.down_blocks):
            kwargs = dict(hidden_states=sample, temb=emb, image_only_indicator=image_only_indicator)
            if getattr(block, "has_cross_attention", False):
                kwargs["encoder_hidden_states"] = encoder_hidden_states
            sample, res = block(**kwargs)
            skips += res
            if i + 1 < len(conds):  # the trunk just reached scale i+1
                sample = sample + conds[i + 1]
            elif mofa_injection:  # MOFA keeps adding its deepest feature after every later block
                sample = sample + conds[-1]
        if mofa_injection:  # ... and once more before the mid block
            sample = sample + conds[-1]
        sample = self.mid_block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
                                image_only_indicator=image_only_indicator)

        down = tuple(zc(s) * (conditioning_scale * m)
                     for zc, s, m in zip(self.controlnet_down_blocks, skips, self.residual_counts))
        mid = self.controlnet_mid_block(sample) * conditioning_scale
        return down, mid

    def residual_elements(self, latent_height: int, latent_width: int) -> int:
        """Elements of all residuals (every skip + mid) for one latent frame of this size: what the trunk
        hands the UNet and what stays alive through its pass."""
        n = len(self.config.down_block_types)
        layers = per_block(self.config.layers_per_block, n)
        h, w, total = latent_height, latent_width, self.config.block_out_channels[0] * latent_height * latent_width
        for i, c in enumerate(self.config.block_out_channels):
            total += layers[i] * c * h * w
            if i < n - 1:
                h, w = (h + 1) // 2, (w + 1) // 2
                total += c * h * w
        return total + self.config.block_out_channels[-1] * h * w

    def _match_condition(self, cond: torch.Tensor, batch_size: int, num_frames: int) -> torch.Tensor:
        if cond.ndim != 5 or cond.shape[1] != num_frames:
            raise ValueError(
                f"condition has shape {tuple(cond.shape)} but the latent has {num_frames} frames: "
                "compute the conditions with a flow of num_frames - 1 steps"
            )
        if cond.shape[0] != batch_size:
            if batch_size % cond.shape[0]:
                raise ValueError(f"condition batch {cond.shape[0]} does not divide the latent batch {batch_size}")
            cond = cond.repeat(batch_size // cond.shape[0], 1, 1, 1, 1)
        return cond.flatten(0, 1).to(self.dtype)
