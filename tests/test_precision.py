"""Half precision on the CPU, every path: splatting, the motion signal, SAM and Depth Anything, the SurgSora, MOFA and
dual-clock pipelines, one bf16 training step. Each half result is finite and within a stated tolerance of fp32.

Tolerances (largest absolute difference; videos and images are in [0, 1]):

* splats and the motion signal: the fp32 result of the same (rounded) inputs to one unit in the last place of the
  output dtype, since everything inside runs in fp32 (``splat._work_dtype``). A splat that worked in half instead
  is off by far more (``test_splat_in_half_inside_would_fail_the_tolerance``): the tolerance is not vacuous.
* pipelines (tiny random models, 3-4 steps): fp16 0.02, bf16 0.12 on the decoded video. Measured on this CPU:
  SurgSora fp16 0.004 / bf16 0.045, dual-clock fp16 0.005 / bf16 0.05, MOFA fp16 ~0.002 / bf16 ~0.03. Each test
  also checks that the tolerance is at most a fifth of what the control changes in fp32 (adapter on vs off, the
  signal vs none), so a half path that lost the control would fail.
* SAM embedding and depth: relative to the fp32 output's range, fp16 1e-2, bf16 6e-2.
* one training step with ``--mixed-precision bf16``: its loss within 2% of the fp32 step's (measured 0.1%), finite.
"""

from __future__ import annotations

import copy

import pytest
import torch

from surgsora import SurgSoraAdapter, SurgSoraPipeline
from surgsora.motion import splat
from surgsora.motion.preview import motion_signal
from surgsora.motion.splat import forward_splat, forward_splat_video, softmax_splat, sum_splat
from surgsora.tiny import tiny_adapter, tiny_svd_components

HALF = (torch.float16, torch.bfloat16)
VIDEO_TOL = {torch.float16: 0.02, torch.bfloat16: 0.12}
H = W = 64
T = 4


def _ulp(dtype: torch.dtype, ref: torch.Tensor) -> float:
    return torch.finfo(dtype).eps * max(1.0, ref.abs().max().item())


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------------------ splatting

