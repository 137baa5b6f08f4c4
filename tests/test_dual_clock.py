"""Dual-clock (Time-to-Move) sampling in SurgSoraPipeline, on tiny real-class SVD components.

Known answers: no signal is the plain sampler; a mask that is on everywhere and anchored through the last
step ends on the signal's own latents (the VAE round trip of the signal); a mask that is off everywhere is
SDEdit from the signal at t_weak (checked against a loop written here from the description).
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import StableVideoDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from surgsora import SurgSoraPipeline
from surgsora.tiny import tiny_adapter, tiny_svd_components

H = W = 64
T = 4
STEPS = 4


@pytest.fixture(scope="module")
def components():
    return tiny_svd_components(seed=0, num_frames=T)


@pytest.fixture(scope="module")
def pipe(components):
    return SurgSoraPipeline(**components)


@pytest.fixture(scope="module")
def data(endovis_frame):
    import cv2

    frame = torch.from_numpy(cv2.resize(endovis_frame, (W, H), interpolation=cv2.INTER_AREA)).float() / 255
    image = frame.permute(2, 0, 1)[None]
    # a crude animation: the frame rolled right by 2 px per frame
    signal = torch.stack([torch.roll(image[0], shifts=2 * t, dims=-1) for t in range(T)])[None]
    return image, signal


def _run(pipe, image, **kw):
    return pipe(image, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), **kw)


def test_no_signal_is_plain_svd_bit_for_bit(components, data):
    import PIL.Image

    image, _ = data
    pil = PIL.Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    ref = StableVideoDiffusionPipeline(**components)
    ref.set_progress_bar_config(disable=True)
    expected = ref(pil, height=H, width=W, num_frames=T, num_inference_steps=STEPS, output_type="pt",
                   generator=torch.Generator().manual_seed(0)).frames
    ours = SurgSoraPipeline(**components)(pil, num_frames=T, num_inference_steps=STEPS,
                                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(ours, expected)


def test_full_mask_anchored_to_the_end_gives_the_signals_vae_round_trip(pipe, data):
    image, signal = data
    mask = torch.ones(1, T, 1, H, W)
    video = _run(pipe, image, motion_signal=signal, motion_mask=mask, t_weak_index=0, t_strong_index=STEPS)
    anchor = pipe.encode_motion_signal(signal, mask, 0, STEPS)
    round_trip = pipe.decode(anchor.latents)
    assert (video - round_trip).abs().max() < 1e-5
    free = _run(pipe, image, num_frames=T)
    assert (free - round_trip).abs().max() > 1e-2  # the anchor really decided the result


def test_empty_mask_is_sdedit_from_the_signal_at_t_weak(pipe, components, data):
    image, signal = data
    weak = 1
    ours = _run(pipe, image, motion_signal=signal, motion_mask=torch.zeros(1, T, 1, H, W), t_weak_index=weak,
                t_strong_index=3, output_type="latent")

    # SDEdit written out: same first-frame condition and generator order (noise augmentation, initial
    # latents, then the one noise draw), start from the signal noised to sigma(t_weak), denoise freely.
    generator = torch.Generator().manual_seed(0)
    first = pipe.encode_first_frame(image, H, W, 0.02, generator)
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(STEPS)
    randn_tensor((1, T, 4, H // 8, W // 8), generator=generator)  # the initial latents, unused by SDEdit
    signal_latents = pipe.encode_motion_signal(signal, torch.zeros(1, T, 1, H, W), weak, 3).latents
    noise = randn_tensor(signal_latents.shape, generator=generator)
    latents = signal_latents + noise * scheduler.sigmas[weak]
    cond = torch.cat([torch.zeros_like(first.image_embeddings), first.image_embeddings])
    frame_latents = torch.cat([torch.zeros_like(first.image_latents), first.image_latents])
    frame_latents = frame_latents.unsqueeze(1).repeat(1, T, 1, 1, 1)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * 2)
    guidance = torch.linspace(1.0, 3.0, T).view(1, T, 1, 1, 1)
    unet = components["unet"]
    with torch.no_grad():
        for i in range(weak, STEPS):
            sigma, sigma_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
            x = torch.cat([latents] * 2) / (sigma ** 2 + 1) ** 0.5
            v = unet(torch.cat([x, frame_latents], 2), scheduler.timesteps[i], cond, ids).sample
            uncond, c = v.chunk(2)
            v = uncond + guidance * (c - uncond)
            denoised = v * (-sigma / (sigma ** 2 + 1) ** 0.5) + latents / (sigma ** 2 + 1)  # v-prediction
            latents = latents + (latents - denoised) / sigma * (sigma_next - sigma)  # Euler step
    assert (ours - latents).abs().max() < 1e-4 * max(1.0, latents.abs().max().item())


def test_same_seed_same_video_and_the_mask_region_follows_the_signal(pipe, data):
    image, signal = data
    mask = torch.zeros(1, T, 1, H, W)
    mask[..., :, : W // 2] = 1
    kw = dict(motion_signal=signal, motion_mask=mask, t_weak_index=0, t_strong_index=3, output_type="latent")
    a, b = _run(pipe, image, **kw), _run(pipe, image, **kw)
    assert torch.equal(a, b)
    c = pipe(image, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(1), **kw)
    assert not torch.equal(a, c)


def test_composes_with_an_adapter(components, data):
    image, signal = data
    adapter = tiny_adapter(components["unet"], seed=2, randomize=True)
    pipe = SurgSoraPipeline(**components, adapter=adapter)
    g = torch.Generator().manual_seed(3)
    flow = torch.randn(1, T - 1, 2, H, W, generator=g)
    depth, seg = torch.rand(1, 1, H, W, generator=g), torch.randn(1, 256, 64, 64, generator=g)
    mask = torch.ones(1, T, 1, H, W)
    video = _run(pipe, image, flow=flow, depth=depth, seg_features=seg, motion_signal=signal, motion_mask=mask,
                 t_weak_index=1, t_strong_index=STEPS)
    # anchored everywhere to the end: whatever the adapter did, the result is the signal's round trip
    assert (video - pipe.decode(pipe.encode_motion_signal(signal, mask, 1, STEPS).latents)).abs().max() < 1e-5


def test_bad_signals_and_masks_name_both_shapes(pipe, data):
    image, signal = data
    mask = torch.ones(1, T, 1, H, W)
    with pytest.raises(ValueError, match=r"motion_mask must be \[B, T, 1, H, W\] = \[1, 4, 1, H, W\].*\(1, 3, 1, 64, 64\)"):
        _run(pipe, image, motion_signal=signal, motion_mask=mask[:, :3], t_weak_index=0, t_strong_index=2)
    with pytest.raises(ValueError, match=r"motion_mask is \(32, 32\).*motion_signal is \(64, 64\)"):
        _run(pipe, image, motion_signal=signal, motion_mask=torch.ones(1, T, 1, 32, 32), t_weak_index=0,
             t_strong_index=2)
    with pytest.raises(ValueError, match="motion_signal has 4 frames but num_frames is 6"):
        _run(pipe, image, num_frames=6, motion_signal=signal, motion_mask=mask, t_weak_index=0, t_strong_index=2)
    with pytest.raises(ValueError, match=r"t_strong_index <= steps \(4\)"):
        _run(pipe, image, motion_signal=signal, motion_mask=mask, t_weak_index=0, t_strong_index=5)
    with pytest.raises(ValueError, match="0 <= t_weak_index < t_strong_index"):
        _run(pipe, image, motion_signal=signal, motion_mask=mask, t_weak_index=2, t_strong_index=2)
    with pytest.raises(ValueError, match="finite and in \\[0, 1\\]"):
        _run(pipe, image, motion_signal=signal * float("nan"), motion_mask=mask, t_weak_index=0, t_strong_index=2)
    with pytest.raises(ValueError, match="needs motion_signal, motion_mask"):
        _run(pipe, image, motion_signal=signal, t_weak_index=0, t_strong_index=2)
