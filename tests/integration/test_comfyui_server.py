"""The pack in a real ComfyUI: server start-up, /object_info, the templates (workflows and thumbnails, nothing
else), every shipped workflow run over /prompt, Cancel during sampling, and (with Chromium) the real frontend loading
the UI workflows (API twin, nothing overlapping, the note in the stored view), the template browser and the editor.

Needs a ComfyUI checkout::

    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/venv/bin/python \\
        python -m pytest -q tests/integration

``COMFYUI_PYTHON`` (default: this interpreter) must have ComfyUI's requirements and this pack's
dependencies. The server runs with ``--cpu`` and ``--base-directory`` set to a temporary folder holding
a ``custom_nodes`` link to this checkout and the input files; models are tiny random checkpoints in the
real file formats, in a temporary folder given through ``--extra-model-paths-config``; the workflows run at
their shipped sizes with the models swapped as in the in-process run (``prompts.shrink``: the tiny SVD folder,
for MOFA the tiny SVD-xt-layout folder and ControlNet) and 2 steps. "SurgSora on Core KSampler" and "SurgSora
Dual-Clock Core Sampler" load SVD through ComfyUI's own ImageOnlyCheckpointLoader, which takes only a checkpoint
its detection calls SVD: they run on the smallest such file (``tiny_models.write_core_svd``: 1.75 GiB of random fp16
weights, written once when the first of them starts, shared, and deleted after the module) at the smallest sizes the
templates allow (``prompts.core_smallest``). The database is a
file in the temporary folder. Nothing in the ComfyUI checkout is modified. The frontend checks run when
a Chromium is found (``CHROMIUM``, ``chromium`` ...) and are skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

COMFYUI = os.environ.get("COMFYUI_PATH")
if not COMFYUI:
    pytest.skip("COMFYUI_PATH is not set: point it at a ComfyUI checkout (and COMFYUI_PYTHON at its Python) to run "
                "the real-server tests", allow_module_level=True)

from processes import free_port  # noqa: E402

from .frontend import Browser, WebSocket, find_chromium  # noqa: E402
from .prompts import core_smallest, cosmos_smallest, shrink, wan_smallest  # noqa: E402
from .tiny_models import (CORE_ADAPTER_NAME, CORE_SVD_NAME, MOFA_NAME, MOFA_SVD_FOLDER, SVD_FOLDER,  # noqa: E402
                          write_tiny_models)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
WF = REPO / "workflows"  # served as the pack's templates
API = REPO / "workflows_api"


def _generator():
    spec = importlib.util.spec_from_file_location("make_workflows", REPO / "workflows_src" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


GEN = _generator()
NAMES = [t.title for t in GEN.TEMPLATES]
PACK = "ComfyUI-SurgSora"
W, H = 640, 360  # the example image the templates and the editor tests load (demo/surgsora_endovis_frame6.png)
EXPECTED_OUTPUTS = {"SurgSora Trajectory to Video": {"motion_preview": 21, "video": 21},
                    "SurgSora Motion Preview": {"motion_preview": 21, "flow": 21},
                    "SurgSora Ground-Truth Flow": {"reference_clip": 14, "gt_flow": 14, "gt_flow_video": 14},
                    "SurgSora MOFA-Video-Traj": {"motion_preview": 25, "mofa_video": 25},
                    "SurgSora Dual-Clock SVD": {"motion_signal": 21, "ttm_video": 21}}
# The core-SVD templates run in tests of their own (test_core_ksampler_workflow_runs,
# test_core_dual_clock_workflow_runs): ComfyUI builds its SVD model only from a checkpoint its detection calls SVD,
# so they share one of their own (tiny_models.write_core_svd).
CORE = "SurgSora on Core KSampler"
CORE_DUAL = "SurgSora Dual-Clock Core Sampler"
# The Wan templates run on tiny Wan files under their real names (test_wan_dual_clock_workflow_runs)
WAN = {"SurgSora Dual-Clock Wan 2.2 14B": "wan_14b_dual_clock", "SurgSora Dual-Clock Wan 2.2 5B": "wan_5b_dual_clock"}
# The Cosmos-H-Surgical template runs on a tiny Cosmos file under the published name (test_cosmos_workflow_runs)
COSMOS = "SurgSora Dual-Clock Cosmos-H"
RUNNABLE = [n for n in NAMES if n in EXPECTED_OUTPUTS]
assert sorted(RUNNABLE + [CORE, CORE_DUAL, COSMOS] + list(WAN)) == sorted(NAMES)  # every shipped workflow runs


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.base = root / "base"
        (self.base / "custom_nodes").mkdir(parents=True)
        os.symlink(REPO, self.base / "custom_nodes" / PACK)  # input/ starts empty: the pack fills it (fresh install)
        self.models = root / "models"
        write_tiny_models(self.models, frames=21)
        yaml = root / "extra_model_paths.yaml"
        yaml.write_text("surgsora_test:\n  base_path: " + str(self.models) + "\n" + "".join(
            f"  {k}: {k}\n" for k in ("sams", "depthanything", "surgsora", "checkpoints", "diffusers",
                                      "diffusion_models", "vae", "text_encoders")))
        # test-only nodes for the Wan templates (Wan CONDITIONING without umt5, a Wan 2.2 VAE stand-in)
        shutil.copy(Path(__file__).with_name("wan_models.py"),
                    self.base / "custom_nodes" / "surgsora_wan_test_nodes.py")
        # and for the Cosmos template (its CONDITIONING without Cosmos-Reason1-7B)
        shutil.copy(Path(__file__).with_name("cosmos_models.py"),
                    self.base / "custom_nodes" / "surgsora_cosmos_test_nodes.py")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "w")
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        self.proc = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
             "--base-directory", str(self.base), "--extra-model-paths-config", str(yaml),
             "--database-url", f"sqlite:///{root / 'comfyui.db'}"],
            cwd=COMFYUI, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/object_info/SurgSoraTrajectories")
                return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"ComfyUI did not start within 300 s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        self.log.flush()
        return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-n:])

    def get(self, path: str):
        return json.loads(urllib.request.urlopen(self.url + path, timeout=30).read())

    def raw(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of a GET."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            raw = urllib.request.urlopen(req, timeout=60).read()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"POST {path}: {e.code} {e.read().decode(errors='replace')[:3000]}") from None
        return json.loads(raw) if raw.strip() else {}

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        return self.post("/prompt", {"prompt": prompt, "client_id": client_id or str(uuid.uuid4())})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 900) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_tail()}")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("comfyui"))
    yield s
    s.close()


def _api(name: str, steps: int = 2) -> dict:
    """The shipped API twin at its shipped sizes, on the tiny models (the same replacement as the in-process
    run: tiny SVD folder, for MOFA the tiny SVD-xt-layout folder and ControlNet) with few steps."""
    return shrink(json.loads((API / f"{name}.json").read_text()), steps=steps, small=False)


# ---------------------------------------------------------------------------------------------- server

def test_object_info_lists_every_node(server):
    from nodes import NODE_CLASS_MAPPINGS  # this pack (ComfyUI is not imported in the test process)

    info = server.get("/object_info")
    spec = json.loads(GEN.CORE_SPEC.read_text())
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert name in info, f"{name} missing from /object_info:\n{server.log_tail()}"
        assert info[name]["output"] == list(cls.RETURN_TYPES)
        assert info[name]["input_order"]["required"] == list(cls.INPUT_TYPES()["required"])
    # the core-node snapshot the workflow generator uses is this ComfyUI's
    for name, entry in spec.items():
        assert info[name]["input_order"] == entry["input_order"], name
        assert info[name]["output"] == entry["output"], name
    assert "sam_vit_b_01ec64.pth" in info["SurgSoraLoadSAM"]["input"]["required"]["model_name"][0]
    svds = info["SurgSoraLoadSVD"]["input"]["required"]["ckpt_name"][0]
    assert f"[diffusers] {SVD_FOLDER}" in svds and f"[diffusers] {MOFA_SVD_FOLDER}" in svds
    assert MOFA_NAME in info["SurgSoraLoadAdapter"]["input"]["required"]["adapter_name"][0]


def test_a_fresh_install_gets_the_templates_example_image_and_clip(server):
    """The base folder's input/ started empty: loading the pack copied the files the templates load, and ComfyUI
    lists and serves them."""
    from comfy_inputs import CLIP_FILE, EXAMPLE_INPUTS, FRAME_FILE

    for name, src in EXAMPLE_INPUTS.items():
        assert (server.base / "input" / name).read_bytes() == src.read_bytes(), name
        status, _, body = server.raw(f"/view?filename={urllib.parse.quote(name)}&type=input")
        assert status == 200 and body == src.read_bytes(), (name, status)
    images = server.get("/object_info/LoadImage")["LoadImage"]["input"]["required"]["image"][0]
    videos = server.get("/object_info/LoadVideo")["LoadVideo"]["input"]["required"]["file"]  # ["COMBO", {options}]
    assert FRAME_FILE in images and CLIP_FILE in videos[1]["options"]


def _template_url(name: str, ext: str) -> str:
    return f"/api/workflow_templates/{PACK}/{urllib.parse.quote(name)}.{ext}"


def test_workflows_are_served_as_templates_with_thumbnails(server):
    assert sorted(server.get("/workflow_templates")[PACK]) == sorted(NAMES)
    for name in NAMES:
        assert server.get(_template_url(name, "json")) == json.loads((WF / f"{name}.json").read_text())
        # the thumbnail the frontend asks for: <name>.jpg next to the workflow
        status, kind, body = server.raw(_template_url(name, "jpg"))
        assert (status, kind) == (200, "image/jpeg") and body == (WF / f"{name}.jpg").read_bytes(), (status, kind)
    # the generator, the core-node snapshot and the API twins are not served (they are not in workflows/)
    for path in ("make_workflows.py", "spec/core_object_info.json", f"api/{urllib.parse.quote(NAMES[0])}.json"):
        assert server.raw(f"/api/workflow_templates/{PACK}/{path}")[0] == 404, path


@pytest.mark.parametrize("name", RUNNABLE)
def test_api_workflow_runs(server, name):
    from surgsora.video_io import video_info

    t0 = time.time()
    prompt = _api(name)
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000] + server.log_tail()
    saved, previews = {}, {}
    for node_id, out in entry["outputs"].items():
        for item in out.get("images", []):
            path = server.base / item["type"] / item["subfolder"] / item["filename"]  # output/ or temp/
            assert path.is_file(), path
            if item["type"] == "output":
                saved[item["filename"].rsplit("_", 2)[0]] = video_info(path)
            else:
                previews.setdefault(node_id, []).append(path)
    assert {k: v["frames"] for k, v in saved.items()} == EXPECTED_OUTPUTS[name]
    assert all((v["width"], v["height"]) == (448, 256) for v in saved.values())
    # every Preview Image (tracks, SAM masks, depth) showed its picture
    assert set(previews) == {k for k, n in prompt.items() if n["class_type"] == "PreviewImage"}
    print(f"{name}: {time.time() - t0:.1f} s")


def test_cancel_stops_sampling_within_one_step(server):
    """Queue a long sampling, press Cancel (/interrupt) after its first step, watch the progress messages."""
    client = str(uuid.uuid4())
    ws = WebSocket(f"ws://127.0.0.1:{server.port}/ws?clientId={client}")
    full = _api("SurgSora Trajectory to Video", steps=400)  # perception and flow come from ComfyUI's cache
    sampler = next(k for k, n in full.items() if n["class_type"] == "SurgSoraSampler")
    prompt_id = server.queue(full, client)
    steps_seen, interrupted_at, ended = [], None, None
    deadline = time.time() + 900
    try:
        while time.time() < deadline and ended is None:
            msg = ws.recv()
            if isinstance(msg, bytes):
                continue
            msg = json.loads(msg)
            kind, data = msg.get("type"), msg.get("data", {})
            if kind == "progress" and data.get("node") == sampler and data.get("prompt_id") == prompt_id:
                steps_seen.append(data["value"])
                if interrupted_at is None:
                    interrupted_at = data["value"]
                    server.post("/interrupt", {})
            elif kind in ("execution_interrupted", "execution_error", "execution_success") \
                    and data.get("prompt_id") == prompt_id:
                ended = kind
    finally:
        ws.close()
    assert ended == "execution_interrupted", (ended, steps_seen, server.log_tail())
    assert interrupted_at is not None and max(steps_seen) <= interrupted_at + 1, steps_seen
    assert server.wait(prompt_id)["status"]["status_str"] == "error"


def _saved(server, entry) -> dict[str, Path]:
    """The files the prompt's Save nodes wrote (output/), by file-name prefix."""
    out = {}
    for item in (i for o in entry["outputs"].values() for i in o.get("images", [])):
        if item["type"] == "output":
            path = server.base / "output" / item["subfolder"] / item["filename"]
            assert path.is_file(), path
            out[item["filename"].rsplit("_", 2)[0]] = path
    return out


