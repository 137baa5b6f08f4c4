"""Build the shipped workflows (UI format) and their API twins, or check that the files on disk are current.

    python workflows/make_workflows.py           # write workflows/*.json and workflows/api/*.json
    python workflows/make_workflows.py --check   # exit 1 if any file differs from what would be written

Each workflow is described once, below, as nodes (widget values by input name) and links (by output
and input name). :class:`Graph` lays it out in the LiteGraph format the ComfyUI frontend saves
(``version`` 0.4: socket inputs first, then one input per widget, ``widgets_values`` in widget order,
the seed's "control after generate" value and the upload button's value included). :func:`ui_to_api`
then derives the ``/prompt`` twin from the UI file alone, following the frontend's ``graphToPrompt``:
widget values by position, links as ``[node_id, output_slot]``, notes and muted/bypassed nodes left out.
The integration test loads every UI file in the real frontend and checks that its own ``graphToPrompt``
gives exactly the API twin.

Input specs come from our node classes (imported in-process) and, for the core nodes used, from
``spec/core_object_info.json`` (ComfyUI v0.8.0 ``/object_info``, machine-specific file lists emptied).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
API_DIR = HERE / "api"
CORE_SPEC = HERE / "spec" / "core_object_info.json"
EXAMPLE_TRACKS = REPO / "demo" / "tracks_endovis.json"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")

# Shared widget values of the shipped workflows (see README: match the adapter's training setup).
FRAME_FILE = "surgsora_endovis_frame6.png"
CLIP_FILE = "surgsora_endovis_clip.mp4"
WIDTH, HEIGHT, FRAMES, FPS = 448, 256, 21, 7
SAM_FILE = "sam_vit_b_01ec64.pth"
DEPTH_FILE = "depth_anything_v2_vits.pth"
SVD_FILE = "svd_xt.safetensors"
CMP_FILE = "ckpt_iter_42000.pth.tar"
ADAPTER = "surgsora_adapter"
MOFA_FILE = "mofa_traj_controlnet.safetensors"
MOFA_FRAMES = 25  # MOFA-Video-Traj was trained on SVD-xt's 25 frames

# What the frontend's Missing Models dialog offers to fetch (node properties "models": name, url, directory).
MODEL_SOURCES = {
    SVD_FILE: ("https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt/resolve/main/svd_xt.safetensors",
               "checkpoints"),
    MOFA_FILE: ("https://huggingface.co/MyNiuuu/MOFA-Video-Traj/resolve/main/ckpts/controlnet/"
                "diffusion_pytorch_model.safetensors", "surgsora"),
    CMP_FILE: ("https://huggingface.co/MyNiuuu/MOFA-Video-Traj/resolve/main/models/cmp/experiments/semiauto_annot/"
               "resnet50_vip+mpii_liteflow/checkpoints/ckpt_iter_42000.pth.tar", "surgsora"),
}


# ============================================================================ node specs

def node_info(cls, name: str) -> dict:
    """What ComfyUI's /object_info says about a node class (the fields the frontend uses here)."""
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {k: list(v) for k, v in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "name": name,
        "display_name": getattr(sys.modules.get("nodes"), "NODE_DISPLAY_NAME_MAPPINGS", {}).get(name, name),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }


def object_info() -> dict:
    """Input/output specs of our nodes (from the classes) and of the core nodes the workflows use."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    import nodes as ours  # our package: the repo root is on sys.path when run from a checkout

    info = json.loads(CORE_SPEC.read_text())
    for name, cls in ours.NODE_CLASS_MAPPINGS.items():
        entry = node_info(cls, name)
        entry["display_name"] = ours.NODE_DISPLAY_NAME_MAPPINGS.get(name, name)
        info[name] = entry
    return info


def _spec_type(spec) -> str:
    t = spec[0]
    return "COMBO" if isinstance(t, list) else t


def _opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    return _spec_type(spec) in WIDGET_TYPES and not _opts(spec).get("forceInput", False)


def ordered_inputs(info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) in the node definition's order: required, then optional."""
    out = []
    for group in ("required", "optional"):
        specs = info["input"].get(group, {})
        for name in info.get("input_order", {}).get(group, list(specs)):
            out.append((name, specs[name], group == "optional"))
    return out


