"""Cosmos-H-Surgical through the SurgSora nodes in the real ComfyUI, in-process, on a tiny model of the published
layout (``cosmos_models.py`` runs in ComfyUI's Python and reports measured values; here they are held to the
issue's known answers: Euler, the same seed and noise throughout).
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
SCRIPT = Path(__file__).with_name("cosmos_models.py")
USE = "cosmos-h-surgical-predict_model_ema_bf16.pt"


@pytest.fixture(scope="module")
def measured():
    return measure(SCRIPT)


def test_the_file_loads_as_comfyuis_cosmos_with_predict_2_5s_additions(measured):
    assert measured["model_class"] == "CosmosPredict25" and measured["is_comfyui_cosmos_predict2"]
    kind, shift, sigma_max, sigma_min = measured["sampling"]
    assert shift == 5.0 and sigma_max == 1.0  # rectified flow, shift 5, the full t range (ComfyUI's EDM cap: 0.988)
    assert measured["sigmas_first_last"][0] == 1.0
    assert measured["loaded_keys_vs_file"] == []  # every weight of the file, nothing else (crossattn_proj kept)
    assert measured["crossattn_proj_weight_vs_file"] == 0
    assert measured["proj_calls"] == [[96, 1024]]  # the Reason1 features reach the 1024-wide context through it


def test_image_to_video_goes_through_the_conditioning(measured):
    assert measured["latent_keys"] == ["samples"]  # no LATENT noise_mask
    assert measured["latent_shape"] == [1, 16, 3, 8, 8]
    assert measured["concat_mask_per_frame"] == [0.0, 1.0, 1.0]
    assert measured["first_frame_latent_vs_vae"] == 0
    assert measured["one_step_finite"]


def test_conditioning_frames_keep_the_trainings_timestep_rule(measured):
    assert measured["timesteps_shape"] == [2]  # one timestep per sample (cond, uncond), none per frame
    assert measured["timesteps_vs_sigma"] == 0  # t = sigma = 1 at the first step, on every frame
    assert measured["comfyui_predict2_rule_per_frame"] == [0.0, 1.0, 1.0]  # what core's Predict2 rule would give
    assert measured["net_input_channels"] == 17  # 16 latent + the condition mask (+ the DiT's padding mask)
    assert measured["net_mask_channel_per_frame"] == [1.0, 0.0, 0.0]
    assert measured["net_frame0_vs_clean_latent"] == 0  # the net sees the clean conditioning frame
    assert measured["net_other_frames_vs_noise"] == 0
    assert measured["sampled_frame0_vs_known"] <= 1e-5  # and it is kept: the prediction there is the frame
    assert measured["sampled_other_frames_vs_known"] > 1e-2
    # ComfyUI's own CosmosPredict2ImageToVideoLatent (a LATENT noise_mask) gets the same rule
    assert measured["noise_mask_path_timesteps_shape"] == [2]
    assert measured["noise_mask_path_net_frame0_vs_clean"] <= 1e-6 and measured["noise_mask_path_frame0_kept"] <= 1e-5


def test_dual_clock_known_answers_on_cosmos(measured):
    assert measured["cosmos_family"] == "CosmosPredict25" and measured["signal_shape"] == [1, 16, 3, 8, 8]
    assert measured["empty_mask_vs_plain_from_t_weak"] == 0  # bit for bit
    assert measured["full_mask_to_end_vs_signal"] <= 1e-5 * max(1.0, measured["scale"])
    assert measured["free_vs_signal"] > 1e-2
    assert "SurgSora Cosmos Image to Video" in measured["error_no_frame_conditioning"]


def test_reason1_embedding_through_comfyuis_qwen25_vl_class(measured):
    assert measured["reason1_shape"] == [1, 12, 3 * 32]  # layers x width features per token
    assert measured["reason1_vs_independent"] <= 1e-5
    assert measured["reason1_layer_means_max"] <= 1e-5 and measured["reason1_layer_std_minus_1_max"] <= 1e-5
    # 512 tokens, opening with <|im_start|> (151644), two turns (system, user), padded with <|endoftext|> (151643)
    assert measured["reason1_tokens"] == [512, 151644, 2, 151643]
    # the node: that embedding of the prompt's 512 tokens, as CONDITIONING
    assert measured["reason1_node_shape"] == [1, 512, 96] and measured["reason1_node_vs_direct"] == 0


def test_wrong_files_are_one_sentence_through_the_node(measured):
    words = {"transfer": "Cosmos Transfer", "cosmos3": "Cosmos 3", "truncated": "is truncated",
             "not_a_state_dict": "not a readable state dict"}
    for name, what in words.items():
        message = measured[f"error_{name}"]
        assert message.startswith("ModelFileError: ") and what in message and USE in message, message
        assert "\n" not in message and ". " not in message.split(": ", 1)[1], message