@pytest.fixture(scope="module")
def core_svd(server):
    """The SVD single file ComfyUI detects as SVD (checkpoints/svd_xt.safetensors, about 1.8 GiB of random fp16
    weights) and its SurgSora adapter, written into the server's models folder by a child process, whose memory
    (about 3 GB at its peak) is returned before ComfyUI loads the file; written once for both core-SVD templates
    and deleted after the module's tests."""
    t0 = time.time()
    code = "import sys; from integration.tiny_models import write_core_svd; write_core_svd(sys.argv[1])"
    path = os.pathsep.join([str(REPO / "tests"), str(REPO)] + ([os.environ["PYTHONPATH"]]
                                                                if os.environ.get("PYTHONPATH") else []))
    run = subprocess.run([sys.executable, "-c", code, str(server.models)], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": path}, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = server.models / "checkpoints" / CORE_SVD_NAME
    print(f"core SVD checkpoint: {ckpt.stat().st_size / 2 ** 30:.2f} GiB written in {time.time() - t0:.1f} s")
    yield ckpt
    ckpt.unlink()  # (pytest keeps the temporary folders of the last runs: do not leave 1.8 GiB in each)
    shutil.rmtree(server.models / "surgsora" / CORE_ADAPTER_NAME)


@pytest.fixture(scope="module")
def wan_files(server):
    """Tiny Wan files under the Comfy-Org names the Wan templates load (two A14B experts, the 5B, the Wan 2.1 VAE:
    :func:`.wan_models.write_tiny_wan`, built from ComfyUI's own classes by ComfyUI's Python)."""
    code = "import sys; from integration.wan_models import write_tiny_wan; write_tiny_wan(sys.argv[1])"
    path = os.pathsep.join([COMFYUI, str(REPO / "tests")])
    run = subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable), "-c", code, str(server.models)], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return server.models


