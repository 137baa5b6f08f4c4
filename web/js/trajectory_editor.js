// SurgSora trajectory editor: a click-to-draw canvas on the "SurgSora Trajectories (editor)" node.
//
// The tracks live in the node's `tracks` text widget as JSON in the project's editor format
//   {"width": W, "height": H, "tracks": [[[x, y], ...], ...]}
// (pixels of the picture they were drawn on), so the workflow file, the API prompt and the Python side
// all see the same thing, and hand-edited JSON shows up here too.
//
// Drawing (HELP below is the same list, shown under the canvas): click to start a track, click (or drag) to
// add points, double-click / right-click / Enter / "End track" to finish it (a one-point track is a static
// anchor). Drag an existing point to move it; Shift+click a point to delete it (not right-click: that ends the
// track, and right after the last click the pointer is still on the last point). Every edit
// (each point added, a move, a delete, Clear) is one step of the editor's own undo/redo: Ctrl+Z, Ctrl+Y or
// Ctrl+Shift+Z, and the Undo/Redo buttons.
// Background: the frame the node received in its last run, else the image of an upstream Load Image
// node, else a picture uploaded with "Load image...".

import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_TYPE = "SurgSoraTrajectories";
// Same palette as surgsora.motion.flow_viz.TRACK_COLOURS, so the editor and the node's preview agree.
const COLOURS = ["#00ffff", "#ffff00", "#00ff00", "#ff8000", "#40a0ff", "#ff00ff", "#ffffff", "#a0ffa0"];
const DRAG_SPACING = 12; // canvas pixels between points added while dragging (in picture pixels / zoom)
const HIT_RADIUS = 8; // CSS pixels: a press this close to a point grabs that point
const MOVE_THRESHOLD = 4; // CSS pixels a press on a point travels before it moves it (a double-click jitters less)
const HISTORY = 500; // undo steps kept
const MIN_HEIGHT = 260;
const HELP =
  "Click: add a point \u00b7 drag: draw \u00b7 drag a point: move it \u00b7 Shift+click a point: delete it \u00b7 " +
  "double-click, right-click, Enter or End track: finish the track \u00b7 Ctrl+Z / Ctrl+Y: undo / redo";

