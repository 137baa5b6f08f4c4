"""The training loss: ``train.objective.edm_loss`` against the EDM formulas, and ``train.fit.compute_loss`` on
real frames against an independent replay of its documented random draws.

The reference is written from the formulas in train/objective.py's docstring, not from its code. With
noisy = x + sigma * n, c_skip = 1 / (sigma^2 + 1), c_out = -sigma / sqrt(sigma^2 + 1) and the weight
(1 + sigma^2) / sigma^2, the weighted denoising error of a model output F reduces to

    (1 + sigma^2) / sigma^2 * mean((c_skip * noisy + c_out * F - x)^2) = mean((F - v)^2),
    v = (n - sigma * x) / sqrt(1 + sigma^2)                              (the v-prediction target),

so the loss has known answers: 0 for F = v, mean(v^2) for a model that outputs zero.
"""

import math

import numpy as np
import pytest
import torch

from train.config import FitConfig
from train.fit import compute_loss, load_batch, load_frozen_svd
from train.objective import edm_loss, preconditioning

T = 2


def reference_edm_loss(model_output, noisy, clean, sigma):
    """The docstring's formulas, per sample, in numpy float64."""
    f, y, x = (t.double().numpy() for t in (model_output, noisy, clean))
    loss = []
    for b, s in enumerate(sigma.double().tolist()):
        c_skip, c_out = 1 / (s * s + 1), -s / math.sqrt(s * s + 1)
        denoised = c_skip * y[b] + c_out * f[b]
        loss.append((1 + s * s) / (s * s) * np.mean((denoised - x[b]) ** 2))
    return np.array(loss)


def v_target(clean, noise, sigma):
    s = sigma.double().view(-1, 1, 1, 1, 1)
    return (noise.double() - s * clean.double()) / (1 + s ** 2).sqrt()


@pytest.fixture(scope="module")
def draws():
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.002, 0.05, 0.7, 3.0, 80.0])
    clean = torch.randn(5, T, 4, 6, 6, generator=g) * 0.3
    noise = torch.randn(5, T, 4, 6, 6, generator=g)
    return clean, noise, sigma, clean + sigma.view(-1, 1, 1, 1, 1) * noise


