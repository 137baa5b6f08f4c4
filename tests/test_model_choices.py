"""Loader lists and prompt validation (VALIDATE_INPUTS): only files present are listed plain, known public files
that are absent appear as "<name> (download)", and every choice that cannot run fails when the prompt is queued,
with one sentence, before any node runs and without touching the network.

The models folders are a temporary ComfyUI-style ``models`` tree (``nodes.models.folder_roots`` points at it);
the network steps of the catalogue are replaced.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import replace

import pytest
import torch

import surgsora.loading.catalogue as cat

LOADERS = {  # node -> (component, model widget, models sub-folder of the known files, a known file)
    "SurgSoraLoadSAM": ("sam", "model_name", "sams", "sam_vit_h_4b8939.pth"),
    "SurgSoraLoadDepthAnything": ("depth", "model_name", "depthanything", "depth_anything_v2_vitl.pth"),
    "SurgSoraLoadSVD": ("svd", "ckpt_name", "checkpoints", "svd_xt.safetensors"),
    "SurgSoraLoadAdapter": ("adapter", "adapter_name", "surgsora", "mofa_traj_controlnet.safetensors"),
    "SurgSoraLoadTrajectoryDecoder": ("cmp", "decoder", "surgsora", "ckpt_iter_42000.pth.tar"),
}


@pytest.fixture
def models(tmp_path, monkeypatch):
    """An empty ComfyUI-style models folder that the loaders look in."""
    import nodes.models

    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setattr(nodes.models, "folder_roots", lambda folder: [root / folder])
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test."""
    import nodes.models

    def fail(*a, **k):
        pytest.fail("the network was touched")

    monkeypatch.setattr(cat, "_fetch_url", fail)
    monkeypatch.setattr(cat, "_fetch_hf", fail)
    monkeypatch.setattr(nodes.models, "download_model", fail)


def _cls(name):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[name]


def _choices(node):
    _, widget, _, _ = LOADERS[node]
    return _cls(node).INPUT_TYPES()["required"][widget][0]


def _validate(node, value, download=False):
    _, widget, _, _ = LOADERS[node]
    return _cls(node).VALIDATE_INPUTS(**{widget: value, "download": download})


def _one_sentence(answer):
    assert isinstance(answer, str) and "\n" not in answer and answer.endswith("."), answer
    return answer


# ------------------------------------------------------------------------------------------------- lists

def test_lists_only_present_files_plain_and_marks_known_downloads(models, no_network):
    from nodes.models import DOWNLOAD_MARK, download_entry

    assert DOWNLOAD_MARK == " (download)" and download_entry("a.pth") == "a.pth (download)"
    # nothing on disk: only the known public files, all marked, best first
    assert _choices("SurgSoraLoadSAM") == ["sam_vit_h_4b8939.pth (download)", "sam_vit_l_0b3195.pth (download)",
                                           "sam_vit_b_01ec64.pth (download)"]
    assert _choices("SurgSoraLoadAdapter") == ["mofa_traj_controlnet.safetensors (download)"]
    assert _choices("SurgSoraLoadTrajectoryDecoder") == ["analytic", "ckpt_iter_42000.pth.tar (download)"]
    assert not [c for c in _choices("SurgSoraLoadSVD") if not c.endswith(DOWNLOAD_MARK)]

    # files present: listed plain, first; a known file present is no longer offered for download
    (models / "sams").mkdir()
    (models / "sams" / "sam_vit_b_01ec64.pth").write_bytes(b"x")
    (models / "sams" / "my_sam.pth").write_bytes(b"x")
    assert _choices("SurgSoraLoadSAM") == ["my_sam.pth", "sam_vit_b_01ec64.pth", "sam_vit_h_4b8939.pth (download)",
                                           "sam_vit_l_0b3195.pth (download)"]
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / "svd_xt.safetensors").write_bytes(b"x")
    (models / "diffusers" / "svd").mkdir(parents=True)
    (models / "diffusers" / "svd" / "model_index.json").write_text("{}")
    svd = _choices("SurgSoraLoadSVD")
    assert svd[:2] == ["svd_xt.safetensors", "[diffusers] svd"]
    assert "svd_xt.safetensors (download)" not in svd and "svd_xt_1_1.safetensors (download)" in svd


