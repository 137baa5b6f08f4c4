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

``SurgSora Dual-Clock Guider`` is Time-to-Move's dual-clock sampling as a core GUIDER for
``SamplerCustomAdvanced`` (any core sampler and scheduler; SurgSora Apply may steer the same conditioning), on
SVD, Wan 2.1 I2V, Wan 2.2 I2V A14B, Wan 2.2 TI2V-5B and Cosmos-H-Surgical (``nodes/cosmos.py``). The anchoring
is in the guider's model call, never
through a model's own inpainting rule (Wan 2.2 5B keeps its known region clean and turns the mask into
per-frame timesteps): while sigma > sigma(t_strong), the masked model input is the signal noised to that
sigma with the model's own ``model_sampling.noise_scaling``, and the masked prediction is the signal (both in
the model's latent space, ``process_latent_in``); sampling starts at t_weak from the signal noised to
sigma(t_weak). For deterministic samplers (Euler, Heun, DPM++ 2M ...) this is exactly TTM's re-anchoring
after each step (with the prediction fixed to the signal, the step lands on the signal noised to the next
sigma). The sampler's one noise draw both starts and re-noises the anchor (the pipeline draws a second one, as
TTM does); ancestral samplers add fresh noise between anchors. A latent ``noise_mask`` (the 5B's first frame)
is kept: the model's own rule holds there and nothing is anchored where it is 0. The geometry comes from the
VAE: one latent per frame for SVD, TTM's temporal rule (pixel frames [0] + [1::4]) for the 4x video VAEs (Wan's;
Cosmos-H-Surgical samples Wan 2.1 VAE latents, its first frame kept by the model from SurgSora Cosmos Image to Video).
With ``full_sigmas`` connected, t_weak / t_strong count steps of the whole schedule, so the high-noise stage
of a SplitSigmas run anchors the same steps as one unsplit run.

