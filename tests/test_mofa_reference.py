"""Self-tests of the MOFA-Video-Traj reference (tests/mofa_reference.py) and its tiny checkpoint fixture."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mofa_fixture import (
    mofa_config_from_unet_config, mofa_heads_for, mofa_keys_from_manifest, mofa_predicted_config,
    tiny_mofa_svd_components, tiny_mofa_unet_config, write_tiny_mofa_controlnet,
)
from mofa_reference import (
    RefFlowControlNet, _splat_sum, mofa_flow_pyramid, ref_encode_image, ref_mofa_sample, ref_svd_scheduler,
    ref_unet_forward, residual_multiplicities_in_loop, softsplat_avg,
)

T = 3  # frames
SVD_XT_MULTIPLICITY = [4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1]


@pytest.fixture(scope="module")
def parts():
    return tiny_mofa_svd_components(seed=0, num_frames=T)


@pytest.fixture(scope="module")
def mofa_dir(tmp_path_factory):
    return write_tiny_mofa_controlnet(tmp_path_factory.mktemp("mofa") / "controlnet", tiny_mofa_unet_config(T))


def _inputs(batch=1, h=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(batch, T, 8, h, h, generator=g),
        timestep=torch.tensor(0.7),
        encoder_hidden_states=torch.randn(batch, 1, 32, generator=g),
        added_time_ids=torch.tensor([[6.0, 128.0, 0.02]]).repeat(batch, 1),
        controlnet_cond=torch.rand(batch, 3, 8 * h, 8 * h, generator=g) * 2 - 1,
        controlnet_flow=torch.randn(batch, T - 1, 2, 8 * h, 8 * h, generator=g) * 4,
    )


# ------------------------------------------------------------------------------------------- softsplat
def test_softsplat_integer_shift_moves_values_and_leaves_zero_holes():
    x = torch.rand(2, 3, 6, 7, generator=torch.Generator().manual_seed(1)) + 0.5
    flow = torch.zeros(2, 2, 6, 7)
    flow[:, 0] = 2.0   # right by 2
    flow[:, 1] = -1.0  # up by 1
    out = softsplat_avg(x, flow)
    expected = torch.zeros_like(x)
    expected[:, :, :-1, 2:] = x[:, :, 1:, :-2] / (torch.ones(()) + 0.0000001)
    assert torch.equal(out, expected)
    assert (out[:, :, -1] == 0).all() and (out[:, :, :, :2] == 0).all()


def test_softsplat_bilinear_weights_and_bounds():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 8.0
    flow = torch.zeros(1, 2, 4, 4)
    flow[0, :, 1, 1] = torch.tensor([0.25, 0.5])  # lands at x=1.25, y=1.5
    out = _splat_sum(x, flow)[0, 0]
    expected = torch.zeros(4, 4)
    expected[1, 1], expected[1, 2], expected[2, 1], expected[2, 2] = 8 * 0.375, 8 * 0.125, 8 * 0.375, 8 * 0.125
    assert torch.equal(out, expected)
    # off the image (and non-finite targets) contribute nothing, neither value nor weight
    flow[0, :, 1, 1] = torch.tensor([10.0, 0.0])
    flow[0, :, 2, 2] = torch.tensor([float("nan"), 0.0])
    ones = torch.ones(1, 1, 4, 4)
    weight = _splat_sum(ones, flow)[0, 0]
    assert weight.sum().item() == 14.0 and weight[1, 1] == 0 and weight[2, 2] == 0


def test_softsplat_matches_a_per_pixel_loop():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 6, generator=g)
    flow = torch.randn(2, 2, 5, 6, generator=g) * 2.5
    out = softsplat_avg(x, flow)
    n, c, h, w = x.shape
    acc = np.zeros((n, c + 1, h, w), dtype=np.float64)
    for b in range(n):
        for y in range(h):
            for xx in range(w):
                fx, fy = xx + flow[b, 0, y, xx].item(), y + flow[b, 1, y, xx].item()
                x0, y0 = math.floor(fx), math.floor(fy)
                for cx, cy, wt in ((x0, y0, (x0 + 1 - fx) * (y0 + 1 - fy)), (x0 + 1, y0, (fx - x0) * (y0 + 1 - fy)),
                                   (x0, y0 + 1, (x0 + 1 - fx) * (fy - y0)), (x0 + 1, y0 + 1, (fx - x0) * (fy - y0))):
                    if 0 <= cx < w and 0 <= cy < h:
                        acc[b, :c, cy, cx] += x[b, :, y, xx].double().numpy() * wt
                        acc[b, c, cy, cx] += wt
    expected = torch.from_numpy(acc[:, :c] / (acc[:, c:] + 1e-7)).float()
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


def test_flow_pyramid_is_nearest_subsampling_divided_by_scale():
    flow = torch.arange(2 * 1 * 2 * 16 * 16, dtype=torch.float32).view(2, 1, 2, 16, 16)
    out = mofa_flow_pyramid(flow, 4)
    assert out.shape == (2, 1, 2, 4, 4)
    assert torch.equal(out, flow[..., ::4, ::4] / 4)


# ------------------------------------------------------------------------------------------- layout
def test_full_size_reference_matches_the_manifest_on_meta():
    manifest = mofa_keys_from_manifest()
    assert len(manifest) == 683
    with torch.device("meta"):
        model = RefFlowControlNet(mofa_predicted_config())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(shapes) == set(manifest), sorted(set(shapes) ^ set(manifest))[:10]
    assert shapes == manifest
    # the trunk's third block runs with the released config's 10 heads (the SVD UNet has 20)
    assert model.down_blocks[2].attentions[0].transformer_blocks[0].attn1.heads == 10
    assert model.mid_block.attentions[0].transformer_blocks[0].attn1.heads == 20


def test_tiny_checkpoint_has_the_released_layout(mofa_dir):
    from safetensors import safe_open

    config = json.loads((mofa_dir / "config.json").read_text())
    assert set(config) == set(mofa_predicted_config())
    assert config["_class_name"] == "FlowControlNet" and config["sample_size"] is None
    assert config["conditioning_embedding_out_channels"] == [8, 8, 8, 16]
    assert config["num_attention_heads"] == [2, 4, 4, 8]  # UNet: (2, 4, 8, 8), as released 10 vs 20
    with safe_open(str(mofa_dir / "diffusion_pytorch_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys)
        zero_convs = [k for k in keys if k.startswith(("controlnet_down_blocks", "flow_encoder.zeroconvs"))]
        assert all(f.get_tensor(k).abs().max() > 0 for k in zero_convs)
    assert keys == set(mofa_keys_from_manifest())
    RefFlowControlNet.from_pretrained(mofa_dir)  # strict


def test_heads_rule_and_incompatible_unet():
    svd_xt = dict(block_out_channels=(320, 640, 1280, 1280), num_attention_heads=(5, 10, 20, 20))
    assert mofa_heads_for(svd_xt) == [5, 10, 10, 20]
    from surgsora.tiny import tiny_unet_config

    with pytest.raises(ValueError, match="block_out_channels"):
        mofa_config_from_unet_config(tiny_unet_config(T))


def test_fixture_is_deterministic_in_seed(tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_mofa_unet_config(T)
    a = load_file(str(write_tiny_mofa_controlnet(tmp_path / "a", cfg, seed=5) / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(write_tiny_mofa_controlnet(tmp_path / "b", cfg, seed=5) / "diffusion_pytorch_model.safetensors"))
    c = load_file(str(write_tiny_mofa_controlnet(tmp_path / "c", cfg, seed=6) / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv_in.weight"], c["conv_in.weight"])


# ------------------------------------------------------------------------------------------- UNet
def test_fresh_mofa_gives_zero_residuals_and_plain_svd(parts, tmp_path):
    unet = parts["unet"]
    fresh = RefFlowControlNet.from_pretrained(
        write_tiny_mofa_controlnet(tmp_path / "fresh", tiny_mofa_unet_config(T), randomize=False))
    x = _inputs()
    with torch.no_grad():
        down, mid = fresh(**x)
        assert len(down) == 12 and all(not d.any() for d in down) and not mid.any()
        ours = ref_unet_forward(unet, x["sample"], x["timestep"], x["encoder_hidden_states"],
                                x["added_time_ids"], down, mid)
        theirs = unet(x["sample"], x["timestep"], x["encoder_hidden_states"], x["added_time_ids"]).sample
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_in_loop_residual_multiplicity_is_svd_xt_layout(parts):
    unet = parts["unet"]
    x = _inputs()
    captured = {}

    def grab(i):
        def hook(module, args, kwargs):
            captured[i] = kwargs["res_hidden_states_tuple"]
        return hook

    handles = [blk.register_forward_pre_hook(grab(i), with_kwargs=True) for i, blk in enumerate(unet.up_blocks)]
    mid_in = {}
    handles.append(unet.up_blocks[0].register_forward_pre_hook(
        lambda m, a, k: mid_in.__setitem__("h", k["hidden_states"]), with_kwargs=True))
    try:
        def skips(down, mid):
            with torch.no_grad():
                ref_unet_forward(unet, x["sample"], x["timestep"], x["encoder_hidden_states"],
                                 x["added_time_ids"], down, mid)
            # up block i consumes the last skips left, so reverse the consumption order to get skip k
            flat = [s for i in reversed(range(len(unet.up_blocks))) for s in captured[i]]
            return flat, mid_in["h"]

        shapes = [s.shape for s in skips(None, None)[0]]
        mid_shape = mid_in["h"].shape
        base, base_mid = skips([torch.zeros(s) for s in shapes], torch.zeros(mid_shape))
        marked, marked_mid = skips([torch.ones(s) for s in shapes], torch.ones(mid_shape))
    finally:
        for h in handles:
            h.remove()
    counts = [(m - b).mean().item() for m, b in zip(marked, base)]
    assert [round(c) for c in counts] == SVD_XT_MULTIPLICITY
    assert max(abs(c - round(c)) for c in counts) < 1e-4
    assert abs((marked_mid - base_mid).mean().item() - 1.0) < 1e-5
    assert residual_multiplicities_in_loop([2, 2, 2, 2]) == SVD_XT_MULTIPLICITY
    assert residual_multiplicities_in_loop([2, 2]) == [2, 2, 2, 2, 1, 1]


# ------------------------------------------------------------------------------------------- controlnet
def test_controlnet_residual_shapes_scale_and_flow_dependence(mofa_dir):
    net = RefFlowControlNet.from_pretrained(mofa_dir)
    x = _inputs()
    with torch.no_grad():
        down, mid = net(**x)
        half_down, half_mid = net(**x, conditioning_scale=0.5)
        still = dict(x, controlnet_flow=torch.zeros_like(x["controlnet_flow"]))
        down0, _ = net(**still)
        raw = net.condition_features(x["controlnet_cond"])
        feats = net.warped_features(raw, still["controlnet_flow"])
        moved = net.warped_features(raw, x["controlnet_flow"])
    assert [tuple(d.shape[1:]) for d in down] == [(32, 8, 8)] * 3 + [(32, 4, 4)] + [(64, 4, 4)] * 2 + \
        [(64, 2, 2)] + [(96, 2, 2)] * 2 + [(96, 1, 1)] * 3
    assert mid.shape == (T, 96, 1, 1)
    torch.testing.assert_close(half_mid, mid * 0.5)
    assert all(torch.allclose(h, d * 0.5) for h, d in zip(half_down, down))
    assert max((a - b).abs().max().item() for a, b in zip(down, down0)) > 1e-3  # the flow matters
    # four features at 1/8 .. 1/64; zero flow: every frame is frame 0 (up to the 1e-7 normaliser)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 8, 8), (32, 4, 4), (64, 2, 2), (96, 1, 1)]
    for r, m in zip(raw, moved):  # frame 0 is the unwarped feature, later frames are not
        frames = m.view(1, T, *m.shape[1:])
        assert torch.equal(frames[:, 0], r) and not torch.equal(frames[:, 1], r)
    for f in feats:
        frames = f.view(1, T, *f.shape[1:])
        torch.testing.assert_close(frames[:, 1:], frames[:, :1].expand_as(frames[:, 1:]), atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------- pipeline
def test_scheduler_is_the_karras_schedule_mofa_computes():
    sched = ref_svd_scheduler()
    sched.set_timesteps(5)
    ramp = np.linspace(0, 1, 5)
    rho = 7.0
    karras = (700.0 ** (1 / rho) + ramp * (0.002 ** (1 / rho) - 700.0 ** (1 / rho))) ** rho
    expected = torch.cat([torch.from_numpy(karras).float(), torch.zeros(1)])
    assert torch.equal(sched.sigmas, expected)
    assert torch.equal(sched.timesteps, torch.Tensor([0.25 * s.log() for s in expected[:-1]]))
    assert math.isclose(float(sched.init_noise_sigma), math.sqrt(float(expected[0]) ** 2 + 1), rel_tol=1e-6)


def test_clip_input_is_not_normalised(parts):
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    encoder = parts["image_encoder"]
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    emb = ref_encode_image(encoder, image)
    with torch.no_grad():
        raw = encoder(_resize_with_antialiasing(image, (224, 224))).image_embeds.unsqueeze(1)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        normalised = encoder((_resize_with_antialiasing(image, (224, 224)) - mean) / std).image_embeds.unsqueeze(1)
    assert emb.shape == (1, 1, 32)
    torch.testing.assert_close(emb, raw)
    assert (emb - normalised).abs().max() > 1e-3


def test_sample_semantics(parts, mofa_dir):
    from diffusers.utils.torch_utils import randn_tensor

    net = RefFlowControlNet.from_pretrained(mofa_dir)
    g = torch.Generator().manual_seed(4)
    image = torch.rand(1, 3, 64, 64, generator=g)
    flow = torch.randn(1, T - 1, 2, 64, 64, generator=g) * 3
    args = (parts["unet"], net, parts["vae"], parts["image_encoder"], ref_svd_scheduler(), image, flow)
    trace = []
    a = ref_mofa_sample(*args, num_inference_steps=1, fps=7, motion_bucket_id=127, max_guidance_scale=2.5,
                        generator=torch.Generator().manual_seed(0), trace=trace)
    b = ref_mofa_sample(*args, num_inference_steps=1, fps=30, motion_bucket_id=10, max_guidance_scale=2.5,
                        generator=torch.Generator().manual_seed(0))
    assert a.shape == (1, T, 4, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b)  # fps and motion bucket are ignored
    step = trace[0]
    assert torch.equal(step["added_time_ids"], torch.tensor([[6.0, 128.0, 0.02]] * 2))
    # both CFG halves get the same conditioning image ([-1, 1]) and flow
    assert torch.equal(step["controlnet_cond"][0], step["controlnet_cond"][1])
    torch.testing.assert_close(step["controlnet_cond"][1], image[0] * 2 - 1)
    assert torch.equal(step["controlnet_flow"][0], step["controlnet_flow"][1])
    # unconditional half: zero embedding and zero image latent
    assert not step["encoder_hidden_states"][0].any() and not step["model_input"][0, :, 4:].any()
    # conditional latent: VAE mode of the noise-augmented frame, noise drawn before the initial latents
    gen = torch.Generator().manual_seed(0)
    noise = randn_tensor((1, 3, 64, 64), generator=gen)
    with torch.no_grad():
        latent = parts["vae"].encode(image * 2 - 1 + 0.02 * noise).latent_dist.mode()
    torch.testing.assert_close(step["model_input"][1, :, 4:], latent[0].expand(T, -1, -1, -1))
    sched = ref_svd_scheduler()
    sched.set_timesteps(1)
    initial = randn_tensor((1, T, 4, 8, 8), generator=gen) * sched.init_noise_sigma
    torch.testing.assert_close(step["model_input"][1, :, :4], initial[0] / (sched.sigmas[0] ** 2 + 1) ** 0.5)
    # per-frame guidance linspace(1, 2.5, T)
    guidance = torch.linspace(1.0, 2.5, T).view(1, T, 1, 1, 1)
    expected = step["noise_pred_uncond"] + guidance * (step["noise_pred_cond"] - step["noise_pred_uncond"])
    torch.testing.assert_close(step["noise_pred"], expected)
    with pytest.raises(ValueError, match="guidance"):
        ref_mofa_sample(*args, num_inference_steps=1, max_guidance_scale=1.0)
