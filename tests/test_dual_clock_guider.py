"""SurgSora Dual-Clock Guider: every bad input is one sentence before any model work (no ComfyUI needed), and the
library rules it uses (latent geometry, TTM's temporal mask rule, full-schedule step indices).

Its sampling is checked against the real ComfyUI in tests/integration/test_core_svd.py (SVD) and
tests/integration/test_wan_dual_clock.py (Wan).
"""

from __future__ import annotations

import pytest
import torch

from nodes.core_svd import SurgSoraDualClockGuider, model_family, vae_compression
from surgsora.sampling.dual_clock import (TTM_PRESETS, check_frame_count, dual_clock_indices, latent_mask,
                                          stage_indices)

FRAMES, H, W = 4, 32, 48


def _model(name="SVD_img2vid", channels=4):
    """A stand-in core MODEL: ComfyUI's ModelPatcher holds the model, whose class names the family."""
    format_ = type("LatentFormat", (), {"latent_channels": channels})()
    model = type(name, (), {"latent_format": format_})()
    return type("ModelPatcher", (), {"model": model})()


def _conditioning(latent=True, shape=(1, 4, H // 8, W // 8)):
    options = {"fps": 7, "motion_bucket_id": 127, "augmentation_level": 0.02}
    if latent:
        options["concat_latent_image"] = torch.zeros(shape)
    return [[torch.zeros(1, 1, 8), options]]


class _NoVAE:
    def encode(self, pixels):
        raise AssertionError("the VAE must not run for a bad input")


class _NoWanVAE(_NoVAE):  # the Wan 2.1 VAE's attributes as ComfyUI sets them
    downscale_index_formula = (4, 8, 8)
    latent_channels = 16


def _run(signal=None, mask=None, positive=None, t_weak=0.32, t_strong=0.42, model=None, vae=None, frames=FRAMES,
         **kw):
    signal = torch.rand(frames, H, W, 3) if signal is None else signal
    mask = torch.ones(frames, H, W) if mask is None else mask
    return SurgSoraDualClockGuider().get_guider(model or _model(), positive or _conditioning(), _conditioning(),
                                                vae or _NoVAE(), signal, mask, 3.0, t_weak, t_strong, **kw)


@pytest.mark.parametrize("kwargs, message", [
    (dict(positive=_conditioning(latent=False)), "no SVD first-frame latent; connect SurgSora SVD Conditioning"),
    (dict(mask=torch.ones(FRAMES - 1, H, W)), "one mask per frame at the signal's size"),
    (dict(mask=torch.ones(FRAMES, H, W + 8)), "one mask per frame at the signal's size"),
    (dict(signal=torch.full((FRAMES, H, W, 3), float("nan"))), "motion_signal values must be finite and in [0, 1]"),
    (dict(mask=torch.full((FRAMES, H, W), 2.0)), "motion_mask values must be finite and in [0, 1]"),
    (dict(signal=torch.rand(FRAMES, H, W)), "motion_signal"),
    (dict(t_weak=0.5, t_strong=0.4), "t_weak (0.5) must be smaller than t_strong (0.4)"),
    (dict(t_weak=0.2, t_strong=1.5), "both in [0, 1]"),
    (dict(model=_model("Flux")), "supports SVD / SVD-xt, Wan 2.1 I2V, Wan 2.2 I2V A14B and Wan 2.2 TI2V-5B, not this "
                                 "model (Flux)"),
    (dict(vae=_NoWanVAE()), "SVD samples one latent per frame but this VAE compresses time"),
    (dict(model=_model("WAN21", 16)), "A Wan model samples a video latent; connect its video VAE"),
    (dict(model=_model("WAN21", 16), vae=_NoWanVAE()), "has 4 frames but this video VAE compresses time 4x and needs "
                                                        "4n + 1 frames (e.g. 1 or 5)"),
    (dict(model=_model("WAN21", 16), vae=_NoWanVAE(), frames=9, positive=_conditioning(shape=(1, 16, 5, 4, 6))),
     "has 9 frames but the video conditioning was made for 17"),
    (dict(model=_model("WAN22", 48), vae=_NoWanVAE(), frames=9), "samples 48-channel latents but the VAE makes 16"),
    (dict(model=_model("WAN21", 16), vae=_NoWanVAE(), frames=9, signal=torch.full((9, H, W, 3), float("nan"))),
     "motion_signal values must be finite"),
    (dict(full_sigmas=torch.tensor([1.0, float("nan"), 0.0])), "full_sigmas must be finite"),
])
def test_bad_inputs_are_one_sentence_before_any_work(kwargs, message):
    with pytest.raises(ValueError) as err:
        _run(**kwargs)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_validate_inputs_catches_the_order_before_execution():
    assert SurgSoraDualClockGuider.VALIDATE_INPUTS(t_weak=0.32, t_strong=0.42) is True
    assert "must be smaller than t_strong" in SurgSoraDualClockGuider.VALIDATE_INPUTS(t_weak=0.42, t_strong=0.42)
    assert SurgSoraDualClockGuider.VALIDATE_INPUTS(preset=next(iter(TTM_PRESETS))) is True
    assert "preset must be custom" in SurgSoraDualClockGuider.VALIDATE_INPUTS(preset="nope")
    # a preset replaces the widgets' values
    assert SurgSoraDualClockGuider.VALIDATE_INPUTS(t_weak=0.5, t_strong=0.4, preset=next(iter(TTM_PRESETS))) is True


def test_presets_are_ttms_steps_of_50():
    steps = {name: dual_clock_indices(*pair, 50) for name, pair in TTM_PRESETS.items()}
    assert list(steps.values()) == [(16, 21), (3, 7), (2, 5)]


def test_model_family_and_vae_geometry_from_comfyui_attributes():
    assert model_family(_model("WAN22")) == "WAN22"
    assert vae_compression(type("SVDVAE", (), {"downscale_ratio": 8})()) == (1, 8)
    assert vae_compression(_NoWanVAE()) == (4, 8)
    # an older ComfyUI VAE without downscale_index_formula: read from its frame formula
    wan22 = type("VAE", (), {"downscale_ratio": (lambda a: max(0, (a + 3) // 4), 16, 16)})()
    assert vae_compression(wan22) == (4, 16)


def test_ttm_temporal_mask_rule():
    mask = torch.zeros(81, 1, 32, 32)
    for frame in range(81):
        mask[frame] = frame  # the frame index, to read back which pixel frames were taken
    taken = latent_mask(mask / 100 + 0.495, (4, 4), temporal=4)[:, 0, 0, 0]  # > 0.5 from frame 1 on
    assert taken.shape == (21,) and taken.tolist() == [0.0] + [1.0] * 20
    picked = torch.zeros(81, 1, 8, 8)
    picked[2] = picked[3] = picked[4] = 1  # not in [0] + [1::4]
    assert latent_mask(picked, (1, 1), 4).sum() == 0
    picked[5] = 1
    assert latent_mask(picked, (1, 1), 4)[:, 0, 0, 0].nonzero().flatten().tolist() == [2]
    half = torch.full((5, 1, 8, 8), 0.5)
    assert latent_mask(half, (1, 1), 4).sum() == 0  # threshold 0.5, strictly above
    svd = (torch.rand(3, 1, 16, 16) > 0.5).float()
    assert torch.equal(latent_mask(svd, (2, 2)), latent_mask(svd, (2, 2), temporal=1))  # SVD: unchanged
    check_frame_count(81, 4, 21)
    check_frame_count(14, 1, 14)


def test_full_schedule_indices_survive_a_split():
    full = torch.linspace(1, 0, 51)
    assert stage_indices(0.06, 0.14, full, full) == stage_indices(0.06, 0.14, full) == (3, 7)
    assert stage_indices(0.06, 0.14, full[:11], full) == (3, 7)  # the high-noise stage of a split at step 10
    assert stage_indices(0.06, 0.14, full[:11]) == (1, 1 + 1)  # without full_sigmas: fractions of the stage
    with pytest.raises(ValueError, match="this stage runs steps 0 to 5; split the sigmas at step 7 or later"):
        stage_indices(0.06, 0.14, full[:6], full)
    with pytest.raises(ValueError, match="not a run of the 50-step schedule"):
        stage_indices(0.06, 0.14, torch.linspace(1, 0, 11), full)
