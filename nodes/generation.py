"""Generation nodes: SurgSora adapter, DSI encode, DFM warp + MSF fuse, SVD loader, sampler, decoder.

The adapter's condition branch is split in two nodes so that ComfyUI's output cache does the work:
``DSI Encode`` (frame, depth, SAM features -> multi-scale RGB/depth features of frame 0) reruns only
when the frame or the perception changes, ``DFM + MSF`` (warp those features by the flow of every
frame, fuse per scale) only when the trajectories change, and the sampler, whose widgets users tweak
most, reuses both. The sampler returns a standard ``LATENT`` in ComfyUI's convention (VAE latents
divided by the scaling factor, frames as the batch, ``[B*T, 4, H/8, W/8]``) plus the frame count under
``surgsora_frames``; the decoder returns an ``IMAGE`` batch that core video nodes and VideoHelperSuite
take. Cancel stops the sampler within one denoising step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgsora.motion.splat import resize_flow
from surgsora.sampling.dual_clock import dual_clock_indices
from surgsora.sampling.settings import (MAX_FPS, MAX_FRAMES, MAX_MOTION_BUCKET, MAX_SEED, MAX_STEPS, RANDOM_SEED,
                                        TTM_T_STRONG, TTM_T_WEAK, SamplingSettings, check_settings, check_video_size)

from .models import download_widget, model_widget, resolve_model, validate_choice
from .runtime import (CATEGORY, PRECISION_TOOLTIP, PRECISIONS, Progress, check_interrupted, image_to_bchw,
                      latent_previewer, offload_device, on_device, queue_problem, resolve_dtype, torch_device,
                      video_to_image)
from .perception import SEG_TYPE
from .trajectory import FLOW_TYPE, _check_flow, depth_for

ADAPTER_TYPE = "SURGSORA_ADAPTER"
DSI_TYPE = "SURGSORA_DSI_FEATURES"
CONDITIONS_TYPE = "SURGSORA_CONDITIONS"
SVD_TYPE = "SURGSORA_SVD"


@dataclass
class DSIFeatures:
    """Frame-0 features of both DSI streams, one map per UNet scale, plus the frame they came from."""

    rgb: list[torch.Tensor]  # [B, C_s, H/s, W/s]
    depth: list[torch.Tensor] | None  # None for adapters without a depth branch (MOFA)
    image: torch.Tensor  # [B, 3, H, W] in [0, 1]


@dataclass
class Conditions:
    """Fused conditions per scale ``[B, T, C_s, H/s, W/s]`` for one video, and its first frame."""

    scales: list[torch.Tensor]
    image: torch.Tensor  # [B, 3, H, W] in [0, 1]

    @property
    def num_frames(self) -> int:
        return int(self.scales[0].shape[1])


@dataclass
class SVDModels:
    unet: torch.nn.Module
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    scheduler: object
    feature_extractor: object
    name: str = ""

    def pipeline(self, adapter=None):
        """A SurgSoraPipeline over these modules with a fresh scheduler (sampling state never leaks between runs)."""
        from surgsora.sampling.pipeline import SurgSoraPipeline

        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        return SurgSoraPipeline(vae=self.vae, image_encoder=self.image_encoder, unet=self.unet, scheduler=scheduler,
                                feature_extractor=self.feature_extractor, adapter=adapter)


# ---------------------------------------------------------------------------------------- adapter

class SurgSoraLoadAdapter:
    """Load an adapter from models/surgsora: a trained SurgSora adapter folder (as `python -m train` writes
    it) or MOFA-Video-Traj's released ControlNet (its controlnet folder or safetensors file), which then runs
    exactly as published (no depth or SAM inputs needed)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "adapter_name": model_widget("adapter", "A SurgSora adapter folder (written by python -m train), or "
                                                    "MOFA-Video-Traj's ControlNet (mofa_traj_controlnet.safetensors "
                                                    "or its controlnet folder), in models/surgsora."),
            "precision": (PRECISIONS, {"default": "auto", "tooltip": PRECISION_TOOLTIP}),
            "download": download_widget("surgsora"),
        }}

    RETURN_TYPES = (ADAPTER_TYPE,)
    RETURN_NAMES = ("adapter",)
    OUTPUT_TOOLTIPS = ("The adapter, for DSI Encode, DFM Warp + MSF Fuse and the sampler (or SurgSora Apply (SVD)).",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/loaders"

    @classmethod
    def VALIDATE_INPUTS(cls, adapter_name=None, download=None):
        return validate_choice("adapter", adapter_name, bool(download))

    def load(self, adapter_name, precision="auto", download=False):
        from surgsora.loading.adapters import describe_adapter, load_adapter

        path = resolve_model("adapter", adapter_name, download)
        adapter = load_adapter(path, dtype=resolve_dtype(precision, torch_device()))
        print(f"[SurgSora] {path.name}: {describe_adapter(adapter)}")
        return (adapter.requires_grad_(False).to(offload_device()),)


class SurgSoraDSIEncode:
    """Dual Semantic Injector: RGB + SAM and depth + SAM streams of the first frame, at every UNet scale.

    ``depth`` and ``seg_features`` are needed only by adapters that use them (not by MOFA's ControlNet)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "adapter": (ADAPTER_TYPE, {"tooltip": "From SurgSora Load Adapter."}),
            "image": ("IMAGE", {"tooltip": "The first frame at the working size (multiples of 64)."}),
        }, "optional": {
            "depth": ("IMAGE", {"tooltip": "Its depth map, near = bright (any depth node's IMAGE output). Needed "
                                           "by SurgSora adapters with a depth branch; MOFA's ControlNet has none."}),
            "seg_features": (SEG_TYPE, {"tooltip": "SAM image features of the frame. Needed by SurgSora adapters "
                                                   "that use them; MOFA's ControlNet does not."}),
        }}

    RETURN_TYPES = (DSI_TYPE,)
    RETURN_NAMES = ("dsi_features",)
    OUTPUT_TOOLTIPS = ("The first frame's RGB (and depth) features at every UNet scale, for DFM Warp + MSF Fuse.",)
    FUNCTION = "encode"
    CATEGORY = f"{CATEGORY}/conditioning"

    @torch.no_grad()
    def encode(self, adapter, image, depth=None, seg_features=None):
        x = image_to_bchw(image, "image")
        b, _, h, w = x.shape
        check_video_size(w, h, "The first frame", fix="; resize it first (Upscale Image, crop disabled), before SAM, "
                                                      "depth and the trajectories")
        d = seg = None
        if adapter.needs_depth:
            if depth is None:
                raise ValueError("This adapter has a depth branch: connect a depth map (SurgSora Depth) to the "
                                 "depth input.")
            d = depth_for(depth, b, h, w)
        if adapter.needs_seg:
            seg = seg_features
            channels = adapter.config.seg_channels
            if seg is None:
                raise ValueError("This adapter uses SAM features: connect SurgSora SAM Segment's seg_features.")
            if not isinstance(seg, torch.Tensor) or seg.ndim != 4 or seg.shape[1] != channels:
                shape = tuple(seg.shape) if isinstance(seg, torch.Tensor) else type(seg).__name__
                raise ValueError(f"seg_features must be SAM image embeddings [B, {channels}, 64, 64]; got {shape}.")
            if seg.shape[0] not in (1, b):
                raise ValueError(f"seg_features has {seg.shape[0]} images but the frame batch has {b}.")
            seg = seg.expand(b, *seg.shape[1:])
        with on_device(adapter) as device:
            dtype = adapter.dtype
            pixels = (x * 2 - 1).to(device, dtype)
            rgb, dep = adapter.encode_dsi(pixels, None if d is None else d.to(device, dtype),
                                          None if seg is None else seg.to(device, dtype))
            out = DSIFeatures([r.cpu() for r in rgb], None if dep is None else [q.cpu() for q in dep], x)
        return (out,)


class SurgSoraDFMFuse:
    """Decoupled Flow Mapper + Multi-Scale Fusion: forward-warp both DSI streams by the flow of every frame
    (resized per scale) and fuse them, giving the adapter's conditions for the whole video."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "adapter": (ADAPTER_TYPE, {"tooltip": "The adapter the DSI features were encoded with."}),
            "dsi_features": (DSI_TYPE, {"tooltip": "From SurgSora DSI Encode."}),
            "flow": (FLOW_TYPE, {"tooltip": "Flow frame 0 -> t (SurgSora Trajectories to Flow or Optical Flow from "
                                            "Clip); it sets the frame count."}),
        }}

    RETURN_TYPES = (CONDITIONS_TYPE,)
    RETURN_NAMES = ("conditions",)
    OUTPUT_TOOLTIPS = ("The adapter's conditions for every frame and scale, for the sampler or SurgSora Apply (SVD).",)
    FUNCTION = "fuse"
    CATEGORY = f"{CATEGORY}/conditioning"

    @torch.no_grad()
    def fuse(self, adapter, dsi_features, flow):
        f = _check_flow(flow)
        feats = dsi_features
        b, _, h, w = feats.image.shape
        if f.shape[0] not in (1, b):
            raise ValueError(f"flow has a batch of {f.shape[0]} but the DSI features {b}.")
        f = resize_flow(f, (h, w)).expand(b, *f.shape[1:])
        with on_device(adapter) as device:
            dtype = adapter.dtype
            dep = None if feats.depth is None else [q.to(device, dtype) for q in feats.depth]
            if adapter.needs_depth and dep is None:
                raise ValueError("These DSI features have no depth stream but the adapter needs one: encode them "
                                 "with the same adapter.")
            scales = adapter.fuse_conditions([r.to(device, dtype) for r in feats.rgb], dep, f.to(device))
            scales = [c.cpu() for c in scales]
        return (Conditions(scales, feats.image),)