def _error(entry) -> str:
    return next((m[1].get("exception_message", "") for m in entry["status"].get("messages", [])
                 if m[0] == "execution_error"), "")


@pytest.mark.parametrize("name", list(WAN))
def test_wan_dual_clock_workflow_runs(server, wan_files, name):
    """A Wan template on the real server at 128x64, 5 frames, 4 steps: core UNETLoader loads the tiny Wan file as Wan
    (WAN21 for the A14B experts, WAN22 for the 5B), the guider drives SamplerCustomAdvanced (for the 14B the
    high-noise stage of a SplitSigmas schedule, then core CFGGuider on the low-noise expert), VAEDecode makes the
    video. Both videos have the signal's frames and size."""
    from surgsora.video_io import video_info

    t0 = time.time()
    entry = server.wait(server.queue(wan_smallest(json.loads((API / f"{name}.json").read_text()))))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000] + server.log_tail()
    saved = _saved(server, entry)
    shapes = {k: (v["frames"], v["width"], v["height"]) for k, v in ((k, video_info(p)) for k, p in saved.items())}
    assert WAN[name] in shapes and set(shapes) <= {WAN[name], "motion_signal"}, shapes
    assert all(v == (5, 128, 64) for v in shapes.values()), shapes
    print(f"{name}: {time.time() - t0:.1f} s")


@pytest.fixture(scope="module")
def cosmos_file(server, wan_files):
    """The tiny Cosmos-H-Surgical DiT under the published name (:func:`.cosmos_models.write_tiny_cosmos`); the Wan 2.1
    VAE comes with ``wan_files``."""
    code = "import sys; from integration.cosmos_models import write_tiny_cosmos; write_tiny_cosmos(sys.argv[1])"
    path = os.pathsep.join([COMFYUI, str(REPO / "tests")])
    run = subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable), "-c", code, str(server.models)], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return server.models


def test_cosmos_workflow_runs(server, cosmos_file):
    """The Cosmos-H-Surgical template on the real server at 128x64, 5 frames, 4 UniPC steps: SurgSora Load
    Cosmos-H-Surgical loads the tiny file under the published name, SurgSora Cosmos Image to Video conditions it on
    the frame, the guider (its Cosmos preset) drives SamplerCustomAdvanced, VAEDecode makes the video."""
    from surgsora.video_io import video_info

    t0 = time.time()
    entry = server.wait(server.queue(cosmos_smallest(json.loads((API / f"{COSMOS}.json").read_text()))))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000] + server.log_tail()
    saved = _saved(server, entry)
    shapes = {k: (v["frames"], v["width"], v["height"]) for k, v in ((k, video_info(p)) for k, p in saved.items())}
    assert set(shapes) == {"cosmos_dual_clock", "motion_signal"}, shapes
    assert all(v == (5, 128, 64) for v in shapes.values()), shapes
    print(f"{COSMOS}: {time.time() - t0:.1f} s")


