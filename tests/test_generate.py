"""surgsora.sampling.generate: sample() and generate(), the one composition the CLI, `python -m train sample` and the
ComfyUI sampler share, on tiny random models of the real architectures (SVD, adapter, SAM, Depth Anything).

References: sample() against the pipeline's pieces called in the order the node and the CLI used (first frame,
conditions, motion signal, denoise); generate() against the pipeline's own diffusers-style ``__call__`` given the
flow, depth, SAM features and motion signal generate() reports it computed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from surgsora import SurgSoraPipeline
from surgsora.motion.analytic_flow import AnalyticDecoder
from surgsora.motion.preview import motion_signal
from surgsora.motion.tracks import tracks_to_flow
from surgsora.sampling.dual_clock import dual_clock_indices
from surgsora.sampling.generate import Deferred, Models, NonFiniteVideo, generate, sample
from surgsora.sampling.settings import SamplingSettings, SettingError, check_video_size
from surgsora.tiny import tiny_adapter, tiny_depth, tiny_sam, tiny_svd_components

H = W = 64
T = 4
# Every setting away from its default, so a setting dropped on the way would show.
SETTINGS = SamplingSettings(steps=3, min_cfg=1.5, max_cfg=2.5, fps=9, motion_bucket_id=60, noise_aug_strength=0.05,
                            control_scale=0.7, seed=3, t_weak=0.34, t_strong=0.67)
# Two tracks on the frame: one moving right, one still (an anchor).
TRACKS = np.array([[[20.5, 30.5], [24.5, 30.5], [28.5, 31.5], [32.5, 32.5]], [[50.5, 12.5]] * T], np.float32)


@pytest.fixture(scope="module")
def svd():
    return tiny_svd_components(seed=0, num_frames=T)


@pytest.fixture(scope="module")
def adapter(svd):
    return tiny_adapter(svd["unet"], seed=2, randomize=True)


@pytest.fixture(scope="module")
def image(endovis_frame):
    import cv2

    frame = cv2.resize(endovis_frame, (W, H), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def perception():
    return tiny_sam(seed=0), tiny_depth(seed=0)


@pytest.fixture(scope="module")
def conditions(svd, adapter, image):
    g = torch.Generator().manual_seed(5)
    flow = torch.randn(1, T - 1, 2, H, W, generator=g) * 3
    depth, seg = torch.rand(1, 1, H, W, generator=g), torch.randn(1, 256, 64, 64, generator=g)
    return SurgSoraPipeline(**svd, adapter=adapter).prepare_conditions(image, depth, seg, flow)


@pytest.fixture(scope="module")
def signal(image):
    video = torch.stack([torch.roll(image[0], shifts=2 * t, dims=-1) for t in range(T)])[None]
    mask = torch.zeros(1, T, 1, H, W)
    mask[..., :, : W // 2] = 1
    return video, mask


def _old_order(pipe, image, settings, conditions=None, signal=None, mask=None):
    """What the sampler node and the CLI ran before sample(): the pipeline's pieces, one generator, in this order."""
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    first = pipe.encode_first_frame(image, H, W, settings.noise_aug_strength, generator)
    anchor = None
    if signal is not None:
        weak, strong = dual_clock_indices(settings.t_weak, settings.t_strong, settings.steps)
        anchor = pipe.encode_motion_signal(signal, mask, weak, strong, H, W)
    return pipe.denoise(first, conditions, T, settings.steps, settings.min_cfg, settings.max_cfg, settings.fps,
                        settings.motion_bucket_id, settings.control_scale, generator, anchor=anchor)