function parseTracks(text) {
  // Returns {width, height, tracks: [[[x, y], ...], ...]} or null for empty/unparseable text.
  if (!text || !text.trim()) return null;
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    try {
      data = JSON.parse(text.replace(/'/g, '"'));
    } catch {
      return null;
    }
  }
  const point = (p) => (Array.isArray(p) ? [Number(p[0]), Number(p[1])] : [Number(p.x), Number(p.y)]);
  const isPoint = (p) => p && (Array.isArray(p) ? typeof p[0] === "number" : "x" in p);
  let tracks = [];
  let width = 0;
  let height = 0;
  if (Array.isArray(data)) {
    tracks = data.length && isPoint(data[0]) ? [data] : data;
  } else if (data && typeof data === "object" && Array.isArray(data.tracks)) {
    tracks = data.tracks.length && isPoint(data.tracks[0]) ? [data.tracks] : data.tracks;
    width = Number(data.width) || 0;
    height = Number(data.height) || 0;
  } else {
    return null;
  }
  tracks = tracks.filter(Array.isArray).map((t) => t.map(point).filter((p) => isFinite(p[0]) && isFinite(p[1])));
  return { width, height, tracks: tracks.filter((t) => t.length) };
}

function serialise(state) {
  const r = (v) => Math.round(v * 10) / 10;
  return JSON.stringify({
    width: Math.round(state.width),
    height: Math.round(state.height),
    tracks: state.tracks.map((t) => t.map(([x, y]) => [r(x), r(y)])),
  });
}

function viewURL(ref) {
  const params = new URLSearchParams({ filename: ref.filename, type: ref.type || "input", subfolder: ref.subfolder || "" });
  return api.apiURL(`/view?${params.toString()}`);
}

function refKey(ref) {
  return ref ? `${ref.type}/${ref.subfolder}/${ref.filename}` : "";
}

function linkById(graph, id) {
  const links = graph.links;
  return links?.get ? links.get(id) : links?.[id];
}

// The file behind the node's `image` input: walk up the first IMAGE input of each node until one has an
// `image` combo widget holding a file name (Load Image), through resize nodes and the like.
function upstreamImage(node) {
  const graph = node.graph ?? app.graph;
  let current = node;
  for (let depth = 0; depth < 8 && current; depth++) {
    const input = current.inputs?.find((i) => i.type === "IMAGE" && i.link != null);
    if (!input) return null;
    const link = linkById(graph, input.link);
    const origin = link && graph.getNodeById(link.origin_id);
    if (!origin) return null;
    const w = origin.widgets?.find((x) => x.name === "image" && typeof x.value === "string" && x.value);
    if (w) {
      let name = w.value;
      let type = "input";
      const m = name.match(/^(.*) \[(input|output|temp)\]$/);
      if (m) [name, type] = [m[1], m[2]];
      const slash = name.lastIndexOf("/");
      return { filename: name.slice(slash + 1), subfolder: slash >= 0 ? name.slice(0, slash) : "", type };
    }
    current = origin;
  }
  return null;
}

class TrajectoryEditor {
  constructor(node) {
    this.node = node;
    this.state = { width: 512, height: 512, tracks: [] };
    this.active = -1; // index of the track being drawn, -1 = none
    this.image = null;
    this.imageKey = "";
    this.lastText = null;
    this.gesture = null; // the pointer press in progress: {kind: "draw" | "press" | "move", ...}
    this.undoStack = []; // snapshots (see snapshot()) before each edit
    this.redoStack = [];

    this.root = document.createElement("div");
    this.root.style.cssText =
      "position:relative;display:flex;flex-direction:column;gap:4px;width:100%;height:100%;box-sizing:border-box;";
    const bar = document.createElement("div");
    bar.style.cssText = "display:flex;gap:4px;flex-wrap:wrap;font:12px sans-serif;";
    const button = (label, title, fn) => {
      const b = document.createElement("button");
      b.textContent = label;
      b.title = title;
      b.style.cssText = "padding:1px 6px;font:12px sans-serif;cursor:pointer;";
      b.addEventListener("click", (e) => {
        e.stopPropagation();
        fn();
        this.focusKeys(); // a focused button would leave Ctrl+Z to ComfyUI's global undo
      });
      bar.appendChild(b);
      return b;
    };
    button("End track", "Finish the track being drawn; the next click starts a new one", () => this.endTrack());
    button("Undo", "Undo the last edit: point added, moved or deleted, Clear (Ctrl+Z)", () => this.undo());
    button("Redo", "Redo the last undone edit (Ctrl+Y or Ctrl+Shift+Z)", () => this.redo());
    button("Clear", "Remove every track (Undo brings them back)", () => this.clear());
    button("Load image...", "Upload a picture to draw on", () => this.pickFile());
    this.canvas = document.createElement("canvas");
    this.canvas.style.cssText =
      "width:100%;flex:1 1 auto;min-height:120px;background:#222;cursor:crosshair;touch-action:none;" +
      "outline-offset:-1px;";
    // The keyboard focus goes to this invisible read-only <input> rather than to the canvas: ComfyUI's change
    // tracker (a capture listener on window, so stopPropagation cannot reach it) runs its global undo/redo
    // on Ctrl+Z / Ctrl+Y unless an input or textarea has the focus, and would reload the whole graph under
    // the editor. Its keybindings likewise leave plain keys (Delete, letters) to a focused input.
    this.keys = document.createElement("input");
    this.keys.readOnly = true;
    this.keys.setAttribute("aria-label", `SurgSora trajectory editor. ${HELP}`);
    this.keys.style.cssText =
      "position:absolute;left:0;top:0;width:1px;height:1px;padding:0;border:0;opacity:0;pointer-events:none;";
    this.keys.addEventListener("keydown", (e) => this.onKey(e));
    this.keys.addEventListener("focus", () => (this.canvas.style.outline = "1px solid #4a90d9"));
    this.keys.addEventListener("blur", () => (this.canvas.style.outline = "none"));
    // Both lines wrap (no cut-off with many tracks) and keep their height: the canvas takes what is left.
    this.info = document.createElement("div");
    const wrapping = "flex:0 0 auto;white-space:normal;overflow-wrap:anywhere;";
    this.info.style.cssText = `${wrapping}font:11px monospace;color:#ccc;`;
    this.help = document.createElement("div");
    this.help.style.cssText = `${wrapping}font:10px sans-serif;color:#999;`;
    this.help.textContent = HELP;
    this.root.append(this.keys, bar, this.canvas, this.info, this.help);

    this.canvas.addEventListener("pointerdown", (e) => this.onDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onUp(e));
    this.canvas.addEventListener("pointercancel", (e) => this.onUp(e));
    // Both presses of a double-click have already been handled as clicks (the second one adds nothing, see
    // onUp): the double-click only ends the track.
    this.canvas.addEventListener("dblclick", (e) => {
      e.preventDefault();
      e.stopPropagation();
      this.endTrack();
    });
    this.canvas.addEventListener("contextmenu", (e) => {
      e.preventDefault();
      e.stopPropagation();
      this.focusKeys();
      this.endTrack();
    });
    new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  get textWidget() {
    return this.node.widgets?.find((w) => w.name === "tracks");
  }

  // ---- state <-> widget
  syncFromWidget() {
    const w = this.textWidget;
    const text = w ? String(w.value ?? "") : "";
    if (text === this.lastText) return;
    this.lastText = text;
    // Changed outside the editor (workflow loaded, JSON edited by hand): the history and a press in
    // progress were about other tracks.
    this.undoStack = [];
    this.redoStack = [];
    this.gesture = null;
    const parsed = parseTracks(text);
    if (parsed) {
      this.state.tracks = parsed.tracks;
      if (parsed.width > 0 && parsed.height > 0) {
        this.state.width = parsed.width;
        this.state.height = parsed.height;
      }
    } else {
      this.state.tracks = [];
    }
    if (this.active >= this.state.tracks.length) this.active = -1;
    this.draw();
  }

  commit() {
    const w = this.textWidget;
    const text = this.state.tracks.length ? serialise(this.state) : "";
    this.lastText = text;
    if (w) {
      w.value = text;
      w.callback?.(text);
    }
    this.node.setDirtyCanvas?.(true, true);
    this.draw();
    // Let ComfyUI's change tracker record the edit now, so its history (menu Undo, Ctrl+Z outside the
    // editor) holds each editor state too; by itself it looks only on mouseup, before a button's click.
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
  }

  focusKeys() {
    if (document.activeElement !== this.keys) this.keys.focus({ preventScroll: true });
  }

  // ---- background
  // Try each candidate picture in turn (a temp frame from an earlier session may be gone).
  setBackground(...refs) {
    const candidates = refs.filter((r) => r && r.filename);
    if (!candidates.length) return;
    const ref = candidates[0];
    const key = refKey(ref);
    if (key === this.imageKey) return;
    this.imageKey = key;
    const img = new Image();
    img.onload = () => {
      if (this.imageKey !== key) return;
      this.image = img;
      // A fresh drawing takes the picture's size; existing tracks keep the size they were drawn at
      // (the Python side rescales them to the working frame).
      if (!this.state.tracks.length) {
        this.state.width = img.naturalWidth;
        this.state.height = img.naturalHeight;
      }
      this.draw();
    };
    img.onerror = () => {
      if (this.imageKey !== key) return;
      this.imageKey = "";
      this.setBackground(...candidates.slice(1));
    };
    img.src = viewURL(ref);
  }

  refreshBackground() {
    const props = this.node.properties || {};
    const upstream = upstreamImage(this.node);
    const last = props.surgsora_last_frame;
    // The frame of the last run is exact, unless the upstream Load Image has been changed since.
    const stale = last && upstream && last.upstream !== refKey(upstream);
    if (stale) this.setBackground(upstream, last, props.surgsora_background);
    else this.setBackground(last, upstream, props.surgsora_background);
  }

  // Called on every canvas redraw: cheap checks, at most a few times a second.
  poll() {
    this.syncFromWidget();
    const now = performance.now();
    if (now - (this.lastPoll || 0) > 700) {
      this.lastPoll = now;
      this.refreshBackground();
    }
  }

  pickFile() {
    const input = document.createElement("input");
    input.type = "file";
    input.accept = "image/*";
    input.onchange = async () => {
      const file = input.files?.[0];
      if (!file) return;
      const body = new FormData();
      body.append("image", file);
      body.append("type", "input");
      const resp = await api.fetchApi("/upload/image", { method: "POST", body });
      if (resp.status !== 200) {
        alert(`SurgSora: upload failed (${resp.status} ${resp.statusText})`);
        return;
      }
      const ref = await resp.json();
      this.node.properties = this.node.properties || {};
      this.node.properties.surgsora_background = { filename: ref.name, subfolder: ref.subfolder || "", type: ref.type || "input" };
      delete this.node.properties.surgsora_last_frame;
      this.imageKey = "";
      this.setBackground(this.node.properties.surgsora_background);
    };
    input.click();
  }

  // ---- geometry: picture pixels <-> canvas pixels (letterboxed fit)
  layout() {
    const cw = this.canvas.width;
    const ch = this.canvas.height;
    const s = Math.min(cw / this.state.width, ch / this.state.height);
    return { s, ox: (cw - this.state.width * s) / 2, oy: (ch - this.state.height * s) / 2 };
  }

  toPicture(e) {
    const rect = this.canvas.getBoundingClientRect();
    const px = ((e.clientX - rect.left) / rect.width) * this.canvas.width;
    const py = ((e.clientY - rect.top) / rect.height) * this.canvas.height;
    const { s, ox, oy } = this.layout();
    const x = (px - ox) / s;
    const y = (py - oy) / s;
    return { x, y, inside: x >= 0 && y >= 0 && x < this.state.width && y < this.state.height, scale: s };
  }

  // The point under the pointer, {track, index}, or null. The end of the track being drawn wins over any
  // other point within reach: a second click there (as in a double-click) must find it, not a neighbour.
  hitTest(e) {
    const p = this.toPicture(e);
    const reach = (HIT_RADIUS * this.canvas.width) / Math.max(1, this.canvas.getBoundingClientRect().width);
    const dist = ([x, y]) => Math.hypot(x - p.x, y - p.y) * p.scale;
    const active = this.state.tracks[this.active];
    if (active && dist(active[active.length - 1]) <= reach) return { track: this.active, index: active.length - 1 };
    let best = null;
    let bestDist = reach;
    this.state.tracks.forEach((t, k) =>
      t.forEach((pt, i) => {
        const d = dist(pt);
        if (d <= bestDist) [best, bestDist] = [{ track: k, index: i }, d];
      }),
    );
    return best;
  }

  isActiveEnd(hit) {
    return hit.track === this.active && hit.index === this.state.tracks[this.active].length - 1;
  }

  // ---- editing
  addPoint(x, y) {
    if (this.active < 0) {
      this.state.tracks.push([]);
      this.active = this.state.tracks.length - 1;
    }
    this.state.tracks[this.active].push([x, y]);
  }

  endTrack() {
    this.active = -1;
    this.draw();
  }

  // ---- history: a snapshot before every edit; undo/redo swap whole snapshots (tracks are small).
  snapshot() {
    const { width, height, tracks } = this.state;
    return { width, height, active: this.active, tracks: tracks.map((t) => t.map((p) => [...p])) };
  }

  restore(snap) {
    this.state = { width: snap.width, height: snap.height, tracks: snap.tracks };
    this.active = snap.active;
  }

  record() {
    this.undoStack.push(this.snapshot());
    if (this.undoStack.length > HISTORY) this.undoStack.shift();
    this.redoStack = [];
  }

  undo() {
    if (!this.undoStack.length) return;
    this.redoStack.push(this.snapshot());
    this.restore(this.undoStack.pop());
    this.commit();
  }

  redo() {
    if (!this.redoStack.length) return;
    this.undoStack.push(this.snapshot());
    this.restore(this.redoStack.pop());
    this.commit();
  }

  deletePoint({ track, index }) {
    this.record();
    const t = this.state.tracks[track];
    t.splice(index, 1);
    if (!t.length) {
      this.state.tracks.splice(track, 1);
      if (this.active === track) this.active = -1;
      else if (this.active > track) this.active -= 1;
    }
    this.commit();
  }

  clear() {
    if (this.state.tracks.length) this.record();
    this.state.tracks = [];
    this.active = -1;
    if (this.image) {
      this.state.width = this.image.naturalWidth;
      this.state.height = this.image.naturalHeight;
    }
    this.commit();
  }

  // A press on a point may become a move (it travels MOVE_THRESHOLD) or stays a click (decided in onUp);
  // a press elsewhere adds a point at once and draws while dragged. The right button is the contextmenu.
  onDown(e) {
    if (e.button !== 0) return;
    e.preventDefault();
    e.stopPropagation();
    this.focusKeys();
    const p = this.toPicture(e);
    const hit = this.hitTest(e);
    if (e.shiftKey) {
      if (hit) this.deletePoint(hit);
      return;
    }
    if (hit) {
      this.gesture = { kind: "press", hit, x: e.clientX, y: e.clientY, at: [p.x, p.y], inside: p.inside };
    } else if (p.inside) {
      this.record();
      this.addPoint(p.x, p.y);
      this.gesture = { kind: "draw", from: [p.x, p.y] };
      this.draw();
    } else {
      return;
    }
    this.canvas.setPointerCapture?.(e.pointerId);
  }

  onMove(e) {
    const g = this.gesture;
    if (!g) return;
    e.preventDefault();
    e.stopPropagation();
    const p = this.toPicture(e);
    if (g.kind === "press" && Math.hypot(e.clientX - g.x, e.clientY - g.y) >= MOVE_THRESHOLD) {
      this.record();
      g.kind = "move";
    }
    if (g.kind === "move") {
      // kept on the picture, where it stays visible and can be grabbed again
      const x = Math.min(Math.max(p.x, 0), this.state.width - 0.1);
      const y = Math.min(Math.max(p.y, 0), this.state.height - 0.1);
      this.state.tracks[g.hit.track][g.hit.index] = [x, y];
      this.draw();
    } else if (g.kind === "draw") {
      const [fx, fy] = g.from;
      if (Math.hypot(p.x - fx, p.y - fy) * p.scale >= DRAG_SPACING) {
        this.record();
        this.addPoint(p.x, p.y);
        g.from = [p.x, p.y];
        this.draw();
      }
    }
  }

  onUp(e) {
    const g = this.gesture;
    if (!g) return;
    e.stopPropagation();
    this.gesture = null;
    this.canvas.releasePointerCapture?.(e.pointerId);
    if (g.kind === "press") {
      // A click on a point adds a point there like any click, except on the end of the track being drawn:
      // that is the second press of a double-click (or a click to finish there), and a second copy of the
      // end would make the track stand still for part of the clip.
      if (this.isActiveEnd(g.hit) || !g.inside) return;
      this.record();
      this.addPoint(...g.at);
    }
    this.commit();
  }

  onKey(e) {
    const key = e.key.toLowerCase();
    const ctrl = (e.ctrlKey || e.metaKey) && !e.altKey;
    let action = null;
    if (ctrl && key === "z") action = e.shiftKey ? () => this.redo() : () => this.undo();
    else if (ctrl && key === "y" && !e.shiftKey) action = () => this.redo();
    else if (e.key === "Enter" || e.key === "Escape") action = () => this.endTrack();
    if (!action) return;
    e.preventDefault();
    e.stopPropagation();
    action();
  }

  // ---- drawing
  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(c.clientWidth * dpr));
    const h = Math.max(1, Math.round(c.clientHeight * dpr));
    if (c.width !== w || c.height !== h) {
      c.width = w;
      c.height = h;
    }
    const ctx = c.getContext("2d");
    ctx.fillStyle = "#222";
    ctx.fillRect(0, 0, w, h);
    const { s, ox, oy } = this.layout();
    const W = this.state.width * s;
    const H = this.state.height * s;
    if (this.image) {
      ctx.drawImage(this.image, ox, oy, W, H);
    } else {
      ctx.fillStyle = "#333";
      ctx.fillRect(ox, oy, W, H);
      ctx.fillStyle = "#888";
      ctx.font = `${12 * dpr}px sans-serif`;
      ctx.textAlign = "center";
      ctx.fillText("Run once, connect a Load Image, or use Load image...", ox + W / 2, oy + H / 2);
    }
    const lw = Math.max(1.5, 2 * dpr);
    this.state.tracks.forEach((t, k) => {
      const col = COLOURS[k % COLOURS.length];
      const pts = t.map(([x, y]) => [ox + x * s, oy + y * s]);
      ctx.strokeStyle = col;
      ctx.fillStyle = col;
      ctx.lineWidth = lw;
      if (pts.length > 1) {
        ctx.beginPath();
        pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
        ctx.stroke();
        // arrow head on the last segment
        const [x1, y1] = pts[pts.length - 1];
        const [x0, y0] = pts[pts.length - 2];
        const a = Math.atan2(y1 - y0, x1 - x0);
        const r = 8 * dpr;
        ctx.beginPath();
        ctx.moveTo(x1, y1);
        ctx.lineTo(x1 - r * Math.cos(a - 0.45), y1 - r * Math.sin(a - 0.45));
        ctx.lineTo(x1 - r * Math.cos(a + 0.45), y1 - r * Math.sin(a + 0.45));
        ctx.closePath();
        ctx.fill();
        pts.slice(1, -1).forEach(([x, y]) => {
          ctx.beginPath();
          ctx.arc(x, y, 2 * dpr, 0, 2 * Math.PI);
          ctx.fill();
        });
      }
      // start: a filled dot; static anchor: a ring around it
      const [sx, sy] = pts[0];
      ctx.beginPath();
      ctx.arc(sx, sy, 4 * dpr, 0, 2 * Math.PI);
      ctx.fill();
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 1;
      ctx.stroke();
      if (pts.length === 1) {
        ctx.strokeStyle = col;
        ctx.lineWidth = lw;
        ctx.beginPath();
        ctx.arc(sx, sy, 8 * dpr, 0, 2 * Math.PI);
        ctx.stroke();
      }
      if (k === this.active) {
        ctx.strokeStyle = "#fff";
        ctx.setLineDash([3 * dpr, 3 * dpr]);
        ctx.beginPath();
        ctx.arc(pts[pts.length - 1][0], pts[pts.length - 1][1], 7 * dpr, 0, 2 * Math.PI);
        ctx.stroke();
        ctx.setLineDash([]);
      }
    });
    // no-break spaces inside each entry: the line wraps between tracks
    const parts = this.state.tracks.map((t, k) => `${k + 1}:\u00a0${t.length > 1 ? `${t.length}\u00a0pts` : "anchor"}`);
    const size = `${Math.round(this.state.width)}x${Math.round(this.state.height)}`;
    const drawing = this.active >= 0 ? ` (drawing ${this.active + 1})` : "";
    this.info.textContent = parts.length
      ? `${size}  ${parts.length} track${parts.length === 1 ? "" : "s"}${drawing}: ${parts.join(" | ")}`
      : `${size}  click to start a track`;
  }
}

