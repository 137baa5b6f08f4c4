"""SurgSora under ComfyUI's own SVD: conditions steer the core MODEL through core KSampler.

``SurgSora Apply (SVD)`` has the shape of core ``ControlNetApplyAdvanced``: it attaches a
``comfy.controlnet.ControlBase`` to every positive and negative conditioning entry. Each step, core's
sampler hands that control the model's own input (the noisy latent, ``c_concat``, ``c_crossattn``, ``y``,
``num_video_frames``, sigma); the adapter trunk runs on it and its residuals go back through the
``output`` entries (one per UNet skip, added once, in skip order: ComfyUI pops the deepest first) and
the ``middle`` entry. The ``input`` entry stays empty: it is added to the hidden state after each input
block, so it would also flow into every deeper block.

The adapter is handed to ComfyUI's memory manager through a ModelPatcher (``get_models``), so core
loads and offloads it with the UNet; its ``inference_memory_requirements`` counts what it keeps on the
device during sampling: the conditions (one copy per batched cond/uncond) and the residuals that live
through the UNet's pass.

``SurgSora SVD Conditioning`` returns core CONDITIONING encoded the way SurgSora adapters are trained
and sampled (core ``SVD_img2vid_Conditioning`` centre-crops the frame for CLIP and adds noise
augmentation in [0, 1] pixels, i.e. twice the strength in the VAE's [-1, 1] input): CLIP sees the whole
frame resized (antialiased) to 224, noise augmentation is added in [-1, 1], and an adapter's own
conventions apply (MOFA's fixed ``added_time_ids`` and unnormalised CLIP input).
"""

from __future__ import annotations

import functools

import torch

from .generation import ADAPTER_TYPE, CONDITIONS_TYPE, _check_size
from .runtime import CATEGORY, comfy_module, image_to_bchw, patcher_for


def _comfy(name: str):
    module = comfy_module(name)
    if module is None:
        raise RuntimeError("SurgSora Apply (SVD) and SurgSora SVD Conditioning run inside ComfyUI only "
                           "(they attach to ComfyUI's own SVD model).")
    return module


@functools.lru_cache(maxsize=None)
def control_class():
    """The ControlBase subclass, made on first use so that importing the pack never needs ComfyUI."""
    ControlBase = _comfy("comfy.controlnet").ControlBase

    class SurgSoraControl(ControlBase):
        def __init__(self, adapter, conditions):
            super().__init__()
            self.adapter = adapter
            self.conditions = conditions  # Conditions: scales [1, T, C, h, w] on the CPU
            self.model_sampling_current = None
            self._scales = None  # the conditions on the sampling device, made once per run

        def copy(self):
            c = SurgSoraControl(self.adapter, self.conditions)
            self.copy_to(c)
            return c

        def get_models(self):
            return super().get_models() + [patcher_for(self.adapter)]

        def pre_run(self, model, percent_to_timestep_function):
            super().pre_run(model, percent_to_timestep_function)
            self.model_sampling_current = model.model_sampling

        def cleanup(self):
            self.model_sampling_current = None
            self._scales = None
            super().cleanup()

        def inference_memory_requirements(self, dtype):
            item = torch.empty((), dtype=dtype).element_size()
            scales = self.conditions.scales
            frames = self.conditions.num_frames
            h, w = scales[0].shape[-2:]
            conditions = sum(s[0].numel() for s in scales) * 2  # repeated for a batched cond + uncond
            residuals = self.adapter.residual_elements(h, w) * frames * 2
            return (conditions + residuals) * item + super().inference_memory_requirements(dtype)

        def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
            control_prev = None
            if self.previous_controlnet is not None:
                control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number,
                                                                    transformer_options)
            if self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
                return control_prev
            adapter = self.adapter
            dtype, device = adapter.dtype, x_noisy.device
            frames = int(cond.get("num_video_frames", self.conditions.num_frames))
            if frames != self.conditions.num_frames or x_noisy.shape[0] % frames:
                raise ValueError(f"The SurgSora conditions were made for {self.conditions.num_frames} frames but "
                                 f"the video latent has {frames} (batch {x_noisy.shape[0]}); make the trajectories "
                                 "and the SVD conditioning for the same frame count.")
            if x_noisy.shape[-2:] != self.conditions.scales[0].shape[-2:]:
                raise ValueError(f"The SurgSora conditions are for a {self.conditions.scales[0].shape[-1] * 8}x"
                                 f"{self.conditions.scales[0].shape[-2] * 8} video but the latent is "
                                 f"{x_noisy.shape[-1] * 8}x{x_noisy.shape[-2] * 8}; use the same size.")
            if self._scales is None:
                self._scales = [s.to(device, dtype) for s in self.conditions.scales]
            ms = self.model_sampling_current
            x_in = ms.calculate_input(t, x_noisy)  # what the UNet sees: c_in * x, as diffusers' scale_model_input
            sample = torch.cat([x_in, cond["c_concat"].to(x_in)], dim=1)
            sample = sample.view(-1, frames, *sample.shape[1:]).to(dtype)
            timestep = ms.timestep(t)[::frames].to(dtype)  # 0.25 log sigma, one per video
            context = cond["c_crossattn"][::frames].to(device, dtype)
            y = cond["y"][::frames].to(device, dtype)  # the micro-conditioning ids, already as sinusoids
            with torch.no_grad():
                down, mid = adapter(sample, timestep, context, None, self._scales, time_embeds=y)
            control = {"input": [], "middle": [mid], "output": list(down)}
            return self.control_merge(control, control_prev, output_dtype=x_noisy.dtype)

    return SurgSoraControl