@pytest.mark.parametrize("change, message", [
    (dict(t_strong=0.9), "this stage runs steps 0 to 2"),  # past the high-noise stage
    (dict(frames=9), "has 5 frames but the video conditioning was made for 9"),
])
def test_wan_bad_inputs_are_one_sentence_before_sampling(server, wan_files, change, message):
    name = "SurgSora Dual-Clock Wan 2.2 14B"
    prompt = wan_smallest(json.loads((API / f"{name}.json").read_text()),
                          **{k: v for k, v in change.items() if k != "frames"})
    if "frames" in change:  # WanImageToVideo for another length than the trajectories
        (key,) = [k for k, n in prompt.items() if n["class_type"] == "WanImageToVideo"]
        prompt[key]["inputs"]["length"] = change["frames"]
    entry = server.wait(server.queue(prompt))
    text = _error(entry)
    assert entry["status"]["status_str"] == "error" and message in text and "\n" not in text.strip(), text


def test_core_ksampler_workflow_runs(server, core_svd):
    """The core-KSampler template on the real server: ImageOnlyCheckpointLoader loads the generated checkpoint as
    SVD (the prompt fails otherwise), core KSampler samples through SurgSora Apply (SVD) and VideoLinearCFGGuidance,
    at the smallest sizes the template allows (128x64, 2 frames, 2 steps). Both videos have those frames and size, the
    generated one is a picture, and the same prompt with strength 0 (plain SVD: only Apply and what follows it run
    again) gives a different video."""
    from surgsora.video_io import read_video, video_info

    template = json.loads((API / f"{CORE}.json").read_text())
    videos = {}
    try:
        for strength in (1.0, 0.0):
            t0 = time.time()
            entry = server.wait(server.queue(core_smallest(template, steps=2, strength=strength)))
            assert entry["status"]["status_str"] == "success", \
                json.dumps(entry["status"])[:3000] + server.log_tail()
            saved = _saved(server, entry)
            shapes = {k: (v["frames"], v["width"], v["height"]) for k, v in
                      ((k, video_info(p)) for k, p in saved.items())}
            # (at strength 0 the motion preview may be reported from ComfyUI's cache or not at all)
            expected = {"motion_preview", "core_ksampler"} if strength else {"core_ksampler"}
            assert expected <= set(saved) <= {"motion_preview", "core_ksampler"}, shapes
            assert all(v == (2, 128, 64) for v in shapes.values()), shapes
            videos[strength] = read_video(saved["core_ksampler"]).astype(np.float64)
            print(f"{CORE}, strength {strength}: {time.time() - t0:.1f} s")
    finally:  # ComfyUI keeps the models (2.5 GB) and the node outputs cached: let them go
        server.post("/free", {"unload_models": True, "free_memory": True})
    steered, plain = videos[1.0], videos[0.0]
    assert steered.std() > 2 and plain.std() > 2, (steered.std(), plain.std())
    diff = np.abs(steered - plain).mean()
    print(f"mean |strength 1 - strength 0| = {diff:.2f} / 255")
    assert diff > 2, diff


def test_core_dual_clock_workflow_runs(server, core_svd):
    """The dual-clock template on the real server, on the same generated checkpoint: the SurgSora Dual-Clock Guider
    drives core SamplerCustomAdvanced (RandomNoise, KSamplerSelect, BasicScheduler) on ComfyUI's SVD through
    VideoLinearCFGGuidance, at 128x64, 2 frames, 2 steps (t_weak 0.32 / t_strong 0.42 of 2 steps: start at step 1 from
    the signal noised to that sigma, the mask anchored to the end). The motion signal and the video have those frames
    and size and the video is a picture. The guider acts: with the motion mask emptied (core ThresholdMask: nothing
    follows the signal) the video changes, more inside the mask than outside it; with t_weak 0 (start from noise
    instead of the noised signal) it changes a lot. Only the guider, the sampler and what follows them run again."""
    from PIL import Image

    from surgsora.video_io import read_video, video_info

    from .prompts import empty_motion_mask

    prompt = core_smallest(json.loads((API / f"{CORE_DUAL}.json").read_text()), steps=2)
    signal = next(k for k, n in prompt.items() if n["class_type"] == "SurgSoraMotionSignal")
    prompt["900"] = {"inputs": {"mask": [signal, 1]}, "class_type": "MaskToImage"}  # to look at the motion mask
    prompt["901"] = {"inputs": {"images": ["900", 0]}, "class_type": "PreviewImage"}
    runs = {"template": prompt, "empty mask": empty_motion_mask(prompt), "t_weak 0": core_smallest(prompt, t_weak=0.0)}
    videos = {}
    try:
        for name, p in runs.items():
            t0 = time.time()
            entry = server.wait(server.queue(p))
            assert entry["status"]["status_str"] == "success", \
                json.dumps(entry["status"])[:3000] + server.log_tail()
            saved = _saved(server, entry)
            shapes = {k: (v["frames"], v["width"], v["height"]) for k, v in
                      ((k, video_info(path)) for k, path in saved.items())}
            # (after the first run the motion signal may be reported from ComfyUI's cache or not at all)
            expected = {"motion_signal", "core_dual_clock"} if name == "template" else {"core_dual_clock"}
            assert expected <= set(saved) <= {"motion_signal", "core_dual_clock"}, shapes
            assert all(v == (2, 128, 64) for v in shapes.values()), shapes
            videos[name] = read_video(saved["core_dual_clock"]).astype(np.float64)
            if name == "template":
                items = entry["outputs"]["901"]["images"]
                mask = np.stack([np.asarray(Image.open(server.base / i["type"] / i["subfolder"] / i["filename"])
                                            .convert("L")) for i in items]) > 127
            print(f"{CORE_DUAL}, {name}: {time.time() - t0:.1f} s")
    finally:  # ComfyUI keeps the models and the node outputs cached: let them go
        server.post("/free", {"unload_models": True, "free_memory": True})
    video = videos["template"]
    assert all(v.std() > 2 for v in videos.values()), {k: v.std() for k, v in videos.items()}
    assert mask.shape == video.shape[:3] and 0 < mask.mean() < 1, (mask.shape, mask.mean())
    free = np.abs(video - videos["empty mask"]).mean(-1)
    inside, outside = free[mask].mean(), free[~mask].mean()
    noise = np.abs(video - videos["t_weak 0"]).mean()
    print(f"mean |template - empty mask| = {free.mean():.2f} / 255 (inside the mask {inside:.2f}, outside "
          f"{outside:.2f}); mean |template - t_weak 0| = {noise:.2f}")
    assert free.mean() > 2 and inside > outside, (free.mean(), inside, outside)
    assert noise > 10, noise