``SurgSora SVD Conditioning`` returns core CONDITIONING encoded the way SurgSora adapters are trained
and sampled (core ``SVD_img2vid_Conditioning`` centre-crops the frame for CLIP and adds noise
augmentation in [0, 1] pixels, i.e. twice the strength in the VAE's [-1, 1] input): CLIP sees the whole
frame resized (antialiased) to 224, noise augmentation is added in [-1, 1], and an adapter's own
conventions apply (MOFA's fixed ``added_time_ids`` and unnormalised CLIP input). Those rules are the pipeline's
own, from :mod:`surgsora.sampling.conditioning`.
"""

from __future__ import annotations

import functools

import torch

from surgsora.sampling.conditioning import clip_normalize, clip_pixels, noise_augmented, time_ids
from surgsora.sampling.dual_clock import (PRESETS, check_frame_count, check_unit_range, latent_mask, resize_frames,
                                         stage_indices)
from surgsora.sampling.settings import (MAX_FPS, MAX_FRAMES, MAX_MOTION_BUCKET, MAX_SEED, TTM_T_STRONG, TTM_T_WEAK,
                                        check_settings, check_video_size)

from .generation import ADAPTER_TYPE, CONDITIONS_TYPE, _signal_and_mask, dual_clock_widgets
from .runtime import CATEGORY, comfy_module, image_to_bchw, patcher_for, queue_problem


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
            from surgsora.loading.adapters import check_adapter_fits

            # an adapter made for another UNet: one sentence before the first step, not a shape error inside it
            check_adapter_fits(self.adapter, getattr(getattr(model, "model_config", None), "unet_config", None))
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
        return _percent_problem(start_percent, end_percent) or True

    def apply(self, positive, negative, adapter, conditions, strength=1.0, start_percent=0.0, end_percent=1.0):
        problem = _percent_problem(start_percent, end_percent)
        if problem:
            raise ValueError(problem)
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


def _percent_problem(start_percent, end_percent) -> str | None:
    """The adapter's active span: fractions of sampling with start <= end (None = a linked widget, not known yet)."""
    given = [v for v in (start_percent, end_percent) if v is not None]
    in_order = len(given) < 2 or start_percent <= end_percent
    if all(0 <= v <= 1 for v in given) and in_order:  # False for NaN too
        return None
    return (f"start_percent ({start_percent}) and end_percent ({end_percent}) must be fractions of sampling in "
            "[0, 1] with start_percent not larger than end_percent.")


# Core model classes the guider anchors correctly, by what each family needs: the anchoring is done in the guider's
# model call with the model's own noise_scaling, so it holds whatever the model's own inpainting rule is; a family
# is listed once its latent geometry (read from the VAE) and conditioning are checked against it.
SUPPORTED_MODELS = {"SVD_img2vid": "SVD", "WAN21": "Wan 2.1 / Wan 2.2 I2V A14B", "WAN22": "Wan 2.2 TI2V-5B",
                    "CosmosPredict25": "Cosmos-H-Surgical (SurgSora Load Cosmos-H-Surgical)"}
SUPPORTED_NAMES = "SVD / SVD-xt, Wan 2.1 I2V, Wan 2.2 I2V A14B and Wan 2.2 TI2V-5B"


@functools.lru_cache(maxsize=None)
def dual_clock_guider_class():
    """Core ``CFGGuider`` with dual-clock anchoring (made on first use: importing the pack never needs ComfyUI)."""
    CFGGuider = _comfy("comfy.samplers").CFGGuider

    class SurgSoraDualClockGuider(CFGGuider):
        def __init__(self, model_patcher, signal, mask, t_weak, t_strong, full_sigmas=None):
            super().__init__(model_patcher)
            self.signal = signal  # VAE latents of the motion signal, the video latent's shape (ComfyUI scales them in)
            self.mask = mask  # the latent's shape with 1 channel, in {0, 1}: 1 = follow the signal
            self.t_weak, self.t_strong = t_weak, t_strong
            self.full_sigmas = full_sigmas  # the unsplit schedule: t_weak / t_strong are fractions of it
            self._anchor = None  # (mask, signal in the model's latent space, noise, sigma(t_strong)) while sampling

        def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                   seed=None):
            if latent_image.is_nested or tuple(latent_image.shape) != tuple(self.signal.shape):
                raise ValueError(f"The latent is {tuple(latent_image.shape)} but the motion signal was encoded as "
                                 f"{tuple(self.signal.shape)}; make the video latent at the motion signal's size and "
                                 "frame count (batch 1).")
            full = None if self.full_sigmas is None else self.full_sigmas.to(sigmas)
            weak, strong = stage_indices(self.t_weak, self.t_strong, sigmas, full)
            sigmas = sigmas[weak:]  # start at t_weak, from the signal noised to that level
            self._boundary = float(sigmas[strong - weak])
            return super().sample(noise, latent_image, sampler, sigmas, denoise_mask=denoise_mask, callback=callback,
                                  disable_pbar=disable_pbar, seed=seed)

        def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                         latent_shapes=None):
            signal, mask = self.signal.to(latent_image), self.mask.to(latent_image)
            start = signal
            if denoise_mask is not None:  # the user's noise_mask (Wan 2.2 5B: its first frame, kept by the model)
                free = denoise_mask.to(latent_image)
                start = signal * free + latent_image * (1 - free)  # the kept region stays the user's latent
                mask = mask * free  # never anchored where the user keeps the latent
            # the one noise draw starts the sampler (KSAMPLER) and re-noises the anchor, as in TTM
            self._anchor = (mask, self.inner_model.process_latent_in(signal), noise, self._boundary)
            try:
                return super().inner_sample(noise, start, device, sampler, sigmas, denoise_mask, callback, disable_pbar,
                                            seed, latent_shapes=latent_shapes)
            finally:
                self._anchor = None

        def outer_predict_noise(self, x, timestep, model_options={}, seed=None):
            anchor = self._anchor
            # anchored while sigma is above sigma(t_strong); every step when t_strong is the last one (sigma 0)
            if anchor is None or not float(timestep.max()) > anchor[3] * (1 + 1e-4):
                return super().outer_predict_noise(x, timestep, model_options, seed)
            mask, signal, noise, _ = anchor
            sigma = timestep.reshape([timestep.shape[0]] + [1] * (x.ndim - 1))
            noised = self.inner_model.model_sampling.noise_scaling(sigma, noise, signal)
            x = x * (1 - mask) + noised * mask
            denoised = super().outer_predict_noise(x, timestep, model_options, seed)
            return denoised * (1 - mask) + signal * mask

    return SurgSoraDualClockGuider


def model_family(model) -> str:
    """The supported family of a core MODEL (ModelPatcher), or one sentence naming the supported ones."""
    name = type(getattr(model, "model", None)).__name__
    if name not in SUPPORTED_MODELS:
        raise ValueError(f"The dual-clock guider supports {SUPPORTED_NAMES}, not this model ({name}); load one of "
                         "those with ComfyUI's own loaders, or Cosmos-H-Surgical with SurgSora Load Cosmos-H-Surgical.")
    return name


