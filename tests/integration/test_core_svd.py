"""SurgSora under ComfyUI's own SVD (``nodes/core_svd.py``), checked against the real ComfyUI.

``core_parity.py`` runs in ComfyUI's Python (it imports ``comfy``) and reports differences; here they are
held to the issue's bounds: ComfyUI's SVD UNet and the diffusers UNet with the same weights (our sgm <->
diffusers key table) agree in fp32 to 1e-4 with and without residuals, the control built by
``SurgSora Apply (SVD)`` hands ComfyUI exactly the adapter's residuals (``output`` per skip, ``middle``,
nothing through ``input``), the adapter is one of the models ComfyUI's memory manager loads, and the
dual-clock guider samples as Time-to-Move through core sampling.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .in_comfyui import measure

COMFYUI = os.environ.get("COMFYUI_PATH")
if not COMFYUI:
    pytest.skip("COMFYUI_PATH is not set: point it at a ComfyUI checkout (and COMFYUI_PYTHON at its Python)",
                allow_module_level=True)

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).with_name("core_parity.py")


@pytest.fixture(scope="module")
def measured():
    return measure(SCRIPT)


def test_comfyui_svd_unet_equals_the_diffusers_unet(measured):
    assert measured["model_class"] == "SVD_img2vid"
    assert measured["y_vs_diffusers_projection"] < 1e-6  # the micro-conditioning sinusoids agree
    assert measured["plain_max_abs"] <= 1e-4
    assert measured["with_residuals_max_abs"] <= 1e-4
    assert measured["residual_effect"] > 100 * 1e-4  # the residuals matter far beyond the tolerance


def test_surgsora_control_hands_comfyui_the_adapters_residuals(measured):
    assert measured["control_output_max_abs"] == 0 and measured["control_middle_max_abs"] == 0
    assert measured["control_input_entries"] == 0  # nothing through 'input' (it would leak into deeper blocks)
    assert measured["control_in_denoise_max_abs"] <= 1e-4
    assert measured["control_models"] == ["ModelPatcher"] and measured["adapter_loaded"]
    assert measured["control_memory_bytes"] > 0


def test_dual_clock_guider_is_time_to_move_through_core_sampling(measured):
    # Euler through SamplerCustomAdvanced's guider path equals TTM's step-then-re-anchor loop (with the SurgSora
    # control on the same conditioning), to fp32 rounding of latents of magnitude ~16
    assert measured["dual_clock_vs_ttm_max_abs"] <= 1e-4 * max(1.0, measured["dual_clock_scale"])
    assert measured["dual_clock_free_region_changed"] > 1.0  # the free region was denoised, not copied
    assert measured["dual_clock_vs_sdedit_in_free_region"] > 1e-2  # and the anchor reached it through the model
    assert measured["dual_clock_empty_mask_vs_sdedit"] == 0  # no mask: plain sampling from t_weak, bit for bit
    assert measured["dual_clock_full_mask_to_end_vs_signal"] <= 1e-5  # full mask to the end: the signal itself
    # anchoring in the guider's model call (made for every family) is, on SVD, the first shipped guider exactly
    assert measured["dual_clock_vs_inpainting_rule_guider"] == 0


def test_dual_clock_guider_node_encodes_at_the_conditionings_size(measured):
    assert measured["dual_clock_node_signal_max_abs"] <= 1e-6  # resized to the video size, encoded by the VAE given
    assert measured["dual_clock_node_mask_on_latent_grid"] == [3, 1, 8, 8]
    assert measured["dual_clock_node_mask_binary"]  # thresholded at 0.5, nearest: anchored or free
    assert "t_weak (0.9) must be smaller than t_strong (0.5)" in measured["dual_clock_bad_order"]