class SurgSoraApplySVD:
    """Attach a SurgSora adapter (or MOFA's ControlNet) and its conditions to core SVD CONDITIONING, so core
    KSampler, SamplerCustomAdvanced, VideoLinearCFGGuidance and model patches run with it on the MODEL from
    ImageOnlyCheckpointLoader. Residuals reach each UNet skip once (MOFA's multiplicity is in its weights)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "positive": ("CONDITIONING", {"tooltip": "From SVD_img2vid_Conditioning or SurgSora SVD Conditioning."}),
            "negative": ("CONDITIONING", {"tooltip": "The matching negative conditioning."}),
            "adapter": (ADAPTER_TYPE, {"tooltip": "From SurgSora Load Adapter."}),
            "conditions": (CONDITIONS_TYPE, {"tooltip": "From SurgSora DFM Warp + MSF Fuse, for this frame count "
                                                        "and size."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "Scales the adapter's residuals (0 = plain SVD)."}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                        "tooltip": "Fraction of sampling at which the adapter starts acting."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                      "tooltip": "Fraction of sampling at which it stops."}),
        }}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("Positive conditioning carrying the SurgSora control.",
                       "Negative conditioning carrying the same control (both CFG halves are steered).")
    FUNCTION = "apply"
    CATEGORY = f"{CATEGORY}/conditioning"

    @classmethod
    def VALIDATE_INPUTS(cls, start_percent=None, end_percent=None):
        if start_percent is not None and end_percent is not None and start_percent > end_percent:
            return f"start_percent ({start_percent}) must not be larger than end_percent ({end_percent})."
        return True

    def apply(self, positive, negative, adapter, conditions, strength=1.0, start_percent=0.0, end_percent=1.0):
        if strength == 0:
            return (positive, negative)
        template = control_class()(adapter, conditions)
        out, made = [], {}
        for conditioning in (positive, negative):
            entries = []
            for embedding, options in conditioning:
                options = options.copy()
                previous = options.get("control")
                if previous not in made:  # one control per chain, shared by positive and negative (batched CFG)
                    made[previous] = template.copy().set_cond_hint(None, strength, (start_percent, end_percent))
                    made[previous].set_previous_controlnet(previous)
                options["control"] = made[previous]
                options["control_apply_to_uncond"] = False
                entries.append([embedding, options])
            out.append(entries)
        return (out[0], out[1])


class SurgSoraSVDConditioning:
    """Core SVD CONDITIONING encoded the way SurgSora adapters are trained: CLIP sees the whole frame resized to
    224 (core centre-crops it), noise augmentation is added in the VAE's [-1, 1] input, and the adapter's own
    conventions apply (MOFA: fixed added_time_ids [6, 128, 0.02], CLIP input not normalised)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_vision": ("CLIP_VISION", {"tooltip": "From ImageOnlyCheckpointLoader."}),
            "init_image": ("IMAGE", {"tooltip": "The first frame."}),
            "vae": ("VAE", {"tooltip": "From ImageOnlyCheckpointLoader."}),
            "width": ("INT", {"default": 448, "min": 64, "max": 8192, "step": 64}),
            "height": ("INT", {"default": 256, "min": 64, "max": 8192, "step": 64}),
            "video_frames": ("INT", {"default": 21, "min": 2, "max": 4096}),
            "motion_bucket_id": ("INT", {"default": 127, "min": 0, "max": 1023}),
            "fps": ("INT", {"default": 7, "min": 1, "max": 1024,
                            "tooltip": "SVD's fps id is fps - 1 (SurgSora adapters are trained at 7)."}),
            "augmentation_level": ("FLOAT", {"default": 0.02, "min": 0.0, "max": 10.0, "step": 0.01,
                                             "tooltip": "Noise added to the frame in [-1, 1] before the VAE."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "tooltip": "Seed of the noise augmentation."}),
        }, "optional": {"adapter": (ADAPTER_TYPE, {"tooltip": "Apply this adapter's conventions (MOFA's fixed "
                                                              "time ids and CLIP input)."})}}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("CLIP embedding and frame latent, as SurgSora trains with.", "Zeros, as SVD's CFG expects.",
                       "An empty video latent of the requested size and frame count.")
    FUNCTION = "encode"
    CATEGORY = f"{CATEGORY}/conditioning"

    @torch.no_grad()
    def encode(self, clip_vision, init_image, vae, width, height, video_frames, motion_bucket_id, fps,
               augmentation_level, seed=0, adapter=None):
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
            _resize_with_antialiasing,
        )

        mm = _comfy("comfy.model_management")
        _check_size(height, width, "The video size")
        if not augmentation_level >= 0:
            raise ValueError(f"augmentation_level must be 0 or more; got {augmentation_level}.")
        x = image_to_bchw(init_image, "init_image")[:1]
        normalize = True if adapter is None else adapter.config.get("clip_normalize", True)
        pixels = _resize_with_antialiasing(x * 2 - 1, (224, 224))  # diffusers' CLIP resize, in [-1, 1]
        pixels = (pixels + 1) / 2
        if normalize:
            mean = torch.tensor(clip_vision.image_mean).view(1, 3, 1, 1)
            std = torch.tensor(clip_vision.image_std).view(1, 3, 1, 1)
            pixels = (pixels - mean) / std
        mm.load_model_gpu(clip_vision.patcher)
        out = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device).float(), intermediate_output=-2)
        pooled = out[2].to(mm.intermediate_device()).unsqueeze(0)

        frame = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                                                antialias=height < x.shape[-2] or width < x.shape[-1])
        noise = torch.randn(frame.shape, generator=torch.Generator().manual_seed(int(seed)))
        # ComfyUI's VAE maps [0, 1] to [-1, 1] itself: half the noise here is `strength * noise` there
        latent = vae.encode((frame + augmentation_level * noise / 2).movedim(1, -1))
        ids = dict(fps=fps, motion_bucket_id=motion_bucket_id, augmentation_level=augmentation_level)
        fixed = None if adapter is None else adapter.config.get("fixed_time_ids")
        if fixed is not None:  # MOFA: what its weights always saw, whatever the widgets say
            ids = dict(fps=fixed[0] + 1, motion_bucket_id=fixed[1], augmentation_level=fixed[2])
        positive = [[pooled, {**ids, "concat_latent_image": latent}]]
        negative = [[torch.zeros_like(pooled), {**ids, "concat_latent_image": torch.zeros_like(latent)}]]
        empty = torch.zeros([video_frames, 4, height // 8, width // 8])
        return (positive, negative, {"samples": empty})


NODE_CLASS_MAPPINGS = {
    "SurgSoraApplySVD": SurgSoraApplySVD,
    "SurgSoraSVDConditioning": SurgSoraSVDConditioning,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SurgSoraApplySVD": "SurgSora Apply (SVD)",
    "SurgSoraSVDConditioning": "SurgSora SVD Conditioning",
}
