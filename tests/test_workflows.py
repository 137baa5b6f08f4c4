"""Shipped workflows: current with their generator, well-formed for the frontend, API twins equal to the UI
files, and executed in-process through the node functions with tiny real-format checkpoints.

(The real frontend and a real ComfyUI server check the same files in tests/integration/.)
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from integration.env import tiny_env
from integration.executor import core_nodes, run_prompt, validate
from integration.prompts import shrink

REPO = Path(__file__).resolve().parents[1]
WF = REPO / "workflows"
NAMES = ["surgsora_trajectory_to_video", "surgsora_motion_preview", "surgsora_flow_from_video",
         "surgsora_mofa_trajectory_to_video", "surgsora_ttm_trajectory_to_video"]


@pytest.fixture(scope="module")
def env():
    return tiny_env()


@pytest.fixture(scope="module")
def maker(env):
    spec = importlib.util.spec_from_file_location("make_workflows", WF / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def info(maker):
    return maker.object_info()


def _ui(name):
    return json.loads((WF / f"{name}.json").read_text())


def _api(name):
    return json.loads((WF / "api" / f"{name}.json").read_text())


def test_files_are_what_the_generator_writes(maker, info):
    files = maker.build_all(info)
    assert {p.name for p in files} == {f"{n}.json" for n in NAMES}
    for path, text in files.items():
        assert path.read_text() == text, f"{path.relative_to(REPO)} is stale: run python workflows/make_workflows.py"
    # ComfyUI serves workflows/*.json as templates: nothing else may sit there
    assert sorted(p.stem for p in WF.glob("*.json")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_ui_file_is_a_valid_frontend_graph(name, maker, info):
    ui = _ui(name)
    assert ui["version"] == 0.4
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]) == ui["last_node_id"]
    types = {n["type"] for n in ui["nodes"]}
    core = set(json.loads(maker.CORE_SPEC.read_text()))
    assert types <= {t for t in info if t.startswith("SurgSora")} | core | {"Note"}, types
    assert any(t.startswith("SurgSora") for t in types)
    for n in ui["nodes"]:
        if n["type"] == "Note":
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


@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs_in_process_on_tiny_checkpoints(name, env, info):
    import nodes

    from surgsora.video_io import video_info

    out_dir = env.root / "output"
    classes = {**nodes.NODE_CLASS_MAPPINGS, **core_nodes(env.root / "input", out_dir)}
    results = run_prompt(shrink(_api(name)), classes, info)
    saved = [item for _, ui in results.values() for item in ui.get("images", [])]
    expected = {"surgsora_trajectory_to_video": {"motion_preview", "video"},
                "surgsora_motion_preview": {"motion_preview", "flow"},
                "surgsora_flow_from_video": {"reference_clip", "gt_flow", "gt_flow_video"},
                "surgsora_mofa_trajectory_to_video": {"motion_preview", "mofa_video"},
                "surgsora_ttm_trajectory_to_video": {"motion_signal", "ttm_video"}}[name]
    assert {s["filename"].rsplit("_", 2)[0] for s in saved} == expected
    for s in saved:
        meta = video_info(out_dir / s["subfolder"] / s["filename"])
        assert (meta["frames"], meta["width"], meta["height"]) == (5, 128, 64), s
