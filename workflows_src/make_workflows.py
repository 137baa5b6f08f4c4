"""Build the shipped workflows (UI format), their API twins and their template thumbnails, or check that the
files on disk are current.

    python workflows_src/make_workflows.py           # write workflows/*.json + *.jpg and workflows_api/*.json
    python workflows_src/make_workflows.py --check   # exit 1 if any file differs from what would be written

``workflows/`` is the folder ComfyUI serves as this pack's templates, so it holds only the UI workflows and
their thumbnails. ComfyUI v0.8.0 (``app/custom_node_manager.py``) lists ``workflows/*.json`` at
``/workflow_templates`` and serves the whole folder, subfolders included, at ``/api/workflow_templates/<pack>/``;
its frontend (1.35.9, ``useTemplateWorkflows`` / ``workflowTemplatesStore``) shows a custom node's template with
the file name as its title, the file name with ``-``/``_`` read as spaces as its description, and
``<file name>.jpg`` as its thumbnail (JPEG only). So each file is named by its human title, its one-line
description opens its instructions note (and its title names that note), and the generator draws a JPEG
thumbnail from frame 6 of the EndoVis 2017 clip in ``demo/``; ``--check`` compares thumbnails by what they show
(:func:`same_picture`), not by their bytes, so it holds across the OpenCV, NumPy and Pillow versions allowed.
The API twins live in ``workflows_api/``, this script and the core-node snapshot here, in ``workflows_src/``:
nothing but workflows is served.

Each workflow is described once, below, as nodes (widget values by input name) and links (by output
and input name). :class:`Graph` lays it out in the LiteGraph format the ComfyUI frontend saves
(``version`` 0.4: socket inputs first, then one input per widget, ``widgets_values`` in widget order,
the seed's "control after generate" value and the upload button's value included). :func:`ui_to_api`
then derives the ``/prompt`` twin from the UI file alone, following the frontend's ``graphToPrompt``:
widget values by position, links as ``[node_id, output_slot]``, notes and muted/bypassed nodes left out.
The integration test loads every UI file in the real frontend and checks that its own ``graphToPrompt``
gives exactly the API twin, that the stored view shows the whole note, and that no node overlaps another.

Layout: nodes sit in columns inside their group (:func:`lay_group`); a node is as tall as the frontend draws
it (:func:`node_height`: LiteGraph's ``computeSize`` for sockets and widgets), groups never overlap, and the
stored view (``extra.ds``) puts the note at the top left at a zoom where the frontend still draws text.

Input specs come from our node classes (imported in-process) and, for the core nodes used, from
``core_object_info.json`` (ComfyUI v0.8.0 ``/object_info`` entries without their descriptions,
machine-specific file lists emptied).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from a checkout: our nodes and comfy_inputs live at the repo root
    sys.path.append(str(REPO))

from comfy_inputs import CLIP_FILE, EXAMPLE_INPUTS, FRAME_FILE  # noqa: E402 - what the pack puts in input/

TEMPLATES_DIR = REPO / "workflows"  # served by ComfyUI as the pack's templates
API_DIR = REPO / "workflows_api"
CORE_SPEC = HERE / "core_object_info.json"
EXAMPLE_TRACKS = REPO / "demo" / "tracks_endovis.json"
ENDOVIS_CLIP = EXAMPLE_INPUTS[CLIP_FILE]  # the EndoVis 2017 clip at 640x360 in demo/ (its README: provenance)

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")

# Shared widget values of the shipped workflows (see README: match the adapter's training setup).
FRAME_INDEX = 6  # FRAME_FILE is this frame of the EndoVis clip
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
}
# Wan: the Comfy-Org repackaged files ComfyUI's own Wan templates load (what users already have)
WAN22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/"
WAN21 = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/"
WAN_HIGH = "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
WAN_LOW = "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"
WAN_5B, WAN_TEXT = "wan2.2_ti2v_5B_fp16.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN21_VAE, WAN22_VAE = "wan_2.1_vae.safetensors", "wan2.2_vae.safetensors"
# Cosmos-H-Surgical v0.2.0 Predict (OpenMDW-1.1) from NVIDIA's Hub repository; it samples Wan 2.1 VAE latents
COSMOS_FILE = "cosmos-h-surgical-predict_model_ema_bf16.pt"
COSMOS_URL = "https://huggingface.co/nvidia/Cosmos-H-Surgical/resolve/main/openmdw-1.1/predict/" + COSMOS_FILE
# Cosmos-Reason1-7B (nvidia/Cosmos-Reason1-7B, a Qwen2.5-VL-7B) as one file in ComfyUI's text_encoders: no single-file
# release exists, so it has no download entry; the note says how to make it
REASON1_FILE = "cosmos_reason1_7b.safetensors"
MODEL_SOURCES.update({
    COSMOS_FILE: (COSMOS_URL, "diffusion_models"),
    WAN_HIGH: (WAN22 + "diffusion_models/" + WAN_HIGH, "diffusion_models"),
    WAN_LOW: (WAN22 + "diffusion_models/" + WAN_LOW, "diffusion_models"),
    WAN_5B: (WAN22 + "diffusion_models/" + WAN_5B, "diffusion_models"),
    WAN_TEXT: (WAN21 + "text_encoders/" + WAN_TEXT, "text_encoders"),
    WAN21_VAE: (WAN22 + "vae/" + WAN21_VAE, "vae"),
    WAN22_VAE: (WAN22 + "vae/" + WAN22_VAE, "vae"),
})

# LiteGraph geometry of the ComfyUI frontend (1.35.9): a node's title bar is drawn above its pos, a group's
# title is font_size * 1.4 tall, and below a zoom of about 0.57 (8 px / 14 px text) nodes are drawn without text.
NODE_TITLE = 30
GROUP_FONT = 24
GROUP_TITLE = math.ceil(GROUP_FONT * 1.4)
PAD, ROW_GAP, COL_GAP, GROUP_GAP = 20, 30, 40, 60
NODE_WIDTH = 340
VIEW_SCALE = 0.8
VIEW_MARGIN = (80, 100)  # screen pixels left of and above the note: clear of the side bar, menu and tabs
# The stored view must show the whole note in this viewport (screen pixels, a small laptop window's canvas).
MIN_VIEWPORT = (1280, 720)


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


# Nodes whose drawing is taller or wider than their sockets and widgets: the image preview under Load Image,
# the clip's preview under Load Video (at 340 px wide, the frontend asks 277 px for the 16:9 example clip),
# the trajectory editor, the previews of Preview Image and Save Video, a long combo label.
NODE_SIZES = {"LoadImage": (NODE_WIDTH, 360), "LoadVideo": (NODE_WIDTH, 280), "SurgSoraTrajectories": (460, 740),
              "PreviewImage": (NODE_WIDTH, 280), "SaveVideo": (NODE_WIDTH, 320),
              "ImageOnlyCheckpointLoader": (400, None),
              "CLIPTextEncode": (NODE_WIDTH, 120),  # the frontend draws a multiline text box at least 88 px tall
              "SurgSoraCosmosTextEncode": (NODE_WIDTH, 120),
              "UNETLoader": (400, None), "CLIPLoader": (400, None)}


def node_height(info: dict) -> int:
    """The body height the frontend computes for a node (LiteGraph ``computeSize``): 20 px per row of sockets
    (inputs beside outputs) + 6, and 24 px per widget + 8 when there are widgets."""
    sockets = sum(1 for _, spec, _ in ordered_inputs(info) if not is_widget(spec))
    rows = max(sockets, len(info["output"]))
    widgets = len(widget_slots(info))
    return rows * 20 + 6 + (widgets * 24 + 8 if widgets else 0)


# ============================================================================ UI graph builder

class Node:
    def __init__(self, graph, node_id, type_, pos, size, title, widgets):
        self.graph, self.id, self.type, self.pos, self.size, self.title = graph, node_id, type_, pos, size, title
        self.widgets = widgets
        self.links_in: dict[str, int] = {}
        self.links_out: dict[int, list[int]] = {}

    def rect(self) -> tuple[float, float, float, float]:
        """(x, y, w, h) as drawn, title bar included."""
        return self.pos[0], self.pos[1] - NODE_TITLE, self.size[0], self.size[1] + NODE_TITLE


class Graph:
    def __init__(self, info: dict):
        self.info = info
        self.nodes: list[Node] = []
        self.links: list[list] = []
        self.groups: list[dict] = []
        self.note: Node | None = None

    def add(self, type_: str, pos=None, size=None, title: str | None = None, models=(), **widgets) -> Node:
        """A node; without ``pos`` it is placed later by :func:`lay_group`. ``size`` defaults to what the
        frontend draws (:data:`NODE_SIZES`, :func:`node_height`)."""
        if type_ not in self.info and type_ not in VIRTUAL_NODES:
            raise KeyError(f"unknown node type {type_}")
        if type_ in self.info:
            names = {n for n, spec, _ in ordered_inputs(self.info[type_]) if is_widget(spec)}
            unknown = set(widgets) - names - {"control_after_generate"}
            if unknown:
                raise KeyError(f"{type_} has no widgets {sorted(unknown)}")
            if size is None:
                w, h = NODE_SIZES.get(type_, (NODE_WIDTH, None))
                size = (w, h or node_height(self.info[type_]))
        node = Node(self, len(self.nodes) + 1, type_, list(pos) if pos is not None else None,
                    list(size) if size is not None else None, title, widgets)
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
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [round(v) for v in bounding],
                            "color": color, "font_size": GROUP_FONT, "flags": {}})

    def view(self) -> dict:
        """The stored view: the note's top left (title bar included) at VIEW_MARGIN on screen, at VIEW_SCALE."""
        x, y, _, _ = self.note.rect()
        return {"scale": VIEW_SCALE, "offset": [round(VIEW_MARGIN[0] / VIEW_SCALE - x, 2),
                                                round(VIEW_MARGIN[1] / VIEW_SCALE - y, 2)]}

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
        unplaced = [f"{n.id} {n.type}" for n in self.nodes if n.pos is None]
        if unplaced:
            raise ValueError(f"nodes never placed: {unplaced}")
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
                "groups": self.groups, "config": {}, "extra": {"ds": self.view()}, "version": 0.4}


