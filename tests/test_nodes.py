"""ComfyUI nodes: declarations, registration, and every node run on tiny real-format checkpoints.

ComfyUI itself is not installed here: ``tests/integration/comfy_fakes.py`` stands in for the few APIs the
nodes call (model folders, device, interrupt flag, progress bar). Node outputs are checked against the
library called directly, and against known answers on the real EndoVis frame.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from integration.env import tiny_env
from integration.tiny_models import ADAPTER_NAME, CMP_NAME, DEPTH_NAME, MOFA_NAME, SAM_NAME, SVD_FOLDER

REPO = Path(__file__).resolve().parents[1]
STANDARD = {"IMAGE", "MASK", "LATENT", "INT", "FLOAT", "STRING", "BOOLEAN", "TRACKS", "CONDITIONING", "CLIP_VISION", "VAE",
            "MODEL", "GUIDER", "SIGMAS", "CLIP"}
W, H = 128, 64  # working size: multiples of 64


@pytest.fixture(scope="module")
def env():
    return tiny_env()


@pytest.fixture(scope="module")
def nodes(env):
    import nodes as pack

    return pack


@pytest.fixture(scope="module")
def frame(endovis_frame):
    """Frame 6 of the real clip at the working size, as a ComfyUI IMAGE [1, H, W, 3]."""
    import cv2

    small = cv2.resize(endovis_frame, (W, H), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small).float().div(255).unsqueeze(0)


def run(nodes, name, **kw):
    obj = nodes.NODE_CLASS_MAPPINGS[name]()
    out = getattr(obj, obj.FUNCTION)(**kw)
    return out["result"] if isinstance(out, dict) else out


# ------------------------------------------------------------------------------------ declarations

def test_every_node_declares_consistent_inputs_and_outputs(nodes):
    assert len(nodes.NODE_CLASS_MAPPINGS) == 23
    assert set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == set(nodes.NODE_CLASS_MAPPINGS)
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"}, name
        assert cls.CATEGORY.startswith("SurgSora/"), name
        assert cls.DESCRIPTION, name
        assert len(cls.RETURN_TYPES) == len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)), name
        params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        assert set(declared) == set(params) - {"self"}, name
        for inp in spec.get("optional", {}):
            assert params[inp].default is None, f"{name}.{inp}: optional inputs default to None"
        for inp, s in spec.get("required", {}).items():
            kind = s[0]
            if isinstance(kind, list):
                assert kind, f"{name}.{inp}: a combo needs at least one choice"
                if len(s) > 1 and "default" in s[1]:
                    assert s[1]["default"] in kind
            elif kind in ("INT", "FLOAT"):
                o = s[1]
                assert o["min"] <= o["default"] <= o["max"], f"{name}.{inp}"
        # custom types only where no standard one fits, and always our own prefix
        for t in list(cls.RETURN_TYPES) + [s[0] for s in declared.values() if isinstance(s[0], str)]:
            assert t in STANDARD or t.startswith("SURGSORA_"), f"{name}: type {t}"
    outputs = {t for c in nodes.NODE_CLASS_MAPPINGS.values() for t in c.RETURN_TYPES}
    # depth, masks, previews and videos leave as standard types that other packs take
    assert {"IMAGE", "MASK", "LATENT", "TRACKS"} <= outputs


def test_every_input_and_output_has_a_tooltip(nodes):
    """What the node library and the hover help show: a plain sentence for every input (widgets and sockets,
    required and optional) and every output, and a description without reST mark-up, in every node of the pack
    (core_svd's included)."""
    problems = []
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        for group in ("required", "optional"):
            for inp, s in spec.get(group, {}).items():
                tip = s[1].get("tooltip") if len(s) > 1 and isinstance(s[1], dict) else None
                if not isinstance(tip, str) or not tip.strip():
                    problems.append(f"{name}.{inp}: no tooltip")
                elif "`" in tip or "\n" in tip:
                    problems.append(f"{name}.{inp}: tooltip is not one plain line: {tip!r}")
        tips = getattr(cls, "OUTPUT_TOOLTIPS", None)
        if not isinstance(tips, (tuple, list)) or len(tips) != len(cls.RETURN_TYPES):
            problems.append(f"{name}: OUTPUT_TOOLTIPS {tips!r} needs one entry per output {cls.RETURN_TYPES}")
        else:
            problems += [f"{name} output {i}: empty tooltip" for i, t in enumerate(tips)
                         if not isinstance(t, str) or not t.strip() or "`" in t]
        description = getattr(cls, "DESCRIPTION", "")
        if not description.strip() or "`" in description:  # the node library shows it as is
            problems.append(f"{name}: description is empty or shows reST back-ticks: {description[:60]!r}")
    assert problems == [], "\n".join(problems)


def test_comfyui_loads_the_pack_without_shadowing_its_nodes_module(monkeypatch, env):
    """Load the repo root the way ComfyUI's load_custom_node does, with ComfyUI's own `nodes` present."""
    comfy_nodes = types.ModuleType("nodes")
    comfy_nodes.NODE_CLASS_MAPPINGS = {"KSampler": object}
    monkeypatch.setitem(sys.modules, "nodes", comfy_nodes)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != REPO])
    for mod in [m for m in sys.modules if m.startswith("surgsora_pack")]:
        monkeypatch.delitem(sys.modules, mod)

    def no_loading(*a, **k):
        raise AssertionError("registering the nodes must not load a model")

    monkeypatch.setattr(torch, "load", no_loading)
    spec = importlib.util.spec_from_file_location("surgsora_pack", REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "surgsora_pack", module)
    spec.loader.exec_module(module)
    assert sys.modules["nodes"] is comfy_nodes  # ComfyUI's module untouched
    assert Path(sys.path[-1]).resolve() == REPO  # appended, never prepended
    assert "SurgSoraTrajectories" in module.NODE_CLASS_MAPPINGS
    assert (REPO / module.WEB_DIRECTORY / "js" / "trajectory_editor.js").is_file()