def test_preconditioning_is_the_documented_formulas():
    sigma = torch.tensor([0.002, 0.3, 1.0, 700.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = preconditioning(sigma)
    for i, s in enumerate(sigma.tolist()):
        assert c_skip.flatten()[i].item() == pytest.approx(1 / (s ** 2 + 1), rel=1e-12)
        assert c_out.flatten()[i].item() == pytest.approx(-s / math.sqrt(s ** 2 + 1), rel=1e-12)
        assert c_in.flatten()[i].item() == pytest.approx(1 / math.sqrt(s ** 2 + 1), rel=1e-12)
        assert c_noise[i].item() == pytest.approx(0.25 * math.log(s), rel=1e-12)


def test_edm_loss_matches_the_formulas_for_any_output(draws):
    clean, noise, sigma, noisy = draws
    output = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    ours = edm_loss(output, noisy, clean, sigma)
    assert ours.dtype == torch.float32 and ours.shape == (5,)
    np.testing.assert_allclose(ours.double().numpy(), reference_edm_loss(output, noisy, clean, sigma), rtol=1e-4)
    # The same number as the plain MSE to the v-target (the identity in the module docstring).
    mse_v = ((output.double() - v_target(clean, noise, sigma)) ** 2).flatten(1).mean(1)
    np.testing.assert_allclose(ours.double().numpy(), mse_v.numpy(), rtol=1e-3)


def test_edm_loss_known_answers(draws):
    clean, noise, sigma, noisy = draws
    v = v_target(clean, noise, sigma)
    # The exact v-target is a perfect denoiser: zero loss (float32 rounding of noisy at sigma 80 aside).
    assert edm_loss(v.float(), noisy, clean, sigma).abs().max() < 1e-6
    # A model that outputs zero: mean(v^2) = mean((n - sigma x)^2) / (1 + sigma^2).
    zero = edm_loss(torch.zeros_like(clean), noisy, clean, sigma)
    np.testing.assert_allclose(zero.double().numpy(), (v ** 2).flatten(1).mean(1).numpy(), rtol=1e-4)
    # bf16 model outputs are scored in float32.
    assert edm_loss(v.bfloat16(), noisy, clean, sigma).dtype == torch.float32


# ----------------------------------------------------------------------------------------- compute_loss

@pytest.fixture(scope="module")
def batch(tmp_path_factory, endovis_clip):
    """Two 2-frame windows of the real clip at 64x64 (tiny random SAM / depth, DIS flow of the real frames)."""
    from surgsora.tiny import tiny_depth, tiny_sam
    from train.data import ClipDataset, Preprocessor, discover_clips

    out = tmp_path_factory.mktemp("loss-cache")
    specs, _ = discover_clips([endovis_clip], num_frames=T, frame_step=4, clip_stride=8)
    pre = Preprocessor(out, tiny_sam(), tiny_depth(), size=(64, 64), num_frames=T, frame_step=4, depth_input_size=70,
                       log=lambda *a: None, regions="none")
    assert pre.run(specs[:2], progress=False) == {"built": 2}
    return load_batch(ClipDataset(out), 0, FitConfig(batch_size=2))


@pytest.fixture(scope="module")
def pipe():
    """The frozen tiny SVD of `--config tiny` with an adapter whose zero-initialised layers are drawn, so its
    residuals act."""
    from surgsora import SurgSoraPipeline
    from surgsora.tiny import tiny_adapter

    components, _ = load_frozen_svd(FitConfig(config="tiny"))
    adapter = tiny_adapter(components["unet"], randomize=True)
    adapter.register_to_config(fps=12)
    return SurgSoraPipeline(**components, adapter=adapter)


def replay(pipe, batch, cfg, seed):
    """The draws compute_loss documents, in its order, from a fresh generator: (clean latents x, noise n,
    sigma, noise-augmentation strengths, conditioning latent after dropout)."""
    g = torch.Generator().manual_seed(seed)
    frames = batch["frames"].permute(0, 1, 4, 2, 3).float() / 255.0
    bsz, frames_n = frames.shape[:2]
    with torch.no_grad():
        dists = [pipe.vae.encode(clip * 2 - 1).latent_dist for clip in frames]  # one clip at a time, as training
        mean, std = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
        eps = torch.randn(mean.shape, generator=g)
        x = (mean + std * eps).view(bsz, frames_n, 4, 8, 8) * pipe.vae.config.scaling_factor
        aug = torch.exp(cfg.noise_aug_mean + cfg.noise_aug_std * torch.randn(bsz, generator=g, dtype=torch.float64))
        cond = pipe.encode_conditioning_latent(frames[:, 0] * 2 - 1, aug.float(), g)
        torch.rand(bsz, generator=g)  # CLIP dropout
        keep = torch.rand(bsz, generator=g) >= cfg.drop_latent_prob
        sigma = torch.exp(cfg.p_mean + cfg.p_std * torch.randn(bsz, generator=g, dtype=torch.float64))
        noise = torch.randn(x.shape, generator=g)
    return x, noise, sigma.clamp(cfg.sigma_min, cfg.sigma_max).float(), aug.float(), cond * keep.view(-1, 1, 1, 1)


def test_compute_loss_draws_in_the_documented_order_and_scores_a_zero_output_model(pipe, batch):
    seen = {}
    unet = pipe.unet
    handles = [unet.conv_in.register_forward_hook(lambda m, args, out: seen.update(model_in=args[0])),
               unet.add_time_proj.register_forward_hook(lambda m, args, out: seen.update(time_ids=args[0]))]
    weight, bias = unet.conv_out.weight.data.clone(), unet.conv_out.bias.data.clone()
    unet.conv_out.weight.data.zero_()  # the frozen UNet now outputs exactly zero, whatever the adapter adds
    unet.conv_out.bias.data.zero_()
    cfg = FitConfig(drop_clip_prob=0.5, drop_latent_prob=0.5, p_mean=-0.5, p_std=1.0)
    try:
        loss, sigma = compute_loss(pipe, pipe.adapter, batch, cfg, torch.Generator().manual_seed(3))
    finally:
        unet.conv_out.weight.data.copy_(weight)
        unet.conv_out.bias.data.copy_(bias)
        for h in handles:
            h.remove()
    x, noise, sigma_ref, aug, cond = replay(pipe, batch, cfg, 3)
    assert torch.equal(sigma, sigma_ref)
    # Zero output: the analytic loss mean(v^2) of the replayed latents and noise.
    expected = (v_target(x, noise, sigma_ref) ** 2).flatten(1).mean(1)
    np.testing.assert_allclose(loss.detach().double().numpy(), expected.numpy(), rtol=1e-4)
    # What the UNet saw: c_in * noisy and the (dropped-out or not) frame-0 latent, every frame, and the time ids
    # [fps - 1, motion_bucket_id, noise_aug_strength] with the adapter's fps.
    c_in = (1 / (1 + sigma_ref ** 2).sqrt()).view(-1, 1, 1, 1, 1)
    model_in = seen["model_in"].view(2, T, 8, 8, 8)
    torch.testing.assert_close(model_in[:, :, :4], c_in * (x + sigma_ref.view(-1, 1, 1, 1, 1) * noise))
    torch.testing.assert_close(model_in[:, :, 4:], cond.unsqueeze(1).expand(-1, T, -1, -1, -1))
    ids = torch.stack([torch.full_like(aug, 11.0), torch.full_like(aug, 127.0), aug], dim=1)
    torch.testing.assert_close(seen["time_ids"], ids.flatten())


def test_compute_loss_is_a_function_of_the_generator_state_and_trains_only_the_adapter(pipe, batch):
    cfg = FitConfig()
    a, sigma_a = compute_loss(pipe, pipe.adapter, batch, cfg, torch.Generator().manual_seed(7))
    b, sigma_b = compute_loss(pipe, pipe.adapter, batch, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(sigma_a, sigma_b)
    c, _ = compute_loss(pipe, pipe.adapter, batch, cfg, torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)
    pipe.adapter.zero_grad(set_to_none=True)
    a.mean().backward()
    assert all(p.grad is None for p in pipe.unet.parameters())  # the UNet is frozen
    zero_convs = [p.grad for n, p in pipe.adapter.named_parameters() if n.startswith("controlnet_down_blocks")]
    assert zero_convs and all(g is not None and g.abs().sum() > 0 for g in zero_convs)
    pipe.adapter.zero_grad(set_to_none=True)
