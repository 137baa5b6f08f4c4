"""Tiny Wan models that ComfyUI 0.8.0 detects, and the dual-clock guider measured on them. Run by ComfyUI's Python;
prints one JSON line of measured values (held to the issue's bounds by ``test_wan_dual_clock.py``).

    COMFYUI_PATH=... $COMFYUI_PYTHON tests/integration/wan_models.py

Models, written at test time with random weights and every key of the real files (built from ComfyUI's own
classes, so no key is missing), loaded back through ComfyUI's detection:

* a Wan 2.2 I2V A14B-layout DiT (``model_type`` t2v, 36 input channels = 16 latent + 4 mask + 16 image; ComfyUI:
  ``WAN21``), dim 128 (detection reads ``num_heads = dim // 128``), one block;
* a Wan 2.2 TI2V-5B-layout DiT (48 latent channels in and out; ComfyUI: ``WAN22``);
* a Wan 2.1 VAE at width 16 (ComfyUI reads the width from ``decoder.head.0.gamma``), x4 in time, x8 in space.

The 5B's Wan 2.2 VAE has a fixed width in ComfyUI (1.4 GB), so its x16 geometry is exercised through a stand-in
with that VAE's attributes. CONDITIONING is made here (umt5's config is fixed): [1, L, 4096] tensors.

Known answers, all with Euler and the same seed and noise (see the test for the bounds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


TEXT_DIM, DIM = 4096, 128
FRAMES, H, W = 9, 64, 64  # 3 latent frames of 8x8 (Wan 2.1 VAE) or 4x4 (Wan 2.2 VAE)


def _fill(module, seed: int, scale: float = 0.05) -> None:
    """Random weights in place (ComfyUI's ops leave them uninitialised): norms ~1, the rest small."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name or name.endswith("gamma"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def _cpu_comfy() -> None:
    """ComfyUI on the CPU when imported here first (its memory manager picks a device on import)."""
    if "comfy.model_management" not in sys.modules:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True


def tiny_wan_state(latent_channels: int = 16, image_to_video: bool = True, seed: int = 0, dim: int = DIM,
                   layers: int = 1) -> dict:
    """Every key of a Wan 2.x DiT (ComfyUI's own WanModel), at ``dim`` (a multiple of 128) with ``layers`` blocks."""
    _cpu_comfy()
    import comfy.ldm.wan.model
    import comfy.ops

    in_dim = latent_channels + (latent_channels + 4 if image_to_video else 0)
    model = comfy.ldm.wan.model.WanModel(model_type="t2v", in_dim=in_dim, out_dim=latent_channels, dim=dim,
                                         ffn_dim=2 * dim, num_heads=dim // 128, num_layers=layers, text_dim=TEXT_DIM,
                                         operations=comfy.ops.disable_weight_init)
    _fill(model, seed)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def tiny_wan21_vae_state(dim: int = 16, seed: int = 0) -> dict:
    """Every key of the Wan 2.1 VAE (ComfyUI's WanVAE) at width ``dim``."""
    _cpu_comfy()
    import comfy.ldm.wan.vae

    vae = comfy.ldm.wan.vae.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                   temperal_downsample=[False, True, True])
    _fill(vae, seed, 0.1)
    return {k: v.contiguous() for k, v in vae.state_dict().items()}


