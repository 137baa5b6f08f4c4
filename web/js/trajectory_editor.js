// SurgSora trajectory editor: a click-to-draw canvas on the "SurgSora Trajectories (editor)" node.
//
// The tracks live in the node's `tracks` text widget as JSON in the project's editor format
//   {"width": W, "height": H, "tracks": [[[x, y], ...], ...]}
// (pixels of the picture they were drawn on), so the workflow file, the API prompt and the Python side
// all see the same thing, and hand-edited JSON shows up here too.
//
// Drawing: click to start a track, click (or drag) to add points, double-click / right-click / "End track"
// to finish it (a one-point track is a static anchor). Undo removes the last point, Clear removes all.
// Background: the frame the node received in its last run, else the image of an upstream Load Image
// node, else a picture uploaded with "Load image...".

import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_TYPE = "SurgSoraTrajectories";
// Same palette as surgsora.motion.flow_viz.TRACK_COLOURS, so the editor and the node's preview agree.
const COLOURS = ["#00ffff", "#ffff00", "#00ff00", "#ff8000", "#40a0ff", "#ff00ff", "#ffffff", "#a0ffa0"];
const DRAG_SPACING = 12; // canvas pixels between points added while dragging (in picture pixels / zoom)
const MIN_HEIGHT = 260;

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
    this.dragging = false;

    this.root = document.createElement("div");
    this.root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;box-sizing:border-box;";
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
      });
      bar.appendChild(b);
      return b;
    };
    button("End track", "Finish the track being drawn; the next click starts a new one", () => this.endTrack());
    button("Undo", "Remove the last point (Ctrl+Z)", () => this.undo());
    button("Clear", "Remove every track", () => this.clear());
    button("Load image...", "Upload a picture to draw on", () => this.pickFile());
    this.canvas = document.createElement("canvas");
    this.canvas.style.cssText = "width:100%;flex:1 1 auto;min-height:120px;background:#222;cursor:crosshair;touch-action:none;";
    this.canvas.tabIndex = 0;
    this.info = document.createElement("div");
    this.info.style.cssText = "font:11px monospace;color:#ccc;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;";
    this.root.append(bar, this.canvas, this.info);

    this.canvas.addEventListener("pointerdown", (e) => this.onDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onUp(e));
    this.canvas.addEventListener("dblclick", (e) => {
      e.preventDefault();
      e.stopPropagation();
      this.endTrack();
    });
    this.canvas.addEventListener("contextmenu", (e) => {
      e.preventDefault();
      e.stopPropagation();
      this.endTrack();
    });
    this.canvas.addEventListener("keydown", (e) => {
      if ((e.ctrlKey || e.metaKey) && e.key === "z") {
        e.preventDefault();
        e.stopPropagation();
        this.undo();
      } else if (e.key === "Enter" || e.key === "Escape") {
        this.endTrack();
      }
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

  undo() {
    const i = this.active >= 0 ? this.active : this.state.tracks.length - 1;
    if (i < 0) return;
    this.state.tracks[i].pop();
    if (!this.state.tracks[i].length) {
      this.state.tracks.splice(i, 1);
      this.active = -1;
    } else {
      this.active = i;
    }
    this.commit();
  }

  clear() {
    this.state.tracks = [];
    this.active = -1;
    if (this.image) {
      this.state.width = this.image.naturalWidth;
      this.state.height = this.image.naturalHeight;
    }
    this.commit();
  }

  onDown(e) {
    if (e.button !== 0) return;
    e.preventDefault();
    e.stopPropagation();
    this.canvas.focus();
    const p = this.toPicture(e);
    if (!p.inside) return;
    this.addPoint(p.x, p.y);
    this.dragging = true;
    this.dragFrom = [p.x, p.y];
    this.canvas.setPointerCapture?.(e.pointerId);
    this.draw();
  }

  onMove(e) {
    if (!this.dragging) return;
    e.preventDefault();
    e.stopPropagation();
    const p = this.toPicture(e);
    const [fx, fy] = this.dragFrom;
    if (Math.hypot(p.x - fx, p.y - fy) * p.scale >= DRAG_SPACING) {
      this.addPoint(p.x, p.y);
      this.dragFrom = [p.x, p.y];
      this.draw();
    }
  }

  onUp(e) {
    if (!this.dragging) return;
    e.stopPropagation();
    this.dragging = false;
    this.canvas.releasePointerCapture?.(e.pointerId);
    this.commit();
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
    const parts = this.state.tracks.map((t, k) => `${k + 1}: ${t.length} pt${t.length === 1 ? " (anchor)" : "s"}`);
    const size = `${Math.round(this.state.width)}x${Math.round(this.state.height)}`;
    this.info.textContent = parts.length ? `${size}  tracks ${parts.join(" | ")}` : `${size}  click to start a track`;
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