def widget_slots(info: dict) -> list[tuple[str | None, str]]:
    """The node's widgets in order as (input name or None for a helper widget, widget type)."""
    slots = []
    for name, spec, _ in ordered_inputs(info):
        if not is_widget(spec):
            continue
        t, o = _spec_type(spec), _opts(spec)
        slots.append((name, t))
        if t == "INT" and (o.get("control_after_generate") or name in ("seed", "noise_seed")):
            slots.append((None, "control_after_generate"))
        elif t == "COMBO" and o.get("control_after_generate"):
            slots.append((None, "control_after_generate"))
        elif t == "COMBO" and any(o.get(k) for k in UPLOAD_OPTIONS):
            slots.append((None, "upload"))
    return slots


def default_value(spec):
    o = _opts(spec)
    if "default" in o:
        return o["default"]
    t = spec[0]
    if isinstance(t, list):
        return t[0] if t else ""
    if t == "COMBO":
        return (o.get("options") or [""])[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(t)


# ============================================================================ UI graph builder

class Node:
    def __init__(self, graph, node_id, type_, pos, size, title, widgets):
        self.graph, self.id, self.type, self.pos, self.size, self.title = graph, node_id, type_, pos, size, title
        self.widgets = widgets
        self.links_in: dict[str, int] = {}
        self.links_out: dict[int, list[int]] = {}


class Graph:
    def __init__(self, info: dict):
        self.info = info
        self.nodes: list[Node] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def add(self, type_: str, pos, size=(320, 120), title: str | None = None, models=(), **widgets) -> Node:
        if type_ not in self.info and type_ not in VIRTUAL_NODES:
            raise KeyError(f"unknown node type {type_}")
        if type_ in self.info:
            names = {n for n, spec, _ in ordered_inputs(self.info[type_]) if is_widget(spec)}
            unknown = set(widgets) - names - {"control_after_generate"}
            if unknown:
                raise KeyError(f"{type_} has no widgets {sorted(unknown)}")
        node = Node(self, len(self.nodes) + 1, type_, list(pos), list(size), title, widgets)
        node.models = [{"name": name, "url": MODEL_SOURCES[name][0], "directory": MODEL_SOURCES[name][1]}
                       for name in models]
        self.nodes.append(node)
        return node

    def connect(self, src: Node, output, dst: Node, input_name: str) -> None:
        outs = self.info[src.type]
        slot = output if isinstance(output, int) else outs["output_name"].index(output)
        spec = dict((n, s) for n, s, _ in ordered_inputs(self.info[dst.type]))[input_name]
        link_id = len(self.links) + 1
        self.links.append([link_id, src.id, slot, dst.id, input_name, outs["output"][slot]])
        dst.links_in[input_name] = link_id
        src.links_out.setdefault(slot, []).append(link_id)
        if _spec_type(spec) not in (outs["output"][slot], "*"):
            raise TypeError(f"{src.type}.{outs['output_name'][slot]} ({outs['output'][slot]}) cannot feed "
                            f"{dst.type}.{input_name} ({_spec_type(spec)})")

    def group(self, title: str, bounding, color: str) -> None:
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": list(bounding), "color": color,
                            "font_size": 24, "flags": {}})

    # ---- serialisation, in the frontend's layout
    def _inputs(self, node: Node) -> tuple[list[dict], dict[str, int]]:
        info = self.info[node.type]
        sockets, widgets = [], []
        for name, spec, optional in ordered_inputs(info):
            entry = {"localized_name": name, "name": name}
            if optional:
                entry["shape"] = 7
            entry["type"] = _spec_type(spec)
            if is_widget(spec):
                entry["widget"] = {"name": name}
                entry["link"] = node.links_in.get(name)
                widgets.append(entry)
                o = _opts(spec)
                if entry["type"] == "COMBO" and any(o.get(k) for k in UPLOAD_OPTIONS):
                    widgets.append({"localized_name": "choose file to upload", "name": "upload", "type": "IMAGEUPLOAD",
                                    "widget": {"name": "upload"}, "link": None})
            else:
                entry["link"] = node.links_in.get(name)
                sockets.append(entry)
        ordered = sockets + widgets
        return ordered, {e["name"]: i for i, e in enumerate(ordered)}

    def _widgets_values(self, node: Node) -> list:
        info = self.info[node.type]
        specs = dict((n, s) for n, s, _ in ordered_inputs(info))
        values = []
        for name, kind in widget_slots(info):
            if name is not None:
                values.append(node.widgets.get(name, default_value(specs[name])))
            elif kind == "control_after_generate":
                values.append(node.widgets.get("control_after_generate", "fixed"))
            else:
                values.append("image")
        return values

    def _order(self) -> dict[int, int]:
        deps = {n.id: {lk[1] for lk in self.links if lk[3] == n.id} for n in self.nodes}
        order, done = {}, set()
        while len(done) < len(self.nodes):
            ready = [n.id for n in self.nodes if n.id not in done and deps[n.id] <= done]
            for i in ready:
                order[i] = len(order)
            done.update(ready)
        return order

    def ui(self) -> dict:
        order = self._order()
        nodes, slot_of = [], {}
        for node in self.nodes:
            if node.type in VIRTUAL_NODES:
                nodes.append({"id": node.id, "type": node.type, "pos": node.pos, "size": node.size, "flags": {},
                              "order": order[node.id], "mode": 0, "inputs": [], "outputs": [],
                              **({"title": node.title} if node.title else {}),
                              "properties": {}, "widgets_values": [node.widgets["text"]],
                              "color": "#432", "bgcolor": "#653"})
                continue
            inputs, slots = self._inputs(node)
            slot_of[node.id] = slots
            info = self.info[node.type]
            outputs = [{"localized_name": n, "name": n, "type": t, "links": node.links_out.get(i) or None}
                       for i, (n, t) in enumerate(zip(info["output_name"], info["output"]))]
            entry = {"id": node.id, "type": node.type, "pos": node.pos, "size": node.size, "flags": {},
                     "order": order[node.id], "mode": 0, "inputs": inputs, "outputs": outputs}
            if node.title:
                entry["title"] = node.title
            entry["properties"] = {"Node name for S&R": node.type, **({"models": node.models} if node.models else {})}
            entry["widgets_values"] = self._widgets_values(node)
            nodes.append(entry)
        links = [[lid, o, os_, t, slot_of[t][name], typ] for lid, o, os_, t, name, typ in self.links]
        return {"id": "00000000-0000-0000-0000-000000000000", "revision": 0,
                "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": nodes, "links": links,
                "groups": self.groups, "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [40, 40]}},
                "version": 0.4}