# ---------------------------------------------------------------------------------------------- frontend

@pytest.fixture(scope="module")
def browser(server):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found (set CHROMIUM): the frontend checks need a headless browser")
    # A fresh user would get the first-run template browser on top of the canvas, and the MOFA and TTM
    # workflows list their models (node properties) under the shipped names, which the tiny models here do not
    # all have (the SVD single file, MOFA's ControlNet): the Missing Models dialog would cover the editor.
    server.post("/settings", {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False})
    b = Browser(chromium)
    b.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
    b.goto(server.url + "/")
    b.wait_for("!!(window.comfyAPI?.app?.app?.graph && window.LiteGraph?.registered_node_types"
               "['SurgSoraTrajectories'] && window.comfyAPI.app.app.extensions.some("
               "e => e.name === 'SurgSora.TrajectoryEditor'))", timeout=180)
    yield b
    b.close()


LOAD = """
(async () => {
  const app = window.comfyAPI.app.app;
  const name = NAME;
  const wf = await (await fetch('/api/workflow_templates/PACK/' + encodeURIComponent(name) + '.json')).json();
  await app.loadGraphData(wf, true, true, name);
  await new Promise(r => setTimeout(r, 1500));
  // the example image the template loads, as the Load Image node shows it (the pack copied it into input/)
  const li = app.graph.nodes.find(n => n.type === 'LoadImage');
  for (let i = 0; i < 40 && li && !li.imgs?.[0]?.naturalWidth; i++) await new Promise(r => setTimeout(r, 250));
  const example = li ? [li.imgs?.[0]?.naturalWidth ?? 0, li.imgs?.[0]?.naturalHeight ?? 0] : null;
  const lv = app.graph.nodes.find(n => n.type === 'LoadVideo');
  const video = () => lv?.videoContainer?.querySelector('video');
  for (let i = 0; i < 40 && lv && !video()?.videoWidth; i++) await new Promise(r => setTimeout(r, 250));
  const clip = lv ? [video()?.videoWidth ?? 0, video()?.videoHeight ?? 0] : null;
  const missing = app.graph.nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type);
  const links = app.graph.links.values ? [...app.graph.links.values()] : Object.values(app.graph.links);
  const bad = [];
  for (const l of links) {
    if (!l) continue;
    const o = app.graph.getNodeById(l.origin_id), t = app.graph.getNodeById(l.target_id);
    const ot = o?.outputs[l.origin_slot]?.type, it = t?.inputs[l.target_slot]?.type;
    if (!ot || !it || !LiteGraph.isValidConnection(ot, it)) bad.push([l.id, ot, it]);
  }
  // geometry as the frontend draws it: node boxes (title bar included), what each node needs, group members
  const nodes = app.graph.nodes.map(n => ({id: n.id, type: n.type, size: [...n.size], needs: [...n.computeSize()],
                                           box: [...n.boundingRect]}));
  for (const g of app.graph.groups) g.recomputeInsideNodes();
  const groups = app.graph.groups.map(g => ({title: g.title, box: [...g._bounding], nodes: g.nodes.map(n => n.id)}));
  // the stored view: the note's text on screen, uncovered, all of it shown
  const note = app.graph.nodes.find(n => n.type === 'MarkdownNote');
  const el = note.widgets[0].element;
  const text = el.querySelector('.ProseMirror') || el;
  const box = el.getBoundingClientRect(), last = text.lastElementChild.getBoundingClientRect();
  const at = (x, y) => el.contains(document.elementFromPoint(x, y));
  const view = {ds: {scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset]}, lowQuality: app.canvas.low_quality,
                box: [box.x, box.y, box.width, box.height], textBottom: last.bottom,
                visible: at(box.x + 4, box.y + 4) && at(box.x + box.width / 2, box.y + box.height / 2)
                         && at(box.right - 4, last.bottom - 2),
                window: [window.innerWidth, window.innerHeight]};
  const p = await app.graphToPrompt();
  return {missing, bad, prompt: p.output, ui: app.graph.serialize(), nodes, groups, view, example, clip};
})()
"""


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_loads_in_the_real_frontend(browser, name):
    r = browser.evaluate(LOAD.replace("PACK", PACK).replace("NAME", json.dumps(name)))
    assert r["missing"] == [] and r["bad"] == []
    ui = json.loads((WF / f"{name}.json").read_text())
    # the example image and clip resolve (the pack copied them into input/): the nodes show them at 640x360
    if any(n["type"] == "LoadImage" for n in ui["nodes"]):
        assert r["example"] == [640, 360], r["example"]
    prompt = r["prompt"]
    if any(n["type"] == "LoadVideo" for n in ui["nodes"]):
        assert r["clip"] == [640, 360], r["clip"]
        # once the clip has loaded, frontend 1.35.9 sends its preview widget's empty value too ('video-preview',
        # not an input of LoadVideo: ComfyUI ignores it); the API twin leaves it out
        for node in prompt.values():
            if node["class_type"] == "LoadVideo":
                assert node["inputs"].pop("video-preview") == ""
    assert prompt == json.loads((API / f"{name}.json").read_text())  # graphToPrompt == API twin
    loaded = {n["id"]: n for n in r["ui"]["nodes"]}
    for node in ui["nodes"]:  # the frontend writes the file back as it is
        for key in ("type", "inputs", "outputs", "widgets_values", "properties", "mode", "pos", "size"):
            assert loaded[node["id"]].get(key) == node.get(key), (node["id"], node["type"], key)
    assert r["ui"]["links"] == ui["links"] and r["ui"]["groups"] == ui["groups"]

    # nothing overlaps as the frontend draws it: every node at least the size it needs, no two node boxes
    # meet, each node in at most one group (all but the note in one), no two groups meet
    nodes = r["nodes"]
    for n in nodes:
        # a loaded clip's preview asks for the width of its node at load time plus margins (frontend 1.35.9), a width
        # no Load Video size meets: it is held to its height here, and the box checks below take it as drawn
        wide_enough = n["type"] == "LoadVideo" or n["needs"][0] <= n["size"][0] + 0.5
        assert wide_enough and n["needs"][1] <= n["size"][1] + 0.5, n
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            assert not _overlap(a["box"], b["box"]), (a["id"], a["type"], b["id"], b["type"])
    for i, a in enumerate(r["groups"]):
        for b in r["groups"][i + 1:]:
            assert not _overlap(a["box"], b["box"]), (a["title"], b["title"])
    members = [nid for g in r["groups"] for nid in g["nodes"]]
    assert len(members) == len(set(members))
    assert set(members) == {n["id"] for n in nodes if n["type"] != "MarkdownNote"}

    # the stored view is restored and shows the whole note, uncovered, at a zoom where text is drawn
    view = r["view"]
    assert view["ds"] == ui["extra"]["ds"] and not view["lowQuality"]
    x, y, w, h = view["box"]
    assert x >= 0 and y >= 0 and x + w <= view["window"][0] and y + h <= view["window"][1], view
    assert view["textBottom"] <= y + h and view["visible"], view