# ------------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("node", sorted(LOADERS))
def test_a_marked_entry_with_download_off_fails_validation_with_the_way_out(node, models, no_network):
    _, _, folder, known = LOADERS[node]
    assert f"{known} (download)" in _choices(node)
    answer = _one_sentence(_validate(node, f"{known} (download)", download=False))
    assert known in answer and str(models / folder) in answer and "'download' on" in answer
    assert cat.KNOWN_FILES[known].source in answer  # where to get it by hand
    # with download on the entry validates (it is fetched when the node runs, not now)
    assert _validate(node, f"{known} (download)", download=True) is True
    assert not (models / folder / known).exists()


@pytest.mark.parametrize("node", sorted(LOADERS))
def test_a_plain_name_that_is_not_there_fails_validation(node, models, no_network):
    """A shipped workflow names svd_xt.safetensors; on a machine without it the prompt is refused when queued,
    naming the folder and the '(download)' entry, not ComfyUI's bare 'value not in list' nor a failure mid-run."""
    _, _, folder, known = LOADERS[node]
    answer = _one_sentence(_validate(node, known))
    assert known in answer and str(models / folder) in answer and f"'{known} (download)'" in answer
    assert _validate(node, known, download=True) is True  # the switch on: fetched under its plain name too
    answer = _one_sentence(_validate(node, "no_such_model.safetensors"))
    assert "no_such_model.safetensors was not found in" in answer and str(models) in answer
    # present: valid, as plain names (what shipped workflows store)
    path = models / folder / known
    path.parent.mkdir(parents=True, exist_ok=True)
    if node == "SurgSoraLoadAdapter":  # listed only when its header says MOFA's ControlNet
        from safetensors.torch import save_file

        save_file({"controlnet_cond_embedding.conv_in.weight": torch.zeros(1)}, str(path))
    else:
        path.write_bytes(b"x")
    assert _validate(node, known) is True
    # a marked entry saved in a workflow before the file arrived still validates, and resolves to the file
    assert _validate(node, f"{known} (download)") is True
    from nodes.models import resolve_model

    assert resolve_model(LOADERS[node][0], f"{known} (download)") == path


def test_validation_of_special_names(models, no_network, tmp_path):
    (models / "diffusers" / "svd").mkdir(parents=True)
    (models / "diffusers" / "svd" / "model_index.json").write_text("{}")
    (models / "diffusers" / "broken").mkdir()
    (models / "diffusers" / "broken" / "model_index.json").write_text("{cut")
    assert _validate("SurgSoraLoadSVD", "[diffusers] svd") is True
    assert "is corrupt" in _one_sentence(_validate("SurgSoraLoadSVD", "[diffusers] broken"))
    assert "[diffusers] broken" in _choices("SurgSoraLoadSVD")  # listed, so choosing it says what is wrong
    assert "inside the models folder" in _validate("SurgSoraLoadSVD", "../../etc/passwd")
    assert "not a file this loader can download" in _validate("SurgSoraLoadSVD", "evil.safetensors (download)")
    assert "not a file this loader can download" in _validate("SurgSoraLoadSVD", "sam_vit_b_01ec64.pth (download)")
    # a symlinked file (Hugging Face cache) is a file present
    blob = tmp_path / "hf" / "blobs" / "abc"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"x")
    (models / "sams").mkdir()
    (models / "sams" / "sam_vit_b_01ec64.pth").symlink_to(blob)
    assert "sam_vit_b_01ec64.pth" in _choices("SurgSoraLoadSAM") and _validate("SurgSoraLoadSAM",
                                                                             "sam_vit_b_01ec64.pth") is True
    # on disk but not a file the loader lists (another kind): refused as ComfyUI's list check would
    (models / "sams" / "notes.txt").write_text("x")
    answer = _one_sentence(_validate("SurgSoraLoadSAM", "notes.txt"))
    assert "notes.txt is not a Segment Anything v1 checkpoint" in answer and "does not list it" in answer
    # the decoder's built-in choice, and a widget linked to another node (value unknown until it runs)
    assert _validate("SurgSoraLoadTrajectoryDecoder", "analytic") is True
    assert _validate("SurgSoraLoadSVD", None) is True