app.registerExtension({
  name: "SurgSora.TrajectoryEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const editor = new TrajectoryEditor(this);
      this.surgsoraEditor = editor;
      // Added last and never serialised: widgets_values keep exactly the Python inputs' order.
      const widget = this.addDOMWidget("trajectory_editor", "surgsora_editor", editor.root, {
        serialize: false,
        hideOnZoom: false,
        getValue: () => undefined,
        setValue: () => {},
        getMinHeight: () => MIN_HEIGHT,
        onDraw: () => editor.poll(),
      });
      widget.serialize = false;
      const text = editor.textWidget;
      if (text) {
        const cb = text.callback;
        text.callback = function (v) {
          const out = cb?.apply(this, arguments);
          editor.syncFromWidget();
          return out;
        };
      }
      this.setSize([Math.max(this.size[0], 420), Math.max(this.size[1], 520)]);
      requestAnimationFrame(() => {
        editor.syncFromWidget();
        editor.refreshBackground();
      });
      return r;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = onConfigure?.apply(this, arguments);
      requestAnimationFrame(() => {
        this.surgsoraEditor?.syncFromWidget();
        this.surgsoraEditor?.refreshBackground();
      });
      return r;
    };

    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const r = onConnectionsChange?.apply(this, arguments);
      requestAnimationFrame(() => this.surgsoraEditor?.refreshBackground());
      return r;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      const frame = message?.surgsora_frame?.[0];
      if (frame && this.surgsoraEditor) {
        this.properties = this.properties || {};
        const upstream = upstreamImage(this);
        this.properties.surgsora_last_frame = {
          filename: frame.filename, subfolder: frame.subfolder || "", type: frame.type || "temp", upstream: refKey(upstream),
        };
        this.surgsoraEditor.setBackground(this.properties.surgsora_last_frame);
      }
      return r;
    };
  },
});

// For tests and other extensions: the pure JSON helpers.
export { parseTracks, serialise };
