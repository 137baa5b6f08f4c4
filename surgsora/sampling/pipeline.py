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
  :meth:`denoise`, :meth:`decode`) so ComfyUI nodes can run and cache them separately;
* ``callback(step, total, latents)`` is called after every step; raise from it to cancel.

``added_time_ids = [fps - 1, motion_bucket_id, noise_aug_strength]`` and RGB enters the VAE and the
adapter in [-1, 1], exactly as in training (``train/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    StableVideoDiffusionPipeline,
    _resize_with_antialiasing,
    retrieve_timesteps,
)
from diffusers.utils.torch_utils import randn_tensor

from ..model.adapter import SurgSoraAdapter
from ..model.unet import unet_forward

__all__ = ["SurgSoraPipeline", "FirstFrame", "to_image_tensor"]


@dataclass
class FirstFrame:
    """What the sampler needs from the first frame: CLIP embedding [B,1,D] and VAE latent [B,4,h,w]."""

    image_embeddings: torch.Tensor
    image_latents: torch.Tensor
    noise_aug_strength: float


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


class SurgSoraPipeline(StableVideoDiffusionPipeline):
    model_cpu_offload_seq = "image_encoder->adapter->unet->vae"

    def __init__(self, vae, image_encoder, unet, scheduler, feature_extractor, adapter: SurgSoraAdapter):
        super().__init__(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                         feature_extractor=feature_extractor)
        self.register_modules(adapter=adapter)

    # ------------------------------------------------------------------ first frame
    def _pixels(self, image: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Images [B,3,H,W] in [0,1] -> [-1,1] at (height, width) on the execution device (antialiased resize)."""
        image = image.to(self._execution_device)
        if image.shape[-2:] != (height, width):
            down = height < image.shape[-2] or width < image.shape[-1]
            image = torch.nn.functional.interpolate(image, size=(height, width), mode="bilinear",
                                                    align_corners=False, antialias=down).clamp(0, 1)
        return image * 2.0 - 1.0

    @torch.no_grad()
    def encode_clip_image(self, image: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding [B, 1, D] of images [B, 3, H, W] in [0, 1], resized (antialiased) here."""
        device = self._execution_device
        dtype = self.image_encoder.dtype
        size = self.image_encoder.config.image_size
        x = image.to(dtype=torch.float32).cpu() * 2.0 - 1.0
        # Normalise to [-1,1] before resizing, then back: what diffusers and SVD's reference code do.
        x = (_resize_with_antialiasing(x, (size, size)) + 1.0) / 2.0
        # CLIP mean/std through the processor itself, so the numbers match diffusers bit for bit.
        x = self.feature_extractor(images=x, do_normalize=True, do_center_crop=False, do_resize=False,
                                   do_rescale=False, return_tensors="pt").pixel_values.to(device)
        return self.image_encoder(x.to(dtype)).image_embeds.unsqueeze(1)

    @torch.no_grad()
    def encode_conditioning_latent(self, pixels: torch.Tensor, noise_aug_strength: float | torch.Tensor,
                                   generator: torch.Generator | None = None) -> torch.Tensor:
        """VAE latent (distribution mode, unscaled) of ``pixels`` [B,3,H,W] in [-1,1] after adding
        ``noise_aug_strength`` (a float or one value per image) times Gaussian noise: SVD's frame-0 condition.

        Training uses this same function, so the condition is built identically in both.
        """
        noise = randn_tensor(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
        strength = torch.as_tensor(noise_aug_strength, dtype=pixels.dtype, device=pixels.device)
        pixels = pixels + (strength.view(-1, 1, 1, 1) if strength.ndim else strength) * noise
        needs_upcasting = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if needs_upcasting:
            self.vae.to(dtype=torch.float32)
        latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()
        if needs_upcasting:
            self.vae.to(dtype=torch.float16)
        return latents

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

    # ------------------------------------------------------------------ condition branch
    @torch.no_grad()
    def prepare_conditions(self, image, depth: torch.Tensor, seg_features: torch.Tensor, flow: torch.Tensor,
                           height: int | None = None, width: int | None = None) -> list[torch.Tensor]:
        """The adapter's fused conditions for one video (DSI + DFM + MSF): run once, reuse every step."""
        image = to_image_tensor(image)
        height = height or image.shape[-2]
        width = width or image.shape[-1]
        device = self._execution_device
        pixels = self._pixels(image, height, width)
        return self.adapter.encode_conditions(pixels, depth.to(device), seg_features.to(device), flow.to(device))

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
        fps: int = 7,
        motion_bucket_id: int = 127,
        conditioning_scale: float = 1.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        sigmas: list[float] | None = None,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """The EDM denoising loop; returns latents [B, T, 4, h, w] (not yet divided by the VAE scale)."""
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {num_frames}")
        device = self._execution_device
        embeddings = first_frame.image_embeddings.to(device)
        image_latents = first_frame.image_latents.to(device)
        batch_size = embeddings.shape[0]
        do_cfg = max_guidance_scale > 1
        use_adapter = conditions is not None and conditioning_scale != 0

        if do_cfg:
            embeddings = torch.cat([torch.zeros_like(embeddings), embeddings])
            image_latents = torch.cat([torch.zeros_like(image_latents), image_latents])
        image_latents = image_latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
        time_ids = torch.tensor([[fps - 1, motion_bucket_id, first_frame.noise_aug_strength]], dtype=embeddings.dtype)
        time_ids = time_ids.repeat(embeddings.shape[0], 1).to(device)
        if use_adapter:
            # One copy per CFG half, made once here, not per step.
            conditions = [torch.cat([c] * 2) if do_cfg else c for c in conditions]

        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, None, sigmas)
        height, width = image_latents.shape[-2] * self.vae_scale_factor, image_latents.shape[-1] * self.vae_scale_factor
        latents = self.prepare_latents(batch_size, num_frames, self.unet.config.in_channels, height, width,
                                       embeddings.dtype, device, generator, latents)

        guidance = torch.linspace(min_guidance_scale, max_guidance_scale, num_frames).unsqueeze(0)
        guidance = guidance.to(device, latents.dtype).repeat(batch_size, 1).view(batch_size, num_frames, 1, 1, 1)

        for i, t in enumerate(timesteps):
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
            if callback is not None:
                callback(i + 1, len(timesteps), latents)
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        """Latents [B, T, 4, h, w] -> frames [B, T, 3, H, W] in [0, 1], ``decode_chunk_size`` frames at a time."""
        num_frames = latents.shape[1]
        frames = self.decode_latents(latents, num_frames, decode_chunk_size or num_frames)  # [B,C,T,H,W] [-1,1]
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
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        conditioning_scale: float = 1.0,
        decode_chunk_size: int | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ):
        """Generate a video [B, T, 3, H, W] in [0, 1] (``output_type="pt"``) or latents (``"latent"``).

        Give either ``flow`` [B, T-1, 2, H, W] with ``depth`` [B,1,H,W] and ``seg_features``
        [B,256,64,64], or precomputed ``conditions`` from :meth:`prepare_conditions`.
        """
        if output_type not in ("pt", "latent", "np"):
            raise ValueError(f"output_type must be 'pt', 'np' or 'latent', got {output_type!r}")
        if conditions is None:
            if flow is None or depth is None or seg_features is None:
                raise ValueError("give flow, depth and seg_features (or precomputed conditions)")
            num_frames = num_frames or flow.shape[1] + 1
            if flow.shape[1] != num_frames - 1:
                raise ValueError(f"flow has {flow.shape[1]} steps but num_frames={num_frames} needs {num_frames - 1}")
        else:
            num_frames = num_frames or conditions[0].shape[1]

        first = self.encode_first_frame(image, height, width, noise_aug_strength, generator)
        if conditions is None and conditioning_scale != 0:
            conditions = self.prepare_conditions(image, depth, seg_features, flow, height, width)
        latents = self.denoise(first, conditions, num_frames, num_inference_steps, min_guidance_scale,
                               max_guidance_scale, fps, motion_bucket_id, conditioning_scale, generator, latents,
                               callback=callback)
        self.maybe_free_model_hooks()
        if output_type == "latent":
            return latents
        frames = self.decode(latents, decode_chunk_size)
        return frames.cpu().numpy() if output_type == "np" else frames
