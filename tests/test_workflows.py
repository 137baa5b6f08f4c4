"""Shipped workflows: current with their generator, served alone from the templates folder with a title, a
description and a thumbnail each, well-formed for the frontend with nothing overlapping and the note in the
stored view, previews wired, API twins equal to the UI files, and executed in-process through the node
functions with tiny real-format checkpoints.

(The real frontend and a real ComfyUI server check the same files in tests/integration/.)
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from integration.env import tiny_env
from integration.executor import core_nodes, run_prompt, validate
from integration.prompts import shrink

REPO = Path(__file__).resolve().parents[1]
WF = REPO / "workflows"  # ComfyUI serves this folder as the pack's templates
API = REPO / "workflows_api"
GENERATOR = REPO / "workflows_src" / "make_workflows.py"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_workflows", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()  # importing it imports nothing of the pack: node specs are read by object_info()
NAMES = [t.title for t in GEN.TEMPLATES]
CORE_KSAMPLER = "SurgSora on Core KSampler"  # needs a full-size SVD checkpoint: ComfyUI detects SVD by its shapes
CORE_DUAL_CLOCK = "SurgSora Dual-Clock Core Sampler"  # the same checkpoint
CORE_SVD = (CORE_KSAMPLER, CORE_DUAL_CLOCK)  # run on the real server only (tests/integration)
WAN_14B, WAN_5B = "SurgSora Dual-Clock Wan 2.2 14B", "SurgSora Dual-Clock Wan 2.2 5B"
COSMOS = "SurgSora Dual-Clock Cosmos-H"
CORE_ONLY = CORE_SVD + (WAN_14B, WAN_5B, COSMOS)  # core model nodes (Wan, Cosmos too): run on the real server only
TITLE_BAR = 30  # LiteGraph.NODE_TITLE_HEIGHT: drawn above a node's pos
EXPECTED_VIDEOS = {"SurgSora Trajectory to Video": {"motion_preview", "video"},
                   "SurgSora Motion Preview": {"motion_preview", "flow"},
                   "SurgSora Ground-Truth Flow": {"reference_clip", "gt_flow", "gt_flow_video"},
                   "SurgSora MOFA-Video-Traj": {"motion_preview", "mofa_video"},
                   "SurgSora Dual-Clock SVD": {"motion_signal", "ttm_video"}}


@pytest.fixture(scope="module")
def env():
    return tiny_env()


@pytest.fixture(scope="module")
def maker(env):
    return GEN


@pytest.fixture(scope="module")
def info(maker):
    return maker.object_info()


def _ui(name):
    return json.loads((WF / f"{name}.json").read_text())


def _api(name):
    return json.loads((API / f"{name}.json").read_text())


def test_files_are_what_the_generator_writes(maker, info):
    files = maker.build_all(info)
    assert {p.relative_to(REPO).as_posix() for p in files} == (
        {f"workflows/{n}.json" for n in NAMES} | {f"workflows/{n}.jpg" for n in NAMES}
        | {f"workflows_api/{n}.json" for n in NAMES})
    for path, content in files.items():
        assert maker.is_current(path, content), \
            f"{path.relative_to(REPO)} is stale: run python workflows_src/make_workflows.py"
    # ComfyUI lists workflows/*.json as templates and serves the whole folder: only the workflows and their
    # thumbnails may sit there (no script, no spec, no API twin in a subfolder)
    assert sorted(p.name for p in WF.rglob("*")) == sorted([f"{n}.json" for n in NAMES] + [f"{n}.jpg" for n in NAMES])
    assert sorted(p.name for p in API.rglob("*")) == sorted(f"{n}.json" for n in NAMES)


def test_check_mode_passes_and_catches_a_stale_thumbnail(maker, tmp_path, monkeypatch, capsys):
    assert maker.main(["--check"]) == 0, capsys.readouterr().out
    # a thumbnail of another frame / other tracks is stale; a re-encode of the same picture is not
    import cv2

    t = maker.TEMPLATES[0]
    img = maker.render_thumbnail(t)
    same = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    assert maker.same_picture(same, maker.encode_jpeg(img))
    other = maker.encode_jpeg(maker.render_thumbnail(maker.TEMPLATES[2]))  # flow picture, other label
    assert not maker.same_picture(other, maker.encode_jpeg(img))
    shifted = img.copy()
    band = maker.LABEL_BAND
    shifted[-band:] = img[-band:][:, ::-1]  # the label band mirrored: a different label
    assert not maker.same_picture(maker.encode_jpeg(shifted), maker.encode_jpeg(img))
    # --check reports a stale thumbnail on disk (through the same comparison), and nothing else
    import shutil

    for folder in ("workflows", "workflows_api"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    monkeypatch.setattr(maker, "REPO", tmp_path)
    monkeypatch.setattr(maker, "TEMPLATES_DIR", tmp_path / "workflows")
    monkeypatch.setattr(maker, "API_DIR", tmp_path / "workflows_api")
    (tmp_path / "workflows" / f"{t.title}.jpg").write_bytes(maker.encode_jpeg(shifted))
    capsys.readouterr()
    assert maker.main(["--check"]) == 1
    assert capsys.readouterr().out.splitlines() == [f"out of date: workflows/{t.title}.jpg"]


def _thumbnail_tracks(maker):
    from surgsora.video_io import read_video

    clip = read_video(maker.ENDOVIS_CLIP, start=maker.FRAME_INDEX, count=1)
    _, x0, s = maker._frame_square(clip)
    return maker._thumbnail_tracks(clip.shape[2], x0, s)


# What can go stale, drawn as the generator would: other tracks, another label, another frame of the clip.
STALE = {"first track left out": lambda m: {"tracks": _thumbnail_tracks(m)[1:]},
         "tracks 4 px lower": lambda m: {"tracks": [[[x, y + 4] for x, y in k] for k in _thumbnail_tracks(m)]},
         "another label": lambda m: {"label": "adapter + SVD-xt"},
         "frame 0": lambda m: {"frame_index": 0},
         "frame 7": lambda m: {"frame_index": 7}}
STALE_CASES = [("tracks", case) for case in STALE] + [("flow", case) for case in ("another label", "frame 0", "frame 7")]


@pytest.mark.parametrize("picture,case", STALE_CASES)
def test_a_stale_thumbnail_is_caught(maker, picture, case):
    """Another frame, other tracks or another label is another picture, for the comparison that must also take
    another OpenCV's optical flow as the same picture (see make_workflows.same_picture)."""
    t = next(t for t in maker.TEMPLATES if t.picture == picture)
    shipped = (maker.TEMPLATES_DIR / f"{t.title}.jpg").read_bytes()
    assert maker.same_picture(shipped, maker.encode_jpeg(maker.render_thumbnail(t)))
    assert not maker.same_picture(shipped, maker.encode_jpeg(maker.render_thumbnail(t, **STALE[case](maker))))