def write_tiny_wan(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """The tiny files under the Comfy-Org names the Wan templates load (``diffusion_models``, ``vae``)."""
    import safetensors.torch

    root = Path(root)
    files = {
        "diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors": tiny_wan_state(16, True, seed),
        "diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors": tiny_wan_state(16, True, seed + 1),
        "diffusion_models/wan2.2_ti2v_5B_fp16.safetensors": tiny_wan_state(48, True, seed + 2),
        "vae/wan_2.1_vae.safetensors": tiny_wan21_vae_state(seed=seed + 3),
    }
    out = {}
    for name, state in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(state, str(path))
        out[name] = path
    return out


class Wan22VAEStandIn:
    """The Wan 2.2 VAE's geometry (x4 time, x16 space, 48 channels) with a cheap encoder (16x16 means per 4 frames)
    and decoder (its inverse, for VAEDecode): ComfyUI builds that VAE at its full width only (1.4 GB)."""
    downscale_index_formula = (4, 16, 16)
    latent_channels = 48

    def decode(self, latent):
        import torch

        x = latent[0, :3].float().clamp(0, 1)  # [3, T', h, w]
        x = torch.cat([x[:, :1], x[:, 1:].repeat_interleave(4, 1)], 1)
        return x.repeat_interleave(16, 2).repeat_interleave(16, 3).movedim(0, -1)  # [T, H, W, 3]

    def encode(self, pixels):
        import torch

        x = pixels.movedim(-1, 0)[None]  # [1, 3, T, H, W]
        first = torch.nn.functional.avg_pool3d(x[:, :, :1], (1, 16, 16))
        parts = [first] + ([torch.nn.functional.avg_pool3d(x[:, :, 1:], (4, 16, 16))] if x.shape[2] > 1 else [])
        return torch.cat(parts, 2).repeat(1, 16, 1, 1, 1)


class SurgSoraTestWanText:
    """Test-only CONDITIONING for Wan (umt5-xxl's config is fixed: no tiny text encoder loads): [1, 8, 4096] noise."""
    RETURN_TYPES, FUNCTION, CATEGORY = ("CONDITIONING",), "encode", "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31})}}

    def encode(self, seed):
        import torch

        return ([[torch.randn(1, 8, TEXT_DIM, generator=torch.Generator().manual_seed(seed)), {}]],)


class SurgSoraTestWan22VAE:
    """Test-only VAE: :class:`Wan22VAEStandIn` (the 5B's VAE geometry) in place of VAELoader(wan2.2_vae)."""
    RETURN_TYPES, FUNCTION, CATEGORY = ("VAE",), "load", "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return (Wan22VAEStandIn(),)


# when copied into a test server's custom_nodes (never shipped with the pack)
NODE_CLASS_MAPPINGS = {"SurgSoraTestWanText": SurgSoraTestWanText, "SurgSoraTestWan22VAE": SurgSoraTestWan22VAE}


def main() -> None:
    from in_comfyui import load_pack, start

    start()
    load_pack()
    core_svd = sys.modules["ComfyUI_SurgSora.nodes.core_svd"]
    import comfy.sd

    result = {}
    a14b = comfy.sd.load_diffusion_model_state_dict(tiny_wan_state(16, True, 0))
    a14b_low = comfy.sd.load_diffusion_model_state_dict(tiny_wan_state(16, True, 1))
    ti2v = comfy.sd.load_diffusion_model_state_dict(tiny_wan_state(48, True, 2))
    vae = comfy.sd.VAE(sd=tiny_wan21_vae_state())
    result["a14b_class"] = type(a14b.model).__name__
    result["ti2v_class"] = type(ti2v.model).__name__
    result["vae21_compression"] = list(core_svd.vae_compression(vae))
    result["vae22_compression"] = list(core_svd.vae_compression(Wan22VAEStandIn()))
    result.update(measure(core_svd, a14b, a14b_low, ti2v, vae))
    print(json.dumps(result))


def measure(core_svd, a14b, a14b_low, ti2v, vae) -> dict:
    import comfy.samplers
    import torch
    from comfy_extras.nodes_wan import Wan22ImageToVideoLatent, WanImageToVideo

    g = torch.Generator().manual_seed(0)
    out = {}
    steps, t_weak, t_strong = 8, 0.25, 0.5  # indices 2 and 4 of 8
    text = torch.randn(1, 8, TEXT_DIM, generator=g)
    image = torch.rand(1, H, W, 3, generator=g)
    positive, negative, latent = WanImageToVideo.execute([[text, {}]], [[torch.zeros_like(text), {}]], vae, W, H,
                                                         FRAMES, 1, start_image=image).result
    latent = latent["samples"]  # [1, 16, 3, 8, 8]
    signal = torch.randn(latent.shape, generator=g) * 2  # raw VAE latents (ComfyUI scales them in)
    noise = torch.randn(latent.shape, generator=g)
    mask = (torch.rand(1, 1, *latent.shape[2:], generator=g) > 0.5).float()
    sigmas = comfy.samplers.calculate_sigmas(a14b.get_model_object("model_sampling"), "simple", steps).float()
    euler = comfy.samplers.sampler_object("euler")
    Guider = core_svd.dual_clock_guider_class()
    cfg = 2.0

    def conds(g_):
        g_.set_conds(positive, negative)
        g_.set_cfg(cfg)
        return g_

    def guided(m, weak=t_weak, strong=t_strong, model=a14b, sig=sigmas, full=None, x=None, n=noise, sgn=signal):
        guider = conds(Guider(model, sgn, m, weak, strong, full))
        return guider.sample(n, latent if x is None else x, euler, sig, seed=0)

    def plain(sig, start, model=a14b, n=noise, denoise_mask=None):
        return conds(comfy.samplers.CFGGuider(model)).sample(n, start, euler, sig, denoise_mask=denoise_mask, seed=0)

    def ttm(model, x, sigmas_, extra_args, callback=None, disable=None):
        # Time-to-Move's Wan loop (flow-matching Euler): step, then while before t_strong put the masked latents
        # back on the reference noised to the next sigma, (1 - s) ref + s noise (the reference itself at s = 0)
        ref = model.latent_image
        for i in range(len(sigmas_) - 1):
            denoised = model(x, sigmas_[i] * x.new_ones([x.shape[0]]), **extra_args)
            x = x + (x - denoised) / sigmas_[i] * (sigmas_[i + 1] - sigmas_[i])
            if i < 4 - 2:  # t_strong 4 - t_weak 2 steps anchored
                s = sigmas_[i + 1]
                x = x * (1 - mask) + ((1 - s) * ref + s * model.noise) * mask
        return x

    scale = signal.abs().max().item()
    out["scale"] = scale
    reference = conds(comfy.samplers.CFGGuider(a14b)).sample(noise, signal, comfy.samplers.KSAMPLER(ttm), sigmas[2:],
                                                             seed=0)
    res = guided(mask)
    out["ttm_loop_max_abs"] = (res - reference).abs().max().item()
    out["free_region_vs_sdedit"] = (res - plain(sigmas[2:], signal)).abs().mul(1 - mask).max().item()
    empty_run = guided(torch.zeros_like(mask))
    out["empty_mask_vs_plain_from_t_weak"] = (empty_run - plain(sigmas[2:], signal)).abs().max().item()
    out["full_mask_to_end_vs_signal"] = (guided(torch.ones_like(mask), t_weak, 1.0) - signal).abs().max().item()
    out["full_mask_to_t_strong_vs_plain_from_t_strong"] = (guided(torch.ones_like(mask)) -
                                                           plain(sigmas[4:], signal)).abs().max().item()

    # the node: TTM's temporal rule through the real tiny Wan 2.1 VAE
    node = core_svd.SurgSoraDualClockGuider()
    frames = torch.rand(FRAMES, H, W, 3, generator=g)

    def node_guider(pixel_mask, strong=t_strong, **kw):
        (guider,) = node.get_guider(a14b, positive, negative, vae, frames, pixel_mask, cfg, t_weak, strong, **kw)
        return guider

    empty = torch.zeros(FRAMES, H, W)
    on2, on1 = empty.clone(), empty.clone()
    on2[2], on1[1] = 1, 1
    g_empty, g_on2, g_on1 = node_guider(empty), node_guider(on2), node_guider(on1, 1.0)
    out["node_signal_shape"] = list(g_empty.signal.shape)
    out["node_mask_shape"] = list(g_empty.mask.shape)
    expected = vae.encode(frames)
    out["node_signal_vs_vae"] = (g_empty.signal - expected).abs().max().item()
    out["node_mask_frame2_sum"] = g_on2.mask.sum().item()
    out["node_mask_frame1_per_latent_frame"] = g_on1.mask.sum(dim=(0, 1, 3, 4)).tolist()
    run_empty = g_empty.sample(noise, latent, euler, sigmas, seed=0)
    out["mask_on_frame2_vs_empty"] = (g_on2.sample(noise, latent, euler, sigmas, seed=0) - run_empty).abs().max().item()
    run_on1 = g_on1.sample(noise, latent, euler, sigmas, seed=0)
    out["mask_on_frame1_latent1_vs_signal"] = (run_on1[:, :, 1] - g_on1.signal[:, :, 1]).abs().max().item()
    out["mask_on_frame1_other_frames_vs_signal"] = min((run_on1[:, :, i] - g_on1.signal[:, :, i]).abs().max().item()
                                                        for i in (0, 2))
    # at 81 frames (21 latent frames) core's own inpainting resize (trilinear reshape_mask) anchors part of a
    # frame-2 mask; TTM's rule does not
    import comfy.utils
    from surgsora.sampling.dual_clock import latent_mask

    on81 = torch.zeros(81, 1, 8, 8)
    on81[2] = 1
    out["core_reshape_mask_81_frame2_max"] = comfy.utils.reshape_mask(on81.movedim(0, 1)[None],
                                                                      [1, 16, 21, 8, 8]).max().item()
    rule = latent_mask(on81, (8, 8), 4)
    out["ttm_rule_81_frame2_shape_sum"] = [*rule.shape, rule.sum().item()]
    for name, kw in (("frame_mismatch", dict(frames=FRAMES - 1)), ("nan_signal", dict(nan=True))):
        f = frames[:kw["frames"]] if "frames" in kw else frames.clone().fill_(float("nan"))
        try:
            node.get_guider(a14b, positive, negative, vae, f, empty[:f.shape[0]], cfg, t_weak, t_strong)
            out[f"error_{name}"] = ""
        except ValueError as e:
            out[f"error_{name}"] = str(e)

    # A14B split at step 5 of 8 (SplitSigmas): high-noise stage with this guider and full_sigmas, low-noise stage
    # with a plain guider and no added noise, equals one unsplit run (same model for both stages here)
    split = 5
    stage1 = guided(mask, full=sigmas, sig=sigmas[:split + 1])
    zero = torch.zeros_like(noise)
    two_stage = plain(sigmas[split:], stage1, n=zero)
    unsplit = guided(mask, full=sigmas)
    out["split_vs_unsplit"] = (two_stage - unsplit).abs().max().item()
    out["split_without_full_sigmas_vs_unsplit"] = (plain(sigmas[split:], guided(mask, sig=sigmas[:split + 1]),
                                                         n=zero) - unsplit).abs().max().item()
    out["two_experts_ran"] = (plain(sigmas[split:], stage1, model=a14b_low, n=zero) - two_stage).abs().max().item()
    try:
        guided(mask, strong=0.75, full=sigmas, sig=sigmas[:split + 1])
        out["error_t_strong_past_stage"] = ""
    except ValueError as e:
        out["error_t_strong_past_stage"] = str(e)

    # Wan 2.2 TI2V-5B: Wan22ImageToVideoLatent's first frame (its noise_mask) is kept, the rest anchored
    (lat5,) = Wan22ImageToVideoLatent.execute(Wan22VAEStandIn(), W, H, FRAMES, 1, start_image=image).result
    pos5, neg5 = [[text, {}]], [[torch.zeros_like(text), {}]]
    (g5,) = node.get_guider(ti2v, pos5, neg5, Wan22VAEStandIn(), frames, torch.ones(FRAMES, H, W), cfg, t_weak, 1.0)
    out["ti2v_signal_shape"] = list(g5.signal.shape)
    n5 = torch.randn(g5.signal.shape, generator=g)
    res5 = g5.sample(n5, lat5["samples"], euler, sigmas, denoise_mask=lat5["noise_mask"], seed=0)
    out["ti2v_first_frame_vs_start_latent"] = (res5[:, :, :1] - lat5["samples"][:, :, :1]).abs().max().item()
    out["ti2v_rest_vs_signal"] = (res5[:, :, 1:] - g5.signal[:, :, 1:]).abs().max().item()
    (g5e,) = node.get_guider(ti2v, pos5, neg5, Wan22VAEStandIn(), frames, torch.zeros(FRAMES, H, W), cfg, t_weak,
                             t_strong)
    start5 = g5e.signal * lat5["noise_mask"] + lat5["samples"] * (1 - lat5["noise_mask"])
    plain5 = comfy.samplers.CFGGuider(ti2v)
    plain5.set_conds(pos5, neg5)
    plain5.set_cfg(cfg)
    ref5 = plain5.sample(n5, start5, euler, sigmas[2:], denoise_mask=lat5["noise_mask"], seed=0)
    run5 = g5e.sample(n5, lat5["samples"], euler, sigmas, denoise_mask=lat5["noise_mask"], seed=0)
    out["ti2v_empty_mask_vs_plain_from_t_weak"] = (run5 - ref5).abs().max().item()
    return out


if __name__ == "__main__":
    main()