BROWSE = """
(async () => {
  const app = window.comfyAPI.app.app;
  await app.extensionManager.command.execute('Comfy.BrowseTemplates');
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  let item = null;
  for (let i = 0; i < 40 && !item; i++) {
    await sleep(250);
    item = [...document.querySelectorAll('*')].find(e => e.children.length === 0 && e.textContent.trim() === 'PACK');
  }
  if (!item) return {error: 'no category PACK in the template browser'};
  item.closest('[role="button"],button,a,li,div').click();
  await sleep(2000);
  const cards = [...document.querySelector('[data-testid="template-workflows-content"]').children];
  // the browser draws a card's thumbnail only while the card is in view (more cards than fit the dialog): read
  // each card scrolled into view
  const out = [];
  for (const c of cards) {
    c.scrollIntoView({block: 'center'});
    for (let i = 0; i < 20 && !c.querySelector('img')?.complete; i++) await sleep(250);
    const h3 = c.querySelector('h3'), p = c.querySelector('p'), img = c.querySelector('img');
    const cut = h3 ? h3.scrollHeight > h3.clientHeight + 1 || h3.scrollWidth > h3.clientWidth + 1 : null;
    out.push({title: h3?.textContent.trim(), cut,
              description: p?.textContent.trim(), image: img ? [img.naturalWidth, img.naturalHeight] : null});
  }
  const dialog = document.querySelector('.workflow-template-selector-dialog');
  const close = [...dialog.querySelectorAll('button')].find(b => /close/i.test(b.getAttribute('aria-label') || '') || b.querySelector('[class*="lucide--x"],.pi-times'));
  close?.click();
  await sleep(500);
  return {cards: out, stillOpen: !!document.querySelector('.workflow-template-selector-dialog')};
})()
"""


def test_template_browser_shows_titles_and_thumbnails(browser):
    """Workflow > Browse Templates, the pack's category: one card per workflow with its title in full and its
    EndoVis thumbnail (the frontend shows the file name, '-' and '_' read as spaces, as the description)."""
    r = browser.evaluate(BROWSE.replace("PACK", PACK))
    assert "error" not in r, r
    cards = {c["title"]: c for c in r["cards"]}
    assert sorted(cards) == sorted(NAMES), r
    for name, card in cards.items():
        assert not card["cut"], card
        assert card["description"] == name.replace("-", " ").replace("_", " ")
        assert card["image"] == [GEN.THUMB_SIZE, GEN.THUMB_SIZE], card
    assert not r["stillOpen"]  # Escape closes it again (the editor tests below need the canvas)


def test_editor_draws_tracks_with_the_mouse(browser, server):
    setup = """
    (async () => {
      const app = window.comfyAPI.app.app;
      app.graph.clear();
      const li = LiteGraph.createNode("LoadImage"); app.graph.add(li); li.pos = [20, 40];
      li.widgets[0].value = "surgsora_endovis_frame6.png";
      const tr = LiteGraph.createNode("SurgSoraTrajectories"); app.graph.add(tr); tr.pos = [380, 40];
      tr.setSize([640, 760]);
      li.connect(0, tr, 0);
      app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1; app.graph.setDirtyCanvas(true, true);
      window.__tr = tr;
      await new Promise(r => setTimeout(r, 2500));
      const c = tr.surgsoraEditor.canvas.getBoundingClientRect();
      const b = [...tr.surgsoraEditor.root.querySelectorAll('button')].map(x => {
        const r = x.getBoundingClientRect(); return [x.textContent, r.x + r.width / 2, r.y + r.height / 2]; });
      return {canvas: [c.x, c.y, c.width, c.height], buttons: b, hasImage: !!tr.surgsoraEditor.image,
              size: [tr.surgsoraEditor.state.width, tr.surgsoraEditor.state.height]};
    })()
    """
    r = browser.evaluate(setup)
    assert r["hasImage"] and r["size"] == [W, H]  # the upstream Load Image is the background
    x0, y0, w, h = r["canvas"]
    scale = min(w / W, h / H)
    ox, oy = x0 + (w - W * scale) / 2, y0 + (h - H * scale) / 2

    def at(px, py):  # picture pixels -> page coordinates
        return ox + px * scale, oy + py * scale

    def mouse(kind, x, y, buttons=1):
        browser.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=buttons, clickCount=1)

    hit = browser.evaluate(f"document.elementFromPoint({at(170, 190)[0]}, {at(170, 190)[1]}) === "
                           "window.__tr.surgsoraEditor.canvas")
    assert hit, "something covers the editor canvas"

    def click(x, y):
        mouse("mousePressed", x, y)
        mouse("mouseReleased", x, y, 0)

    click(*at(170, 190))  # track 1: click, click
    click(*at(180, 240))
    end = next(b for b in r["buttons"] if b[0] == "End track")
    click(end[1], end[2])
    x, y = at(420, 190)  # track 2: drag
    mouse("mousePressed", x, y)
    for k in range(1, 11):
        mouse("mouseMoved", *at(420 + 7 * k, 190 - 3.5 * k))
    mouse("mouseReleased", *at(490, 155), 0)
    text = browser.evaluate("window.__tr.widgets.find(w => w.name === 'tracks').value")
    data = json.loads(text)
    assert (data["width"], data["height"]) == (W, H) and len(data["tracks"]) == 2
    t1, t2 = data["tracks"]
    assert len(t1) == 2 and abs(t1[0][0] - 170) < 2 and abs(t1[1][1] - 240) < 2
    assert len(t2) >= 4 and t2[-1][0] > t2[0][0] + 50  # points added along the drag
    undo = next(b for b in r["buttons"] if b[0] == "Undo")
    click(undo[1], undo[2])
    after = json.loads(browser.evaluate("window.__tr.widgets.find(w => w.name === 'tracks').value"))
    assert len(after["tracks"][1]) == len(t2) - 1
    # the drawn JSON is what the node runs on
    prompt = browser.evaluate("window.comfyAPI.app.app.graphToPrompt().then(p => p.output)")
    node = next(n for n in prompt.values() if n["class_type"] == "SurgSoraTrajectories")
    assert json.loads(node["inputs"]["tracks"]) == after