def test_model_folders_are_registered_next_to_extra_model_paths(env):
    from nodes.models import register_folders

    fp = env.folder_paths
    saved = fp.folder_names_and_paths.pop("sams")
    try:
        fp.add_model_folder_path("sams", "/elsewhere/sams")  # extra_model_paths.yaml, read before custom nodes
        register_folders()
        for name in ("sams", "depthanything", "surgsora", "optical_flow"):
            paths, exts = fp.folder_names_and_paths[name]
            assert str(env.models_dir / name) in paths
            assert ".pth" in exts
        assert fp.folder_names_and_paths["sams"][0] == ["/elsewhere/sams", str(env.models_dir / "sams")]
    finally:
        fp.folder_names_and_paths["sams"] = saved
    assert ".tar" in fp.folder_names_and_paths["surgsora"][1]  # ckpt_iter_42000.pth.tar


def test_loader_lists_and_clear_errors(nodes, env, tmp_path):
    from surgsora.loading.io import ModelFileError

    sam_list = nodes.NODE_CLASS_MAPPINGS["SurgSoraLoadSAM"].INPUT_TYPES()["required"]["model_name"][0]
    # local first, then the known files that are not there, marked
    assert sam_list == [SAM_NAME, "sam_vit_h_4b8939.pth (download)", "sam_vit_l_0b3195.pth (download)"]
    svd_list = nodes.NODE_CLASS_MAPPINGS["SurgSoraLoadSVD"].INPUT_TYPES()["required"]["ckpt_name"][0]
    assert f"[diffusers] {SVD_FOLDER}" in svd_list and "svd_xt.safetensors (download)" in svd_list
    assert "svd_xt.safetensors" not in svd_list  # only what is there is listed plain
    adapters = nodes.NODE_CLASS_MAPPINGS["SurgSoraLoadAdapter"].INPUT_TYPES()["required"]["adapter_name"][0]
    # SurgSora adapter folders and MOFA's ControlNet (folder here), then the known MOFA file to download
    assert adapters == sorted([ADAPTER_NAME, MOFA_NAME]) + ["mofa_traj_controlnet.safetensors (download)"]
    decoders = nodes.NODE_CLASS_MAPPINGS["SurgSoraLoadTrajectoryDecoder"].INPUT_TYPES()["required"]["decoder"][0]
    assert decoders == ["analytic", CMP_NAME]  # adapter folders are never looked into

    with pytest.raises(ModelFileError, match=r"sam_vit_h_4b8939.pth is not in .*models/sams.*download"):
        run(nodes, "SurgSoraLoadSAM", model_name="sam_vit_h_4b8939.pth")
    with pytest.raises(ModelFileError, match=r"svd_xt.safetensors is not in .*models/checkpoints"):
        run(nodes, "SurgSoraLoadSVD", ckpt_name="svd_xt.safetensors")
    with pytest.raises(ValueError, match="Invalid model name"):
        run(nodes, "SurgSoraLoadSAM", model_name="../../etc/passwd")
    with pytest.raises(ModelFileError, match="not found in .*models/surgsora"):
        run(nodes, "SurgSoraLoadAdapter", adapter_name="no_such_adapter")
    # a file of the wrong kind says which folder it belongs in
    (env.models_dir / "sams" / "depth_as_sam.pth").write_bytes(
        (env.models_dir / "depthanything" / DEPTH_NAME).read_bytes())
    try:
        with pytest.raises(ModelFileError, match="Depth Anything checkpoint.*models/depthanything"):
            run(nodes, "SurgSoraLoadSAM", model_name="depth_as_sam.pth")
    finally:
        (env.models_dir / "sams" / "depth_as_sam.pth").unlink()