# ---------------------------------------------------------------------------------------- SVD

class SurgSoraLoadSVD:
    """Load Stable Video Diffusion: the single file ComfyUI users have (models/checkpoints, e.g.
    svd_xt.safetensors) or a diffusers folder (models/diffusers)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": model_widget("svd", "Stable Video Diffusion: a single file such as svd_xt.safetensors "
                                             "in models/checkpoints, or [diffusers] <folder> in models/diffusers."),
            "precision": (PRECISIONS, {"default": "auto", "tooltip": PRECISION_TOOLTIP}),
            "download": download_widget("checkpoints", "from Hugging Face; a gated model: accept its licence and "
                                                       "log in with huggingface-cli first"),
        }}

    RETURN_TYPES = (SVD_TYPE,)
    RETURN_NAMES = ("svd",)
    OUTPUT_TOOLTIPS = ("SVD's UNet, VAE and CLIP image encoder, for SurgSora SVD Sampler and SurgSora Decode.",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/loaders"

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name=None, download=None):
        return validate_choice("svd", ckpt_name, bool(download))

    def load(self, ckpt_name, precision="auto", download=False):
        from surgsora.loading.svd_checkpoint import load_svd

        path = resolve_model("svd", ckpt_name, download)
        parts = load_svd(path, device=offload_device(), dtype=resolve_dtype(precision, torch_device()))
        for k in ("unet", "vae", "image_encoder"):
            parts[k].requires_grad_(False)
        return (SVDModels(name=ckpt_name, **parts),)


def dual_clock_widgets() -> dict:
    """The t_weak / t_strong widgets, the same on the SurgSora sampler and the core dual-clock guider."""
    return {
        "t_weak": ("FLOAT", {"default": TTM_T_WEAK, "min": 0.0, "max": 1.0, "step": 0.01,
                             "tooltip": "Dual-clock: sampling starts from the motion signal noised to this point of "
                                        "the schedule (fraction of the steps; TTM: 16 of 50)."}),
        "t_strong": ("FLOAT", {"default": TTM_T_STRONG, "min": 0.0, "max": 1.0, "step": 0.01,
                               "tooltip": "Dual-clock: inside the mask the latents follow the signal until this "
                                          "point, then denoise freely (TTM: 21 of 50; 1 = to the end)."}),
    }


# The sampler's widgets are the library's sampling settings under the same names, except that frames 0 means "the
# conditions' or motion signal's count" (None in the library).
SAMPLER_NAMES = {"frames": "frames (0 = the conditions' or motion signal's count)"}


def sampler_settings(frames=None, **widgets) -> dict:
    """The sampler's widget values as the library's settings (frames 0 -> None), checked in the widgets' words."""
    values = {**widgets, "frames": None if frames == 0 else frames}
    check_settings(names=SAMPLER_NAMES, **values)
    return values