# ---------------------------------------------------------------------------------------------- editor editing

EDITOR = """
(async () => {
  const app = window.comfyAPI.app.app;
  const example = EXAMPLE;
  app.graph.clear();
  const li = LiteGraph.createNode("LoadImage"); app.graph.add(li); li.pos = [20, 40];
  li.widgets[0].value = "surgsora_endovis_frame6.png";
  let tr = LiteGraph.createNode("SurgSoraTrajectories"); app.graph.add(tr); tr.pos = [380, 40];
  li.connect(0, tr, 0);
  tr.setSize([640, 760]);
  if (example) {  // opened as a workflow file with example tracks: a fresh change-tracker history starts there
    tr.widgets.find(w => w.name === 'tracks').value = example;
    await app.loadGraphData(app.graph.serialize(), true, true, 'surgsora_editor_example');
    tr = app.graph.nodes.find(n => n.type === 'SurgSoraTrajectories');
  }
  app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0];
  app.graph.setDirtyCanvas(true, true);
  window.__tr = tr;
  await new Promise(r => setTimeout(r, 2500));
  const ed = tr.surgsoraEditor;
  const c = ed.canvas.getBoundingClientRect();
  const b = [...ed.root.querySelectorAll('button')].map(x => {
    const r = x.getBoundingClientRect(); return [x.textContent, r.x + r.width / 2, r.y + r.height / 2]; });
  return {canvas: [c.x, c.y, c.width, c.height], buttons: b, hasImage: !!ed.image,
          size: [ed.state.width, ed.state.height]};
})()
"""


class _Editor:
    """The editor of one SurgSora Trajectories node (fed by a Load Image) on screen, driven with real mouse and
    key events; with ``example`` tracks the graph is loaded as a workflow file holding them. ``at`` maps
    picture pixels to page coordinates."""

    def __init__(self, browser, example: str | None = None):
        self.b = browser
        r = browser.evaluate(EDITOR.replace("EXAMPLE", json.dumps(example)))
        assert r["hasImage"] and r["size"] == [W, H], r
        self.buttons = {label: (x, y) for label, x, y in r["buttons"]}
        x, y = self.at(W / 2, H / 2)
        covered = browser.evaluate(f"document.elementFromPoint({x}, {y}) !== "
                                   "window.__tr.surgsoraEditor.canvas")
        assert not covered, "something covers the editor canvas"

    def at(self, px, py):
        # measured each time: the canvas gives up height when the info line wraps onto one more line
        x0, y0, w, h = self.b.evaluate("(() => { const r = window.__tr.surgsoraEditor.canvas.getBoundingClientRect();"
                                       " return [r.x, r.y, r.width, r.height]; })()")
        s = min(w / W, h / H)
        return x0 + (w - W * s) / 2 + px * s, y0 + (h - H * s) / 2 + py * s

    def press(self, label: str) -> None:
        self.b.click(*self.buttons[label])

    def text(self) -> str:
        return self.b.evaluate("window.__tr.widgets.find(w => w.name === 'tracks').value")

    def tracks(self) -> list:
        text = self.text()
        return json.loads(text)["tracks"] if text else []

    def same_node(self) -> bool:
        """False once ComfyUI's global undo has reloaded the graph (it builds new node objects)."""
        return self.b.evaluate("window.comfyAPI.app.app.graph.getNodeById(window.__tr.id) === window.__tr")

    def active(self) -> int:
        return self.b.evaluate("window.__tr.surgsoraEditor.active")


def _same(tracks, expected, tol=2.0) -> bool:
    """Same tracks point for point (clicks land on whole page pixels: up to about one picture pixel off)."""
    return len(tracks) == len(expected) and all(
        len(t) == len(e) and all(abs(p[0] - q[0]) <= tol and abs(p[1] - q[1]) <= tol for p, q in zip(t, e))
        for t, e in zip(tracks, expected))


def test_editor_double_click_ends_the_track_with_the_clicked_points(browser, server):
    ed = _Editor(browser)
    pts = [(167, 187), (180, 240), (233, 267)]
    browser.click(*ed.at(*pts[0]))
    browser.click(*ed.at(*pts[1]))
    browser.double_click(*ed.at(*pts[2]))
    assert _same(ed.tracks(), [pts]), ed.tracks()  # no second copy of the last point
    assert ed.active() == -1  # the track is finished: the next click starts another
    browser.click(*ed.at(333, 100))
    browser.double_click(*ed.at(400, 100))
    assert _same(ed.tracks(), [pts, [(333, 100), (400, 100)]]), ed.tracks()
    browser.double_click(*ed.at(500, 300))  # a double-click on its own is a static anchor
    assert _same(ed.tracks(), [pts, [(333, 100), (400, 100)], [(500, 300)]]), ed.tracks()


