"""Device placement without a GPU: the adapter, a UNet step, splatting and the motion signal run on the ``meta``
device, where any tensor made on the CPU in the middle of the computation (``torch.arange`` / ``zeros`` / ``ones``
without ``device=``, a ``.cpu()`` round trip) raises "Tensor on device cpu is not on the expected device meta", just
as it would against a CUDA tensor. NumPy / OpenCV code, which needs values, refuses meta tensors in one sentence and
moves real inputs explicitly; the denoising loop makes no ``.cpu()`` / ``.numpy()`` round trip per step.
"""

from __future__ import annotations

import pytest
import torch

from surgsora import SurgSoraAdapter
from surgsora.model.unet import unet_forward
from surgsora.motion import occlusion
from surgsora.motion.splat import forward_splat, forward_splat_video, resize_flow, softmax_splat, sum_splat
from surgsora.tiny import tiny_adapter, tiny_svd_components

META = torch.device("meta")
T, H, W = 4, 64, 64


def test_meta_catches_a_tensor_made_on_the_cpu():
    """The tier's premise: mixing a CPU tensor into a meta computation raises (as it would on CUDA)."""
    x = torch.ones(3, device=META)
    with pytest.raises(RuntimeError, match="device"):
        x + torch.ones(3)
    with pytest.raises(RuntimeError, match="device"):
        torch.zeros(5, device=META).index_add_(0, torch.arange(3), x)


@pytest.fixture(scope="module")
def svd():
    return tiny_svd_components(seed=0, num_frames=T)


def _meta_inputs(batch=2, latent=8):
    return dict(sample=torch.randn(batch, T, 8, latent, latent, device=META),
                encoder_hidden_states=torch.randn(batch, 1, 32, device=META),
                added_time_ids=torch.randn(batch, 3, device=META))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_adapter_and_unet_step_on_meta(svd, dtype):
    unet = tiny_svd_components(seed=0, num_frames=T)["unet"]
    adapter = tiny_adapter(unet, seed=1, randomize=True).to(META, dtype)
    unet = unet.to(META, dtype)
    conditions = adapter.encode_conditions(torch.randn(1, 3, H, W, device=META), torch.rand(1, 1, H, W, device=META),
                                           torch.randn(1, 256, 64, 64, device=META),
                                           torch.randn(1, T - 1, 2, H, W, device=META))
    assert [tuple(c.shape) for c in conditions] == [(1, T, 32, 8, 8), (1, T, 32, 4, 4)]
    assert all(c.device == META and c.dtype == dtype for c in conditions)
    x = _meta_inputs()
    for t in (torch.tensor(1.5, device=META), 1.5, torch.full((2,), 1.5, device=META)):
        down, mid = adapter(x["sample"].to(dtype), t, x["encoder_hidden_states"].to(dtype),
                            x["added_time_ids"].to(dtype), conditions)  # conditions shared by both CFG halves
        out = unet_forward(unet, x["sample"].to(dtype), t, x["encoder_hidden_states"].to(dtype),
                           x["added_time_ids"].to(dtype), down, mid)
        assert out.device == META and out.shape == (2, T, 4, 8, 8) and out.dtype == dtype


def test_mofa_adapter_on_meta():
    from mofa_fixture import tiny_mofa_unet_config

    from diffusers import UNetSpatioTemporalConditionModel
    from surgsora.loading.mofa import MOFA_SEMANTICS
    from surgsora.tiny import tiny_adapter_options

    unet = UNetSpatioTemporalConditionModel(**tiny_mofa_unet_config(T))
    options = dict(tiny_adapter_options(), use_seg_features=False, use_depth_branch=False, **MOFA_SEMANTICS)
    adapter = SurgSoraAdapter.from_unet(unet, **options).to(META)
    conditions = adapter.encode_conditions(torch.randn(1, 3, H, W, device=META), None, None,
                                           torch.randn(1, T - 1, 2, H, W, device=META))
    x = _meta_inputs()
    down, mid = adapter(x["sample"], 1.0, x["encoder_hidden_states"], x["added_time_ids"], conditions)
    out = unet_forward(unet.to(META), x["sample"], 1.0, x["encoder_hidden_states"], x["added_time_ids"], down, mid)
    assert out.device == META and out.shape == (2, T, 4, 8, 8)


