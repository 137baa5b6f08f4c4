"""SurgSoraPipeline against diffusers' StableVideoDiffusionPipeline, on tiny real-class components."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline

from surgsora import SurgSoraAdapter, SurgSoraPipeline
from surgsora.tiny import tiny_adapter, tiny_svd_components

H = W = 64
T = 4
STEPS = 3


@pytest.fixture(scope="module")
def components():
    return tiny_svd_components(seed=0, num_frames=T)


@pytest.fixture(scope="module")
def inputs(endovis_frame):
    image = PIL.Image.fromarray(endovis_frame).resize((W, H), PIL.Image.BICUBIC)
    g = torch.Generator().manual_seed(7)
    flow = torch.randn(1, T - 1, 2, H, W, generator=g) * 3
    depth = torch.rand(1, 1, H, W, generator=g)
    seg = torch.randn(1, 256, 64, 64, generator=g)
    return image, flow, depth, seg


def _svd_reference(components, image, **kw):
    pipe = StableVideoDiffusionPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe(image, height=H, width=W, num_frames=T, num_inference_steps=STEPS, output_type="pt",
                generator=torch.Generator().manual_seed(0), **kw).frames


def _ours(components, adapter, image, flow, depth, seg, **kw):
    pipe = SurgSoraPipeline(**components, adapter=adapter)
    return pipe(image, flow=flow, depth=depth, seg_features=seg, num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(0), **kw)


@pytest.mark.parametrize("guidance", [(1.0, 3.0), (1.0, 1.0)])
def test_fresh_adapter_reproduces_plain_svd(components, inputs, guidance):
    image, flow, depth, seg = inputs
    kw = dict(min_guidance_scale=guidance[0], max_guidance_scale=guidance[1], fps=7, motion_bucket_id=127,
              noise_aug_strength=0.02)
    reference = _svd_reference(components, image, **kw)
    adapter = tiny_adapter(components["unet"], seed=1)  # zero residuals, as after SurgSoraAdapter.from_unet
    ours = _ours(components, adapter, image, flow, depth, seg, **kw)
    assert ours.shape == reference.shape == (1, T, 3, H, W)
    assert torch.equal(ours, reference)  # bit for bit: zero residuals are added and change nothing


def test_tensor_input_matches_pil_input(components, inputs):
    """ComfyUI hands tensors: the CLIP resize must still happen (diffusers skips it for tensors)."""
    image, flow, depth, seg = inputs
    adapter = tiny_adapter(components["unet"], seed=1)
    # The same values in the same (channels-last) memory layout as the PIL input becomes: another layout picks
    # other conv kernels, whose rounding differs by ~1e-5 on some frames.
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32)[None] / 255.0).permute(0, 3, 1, 2)
    a = _ours(components, adapter, image, flow, depth, seg, output_type="latent")
    b = _ours(components, adapter, tensor, flow, depth, seg, output_type="latent")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_conditioning_scale_zero_reproduces_svd_and_nonzero_adapter_changes_output(components, inputs):
    image, flow, depth, seg = inputs
    reference = _svd_reference(components, image)
    active = tiny_adapter(components["unet"], seed=2, randomize=True)
    off = _ours(components, active, image, flow, depth, seg, conditioning_scale=0.0)
    assert torch.equal(off, reference)
    on = _ours(components, active, image, flow, depth, seg, conditioning_scale=1.0)
    assert (on - reference).abs().max().item() > 1e-3


def test_flow_steers_the_output(components, inputs):
    image, flow, depth, seg = inputs
    active = tiny_adapter(components["unet"], seed=2, randomize=True)
    a = _ours(components, active, image, flow, depth, seg, output_type="latent")
    b = _ours(components, active, image, -flow, depth, seg, output_type="latent")
    assert (a - b).abs().max().item() > 1e-4


@pytest.mark.parametrize("steps,max_cfg", [(2, 1.0), (4, 3.0)])
def test_condition_branch_runs_once_per_call(components, inputs, monkeypatch, steps, max_cfg):
    image, flow, depth, seg = inputs
    adapter = tiny_adapter(components["unet"], seed=2, randomize=True)
    calls = {"encode": 0, "trunk": 0}
    encode = adapter.encode_conditions
    forward = adapter.forward

    def counting_encode(*a, **k):
        calls["encode"] += 1
        return encode(*a, **k)

    def counting_forward(*a, **k):
        calls["trunk"] += 1
        return forward(*a, **k)

    monkeypatch.setattr(adapter, "encode_conditions", counting_encode)
    monkeypatch.setattr(adapter, "forward", counting_forward)
    pipe = SurgSoraPipeline(**components, adapter=adapter)
    seen = []
    pipe(image, flow=flow, depth=depth, seg_features=seg, num_inference_steps=steps, max_guidance_scale=max_cfg,
         output_type="latent", callback=lambda i, n, lat: seen.append((i, n)))
    assert calls == {"encode": 1, "trunk": steps}  # trunk once per step: both CFG halves in one batch
    assert seen == [(i + 1, steps) for i in range(steps)]


def test_callback_can_cancel(components, inputs):
    image, flow, depth, seg = inputs
    pipe = SurgSoraPipeline(**components, adapter=tiny_adapter(components["unet"]))

    class Stop(Exception):
        pass

    def cancel(i, n, latents):
        if i == 1:
            raise Stop

    with pytest.raises(Stop):
        pipe(image, flow=flow, depth=depth, seg_features=seg, num_inference_steps=5, callback=cancel)


def test_decode_chunks_are_decoded_as_short_videos_of_their_own(components, inputs):
    """SVD's VAE decoder is temporal (its time convolutions mix neighbouring frames), so the chunk size does change
    the frames: each chunk is decoded as a video of its own, cut along time per video, never across two videos."""
    image, flow, depth, seg = inputs
    pipe = SurgSoraPipeline(**components, adapter=tiny_adapter(components["unet"]))
    latents = pipe(image, flow=flow, depth=depth, seg_features=seg, num_inference_steps=1, output_type="latent")
    whole = pipe.decode(latents, decode_chunk_size=T)
    assert whole.shape == (1, T, 3, H, W)
    assert 0.0 <= whole.min().item() and whole.max().item() <= 1.0
    vae = components["vae"]

    def alone(lat):  # the VAE on frames [t, 4, h, w] as one t-frame video (diffusers' scaling), -> [t, 3, H, W]
        with torch.no_grad():
            return (vae.decode(1 / vae.config.scaling_factor * lat, num_frames=lat.shape[0]).sample / 2 + 0.5).clamp(0, 1)

    assert torch.equal(whole[0], alone(latents[0]))
    assert torch.equal(pipe.decode(latents), whole)  # default: all frames in one chunk
    for chunk in (1, 3):
        expected = torch.cat([alone(latents[0, i:i + chunk]) for i in range(0, T, chunk)])
        assert torch.equal(pipe.decode(latents, chunk)[0], expected)
    assert (pipe.decode(latents, 1) - whole).abs().max() > 1e-2  # frames decoded alone differ: the decoder mixes
    pair = torch.cat([latents, latents.flip(1)])  # two videos: a chunk of 3 must not take frames of both
    assert torch.equal(pipe.decode(pair, 3)[1], torch.cat([alone(pair[1, :3]), alone(pair[1, 3:])]))


def test_bad_inputs(components, inputs):
    image, flow, depth, seg = inputs
    pipe = SurgSoraPipeline(**components, adapter=tiny_adapter(components["unet"]))
    with pytest.raises(ValueError, match="num_frames"):
        pipe(image, flow=flow, depth=depth, seg_features=seg, num_frames=T + 2)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        pipe(torch.full((1, 3, H, W), -1.0), flow=flow, depth=depth, seg_features=seg)
    with pytest.raises(ValueError, match="seg"):
        pipe(image, flow=flow, depth=depth, seg_features=seg[:, :100])
    with pytest.raises(ValueError, match="flow, depth and seg_features"):
        pipe(image)


def test_pipeline_saves_and_loads_with_adapter(components, tmp_path):
    adapter = tiny_adapter(components["unet"], seed=3, randomize=True)
    pipe = SurgSoraPipeline(**components, adapter=adapter)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = SurgSoraPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.adapter, SurgSoraAdapter)
    for (n1, p1), (n2, p2) in zip(adapter.state_dict().items(), loaded.adapter.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