def test_download_goes_to_exactly_the_folder_when_asked(nodes, env, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_hf_hub_download(repo_id, filename, *, local_dir, **kw):
        import hashlib

        from huggingface_hub._local_folder import write_download_metadata

        calls.append((repo_id, filename))
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(moved.read_bytes())
        # as the real one does: the LFS etag (the file's SHA-256) recorded next to the download
        write_download_metadata(Path(local_dir), filename, "0" * 40, hashlib.sha256(path.read_bytes()).hexdigest())
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    target = env.models_dir / "surgsora" / CMP_NAME
    moved = target.with_name("moved.tar")
    target.rename(moved)
    try:
        from surgsora.loading.io import ModelFileError

        with pytest.raises(ModelFileError, match="download"):
            run(nodes, "SurgSoraLoadTrajectoryDecoder", decoder=CMP_NAME)  # not asked: no network
        assert calls == []
        (decoder,) = run(nodes, "SurgSoraLoadTrajectoryDecoder", decoder=CMP_NAME, download=True)
        assert calls == [("MyNiuuu/MOFA-Video-Traj",
                          "models/cmp/experiments/semiauto_annot/resnet50_vip+mpii_liteflow/checkpoints/" + CMP_NAME)]
        assert target.is_file() and type(decoder).__name__ == "CMPDecoder"
        assert not [p for p in target.parent.iterdir() if p.name.startswith(".surgsora-download")]
    finally:
        target.unlink(missing_ok=True)
        moved.rename(target)


# ------------------------------------------------------------------------------------ perception

def test_sam_features_and_masks_match_the_library(nodes, env, frame):
    from surgsora.perception.sam import load_sam

    (sam,) = run(nodes, "SurgSoraLoadSAM", model_name=SAM_NAME)
    (seg,) = run(nodes, "SurgSoraSAMSegment", sam=sam, image=frame)
    ref = load_sam(env.paths["sam"])
    x = frame.permute(0, 3, 1, 2)
    assert torch.equal(seg, ref.encode(x))
    before = sam.encoder_images
    tracks = {"track_path": torch.tensor([[[32.0, 16.0], [100.0, 40.0]], [[34.0, 17.0], [90.0, 41.0]]]),
              "track_visibility": torch.ones(2, 2, dtype=torch.bool), "width": W, "height": H}
    masks, preview = run(nodes, "SurgSoraSAMMasks", sam=sam, image=frame, clicks="[[10, 60]]", tracks=tracks)
    assert sam.encoder_images == before  # masks reuse the cached embedding
    assert masks.shape == (3, H, W) and preview.shape == (1, H, W, 3)
    for m, click in zip(masks, ([32, 16], [100, 40], [10, 60])):
        want, _ = ref.predict_masks(x, points=np.array([click], np.float64))
        assert torch.equal(m.bool(), want[0])
    with pytest.raises(ValueError, match="No clicks"):
        run(nodes, "SurgSoraSAMMasks", sam=sam, image=frame, clicks="")
    with pytest.raises(ValueError, match="clicks must be JSON"):
        run(nodes, "SurgSoraSAMMasks", sam=sam, image=frame, clicks="[[1, 2]")


def test_depth_outputs_standard_image_and_mask(nodes, env, frame):
    from surgsora.perception.depth import load_depth_anything

    (model,) = run(nodes, "SurgSoraLoadDepthAnything", model_name=DEPTH_NAME)
    depth, depth_map, colour = run(nodes, "SurgSoraDepth", depth_model=model, image=frame, input_size=70)
    ref = load_depth_anything(env.paths["depth"])(frame.permute(0, 3, 1, 2), input_size=70)[:, 0]
    assert torch.allclose(depth_map, ref, atol=1e-6)
    assert depth.shape == (1, H, W, 3) and torch.equal(depth[..., 0], depth[..., 2])  # grey, near = bright
    assert torch.allclose(depth[..., 0], depth_map, atol=1e-6)
    assert float(depth_map.min()) == 0.0 and float(depth_map.max()) == 1.0
    assert colour.shape == (1, H, W, 3) and not torch.equal(colour[..., 0], colour[..., 1])
    with pytest.raises(ValueError, match="multiple of 14"):
        run(nodes, "SurgSoraDepth", depth_model=model, image=frame, input_size=100)


# ------------------------------------------------------------------------------------ trajectories

EDITOR = {"width": 1920, "height": 1080, "tracks": [[[480, 540], [960, 540]], [[1000, 900]]]}


def test_trajectories_from_the_editor_rescale_to_the_frame(nodes, env, frame):
    from surgsora.motion.tracks import CanvasScaledWarning

    with pytest.warns(CanvasScaledWarning, match=f"tracks drawn on a 1920x1080 canvas were scaled to the image "
                                                 f"\\({W}x{H}\\)"):  # legitimate, but said
        tracks, preview = run(nodes, "SurgSoraTrajectories", tracks=json.dumps(EDITOR), frames=5, image=frame)
    path = tracks["track_path"]
    assert path.shape == (5, 2, 2) and tracks["width"] == W and tracks["height"] == H
    sx, sy = W / 1920, H / 1080
    expect = torch.tensor([[480 + 120 * t, 540.0] for t in range(5)]) * torch.tensor([sx, sy])
    assert torch.allclose(path[:, 0], expect, atol=1e-4)  # constant speed between the two points
    assert torch.allclose(path[:, 1], torch.tensor([1000 * sx, 900 * sy]).expand(5, 2))  # static anchor
    assert preview.shape == (1, H, W, 3) and not torch.equal(preview, frame)
    # the editor's background: the frame it received, saved in ComfyUI's temp folder
    ui = nodes.NODE_CLASS_MAPPINGS["SurgSoraTrajectories"]().build(json.dumps(EDITOR), 5, image=frame)["ui"]
    saved = Path(env.folder_paths.get_temp_directory()) / ui["surgsora_frame"][0]["filename"]
    from surgsora.video_io import read_image

    assert np.abs(read_image(saved).astype(int) - (frame[0].numpy() * 255 + 0.5).astype(int)).max() <= 1


def test_trajectories_accept_kjnodes_and_core_tracks(nodes, env):
    kj = json.dumps([{"x": 100, "y": 50}, {"x": 200, "y": 50}, {"x": 300, "y": 50}])  # SplineEditor coord_str
    tracks, _ = run(nodes, "SurgSoraTrajectories", tracks="", frames=3, canvas_width=512, canvas_height=512,
                    tracks_json=kj)
    assert torch.allclose(tracks["track_path"][:, 0], torch.tensor([[100.0, 50], [200, 50], [300, 50]]))
    assert (tracks["width"], tracks["height"]) == (512, 512)
    core = {"track_path": torch.tensor([[[10.0, 10.0]], [[20.0, 10.0]]]), "track_visibility": torch.ones(2, 1).bool()}
    out, _ = run(nodes, "SurgSoraTrajectories", tracks="ignored", frames=3, canvas_width=64, canvas_height=64,
                 tracks_in=core)
    assert torch.allclose(out["track_path"][:, 0, 0], torch.tensor([10.0, 15.0, 20.0]))
    with pytest.raises(ValueError, match="canvas size of the tracks is unknown"):
        run(nodes, "SurgSoraTrajectories", tracks="", frames=3, tracks_json=kj)
    with pytest.raises(ValueError, match="draw at least one track"):
        run(nodes, "SurgSoraTrajectories", tracks="", frames=3, canvas_width=64, canvas_height=64)
    with pytest.raises(ValueError, match="both canvas_width and canvas_height"):
        run(nodes, "SurgSoraTrajectories", tracks=kj, frames=3, canvas_width=64)
    with pytest.raises(ValueError, match="frames must be at least 2"):
        run(nodes, "SurgSoraTrajectories", tracks=kj, frames=1, canvas_width=64, canvas_height=64)


def test_flow_from_a_track_on_a_region_is_its_exact_translation(nodes, frame):
    (decoder,) = run(nodes, "SurgSoraLoadTrajectoryDecoder", decoder="analytic")
    tracks = {"track_path": torch.tensor([[[40.5, 20.5]], [[44.5, 22.5]], [[48.5, 24.5]]]),
              "track_visibility": torch.ones(3, 1).bool(), "width": W, "height": H}
    region = torch.ones(1, H, W)  # a MASK from any segmentation node
    flow, colours = run(nodes, "SurgSoraTracksToFlow", decoder=decoder, tracks=tracks, image=frame,
                        region_masks=region)
    assert flow.shape == (1, 2, 2, H, W)
    assert torch.allclose(flow[0, 0, 0], torch.tensor(4.0)) and torch.allclose(flow[0, 1, 1], torch.tensor(4.0))
    assert colours.shape == (3, H, W, 3) and torch.all(colours[0] == 1)  # frame 0: no motion, white
    # the motion preview moves the frame by exactly that translation
    (video,) = run(nodes, "SurgSoraMotionPreview", image=frame, flow=flow)
    assert torch.equal(video[0], frame[0])
    assert torch.allclose(video[2, 4:, 8:], frame[0, :-4, :-8], atol=1e-5)
    with pytest.raises(ValueError, match=r"flow must be \[B, T-1, 2, H, W\]"):
        run(nodes, "SurgSoraMotionPreview", image=frame, flow=flow[0])


def test_motion_preview_shows_the_clis_motion_signal_and_the_average_splat_on_request(nodes, frame):
    """The node's default picture is the CLI preview's (the occlusion-aware motion signal, with the depth and region
    masks the node is given); warp 'average' is the old average splat."""
    from surgsora.motion.preview import motion_preview, motion_signal

    flow = torch.zeros(1, 2, 2, H, W)
    box = torch.zeros(H, W)
    box[16:40, 20:60] = 1  # moves right by 6, then 12 pixels
    flow[0, 0, 0][box > 0], flow[0, 1, 0][box > 0] = 6.0, 12.0
    region = torch.zeros(1, H, W)
    region[0, 12:44, 16:64] = 1  # its mask, a little generous (the removed area, hence the fill, depends on it)
    depth = torch.rand(1, H, W)  # a MASK from any depth node
    x = frame.permute(0, 3, 1, 2).contiguous()
    (video,) = run(nodes, "SurgSoraMotionPreview", image=frame, flow=flow, depth=depth, region_masks=region)
    signal, _ = motion_signal(x, flow, depth=depth[None], regions=region[None])
    assert torch.equal(video, signal[0].permute(0, 2, 3, 1))
    (plain,) = run(nodes, "SurgSoraMotionPreview", image=frame, flow=flow, warp="average")
    assert torch.equal(plain, motion_preview(x, flow)[0].permute(0, 2, 3, 1))
    # the two pictures differ where the box started: the signal fills it from behind, the average splat keeps it
    assert (video[2, 16:40, 20:32] - plain[2, 16:40, 20:32]).abs().max() > 0.1
    with pytest.raises(ValueError, match="warp must be one of occlusion, average; got 'softmax'"):
        run(nodes, "SurgSoraMotionPreview", image=frame, flow=flow, warp="softmax")


def test_cmp_decoder_node_matches_the_library(nodes, env, frame):
    from surgsora.motion.cmp import load_cmp
    from surgsora.motion.tracks import rasterize

    (decoder,) = run(nodes, "SurgSoraLoadTrajectoryDecoder", decoder=CMP_NAME)
    tracks = {"track_path": torch.tensor([[[40.0, 20.0]], [[50.0, 30.0]]]), "track_visibility": torch.ones(2, 1).bool(),
              "width": W, "height": H}
    flow, _ = run(nodes, "SurgSoraTracksToFlow", decoder=decoder, tracks=tracks, image=frame)
    sparse, mask = rasterize(np.array([[[40.0, 20.0], [50.0, 30.0]]]), (H, W))
    ref = load_cmp(env.paths["cmp"])(frame.permute(0, 3, 1, 2), sparse, mask)
    assert torch.allclose(flow, ref, atol=1e-5)


def test_optical_flow_from_a_real_clip(nodes, endovis_clip):
    import cv2

    from surgsora.motion.optical_flow import estimate_flow
    from surgsora.video_io import read_video

    clip = np.stack([cv2.resize(f, (W, H), interpolation=cv2.INTER_AREA) for f in read_video(endovis_clip, 0, 10)])
    frames = torch.from_numpy(clip).float().div(255)
    flow, first, used, colours = run(nodes, "SurgSoraVideoFlow", frames=frames, method="dis", raft_weights="none",
                                     start=6, num_frames=4, stride=1)
    u8 = (frames[6:10].numpy() * 255 + 0.5).astype(np.uint8)
    assert torch.allclose(flow[0], torch.from_numpy(estimate_flow(u8)))
    assert torch.equal(first[0], frames[6]) and used.shape == (4, H, W, 3) and colours.shape == (4, H, W, 3)
    with pytest.raises(ValueError, match="The clip has 10 frames"):
        run(nodes, "SurgSoraVideoFlow", frames=frames, start=8, num_frames=4)
    with pytest.raises(ValueError, match="RAFT needs a weights file.*models/optical_flow"):
        run(nodes, "SurgSoraVideoFlow", frames=frames, method="raft", raft_weights="none", num_frames=4)


# ------------------------------------------------------------------------------------ generation

@pytest.fixture(scope="module")
def generation(nodes, env, frame):
    """Adapter, SVD and conditions for a 4-frame video of the real frame."""
    torch.manual_seed(3)
    (adapter,) = run(nodes, "SurgSoraLoadAdapter", adapter_name=ADAPTER_NAME)
    (svd,) = run(nodes, "SurgSoraLoadSVD", ckpt_name=f"[diffusers] {SVD_FOLDER}")
    depth = torch.rand(1, H, W, 1).expand(-1, -1, -1, 3)  # a grey depth IMAGE
    seg = torch.randn(1, 256, 16, 16)
    flow = torch.randn(1, 3, 2, H, W) * 2
    (dsi,) = run(nodes, "SurgSoraDSIEncode", adapter=adapter, image=frame, depth=depth, seg_features=seg)
    (conditions,) = run(nodes, "SurgSoraDFMFuse", adapter=adapter, dsi_features=dsi, flow=flow)
    return types.SimpleNamespace(adapter=adapter, svd=svd, depth=depth, seg=seg, flow=flow, conditions=conditions)


def test_dsi_and_dfm_nodes_equal_the_adapters_condition_branch(generation, frame):
    g = generation
    pixels = frame.permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        ref = g.adapter.encode_conditions(pixels, g.depth[..., :1].permute(0, 3, 1, 2), g.seg, g.flow)
    assert len(ref) == len(g.conditions.scales)
    for a, b in zip(g.conditions.scales, ref):
        assert a.shape == b.shape and a.shape[1] == 4
        assert torch.allclose(a, b, atol=1e-5)


def test_mofa_controlnet_runs_through_the_same_nodes_without_depth_or_sam(nodes, generation, frame):
    """MOFA-Video-Traj's ControlNet loads in the adapter loader and needs neither depth nor SAM features;
    a SurgSora adapter with a depth branch refuses to run without them, in one sentence."""
    (mofa,) = run(nodes, "SurgSoraLoadAdapter", adapter_name=MOFA_NAME)
    assert mofa.config.condition_injection == "mofa" and not mofa.needs_depth and not mofa.needs_seg
    flow = generation.flow
    (dsi,) = run(nodes, "SurgSoraDSIEncode", adapter=mofa, image=frame)
    assert dsi.depth is None
    (conditions,) = run(nodes, "SurgSoraDFMFuse", adapter=mofa, dsi_features=dsi, flow=flow)
    with torch.no_grad():
        ref = mofa.encode_conditions(frame.permute(0, 3, 1, 2) * 2 - 1, None, None, flow)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(conditions.scales, ref))
    with pytest.raises(ValueError, match="depth branch: connect a depth map"):
        run(nodes, "SurgSoraDSIEncode", adapter=generation.adapter, image=frame, seg_features=generation.seg)
    with pytest.raises(ValueError, match="uses SAM features: connect"):
        run(nodes, "SurgSoraDSIEncode", adapter=generation.adapter, image=frame, depth=generation.depth)
    with pytest.raises(ValueError, match="no depth stream but the adapter needs one"):
        run(nodes, "SurgSoraDFMFuse", adapter=generation.adapter, dsi_features=dsi, flow=flow)