@dataclass
class Box:
    x: float
    y: float
    w: float
    h: float

    @property
    def right(self) -> float:
        return self.x + self.w

    @property
    def bottom(self) -> float:
        return self.y + self.h


def lay_group(g: Graph, title: str, color: str, x: float, y: float, columns: list[list[Node]]) -> Box:
    """Place ``columns`` of nodes (top to bottom, left to right) inside a new group whose top left is (x, y);
    returns the group's box. Nodes keep their sizes; a column is as wide as its widest node."""
    cx = x + PAD
    top = y + GROUP_TITLE + PAD  # top of the first node's title bar
    bottom = top
    for column in columns:
        cy = top
        for node in column:
            if node.pos is not None:
                raise ValueError(f"node {node.id} {node.type} placed twice")
            node.pos = [cx, cy + NODE_TITLE]
            cy += NODE_TITLE + node.size[1] + ROW_GAP
        bottom = max(bottom, cy - ROW_GAP)
        cx += max(n.size[0] for n in column) + COL_GAP
    box = Box(x, y, cx - COL_GAP + PAD - x, bottom + PAD - y)
    g.group(title, (box.x, box.y, box.w, box.h), color)
    return box


NOTE_WIDTH = 760
# The MarkdownNote's text in graph units (frontend 1.35.9: 10 px sans-serif, 12 px lines, paragraphs and lists
# 10 px apart, list items indented 40 px, 10 px padding, the widget 22 px shorter than the node); characters
# are taken wider than they are and a spare line is added, so the text fits with other fonts too.
NOTE_CHAR, NOTE_LINE, NOTE_BLOCK_GAP, NOTE_INDENT, NOTE_PAD, NOTE_SPARE = 5.6, 12, 10, 40, 10, 24


def note_height(text: str, width: int = NOTE_WIDTH) -> int:
    """The height a MarkdownNote needs to show ``text`` (paragraphs and numbered lists) without scrolling."""
    import re

    lines, blocks = 0, 0
    for block in text.split("\n\n"):
        blocks += 1
        for line in block.split("\n"):
            item = re.match(r"\d+\. ", line)
            plain = re.sub(r"[*`]", "", line[item.end():] if item else line)
            per_line = (width - 2 * NOTE_PAD - (NOTE_INDENT if item else 0)) / NOTE_CHAR
            lines += max(1, math.ceil(len(plain) / per_line))
    return math.ceil(NOTE_LINE * lines + NOTE_BLOCK_GAP * (blocks - 1) + 2 * NOTE_PAD + NOTE_SPARE)


def add_note(g: Graph, t: "Template", body: str) -> Box:
    """The instructions note at the graph's top left: the template's title (as the note's title and in bold) and
    description, then ``body`` (markdown: paragraphs, numbered steps). Returns its box, title bar included."""
    text = f"**{t.title}**: {t.description}\n\n{body}"
    height = note_height(text)
    g.note = g.add("MarkdownNote", (0, NODE_TITLE), (NOTE_WIDTH, height), title=t.title, text=text)
    return Box(0, 0, NOTE_WIDTH, height + NODE_TITLE)


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


# ============================================================================ layout checks

def _overlap(a, b) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def _inside(inner, outer) -> bool:
    ix, iy, iw, ih = inner
    ox, oy, ow, oh = outer
    return ox <= ix and oy <= iy and ix + iw <= ox + ow and iy + ih <= oy + oh