def _splat_inputs(h=24, w=512, seed=0):
    """Features, a sub-pixel flow on a wide frame (target x near 500: fp16 resolves 0.25-0.5 px there) and a
    metric up to 50 (exp(50) overflows fp16 and bf16 alike is not the problem: the weight sums are)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(2, 3, h, w, generator=g)
    flow = torch.randn(2, 2, h, w, generator=g) * 2 + 0.3
    metric = torch.rand(2, 1, h, w, generator=g) * 50
    return feats, flow, metric


@pytest.mark.parametrize("dtype", HALF)
def test_splats_in_half_equal_fp32_of_the_same_inputs(dtype):
    feats, flow, metric = _splat_inputs()
    f16, fl16, m16 = feats.to(dtype), flow.to(dtype), metric.to(dtype)
    cases = {
        "forward_splat": (lambda f, fl, m: forward_splat(f, fl)),
        "forward_splat softsplat": (lambda f, fl, m: forward_splat(f, fl, normalize="softsplat")),
        "sum_splat": (lambda f, fl, m: sum_splat(f, fl)),
        "softmax_splat": (lambda f, fl, m: softmax_splat(f, fl, m)),
        "softmax_splat coverage": (lambda f, fl, m: softmax_splat(f, fl, m, return_coverage=True)[1]),
    }
    for name, fn in cases.items():
        ref = fn(f16.float(), fl16.float(), m16.float())
        half = fn(f16, fl16, m16)
        assert half.dtype == dtype, name
        assert bool(torch.isfinite(half).all()), name
        assert _diff(half, ref) <= _ulp(dtype, ref), (name, _diff(half, ref))
        mixed = fn(f16, fl16.float(), m16.float())  # half features, fp32 flow (what the adapter hands the DFM)
        assert mixed.dtype == dtype and _diff(mixed, ref) <= _ulp(dtype, ref), name


def test_splat_in_half_inside_would_fail_the_tolerance(monkeypatch):
    """The same comparison with the fp32 promotion removed (target positions and weight sums in fp16) fails
    by far more than the tolerance: the tolerance above tests something."""
    feats, flow, metric = _splat_inputs()
    f16, fl16 = feats.half(), flow.half()
    ref = forward_splat(f16.float(), fl16.float())
    monkeypatch.setattr(splat, "_work_dtype", lambda dtype: dtype)
    wrong = forward_splat(f16, fl16)
    assert _diff(wrong, ref) > 20 * _ulp(torch.float16, ref)


@pytest.mark.parametrize("dtype", HALF)
def test_video_splat_and_motion_signal_in_half(dtype):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 48, 64, generator=g).to(dtype)
    flow = (torch.randn(1, 3, 2, 48, 64, generator=g) * 3).to(dtype)
    depth = torch.rand(1, 1, 48, 64, generator=g).to(dtype)
    warped = forward_splat_video(image, flow)
    ref = forward_splat_video(image.float(), flow.float())
    assert warped.dtype == dtype and _diff(warped, ref) <= _ulp(dtype, ref)
    video, mask = motion_signal(image, flow, depth=depth)
    ref_video, ref_mask = motion_signal(image.float(), flow.float(), depth=depth.float())
    assert video.dtype == mask.dtype == dtype
    assert bool(torch.isfinite(video).all())
    assert _diff(video, ref_video) <= _ulp(dtype, ref_video)
    assert torch.equal(mask.float(), ref_mask)  # 0/1, decided in fp32


# ------------------------------------------------------------------------------------------------ perception

@pytest.mark.parametrize("dtype", HALF)
def test_sam_and_depth_front_ends_in_half(dtype, monkeypatch):
    """The heavy encoders as a GPU runs them (the CPU rule that keeps them fp32 lifted), against fp32."""
    from surgsora.perception import depth as depth_mod, sam as sam_mod
    from surgsora.tiny import tiny_depth

    def sam(d=None):  # the tiny SAM at a 256 px input (16x16 embedding): fp16 attention is slow on a CPU
        torch.manual_seed(0)
        config = sam_mod.tiny_sam_config(img_size=256)
        return sam_mod.SamSegmenter(sam_mod.build_sam(config), config, dtype=d)

    g = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, 96, 128, generator=g)
    ref_seg = sam().encode(image)
    ref_depth = tiny_depth(seed=0)(image, input_size=70)
    monkeypatch.setattr(sam_mod, "_encoder_dtype", lambda device, d: d or torch.float32)
    monkeypatch.setattr(depth_mod, "_resolve_dtype", lambda device, d: d or torch.float16)
    half_sam = sam(dtype)
    assert half_sam.model.image_encoder.patch_embed.proj.weight.dtype == dtype
    seg = half_sam.encode(image)
    est = depth_mod.DepthEstimator(tiny_depth(seed=0).model, variant="custom", dtype=dtype)
    assert est.dtype == dtype
    d = est(image, input_size=70)
    tol = {torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]
    for name, half, ref in (("SAM", seg, ref_seg), ("depth", d, ref_depth)):
        assert half.dtype == torch.float32, name  # handed on as float32, whatever ran inside
        assert bool(torch.isfinite(half).all()), name
        scale = (ref.max() - ref.min()).item()
        assert _diff(half, ref) <= tol * scale, (name, _diff(half, ref) / scale)


# ------------------------------------------------------------------------------------------------ pipelines

@pytest.fixture(scope="module")
def svd():
    return tiny_svd_components(seed=0, num_frames=T)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(7)
    image = torch.rand(1, 3, H, W, generator=g)
    flow = torch.randn(1, T - 1, 2, H, W, generator=g) * 3
    depth = torch.rand(1, 1, H, W, generator=g)
    seg = torch.randn(1, 256, 64, 64, generator=g)
    return image, flow, depth, seg


def _pipe(parts, adapter=None, dtype=torch.float32):
    parts = {k: copy.deepcopy(v) for k, v in parts.items()}
    pipe = SurgSoraPipeline(**parts, adapter=copy.deepcopy(adapter))
    for name in ("unet", "vae", "image_encoder", "adapter"):
        module = getattr(pipe, name, None)
        if module is not None:
            torch.nn.Module.to(module, dtype=dtype)
    return pipe


def _run(pipe, image, steps=3, **kw):
    return pipe(image, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **kw)


def _check_modes(outputs: dict, effect: float, what: str):
    ref = outputs[torch.float32]
    for dtype in HALF:
        video = outputs[dtype]
        assert video.dtype == torch.float32 and bool(torch.isfinite(video).all()), (what, dtype)
        drift = _diff(video, ref)
        assert drift <= VIDEO_TOL[dtype], (what, dtype, drift)
    # the tolerance is well below what the control does: a half path that lost it would fail
    # the tolerance is well below what the control does in fp32: a half path that lost the control would fail
    assert max(VIDEO_TOL.values()) <= effect / 4, (what, effect)


def test_surgsora_mode_in_half(svd, inputs):
    image, flow, depth, seg = inputs
    adapter = tiny_adapter(svd["unet"], seed=2, randomize=True)
    outs = {}
    for dtype in (torch.float32, *HALF):
        pipe = _pipe(svd, adapter, dtype)
        conditions = pipe.prepare_conditions(image, depth.to(dtype), seg.to(dtype), flow.to(dtype))
        assert all(c.dtype == dtype for c in conditions)  # the condition branch runs in the adapter's dtype
        outs[dtype] = _run(pipe, image, steps=2, conditions=conditions)
    off = _run(_pipe(svd, adapter), image, steps=2, flow=flow, depth=depth, seg_features=seg, conditioning_scale=0.0)
    _check_modes(outs, _diff(outs[torch.float32], off), "SurgSora")


def test_dual_clock_in_half(svd):
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, H, W, generator=g)
    signal = torch.stack([torch.roll(image[0], shifts=3 * t, dims=-1) for t in range(T)])[None]
    mask = torch.zeros(1, T, 1, H, W)
    mask[..., 16:48, 16:48] = 1
    kw = dict(motion_signal=signal, motion_mask=mask, t_weak_index=1, t_strong_index=2)
    outs = {dtype: _run(_pipe(svd, None, dtype), image, steps=3, **kw) for dtype in (torch.float32, *HALF)}
    plain = _run(_pipe(svd), image, steps=3, num_frames=T)
    _check_modes(outs, _diff(outs[torch.float32], plain), "dual-clock")


def test_mofa_mode_in_half(tmp_path):
    from mofa_fixture import tiny_mofa_svd_components, tiny_mofa_unet_config, write_tiny_mofa_controlnet

    frames, size = 4, 64  # 8x8 latents: MOFA's three downsamples reach 1x1
    parts = tiny_mofa_svd_components(seed=0, num_frames=frames)
    folder = write_tiny_mofa_controlnet(tmp_path / "controlnet", tiny_mofa_unet_config(frames), seed=3)
    g = torch.Generator().manual_seed(11)
    image = torch.rand(1, 3, size, size, generator=g)
    flow = torch.nn.functional.interpolate(torch.randn(frames - 1, 2, 4, 4, generator=g) * 6, size=(size, size),
                                           mode="bicubic", align_corners=False)[None]
    outs = {}
    for dtype in (torch.float32, *HALF):
        adapter = SurgSoraAdapter.from_mofa(folder, dtype=dtype)
        assert adapter.dtype == dtype
        outs[dtype] = _run(_pipe(parts, adapter, dtype), image, steps=1, flow=flow.to(dtype), max_guidance_scale=2.0)
    plain = _run(_pipe(parts), image, steps=1, num_frames=frames, max_guidance_scale=2.0)
    _check_modes(outs, _diff(outs[torch.float32], plain), "MOFA")


def test_fp16_vae_codes_in_fp32_and_stays_fp16(svd, inputs):
    """diffusers' force_upcast rule: an fp16 VAE runs its encoder and decoder in fp32, its weights stay fp16."""
    image = inputs[0]
    pipe = _pipe(svd, None, torch.float16)
    seen = []
    for part in (pipe.vae.encoder, pipe.vae.decoder):
        part.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].dtype), with_kwargs=True)
    first = pipe.encode_first_frame(image, generator=torch.Generator().manual_seed(0))
    assert first.image_latents.dtype == torch.float16  # handed to the fp16 UNet in its dtype
    latents = torch.randn(1, T, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(1)).half()
    video = pipe.decode(latents)
    assert len(seen) == 2 and set(seen) == {torch.float32}
    assert pipe.vae.dtype == torch.float16 and video.dtype == torch.float32
    rounded = _pipe(svd)  # fp32 maths on the fp16-rounded weights: what the upcast computes
    rounded.vae.load_state_dict({k: v.half().float() for k, v in rounded.vae.state_dict().items()})
    assert _diff(video, rounded.decode(latents.float())) <= 1e-6
    pipe.vae.register_to_config(force_upcast=False)  # the wrong path, fp16 maths, is measurably off
    assert _diff(pipe.decode(latents), video) > 1e-4
    bf = _pipe(svd, None, torch.bfloat16)
    seen.clear()
    bf.vae.decoder.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].dtype), with_kwargs=True)
    bf.decode(latents.to(torch.bfloat16))
    assert set(seen) == {torch.bfloat16}  # bf16 has fp32's range: no upcast