class SurgSoraSampler:
    """SVD image-to-video sampling steered by the SurgSora adapter (or MOFA's ControlNet) and/or by a motion
    signal (dual-clock, training-free: plain SVD follows the warped animation inside its mask until t_strong);
    returns the video latents.

    Without ``adapter``/``conditions`` and without a motion signal it is plain SVD. The frame count and size
    come from the conditions or the motion signal (``frames`` 0 = that count, or the UNet's default).
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "svd": (SVD_TYPE, {"tooltip": "From SurgSora Load SVD."}),
                "image": ("IMAGE", {"tooltip": "The first frame."}),
                "steps": ("INT", {"default": 25, "min": 1, "max": MAX_STEPS, "tooltip": "Denoising steps."}),
                "min_cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                      "tooltip": "Guidance on the first frame; ramps linearly to max_cfg."}),
                "max_cfg": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                      "tooltip": "Guidance on the last frame (at least min_cfg)."}),
                "fps": ("INT", {"default": 7, "min": 1, "max": int(MAX_FPS),
                                "tooltip": "SVD's frame-rate conditioning (SurgSora adapters are trained at 7)."}),
                "motion_bucket_id": ("INT", {"default": 127, "min": 0, "max": MAX_MOTION_BUCKET,
                                             "tooltip": "SVD's motion amount conditioning: higher asks for more "
                                                        "motion."}),
                "noise_aug_strength": ("FLOAT", {"default": 0.02, "min": 0.0, "max": 1.0, "step": 0.01,
                                                 "tooltip": "Noise added to the first frame before it conditions "
                                                            "SVD: higher lets the video depart more from it."}),
                "control_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05,
                                            "tooltip": "Strength of the SurgSora adapter (0 = plain SVD)."}),
                "seed": ("INT", {"default": 0, "min": RANDOM_SEED, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Seed of the initial noise and of the noise augmentation (-1: a random "
                                            "seed, printed to the console so the run can be repeated)."}),
                "frames": ("INT", {"default": 0, "min": 0, "max": MAX_FRAMES,
                                   "tooltip": "Video length (0 = the conditions' frame count)."}),
                **dual_clock_widgets(),
            },
            "optional": {
                "adapter": (ADAPTER_TYPE, {"tooltip": "From SurgSora Load Adapter; connect it with conditions, or "
                                                      "neither (plain SVD)."}),
                "conditions": (CONDITIONS_TYPE, {"tooltip": "From SurgSora DFM Warp + MSF Fuse, made with the same "
                                                            "adapter."}),
                "motion_signal": ("IMAGE", {"tooltip": "Dual-clock: the crude animation (SurgSora Motion Signal), one "
                                                       "image per frame."}),
                "motion_mask": ("MASK", {"tooltip": "Dual-clock: where the video follows the signal, one mask per "
                                                    "frame."}),
            },
        }

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The video latents, frames as the batch, for SurgSora Decode.",)
    FUNCTION = "sample"
    CATEGORY = f"{CATEGORY}/generation"

    @classmethod
    def VALIDATE_INPUTS(cls, steps=None, min_cfg=None, max_cfg=None, fps=None, motion_bucket_id=None,
                        noise_aug_strength=None, control_scale=None, seed=None, frames=None, t_weak=None,
                        t_strong=None):
        # the library's rules at queue time (ComfyUI skips its own range checks for the inputs taken here)
        return queue_problem(sampler_settings, steps=steps, min_cfg=min_cfg, max_cfg=max_cfg, fps=fps,
                             motion_bucket_id=motion_bucket_id, noise_aug_strength=noise_aug_strength,
                             control_scale=control_scale, seed=seed, frames=frames, t_weak=t_weak,
                             t_strong=t_strong) or True

    @torch.no_grad()
    def sample(self, svd, image, steps=25, min_cfg=1.0, max_cfg=3.0, fps=7, motion_bucket_id=127,
               noise_aug_strength=0.02, control_scale=1.0, seed=0, frames=0, t_weak=TTM_T_WEAK, t_strong=TTM_T_STRONG,
               adapter=None, conditions=None, motion_signal=None, motion_mask=None):
        from surgsora.loading.adapters import check_adapter_fits
        from surgsora.sampling.generate import sample

        if (adapter is None) != (conditions is None):
            missing = "conditions (from SurgSora DFM + MSF)" if conditions is None else "adapter"
            raise ValueError(f"Connect both the adapter and the conditions, or neither (plain SVD); the {missing} "
                             "input is missing.")
        if (motion_signal is None) != (motion_mask is None):
            missing = "motion_mask" if motion_mask is None else "motion_signal"
            raise ValueError(f"Dual-clock sampling needs both the motion signal and its mask; connect {missing} "
                             "(SurgSora Motion Signal gives both).")
        settings = SamplingSettings(**sampler_settings(
            steps=steps, min_cfg=min_cfg, max_cfg=max_cfg, fps=fps, motion_bucket_id=motion_bucket_id,
            noise_aug_strength=noise_aug_strength, control_scale=control_scale, seed=seed, frames=frames,
            t_weak=t_weak, t_strong=t_strong))
        x = image_to_bchw(image, "image")
        signal = mask = None
        if motion_signal is not None:
            signal, mask = _signal_and_mask(motion_signal, motion_mask, x.shape[0])
        h, w = (conditions.image if conditions is not None else x).shape[-2:]  # the conditions' size wins

        start = dual_clock_indices(t_weak, t_strong, steps)[0] if signal is not None else 0  # dual-clock: t_weak
        bar = Progress(steps - start)
        preview = latent_previewer()

        def on_step(i, total, latents):
            middle = latents.shape[1] // 2  # the middle frame shows the motion best
            bar.update(1, preview(latents[:1, middle].float()) if preview is not None else None)
            check_interrupted()  # Cancel in the UI: stop after this step

        check_adapter_fits(adapter, svd.unet)  # an adapter for another UNet: one sentence, not a forward traceback
        modules = [svd.unet, svd.vae, svd.image_encoder, adapter]
        with on_device(*modules):
            if adapter is not None and adapter.dtype != svd.unet.dtype:
                adapter.to(svd.unet.dtype)
            latents = sample(svd.pipeline(adapter), x, settings,
                             conditions=None if conditions is None else conditions.scales, motion_signal=signal,
                             motion_mask=mask, height=int(h), width=int(w), callback=on_step)
            samples = (latents.float() / svd.vae.config.scaling_factor).flatten(0, 1).cpu()
        return ({"samples": samples, "surgsora_frames": int(latents.shape[1])},)


def _signal_and_mask(signal, mask, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [B*T, H, W, 3] and MASK [B*T, H, W] (or [H, W]) -> [B, T, 3, H, W] and [B, T, 1, H, W]."""
    s = image_to_bchw(signal, "motion_signal")
    m = mask if isinstance(mask, torch.Tensor) and mask.ndim == 3 else \
        (mask.unsqueeze(0) if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None)
    if m is None:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"motion_mask must be a MASK batch [frames, H, W]; got {shape}.")
    if s.shape[0] % batch:
        raise ValueError(f"The motion signal has {s.shape[0]} images, not a whole number of frames for the image "
                         f"batch of {batch}.")
    if m.shape[0] == 1:
        m = m.expand(s.shape[0], *m.shape[1:])
    if m.shape[0] != s.shape[0] or m.shape[-2:] != s.shape[-2:]:
        raise ValueError(f"motion_mask is {tuple(m.shape)} but the motion signal has {s.shape[0]} frames of "
                         f"{s.shape[-2]}x{s.shape[-1]}; give one mask per frame at the signal's size.")
    t = s.shape[0] // batch
    return s.unflatten(0, (batch, t)), m.float().unsqueeze(1).unflatten(0, (batch, t))