def layout_problems(ui: dict) -> list[str]:
    """What overlaps in a UI workflow: nodes (title bar included) on nodes, groups on groups, a node across a
    group's border or on its title, a node in two groups; and whether the stored view shows the whole note
    at a zoom where the frontend draws text."""
    problems = []
    rects = {n["id"]: (n["pos"][0], n["pos"][1] - NODE_TITLE, n["size"][0], n["size"][1] + NODE_TITLE)
             for n in ui["nodes"]}
    names = {n["id"]: f"{n['id']} {n.get('title') or n['type']}" for n in ui["nodes"]}
    ids = sorted(rects)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            if _overlap(rects[a], rects[b]):
                problems.append(f"nodes {names[a]} and {names[b]} overlap")
    groups = [(gr["title"], tuple(gr["bounding"]), gr.get("font_size", GROUP_FONT)) for gr in ui["groups"]]
    for i, (ta, ba, _) in enumerate(groups):
        for tb, bb, _ in groups[i + 1:]:
            if _overlap(ba, bb):
                problems.append(f"groups {ta!r} and {tb!r} overlap")
    for nid, r in rects.items():
        inside = []
        for title, (x, y, w, h), font in groups:
            body = (x, y + math.ceil(font * 1.4), w, h - math.ceil(font * 1.4))
            if _inside(r, body):
                inside.append(title)
            elif _overlap(r, (x, y, w, h)):
                problems.append(f"node {names[nid]} crosses the border or title of group {title!r}")
        if len(inside) > 1:
            problems.append(f"node {names[nid]} is in groups {inside}")
    ds = ui.get("extra", {}).get("ds")
    notes = [n for n in ui["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    if not ds or not notes:
        problems.append("no stored view or no note")
        return problems
    if ds["scale"] < 0.6:
        problems.append(f"stored zoom {ds['scale']} is below the frontend's low-quality threshold (text not drawn)")
    x, y, w, h = rects[notes[0]["id"]]
    sx, sy = (x + ds["offset"][0]) * ds["scale"], (y + ds["offset"][1]) * ds["scale"]
    sw, sh = w * ds["scale"], h * ds["scale"]
    if sx < VIEW_MARGIN[0] - 1 or sy < VIEW_MARGIN[1] - 1 or sx + sw > MIN_VIEWPORT[0] or sy + sh > MIN_VIEWPORT[1]:
        problems.append(f"the stored view shows the note at ({sx:.0f}, {sy:.0f}, {sw:.0f} x {sh:.0f}), not inside "
                        f"{VIEW_MARGIN} .. {MIN_VIEWPORT}")
    return problems


# ============================================================================ the workflows

FRAME_COLOUR, PERCEPTION_COLOUR, TRAJECTORY_COLOUR, GENERATION_COLOUR = "#3f789e", "#8A8", "#b58b2a", "#a1309b"
STEPS_DRAW = "Draw trajectories in the editor: click to start a track, click or drag to add points, double-click " \
             "to end it. A one-point track keeps that spot still."
STEP_FRAME = "Load your first frame (here: frame 6 of the EndoVis 2017 clip). It is resized to 448x256 (multiples " \
             "of 64, crop disabled so the drawn tracks stay aligned)."
PREVIEWS = "The Preview Image nodes show the drawn tracks, the SAM masks and the depth of the frame."


def _frame(g: Graph, width: int = WIDTH, height: int = HEIGHT):
    load = g.add("LoadImage", image=FRAME_FILE)
    scale = g.add("ImageScale", upscale_method="area", width=width, height=height, crop="disabled")
    g.connect(load, "IMAGE", scale, "image")
    return load, scale


def _preview(g: Graph, src: Node, output: str, title: str) -> Node:
    p = g.add("PreviewImage", title=title)
    g.connect(src, output, p, "images")
    return p


def _video(g: Graph, src: Node, output: str, prefix: str, fps: int = FPS) -> list[Node]:
    video = g.add("CreateVideo", fps=float(fps))
    g.connect(src, output, video, "images")
    save = g.add("SaveVideo", filename_prefix=prefix)
    g.connect(video, "VIDEO", save, "video")
    return [video, save]


def _trajectories(g: Graph, scale: Node, frames: int = FRAMES) -> tuple[Node, Node]:
    traj = g.add("SurgSoraTrajectories", tracks=_example_tracks(), frames=frames)
    g.connect(scale, "IMAGE", traj, "image")
    return traj, _preview(g, traj, "preview", "Preview: tracks")


def _flow(g: Graph, scale: Node, traj: Node, decoder_file: str, masks: Node | None = None) -> tuple[Node, Node]:
    decoder = g.add("SurgSoraLoadTrajectoryDecoder", decoder=decoder_file)
    flow = g.add("SurgSoraTracksToFlow")
    g.connect(decoder, "decoder", flow, "decoder")
    g.connect(traj, "tracks", flow, "tracks")
    g.connect(scale, "IMAGE", flow, "image")
    if masks is not None:
        g.connect(masks, "masks", flow, "region_masks")
    return decoder, flow


def _motion_preview(g: Graph, scale: Node, flow: Node, traj: Node, masks: Node | None = None,
                    depth: Node | None = None) -> Node:
    """The motion signal the trajectories ask for; with SAM's masks and the depth, the same picture as
    ``python -m surgsora preview --masks --depth`` (who is in front, what moves as one region)."""
    preview = g.add("SurgSoraMotionPreview")
    g.connect(scale, "IMAGE", preview, "image")
    g.connect(flow, "flow", preview, "flow")
    g.connect(traj, "tracks", preview, "tracks")
    if masks is not None:
        g.connect(masks, "masks", preview, "region_masks")
    if depth is not None:
        g.connect(depth, "depth", preview, "depth")
    return preview


def _perception(g: Graph, image: tuple[Node, str], tracks: Node | None = None):
    """SAM features (+ masks prompted at the track starts) and depth of the working frame, with previews:
    returns (columns for lay_group, seg, masks or None, depth)."""
    sam = g.add("SurgSoraLoadSAM", model_name=SAM_FILE)
    seg = g.add("SurgSoraSAMSegment")
    g.connect(sam, "sam", seg, "sam")
    g.connect(image[0], image[1], seg, "image")
    masks = None
    if tracks is not None:
        masks = g.add("SurgSoraSAMMasks")
        g.connect(sam, "sam", masks, "sam")
        g.connect(image[0], image[1], masks, "image")
        g.connect(tracks, "tracks", masks, "tracks")
    dm = g.add("SurgSoraLoadDepthAnything", model_name=DEPTH_FILE)
    depth = g.add("SurgSoraDepth")
    g.connect(dm, "depth_model", depth, "depth_model")
    g.connect(image[0], image[1], depth, "image")
    previews = ([_preview(g, masks, "preview", "Preview: SAM masks")] if masks is not None else []) + \
        [_preview(g, depth, "depth_colour", "Preview: depth")]
    columns = [[sam, dm], [seg] + ([masks] if masks is not None else []) + [depth], previews]
    return columns, seg, masks, depth


def _conditions(g: Graph, image: tuple[Node, str], seg: Node | None, depth: Node | None, flow: tuple[Node, str],
                adapter_name: str = ADAPTER, mofa: bool = False) -> tuple[Node, Node, Node]:
    """Load Adapter -> DSI Encode -> DFM Warp + MSF Fuse: returns (adapter, dsi, fuse)."""
    if mofa:
        ad = g.add("SurgSoraLoadAdapter", title="Load MOFA-Video-Traj ControlNet", adapter_name=adapter_name,
                   models=(MOFA_FILE,))
        dsi = g.add("SurgSoraDSIEncode", title="MOFA condition encoder (frame 0)")
        fuse = g.add("SurgSoraDFMFuse", title="Warp by the flow")
    else:
        ad = g.add("SurgSoraLoadAdapter", adapter_name=adapter_name)
        dsi = g.add("SurgSoraDSIEncode")
        fuse = g.add("SurgSoraDFMFuse")
    g.connect(ad, "adapter", dsi, "adapter")
    g.connect(image[0], image[1], dsi, "image")
    if depth is not None:
        g.connect(depth, "depth", dsi, "depth")
    if seg is not None:
        g.connect(seg, "seg_features", dsi, "seg_features")
    g.connect(ad, "adapter", fuse, "adapter")
    g.connect(dsi, "dsi_features", fuse, "dsi_features")
    g.connect(flow[0], flow[1], fuse, "flow")
    return ad, dsi, fuse


def _surgsora_sampler(g: Graph, image: tuple[Node, str], ad: Node | None, fuse: Node | None, prefix: str,
                      svd_models=(), **sampler) -> list[list[Node]]:
    """Load SVD -> SurgSora SVD Sampler -> Decode -> video: returns columns for lay_group."""
    svd = g.add("SurgSoraLoadSVD", ckpt_name=SVD_FILE, models=svd_models)
    s = g.add("SurgSoraSampler", seed=42, **sampler)
    g.connect(svd, "svd", s, "svd")
    g.connect(image[0], image[1], s, "image")
    if ad is not None:
        g.connect(ad, "adapter", s, "adapter")
        g.connect(fuse, "conditions", s, "conditions")
    dec = g.add("SurgSoraDecode")
    g.connect(svd, "svd", dec, "svd")
    g.connect(s, "latent", dec, "latent")
    return [[svd, s], [dec] + _video(g, dec, "frames", prefix)]


NOTE_FULL = f"""1. {STEP_FRAME}
2. {STEPS_DRAW}
3. Models: models/sams, models/depthanything, models/surgsora (adapter folder + CMP), models/checkpoints (svd_xt.safetensors). Use the SAM and Depth Anything files the adapter was trained with.
4. Queue. Change sampler settings freely: SAM, depth and the conditions are cached and not recomputed. {PREVIEWS}"""


def _drawn_front(g: Graph, t: Template, note_text: str) -> tuple[Node, tuple[Node, Node, Node], float, float]:
    """What the workflows that generate from drawn trajectories with the SurgSora adapter share: the note, the
    frame, the trajectories, SAM features + masks and depth, the CMP flow with its motion preview video and the
    adapter's conditions, with the Frame, Trajectory Controller and Perception groups laid out. Returns the
    resized frame, (adapter, DSI encode, DFM fuse) and where the next group goes (top y, left x)."""
    note = add_note(g, t, note_text)
    load, scale = _frame(g)
    traj, tprev = _trajectories(g, scale)
    pcols, seg, masks, depth = _perception(g, (scale, "IMAGE"), tracks=traj)
    decoder, flow = _flow(g, scale, traj, CMP_FILE, masks)
    mprev = _motion_preview(g, scale, flow, traj, masks, depth)
    mvideo = _video(g, mprev, "video", "SurgSora/motion_preview")
    conditions = _conditions(g, (scale, "IMAGE"), seg, depth, (flow, "flow"))

    y = note.bottom + GROUP_GAP
    fr = lay_group(g, "Frame", FRAME_COLOUR, 0, y, [[load, scale]])
    tr = lay_group(g, "Trajectory Controller", TRAJECTORY_COLOUR, fr.right + GROUP_GAP, y,
                   [[traj], [tprev, decoder, flow], [mprev] + mvideo])
    pe = lay_group(g, "Perception: SAM + Depth Anything V2", PERCEPTION_COLOUR, tr.x, tr.bottom + GROUP_GAP, pcols)
    return scale, conditions, y, max(tr.right, pe.right) + GROUP_GAP


def trajectory_to_video(info: dict, t: Template) -> Graph:
    g = Graph(info)
    scale, (ad, dsi, fuse), y, x = _drawn_front(g, t, NOTE_FULL)
    gen = _surgsora_sampler(g, (scale, "IMAGE"), ad, fuse, "SurgSora/video")
    lay_group(g, "SurgSora adapter + Stable Video Diffusion", GENERATION_COLOUR, x, y, [[ad, dsi, fuse]] + gen)
    return g


NOTE_PREVIEW = f"""The trajectories are decoded into dense flow by the analytic decoder and the frame is pushed along it.

1. {STEP_FRAME}
2. {STEPS_DRAW}
3. Queue, and look at the motion preview and flow videos (Preview: tracks shows the drawn tracks on the frame)."""


def motion_preview(info: dict, t: Template) -> Graph:
    g = Graph(info)
    note = add_note(g, t, NOTE_PREVIEW)
    load, scale = _frame(g)
    traj, tprev = _trajectories(g, scale)
    decoder, flow = _flow(g, scale, traj, "analytic")
    mprev = _motion_preview(g, scale, flow, traj)
    videos = [_video(g, mprev, "video", "SurgSora/motion_preview"), _video(g, flow, "flow_colours", "SurgSora/flow")]
    y = note.bottom + GROUP_GAP
    fr = lay_group(g, "Frame", FRAME_COLOUR, 0, y, [[load, scale]])
    tr = lay_group(g, "Trajectory Controller (analytic decoder, no weights)", TRAJECTORY_COLOUR, fr.right + GROUP_GAP,
                   y, [[traj], [tprev, decoder, flow, mprev]])
    lay_group(g, "Videos: motion preview, flow", GENERATION_COLOUR, tr.right + GROUP_GAP, y, videos)
    return g


NOTE_GT = """Flow frame 0 -> t is estimated from a real clip (OpenCV DIS, chained) instead of decoded from trajectories, and conditions the generation of that clip from its first frame. Compare the generated video with the reference clip.

Models: models/sams, models/depthanything, models/surgsora (adapter folder), models/checkpoints (svd_xt.safetensors). Preview: depth shows the depth of the first frame."""


def flow_from_video(info: dict, t: Template) -> Graph:
    g = Graph(info)
    note = add_note(g, t, NOTE_GT)
    load = g.add("LoadVideo", file=CLIP_FILE)
    parts = g.add("GetVideoComponents")
    g.connect(load, "VIDEO", parts, "video")
    scale = g.add("ImageScale", upscale_method="area", width=WIDTH, height=HEIGHT, crop="disabled")
    g.connect(parts, "images", scale, "image")
    vflow = g.add("SurgSoraVideoFlow", method="dis", raft_weights="none", start=6, num_frames=14, stride=1)
    g.connect(scale, "IMAGE", vflow, "frames")
    pcols, seg, _, depth = _perception(g, (vflow, "first_frame"))
    clip = _video(g, vflow, "clip", "SurgSora/reference_clip")
    gt = _video(g, vflow, "flow_colours", "SurgSora/gt_flow")
    ad, dsi, fuse = _conditions(g, (vflow, "first_frame"), seg, depth, (vflow, "flow"))
    gen = _surgsora_sampler(g, (vflow, "first_frame"), ad, fuse, "SurgSora/gt_flow_video")

    y = note.bottom + GROUP_GAP
    fr = lay_group(g, "Clip", FRAME_COLOUR, 0, y, [[load, parts, scale]])
    fl = lay_group(g, "Ground-truth flow (OpenCV DIS)", TRAJECTORY_COLOUR, fr.right + GROUP_GAP, y,
                   [[vflow], clip, gt])
    pe = lay_group(g, "Perception: SAM + Depth Anything V2", PERCEPTION_COLOUR, fl.x, fl.bottom + GROUP_GAP, pcols)
    lay_group(g, "SurgSora adapter + Stable Video Diffusion", GENERATION_COLOUR, max(fl.right, pe.right) + GROUP_GAP,
              y, [[ad, dsi, fuse]] + gen)
    return g


NOTE_MOFA = f"""No SurgSora adapter, no SAM, no depth.

1. {STEP_FRAME}
2. {STEPS_DRAW}
3. Models: models/checkpoints/svd_xt.safetensors, models/surgsora/mofa_traj_controlnet.safetensors (MOFA-Video-Traj ckpts/controlnet/diffusion_pytorch_model.safetensors, or the whole controlnet folder) and models/surgsora/ckpt_iter_42000.pth.tar (MOFA's CMP decoder; "analytic" needs none).
4. Queue. MOFA fixes added_time_ids at [6, 128, 0.02], so the sampler's fps and motion bucket are not used."""


def mofa_trajectory_to_video(info: dict, t: Template) -> Graph:
    g = Graph(info)
    note = add_note(g, t, NOTE_MOFA)
    load, scale = _frame(g)
    traj, tprev = _trajectories(g, scale, frames=MOFA_FRAMES)
    # (no download entry for the CMP file: the frontend's Missing Models dialog fetches .safetensors only)
    decoder, flow = _flow(g, scale, traj, CMP_FILE)
    mprev = _motion_preview(g, scale, flow, traj)
    mvideo = _video(g, mprev, "video", "SurgSora/motion_preview")
    ad, dsi, fuse = _conditions(g, (scale, "IMAGE"), None, None, (flow, "flow"), adapter_name=MOFA_FILE, mofa=True)
    gen = _surgsora_sampler(g, (scale, "IMAGE"), ad, fuse, "SurgSora/mofa_video", svd_models=(SVD_FILE,))
    y = note.bottom + GROUP_GAP
    fr = lay_group(g, "Frame", FRAME_COLOUR, 0, y, [[load, scale]])
    tr = lay_group(g, "Trajectory Controller (MOFA's CMP decoder)", TRAJECTORY_COLOUR, fr.right + GROUP_GAP, y,
                   [[traj], [tprev, decoder, flow], [mprev] + mvideo])
    lay_group(g, "MOFA-Video-Traj ControlNet + Stable Video Diffusion XT", GENERATION_COLOUR, tr.right + GROUP_GAP, y,
              [[ad, dsi, fuse]] + gen)
    return g


NOTE_TTM = """The trajectories become a crude warped animation (occlusion-aware, holes filled from the background) and a mask of what moves. Sampling starts from the animation noised to t_weak; inside the mask the video follows it until t_strong, then SVD denoises freely and makes it realistic.

Models: models/checkpoints/svd_xt.safetensors only. TTM's SVD settings: 50 steps, t_weak 16/50 = 0.32, t_strong 21/50 = 0.42, motion bucket 17, 21 frames. Later t_strong = closer to the drawn motion, earlier = more freedom."""


# Time-to-Move's SVD settings (fractions of the schedule: steps 16 and 21 of 50), motion bucket 17
TTM_STEPS, TTM_T_WEAK, TTM_T_STRONG, TTM_MOTION_BUCKET = 50, 0.32, 0.42, 17


def _signal_front(g: Graph, t: Template, note_text: str, width: int = WIDTH, height: int = HEIGHT,
                  frames: int = FRAMES, fps: int = FPS) -> tuple[Node, Node, float, float]:
    """What the dual-clock workflows share: the note, the frame, the trajectories, the analytic flow (SAM and
    depth are optional for the motion signal and left out) and the motion signal with its video, with the Frame
    and Trajectory Controller groups laid out. Returns the resized frame, the motion signal node and where the
    next group goes (top y, left x)."""
    note = add_note(g, t, note_text)
    load, scale = _frame(g, width, height)
    traj, tprev = _trajectories(g, scale, frames)
    decoder, flow = _flow(g, scale, traj, "analytic")
    signal = g.add("SurgSoraMotionSignal")
    g.connect(scale, "IMAGE", signal, "image")
    g.connect(flow, "flow", signal, "flow")
    svideo = _video(g, signal, "motion_signal", "SurgSora/motion_signal", fps)
    y = note.bottom + GROUP_GAP
    fr = lay_group(g, "Frame", FRAME_COLOUR, 0, y, [[load, scale]])
    tr = lay_group(g, "Trajectory Controller -> motion signal", TRAJECTORY_COLOUR, fr.right + GROUP_GAP, y,
                   [[traj], [tprev, decoder, flow], [signal] + svideo])
    return scale, signal, y, tr.right + GROUP_GAP


def ttm_trajectory_to_video(info: dict, t: Template) -> Graph:
    g = Graph(info)
    scale, signal, y, x = _signal_front(g, t, NOTE_TTM)
    gen = _surgsora_sampler(g, (scale, "IMAGE"), None, None, "SurgSora/ttm_video", svd_models=(SVD_FILE,),
                            steps=TTM_STEPS, motion_bucket_id=TTM_MOTION_BUCKET, t_weak=TTM_T_WEAK,
                            t_strong=TTM_T_STRONG)
    sampler_ = gen[0][1]
    g.connect(signal, "motion_signal", sampler_, "motion_signal")
    g.connect(signal, "motion_mask", sampler_, "motion_mask")
    lay_group(g, "Stable Video Diffusion, dual-clock sampling", GENERATION_COLOUR, x, y, gen)
    return g


def _core_svd(g: Graph, scale: Node, motion_bucket_id: int) -> tuple[Node, Node]:
    """ComfyUI's own SVD checkpoint and SurgSora SVD Conditioning of the scaled frame (the core templates)."""
    ckpt = g.add("ImageOnlyCheckpointLoader", ckpt_name=SVD_FILE, models=(SVD_FILE,))
    cond = g.add("SurgSoraSVDConditioning", width=WIDTH, height=HEIGHT, video_frames=FRAMES,
                 motion_bucket_id=motion_bucket_id, fps=FPS, augmentation_level=0.02, seed=42)
    g.connect(ckpt, "CLIP_VISION", cond, "clip_vision")
    g.connect(scale, "IMAGE", cond, "init_image")
    g.connect(ckpt, "VAE", cond, "vae")
    return ckpt, cond


def _core_decode(g: Graph, ckpt: Node, src: Node, output: str, prefix: str) -> tuple[Node, list[Node]]:
    """Core VAE Decode of a core sampler's latent, then the saved video."""
    dec = g.add("VAEDecode")
    g.connect(src, output, dec, "samples")
    g.connect(ckpt, "VAE", dec, "vae")
    return dec, _video(g, dec, "IMAGE", prefix)


NOTE_CORE = f"""1. {STEP_FRAME}
2. {STEPS_DRAW}
3. Models: models/checkpoints/svd_xt.safetensors (the full SVD-xt file: ComfyUI recognises SVD only from a full-size checkpoint), models/sams, models/depthanything, models/surgsora (adapter folder + CMP).
4. SurgSora SVD Conditioning encodes the frame the way the adapter was trained (core SVD_img2vid_Conditioning centre-crops it for CLIP); its size and frame count must match the trajectories'. Any core sampler, scheduler or model patch works with SurgSora Apply (SVD); strength 0 gives plain SVD. {PREVIEWS}"""


def core_ksampler(info: dict, t: Template) -> Graph:
    g = Graph(info)
    scale, (ad, dsi, fuse), y, x = _drawn_front(g, t, NOTE_CORE)
    ckpt, cond = _core_svd(g, scale, motion_bucket_id=127)
    g.connect(ad, "adapter", cond, "adapter")
    apply = g.add("SurgSoraApplySVD", strength=1.0, start_percent=0.0, end_percent=1.0)
    g.connect(cond, "positive", apply, "positive")
    g.connect(cond, "negative", apply, "negative")
    g.connect(ad, "adapter", apply, "adapter")
    g.connect(fuse, "conditions", apply, "conditions")
    guidance = g.add("VideoLinearCFGGuidance", min_cfg=1.0)
    g.connect(ckpt, "MODEL", guidance, "model")
    ks = g.add("KSampler", seed=42, steps=25, cfg=3.0, sampler_name="euler", scheduler="karras", denoise=1.0)
    g.connect(guidance, "MODEL", ks, "model")
    g.connect(apply, "positive", ks, "positive")
    g.connect(apply, "negative", ks, "negative")
    g.connect(cond, "latent", ks, "latent_image")
    dec, video = _core_decode(g, ckpt, ks, "LATENT", "SurgSora/core_ksampler")
    co = lay_group(g, "SurgSora adapter conditions", PERCEPTION_COLOUR, x, y, [[ad, dsi, fuse]])
    lay_group(g, "Core Stable Video Diffusion: KSampler with SurgSora Apply (SVD)", GENERATION_COLOUR,
              co.right + GROUP_GAP, y, [[ckpt, cond, guidance], [apply, ks, dec], video])
    return g


CORE_DUAL_STEPS = 25  # TTM's 50 halved, as core SVD workflows sample; t_weak / t_strong are fractions of any count
NOTE_CORE_DUAL = f"""1. {STEP_FRAME}
2. {STEPS_DRAW} The trajectories become a crude warped animation (the motion signal, saved as a video) and a mask of what moves.
3. Models: models/checkpoints/svd_xt.safetensors only (the full SVD-xt file: ComfyUI recognises SVD only from a full-size checkpoint). SAM and Depth Anything are optional: SurgSora SAM Masks into the motion signal's region_masks and SurgSora Depth into its depth decide what is in front.
4. t_weak and t_strong are fractions of the scheduler's sigmas, so any step count works: sampling starts from the motion signal noised to t_weak; inside the mask the video follows it until t_strong, then SVD denoises freely. Time-to-Move: 0.32 and 0.42 (steps 16 and 21 of 50; 8 and 10 of the 25 here), motion bucket 17. Later t_strong = closer to the drawn motion, earlier = more freedom.
5. Any core sampler, scheduler and model patch works. The latent must be SurgSora SVD Conditioning's (its size and frame count the trajectories')."""


def core_dual_clock(info: dict, t: Template) -> Graph:
    g = Graph(info)
    scale, signal, y, x = _signal_front(g, t, NOTE_CORE_DUAL)
    ckpt, cond = _core_svd(g, scale, motion_bucket_id=TTM_MOTION_BUCKET)
    guidance = g.add("VideoLinearCFGGuidance", min_cfg=1.0)
    g.connect(ckpt, "MODEL", guidance, "model")
    guider = _dual_clock_guider(g, (guidance, "MODEL"), (cond, "positive"), (cond, "negative"), (ckpt, "VAE"), signal,
                                cfg=3.0, t_weak=TTM_T_WEAK, t_strong=TTM_T_STRONG)
    noise = g.add("RandomNoise", noise_seed=42)
    sampler_ = g.add("KSamplerSelect", sampler_name="euler")
    sigmas = g.add("BasicScheduler", scheduler="karras", steps=CORE_DUAL_STEPS, denoise=1.0)
    g.connect(guidance, "MODEL", sigmas, "model")
    sample = _custom_sample(g, noise, guider, "guider", sampler_, (sigmas, "SIGMAS"), (cond, "latent"))
    dec, video = _core_decode(g, ckpt, sample, "output", "SurgSora/core_dual_clock")
    lay_group(g, "Core Stable Video Diffusion: SamplerCustomAdvanced with the SurgSora Dual-Clock Guider",
              GENERATION_COLOUR, x, y, [[ckpt, cond, guidance], [guider, noise, sampler_, sigmas],
                                        [sample, dec] + video])
    return g


# Wan: 81 frames (4n + 1: the video VAE compresses time 4x) at 480p, 16 fps (14B) / 24 fps (5B); Time-to-Move's Wan
# cut-and-drag steps 3 and 7 of 50 as fractions of the whole schedule (the guider gets it as full_sigmas)
WAN_WIDTH, WAN_HEIGHT, WAN_FRAMES = 832, 480, 81
WAN_T_WEAK, WAN_T_STRONG = 0.06, 0.14
WAN_STEPS, WAN_SPLIT, WAN_5B_STEPS = 20, 10, 30
WAN_PROMPT = "endoscopic surgical video, robotic instruments move smoothly over tissue, steady camera, realistic"
WAN_NEGATIVE = "static, blurry, distorted, deformed instruments, flicker, text, watermark, low quality"
NOTE_WAN_14B = f"""1. Load your first frame (here: frame 6 of the EndoVis 2017 clip). It is resized to {WAN_WIDTH}x{WAN_HEIGHT} (Wan 480p; crop disabled so the drawn tracks stay aligned).
2. {STEPS_DRAW} The trajectories become a crude warped animation of {WAN_FRAMES} frames (Wan needs 4n + 1) and a mask of what moves.
3. Models (the Comfy-Org repackaged files): models/diffusion_models/{WAN_HIGH} and {WAN_LOW}, models/text_encoders/{WAN_TEXT}, models/vae/{WAN21_VAE}. About 2 x 14 GB of fp8 experts: ComfyUI keeps one in VRAM at a time.
4. Wan 2.2 A14B samples in two stages: SplitSigmas hands steps 0-{WAN_SPLIT} of {WAN_STEPS} to the high-noise expert with the SurgSora Dual-Clock Guider, the rest to the low-noise expert with a plain CFGGuider (no added noise). The guider gets the whole schedule as full_sigmas, so t_weak / t_strong count steps of all {WAN_STEPS}: Time-to-Move's Wan cut-and-drag 3 and 7 of 50 = {WAN_T_WEAK} and {WAN_T_STRONG} (camera motion: 2 and 5 = 0.04 and 0.10; see the preset widget). t_strong must fall inside the first stage.
5. Any core sampler and scheduler works; WanImageToVideo's size and length must be the motion signal's."""
NOTE_WAN_5B = f"""1. Load your first frame (here: frame 6 of the EndoVis 2017 clip). It is resized to {WAN_WIDTH}x{WAN_HEIGHT} (crop disabled so the drawn tracks stay aligned).
2. {STEPS_DRAW} The trajectories become a crude warped animation of {WAN_FRAMES} frames (Wan needs 4n + 1) and a mask of what moves.
3. Models (the Comfy-Org repackaged files): models/diffusion_models/{WAN_5B}, models/text_encoders/{WAN_TEXT}, models/vae/{WAN22_VAE} (the 5B's own VAE: 16x in space). Fits a 12-16 GB GPU with ComfyUI's offloading.
4. Wan22ImageToVideoLatent keeps the first frame (its latent noise mask): the guider never anchors there. t_weak / t_strong: Time-to-Move's Wan cut-and-drag 3 and 7 of 50 = {WAN_T_WEAK} and {WAN_T_STRONG} (camera motion: 2 and 5 = 0.04 and 0.10; see the preset widget). Later t_strong = closer to the drawn motion, earlier = more freedom.
5. Any core sampler and scheduler works; the latent's width, height and length must be the motion signal's."""


def _wan_text(g: Graph) -> tuple[Node, Node, Node]:
    """umt5 and the two prompts (the core Wan text conditioning)."""
    clip = g.add("CLIPLoader", clip_name=WAN_TEXT, type="wan", device="default", models=(WAN_TEXT,))
    pos = g.add("CLIPTextEncode", title="Positive prompt", text=WAN_PROMPT)
    neg = g.add("CLIPTextEncode", title="Negative prompt", text=WAN_NEGATIVE)
    g.connect(clip, "CLIP", pos, "clip")
    g.connect(clip, "CLIP", neg, "clip")
    return clip, pos, neg


def _wan_model(g: Graph, name: str, title: str) -> tuple[Node, Node]:
    unet = g.add("UNETLoader", title=title, unet_name=name, weight_dtype="default", models=(name,))
    shift = g.add("ModelSamplingSD3", shift=8.0)  # Wan's flow shift, as ComfyUI's own Wan templates
    g.connect(unet, "MODEL", shift, "model")
    return unet, shift


def _dual_clock_guider(g: Graph, model: tuple[Node, str], pos: tuple[Node, str], neg: tuple[Node, str],
                       vae: tuple[Node, str], signal: Node, **widgets) -> Node:
    """SurgSora Dual-Clock Guider wired to a model, its conditioning, the VAE and the motion signal."""
    guider = g.add("SurgSoraDualClockGuider", **widgets)
    for (node, output), name in ((model, "model"), (pos, "positive"), (neg, "negative"), (vae, "vae")):
        g.connect(node, output, guider, name)
    g.connect(signal, "motion_signal", guider, "motion_signal")
    g.connect(signal, "motion_mask", guider, "motion_mask")
    return guider


def _wan_guider(g: Graph, model: Node, pos: tuple[Node, str], neg: tuple[Node, str], vae: Node, signal: Node,
                cfg: float) -> Node:
    return _dual_clock_guider(g, (model, "MODEL"), pos, neg, (vae, "VAE"), signal, cfg=cfg, t_weak=WAN_T_WEAK,
                              t_strong=WAN_T_STRONG, preset="custom")


def _custom_sample(g: Graph, noise: Node, guider: Node, guider_output: str, sampler_: Node, sigmas: tuple[Node, str],
                   latent: tuple[Node, str], title: str | None = None) -> Node:
    sample = g.add("SamplerCustomAdvanced", title=title)
    g.connect(noise, "NOISE", sample, "noise")
    g.connect(guider, guider_output, sample, "guider")
    g.connect(sampler_, "SAMPLER", sample, "sampler")
    g.connect(sigmas[0], sigmas[1], sample, "sigmas")
    g.connect(latent[0], latent[1], sample, "latent_image")
    return sample


def wan_14b_dual_clock(info: dict, t: Template) -> Graph:
    g = Graph(info)
    scale, signal, y, x = _signal_front(g, t, NOTE_WAN_14B, WAN_WIDTH, WAN_HEIGHT, WAN_FRAMES, 16)
    high, high_m = _wan_model(g, WAN_HIGH, "High-noise expert")
    low, low_m = _wan_model(g, WAN_LOW, "Low-noise expert")
    clip, pos, neg = _wan_text(g)
    vae = g.add("VAELoader", vae_name=WAN21_VAE, models=(WAN21_VAE,))
    i2v = g.add("WanImageToVideo", width=WAN_WIDTH, height=WAN_HEIGHT, length=WAN_FRAMES, batch_size=1)
    g.connect(pos, "CONDITIONING", i2v, "positive")
    g.connect(neg, "CONDITIONING", i2v, "negative")
    g.connect(vae, "VAE", i2v, "vae")
    g.connect(scale, "IMAGE", i2v, "start_image")
    sigmas = g.add("BasicScheduler", scheduler="simple", steps=WAN_STEPS, denoise=1.0)
    g.connect(high_m, "MODEL", sigmas, "model")
    split = g.add("SplitSigmas", step=WAN_SPLIT)
    g.connect(sigmas, "SIGMAS", split, "sigmas")
    guider = _wan_guider(g, high_m, (i2v, "positive"), (i2v, "negative"), vae, signal, 3.5)
    g.connect(sigmas, "SIGMAS", guider, "full_sigmas")
    noise = g.add("RandomNoise", noise_seed=42)
    sampler_ = g.add("KSamplerSelect", sampler_name="euler")
    first = _custom_sample(g, noise, guider, "guider", sampler_, (split, "high_sigmas"), (i2v, "latent"),
                           "High-noise stage (dual-clock)")
    plain = g.add("CFGGuider", cfg=3.5)
    g.connect(low_m, "MODEL", plain, "model")
    g.connect(i2v, "positive", plain, "positive")
    g.connect(i2v, "negative", plain, "negative")
    no_noise = g.add("DisableNoise")
    second = _custom_sample(g, no_noise, plain, "GUIDER", sampler_, (split, "low_sigmas"), (first, "output"),
                            "Low-noise stage")
    dec = g.add("VAEDecode")
    g.connect(second, "output", dec, "samples")
    g.connect(vae, "VAE", dec, "vae")
    video = _video(g, dec, "IMAGE", "SurgSora/wan_14b_dual_clock", 16)
    lay_group(g, "Core Wan 2.2 I2V A14B: two SamplerCustomAdvanced stages, the first with the SurgSora Dual-Clock "
              "Guider", GENERATION_COLOUR, x, y,
              [[high, high_m, low, low_m, vae], [clip, pos, neg, i2v], [sigmas, split, guider, noise, sampler_],
               [first, plain, no_noise, second], [dec] + video])
    return g


def wan_5b_dual_clock(info: dict, t: Template) -> Graph:
    g = Graph(info)
    scale, signal, y, x = _signal_front(g, t, NOTE_WAN_5B, WAN_WIDTH, WAN_HEIGHT, WAN_FRAMES, 24)
    unet, model = _wan_model(g, WAN_5B, "Wan 2.2 TI2V 5B")
    clip, pos, neg = _wan_text(g)
    vae = g.add("VAELoader", vae_name=WAN22_VAE, models=(WAN22_VAE,))
    latent = g.add("Wan22ImageToVideoLatent", width=WAN_WIDTH, height=WAN_HEIGHT, length=WAN_FRAMES, batch_size=1)
    g.connect(vae, "VAE", latent, "vae")
    g.connect(scale, "IMAGE", latent, "start_image")
    guider = _wan_guider(g, model, (pos, "CONDITIONING"), (neg, "CONDITIONING"), vae, signal, 5.0)
    sigmas = g.add("BasicScheduler", scheduler="simple", steps=WAN_5B_STEPS, denoise=1.0)
    g.connect(model, "MODEL", sigmas, "model")
    noise = g.add("RandomNoise", noise_seed=42)
    sampler_ = g.add("KSamplerSelect", sampler_name="euler")
    sample = _custom_sample(g, noise, guider, "guider", sampler_, (sigmas, "SIGMAS"), (latent, "LATENT"))
    dec = g.add("VAEDecode")
    g.connect(sample, "output", dec, "samples")
    g.connect(vae, "VAE", dec, "vae")
    video = _video(g, dec, "IMAGE", "SurgSora/wan_5b_dual_clock", 24)
    lay_group(g, "Core Wan 2.2 TI2V 5B: SamplerCustomAdvanced with the SurgSora Dual-Clock Guider", GENERATION_COLOUR,
              x, y, [[unet, model, vae], [clip, pos, neg, latent], [guider, sigmas, noise, sampler_],
                     [sample, dec] + video])
    return g


# Cosmos-H-Surgical as trained: 1280x704 (720p), 93 frames (4n + 1) at 16 fps, 35 UniPC steps with shift 5, guidance 7
COSMOS_WIDTH, COSMOS_HEIGHT, COSMOS_FRAMES, COSMOS_FPS, COSMOS_STEPS, COSMOS_CFG = 1280, 704, 93, 16, 35, 7.0
COSMOS_T_WEAK, COSMOS_T_STRONG = 0.06, 0.14  # the guider's "Cosmos-H-Surgical cut-and-drag (2 / 5 of 35)" preset
COSMOS_PROMPT = ("laparoscopic surgery video: a grasper and a hook move over the tissue, steady endoscope, realistic "
                 "lighting and anatomy")
COSMOS_NEGATIVE = "static, blurry, distorted or deformed instruments, flicker, cartoon, text, watermark, low quality"
NOTE_COSMOS = f"""1. Load your first frame (here: frame 6 of the EndoVis 2017 clip). It is resized to {COSMOS_WIDTH}x{COSMOS_HEIGHT} (720p, as Cosmos-H-Surgical was trained; crop disabled so the drawn tracks stay aligned).
2. {STEPS_DRAW} SAM (masks at the track starts) and Depth Anything V2 decide what moves as one region and what is in front; the trajectories become a crude warped animation of {COSMOS_FRAMES} frames (4n + 1) and a mask of what moves.
3. Models: models/sams/{SAM_FILE}, models/depthanything/{DEPTH_FILE}, models/diffusion_models/{COSMOS_FILE} (NVIDIA Cosmos-H-Surgical v0.2.0 Predict, OpenMDW-1.1, 4.1 GB), models/vae/{WAN21_VAE}, models/text_encoders/{REASON1_FILE}: Cosmos-Reason1-7B (nvidia/Cosmos-Reason1-7B) saved as one safetensors file (its shards merged), loaded as ComfyUI's Qwen2.5-VL-7B (type qwen_image).
4. SurgSora Cosmos Image to Video puts the frame in as the model's conditioning frame. The guider samples {COSMOS_STEPS} UniPC steps (shift 5, as trained) with the Cosmos-H-Surgical cut-and-drag preset: sampling starts at step 2 from the motion signal, the masked region follows it until step 5 (camera motion: steps 1 and 4). Later t_strong = closer to the drawn motion, earlier = more freedom.
5. Choose it over Wan for surgical appearance (tissue, instruments, endoscope light); Wan 2.2 A14B follows general motion better. About 4 GB of DiT weights plus the 7B text encoder (offloaded after encoding); 93 frames at 720p want a 24 GB+ GPU, fewer frames or a smaller size fit less."""


def _perceived_signal_front(g: Graph, t: Template, note_text: str, width: int, height: int, frames: int,
                            fps: int) -> tuple[Node, Node, float, float]:
    """:func:`_signal_front` with SAM masks (prompted at the track starts) and Depth Anything V2 depth deciding what
    moves as one region and what is in front, in a Perception group under the Trajectory Controller."""
    note = add_note(g, t, note_text)
    load, scale = _frame(g, width, height)
    traj, tprev = _trajectories(g, scale, frames)
    sam = g.add("SurgSoraLoadSAM", model_name=SAM_FILE)
    masks = g.add("SurgSoraSAMMasks")
    g.connect(sam, "sam", masks, "sam")
    g.connect(scale, "IMAGE", masks, "image")
    g.connect(traj, "tracks", masks, "tracks")
    dm = g.add("SurgSoraLoadDepthAnything", model_name=DEPTH_FILE)
    depth = g.add("SurgSoraDepth")
    g.connect(dm, "depth_model", depth, "depth_model")
    g.connect(scale, "IMAGE", depth, "image")
    previews = [_preview(g, masks, "preview", "Preview: SAM masks"),
                _preview(g, depth, "depth_colour", "Preview: depth")]
    decoder, flow = _flow(g, scale, traj, "analytic", masks)
    signal = g.add("SurgSoraMotionSignal")
    g.connect(scale, "IMAGE", signal, "image")
    g.connect(flow, "flow", signal, "flow")
    g.connect(masks, "masks", signal, "region_masks")
    g.connect(depth, "depth", signal, "depth")
    svideo = _video(g, signal, "motion_signal", "SurgSora/motion_signal", fps)
    y = note.bottom + GROUP_GAP
    fr = lay_group(g, "Frame", FRAME_COLOUR, 0, y, [[load, scale]])
    tr = lay_group(g, "Trajectory Controller -> motion signal", TRAJECTORY_COLOUR, fr.right + GROUP_GAP, y,
                   [[traj], [tprev, decoder, flow], [signal] + svideo])
    pe = lay_group(g, "Perception: SAM + Depth Anything V2", PERCEPTION_COLOUR, tr.x, tr.bottom + GROUP_GAP,
                   [[sam, dm], [masks, depth], previews])
    return scale, signal, y, max(tr.right, pe.right) + GROUP_GAP


def cosmos_dual_clock(info: dict, t: Template) -> Graph:
    g = Graph(info)
    scale, signal, y, x = _perceived_signal_front(g, t, NOTE_COSMOS, COSMOS_WIDTH, COSMOS_HEIGHT, COSMOS_FRAMES,
                                                  COSMOS_FPS)
    model = g.add("SurgSoraLoadCosmosHSurgical", model_name=COSMOS_FILE, weight_dtype="default", models=(COSMOS_FILE,))
    clip = g.add("CLIPLoader", title="Cosmos-Reason1-7B", clip_name=REASON1_FILE, type="qwen_image", device="default")
    pos = g.add("SurgSoraCosmosTextEncode", title="Positive prompt", text=COSMOS_PROMPT)
    neg = g.add("SurgSoraCosmosTextEncode", title="Negative prompt", text=COSMOS_NEGATIVE)
    g.connect(clip, "CLIP", pos, "clip")
    g.connect(clip, "CLIP", neg, "clip")
    vae = g.add("VAELoader", vae_name=WAN21_VAE, models=(WAN21_VAE,))
    i2v = g.add("SurgSoraCosmosImageToVideo", width=COSMOS_WIDTH, height=COSMOS_HEIGHT, length=COSMOS_FRAMES)
    g.connect(pos, "conditioning", i2v, "positive")
    g.connect(neg, "conditioning", i2v, "negative")
    g.connect(vae, "VAE", i2v, "vae")
    g.connect(scale, "IMAGE", i2v, "start_image")
    guider = _dual_clock_guider(g, (model, "model"), (i2v, "positive"), (i2v, "negative"), (vae, "VAE"), signal,
                                cfg=COSMOS_CFG, t_weak=COSMOS_T_WEAK, t_strong=COSMOS_T_STRONG,
                                preset="Cosmos-H-Surgical cut-and-drag (2 / 5 of 35)")
    sigmas = g.add("BasicScheduler", scheduler="simple", steps=COSMOS_STEPS, denoise=1.0)
    g.connect(model, "model", sigmas, "model")
    noise = g.add("RandomNoise", noise_seed=42)
    sampler_ = g.add("KSamplerSelect", sampler_name="uni_pc")
    sample = _custom_sample(g, noise, guider, "guider", sampler_, (sigmas, "SIGMAS"), (i2v, "latent"))
    dec = g.add("VAEDecode")
    g.connect(sample, "output", dec, "samples")
    g.connect(vae, "VAE", dec, "vae")
    video = _video(g, dec, "IMAGE", "SurgSora/cosmos_dual_clock", COSMOS_FPS)
    lay_group(g, "NVIDIA Cosmos-H-Surgical: SamplerCustomAdvanced with the SurgSora Dual-Clock Guider",
              GENERATION_COLOUR, x, y, [[model, vae, clip], [pos, neg, i2v], [guider, sigmas, noise, sampler_],
                                        [sample, dec] + video])
    return g


def _example_tracks() -> str:
    data = json.loads(EXAMPLE_TRACKS.read_text())
    return json.dumps({"width": data["width"], "height": data["height"], "tracks": data["tracks"]})


# ============================================================================ templates

@dataclass(frozen=True)
class Template:
    """One shipped workflow. ``title`` is its file name (the frontend shows it as the template's title and, with
    '-' and '_' read as spaces, as its description); ``description`` opens the note; ``label`` is written on
    the thumbnail, whose picture is the frame with the example tracks (``picture="tracks"``) or with the flow
    estimated from the clip (``"flow"``)."""
    title: str
    description: str
    build: Callable
    label: str
    picture: str = "tracks"


TEMPLATES = [
    Template("SurgSora Trajectory to Video",
             "Draw trajectories on a surgical frame: SAM, Depth Anything V2 and the SurgSora adapter steer Stable "
             "Video Diffusion into a video that follows them.", trajectory_to_video, "adapter + SVD"),
    Template("SurgSora Motion Preview",
             "Decode drawn trajectories into dense flow and push the frame along it: a motion preview that needs "
             "no model weights.", motion_preview, "no weights needed"),
    Template("SurgSora Ground-Truth Flow",
             "The paper's evaluation mode: flow estimated from a real clip conditions SVD to regenerate that clip "
             "from its first frame.", flow_from_video, "flow from a clip", picture="flow"),
    Template("SurgSora MOFA-Video-Traj",
             "Trajectory-controlled video from released weights: MOFA-Video-Traj's ControlNet on SVD-xt, run exactly "
             "as published.", mofa_trajectory_to_video, "released weights"),
    Template("SurgSora Dual-Clock SVD",
             "Trajectory-controlled video with only Stable Video Diffusion and no training: dual-clock sampling "
             "(Time-to-Move) on a warped animation.", ttm_trajectory_to_video, "SVD only"),
    Template("SurgSora on Core KSampler",
             "SurgSora conditions steer ComfyUI's own SVD: ImageOnlyCheckpointLoader, VideoLinearCFGGuidance and "
             "core KSampler through SurgSora Apply (SVD).", core_ksampler, "core KSampler"),
    Template("SurgSora Dual-Clock Core Sampler",
             "Trajectory-controlled video on ComfyUI's own SVD, no training: the SurgSora Dual-Clock Guider runs "
             "Time-to-Move sampling in core SamplerCustomAdvanced.", core_dual_clock, "core dual-clock"),
    Template("SurgSora Dual-Clock Wan 2.2 14B",
             "Trajectory-controlled video on ComfyUI's own Wan 2.2 I2V A14B, no training: the SurgSora Dual-Clock "
             "Guider drives the high-noise expert, core CFG the low-noise one.", wan_14b_dual_clock, "Wan 2.2 14B"),
    Template("SurgSora Dual-Clock Wan 2.2 5B",
             "Trajectory-controlled video on ComfyUI's own Wan 2.2 TI2V 5B, no training: the SurgSora Dual-Clock "
             "Guider in core SamplerCustomAdvanced.", wan_5b_dual_clock, "Wan 2.2 5B"),
    Template("SurgSora Dual-Clock Cosmos-H",  # Cosmos-H-Surgical; the full name would wrap on the template card
             "Trajectory-controlled video on NVIDIA's surgical video model Cosmos-H-Surgical, no training: the "
             "SurgSora Dual-Clock Guider drives it in core SamplerCustomAdvanced.", cosmos_dual_clock,
             "Cosmos-H-Surgical"),
]
NAMES = [t.title for t in TEMPLATES]

THUMB_SIZE = 384  # square: the template browser shows thumbnails in square tiles (object-fit: cover)
THUMB_QUALITY = 90


def _frame_square(frames):
    """The centre square of landscape frames (it holds every example track) resized to THUMB_SIZE; returns the
    squares, the square's left edge and the resize factor."""
    import cv2
    import numpy as np

    h, w = frames.shape[1:3]
    x0 = (w - h) // 2
    out = [cv2.resize(f[:, x0:x0 + h], (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA) for f in frames]
    return np.stack(out), x0, THUMB_SIZE / h


def _thumbnail_tracks(frame_width: int, x0: int, s: float) -> list:
    """The example tracks in thumbnail pixels: from their declared canvas to the clip's frame, then into the
    square."""
    data = json.loads(EXAMPLE_TRACKS.read_text())
    k = frame_width / data["width"]
    return [[[(x * k - x0) * s, y * k * s] for x, y in track] for track in data["tracks"]]


def render_thumbnail(t: Template, frame_index: int = FRAME_INDEX, tracks: list | None = None,
                     label: str | None = None):
    """The template's thumbnail as RGB uint8 [THUMB_SIZE, THUMB_SIZE, 3]: the EndoVis frame, its example tracks (or
    its flow estimated from the clip, in flow colours) and the template's label on a dark band. ``frame_index``,
    ``tracks`` (thumbnail pixels) and ``label`` replace the shipped ones (the tests draw stale thumbnails)."""
    import cv2
    import numpy as np
    import torch

    from surgsora.motion.flow_viz import draw_tracks, flow_to_rgb
    from surgsora.video_io import read_video

    if t.picture == "flow":
        frames, _, _ = _frame_square(read_video(ENDOVIS_CLIP, start=frame_index, count=14))
        from surgsora.motion.optical_flow import chained_dis_flow

        flow = chained_dis_flow(frames)[-1]
        colours = (flow_to_rgb(torch.from_numpy(flow)).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        img = cv2.addWeighted(frames[0], 0.45, colours, 0.55, 0.0)
    else:
        clip = read_video(ENDOVIS_CLIP, start=frame_index, count=1)
        frames, x0, s = _frame_square(clip)
        img = draw_tracks(frames[0], _thumbnail_tracks(clip.shape[2], x0, s) if tracks is None else tracks,
                          thickness=3)
    draw_label(img, t.label if label is None else label)
    return np.ascontiguousarray(img)


LABEL_BAND = 48  # the label's dark band at the thumbnail's foot, below the lowest example track
LABEL_SIZE = 24  # pixels per em
# The label's font is pinned (DejaVu Sans Bold, shipped with matplotlib, a dependency; drawn by Pillow's basic
# layout) so that it looks the same with every OpenCV: OpenCV 5 draws its FONT_HERSHEY_* names in another face.
LABEL_FONT = ("fonts", "ttf", "DejaVuSans-Bold.ttf")


def draw_label(img, label: str) -> None:
    """Darken the band at the foot of ``img`` (RGB uint8, changed in place) and write ``label`` centred on it."""
    import matplotlib
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    band = img[-LABEL_BAND:]
    band[:] = (band.astype(np.float32) * 0.25).astype(np.uint8)
    font = ImageFont.truetype(str(Path(matplotlib.get_data_path(), *LABEL_FONT)), LABEL_SIZE,
                              layout_engine=ImageFont.Layout.BASIC)
    canvas = Image.fromarray(band)
    ImageDraw.Draw(canvas).text((THUMB_SIZE / 2, LABEL_BAND / 2), label, fill=(255, 255, 255), font=font,
                                anchor="mm")
    band[:] = np.asarray(canvas)


def encode_jpeg(img) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY,
                                                    cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_PROGRESSIVE, 0])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes):
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if img is None else img[..., ::-1]


# What may differ between two renders of one thumbnail (measured: OpenCV 4.8.1 / NumPy 1.26 / Pillow 10.4 and
# OpenCV 4.10 / Pillow 9.5 against OpenCV 5.1 / NumPy 2.4 / Pillow 13): the frame, the tracks and the label come out
# pixel-equal; the flow picture changes with OpenCV's DIS (0.09 % of detail values off by more than 24 levels, tone
# off by 3 to 5 levels on average), and re-encoding at JPEG quality 75 moves 0.2 % of detail values. A stale
# thumbnail moves far more: one track left out 1.9 %, another label 2.2 %, another frame of the clip 5 % of detail
# values (the flow picture of another frame: 0.6 to 0.9 %, its tone 16 levels off).
DETAIL_SIGMA = 2.0  # px: the detail is the picture less its blur at this scale (edges, lines, glyphs)
DETAIL_LEVELS, DETAIL_SHARE = 24, 0.005
TONE_GRID, TONE_LEVELS = 16, 10  # the tone is the picture averaged over a 16 x 16 grid (colour casts, overlays)


def _detail(img):
    import cv2
    import numpy as np

    x = img.astype(np.float32)
    return x - cv2.GaussianBlur(x, (0, 0), DETAIL_SIGMA)


def _tone(img):
    import cv2
    import numpy as np

    return cv2.resize(img.astype(np.float32), (TONE_GRID, TONE_GRID), interpolation=cv2.INTER_AREA)


def same_picture(a: bytes, b: bytes) -> bool:
    """Two JPEGs show the same picture: equal bytes, or equal sizes with the same detail (frame texture, track
    lines, label glyphs: at most DETAIL_SHARE of values off by more than DETAIL_LEVELS) and the same tone (on
    average within TONE_LEVELS), so that another OpenCV's optical flow or another JPEG encoder does not count
    as a change but another frame, other tracks or another label do."""
    import numpy as np

    if a == b:
        return True
    x, y = decode_jpeg(a), decode_jpeg(b)
    if x is None or y is None or x.shape != y.shape:
        return False
    detail_off = float((np.abs(_detail(x) - _detail(y)) > DETAIL_LEVELS).mean())
    tone_off = float(np.abs(_tone(x) - _tone(y)).mean())
    return detail_off <= DETAIL_SHARE and tone_off <= TONE_LEVELS


# ============================================================================ files

def _dump(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"


def build_all(info: dict | None = None) -> dict[Path, str | bytes]:
    """Every file this script writes: {path: JSON text or JPEG bytes}."""
    info = info or object_info()
    files: dict[Path, str | bytes] = {}
    for t in TEMPLATES:
        ui = t.build(info, t).ui()
        files[TEMPLATES_DIR / f"{t.title}.json"] = _dump(ui)
        files[API_DIR / f"{t.title}.json"] = _dump(ui_to_api(ui, info))
        files[TEMPLATES_DIR / f"{t.title}.jpg"] = encode_jpeg(render_thumbnail(t))
    return files


def is_current(path: Path, content: str | bytes) -> bool:
    if not path.is_file():
        return False
    if isinstance(content, bytes):
        return same_picture(path.read_bytes(), content)
    return path.read_text() == content


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare with the files on disk")
    args = ap.parse_args(argv)
    files = build_all()
    problems = []
    for t in TEMPLATES:
        for problem in layout_problems(json.loads(files[TEMPLATES_DIR / f"{t.title}.json"])):
            problems.append(f"{t.title}: {problem}")
    stale = [p for p, content in files.items() if not is_current(p, content)]
    extra = [p for d in (TEMPLATES_DIR, API_DIR) if d.is_dir() for p in sorted(d.rglob("*"))
             if p.is_file() and p not in files]
    for problem in problems:
        print(f"layout: {problem}")
    if args.check:
        for p in stale:
            print(f"out of date: {p.relative_to(REPO)}")
        for p in extra:
            print(f"not written by this script (ComfyUI would serve it as a template file): {p.relative_to(REPO)}")
        return 1 if stale or extra or problems else 0
    if problems:
        return 1
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(files[p], bytes):
            p.write_bytes(files[p])
        else:
            p.write_text(files[p])
        print(f"wrote {p.relative_to(REPO)}")
    for p in extra:
        print(f"remove (not written by this script): {p.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