def test_validation_never_touches_the_network(models, no_network):
    for node, (_, _, _, known) in LOADERS.items():
        for download in (False, True):
            for name in (known, f"{known} (download)", "missing.pth"):
                _validate(node, name, download)
    assert not [p for p in models.rglob("*") if p.is_file()]  # and writes nothing


# ------------------------------------------------------------------------------------------------- download

DATA = b"fake SAM weights " * 64
SHA = hashlib.sha256(DATA).hexdigest()


def test_a_marked_entry_with_download_on_is_fetched_when_the_loader_runs(models, monkeypatch):
    import nodes.perception

    known = replace(cat.KNOWN_FILES["sam_vit_b_01ec64.pth"], size=len(DATA), sha256_prefix=SHA[:8],
                    sha256_suffix=SHA[-4:])
    monkeypatch.setitem(cat.KNOWN_FILES, known.name, known)
    fetched = []

    def fetch(url, dest, total, tqdm_cls):
        fetched.append(url)
        dest.write_bytes(DATA)

    monkeypatch.setattr(cat, "_fetch_url", fetch)
    loaded = []
    monkeypatch.setattr(nodes.perception, "load_sam", lambda path, device: loaded.append(path) or torch.nn.Linear(1, 1))
    loader = _cls("SurgSoraLoadSAM")()
    entry = "sam_vit_b_01ec64.pth (download)"

    with pytest.raises(Exception, match="'download' on"):  # switch off: nothing fetched, the same sentence
        loader.load(model_name=entry, download=False)
    assert fetched == [] and loaded == []
    loader.load(model_name=entry, download=True)
    target = models / "sams" / "sam_vit_b_01ec64.pth"
    assert fetched == [known.url] and loaded == [target] and target.read_bytes() == DATA
    # now present: listed plain, the marked entry gone, and it loads without the network
    assert "sam_vit_b_01ec64.pth" in _choices("SurgSoraLoadSAM") and entry not in _choices("SurgSoraLoadSAM")
    loader.load(model_name=entry, download=False)
    loader.load(model_name="sam_vit_b_01ec64.pth", download=False)
    assert fetched == [known.url] and loaded == [target] * 3


# ------------------------------------------------------------------------------------------------- other rules

def _validators():
    import nodes

    return {n: c for n, c in nodes.NODE_CLASS_MAPPINGS.items() if hasattr(c, "VALIDATE_INPUTS")}


def test_validate_inputs_take_declared_inputs_that_may_be_linked():
    """ComfyUI passes only the widget values it knows at validation (a linked widget is left out), by name."""
    validators = _validators()
    assert set(LOADERS) | {"SurgSoraSampler", "SurgSoraTrajectories", "SurgSoraVideoFlow",
                           "SurgSoraDepth"} <= set(validators)
    for name, cls in validators.items():
        spec = cls.INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        params = inspect.signature(cls.VALIDATE_INPUTS).parameters
        assert params and all(p.kind == p.POSITIONAL_OR_KEYWORD for p in params.values()), name
        for p in params.values():
            assert p.name in declared and p.default is None, f"{name}.VALIDATE_INPUTS({p.name})"
        assert cls.VALIDATE_INPUTS() is True, name  # everything linked: nothing to say yet


def _defaults(cls) -> dict:
    """The widget values of a fresh node for the inputs its VALIDATE_INPUTS takes (all known at validation)."""
    spec = cls.INPUT_TYPES()
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    out = {}
    for arg in inspect.signature(cls.VALIDATE_INPUTS).parameters:
        kind, opts = declared[arg][0], (declared[arg][1] if len(declared[arg]) > 1 else {})
        out[arg] = opts.get("default", kind[0] if isinstance(kind, list) else None)
    return out


# Widget maxima that are limits of the UI, not rules: the library accepts larger values, so a node does not re-check
# them when ComfyUI skips its own check (a guidance of 150 is odd, not wrong).
UI_MAXIMA = {("SurgSoraSampler", "max_cfg"), ("SurgSoraSampler", "control_scale")}