@pytest.mark.parametrize("name", NAMES)
def test_template_has_title_description_and_thumbnail(name, maker):
    """What ComfyUI 0.8.0's frontend shows for a custom node's template: the file name as title (and, with
    '-' and '_' as spaces, as description) and <name>.jpg as thumbnail."""
    import cv2
    import numpy as np

    t = next(t for t in maker.TEMPLATES if t.title == name)
    # fits the template card on one line: frontend 1.35.9 gives the title 250 px of 14 px bold Inter, where these
    # 32 characters ("SurgSora Dual-Clock Core Sampler") take 239 px and 35 wrap (the real frontend checks it)
    assert "_" not in name and " " in name and len(name) <= 32, "a readable title that fits the card on one line"
    assert t.description and "\n" not in t.description and t.description.endswith(".") and len(t.description) <= 170
    notes = [n for n in _ui(name)["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1 and notes[0]["title"] == name
    assert notes[0]["widgets_values"][0].startswith(f"**{name}**: {t.description}\n\n")
    data = (WF / f"{name}.jpg").read_bytes()
    assert data[:3] == b"\xff\xd8\xff"  # JPEG: the frontend asks for <name>.jpg
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (maker.THUMB_SIZE, maker.THUMB_SIZE, 3)
    # made from the real EndoVis frame: the picture above the label band is the frame's centre square (with
    # the tracks drawn on it, or blended with flow colours), not a placeholder
    from surgsora.video_io import read_video

    frame = read_video(maker.ENDOVIS_CLIP, start=maker.FRAME_INDEX, count=1)[0]
    side = frame.shape[0]
    x0 = (frame.shape[1] - side) // 2
    square = cv2.resize(frame[:, x0:x0 + side], (maker.THUMB_SIZE,) * 2, interpolation=cv2.INTER_AREA)
    pic = img[:-maker.LABEL_BAND, :, ::-1].astype(np.float32)
    ref = square[:-maker.LABEL_BAND].astype(np.float32)
    corr = np.corrcoef(pic.mean(-1).ravel(), ref.mean(-1).ravel())[0, 1]
    assert corr > (0.5 if t.picture == "flow" else 0.9), corr


def _rect(node):
    x, y = node["pos"]
    w, h = node["size"]
    return x, y - TITLE_BAR, w, h + TITLE_BAR


def _overlap(a, b):
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _inside(a, b):
    return b[0] <= a[0] and b[1] <= a[1] and a[0] + a[2] <= b[0] + b[2] and a[1] + a[3] <= b[1] + b[3]


@pytest.mark.parametrize("name", NAMES)
def test_layout_nothing_overlaps_and_the_stored_view_shows_the_note(name, maker, info):
    ui = _ui(name)
    nodes = ui["nodes"]
    for n in nodes:  # at least as tall as the frontend draws the node's sockets and widgets
        if n["type"] in info:
            assert n["size"][1] >= maker.node_height(info[n["type"]]), (n["id"], n["type"], n["size"])
    rects = [(n["id"], n["type"], _rect(n)) for n in nodes]
    for i, (ia, ta, a) in enumerate(rects):
        for ib, tb, b in rects[i + 1:]:
            assert not _overlap(a, b), f"nodes {ia} {ta} and {ib} {tb} overlap"
    groups = [(g["title"], g["bounding"], math.ceil(g["font_size"] * 1.4)) for g in ui["groups"]]
    for i, (ta, a, _) in enumerate(groups):
        for tb, b, _ in groups[i + 1:]:
            assert not _overlap(a, b), f"groups {ta!r} and {tb!r} overlap"
    for nid, type_, r in rects:
        holders = []
        for title, (x, y, w, h), title_h in groups:
            if _inside(r, (x, y + title_h, w, h - title_h)):
                holders.append(title)
            else:
                assert not _overlap(r, (x, y, w, h)), f"node {nid} {type_} crosses group {title!r}'s border or title"
        assert len(holders) <= 1
        if type_ != "MarkdownNote":
            assert holders, f"node {nid} {type_} is in no group"
    # the stored view: the whole note on screen, right of the side bar and below the menu, in a 1280x720 canvas,
    # at a zoom where the frontend still draws text (below ~0.57 it draws boxes only)
    ds = ui["extra"]["ds"]
    note = next(r for _, t, r in rects if t == "MarkdownNote")
    sx0, sy0 = (note[0] + ds["offset"][0]) * ds["scale"], (note[1] + ds["offset"][1]) * ds["scale"]
    sx1, sy1 = sx0 + note[2] * ds["scale"], sy0 + note[3] * ds["scale"]
    assert ds["scale"] >= 0.6
    assert 64 <= sx0 and 90 <= sy0 and sx1 <= 1280 and sy1 <= 720, (sx0, sy0, sx1, sy1)
    assert maker.layout_problems(ui) == []  # what --check reports agrees


@pytest.mark.parametrize("name", NAMES)
def test_previews_of_tracks_masks_and_depth_are_wired(name):
    ui = _ui(name)
    by_id = {n["id"]: n for n in ui["nodes"]}
    fed = set()
    for _, src, slot, dst, _, _ in ui["links"]:
        if by_id[dst]["type"] == "PreviewImage":
            fed.add((by_id[src]["type"], by_id[src]["outputs"][slot]["name"]))
    types = {n["type"] for n in ui["nodes"]}
    if "SurgSoraTrajectories" in types:
        assert ("SurgSoraTrajectories", "preview") in fed
    if "SurgSoraSAMMasks" in types:
        assert ("SurgSoraSAMMasks", "preview") in fed
    if "SurgSoraDepth" in types:
        assert ("SurgSoraDepth", "depth_colour") in fed
    assert fed, "no preview"


@pytest.mark.parametrize("name", NAMES)
def test_ui_file_is_a_valid_frontend_graph(name, maker, info):
    ui = _ui(name)
    assert ui["version"] == 0.4
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]) == ui["last_node_id"]
    types = {n["type"] for n in ui["nodes"]}
    core = set(json.loads(maker.CORE_SPEC.read_text()))
    assert types <= {t for t in info if t.startswith("SurgSora")} | core | {"MarkdownNote"}, types
    assert any(t.startswith("SurgSora") for t in types)
    for n in ui["nodes"]:
        if n["type"] == "MarkdownNote":
            continue
        spec = info[n["type"]]
        assert len(n["widgets_values"]) == len(maker.widget_slots(spec)), n["type"]
        names = [i["name"] for i in n["inputs"]]
        for name_, s, optional in maker.ordered_inputs(spec):
            assert name_ in names
            if not optional and not maker.is_widget(s):  # required sockets are all connected
                assert n["inputs"][names.index(name_)]["link"] is not None, f"{n['type']}.{name_} unconnected"
        assert [o["type"] for o in n["outputs"]] == spec["output"]
    # links: existing slots, matching types both ends (no red links), referenced from both nodes
    for lid, src, sslot, dst, dslot, typ in ui["links"]:
        out, inp = nodes[src]["outputs"][sslot], nodes[dst]["inputs"][dslot]
        assert out["type"] == typ == inp["type"], (lid, out, inp)
        assert lid in out["links"] and inp["link"] == lid
    assert len(ui["links"]) == ui["last_link_id"]


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_matches_the_ui_file(name, maker, info):
    api = _api(name)
    assert api == maker.ui_to_api(_ui(name), info)
    validate(api, info)  # every widget value in range / in its list, as ComfyUI checks before running