# ============================================================================ UI -> API

def ui_to_api(ui: dict, info: dict) -> dict:
    """The ``/prompt`` form of a UI workflow, computed the way the frontend's ``graphToPrompt`` does."""
    links = {lk[0]: lk for lk in ui["links"]}
    prompt = {}
    for node in sorted(ui["nodes"], key=lambda n: n["order"]):
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) != 0:
            continue
        spec = info[node["type"]]
        values = list(node.get("widgets_values", []))
        inputs = {}
        by_name = {e["name"]: e for e in node.get("inputs", [])}
        for (name, kind), value in zip(widget_slots(spec), values):
            if name is not None:
                inputs[name] = value
        for name, spec_ in ((n, s) for n, s, _ in ordered_inputs(spec)):
            entry = by_name.get(name)
            if entry is not None and entry.get("link") is not None:
                lk = links[entry["link"]]
                inputs[name] = [str(lk[1]), lk[2]]
        title = node.get("title") or spec.get("display_name") or node["type"]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    return prompt


# ============================================================================ the workflows

NOTE_FULL = """SurgSora: trajectory-controlled surgical video.
1. Load your first frame (here: frame 6 of the EndoVis 2017 clip). It is resized to 448x256 (multiples of 64, crop disabled so the drawn tracks stay aligned).
2. Draw trajectories in the editor: click to start a track, click or drag to add points, double-click to end it. A one-point track keeps that spot still.
3. Models: models/sams, models/depthanything, models/surgsora (adapter folder + CMP), models/checkpoints (svd_xt.safetensors). Use the SAM and Depth Anything files the adapter was trained with.
4. Queue. Change sampler settings freely: SAM, depth and the conditions are cached and not recomputed."""

NOTE_PREVIEW = """SurgSora motion preview: no diffusion model and no weights.
The trajectories are decoded into dense flow by the analytic decoder and the frame is pushed along it. Draw tracks in the editor (click to start, click/drag to add points, double-click to end), queue, and look at the preview and flow videos."""