class SurgSoraDecode:
    """Decode SVD video latents with its temporal VAE decoder, ``decode_chunk_size`` frames at a time."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "svd": (SVD_TYPE, {"tooltip": "The SVD the latents were sampled with (its VAE decodes them)."}),
            "latent": ("LATENT", {"tooltip": "From SurgSora SVD Sampler."}),
            "decode_chunk_size": ("INT", {"default": 8, "min": 1, "max": 512,
                                          "tooltip": "Frames decoded together: lower uses less memory, higher is "
                                                     "smoother across chunk borders."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The video as an IMAGE batch, one image per frame (for Create Video / Save Video).",)
    FUNCTION = "decode"
    CATEGORY = f"{CATEGORY}/generation"

    @torch.no_grad()
    def decode(self, svd, latent, decode_chunk_size=8):
        if decode_chunk_size < 1:
            raise ValueError(f"decode_chunk_size must be at least 1; got {decode_chunk_size}.")
        samples = latent["samples"] if isinstance(latent, dict) else None
        if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or samples.shape[1] != 4:
            shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
            raise ValueError(f"latent must hold SVD video latents [frames, 4, H/8, W/8]; got {shape}.")
        n = samples.shape[0]
        t = int(latent.get("surgsora_frames", n))
        if t < 1 or n % t:
            raise ValueError(f"The latent holds {n} frames, not a whole number of {t}-frame videos.")
        latents = samples.view(n // t, t, *samples.shape[1:])
        pipe = svd.pipeline()
        chunk = int(decode_chunk_size)
        bar = Progress(-(-t // chunk))
        out = []
        with on_device(svd.vae) as device:
            latents = latents.to(device, svd.vae.dtype) * svd.vae.config.scaling_factor
            for i in range(0, t, chunk):
                check_interrupted()
                part = latents[:, i:i + chunk]
                out.append(pipe.decode(part, part.shape[1]).float().cpu())
                bar.update()
        return (video_to_image(torch.cat(out, 1)),)


NODE_CLASS_MAPPINGS = {
    "SurgSoraLoadAdapter": SurgSoraLoadAdapter,
    "SurgSoraDSIEncode": SurgSoraDSIEncode,
    "SurgSoraDFMFuse": SurgSoraDFMFuse,
    "SurgSoraLoadSVD": SurgSoraLoadSVD,
    "SurgSoraSampler": SurgSoraSampler,
    "SurgSoraDecode": SurgSoraDecode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SurgSoraLoadAdapter": "SurgSora Load Adapter",
    "SurgSoraDSIEncode": "SurgSora DSI Encode",
    "SurgSoraDFMFuse": "SurgSora DFM Warp + MSF Fuse",
    "SurgSoraLoadSVD": "SurgSora Load SVD",
    "SurgSoraSampler": "SurgSora SVD Sampler",
    "SurgSoraDecode": "SurgSora Decode",
}