def test_splatting_and_occlusion_pieces_on_meta():
    feats = torch.rand(3, 5, 32, 40, device=META)
    flow = torch.randn(3, 2, 32, 40, device=META)
    metric = torch.rand(3, 1, 32, 40, device=META)
    outs = [forward_splat(feats, flow), forward_splat(feats, flow, normalize="softsplat"), sum_splat(feats, flow),
            *softmax_splat(feats, flow, metric, return_coverage=True),
            forward_splat_video(feats[:1], flow.unsqueeze(0)), resize_flow(flow, (16, 20)),
            occlusion.backward_warp(feats, flow), occlusion.inpaint(feats, metric, method="pushpull"),
            occlusion.region_disparity(metric.expand(3, 2, 32, 40)), occlusion.motion_disparity(flow),
            occlusion.dilate(metric, 2)]
    assert all(o.device == META for o in outs)
    assert outs[5].shape == (1, 4, 5, 32, 40) and outs[6].shape == (3, 2, 16, 20)


def test_motion_signal_on_meta(monkeypatch):
    """The occlusion-aware motion signal's computation on meta. Its input checks look at values (finite, in [0, 1]),
    which meta tensors do not have, so they are switched off here; everything after them runs on the device."""
    from surgsora.motion import preview

    monkeypatch.setattr(preview, "_check_unit_image", lambda *a, **k: None)
    monkeypatch.setattr(preview, "_finite", lambda *a, **k: None)
    image = torch.rand(1, 3, H, W, device=META)
    flow = torch.randn(1, T - 1, 2, H, W, device=META)
    for extra in (dict(), dict(depth=torch.rand(1, 1, H, W, device=META)),
                  dict(regions=torch.rand(1, 2, H, W, device=META))):
        video, mask = preview.motion_signal(image, flow, **extra)
        assert video.device == mask.device == META
        assert video.shape == (1, T, 3, H, W) and mask.shape == (1, T, 1, H, W)


def test_numpy_and_opencv_paths_refuse_meta_and_keep_the_input_dtype():
    from surgsora.motion.analytic_flow import AnalyticDecoder

    sparse = torch.zeros(1, 2, 2, 32, 32)
    mask = torch.zeros(1, 2, 1, 32, 32)
    sparse[0, :, 0, 10, 10] = 3.0
    mask[0, :, 0, 10, 10] = 1.0
    decoder = AnalyticDecoder()
    with pytest.raises(ValueError, match="meta device"):
        decoder(None, sparse.to(META), mask.to(META))
    half = decoder(None, sparse.half(), mask.half())  # solved on the CPU in float64, handed back as given
    assert half.dtype == torch.float16 and torch.allclose(half.float(), decoder(None, sparse, mask), atol=2e-3)
    image = torch.rand(1, 3, 16, 16)
    hole = torch.zeros(1, 1, 16, 16)
    hole[..., 4:8, 4:8] = 1
    with pytest.raises(ValueError, match="meta device"):
        occlusion.inpaint(image.to(META), hole.to(META), method="telea")
    filled = occlusion.inpaint(image.half(), hole, method="telea")
    assert filled.dtype == torch.float16 and torch.equal(filled[hole.expand(1, 3, 16, 16) < 0.5],
                                                         image.half()[hole.expand(1, 3, 16, 16) < 0.5])


def test_denoising_loop_makes_no_cpu_round_trip_per_step(svd, monkeypatch):
    """``.cpu()`` / ``.numpy()`` calls while sampling do not grow with the number of steps (dual-clock and the
    adapter on: the whole per-step loop)."""
    import copy

    from surgsora import SurgSoraPipeline

    adapter = tiny_adapter(svd["unet"], seed=1, randomize=True)
    pipe = SurgSoraPipeline(**{k: copy.deepcopy(v) for k, v in svd.items()}, adapter=adapter)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, H, W, generator=g)
    conditions = pipe.prepare_conditions(image, torch.rand(1, 1, H, W, generator=g),
                                         torch.randn(1, 256, 64, 64, generator=g),
                                         torch.randn(1, T - 1, 2, H, W, generator=g))
    signal = torch.rand(1, T, 3, H, W, generator=g)
    mask = torch.ones(1, T, 1, H, W)
    counts = [0]  # (calls before the runs below land here)
    real_cpu, real_numpy = torch.Tensor.cpu, torch.Tensor.numpy

    def counting(fn):
        def wrapped(self, *a, **k):
            counts[-1] += 1
            return fn(self, *a, **k)
        return wrapped

    monkeypatch.setattr(torch.Tensor, "cpu", counting(real_cpu))
    monkeypatch.setattr(torch.Tensor, "numpy", counting(real_numpy))
    first = pipe.encode_first_frame(image, generator=torch.Generator().manual_seed(0))
    for steps, callback in ((2, None), (4, None), (4, lambda i, n, latents: latents.cpu())):
        anchor = pipe.encode_motion_signal(signal, mask, 0, steps)
        counts.append(0)
        pipe.denoise(first, conditions, T, steps, max_guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                     anchor=anchor, callback=callback)
    counts.pop(0)
    assert counts[0] == counts[1], counts
    assert counts[2] == counts[1] + 4  # the count sees a round trip per step when there is one (this callback's)