NOTE_GT = """SurgSora, ground-truth flow mode (the paper's evaluation setting).
Flow frame 0 -> t is estimated from a real clip (OpenCV DIS, chained) instead of decoded from trajectories, and conditions the generation of that clip from its first frame. Compare the generated video with the reference clip."""


def _frame_and_perception(g: Graph, image_src, x=440, y0=40):
    """SAM + depth of the working frame: returns (sam_segment, depth) nodes."""
    sam = g.add("SurgSoraLoadSAM", (x, y0), (320, 82), model_name=SAM_FILE)
    seg = g.add("SurgSoraSAMSegment", (x + 360, y0), (340, 82))
    seg.sam_loader = sam
    g.connect(sam, "sam", seg, "sam")
    g.connect(image_src[0], image_src[1], seg, "image")
    dm = g.add("SurgSoraLoadDepthAnything", (x, y0 + 170), (320, 106), model_name=DEPTH_FILE)
    depth = g.add("SurgSoraDepth", (x + 360, y0 + 210), (340, 102))
    g.connect(dm, "depth_model", depth, "depth_model")
    g.connect(image_src[0], image_src[1], depth, "image")
    return seg, depth


def _generate(g: Graph, image_src, seg, depth, flow_src, x=1660, y0=40, prefix="SurgSora/video"):
    ad = g.add("SurgSoraLoadAdapter", (x, y0), (320, 82), adapter_name=ADAPTER)
    dsi = g.add("SurgSoraDSIEncode", (x, y0 + 130), (320, 106))
    g.connect(ad, "adapter", dsi, "adapter")
    g.connect(image_src[0], image_src[1], dsi, "image")
    g.connect(depth, "depth", dsi, "depth")
    g.connect(seg, "seg_features", dsi, "seg_features")
    fuse = g.add("SurgSoraDFMFuse", (x, y0 + 290), (320, 86))
    g.connect(ad, "adapter", fuse, "adapter")
    g.connect(dsi, "dsi_features", fuse, "dsi_features")
    g.connect(flow_src[0], flow_src[1], fuse, "flow")
    svd = g.add("SurgSoraLoadSVD", (x, y0 + 430), (320, 106), ckpt_name=SVD_FILE)
    sampler = g.add("SurgSoraSampler", (x + 360, y0), (320, 360), seed=42)
    g.connect(svd, "svd", sampler, "svd")
    g.connect(image_src[0], image_src[1], sampler, "image")
    g.connect(ad, "adapter", sampler, "adapter")
    g.connect(fuse, "conditions", sampler, "conditions")
    dec = g.add("SurgSoraDecode", (x + 360, y0 + 410), (320, 82))
    g.connect(svd, "svd", dec, "svd")
    g.connect(sampler, "latent", dec, "latent")
    video = g.add("CreateVideo", (x + 720, y0), (270, 78), fps=float(FPS))
    g.connect(dec, "frames", video, "images")
    save = g.add("SaveVideo", (x + 720, y0 + 120), (320, 400), filename_prefix=prefix)
    g.connect(video, "VIDEO", save, "video")
    return sampler


def _save_video(g: Graph, src, output, pos, prefix):
    video = g.add("CreateVideo", pos, (270, 78), fps=float(FPS))
    g.connect(src, output, video, "images")
    save = g.add("SaveVideo", (pos[0], pos[1] + 110), (320, 300), filename_prefix=prefix)
    g.connect(video, "VIDEO", save, "video")