def test_editor_keeps_ctrl_z_to_itself(browser, server):
    """Ctrl+Z / Ctrl+Y / Ctrl+Shift+Z step through the editor's own history; ComfyUI's global undo (which
    reloads the graph from its history, e.g. with the template's example tracks) never runs meanwhile."""
    demo = json.loads(GEN.EXAMPLE_TRACKS.read_text())  # the shipped workflows' tracks: two paths, two anchors
    example = json.dumps({"width": demo["width"], "height": demo["height"],
                          "tracks": demo["tracks"][:2] + demo["tracks"][4:6]})
    ed = _Editor(browser, example)
    assert ed.text() == example
    ed.press("Clear")
    pts = [(133, 100), (200, 133), (267, 167), (333, 200)]
    for p in pts:
        browser.click(*ed.at(*p))
    ed.press("End track")  # the focus goes back to the editor: the keys still reach it
    assert _same(ed.tracks(), [pts])

    def step(key, *mods):
        browser.shortcut(key, *mods)
        time.sleep(0.6)  # the change tracker acts in the next animation frame, then reloads the graph
        assert ed.same_node(), f"{'+'.join(mods)}+{key} reached ComfyUI's global undo/redo"
        return ed.tracks()

    for k in (3, 2, 1, 0):
        tracks = step("z", "ctrl")
        assert ed.text() != example and _same(tracks, [pts[:k]] if k else []), (k, tracks)
    assert step("z", "ctrl") == json.loads(example)["tracks"]  # the fifth undoes Clear, in the editor
    assert step("y", "ctrl") == []
    assert _same(step("z", "ctrl", "shift"), [pts[:1]])
    assert _same(step("y", "ctrl"), [pts[:2]])
    # ComfyUI's own undo (its menu, or Ctrl+Z outside the editor) agrees: the editor recorded each of its states
    browser.evaluate("window.comfyAPI.app.app.extensionManager.command.execute('Comfy.Undo')")
    time.sleep(1)
    assert not ed.same_node()  # the global undo reloaded the graph ...
    text = browser.evaluate("window.comfyAPI.app.app.graph.nodes.find(n => n.type === 'SurgSoraTrajectories')"
                            ".widgets.find(w => w.name === 'tracks').value")
    assert _same(json.loads(text)["tracks"], [pts[:1]]), text  # ... one editor step back, not the example tracks


def test_editor_moves_and_deletes_points(browser, server):
    ed = _Editor(browser)
    a, b, c, moved = (167, 187), (233, 200), (300, 213), (253, 273)
    for p in (a, b, c):
        browser.click(*ed.at(*p))
    ed.press("End track")
    browser.drag([ed.at(*b)] + [ed.at(b[0] + (moved[0] - b[0]) * k / 8, b[1] + (moved[1] - b[1]) * k / 8)
                                for k in range(1, 9)])
    assert _same(ed.tracks(), [[a, moved, c]]), ed.tracks()  # moved, nothing added along the way
    shift = browser.MODIFIERS["shift"]
    browser.click(*ed.at(*c), modifiers=shift)
    assert _same(ed.tracks(), [[a, moved]]), ed.tracks()
    browser.click(*ed.at(*a), modifiers=shift)
    assert _same(ed.tracks(), [[moved]]), ed.tracks()
    browser.click(*ed.at(500, 67), modifiers=shift)  # Shift+click on nothing: no point
    assert _same(ed.tracks(), [[moved]]), ed.tracks()
    d, e = (400, 100), (433, 167)  # right-click ends a track, even on its last point: it deletes nothing
    browser.click(*ed.at(*d))
    browser.click(*ed.at(*e))
    browser.click(*ed.at(*e), button="right")
    assert _same(ed.tracks(), [[moved], [d, e]]) and ed.active() == -1, ed.tracks()
    browser.click(*ed.at(*e), modifiers=shift)  # a track goes with its last point
    browser.click(*ed.at(*d), modifiers=shift)
    assert _same(ed.tracks(), [[moved]]), ed.tracks()
    for expected in ([[moved], [d]], [[moved], [d, e]], [[moved], [d]], [[moved]], [[a, moved]], [[a, moved, c]],
                     [[a, b, c]]):  # each edit is one undo step
        browser.shortcut("z", "ctrl")
        assert _same(ed.tracks(), expected), (expected, ed.tracks())
    assert ed.same_node()


def test_editor_info_line_wraps_with_many_tracks(browser, server):
    _Editor(browser)
    many = {"width": W, "height": H,
            "tracks": [[[13 + 15 * k, 33], [13 + 15 * k, 100 + 3 * k]] for k in range(35)] + [[[300, 300]]] * 5}
    r = browser.evaluate("""(async () => {
      const w = window.__tr.widgets.find(w => w.name === 'tracks');
      w.value = TEXT; w.callback?.(w.value);
      await new Promise(r => setTimeout(r, 300));
      const ed = window.__tr.surgsoraEditor;
      const box = (el) => { const r = el.getBoundingClientRect(); return [r.top, r.bottom, r.left, r.right]; };
      return {text: ed.info.textContent, scroll: [ed.info.scrollWidth, ed.info.clientWidth, ed.info.scrollHeight,
              ed.info.clientHeight], info: box(ed.info), help: box(ed.help), root: box(ed.root), canvas: box(ed.canvas),
              line: parseFloat(getComputedStyle(ed.info).fontSize)};
    })()""".replace("TEXT", json.dumps(json.dumps(many))))
    assert "40 tracks" in r["text"] and r["text"].endswith("40:\u00a0anchor"), r["text"]
    sw, cw, sh, ch = r["scroll"]
    assert sw <= cw and sh <= ch, r  # nothing cut off sideways or below
    assert r["info"][1] - r["info"][0] > 3 * r["line"], r  # it spans lines
    top, bottom, left, right = r["root"]
    for name in ("info", "help", "canvas"):  # all inside the node's widget area, the canvas keeps its room
        t, b_, lft, rgt = r[name]
        assert top - 0.5 <= t and b_ <= bottom + 0.5 and left - 0.5 <= lft and rgt <= right + 0.5, (name, r)
    assert r["canvas"][1] - r["canvas"][0] >= 120