def test_core_ksampler_workflow_wiring():
    """ImageOnlyCheckpointLoader -> SurgSora SVD Conditioning -> SurgSora Apply (SVD) -> VideoLinearCFGGuidance ->
    KSampler -> VAEDecode -> CreateVideo -> SaveVideo, the conditions made by the SurgSora nodes, sizes agreeing.
    (It is not run here: ComfyUI builds its SVD model only from a full-size checkpoint, svd_xt.safetensors.)"""
    api = _api(CORE_KSAMPLER)
    of = {k: n["class_type"] for k, n in api.items()}

    def one(class_type):
        (key,) = [k for k, t in of.items() if t == class_type]
        return key, api[key]["inputs"]

    def src(value):
        return of[value[0]], value[1]

    _, ckpt = one("ImageOnlyCheckpointLoader")
    _, cond = one("SurgSoraSVDConditioning")
    _, apply = one("SurgSoraApplySVD")
    _, guidance = one("VideoLinearCFGGuidance")
    _, ks = one("KSampler")
    _, dec = one("VAEDecode")
    assert ckpt["ckpt_name"] == "svd_xt.safetensors"
    assert src(cond["clip_vision"]) == ("ImageOnlyCheckpointLoader", 1) and src(cond["vae"]) == (
        "ImageOnlyCheckpointLoader", 2)
    assert src(cond["init_image"]) == ("ImageScale", 0) and src(cond["adapter"])[0] == "SurgSoraLoadAdapter"
    assert src(apply["positive"]) == ("SurgSoraSVDConditioning", 0)
    assert src(apply["negative"]) == ("SurgSoraSVDConditioning", 1)
    assert src(apply["conditions"]) == ("SurgSoraDFMFuse", 0) and src(apply["adapter"])[0] == "SurgSoraLoadAdapter"
    assert src(guidance["model"]) == ("ImageOnlyCheckpointLoader", 0)
    assert src(ks["model"]) == ("VideoLinearCFGGuidance", 0)
    assert src(ks["positive"]) == ("SurgSoraApplySVD", 0) and src(ks["negative"]) == ("SurgSoraApplySVD", 1)
    assert src(ks["latent_image"]) == ("SurgSoraSVDConditioning", 2)
    assert src(dec["samples"]) == ("KSampler", 0) and src(dec["vae"]) == ("ImageOnlyCheckpointLoader", 2)
    saves = [k for k, t in of.items() if t == "SaveVideo"]
    decoded = [k for k, t in of.items() if t == "CreateVideo" and src(api[k]["inputs"]["images"]) == ("VAEDecode", 0)]
    assert len(decoded) == 1 and any(api[s]["inputs"]["video"] == [decoded[0], 0] for s in saves)
    _, scale = one("ImageScale")
    _, traj = one("SurgSoraTrajectories")
    assert (cond["width"], cond["height"], cond["video_frames"]) == (scale["width"], scale["height"], traj["frames"])
    _, fuse = one("SurgSoraDFMFuse")
    assert src(fuse["flow"]) == ("SurgSoraTracksToFlow", 0)


