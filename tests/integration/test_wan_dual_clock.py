"""SurgSora Dual-Clock Guider on Wan (2.2 I2V A14B layout, 2.2 TI2V-5B layout) in the real ComfyUI, in-process.

``wan_models.py`` runs in ComfyUI's Python on tiny Wan models that ComfyUI's own detection loads, and reports
measured values; here they are held to the issue's known answers (Euler, same seed and noise throughout).
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
SCRIPT = Path(__file__).with_name("wan_models.py")


@pytest.fixture(scope="module")
def measured():
    return measure(SCRIPT)


def test_comfyui_detects_the_tiny_wan_models_and_vae_geometry(measured):
    assert measured["a14b_class"] == "WAN21" and measured["ti2v_class"] == "WAN22"
    assert measured["vae21_compression"] == [4, 8] and measured["vae22_compression"] == [4, 16]


def test_known_answers_on_wan(measured):
    tol = 1e-4 * max(1.0, measured["scale"])
    assert measured["empty_mask_vs_plain_from_t_weak"] == 0  # no mask: plain sampling from t_weak, bit for bit
    assert measured["full_mask_to_end_vs_signal"] <= 1e-5 * measured["scale"]  # the signal's latent itself
    assert measured["full_mask_to_t_strong_vs_plain_from_t_strong"] <= tol  # anchored latent, then free
    assert measured["ttm_loop_max_abs"] <= tol  # TTM's own Wan loop (step, then re-anchor)
    assert measured["free_region_vs_sdedit"] > 1e-2  # the anchor reached the free region through the model


def test_ttm_temporal_mask_rule_through_the_node(measured):
    assert measured["node_signal_shape"] == [1, 16, 3, 8, 8] and measured["node_mask_shape"] == [1, 1, 3, 8, 8]
    assert measured["node_signal_vs_vae"] <= 1e-6  # the real (tiny) Wan 2.1 VAE encodes the whole clip
    assert measured["node_mask_frame2_sum"] == 0  # pixel frame 2 is not in [0] + [1::4]
    assert measured["mask_on_frame2_vs_empty"] == 0
    assert measured["core_reshape_mask_81_frame2_max"] > 0.1  # core's trilinear resize (81 -> 21) would anchor it
    assert measured["ttm_rule_81_frame2_shape_sum"] == [21, 1, 8, 8, 0]
    assert measured["node_mask_frame1_per_latent_frame"] == [0, 64, 0]
    assert measured["mask_on_frame1_latent1_vs_signal"] <= 1e-5 * measured["scale"]
    assert measured["mask_on_frame1_other_frames_vs_signal"] > 1e-2


def test_split_sigmas_keep_the_steps_of_the_whole_schedule(measured):
    assert measured["split_vs_unsplit"] <= 1e-4 * max(1.0, measured["scale"])
    assert measured["split_without_full_sigmas_vs_unsplit"] > 1e-2  # fractions of the stage mean other steps
    assert measured["two_experts_ran"] > 1e-3  # the low-noise stage is a different model's
    message = measured["error_t_strong_past_stage"]
    assert "this stage runs steps 0 to 5" in message and "\n" not in message


def test_wan_2_2_5b_keeps_its_first_frame(measured):
    assert measured["ti2v_signal_shape"] == [1, 48, 3, 4, 4]
    assert measured["ti2v_first_frame_vs_start_latent"] <= 1e-5
    assert measured["ti2v_rest_vs_signal"] <= 1e-5 * max(1.0, measured["scale"])
    assert measured["ti2v_empty_mask_vs_plain_from_t_weak"] == 0


def test_bad_inputs_are_one_sentence(measured):
    assert "needs 4n + 1 frames" in measured["error_frame_mismatch"]
    assert "motion_signal values must be finite" in measured["error_nan_signal"]
    for key in ("error_frame_mismatch", "error_nan_signal"):
        assert "\n" not in measured[key]