def _range_cases():
    cases = []
    for name, cls in sorted(_validators().items()):
        spec = cls.INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        for arg in inspect.signature(cls.VALIDATE_INPUTS).parameters:
            kind, opts = declared[arg][0], (declared[arg][1] if len(declared[arg]) > 1 else {})
            if kind in ("INT", "FLOAT"):
                step = 1 if kind == "INT" else 0.5
                if "min" in opts:
                    cases.append(pytest.param(name, arg, opts["min"] - step, True, id=f"{name}-{arg}-below"))
                if "max" in opts:
                    cases.append(pytest.param(name, arg, opts["max"] + step, (name, arg) not in UI_MAXIMA,
                                              id=f"{name}-{arg}-above"))
                if kind == "FLOAT":
                    cases.append(pytest.param(name, arg, float("nan"), True, id=f"{name}-{arg}-nan"))
            elif isinstance(kind, list):
                cases.append(pytest.param(name, arg, "no such choice", True, id=f"{name}-{arg}-choice"))
    return cases


@pytest.mark.parametrize("name, arg, value, refused", _range_cases())
def test_validate_inputs_keep_the_rules_comfyui_skips(name, arg, value, refused, models):
    """ComfyUI does not check min/max or list membership for an input that VALIDATE_INPUTS takes: a fresh node's
    widgets with one of them out of its rule's range (or not in its list, or NaN) must still fail validation, naming
    it; a widget maximum that is only a limit of the UI is not re-checked."""
    cls = _validators()[name]
    values = _defaults(cls)
    assert cls.VALIDATE_INPUTS(**values) is True or name in LOADERS  # (an empty models folder here)
    if name == "SurgSoraVideoFlow":
        values["method"] = "raft"  # raft_weights matter only then ("dis" ignores them)
    answer = cls.VALIDATE_INPUTS(**{**values, arg: value})
    if refused:
        assert isinstance(answer, str) and (arg in answer or "no such choice" in answer), answer
    else:
        assert answer is True, answer


@pytest.mark.parametrize("name, values, words", [
    ("SurgSoraSampler", dict(min_cfg=3.0, max_cfg=1.0), "min_cfg (3.0) must not be larger than max_cfg (1.0)"),
    ("SurgSoraSampler", dict(t_weak=0.5, t_strong=0.5), "t_weak (0.5) must be smaller than t_strong (0.5)"),
    ("SurgSoraSampler", dict(frames=1), "frames (0 = the conditions' or motion signal's count) must be at least 2"),
    ("SurgSoraSampler", dict(min_cfg=float("nan")), "finite"),
    ("SurgSoraSampler", dict(noise_aug_strength=1.5), "noise_aug_strength must be a finite number >= 0 and <= 1"),
    ("SurgSoraApplySVD", dict(start_percent=0.6, end_percent=0.4), "start_percent not larger than end_percent"),
    ("SurgSoraDualClockGuider", dict(t_weak=0.2, t_strong=1.5), "both in [0, 1]"),
    ("SurgSoraTrajectories", dict(canvas_width=640, canvas_height=0), "set both"),
    ("SurgSoraVideoFlow", dict(method="raft", raft_weights="none"), "needs a weights file"),
    ("SurgSoraVideoFlow", dict(method="raft", raft_weights="raft.pth"), "raft.pth was not found in"),
    ("SurgSoraDepth", dict(input_size=500), "multiple of 14"),
])
def test_cross_widget_rules_fail_at_validation(name, values, words, models):
    answer = _validators()[name].VALIDATE_INPUTS(**values)
    assert isinstance(answer, str) and words in answer and "\n" not in answer, answer


@pytest.mark.parametrize("name, values", [
    ("SurgSoraSampler", dict(min_cfg=1.0, max_cfg=3.0, t_weak=0.32, t_strong=0.42, frames=0)),
    ("SurgSoraSampler", dict(frames=2)),
    ("SurgSoraSampler", dict(max_cfg=150.0, control_scale=12.0)),  # beyond the sliders, within the rules
    ("SurgSoraApplySVD", dict(start_percent=0.2, end_percent=0.2)),
    ("SurgSoraTrajectories", dict(canvas_width=0, canvas_height=0)),
    ("SurgSoraTrajectories", dict(canvas_width=640, canvas_height=480)),
    ("SurgSoraVideoFlow", dict(method="dis", raft_weights="none")),
    ("SurgSoraVideoFlow", dict(method="dis", raft_weights="left over from another machine.pth")),
    ("SurgSoraDepth", dict(input_size=518)),
])
def test_good_settings_pass_validation(name, values, models):
    assert _validators()[name].VALIDATE_INPUTS(**values) is True
