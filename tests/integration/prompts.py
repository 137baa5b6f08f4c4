"""The shipped API workflows, rewritten to run on the tiny checkpoints of :mod:`.tiny_models`.

One helper for both the in-process run (tests/test_workflows.py) and the real-server run
(tests/integration/test_comfyui_server.py), so the two execute the same graphs.
"""

from __future__ import annotations

import copy

from .tiny_models import MOFA_NAME, MOFA_SVD_FOLDER, SVD_FOLDER

MOFA_ADAPTER = "mofa_traj_controlnet.safetensors"  # the released ControlNet the MOFA workflow names


def is_mofa(prompt: dict) -> bool:
    return any(n["inputs"].get("adapter_name") == MOFA_ADAPTER for n in prompt.values())


def shrink(prompt: dict, steps: int = 2, small: bool = True) -> dict:
    """Same graph on the tiny models: the tiny SVD folder (for MOFA: the tiny SVD-xt-layout folder and the
    tiny ControlNet in MOFA's release layout) and ``steps`` sampling steps. With ``small`` (the default) also
    CPU-test sizes: 128x64 frames, 5 frames, small depth input; without it the shipped sizes stay."""
    p = copy.deepcopy(prompt)
    mofa = is_mofa(p)
    for node in p.values():
        i, t = node["inputs"], node["class_type"]
        if t == "SurgSoraSampler":
            i["steps"] = steps
        elif t == "SurgSoraLoadSVD":
            i["ckpt_name"] = f"[diffusers] {MOFA_SVD_FOLDER if mofa else SVD_FOLDER}"
        elif t == "SurgSoraLoadAdapter" and mofa:
            i["adapter_name"] = MOFA_NAME
        elif not small:
            continue
        elif t == "ImageScale":
            i.update(width=128, height=64)
        elif t == "SurgSoraTrajectories":
            i["frames"] = 5
        elif t == "SurgSoraVideoFlow":
            i["num_frames"] = 5
        elif t == "SurgSoraDepth":
            i["input_size"] = 70
    return p