# ------------------------------------------------------------------------------------------------ training

def test_one_bf16_training_step_matches_fp32(tmp_path, endovis_clip):
    from surgsora.tiny import tiny_depth, tiny_sam
    from train.data import Preprocessor, discover_clips
    from train.fit import FitConfig, run

    specs, _ = discover_clips([endovis_clip], num_frames=T, clip_stride=8)
    data = tmp_path / "cache"
    Preprocessor(data, tiny_sam(), tiny_depth(), size=(64, 64), num_frames=T, depth_input_size=70,
                 log=lambda *a: None, regions="none").run(specs[:1], progress=False)
    from accelerate.state import AcceleratorState

    losses = {}
    for mp in ("no", "bf16"):
        AcceleratorState._reset_state(reset_partial_state=True)  # one Accelerator per process otherwise
        cfg = FitConfig(data=str(data), out=str(tmp_path / mp), config="tiny", max_steps=1, lr=1e-3,
                        checkpoint_every=1000, mixed_precision=mp, device="cpu", no_latent_cache=True)
        losses[mp] = run(cfg)["losses"][0]
    AcceleratorState._reset_state(reset_partial_state=True)
    assert torch.isfinite(torch.tensor(losses["bf16"]))
    assert abs(losses["bf16"] - losses["no"]) <= 0.02 * abs(losses["no"]), losses


# ------------------------------------------------------------------------------------------------ the choice

def test_precision_choice_names_a_dtype_and_parses():
    import argparse

    from surgsora.sampling.generate import precision_dtype
    from surgsora.sampling.settings import add_precision_argument

    assert precision_dtype("auto", "cpu") == torch.float32 and precision_dtype("auto", "cuda") == torch.float16
    assert [precision_dtype(p) for p in ("fp32", "fp16", "bf16")] == [torch.float32, torch.float16, torch.bfloat16]
    with pytest.raises(ValueError, match="fp32, fp16, bf16"):
        precision_dtype("fp8")
    parser = argparse.ArgumentParser()
    add_precision_argument(parser)
    assert parser.parse_args([]).precision == "auto"
    assert parser.parse_args(["--precision", "bf16"]).precision == "bf16"
    assert parser.parse_args(["--dtype", "fp16"]).precision == "fp16"  # the old flag still works