def test_motion_signal_drives_plain_svd_through_the_sampler(nodes, generation, frame):
    """Dual-clock through the nodes: the signal node's animation, anchored everywhere through the last step,
    comes back as its own VAE round trip; half-open fractions and a missing mask are refused in one sentence."""
    g = generation
    signal, mask = run(nodes, "SurgSoraMotionSignal", image=frame, flow=g.flow)
    assert signal.shape == (4, H, W, 3) and mask.shape == (4, H, W) and set(mask.unique().tolist()) <= {0.0, 1.0}
    ones = torch.ones_like(mask)
    kw = dict(svd=g.svd, image=frame, steps=2, seed=1, motion_signal=signal, motion_mask=ones)
    (latent,) = run(nodes, "SurgSoraSampler", t_weak=0.0, t_strong=1.0, **kw)
    assert latent["surgsora_frames"] == 4
    (video,) = run(nodes, "SurgSoraDecode", svd=g.svd, latent=latent, decode_chunk_size=4)
    pipe = g.svd.pipeline()
    with torch.no_grad():
        # (contiguous, as the node makes it: convolutions on channels-last memory round differently)
        anchor = pipe.encode_motion_signal(signal.permute(0, 3, 1, 2).contiguous()[None], ones[None, :, None], 0, 2)
        expected = pipe.decode(anchor.latents)[0].permute(0, 2, 3, 1)
    scale = g.svd.vae.config.scaling_factor
    err = (latent["samples"] * scale - anchor.latents[0]).abs().max().item()
    assert err < 1e-5, err
    assert (video - expected).abs().max() < 1e-4
    assert nodes.NODE_CLASS_MAPPINGS["SurgSoraSampler"].VALIDATE_INPUTS(t_weak=0.5, t_strong=0.4) != True  # noqa: E712
    with pytest.raises(ValueError, match="needs both the motion signal and its mask; connect motion_mask"):
        run(nodes, "SurgSoraSampler", svd=g.svd, image=frame, steps=2, motion_signal=signal)
    with pytest.raises(ValueError, match=r"motion_mask is \(3, 64, 128\) but the motion signal has 4 frames"):
        run(nodes, "SurgSoraSampler", t_weak=0.0, t_strong=1.0, **{**kw, "motion_mask": ones[:3]})