def trajectory_to_video(info: dict) -> Graph:
    g = Graph(info)
    g.add("Note", (40, -290), (700, 230), text=NOTE_FULL)
    load = g.add("LoadImage", (40, 40), (320, 330), image=FRAME_FILE)
    scale = g.add("ImageScale", (40, 420), (320, 130), upscale_method="area", width=WIDTH, height=HEIGHT,
                  crop="disabled")
    g.connect(load, "IMAGE", scale, "image")
    traj = g.add("SurgSoraTrajectories", (1180, 360), (460, 740), tracks=_example_tracks(), frames=FRAMES)
    g.connect(scale, "IMAGE", traj, "image")
    seg, depth = _frame_and_perception(g, (scale, "IMAGE"))
    masks = g.add("SurgSoraSAMMasks", (800, 380), (340, 130))
    g.connect(seg.sam_loader, "sam", masks, "sam")
    g.connect(scale, "IMAGE", masks, "image")
    g.connect(traj, "tracks", masks, "tracks")
    decoder = g.add("SurgSoraLoadTrajectoryDecoder", (440, 560), (320, 106), decoder=CMP_FILE)
    flow = g.add("SurgSoraTracksToFlow", (800, 560), (340, 106))
    g.connect(decoder, "decoder", flow, "decoder")
    g.connect(traj, "tracks", flow, "tracks")
    g.connect(scale, "IMAGE", flow, "image")
    g.connect(masks, "masks", flow, "region_masks")
    preview = g.add("SurgSoraMotionPreview", (800, 710), (340, 86))
    g.connect(scale, "IMAGE", preview, "image")
    g.connect(flow, "flow", preview, "flow")
    g.connect(traj, "tracks", preview, "tracks")
    _save_video(g, preview, "video", (800, 840), "SurgSora/motion_preview")
    _generate(g, (scale, "IMAGE"), seg, depth, (flow, "flow"), x=1720)
    g.group("Frame", (20, -30, 360, 620), "#3f789e")
    g.group("Perception: SAM + Depth Anything V2", (420, -30, 740, 350), "#8A8")
    g.group("Trajectory Controller", (420, 330, 1240, 970), "#b58b2a")
    g.group("SurgSora adapter + Stable Video Diffusion", (1700, -30, 1420, 640), "#a1309b")
    return g


def motion_preview(info: dict) -> Graph:
    g = Graph(info)
    g.add("Note", (40, -200), (700, 160), text=NOTE_PREVIEW)
    load = g.add("LoadImage", (40, 40), (320, 330), image=FRAME_FILE)
    scale = g.add("ImageScale", (40, 420), (320, 130), upscale_method="area", width=WIDTH, height=HEIGHT,
                  crop="disabled")
    g.connect(load, "IMAGE", scale, "image")
    traj = g.add("SurgSoraTrajectories", (400, 40), (460, 720), tracks=_example_tracks(), frames=FRAMES)
    g.connect(scale, "IMAGE", traj, "image")
    decoder = g.add("SurgSoraLoadTrajectoryDecoder", (900, 40), (320, 106), decoder="analytic")
    flow = g.add("SurgSoraTracksToFlow", (900, 190), (320, 106))
    g.connect(decoder, "decoder", flow, "decoder")
    g.connect(traj, "tracks", flow, "tracks")
    g.connect(scale, "IMAGE", flow, "image")
    preview = g.add("SurgSoraMotionPreview", (900, 340), (320, 86))
    g.connect(scale, "IMAGE", preview, "image")
    g.connect(flow, "flow", preview, "flow")
    g.connect(traj, "tracks", preview, "tracks")
    _save_video(g, preview, "video", (1260, 40), "SurgSora/motion_preview")
    _save_video(g, flow, "flow_colours", (1620, 40), "SurgSora/flow")
    return g


def flow_from_video(info: dict) -> Graph:
    g = Graph(info)
    g.add("Note", (40, -200), (700, 160), text=NOTE_GT)
    load = g.add("LoadVideo", (40, 40), (320, 330), file=CLIP_FILE)
    parts = g.add("GetVideoComponents", (40, 420), (320, 86))
    g.connect(load, "VIDEO", parts, "video")
    scale = g.add("ImageScale", (40, 560), (320, 130), upscale_method="area", width=WIDTH, height=HEIGHT,
                  crop="disabled")
    g.connect(parts, "images", scale, "image")
    vflow = g.add("SurgSoraVideoFlow", (420, 40), (340, 200), method="dis", raft_weights="none", start=6,
                  num_frames=14, stride=1)
    g.connect(scale, "IMAGE", vflow, "frames")
    seg, depth = _frame_and_perception(g, (vflow, "first_frame"), x=820)
    _save_video(g, vflow, "clip", (420, 300), "SurgSora/reference_clip")
    _save_video(g, vflow, "flow_colours", (420, 760), "SurgSora/gt_flow")
    _generate(g, (vflow, "first_frame"), seg, depth, (vflow, "flow"), x=1580, prefix="SurgSora/gt_flow_video")
    return g