@pytest.mark.parametrize("with_adapter, dual_clock", [(False, False), (True, False), (False, True), (True, True)])
def test_sample_is_the_pipelines_pieces_in_the_old_order(svd, adapter, image, conditions, signal, with_adapter,
                                                         dual_clock):
    pipe = SurgSoraPipeline(**svd, adapter=adapter if with_adapter else None)
    conds = conditions if with_adapter else None
    sig, mask = signal if dual_clock else (None, None)
    settings = dataclasses.replace(SETTINGS, frames=None if (with_adapter or dual_clock) else T)
    steps = []
    ours = sample(pipe, image, settings, conditions=conds, motion_signal=sig, motion_mask=mask,
                  callback=lambda i, n, lat: steps.append((i, n)))
    with torch.no_grad():
        expected = _old_order(pipe, image, SETTINGS, conds, sig, mask)
    assert ours.shape == (1, T, 4, H // 8, W // 8)
    assert torch.equal(ours, expected)
    start = dual_clock_indices(SETTINGS.t_weak, SETTINGS.t_strong, SETTINGS.steps)[0] if dual_clock else 0
    assert steps == [(i, SETTINGS.steps - start) for i in range(1, SETTINGS.steps - start + 1)]


def test_sample_blames_the_input_that_disagrees_before_any_compute(svd, adapter, image, conditions, signal,
                                                                   monkeypatch):
    pipe = SurgSoraPipeline(**svd, adapter=adapter)

    def no_compute(*a, **k):
        raise AssertionError("a model ran before the inputs were checked")

    monkeypatch.setattr(pipe, "encode_first_frame", no_compute)
    sig, mask = signal
    cases = [
        (dict(conditions=conditions, motion_signal=sig[:, :3], motion_mask=mask[:, :3]), SETTINGS,
         "The motion signal has 3 frames but the conditions 4"),
        (dict(conditions=conditions), dataclasses.replace(SETTINGS, frames=6),
         "frames is 6 but the conditions were made for 4 frames"),
        (dict(motion_signal=sig, motion_mask=mask), dataclasses.replace(SETTINGS, frames=6),
         "frames is 6 but the motion signal has 4 frames"),
        (dict(motion_signal=sig), SETTINGS, "motion_mask is missing"),
        (dict(motion_signal=sig, motion_mask=mask[:, :, :, :32]), SETTINGS, "motion_mask is (32, 64) (H, W)"),
        (dict(conditions=[c.expand(2, *c.shape[1:]) for c in conditions]), SETTINGS,
         "The conditions are for a batch of 2 but the image batch is 1"),
    ]
    for kwargs, settings, words in cases:
        with pytest.raises(ValueError) as info:
            sample(pipe, image, settings, **kwargs)
        assert words in str(info.value) and "\n" not in str(info.value), (words, str(info.value))
    with pytest.raises(ValueError, match="Conditions were given but the pipeline has no adapter"):
        sample(SurgSoraPipeline(**svd), image, SETTINGS, conditions=conditions)
    with pytest.raises(SettingError, match=r"multiples of 64 \(e.g. 128x64\)"):
        sample(pipe, image, SETTINGS, height=64, width=100)


def test_video_size_rule_suggests_a_size_that_works():
    check_video_size(448, 256)
    with pytest.raises(SettingError, match=r"^--size 1000x570 is not a size SVD can generate: .* \(e.g. 1024x576\)\.$"):
        check_video_size(1000, 570, what="--size")
    with pytest.raises(SettingError, match=r"\(e.g. 64x64\)"):
        check_video_size(10, 0)


def _models(svd, adapter=None, sam=None, depth=None):
    return Models(svd=svd, adapter=adapter, sam=sam, depth=depth, decoder=AnalyticDecoder())


def test_generate_adapter_mode_is_the_pipeline_given_what_it_computed(svd, adapter, image, perception):
    sam, depth_model = perception
    made = generate(_models(svd, adapter, sam, depth_model), image, SETTINGS, tracks=TRACKS)
    assert made.video.shape == (T, 3, H, W) and made.video.dtype == torch.float32
    assert 0 <= made.video.min() and made.video.max() <= 1
    assert made.regions.shape == (1, len(TRACKS), H, W)  # SAM's mask of each tracked object
    assert made.depth.shape == (1, 1, H, W) and made.motion_mask is None
    assert torch.equal(made.flow, tracks_to_flow(AnalyticDecoder(), image, TRACKS, (W, H), made.regions))
    s = SETTINGS
    expected = SurgSoraPipeline(**svd, adapter=adapter)(
        image, flow=made.flow, depth=made.depth, seg_features=sam.encode(image), num_inference_steps=s.steps,
        min_guidance_scale=s.min_cfg, max_guidance_scale=s.max_cfg, fps=s.fps, motion_bucket_id=s.motion_bucket_id,
        noise_aug_strength=s.noise_aug_strength, conditioning_scale=s.control_scale,
        generator=torch.Generator().manual_seed(s.seed))
    assert torch.equal(made.video, expected[0])


def test_generate_ttm_mode_is_dual_clock_on_the_motion_signal(svd, image, perception):
    sam, depth_model = perception
    settings = dataclasses.replace(SETTINGS, decode_chunk=3)
    made = generate(_models(svd, None, sam, depth_model), image, settings, tracks=TRACKS, mode="ttm")
    signal_video, mask = motion_signal(image, made.flow, depth=made.depth, regions=made.regions)
    assert torch.equal(made.motion_mask, mask) and mask.shape == (1, T, 1, H, W) and mask.any()
    weak, strong = dual_clock_indices(settings.t_weak, settings.t_strong, settings.steps)
    s = settings
    expected = SurgSoraPipeline(**svd)(
        image, num_frames=T, num_inference_steps=s.steps, min_guidance_scale=s.min_cfg, max_guidance_scale=s.max_cfg,
        fps=s.fps, motion_bucket_id=s.motion_bucket_id, noise_aug_strength=s.noise_aug_strength,
        decode_chunk_size=s.decode_chunk, generator=torch.Generator().manual_seed(s.seed),
        motion_signal=signal_video, motion_mask=mask, t_weak_index=weak, t_strong_index=strong)
    assert torch.equal(made.video, expected[0])


def test_generate_with_a_flow_given_is_what_train_sample_ran(svd, adapter, image):
    """`python -m train sample` gives the cached flow, depth and SAM features; it used to call the pipeline."""
    g = torch.Generator().manual_seed(11)
    flow = torch.randn(1, T - 1, 2, H, W, generator=g)
    depth, seg = torch.rand(1, 1, H, W, generator=g), torch.randn(1, 256, 64, 64, generator=g)
    settings = SamplingSettings(steps=2, seed=4)
    made = generate(Models(svd=svd, adapter=adapter), image, settings, flow=flow, depth=depth, seg_features=seg)
    before = SurgSoraPipeline(**svd, adapter=adapter)(image, flow=flow, depth=depth, seg_features=seg,
                                                      num_inference_steps=2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(made.video, before[0]) and made.flow is flow and made.regions is None


def test_generate_loads_deferred_models_only_when_needed(svd, image, perception):
    sam, depth_model = perception
    loads = []

    def loader(name, model):
        return Deferred(lambda: loads.append(name) or model)

    models = Models(svd=loader("svd", svd), sam=loader("sam", sam), depth=loader("depth", depth_model),
                    decoder=loader("decoder", AnalyticDecoder()))
    generate(models, image, dataclasses.replace(SETTINGS, steps=2), tracks=TRACKS, mode="ttm", regions=torch.ones(
        1, 1, H, W))
    assert loads == ["depth", "decoder", "svd"]  # regions given and no adapter: SAM has nothing to do


def test_generate_checks_everything_before_any_model_runs(svd, adapter, image, perception):
    sam, depth_model = perception
    ran = []

    def never(name):
        return Deferred(lambda: ran.append(name))

    def models(adapter=None):
        return Models(svd=never("svd"), adapter=adapter, sam=never("sam"), depth=never("depth"),
                      decoder=never("decoder"))

    flow = torch.zeros(1, T - 1, 2, H, W)
    cases = [
        (models(adapter), image, dict(tracks=TRACKS), dataclasses.replace(SETTINGS, frames=6),
         "frames is 6 but the tracks have 4 frames"),
        (models(adapter), image, dict(flow=flow), dataclasses.replace(SETTINGS, frames=5),
         "frames is 5 but the flow has steps for 4 frames"),
        (models(adapter), torch.zeros(1, 3, 64, 100), dict(tracks=TRACKS), SETTINGS, "multiples of 64"),
        (models(), image, dict(tracks=TRACKS), SETTINGS, "mode 'adapter' needs an adapter"),
        (models(adapter), image, dict(tracks=TRACKS, mode="fast"), SETTINGS, "mode must be 'adapter' or 'ttm'"),
        (models(adapter), image, dict(tracks=TRACKS, flow=flow), SETTINGS, "not both"),
        (models(adapter), image, dict(flow=flow[..., :32]), SETTINGS, "flow is 32x64 but the frame is 64x64"),
        (models(adapter), image, dict(tracks=TRACKS, depth=torch.zeros(1, 1, 32, 32)), SETTINGS,
         "depth must be [1, 1, 64, 64]"),
        (Models(svd=never("svd"), adapter=adapter, decoder=AnalyticDecoder()), image, dict(tracks=TRACKS), SETTINGS,
         "This adapter uses SAM features: give seg_features or a SAM model"),
    ]
    for m, img, kwargs, settings, words in cases:
        with pytest.raises(ValueError) as info:
            generate(m, img, settings, **kwargs)
        assert words in str(info.value) and "\n" not in str(info.value), (words, str(info.value))
    assert ran == []
    with pytest.raises(SettingError, match=r"^t_weak \(0.5\) must be smaller than t_strong \(0.4\)"):
        SamplingSettings(t_weak=0.5, t_strong=0.4)  # a bad setting never gets as far as generate()


def test_a_video_that_is_not_finite_is_refused_not_returned(svd, image, monkeypatch):
    monkeypatch.setattr(SurgSoraPipeline, "decode", lambda self, latents, chunk=None: latents[:, :, :3] * float("nan"))
    with pytest.raises(NonFiniteVideo, match="NaN or infinite values"):
        generate(Models(svd=svd), image, dataclasses.replace(SETTINGS, steps=1), flow=torch.zeros(1, T - 1, 2, H, W),
                 mode="ttm")