def vae_compression(vae) -> tuple[int, int]:
    """(temporal, spatial) compression of a core VAE: SVD's (1, 8), Wan 2.1's (4, 8), Wan 2.2's (4, 16)."""
    formula = getattr(vae, "downscale_index_formula", None)  # (t, h, w) on video VAEs
    if formula is not None:
        return int(formula[0]), int(formula[1])
    ratio = getattr(vae, "downscale_ratio", 8)
    if isinstance(ratio, tuple):  # (frames -> latent frames, h, w): the step at which a second latent frame starts
        frames = ratio[0]
        return next((k for k in range(1, 65) if frames(1 + k) >= 2), 1), int(ratio[1])
    return 1, int(ratio)


def _dual_clock_widgets() -> dict:
    """t_weak / t_strong as on the SurgSora sampler, told here against the full schedule (SplitSigmas)."""
    widgets = dual_clock_widgets()
    for name, when in (("t_weak", "sampling starts from the motion signal noised to this point"),
                       ("t_strong", "inside the mask the video follows the signal until this point, then denoises "
                                    "freely (1 = to the end)")):
        kind, options = widgets[name]
        widgets[name] = (kind, {**options, "tooltip": f"Dual-clock: {when}, as a fraction of the steps of the "
                                                      "schedule, or of full_sigmas when connected (then a SplitSigmas "
                                                      "stage keeps the same steps). TTM of 50 steps: SVD 16 / 21, Wan "
                                                      "cut-and-drag 3 / 7, Wan camera 2 / 5 (see preset)."})
    return widgets


class SurgSoraDualClockGuider:
    """Dual-clock (Time-to-Move) sampling on ComfyUI's own video models (SVD, Wan 2.1 I2V, Wan 2.2 I2V A14B, Wan 2.2
    TI2V-5B) and on Cosmos-H-Surgical: a GUIDER for SamplerCustomAdvanced. Where the motion mask is on, the video
    follows the motion signal
    until t_strong; elsewhere it denoises freely from t_weak. Works with any core sampler and scheduler, with
    VideoLinearCFGGuidance, and with SurgSora Apply (SVD) on the same conditioning. For Wan 2.2 A14B drive the
    high-noise stage with this guider and the low-noise stage with a plain CFGGuider, and connect the unsplit sigmas
    as full_sigmas."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "ComfyUI's SVD or Wan model (for Wan 2.2 A14B: the high-noise expert) or "
                                           "Cosmos-H-Surgical, patched as you like."}),
            "positive": ("CONDITIONING", {"tooltip": "SVD: from SurgSora SVD Conditioning or SVD_img2vid_Conditioning "
                                                     "(optionally through SurgSora Apply). Wan: from WanImageToVideo, "
                                                     "or the text conditioning (Wan 2.2 5B). Cosmos-H-Surgical: from "
                                                     "SurgSora Cosmos Image to Video."}),
            "negative": ("CONDITIONING", {"tooltip": "The matching negative conditioning."}),
            "vae": ("VAE", {"tooltip": "The model's VAE (SVD's, Wan 2.1's, or Wan 2.2's for the 5B): encodes the "
                                       "motion signal; its compression sets the latent geometry."}),
            "motion_signal": ("IMAGE", {"tooltip": "The crude animation, one image per video frame (SurgSora "
                                                   "Motion Signal); Wan: 4n + 1 frames."}),
            "motion_mask": ("MASK", {"tooltip": "Where the video follows the signal, one mask per frame at the "
                                               "signal's size (SurgSora Motion Signal)."}),
            "cfg": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance scale (VideoLinearCFGGuidance on the model makes "
                                         "it the last frame's)."}),
            **_dual_clock_widgets(),
        }, "optional": {
            "full_sigmas": ("SIGMAS", {"tooltip": "The whole schedule before SplitSigmas: t_weak / t_strong then "
                                                  "count its steps, whatever stage this guider samples."}),
            "preset": (["custom"] + list(PRESETS), {"default": "custom",
                                                         "tooltip": "TTM's published steps (of the whole schedule); "
                                                                    "custom uses t_weak / t_strong."}),
        }}

    RETURN_TYPES = ("GUIDER",)
    RETURN_NAMES = ("guider",)
    OUTPUT_TOOLTIPS = ("For SamplerCustomAdvanced, with the video latent of the same conditioning.",)
    FUNCTION = "get_guider"
    CATEGORY = f"{CATEGORY}/sampling"

    @classmethod
    def VALIDATE_INPUTS(cls, t_weak=None, t_strong=None, preset=None):
        if preset not in (None, "custom"):  # a preset replaces t_weak / t_strong
            return True if preset in PRESETS else (f"preset must be custom or one of {', '.join(PRESETS)}; "
                                                       f"got {preset!r}.")
        return queue_problem(check_settings, t_weak=t_weak, t_strong=t_strong) or True

    @torch.no_grad()
    def get_guider(self, model, positive, negative, vae, motion_signal, motion_mask, cfg=3.0, t_weak=TTM_T_WEAK,
                   t_strong=TTM_T_STRONG, full_sigmas=None, preset=None):
        if preset not in (None, "custom"):
            t_weak, t_strong = PRESETS[preset]
        check_settings(t_weak=t_weak, t_strong=t_strong)  # before any work
        if full_sigmas is not None and not bool(torch.isfinite(full_sigmas).all()):
            raise ValueError("full_sigmas must be finite; connect a scheduler's sigmas.")
        family = model_family(model)
        temporal, spatial = vae_compression(vae)
        signal, mask = _signal_and_mask(motion_signal, motion_mask, 1)
        signal, mask = signal[0], mask[0]  # [F, 3, H, W] in [0, 1], [F, 1, H, W]
        for name, x in (("motion_signal", signal), ("motion_mask", mask)):
            check_unit_range(name, x, "; connect SurgSora Motion Signal.")
        if family == "SVD_img2vid":
            if temporal != 1:
                raise ValueError("SVD samples one latent per frame but this VAE compresses time; connect SVD's VAE.")
            latents, mask = _svd_signal(positive, vae, signal, mask)
        else:
            latents, mask = _video_signal(model, positive, vae, signal, mask, temporal, spatial)
        guider = dual_clock_guider_class()(model, latents, mask, float(t_weak), float(t_strong),
                                           None if full_sigmas is None else full_sigmas.float().cpu())
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return (guider,)


def _svd_signal(positive, vae, signal, mask):
    """SVD: the signal resized to the conditioning's video size, one latent per frame [F, 4, h, w]."""
    frame = _video_latent_size(positive)
    signal = resize_frames(signal.float(), frame[0] * 8, frame[1] * 8)  # as the pipeline: the whole canvas
    latents = vae.encode(signal.movedim(1, -1))  # ComfyUI's VAE: [0, 1] BHWC in, posterior mean out
    return latents.float().cpu(), latent_mask(mask, frame)


