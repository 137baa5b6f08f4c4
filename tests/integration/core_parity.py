"""Run by ComfyUI's Python: ComfyUI's own SVD UNet vs the diffusers UNet with the same weights, and the
SurgSora control through ComfyUI's machinery. Prints one JSON line of measured differences.

    COMFYUI_PATH=... $COMFYUI_PYTHON tests/integration/core_parity.py

A tiny SVD UNet (diffusers class, random weights, widths whose attention heads are 64 channels as
ComfyUI's SVD detection assumes) is written with our sgm <-> diffusers key table as
``model.diffusion_model.*`` and loaded by ``comfy.sd.load_diffusion_model_state_dict`` (ComfyUI detects
SVD from the keys). Both UNets then denoise the same input:

* plain (``apply_model`` vs :func:`surgsora.model.unet.unet_forward`, EDM v-prediction denoised output);
* with adapter residuals handed over as ComfyUI control (``output`` per skip, ``middle``);
* through ``SurgSoraControl.get_control`` (what core KSampler calls), against the adapter called directly;
* ComfyUI's ``y`` (SVD's micro-conditioning embedding) against diffusers' projection of the same ids;
* ``SurgSora Dual-Clock Guider`` through core sampling (Euler, with the SurgSora control on the same
  conditioning) against Time-to-Move's loop written here from its description (step, then re-anchor the
  masked latents to the signal noised to the next sigma until t_strong), plus its two limits: an empty mask
  is plain sampling from t_weak, a full mask to the end returns the signal; and against the guider as it was
  before it anchored in its own model call (core's inpainting rule through ``denoise_mask``, kept here as
  :func:`inpainting_rule_guider`): on SVD the two are equal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from in_comfyui import load_pack, start  # noqa: E402

start(threads=None)
import torch  # noqa: E402
from diffusers import UNetSpatioTemporalConditionModel  # noqa: E402

from surgsora import SurgSoraAdapter  # noqa: E402
from surgsora.loading.svd_checkpoint import UNET_PREFIX  # noqa: E402
from surgsora.model.unet import unet_forward  # noqa: E402

FRAMES, H, W = 3, 8, 8
FPS, BUCKET, AUG = 7, 127, 0.02


def tiny_unet() -> UNetSpatioTemporalConditionModel:
    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(64, 128), layers_per_block=1, sample_size=H, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=64, num_attention_heads=(1, 2), projection_class_embeddings_input_dim=768,
        addition_time_embed_dim=256, num_frames=FRAMES)
    with torch.no_grad():  # non-trivial norms and biases, so every path carries signal
        for name, p in unet.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return unet.eval()


def sgm_unet_state(unet) -> dict:
    from svd_export import to_single_file_state_dict  # the key table, run backwards

    from surgsora.tiny import tiny_svd_components

    parts = tiny_svd_components()
    state = to_single_file_state_dict(unet, parts["vae"], parts["image_encoder"])
    return {k[len(UNET_PREFIX):]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}


def main() -> None:
    import comfy.model_management as mm

    load_pack()
    control_class = sys.modules["ComfyUI_SurgSora.nodes.core_svd"].control_class
    Conditions = sys.modules["ComfyUI_SurgSora.nodes.generation"].Conditions

    import comfy.model_detection
    import comfy.model_patcher
    import comfy.supported_models

    unet = tiny_unet()
    sd = sgm_unet_state(unet)
    # ComfyUI's detection only knows full-size SVD (model_channels 320); at tiny widths build its SVD model
    # class from the detected config ourselves, exactly as load_diffusion_model_state_dict does next.
    config = comfy.supported_models.SVD_img2vid(comfy.model_detection.detect_unet_config(sd, ""))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model(sd, "")
    model.load_model_weights(sd, "")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    mm.load_models_gpu([patcher])
    model = patcher.model
    result = {"model_class": type(model).__name__}

    g = torch.Generator().manual_seed(1)
    sigma = torch.tensor([2.5] * FRAMES)
    x = torch.randn(FRAMES, 4, H, W, generator=g) * 2.5
    c_concat = torch.randn(FRAMES, 4, H, W, generator=g)
    context = torch.randn(1, 1, 64, generator=g)
    y = model.encode_adm(fps=FPS, motion_bucket_id=BUCKET, augmentation_level=AUG)  # [1, 768]
    ids = torch.tensor([[FPS - 1, BUCKET, AUG]], dtype=torch.float32)
    result["y_vs_diffusers_projection"] = (y - unet.add_time_proj(ids.flatten()).reshape(1, -1)).abs().max().item()

    def comfy_denoised(control=None):
        with torch.no_grad():
            return model.apply_model(x, sigma, c_concat=c_concat, c_crossattn=context.repeat(FRAMES, 1, 1),
                                     y=y.repeat(FRAMES, 1), num_video_frames=FRAMES, control=control)

    s = sigma[0]
    sample = torch.cat([x / (s ** 2 + 1) ** 0.5, c_concat], 1)[None]

    def diffusers_denoised(down=None, mid=None):
        with torch.no_grad():
            v = unet_forward(unet, sample, 0.25 * s.log(), context, ids, down, mid)[0]
        return x / (s ** 2 + 1) - s / (s ** 2 + 1) ** 0.5 * v  # EDM v-prediction, sigma_data 1

    plain = diffusers_denoised()
    result["plain_max_abs"] = (comfy_denoised() - plain).abs().max().item()

    adapter = SurgSoraAdapter.from_unet(unet, conditioning_embedding_channels=(8, 8, 8, 16),
                                        depth_hidden_channels=(8, 16)).eval()
    with torch.no_grad():
        for p in adapter.parameters():
            if not p.any():
                p.normal_(0, 0.05, generator=g)
        image = torch.rand(1, 3, H * 8, W * 8, generator=g) * 2 - 1
        conds = adapter.encode_conditions(image, torch.rand(1, 1, H * 8, W * 8, generator=g),
                                          torch.randn(1, 256, 64, 64, generator=g),
                                          torch.randn(1, FRAMES - 1, 2, H * 8, W * 8, generator=g) * 3)
        down, mid = adapter(sample, 0.25 * s.log(), context, ids, conds)
    steered = diffusers_denoised(down, mid)
    result["residual_effect"] = (steered - plain).abs().max().item()
    control = {"input": [], "middle": [mid.clone()], "output": [d.clone() for d in down]}
    result["with_residuals_max_abs"] = (comfy_denoised(control) - steered).abs().max().item()

    # the control class as core's sampler drives it
    Control = control_class()
    ctrl = Control(adapter, Conditions([c.cpu() for c in conds], image)).set_cond_hint(None, 1.0, (0.0, 1.0))
    ctrl.pre_run(model, lambda p: model.model_sampling.percent_to_sigma(p))
    mm.load_models_gpu([patcher] + ctrl.get_models())  # the adapter under ComfyUI's memory manager, as KSampler does
    result["adapter_loaded"] = any(m.model is ctrl.get_models()[0] for m in mm.current_loaded_models)
    cond = {"c_concat": c_concat, "c_crossattn": context.repeat(FRAMES, 1, 1), "y": y.repeat(FRAMES, 1),
            "num_video_frames": FRAMES}
    out = ctrl.get_control(x, sigma, cond, 1, {})
    result["control_output_max_abs"] = max((a - b).abs().max().item() for a, b in zip(out["output"], down))
    result["control_middle_max_abs"] = (out["middle"][0] - mid).abs().max().item()
    result["control_input_entries"] = len(out["input"])
    result["control_models"] = [type(m).__name__ for m in ctrl.get_models()]
    result["control_memory_bytes"] = int(ctrl.inference_memory_requirements(torch.float32))
    result["control_in_denoise_max_abs"] = (comfy_denoised(out) - steered).abs().max().item()
    ctrl.cleanup()

    result.update(dual_clock(patcher, adapter, Conditions([c.cpu() for c in conds], image), context, g))
    print(json.dumps(result))


def inpainting_rule_guider():
    """The SVD dual-clock guider as it was first shipped: core CFG with ComfyUI's inpainting rule
    (``KSamplerX0Inpaint``) switched on by the motion mask until t_strong through ``denoise_mask``."""
    import comfy.model_patcher
    import comfy.samplers

    from surgsora.sampling.dual_clock import dual_clock_indices

    class InpaintingRuleGuider(comfy.samplers.CFGGuider):
        def __init__(self, model_patcher, signal, mask, t_weak, t_strong):
            super().__init__(model_patcher)
            self.signal, self.mask, self.t_weak, self.t_strong = signal, mask, t_weak, t_strong

        def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                   seed=None):
            weak, strong = dual_clock_indices(self.t_weak, self.t_strong, sigmas.shape[-1] - 1)
            sigmas = sigmas[weak:]
            boundary = float(sigmas[strong - weak])

            def follow_until_t_strong(sigma, mask, extra_options):
                return mask if float(sigma.max()) > boundary * (1 + 1e-4) else torch.ones_like(mask)

            options = self.model_options
            self.model_options = comfy.model_patcher.create_model_options_clone(options)
            self.model_options["denoise_mask_function"] = follow_until_t_strong
            try:
                return super().sample(noise, self.signal.to(latent_image), sampler, sigmas,
                                      denoise_mask=1 - self.mask.to(latent_image), callback=callback,
                                      disable_pbar=disable_pbar, seed=seed)
            finally:
                self.model_options = options

    return InpaintingRuleGuider


def dual_clock(patcher, adapter, conditions, context, g) -> dict:
    """The dual-clock guider against an independent TTM loop on the same ComfyUI model (see module doc)."""
    import comfy.samplers

    core_svd = sys.modules["ComfyUI_SurgSora.nodes.core_svd"]
    steps, t_weak, t_strong = 6, 0.34, 0.67  # indices 2 and 4 of 6
    ids = {"fps": FPS, "motion_bucket_id": BUCKET, "augmentation_level": AUG}
    first = torch.randn(1, 4, H, W, generator=g)
    positive = [[context, {**ids, "concat_latent_image": first}]]
    negative = [[torch.zeros_like(context), {**ids, "concat_latent_image": torch.zeros_like(first)}]]
    positive, negative = core_svd.SurgSoraApplySVD().apply(positive, negative, adapter, conditions)
    signal = torch.randn(FRAMES, 4, H, W, generator=g) * 5  # raw VAE latents (ComfyUI scales them in)
    mask = (torch.rand(FRAMES, 1, H, W, generator=g) > 0.5).float()
    noise = torch.randn(FRAMES, 4, H, W, generator=g)
    sigmas = comfy.samplers.calculate_sigmas(patcher.model.model_sampling, "karras", steps).float()
    euler = comfy.samplers.sampler_object("euler")
    Guider = core_svd.dual_clock_guider_class()

    def guided(m, weak=t_weak, strong=t_strong, guider_class=Guider):
        guider = guider_class(patcher, signal, m, weak, strong)
        guider.set_conds(positive, negative)
        guider.set_cfg(2.5)
        return guider.sample(noise, torch.zeros_like(signal), euler, sigmas, seed=0)

    # SVD: the model-call anchoring equals the first shipped guider (core's inpainting rule), bit for bit
    before = inpainting_rule_guider()
    cases = [(mask, t_weak, t_strong), (torch.zeros_like(mask), t_weak, t_strong), (torch.ones_like(mask), t_weak, 1.0),
             (mask, 0.0, 0.5), (mask, t_weak, 1.0)]
    svd_vs_before = max((guided(m, w, s_) - guided(m, w, s_, before)).abs().max().item() for m, w, s_ in cases)

    def ttm(model, x, sigmas, extra_args, callback=None, disable=None):
        # Time-to-Move: after each step before t_strong, the masked latents become the signal noised to the
        # next sigma (the sampler's noise); from t_strong on the model denoises freely.
        anchor = model.latent_image
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]), **extra_args)
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
            if i < 4 - 2:  # t_strong 4 - t_weak 2 steps anchored
                x = mask * (anchor + model.noise * sigmas[i + 1]) + (1 - mask) * x
        return x

    plain = comfy.samplers.CFGGuider(patcher)
    plain.set_conds(positive, negative)
    plain.set_cfg(2.5)
    reference = plain.sample(noise, signal, comfy.samplers.KSAMPLER(ttm), sigmas[2:], seed=0)
    sdedit = plain.sample(noise, signal, euler, sigmas[2:], seed=0)
    out = guided(mask)
    # the node: signal images resized to the conditioning's video size, encoded by the VAE it is given
    class MeanVAE:  # stands in for SVD's VAE: 8x8 means of the 3 channels, and one more
        def encode(self, pixels):
            x = torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1), 8)
            return torch.cat([x, x.mean(1, keepdim=True)], 1)

    images = torch.rand(FRAMES, H * 16, W * 16, 3, generator=g)
    masks = (torch.rand(FRAMES, H * 16, W * 16, generator=g) > 0.5).float()
    (node_guider,) = core_svd.SurgSoraDualClockGuider().get_guider(patcher, positive, negative, MeanVAE(), images,
                                                                   masks, 2.5, t_weak, t_strong)
    expected = MeanVAE().encode(torch.nn.functional.interpolate(images.movedim(-1, 1), size=(H * 8, W * 8),
                                                                mode="bilinear", antialias=True).movedim(1, -1))
    try:
        guided(mask, 0.9, 0.5)
        order_error = ""
    except ValueError as e:
        order_error = str(e)
    return {
        "dual_clock_vs_ttm_max_abs": (out - reference).abs().max().item(),
        "dual_clock_scale": reference.abs().max().item(),
        "dual_clock_free_region_changed": (out - signal).abs().mul(1 - mask).max().item(),
        "dual_clock_vs_sdedit_in_free_region": (out - sdedit).abs().mul(1 - mask).max().item(),
        "dual_clock_empty_mask_vs_sdedit": (guided(torch.zeros_like(mask)) - sdedit).abs().max().item(),
        "dual_clock_full_mask_to_end_vs_signal": (guided(torch.ones_like(mask), t_weak, 1.0) - signal).abs().max().item(),
        "dual_clock_node_signal_max_abs": (node_guider.signal - expected).abs().max().item(),
        "dual_clock_node_mask_on_latent_grid": list(node_guider.mask.shape),
        "dual_clock_node_mask_binary": bool(((node_guider.mask == 0) | (node_guider.mask == 1)).all()),
        "dual_clock_bad_order": order_error,
        "dual_clock_vs_inpainting_rule_guider": svd_vs_before,
    }


if __name__ == "__main__":
    main()