NOTE_MOFA = """Trajectory-controlled video from released weights: MOFA-Video-Traj's ControlNet on SVD-xt, run exactly as published (no SurgSora adapter, no SAM, no depth).
1. Load your first frame; it is resized to 448x256 (multiples of 64, crop disabled).
2. Draw trajectories in the editor (click to start, click/drag to add points, double-click to end).
3. Models: models/checkpoints/svd_xt.safetensors, models/surgsora/mofa_traj_controlnet.safetensors (MOFA-Video-Traj ckpts/controlnet/diffusion_pytorch_model.safetensors, or the whole controlnet folder) and models/surgsora/ckpt_iter_42000.pth.tar (MOFA's CMP decoder; "analytic" needs none).
4. Queue. MOFA fixes added_time_ids at [6, 128, 0.02], so the sampler's fps and motion bucket are not used."""


def mofa_trajectory_to_video(info: dict) -> Graph:
    g = Graph(info)
    g.add("Note", (40, -290), (700, 230), text=NOTE_MOFA)
    load = g.add("LoadImage", (40, 40), (320, 330), image=FRAME_FILE)
    scale = g.add("ImageScale", (40, 420), (320, 130), upscale_method="area", width=WIDTH, height=HEIGHT,
                  crop="disabled")
    g.connect(load, "IMAGE", scale, "image")
    traj = g.add("SurgSoraTrajectories", (400, 40), (460, 740), tracks=_example_tracks(), frames=MOFA_FRAMES)
    g.connect(scale, "IMAGE", traj, "image")
    # (the Missing Models dialog lists the CMP file with its source and folder; its download button is for
    # .safetensors only, so users fetch this one by hand, or pick "analytic")
    decoder = g.add("SurgSoraLoadTrajectoryDecoder", (900, 40), (320, 106), decoder=CMP_FILE, models=(CMP_FILE,))
    flow = g.add("SurgSoraTracksToFlow", (900, 190), (320, 106))
    g.connect(decoder, "decoder", flow, "decoder")
    g.connect(traj, "tracks", flow, "tracks")
    g.connect(scale, "IMAGE", flow, "image")
    preview = g.add("SurgSoraMotionPreview", (900, 340), (320, 86))
    g.connect(scale, "IMAGE", preview, "image")
    g.connect(flow, "flow", preview, "flow")
    g.connect(traj, "tracks", preview, "tracks")
    _save_video(g, preview, "video", (900, 470), "SurgSora/motion_preview")
    x = 1280
    ad = g.add("SurgSoraLoadAdapter", (x, 40), (320, 106), title="Load MOFA-Video-Traj ControlNet",
               adapter_name=MOFA_FILE, models=(MOFA_FILE,))
    dsi = g.add("SurgSoraDSIEncode", (x, 190), (320, 106), title="MOFA condition encoder (frame 0)")
    g.connect(ad, "adapter", dsi, "adapter")
    g.connect(scale, "IMAGE", dsi, "image")
    fuse = g.add("SurgSoraDFMFuse", (x, 340), (320, 86), title="Warp by the flow")
    g.connect(ad, "adapter", fuse, "adapter")
    g.connect(dsi, "dsi_features", fuse, "dsi_features")
    g.connect(flow, "flow", fuse, "flow")
    svd = g.add("SurgSoraLoadSVD", (x, 470), (320, 106), ckpt_name=SVD_FILE, models=(SVD_FILE,))
    sampler = g.add("SurgSoraSampler", (x + 360, 40), (320, 360), seed=42)
    g.connect(svd, "svd", sampler, "svd")
    g.connect(scale, "IMAGE", sampler, "image")
    g.connect(ad, "adapter", sampler, "adapter")
    g.connect(fuse, "conditions", sampler, "conditions")
    dec = g.add("SurgSoraDecode", (x + 360, 450), (320, 82))
    g.connect(svd, "svd", dec, "svd")
    g.connect(sampler, "latent", dec, "latent")
    _save_video(g, dec, "frames", (x + 720, 40), "SurgSora/mofa_video")
    g.group("Frame", (20, -30, 360, 620), "#3f789e")
    g.group("Trajectory Controller (MOFA's CMP decoder)", (380, -30, 880, 870), "#b58b2a")
    g.group("MOFA-Video-Traj ControlNet + Stable Video Diffusion XT", (1260, -30, 1420, 640), "#a1309b")
    return g


