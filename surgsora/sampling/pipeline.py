"""SurgSoraPipeline: Stable Video Diffusion image-to-video, steered by the SurgSora adapter.

Semantics are those of diffusers' ``StableVideoDiffusionPipeline`` (CLIP image embedding of the first
frame, VAE latent of the noise-augmented first frame concatenated to every noisy frame latent, EDM
Euler sampling, a per-frame guidance scale ramping linearly from ``min_guidance_scale`` to
``max_guidance_scale``, chunked VAE decoding) with these differences:

* the adapter's condition branch (DSI + DFM + MSF) runs **once per call**, before the denoising loop,
  and the same conditions serve both classifier-free-guidance halves; only the adapter trunk runs
  every step;
* the CLIP input is always resized to the encoder's resolution here (diffusers skips that resize
  when handed a tensor, and ComfyUI IMAGEs are tensors);
* the sampling loop is exposed in pieces (:meth:`encode_first_frame`, :meth:`prepare_conditions`,
  :meth:`denoise`, :meth:`decode`) so ComfyUI nodes can run and cache them separately; they are composed
  once, with the settings' rules, in :mod:`surgsora.sampling.generate` (``__call__`` stays diffusers-style);
* SVD's image conditioning (time ids, CLIP input, noise augmentation) is :mod:`.conditioning`'s, shared
  with ComfyUI's own SVD path;
* the temporal VAE decoder runs on chunks cut along time per video (a chunk is decoded as a short video);
* ``callback(step, total, latents)`` is called after every step; raise from it to cancel;
* ``adapter=None`` is plain SVD, and the adapter's saved config carries the conventions it was trained
  under: its default fps, and for MOFA-Video-Traj (:meth:`SurgSoraAdapter.from_mofa`) the released
  pipeline's fixed ``added_time_ids`` [6, 128, 0.02] and its CLIP input without mean/std normalisation
  (reproduced on purpose, so that MOFA's weights see what they saw when published).

``added_time_ids = [fps - 1, motion_bucket_id, noise_aug_strength]`` and RGB enters the VAE and the
adapter in [-1, 1], exactly as in training (``train/``).

**Dual-clock sampling** (training-free motion control after Time-to-Move, ``motion_signal`` /
``motion_mask``, any adapter or none): the crude warped animation's latents, noised to the level of step
``t_weak_index``, are where sampling starts; after every step until ``t_strong_index`` the latents inside
the mask are replaced by the animation's latents noised to the next step's level (the same noise draw
each time, from the call's generator), and from ``t_strong_index`` on the model denoises freely. As in
TTM's SVD pipeline: every frame is anchored where its mask is on, the mask is thresholded at 0.5 and
brought to the latent grid by nearest sampling, CFG is unchanged, the re-anchoring noise is drawn after
the initial latents, and ``t_strong_index`` may equal the number of steps (the last step then ends on
the animation's clean latents inside the mask). Deliberate difference: the animation is encoded with the
VAE posterior mean, not a sample, so a seed fixes the whole video and the anchor has no encoder noise.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    StableVideoDiffusionPipeline,
    retrieve_timesteps,
)

from diffusers.utils.torch_utils import randn_tensor

from ..loading.adapters import check_adapter_fits
from ..model.adapter import SurgSoraAdapter
from ..model.unet import unet_forward
from .conditioning import clip_normalize, clip_pixels, noise_augmented, time_ids
from .dual_clock import check_unit_range, latent_mask, resize_frames
from .settings import check_settings

__all__ = ["SurgSoraPipeline", "FirstFrame", "MotionAnchor", "to_image_tensor", "check_motion_signal",
           "check_anchor_steps"]


@dataclass
class FirstFrame:
    """What the sampler needs from the first frame: CLIP embedding [B,1,D] and VAE latent [B,4,h,w]."""

    image_embeddings: torch.Tensor
    image_latents: torch.Tensor
    noise_aug_strength: float


@dataclass
class MotionAnchor:
    """Dual-clock anchor: the motion signal's latents [B, T, 4, h, w] (scaled like the denoising latents),
    the latent-size mask [B, T, 1, h, w] in {0, 1}, and the step indices of t_weak and t_strong."""

    latents: torch.Tensor
    mask: torch.Tensor
    t_weak_index: int
    t_strong_index: int


def to_image_tensor(image) -> torch.Tensor:
    """PIL image(s), a numpy HWC array or a tensor [B,3,H,W]/[3,H,W] in [0, 1] -> float [B,3,H,W] in [0, 1]."""
    if isinstance(image, PIL.Image.Image):
        image = [image]
    if isinstance(image, list) and image and isinstance(image[0], PIL.Image.Image):
        arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in image]
        # Same (channels-last) memory layout as diffusers' numpy_to_pt: keeps the VAE bit-identical.
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if isinstance(image, np.ndarray):
        arr = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        image = torch.from_numpy(arr[None] if arr.ndim == 3 else arr).permute(0, 3, 1, 2)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a PIL image, a numpy array or a torch tensor; got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image tensor must be [B,3,H,W] RGB in [0,1]; got shape {tuple(image.shape)}")
    if image.shape[0] == 0:
        raise ValueError("image batch is empty")
    image = image.float()
    if image.min() < -1e-3 or image.max() > 1 + 1e-3:
        raise ValueError(
            f"image values must be in [0,1] (got {image.min().item():.3f}..{image.max().item():.3f}); "
            "convert [-1,1] tensors with (x + 1) / 2 first"
        )
    return image


def _to(x: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if x is None else x.to(device)


def check_motion_signal(motion_signal: torch.Tensor, motion_mask: torch.Tensor) -> None:
    """One sentence unless ``motion_signal`` is [B, T, 3, H, W] and ``motion_mask`` [B, T, 1, H, W] of the same B,
    T, H and W, both finite and in [0, 1]."""
    if not torch.is_tensor(motion_signal) or motion_signal.ndim != 5 or motion_signal.shape[2] != 3:
        got = tuple(motion_signal.shape) if torch.is_tensor(motion_signal) else type(motion_signal).__name__
        raise ValueError(f"motion_signal must be [B, T, 3, H, W] in [0, 1]; got {got}")
    b, frames = motion_signal.shape[:2]
    if not torch.is_tensor(motion_mask) or motion_mask.ndim != 5 or motion_mask.shape[:3] != (b, frames, 1):
        got = tuple(motion_mask.shape) if torch.is_tensor(motion_mask) else type(motion_mask).__name__
        raise ValueError(f"motion_mask must be [B, T, 1, H, W] = [{b}, {frames}, 1, H, W] to match motion_signal "
                         f"{tuple(motion_signal.shape)}; got {got}")
    if motion_mask.shape[-2:] != motion_signal.shape[-2:]:
        raise ValueError(f"motion_mask is {tuple(motion_mask.shape[-2:])} (H, W) but motion_signal is "
                         f"{tuple(motion_signal.shape[-2:])}: give both at the same size")
    for name, x in (("motion_signal", motion_signal), ("motion_mask", motion_mask)):
        check_unit_range(name, x)


def check_anchor_steps(t_weak_index: int, t_strong_index: int, steps: int) -> None:
    """The dual-clock step indices must satisfy 0 <= t_weak_index < t_strong_index <= steps (TTM lets t_strong
    reach the last step: the video then ends on the signal's clean latents inside the mask)."""
    if not 0 <= t_weak_index < t_strong_index <= steps:
        raise ValueError(f"need 0 <= t_weak_index < t_strong_index <= steps ({steps}); got {t_weak_index} and "
                         f"{t_strong_index}")


class SurgSoraPipeline(StableVideoDiffusionPipeline):
    # enable_model_cpu_offload: one model on the GPU at a time in this order; the adapter is hooked outside the
    # chain (diffusers does so for every other component), so it is not sent back to the CPU by the UNet every step
    model_cpu_offload_seq = "image_encoder->unet->vae"

    _optional_components = ["adapter"]

    # (diffusers reads the annotation to load the component: a plain class, not a Union)
    def __init__(self, vae, image_encoder, unet, scheduler, feature_extractor, adapter: SurgSoraAdapter = None):
        super().__init__(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                         feature_extractor=feature_extractor)
        self.register_modules(adapter=adapter)
        check_adapter_fits(adapter, unet)

    # ------------------------------------------------------------------ the adapter's conventions
    @property
    def adapter_config(self):
        """The adapter's config (its conventions: training fps, MOFA's fixed ids and CLIP input), None without one."""
        adapter = getattr(self, "adapter", None)
        return None if adapter is None else adapter.config

    def time_ids(self, fps: float | None, motion_bucket_id: int, noise_aug_strength: float) -> list[float]:
        """``added_time_ids`` for one video under this pipeline's adapter: see :func:`.conditioning.time_ids`."""
        return time_ids(self.adapter_config, fps, motion_bucket_id, noise_aug_strength)

    # ------------------------------------------------------------------ first frame
    def _pixels(self, image: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Images [B,3,H,W] in [0,1] -> [-1,1] at (height, width) on the execution device (antialiased resize)."""
        return resize_frames(image.to(self._execution_device), height, width) * 2.0 - 1.0

    @torch.no_grad()
    def encode_clip_image(self, image: torch.Tensor, normalize: bool | None = None) -> torch.Tensor:
        """CLIP image embedding [B, 1, D] of images [B, 3, H, W] in [0, 1], resized (antialiased) here.

        ``normalize`` (default: the adapter's ``clip_normalize``, else True) applies CLIP's mean/std;
        MOFA-Video's released pipeline feeds the resized [0, 1] image without it.
        """
        if normalize is None:
            normalize = clip_normalize(self.adapter_config)
        fe = self.feature_extractor
        x = clip_pixels(image, self.image_encoder.config.image_size, fe.image_mean if normalize else None,
                        fe.image_std if normalize else None)
        return self.image_encoder(x.to(self._execution_device, self.image_encoder.dtype)).image_embeds.unsqueeze(1)

    @torch.no_grad()
    def encode_conditioning_latent(self, pixels: torch.Tensor, noise_aug_strength: float | torch.Tensor,
                                   generator: torch.Generator | None = None) -> torch.Tensor:
        """VAE latent (distribution mode, unscaled) of ``pixels`` [B,3,H,W] in [-1,1] after adding
        ``noise_aug_strength`` (a float or one value per image) times Gaussian noise: SVD's frame-0 condition.

        Training uses this same function, so the condition is built identically in both.
        """
        noise = randn_tensor(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
        pixels = noise_augmented(pixels, noise_aug_strength, noise)
        with self.vae_upcast() as dtype:
            return self.vae.encode(pixels.to(dtype)).latent_dist.mode()

    @contextlib.contextmanager
    def vae_upcast(self):
        """diffusers' VAE rule: an fp16 VAE whose config sets ``force_upcast`` (SVD's does) runs in fp32 inside this
        block, since its activations overflow fp16, and goes back to fp16 after (the weights stay small in memory);
        bf16 has fp32's range and runs as it is. Yields the dtype the VAE computes in."""
        vae = self.vae
        upcast = vae.dtype == torch.float16 and bool(vae.config.get("force_upcast", False))
        if upcast:  # (torch's Module.to: diffusers' ModelMixin.to logs a warning on every dtype cast)
            torch.nn.Module.to(vae, dtype=torch.float32)
        try:
            yield torch.float32 if upcast else vae.dtype
        finally:
            if upcast:
                torch.nn.Module.to(vae, dtype=torch.float16)

    @torch.no_grad()
    def encode_first_frame(self, image, height: int | None = None, width: int | None = None,
                           noise_aug_strength: float = 0.02, generator: torch.Generator | None = None) -> FirstFrame:
        """CLIP embedding and noise-augmented VAE latent of the first frame (consumes ``generator`` once)."""
        image = to_image_tensor(image)
        height = height or image.shape[-2]
        width = width or image.shape[-1]
        self.check_inputs(image, height, width)
        image_embeddings = self.encode_clip_image(image)

        latents = self.encode_conditioning_latent(self._pixels(image, height, width), noise_aug_strength, generator)
        return FirstFrame(image_embeddings, latents.to(image_embeddings.dtype), noise_aug_strength)

    @torch.no_grad()
    def encode_motion_signal(self, motion_signal: torch.Tensor, motion_mask: torch.Tensor, t_weak_index: int,
                             t_strong_index: int, height: int | None = None, width: int | None = None,
                             chunk_size: int | None = None) -> MotionAnchor:
        """The dual-clock anchor of a crude animation ``motion_signal`` [B, T, 3, H, W] in [0, 1] and the
        region it controls ``motion_mask`` [B, T, 1, H, W] in [0, 1] (thresholded at 0.5).

        The signal is resized to (height, width) if needed and encoded frame by frame (``chunk_size`` at a
        time) with the VAE posterior mean; the mask goes to the latent grid by nearest sampling. The step indices
        are checked against the schedule by :meth:`denoise`, which knows its length.
        """
        check_motion_signal(motion_signal, motion_mask)
        b, frames = motion_signal.shape[:2]
        height = height or motion_signal.shape[-2]
        width = width or motion_signal.shape[-1]
        pixels = self._pixels(motion_signal.flatten(0, 1).float(), height, width)
        chunk = chunk_size or pixels.shape[0]
        with self.vae_upcast() as dtype:
            latents = torch.cat([self.vae.encode(pixels[i:i + chunk].to(dtype)).latent_dist.mode()
                                 for i in range(0, pixels.shape[0], chunk)])
        latents = (latents * self.vae.config.scaling_factor).unflatten(0, (b, frames))
        mask = latent_mask(motion_mask.flatten(0, 1).to(latents.device), latents.shape[-2:]).unflatten(0, (b, frames))
        return MotionAnchor(latents, mask, int(t_weak_index), int(t_strong_index))

    # ------------------------------------------------------------------ condition branch
    @torch.no_grad()
    def prepare_conditions(self, image, depth: torch.Tensor | None, seg_features: torch.Tensor | None,
                           flow: torch.Tensor, height: int | None = None, width: int | None = None
                           ) -> list[torch.Tensor]:
        """The adapter's fused conditions for one video (DSI + DFM + MSF): run once, reuse every step.

        ``depth`` and ``seg_features`` may be None for an adapter without them (MOFA mode, ablations).
        """
        if self.adapter is None:
            raise ValueError("this pipeline has no adapter: conditions need a SurgSora or MOFA adapter")
        image = to_image_tensor(image)
        height = height or image.shape[-2]
        width = width or image.shape[-1]
        device = self._execution_device
        pixels = self._pixels(image, height, width)
        return self.adapter.encode_conditions(pixels, _to(depth, device), _to(seg_features, device), _to(flow, device))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def denoise(
        self,
        first_frame: FirstFrame,
        conditions: Sequence[torch.Tensor] | None,
        num_frames: int,
        num_inference_steps: int = 25,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        fps: int | None = None,
        motion_bucket_id: int = 127,
        conditioning_scale: float = 1.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        sigmas: list[float] | None = None,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        anchor: MotionAnchor | None = None,
    ) -> torch.Tensor:
        """The EDM denoising loop; returns latents [B, T, 4, h, w] (not yet divided by the VAE scale).

        ``fps`` None is the adapter's training fps (7 without an adapter); see :meth:`time_ids`.
        ``anchor`` (from :meth:`encode_motion_signal`) turns on dual-clock sampling.
        """
        check_settings({"steps": "num_inference_steps", "frames": "num_frames"}, steps=num_inference_steps,
                       frames=num_frames)
        device = self._execution_device
        embeddings = first_frame.image_embeddings.to(device)
        image_latents = first_frame.image_latents.to(device)
        batch_size = embeddings.shape[0]
        do_cfg = max_guidance_scale > 1
        use_adapter = conditions is not None and conditioning_scale != 0
        if use_adapter and self.adapter is None:
            raise ValueError("conditions were given but this pipeline has no adapter")

        if do_cfg:
            embeddings = torch.cat([torch.zeros_like(embeddings), embeddings])
            image_latents = torch.cat([torch.zeros_like(image_latents), image_latents])
        image_latents = image_latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
        time_ids = torch.tensor([self.time_ids(fps, motion_bucket_id, first_frame.noise_aug_strength)],
                                dtype=embeddings.dtype)
        time_ids = time_ids.repeat(embeddings.shape[0], 1).to(device)
        if use_adapter:
            # One copy per CFG half, made once here, not per step.
            conditions = [torch.cat([c] * 2) if do_cfg else c for c in conditions]

        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, None, sigmas)
        height, width = image_latents.shape[-2] * self.vae_scale_factor, image_latents.shape[-1] * self.vae_scale_factor
        latents = self.prepare_latents(batch_size, num_frames, self.unet.config.in_channels, height, width,
                                       embeddings.dtype, device, generator, latents)
        start = 0
        if anchor is not None:
            ref, mask, fixed_noise = self._check_anchor(anchor, latents, len(timesteps), generator)
            start = anchor.t_weak_index
            latents = self.scheduler.add_noise(ref, fixed_noise, timesteps[start:start + 1])

        guidance = torch.linspace(min_guidance_scale, max_guidance_scale, num_frames).unsqueeze(0)
        guidance = guidance.to(device, latents.dtype).repeat(batch_size, 1).view(batch_size, num_frames, 1, 1, 1)

        for i, t in enumerate(timesteps[start:], start):
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            model_input = torch.cat([model_input, image_latents], dim=2)
            down = mid = None
            if use_adapter:
                down, mid = self.adapter(model_input, t, embeddings, time_ids, conditions,
                                         conditioning_scale=conditioning_scale)
            noise_pred = unet_forward(self.unet, model_input, t, embeddings, time_ids, down, mid)
            if do_cfg:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance * (cond - uncond)
            latents = self.scheduler.step(noise_pred, t, latents).prev_sample
            if anchor is not None and i < anchor.t_strong_index:  # re-anchor inside the mask
                target = (self.scheduler.add_noise(ref, fixed_noise, timesteps[i + 1:i + 2])
                          if i + 1 < len(timesteps) else ref)
                latents = latents * (1 - mask) + target.to(latents.dtype) * mask
            if callback is not None:
                callback(i + 1 - start, len(timesteps) - start, latents)
        return latents

    def _check_anchor(self, anchor: MotionAnchor, latents: torch.Tensor, steps: int, generator):
        """The anchor's latents and mask on the latents' device, and the one noise draw used to re-noise it."""
        if anchor.latents.shape != latents.shape:
            raise ValueError(f"the motion signal's latents are {tuple(anchor.latents.shape)} but the video's are "
                             f"{tuple(latents.shape)} ([B, T, 4, H/8, W/8]): give a signal with the video's frame "
                             "count and size")
        check_anchor_steps(anchor.t_weak_index, anchor.t_strong_index, steps)
        ref = anchor.latents.to(latents.device, latents.dtype)
        mask = anchor.mask.to(latents.device, latents.dtype)
        # drawn after the initial latents, as in TTM; the same draw re-noises the anchor at every level
        fixed_noise = randn_tensor(ref.shape, generator=generator, device=ref.device, dtype=ref.dtype)
        return ref, mask, fixed_noise

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        """Latents [B, T, 4, h, w] -> frames [B, T, 3, H, W] in [0, 1], ``decode_chunk_size`` frames at a time
        (default: all). SVD's decoder is temporal (it mixes neighbouring frames), so each chunk is decoded as a
        short video of its own: a larger chunk is smoother across chunk borders, a smaller one needs less memory.
        """
        num_frames = latents.shape[1]
        chunk = decode_chunk_size or num_frames
        # Chunks are cut along time per video: diffusers' decode_latents chunks the flattened B*T frames, so with
        # B > 1 one chunk could hold the end of one video and the start of the next. An fp16 VAE decodes in fp32
        # (vae_upcast: diffusers' force_upcast rule; its decoder overflows fp16); frames come back as float32.
        with self.vae_upcast() as dtype:
            frames = torch.cat([self.decode_latents(latents[:, i:i + chunk].to(dtype), latents[:, i:i + chunk].shape[1],
                                                    latents[:, i:i + chunk].shape[1])
                                for i in range(0, num_frames, chunk)], dim=2)  # [B, C, T, H, W] in [-1, 1]
        return (frames.permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1)

    # ------------------------------------------------------------------ all in one
    @torch.no_grad()
    def __call__(
        self,
        image,
        flow: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        seg_features: torch.Tensor | None = None,
        conditions: Sequence[torch.Tensor] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int = 25,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        fps: int | None = None,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        conditioning_scale: float = 1.0,
        decode_chunk_size: int | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        motion_signal: torch.Tensor | None = None,
        motion_mask: torch.Tensor | None = None,
        t_weak_index: int | None = None,
        t_strong_index: int | None = None,
    ):
        """Generate a video [B, T, 3, H, W] in [0, 1] (``output_type="pt"``) or latents (``"latent"``).

        ``motion_signal`` [B, T, 3, H, W] in [0, 1] with ``motion_mask`` [B, T, 1, H, W] in [0, 1] and
        ``t_weak_index`` < ``t_strong_index`` <= ``num_inference_steps`` turn on dual-clock sampling (see the
        module docstring); ``motion_signal=None`` is the plain sampler.

        Give either ``flow`` [B, T-1, 2, H, W] (with ``depth`` [B,1,H,W] and ``seg_features``
        [B,256,64,64] when the adapter uses them), or precomputed ``conditions`` from
        :meth:`prepare_conditions`. Without an adapter this is plain SVD (``num_frames`` default: the UNet's).
        """
        if output_type not in ("pt", "latent", "np"):
            raise ValueError(f"output_type must be 'pt', 'np' or 'latent', got {output_type!r}")
        if motion_signal is not None:
            if motion_mask is None or t_weak_index is None or t_strong_index is None:
                raise ValueError("dual-clock sampling needs motion_signal, motion_mask, t_weak_index and t_strong_index")
            check_anchor_steps(t_weak_index, t_strong_index, num_inference_steps)  # before any compute
            signal_frames = motion_signal.shape[1] if motion_signal.ndim == 5 else None
            if num_frames and signal_frames and num_frames != signal_frames:
                raise ValueError(f"motion_signal has {signal_frames} frames but num_frames is {num_frames}")
            num_frames = num_frames or signal_frames
        if self.adapter is None:
            num_frames = num_frames or self.unet.config.num_frames
        elif conditions is None:
            missing = [name for name, value, needed in (
                ("flow", flow, True), ("depth", depth, self.adapter.needs_depth),
                ("seg_features", seg_features, self.adapter.needs_seg)) if needed and value is None]
            if missing:
                names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
                raise ValueError(f"this adapter needs {names} (or precomputed conditions)")
            num_frames = num_frames or flow.shape[1] + 1
            if flow.shape[1] != num_frames - 1:
                raise ValueError(f"flow has {flow.shape[1]} steps but num_frames={num_frames} needs {num_frames - 1}")
        else:
            num_frames = num_frames or conditions[0].shape[1]

        first = self.encode_first_frame(image, height, width, noise_aug_strength, generator)
        anchor = None
        if motion_signal is not None:
            h, w = first.image_latents.shape[-2:]
            anchor = self.encode_motion_signal(motion_signal, motion_mask, t_weak_index, t_strong_index,
                                               h * self.vae_scale_factor, w * self.vae_scale_factor, decode_chunk_size)
        if self.adapter is not None and conditions is None and conditioning_scale != 0:
            conditions = self.prepare_conditions(image, depth, seg_features, flow, height, width)
        latents = self.denoise(first, conditions, num_frames, num_inference_steps, min_guidance_scale,
                               max_guidance_scale, fps, motion_bucket_id, conditioning_scale, generator, latents,
                               callback=callback, anchor=anchor)
        self.maybe_free_model_hooks()
        if output_type == "latent":
            return latents
        frames = self.decode(latents, decode_chunk_size)
        return frames.cpu().numpy() if output_type == "np" else frames