def test_core_dual_clock_workflow_wiring():
    """Frame -> trajectories -> analytic flow -> SurgSora Motion Signal; ImageOnlyCheckpointLoader (svd_xt, with its
    download entry) -> SurgSora SVD Conditioning (motion bucket 17) and VideoLinearCFGGuidance -> SurgSora Dual-Clock
    Guider (TTM's t_weak / t_strong) -> SamplerCustomAdvanced (RandomNoise, euler, BasicScheduler karras) on the
    conditioning's latent -> VAEDecode -> CreateVideo -> SaveVideo, sizes agreeing. (Run on the real server only.)"""
    api = _api(CORE_DUAL_CLOCK)
    of = {k: n["class_type"] for k, n in api.items()}

    def one(class_type):
        (key,) = [k for k, t in of.items() if t == class_type]
        return api[key]["inputs"]

    def src(value):
        return of[value[0]], value[1]

    ckpt, cond = one("ImageOnlyCheckpointLoader"), one("SurgSoraSVDConditioning")
    guidance, guider = one("VideoLinearCFGGuidance"), one("SurgSoraDualClockGuider")
    sample, sched = one("SamplerCustomAdvanced"), one("BasicScheduler")
    signal, dec = one("SurgSoraMotionSignal"), one("VAEDecode")
    scale, traj = one("ImageScale"), one("SurgSoraTrajectories")
    assert not {"SurgSoraLoadAdapter", "SurgSoraLoadSAM", "SurgSoraLoadDepthAnything", "KSampler"} & set(of.values())
    assert ckpt["ckpt_name"] == "svd_xt.safetensors"
    loader = next(n for n in _ui(CORE_DUAL_CLOCK)["nodes"] if n["type"] == "ImageOnlyCheckpointLoader")
    assert [m["name"] for m in loader["properties"]["models"]] == ["svd_xt.safetensors"]  # Missing Models dialog
    assert src(signal["image"]) == ("ImageScale", 0) and src(signal["flow"]) == ("SurgSoraTracksToFlow", 0)
    assert src(cond["clip_vision"]) == ("ImageOnlyCheckpointLoader", 1) and src(cond["init_image"]) == ("ImageScale", 0)
    assert cond["motion_bucket_id"] == 17 and "adapter" not in cond
    assert src(guidance["model"]) == ("ImageOnlyCheckpointLoader", 0)
    assert src(guider["model"]) == src(sched["model"]) == ("VideoLinearCFGGuidance", 0)
    assert src(guider["positive"]) == ("SurgSoraSVDConditioning", 0)
    assert src(guider["negative"]) == ("SurgSoraSVDConditioning", 1)
    assert src(guider["vae"]) == ("ImageOnlyCheckpointLoader", 2)
    assert src(guider["motion_signal"]) == ("SurgSoraMotionSignal", 0)
    assert src(guider["motion_mask"]) == ("SurgSoraMotionSignal", 1)
    assert (guider["t_weak"], guider["t_strong"]) == (0.32, 0.42)
    assert src(sample["guider"]) == ("SurgSoraDualClockGuider", 0) and src(sample["noise"]) == ("RandomNoise", 0)
    assert src(sample["sampler"]) == ("KSamplerSelect", 0) and one("KSamplerSelect")["sampler_name"] == "euler"
    assert src(sample["sigmas"]) == ("BasicScheduler", 0) and sched["scheduler"] == "karras" and sched["denoise"] == 1
    assert src(sample["latent_image"]) == ("SurgSoraSVDConditioning", 2)
    assert src(dec["samples"]) == ("SamplerCustomAdvanced", 0) and src(dec["vae"]) == ("ImageOnlyCheckpointLoader", 2)
    saves = {api[k]["inputs"]["filename_prefix"]: src(api[api[k]["inputs"]["video"][0]]["inputs"]["images"])
             for k, t in of.items() if t == "SaveVideo"}
    assert saves == {"SurgSora/core_dual_clock": ("VAEDecode", 0),
                     "SurgSora/motion_signal": ("SurgSoraMotionSignal", 0)}
    assert (cond["width"], cond["height"], cond["video_frames"]) == (scale["width"], scale["height"], traj["frames"])