def test_sampler_and_decoder_equal_the_pipeline(nodes, generation, frame):
    from surgsora.sampling.pipeline import SurgSoraPipeline

    g = generation
    kw = dict(steps=2, min_cfg=1.0, max_cfg=2.5, fps=7, motion_bucket_id=100, noise_aug_strength=0.02,
              control_scale=0.8, seed=11)
    (latent,) = run(nodes, "SurgSoraSampler", svd=g.svd, image=frame, adapter=g.adapter, conditions=g.conditions, **kw)
    assert latent["samples"].shape == (4, 4, H // 8, W // 8) and latent["surgsora_frames"] == 4
    (video,) = run(nodes, "SurgSoraDecode", svd=g.svd, latent=latent, decode_chunk_size=4)
    assert video.shape == (4, H, W, 3)

    s = g.svd
    pipe = SurgSoraPipeline(vae=s.vae, image_encoder=s.image_encoder, unet=s.unet,
                            scheduler=type(s.scheduler).from_config(s.scheduler.config),
                            feature_extractor=s.feature_extractor, adapter=g.adapter)
    ref = pipe(frame.permute(0, 3, 1, 2).contiguous(), conditions=g.conditions.scales, num_inference_steps=2, min_guidance_scale=1.0,
               max_guidance_scale=2.5, fps=7, motion_bucket_id=100, noise_aug_strength=0.02, conditioning_scale=0.8,
               decode_chunk_size=4, generator=torch.Generator().manual_seed(11))
    assert torch.allclose(video, ref[0].permute(0, 2, 3, 1), atol=1e-5)
    # ComfyUI's LATENT convention: VAE latents divided by the scaling factor
    lat_ref = pipe(frame.permute(0, 3, 1, 2).contiguous(), conditions=g.conditions.scales, num_inference_steps=2,
                   min_guidance_scale=1.0, max_guidance_scale=2.5, fps=7, motion_bucket_id=100,
                   noise_aug_strength=0.02, conditioning_scale=0.8, output_type="latent",
                   generator=torch.Generator().manual_seed(11))
    assert torch.allclose(latent["samples"], lat_ref[0] / s.vae.config.scaling_factor, atol=1e-5)


def test_cancel_stops_sampling_within_one_step(nodes, env, generation, frame):
    g = generation
    env.progress.clear()
    original = env.mm.throw_exception_if_processing_interrupted

    def press_cancel_during_first_step():
        env.interrupted = True  # the user presses Cancel while step 1 runs
        env.mm.throw_exception_if_processing_interrupted = original
        original()

    env.mm.throw_exception_if_processing_interrupted = press_cancel_during_first_step
    try:
        with pytest.raises(Exception) as info:
            run(nodes, "SurgSoraSampler", svd=g.svd, image=frame, adapter=g.adapter, conditions=g.conditions,
                steps=50, seed=0)
    finally:
        env.mm.throw_exception_if_processing_interrupted = original
    assert type(info.value).__name__ == "InterruptProcessingException"
    bar = env.progress[-1]
    assert (bar.total, bar.current) == (50, 1)


def test_sampler_rejects_bad_settings(nodes, generation, frame):
    g = generation
    base = dict(svd=g.svd, image=frame, adapter=g.adapter, conditions=g.conditions, steps=1)
    with pytest.raises(ValueError, match="min_cfg .* must not be larger than max_cfg"):
        run(nodes, "SurgSoraSampler", **base, min_cfg=3.0, max_cfg=1.0)
    for name, value in (("max_cfg", float("nan")), ("control_scale", float("nan")), ("noise_aug_strength", -0.1),
                        ("min_cfg", float("inf"))):
        with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
            run(nodes, "SurgSoraSampler", **{**base, name: value})
    with pytest.raises(ValueError, match="conditions were made for 4 frames"):
        run(nodes, "SurgSoraSampler", **base, frames=6)
    with pytest.raises(ValueError, match="conditions .* input is missing"):
        run(nodes, "SurgSoraSampler", svd=g.svd, image=frame, adapter=g.adapter, steps=1)
    with pytest.raises(ValueError, match="multiples of 64"):
        run(nodes, "SurgSoraDSIEncode", adapter=g.adapter, image=frame[:, :, :100], depth=g.depth, seg_features=g.seg)
    with pytest.raises(ValueError, match="whole number of 3-frame videos"):
        run(nodes, "SurgSoraDecode", svd=g.svd, latent={"samples": torch.zeros(4, 4, 8, 16), "surgsora_frames": 3})


def test_an_adapter_for_another_unet_is_one_sentence_before_sampling(nodes, generation, frame):
    """The sampler node checks its adapter against the SVD's UNet before anything runs (MOFA's ControlNet is made
    for SVD-xt's 4 down blocks, the tiny SVD has 2)."""
    from surgsora.loading.files import ModelFileError

    (mofa,) = run(nodes, "SurgSoraLoadAdapter", adapter_name=MOFA_NAME)
    with pytest.raises(ModelFileError, match=r"made for another UNet \(down blocks: 4 in the adapter, 2 in this SVD"):
        run(nodes, "SurgSoraSampler", svd=generation.svd, image=frame, adapter=mofa, conditions=generation.conditions,
            steps=1)


def test_a_motion_signal_and_conditions_of_different_lengths_are_named_as_such(nodes, generation, frame):
    """A 14-frame motion signal with 21-frame conditions: the sentence names those two inputs (not the frames
    widget, which is left at 0)."""
    g = generation
    (dsi,) = run(nodes, "SurgSoraDSIEncode", adapter=g.adapter, image=frame, depth=g.depth, seg_features=g.seg)
    (conditions,) = run(nodes, "SurgSoraDFMFuse", adapter=g.adapter, dsi_features=dsi, flow=torch.zeros(1, 20, 2, H, W))
    assert conditions.num_frames == 21
    with pytest.raises(ValueError) as err:
        run(nodes, "SurgSoraSampler", svd=g.svd, image=frame, adapter=g.adapter, conditions=conditions, steps=1,
            motion_signal=torch.rand(14, H, W, 3), motion_mask=torch.ones(14, H, W))
    text = str(err.value)
    assert "motion signal" in text and "conditions" in text and "14" in text and "21" in text, text
    assert not text.startswith("frames") and "\n" not in text, text


class _ClipVision:
    """ComfyUI's CLIP_VISION over SVD's image encoder: its input size and CLIP mean/std, a patcher for the memory
    manager, and a model returning (..., ..., image_embeds)."""

    def __init__(self, svd):
        self.encoder = svd.image_encoder
        self.image_size = svd.image_encoder.config.image_size
        self.image_mean, self.image_std = svd.feature_extractor.image_mean, svd.feature_extractor.image_std
        self.patcher, self.load_device = None, "cpu"

    def model(self, pixel_values, intermediate_output=None):
        return None, None, self.encoder(pixel_values).image_embeds


class _VAE:
    """ComfyUI's VAE.encode: IMAGE [N, H, W, 3] in [0, 1] -> latents (SVD's VAE, mapping to [-1, 1] itself)."""

    def __init__(self, svd):
        self.vae = svd.vae

    def encode(self, pixels):
        return self.vae.encode(pixels.movedim(-1, 1) * 2 - 1).latent_dist.mode()


@pytest.mark.parametrize("mofa", [False, True], ids=["surgsora", "mofa"])
def test_svd_conditioning_node_encodes_the_first_frame_as_the_pipeline(nodes, generation, frame, mofa):
    """SurgSora SVD Conditioning (for ComfyUI's own SVD) and the pipeline share one definition of SVD's image
    conditioning: the same CLIP embedding, the same noise-augmented frame latent for the same seed, and the same
    time ids, for a SurgSora adapter and for MOFA's ControlNet (fixed ids, CLIP input not normalised)."""
    g = generation
    adapter = run(nodes, "SurgSoraLoadAdapter", adapter_name=MOFA_NAME)[0] if mofa else g.adapter
    positive, negative, latent = run(nodes, "SurgSoraSVDConditioning", clip_vision=_ClipVision(g.svd),
                                     init_image=frame, vae=_VAE(g.svd), width=W, height=H, video_frames=5,
                                     motion_bucket_id=90, fps=9, augmentation_level=0.3, seed=5, adapter=adapter)
    pipe = g.svd.pipeline()
    # MOFA's full-size ControlNet does not fit the tiny UNet (the pipeline refuses it); only its time ids and CLIP
    # input rule are used here, so it is attached past that check
    pipe.register_modules(adapter=adapter)
    with torch.no_grad():
        first = pipe.encode_first_frame(frame.permute(0, 3, 1, 2), H, W, 0.3, torch.Generator().manual_seed(5))
    embedding, options = positive[0]
    assert torch.equal(embedding, first.image_embeddings.permute(1, 0, 2))
    assert torch.allclose(options["concat_latent_image"], first.image_latents, atol=1e-5)
    ids = [options["fps"] - 1, options["motion_bucket_id"], options["augmentation_level"]]
    assert ids == pipe.time_ids(9, 90, 0.3) == ([6.0, 128.0, 0.02] if mofa else [8, 90, 0.3])
    assert torch.equal(negative[0][0], torch.zeros_like(embedding))
    assert latent["samples"].shape == (5, 4, H // 8, W // 8)
    with pytest.raises(ValueError, match="augmentation_level must be a finite number >= 0 and <= 1; got 2.0"):
        run(nodes, "SurgSoraSVDConditioning", clip_vision=None, init_image=frame, vae=None, width=W, height=H,
            video_frames=5, motion_bucket_id=90, fps=9, augmentation_level=2.0)


def test_svd_single_file_loads_like_the_diffusers_folder(nodes, env, monkeypatch, tmp_path):
    """svd_xt.safetensors in models/checkpoints (ComfyUI's usual file) gives the same model as the folder."""
    import shutil

    import surgsora.loading.svd_checkpoint as svdc
    from svd_export import save_svd_single_file

    (folder,) = run(nodes, "SurgSoraLoadSVD", ckpt_name=f"[diffusers] {SVD_FOLDER}")
    configs = tmp_path / "configs"
    shutil.copytree(svdc.CONFIG_DIR, configs)
    for part in ("unet", "vae", "image_encoder"):
        shutil.copyfile(env.paths["svd"] / part / "config.json", configs / part / "config.json")
    monkeypatch.setattr(svdc, "CONFIG_DIR", configs)  # tiny architecture instead of the full-size one
    single = env.models_dir / "checkpoints" / "svd_xt.safetensors"
    save_svd_single_file(single, folder.unet, folder.vae, folder.image_encoder)
    try:
        (loaded,) = run(nodes, "SurgSoraLoadSVD", ckpt_name="svd_xt.safetensors")
    finally:
        single.unlink()
    for a, b in ((loaded.unet, folder.unet), (loaded.image_encoder, folder.image_encoder)):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
