"""``benchmarks/comfy_step.py``: one core KSampler step with SurgSora Apply (SVD) vs without in the real ComfyUI.

The smoke run (``--tiny``, ComfyUI's Python, COMFYUI_PATH) checks that the benchmark measures what it says:
ComfyUI's SVD model holds the diffusers UNet's weights, cond and uncond go through one batched model call per
step, the control changes the sampled latent, and the table's figures and peak RSS are there. Its refusals
without a ComfyUI checkout need no ComfyUI and run everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "comfy_step.py"
COMFYUI = os.environ.get("COMFYUI_PATH")


def run(env_path, *args, python=sys.executable, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    if env_path is not None:
        env["COMFYUI_PATH"] = str(env_path)
    return subprocess.run([python, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_refuses_without_comfyui_path():
    out = run(None, "--tiny")
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == ["comfy_step.py: COMFYUI_PATH is not set; point it at a ComfyUI "
                                               "checkout and run this with that ComfyUI's Python."]


def test_refuses_a_folder_that_is_not_comfyui(tmp_path):
    out = run(tmp_path, "--tiny")
    assert out.returncode != 0
    assert len(out.stderr.strip().splitlines()) == 1 and "is not a ComfyUI checkout" in out.stderr


@pytest.mark.integration
@pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set: point it at a ComfyUI checkout "
                                        "(and COMFYUI_PYTHON at its Python)")
def test_tiny_run_times_both_paths_in_the_real_comfyui():
    frames = 3
    out = run(COMFYUI, "--tiny", "--repeats", "1", "--frames", str(frames),
              python=os.environ.get("COMFYUI_PYTHON", sys.executable), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["comfy_model"] == "SVD_img2vid" and result["weights_shared"]
    # cond + uncond in one call (cfg > 1), with and without the control
    assert result["comfy_call_batches"] == {"comfy_bare": [2 * frames], "comfy_surgsora": [2 * frames]}
    assert result["comfy_batching"] == "forced" and result["core_batch_estimate_gb"] > 0
    assert result["comfy_model_calls_per_step"] == 1
    assert result["control_effect_max_abs"] > 1e-3  # SurgSora Apply's control reached the UNet
    for key in ("comfy_bare_s", "comfy_surgsora_s", "comfy_ratio", "diffusers_bare_s", "diffusers_cached_s",
                "diffusers_ratio"):
        assert result[key] > 0, key
    assert 0 < result["rss_weights_gb"] <= result["comfy_peak_rss_gb"]
    assert result["rss_weights_gb"] <= result["diffusers_peak_rss_gb"]
    assert "ComfyUI KSampler" in out.stdout and "diffusers UNet step" in out.stdout
