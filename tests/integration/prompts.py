"""The shipped API workflows, rewritten to run on the tiny checkpoints of :mod:`.tiny_models`.

One helper for both the in-process run (tests/test_workflows.py) and the real-server run
(tests/integration/test_comfyui_server.py), so the two execute the same graphs.
"""

from __future__ import annotations

import copy

from .tiny_models import CORE_ADAPTER_NAME, CORE_SVD_NAME, MOFA_NAME, MOFA_SVD_FOLDER, SVD_FOLDER

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


def core_smallest(prompt: dict, steps: int = 2, strength: float | None = None, **guider) -> dict:
    """A core-SVD template ("SurgSora on Core KSampler", "SurgSora Dual-Clock Core Sampler") on the core SVD
    checkpoint and its adapter (:func:`.tiny_models.write_core_svd`; the checkpoint has the templates' file name) at
    the smallest sizes its widgets and its drawn tracks allow: 128x64 frames (sizes are multiples of 64, and 64x64 is
    refused as another shape than the tracks' 1920x1080 canvas), 2 frames, ``steps`` sampling steps (KSampler, or
    BasicScheduler for SamplerCustomAdvanced), a 70-pixel depth input; ``strength`` sets SurgSora Apply (SVD)'s
    strength (None: the template's), ``guider`` the Dual-Clock Guider's widgets (t_weak, t_strong, cfg)."""
    p = copy.deepcopy(prompt)
    for node in p.values():
        i, t = node["inputs"], node["class_type"]
        if t == "ImageOnlyCheckpointLoader":
            assert i["ckpt_name"] == CORE_SVD_NAME, i
        elif t == "SurgSoraLoadAdapter":
            i["adapter_name"] = CORE_ADAPTER_NAME
        elif t == "ImageScale":
            i.update(width=128, height=64)
        elif t == "SurgSoraSVDConditioning":
            i.update(width=128, height=64, video_frames=2)
        elif t == "SurgSoraTrajectories":
            i["frames"] = 2
        elif t == "SurgSoraDepth":
            i["input_size"] = 70
        elif t in ("KSampler", "BasicScheduler"):
            i["steps"] = steps
        elif t == "SurgSoraApplySVD" and strength is not None:
            i["strength"] = strength
        elif t == "SurgSoraDualClockGuider":
            assert set(guider) <= set(i), guider
            i.update(guider)
    return p


def empty_motion_mask(prompt: dict) -> dict:
    """The same prompt with the Dual-Clock Guider's motion mask emptied by a core ThresholdMask (mask > 1: all 0),
    so nothing is anchored to the motion signal: the video only starts from it at t_weak."""
    p = copy.deepcopy(prompt)
    (key,) = [k for k, n in p.items() if n["class_type"] == "SurgSoraDualClockGuider"]
    empty = str(max(int(k) for k in p) + 1)
    p[empty] = {"inputs": {"mask": p[key]["inputs"]["motion_mask"], "value": 1.0}, "class_type": "ThresholdMask",
                "_meta": {"title": "Empty motion mask"}}
    p[key]["inputs"]["motion_mask"] = [empty, 0]
    return p


def wan_smallest(prompt: dict, steps: int = 4, split: int = 2, frames: int = 5, **guider) -> dict:
    """A Wan dual-clock template on the tiny Wan files (:func:`.wan_models.write_tiny_wan`, under the templates' file
    names) at 128x64, ``frames`` frames, ``steps`` steps (the 14B split after ``split``). umt5 has a fixed config, so
    the prompts come from a test-only node (``SurgSoraTestWanText``); the 5B's Wan 2.2 VAE is built at full width
    only, so a test-only stand-in with its geometry replaces it (``SurgSoraTestWan22VAE``). ``guider`` sets the
    Dual-Clock Guider's widgets."""
    p = copy.deepcopy(prompt)
    for key, node in list(p.items()):
        i, t = node["inputs"], node["class_type"]
        if t == "ImageScale":
            i.update(width=128, height=64)
        elif t == "SurgSoraTrajectories":
            i["frames"] = frames
        elif t in ("WanImageToVideo", "Wan22ImageToVideoLatent"):
            i.update(width=128, height=64, length=frames)
        elif t == "BasicScheduler":
            i["steps"] = steps
        elif t == "SplitSigmas":
            i["step"] = split
        elif t == "CLIPTextEncode":
            p[key] = {"inputs": {"seed": int(key)}, "class_type": "SurgSoraTestWanText", "_meta": node["_meta"]}
        elif t == "CLIPLoader":
            del p[key]
        elif t == "VAELoader" and i["vae_name"] == "wan2.2_vae.safetensors":
            p[key] = {"inputs": {}, "class_type": "SurgSoraTestWan22VAE", "_meta": node["_meta"]}
        elif t == "SurgSoraDualClockGuider":
            assert set(guider) <= set(i), guider
            i.update(guider)
    return p


def cosmos_smallest(prompt: dict, steps: int = 4, frames: int = 5, **guider) -> dict:
    """The Cosmos-H-Surgical template on the tiny Cosmos file (:func:`.cosmos_models.write_tiny_cosmos`, under the
    published name) and the tiny Wan 2.1 VAE at 128x64, ``frames`` frames, ``steps`` steps. Cosmos-Reason1-7B has a
    fixed size, so the prompts come from a test-only node (``SurgSoraTestCosmosText``) and the CLIPLoader goes.
    ``guider`` sets the Dual-Clock Guider's widgets."""
    p = copy.deepcopy(prompt)
    for key, node in list(p.items()):
        i, t = node["inputs"], node["class_type"]
        if t == "ImageScale":
            i.update(width=128, height=64)
        elif t == "SurgSoraTrajectories":
            i["frames"] = frames
        elif t == "SurgSoraCosmosImageToVideo":
            i.update(width=128, height=64, length=frames)
        elif t == "SurgSoraDepth":
            i["input_size"] = 70
        elif t == "BasicScheduler":
            i["steps"] = steps
        elif t == "SurgSoraCosmosTextEncode":
            p[key] = {"inputs": {"seed": int(key)}, "class_type": "SurgSoraTestCosmosText", "_meta": node["_meta"]}
        elif t == "CLIPLoader":
            del p[key]
        elif t == "SurgSoraDualClockGuider":
            assert set(guider) <= set(i), guider
            i.update(guider)
    return p