NOTE_TTM = """Trajectory-controlled video with only Stable Video Diffusion (no adapter, no training): dual-clock sampling after Time-to-Move.
The trajectories become a crude warped animation (occlusion-aware, holes filled from the background) and a mask of what moves. Sampling starts from the animation noised to t_weak; inside the mask the video follows it until t_strong, then SVD denoises freely and makes it realistic.
Models: models/checkpoints/svd_xt.safetensors only. TTM's SVD settings: 50 steps, t_weak 16/50 = 0.32, t_strong 21/50 = 0.42, motion bucket 17, 21 frames. Later t_strong = closer to the drawn motion, earlier = more freedom."""


def ttm_trajectory_to_video(info: dict) -> Graph:
    g = Graph(info)
    g.add("Note", (40, -290), (700, 230), text=NOTE_TTM)
    load = g.add("LoadImage", (40, 40), (320, 330), image=FRAME_FILE)
    scale = g.add("ImageScale", (40, 420), (320, 130), upscale_method="area", width=WIDTH, height=HEIGHT,
                  crop="disabled")
    g.connect(load, "IMAGE", scale, "image")
    traj = g.add("SurgSoraTrajectories", (400, 40), (460, 740), tracks=_example_tracks(), frames=FRAMES)
    g.connect(scale, "IMAGE", traj, "image")
    decoder = g.add("SurgSoraLoadTrajectoryDecoder", (900, 40), (320, 106), decoder="analytic")
    flow = g.add("SurgSoraTracksToFlow", (900, 190), (320, 106))
    g.connect(decoder, "decoder", flow, "decoder")
    g.connect(traj, "tracks", flow, "tracks")
    g.connect(scale, "IMAGE", flow, "image")
    signal = g.add("SurgSoraMotionSignal", (900, 340), (320, 106))
    g.connect(scale, "IMAGE", signal, "image")
    g.connect(flow, "flow", signal, "flow")
    _save_video(g, signal, "motion_signal", (900, 500), "SurgSora/motion_signal")
    x = 1280
    svd = g.add("SurgSoraLoadSVD", (x, 40), (320, 106), ckpt_name=SVD_FILE, models=(SVD_FILE,))
    sampler = g.add("SurgSoraSampler", (x, 190), (320, 420), steps=50, motion_bucket_id=17, seed=42, t_weak=0.32,
                    t_strong=0.42)
    g.connect(svd, "svd", sampler, "svd")
    g.connect(scale, "IMAGE", sampler, "image")
    g.connect(signal, "motion_signal", sampler, "motion_signal")
    g.connect(signal, "motion_mask", sampler, "motion_mask")
    dec = g.add("SurgSoraDecode", (x, 650), (320, 82))
    g.connect(svd, "svd", dec, "svd")
    g.connect(sampler, "latent", dec, "latent")
    _save_video(g, dec, "frames", (x + 360, 40), "SurgSora/ttm_video")
    g.group("Frame", (20, -30, 360, 620), "#3f789e")
    g.group("Trajectory Controller -> motion signal", (380, -30, 880, 870), "#b58b2a")
    g.group("Stable Video Diffusion, dual-clock sampling", (1260, -30, 760, 800), "#a1309b")
    return g


def _example_tracks() -> str:
    data = json.loads(EXAMPLE_TRACKS.read_text())
    return json.dumps({"width": data["width"], "height": data["height"], "tracks": data["tracks"]})


WORKFLOWS = {
    "surgsora_trajectory_to_video": trajectory_to_video,
    "surgsora_motion_preview": motion_preview,
    "surgsora_flow_from_video": flow_from_video,
    "surgsora_mofa_trajectory_to_video": mofa_trajectory_to_video,
    "surgsora_ttm_trajectory_to_video": ttm_trajectory_to_video,
}


def _dump(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"


def build_all(info: dict | None = None) -> dict[Path, str]:
    """Every file this script writes: {path: text}."""
    info = info or object_info()
    files = {}
    for name, build in WORKFLOWS.items():
        ui = build(info).ui()
        files[HERE / f"{name}.json"] = _dump(ui)
        files[API_DIR / f"{name}.json"] = _dump(ui_to_api(ui, info))
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare with the files on disk")
    args = ap.parse_args(argv)
    files = build_all()
    stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"out of date: {p.relative_to(REPO)}")
        return 1 if stale else 0
    for p, text in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        print(f"wrote {p.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
