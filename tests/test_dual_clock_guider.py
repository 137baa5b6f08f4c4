"""SurgSora Dual-Clock Guider: every bad input is one sentence before any model work (no ComfyUI needed).

Its sampling is checked against the real ComfyUI in tests/integration/test_core_svd.py.
"""

from __future__ import annotations

import pytest
import torch

from nodes.core_svd import SurgSoraDualClockGuider

FRAMES, H, W = 4, 32, 48


def _conditioning(latent=True):
    options = {"fps": 7, "motion_bucket_id": 127, "augmentation_level": 0.02}
    if latent:
        options["concat_latent_image"] = torch.zeros(1, 4, H // 8, W // 8)
    return [[torch.zeros(1, 1, 8), options]]


class _NoVAE:
    def encode(self, pixels):
        raise AssertionError("the VAE must not run for a bad input")


def _run(signal=None, mask=None, positive=None, t_weak=0.32, t_strong=0.42):
    signal = torch.rand(FRAMES, H, W, 3) if signal is None else signal
    mask = torch.ones(FRAMES, H, W) if mask is None else mask
    return SurgSoraDualClockGuider().get_guider(None, positive or _conditioning(), _conditioning(), _NoVAE(),
                                                signal, mask, 3.0, t_weak, t_strong)


@pytest.mark.parametrize("kwargs, message", [
    (dict(positive=_conditioning(latent=False)), "no SVD first-frame latent; connect SurgSora SVD Conditioning"),
    (dict(mask=torch.ones(FRAMES - 1, H, W)), "one mask per frame at the signal's size"),
    (dict(mask=torch.ones(FRAMES, H, W + 8)), "one mask per frame at the signal's size"),
    (dict(signal=torch.full((FRAMES, H, W, 3), float("nan"))), "motion_signal values must be finite and in [0, 1]"),
    (dict(mask=torch.full((FRAMES, H, W), 2.0)), "motion_mask values must be finite and in [0, 1]"),
    (dict(signal=torch.rand(FRAMES, H, W)), "motion_signal"),
    (dict(t_weak=0.5, t_strong=0.4), "t_weak (0.5) must be smaller than t_strong (0.4)"),
    (dict(t_weak=0.2, t_strong=1.5), "both in [0, 1]"),
])
def test_bad_inputs_are_one_sentence_before_any_work(kwargs, message):
    with pytest.raises(ValueError) as err:
        _run(**kwargs)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_validate_inputs_catches_the_order_before_execution():
    assert SurgSoraDualClockGuider.VALIDATE_INPUTS(t_weak=0.32, t_strong=0.42) is True
    assert "must be smaller than t_strong" in SurgSoraDualClockGuider.VALIDATE_INPUTS(t_weak=0.42, t_strong=0.42)