def _video_signal(model, positive, vae, signal, mask, temporal, spatial):
    """Wan: the signal at the conditioning's size (WanImageToVideo's latent) or its own (5B), encoded by the video
    VAE to [1, C, T', h, w]; the mask by TTM's rule to [1, 1, T', h, w]."""
    if temporal == 1:
        raise ValueError("A Wan model samples a video latent; connect its video VAE (wan_2.1_vae, or wan2.2_vae for "
                         "the 5B).")
    channels = getattr(getattr(model.model, "latent_format", None), "latent_channels", None)
    if channels is not None and getattr(vae, "latent_channels", channels) != channels:
        raise ValueError(f"The model samples {channels}-channel latents but the VAE makes {vae.latent_channels}; "
                         "connect the model's own VAE (wan2.2_vae for Wan 2.2 TI2V-5B, wan_2.1_vae otherwise).")
    concat = _concat_latent(positive)
    if concat is None and type(model.model).__name__ == "CosmosPredict25":
        raise ValueError("Cosmos-H-Surgical starts from a frame: connect SurgSora Cosmos Image to Video's positive and "
                         "negative (and its latent).")
    check_frame_count(signal.shape[0], temporal, None if concat is None else concat.shape[-3])
    if concat is not None:  # WanImageToVideo: the video size it was set to
        height, width = concat.shape[-2] * spatial, concat.shape[-1] * spatial
    else:
        height, width = signal.shape[-2] // spatial * spatial, signal.shape[-1] // spatial * spatial
        if not height or not width:
            raise ValueError(f"The motion signal is smaller than this VAE's {spatial}x{spatial} latent pixel; make it "
                             "larger.")
    signal = resize_frames(signal.float(), height, width)
    latents = vae.encode(signal.movedim(1, -1)).float().cpu()  # a video VAE takes the frames as one clip
    grid = latent_mask(mask, (height // spatial, width // spatial), temporal)  # [T', 1, h, w]
    return latents, grid.movedim(0, 1)[None]


def _concat_latent(conditioning):
    try:
        return conditioning[0][1].get("concat_latent_image")
    except (IndexError, KeyError, TypeError, AttributeError):
        return None


def _video_latent_size(conditioning) -> tuple[int, int]:
    """(h, w) of the video latent an SVD conditioning was made for (its first-frame latent)."""
    try:
        latent = conditioning[0][1]["concat_latent_image"]
    except (IndexError, KeyError, TypeError):
        raise ValueError("The positive conditioning has no SVD first-frame latent; connect SurgSora SVD "
                         "Conditioning or SVD_img2vid_Conditioning.") from None
    return tuple(latent.shape[-2:])


# the SVD Conditioning widgets that are sampling settings under core SVD_img2vid_Conditioning's names
CONDITIONING_NAMES = {"frames": "video_frames", "noise_aug_strength": "augmentation_level"}


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
            "width": ("INT", {"default": 448, "min": 64, "max": 8192, "step": 64,
                              "tooltip": "Video width in pixels (a multiple of 64; the conditions' width)."}),
            "height": ("INT", {"default": 256, "min": 64, "max": 8192, "step": 64,
                               "tooltip": "Video height in pixels (a multiple of 64; the conditions' height)."}),
            "video_frames": ("INT", {"default": 21, "min": 2, "max": MAX_FRAMES,
                                     "tooltip": "Frames to generate (the trajectories' frame count)."}),
            "motion_bucket_id": ("INT", {"default": 127, "min": 0, "max": MAX_MOTION_BUCKET,
                                         "tooltip": "SVD's motion amount id: higher asks for more motion."}),
            "fps": ("INT", {"default": 7, "min": 1, "max": int(MAX_FPS),
                            "tooltip": "SVD's fps id is fps - 1 (SurgSora adapters are trained at 7)."}),
            "augmentation_level": ("FLOAT", {"default": 0.02, "min": 0.0, "max": 1.0, "step": 0.01,
                                             "tooltip": "Noise added to the frame in [-1, 1] before the VAE."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "tooltip": "Seed of the noise augmentation."}),
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
        mm = _comfy("comfy.model_management")
        check_settings(names=CONDITIONING_NAMES, frames=video_frames, motion_bucket_id=motion_bucket_id, fps=fps,
                       noise_aug_strength=augmentation_level, seed=seed)
        check_video_size(width, height)
        x = image_to_bchw(init_image, "init_image")[:1]
        config = None if adapter is None else adapter.config
        normalize = clip_normalize(config)
        pixels = clip_pixels(x, getattr(clip_vision, "image_size", 224),  # (older ComfyUI: always 224)
                             clip_vision.image_mean if normalize else None, clip_vision.image_std if normalize else None)
        mm.load_model_gpu(clip_vision.patcher)
        out = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device).float(), intermediate_output=-2)
        pooled = out[2].to(mm.intermediate_device()).unsqueeze(0)

        frame = resize_frames(x, height, width) * 2 - 1  # as the pipeline encodes the first frame, in [-1, 1]
        noise = torch.randn(frame.shape, generator=torch.Generator().manual_seed(int(seed)))
        noisy = noise_augmented(frame, augmentation_level, noise)
        latent = vae.encode(((noisy + 1) / 2).movedim(1, -1))  # ComfyUI's VAE takes [0, 1] and maps it itself
        fps_id, bucket, level = time_ids(config, fps, motion_bucket_id, augmentation_level)
        ids = dict(fps=fps_id + 1, motion_bucket_id=bucket, augmentation_level=level)  # core subtracts 1 from fps
        positive = [[pooled, {**ids, "concat_latent_image": latent}]]
        negative = [[torch.zeros_like(pooled), {**ids, "concat_latent_image": torch.zeros_like(latent)}]]
        empty = torch.zeros([video_frames, 4, height // 8, width // 8])
        return (positive, negative, {"samples": empty})


NODE_CLASS_MAPPINGS = {
    "SurgSoraApplySVD": SurgSoraApplySVD,
    "SurgSoraSVDConditioning": SurgSoraSVDConditioning,
    "SurgSoraDualClockGuider": SurgSoraDualClockGuider,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SurgSoraApplySVD": "SurgSora Apply (SVD)",
    "SurgSoraSVDConditioning": "SurgSora SVD Conditioning",
    "SurgSoraDualClockGuider": "SurgSora Dual-Clock Guider",
}
