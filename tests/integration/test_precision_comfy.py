"""ComfyUI's own SVD with SurgSora Apply, and the dual-clock guider, with the model in fp16 and with ComfyUI's
``weight_dtype`` fp8 (weights stored in float8_e4m3fn, computed in bf16 by ComfyUI's manual cast), against fp32.

This file is both the test (our Python, pytest) and the measurement (run by ComfyUI's Python, which imports
``comfy``; it prints one JSON line). The tiny SVD UNet of ``core_parity.py`` (imported, not changed) is built three
times by ComfyUI's model classes: fp32; fp16; fp8 storage with bf16 compute. The SurgSora adapter runs in the
precision its loader would give it beside each (fp32, fp16, bf16). Through core sampling (Euler, CFG 2.5, 4 steps):

* ``apply``: CFGGuider on the conditioning from ``SurgSora Apply (SVD)``;
* ``dual_clock``: ``SurgSora Dual-Clock Guider`` with the same conditioning.

Tolerances (largest difference of the final latents over their largest value): fp16 2e-2 (measured 0.002), fp8
0.18 (measured 0.11: float8_e4m3fn has 3 mantissa bits, each weight is off by up to 6%). Both are checked to be at
most 1/2.5 of what the SurgSora control changes in fp32 (measured 0.49), so a path that dropped the control fails.

    COMFYUI_PATH=/work/comfyui COMFYUI_PYTHON=/work/comfyui/.venv/bin/python \
        python -m pytest -q -rs tests/integration/test_precision_comfy.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

TOL = {"fp16": 2e-2, "fp8": 0.18}

if __name__ != "__main__":  # the pytest side
    import pytest

    COMFYUI = os.environ.get("COMFYUI_PATH")
    if not COMFYUI:
        pytest.skip("COMFYUI_PATH is not set: point it at a ComfyUI checkout (and COMFYUI_PYTHON at its Python)",
                    allow_module_level=True)
    pytestmark = pytest.mark.integration

    from .in_comfyui import measure

    @pytest.fixture(scope="module")
    def measured():
        return measure(__file__)

    @pytest.mark.parametrize("precision", ["fp16", "fp8"])
    def test_surgsora_apply_and_dual_clock_guider_in_half_match_fp32(measured, precision):
        m = measured[precision]
        assert m["weight_dtype"] == {"fp16": "torch.float16", "fp8": "torch.float8_e4m3fn"}[precision]
        assert m["adapter_dtype"] == {"fp16": "torch.float16", "fp8": "torch.bfloat16"}[precision]
        for path in ("apply", "dual_clock"):
            assert m[f"{path}_finite"], path
            assert m[f"{path}_drift"] <= TOL[precision], (path, m[f"{path}_drift"])
        # the tolerance is far below what the control does: losing it in half precision would fail
        assert TOL[precision] * 2.5 <= measured["control_effect"]


def main() -> None:
    """Run by ComfyUI's Python: prints one JSON line (see the module docstring)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import core_parity as cp  # sets ComfyUI up (paths, --cpu) as its own run does

    import torch
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.samplers
    import comfy.supported_models

    from surgsora import SurgSoraAdapter

    cp.load_pack()
    core_svd = sys.modules["ComfyUI_SurgSora.nodes.core_svd"]
    Conditions = sys.modules["ComfyUI_SurgSora.nodes.generation"].Conditions

    unet = cp.tiny_unet()
    sd = cp.sgm_unet_state(unet)
    frames, h, w = cp.FRAMES, cp.H, cp.W
    g = torch.Generator().manual_seed(1)
    adapter32 = SurgSoraAdapter.from_unet(unet, conditioning_embedding_channels=(8, 8, 8, 16),
                                          depth_hidden_channels=(8, 16)).eval()
    with torch.no_grad():
        for p in adapter32.parameters():
            if not p.any():
                p.normal_(0, 0.05, generator=g)
        image = torch.rand(1, 3, h * 8, w * 8, generator=g) * 2 - 1
        conds = adapter32.encode_conditions(image, torch.rand(1, 1, h * 8, w * 8, generator=g),
                                            torch.randn(1, 256, 64, 64, generator=g),
                                            torch.randn(1, frames - 1, 2, h * 8, w * 8, generator=g) * 3)
    context = torch.randn(1, 1, 64, generator=g)
    ids = {"fps": cp.FPS, "motion_bucket_id": cp.BUCKET, "augmentation_level": cp.AUG}
    first = torch.randn(1, 4, h, w, generator=g)
    signal = torch.randn(frames, 4, h, w, generator=g) * 5
    mask = (torch.rand(frames, 1, h, w, generator=g) > 0.5).float()
    noise = torch.randn(frames, 4, h, w, generator=g)

    def patcher_for(weight_dtype, compute_dtype):
        state = dict(sd)  # loading consumes the dict
        config = comfy.supported_models.SVD_img2vid(comfy.model_detection.detect_unet_config(state, ""))
        config.set_inference_dtype(weight_dtype, None if compute_dtype == weight_dtype else compute_dtype)
        model = config.get_model(state, "")
        model.load_model_weights(state, "")
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        mm.load_models_gpu([patcher])
        return patcher

    def run(patcher, adapter, guider_kind):
        positive = [[context, {**ids, "concat_latent_image": first}]]
        negative = [[torch.zeros_like(context), {**ids, "concat_latent_image": torch.zeros_like(first)}]]
        if adapter is not None:
            conditions = Conditions([c.cpu() for c in conds], image)
            positive, negative = core_svd.SurgSoraApplySVD().apply(positive, negative, adapter, conditions)
        sigmas = comfy.samplers.calculate_sigmas(patcher.model.model_sampling, "karras", 4).float()
        if guider_kind == "apply":
            guider = comfy.samplers.CFGGuider(patcher)
            start = torch.zeros_like(signal)
        else:
            guider = core_svd.dual_clock_guider_class()(patcher, signal, mask, 0.25, 0.5)
            start = torch.zeros_like(signal)
        guider.set_conds(positive, negative)
        guider.set_cfg(2.5)
        return guider.sample(noise, start, comfy.samplers.sampler_object("euler"), sigmas, seed=0).float()

    p32 = patcher_for(torch.float32, torch.float32)
    ref = {k: run(p32, adapter32, k) for k in ("apply", "dual_clock")}
    result = {"control_effect": ((ref["apply"] - run(p32, None, "apply")).abs().max()
                                 / ref["apply"].abs().max()).item()}
    for name, weight_dtype, compute_dtype, adapter_dtype in (
            ("fp16", torch.float16, torch.float16, torch.float16),
            ("fp8", torch.float8_e4m3fn, torch.bfloat16, torch.bfloat16)):
        patcher = patcher_for(weight_dtype, compute_dtype)
        adapter = SurgSoraAdapter.from_unet(unet, conditioning_embedding_channels=(8, 8, 8, 16),
                                            depth_hidden_channels=(8, 16)).eval()
        adapter.load_state_dict(adapter32.state_dict())
        adapter.to(adapter_dtype)
        entry = {"weight_dtype": str(next(patcher.model.diffusion_model.parameters()).dtype),
                 "adapter_dtype": str(adapter.dtype)}
        for kind in ("apply", "dual_clock"):
            out = run(patcher, adapter, kind)
            entry[f"{kind}_finite"] = bool(torch.isfinite(out).all())
            entry[f"{kind}_drift"] = ((out - ref[kind]).abs().max() / ref[kind].abs().max()).item()
        result[name] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()