def _wiring(name):
    api = _api(name)
    of = {k: n["class_type"] for k, n in api.items()}

    def one(class_type, title=None):
        (key,) = [k for k, t in of.items() if t == class_type and (title is None or api[k]["_meta"]["title"] == title)]
        return api[key]["inputs"]

    def src(value):
        return of[value[0]], value[1]

    return api, of, one, src


def test_wan_14b_workflow_wiring():
    """Frame -> trajectories -> analytic flow -> SurgSora Motion Signal (81 frames, 832x480); the two A14B experts
    (UNETLoader, with their download entries) through ModelSamplingSD3; umt5 prompts -> WanImageToVideo (the
    signal's size and length) -> the Dual-Clock Guider on the high-noise expert with the whole schedule as full_sigmas
    and TTM's Wan steps, stage 1 on SplitSigmas' high sigmas from WanImageToVideo's latent, stage 2 with a plain
    CFGGuider on the low-noise expert and no added noise, then VAEDecode with the Wan 2.1 VAE. (Run on the real
    server only.)"""
    api, of, one, src = _wiring(WAN_14B)
    guider, split, sched = one("SurgSoraDualClockGuider"), one("SplitSigmas"), one("BasicScheduler")
    i2v, plain, signal = one("WanImageToVideo"), one("CFGGuider"), one("SurgSoraMotionSignal")
    first = one("SamplerCustomAdvanced", "High-noise stage (dual-clock)")
    second = one("SamplerCustomAdvanced", "Low-noise stage")
    scale, traj = one("ImageScale"), one("SurgSoraTrajectories")
    unets = {api[k]["_meta"]["title"]: api[k]["inputs"]["unet_name"] for k, t in of.items() if t == "UNETLoader"}
    assert unets == {"High-noise expert": "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
                     "Low-noise expert": "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"}
    models = {m["name"] for n in _ui(WAN_14B)["nodes"] for m in n.get("properties", {}).get("models", [])}
    assert models == {"wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
                      "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                      "wan_2.1_vae.safetensors"}  # the Missing Models dialog
    assert one("VAELoader")["vae_name"] == "wan_2.1_vae.safetensors"
    assert (i2v["width"], i2v["height"], i2v["length"]) == (scale["width"], scale["height"], traj["frames"]) \
        == (832, 480, 81)
    assert src(signal["image"]) == ("ImageScale", 0) and src(i2v["start_image"]) == ("ImageScale", 0)
    assert src(guider["model"]) == src(sched["model"])
    assert src(guider["positive"]) == ("WanImageToVideo", 0) and src(guider["negative"]) == ("WanImageToVideo", 1)
    assert src(guider["vae"]) == ("VAELoader", 0) and src(guider["full_sigmas"]) == ("BasicScheduler", 0)
    assert src(guider["motion_signal"]) == ("SurgSoraMotionSignal", 0)
    assert src(guider["motion_mask"]) == ("SurgSoraMotionSignal", 1)
    assert (guider["t_weak"], guider["t_strong"]) == (0.06, 0.14)
    assert round(guider["t_strong"] * sched["steps"]) <= split["step"]  # t_strong inside the guider's stage
    assert src(split["sigmas"]) == ("BasicScheduler", 0)
    assert src(first["guider"]) == ("SurgSoraDualClockGuider", 0) and src(first["sigmas"]) == ("SplitSigmas", 0)
    assert src(first["latent_image"]) == ("WanImageToVideo", 2) and src(first["noise"]) == ("RandomNoise", 0)
    assert src(second["guider"]) == ("CFGGuider", 0) and src(second["sigmas"]) == ("SplitSigmas", 1)
    assert src(second["noise"]) == ("DisableNoise", 0) and src(second["latent_image"])[1] == 0
    assert api[second["latent_image"][0]]["_meta"]["title"] == "High-noise stage (dual-clock)"
    assert api[plain["model"][0]]["class_type"] == "ModelSamplingSD3"
    assert unets["Low-noise expert"] == api[api[plain["model"][0]]["inputs"]["model"][0]]["inputs"]["unet_name"]


def test_wan_5b_workflow_wiring():
    """The 5B: its own VAE (wan2.2_vae) into Wan22ImageToVideoLatent (the first frame kept by its noise mask) and the
    guider, text conditioning straight from umt5, one SamplerCustomAdvanced. (Run on the real server only.)"""
    api, of, one, src = _wiring(WAN_5B)
    guider, latent = one("SurgSoraDualClockGuider"), one("Wan22ImageToVideoLatent")
    sample = one("SamplerCustomAdvanced")
    scale, traj = one("ImageScale"), one("SurgSoraTrajectories")
    assert one("UNETLoader")["unet_name"] == "wan2.2_ti2v_5B_fp16.safetensors"
    assert one("VAELoader")["vae_name"] == "wan2.2_vae.safetensors"
    models = {m["name"] for n in _ui(WAN_5B)["nodes"] for m in n.get("properties", {}).get("models", [])}
    assert models == {"wan2.2_ti2v_5B_fp16.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                      "wan2.2_vae.safetensors"}
    assert (latent["width"], latent["height"], latent["length"]) == (scale["width"], scale["height"], traj["frames"])
    assert src(latent["vae"]) == src(guider["vae"]) == ("VAELoader", 0)
    assert src(guider["positive"])[0] == src(guider["negative"])[0] == "CLIPTextEncode"
    assert src(sample["latent_image"]) == ("Wan22ImageToVideoLatent", 0)
    assert src(sample["guider"]) == ("SurgSoraDualClockGuider", 0)
    assert (guider["t_weak"], guider["t_strong"]) == (0.06, 0.14)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in CORE_ONLY])
def test_workflow_runs_in_process_on_tiny_checkpoints(name, env, info):
    import nodes

    from surgsora.video_io import video_info

    out_dir = env.root / "output"
    classes = {**nodes.NODE_CLASS_MAPPINGS, **core_nodes(env.root / "input", out_dir)}
    results = run_prompt(shrink(_api(name)), classes, info)
    saved = [item for _, ui in results.values() for item in ui.get("images", [])]
    assert {s["filename"].rsplit("_", 2)[0] for s in saved} == EXPECTED_VIDEOS[name]
    for s in saved:
        meta = video_info(out_dir / s["subfolder"] / s["filename"])
        assert (meta["frames"], meta["width"], meta["height"]) == (5, 128, 64), s
