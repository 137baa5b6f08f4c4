"""surgsora.loading.models_folder: which files of a ComfyUI-style models folder ``generate`` uses, decided from
names and config files alone (placeholder files, nothing is loaded)."""

from __future__ import annotations

import json

import pytest

from surgsora.loading.files import ModelFileError
from surgsora.loading.models_folder import MissingModels, resolve_generate_models


def _folder(root, *, svd=True, sam=True, depth=True, surgsora=True, mofa=True, cmp=False):
    """A models folder of placeholders: adapters are told apart by their config's class, as the real ones."""
    def adapter(name, cls):
        (root / "surgsora" / name).mkdir(parents=True)
        (root / "surgsora" / name / "config.json").write_text(json.dumps({"_class_name": cls}))

    if svd:
        (root / "checkpoints").mkdir(parents=True)
        (root / "checkpoints" / "svd_xt.safetensors").write_bytes(b"x")
        (root / "diffusers" / "another-svd").mkdir(parents=True)
        (root / "diffusers" / "another-svd" / "model_index.json").write_text("{}")
    if sam:
        (root / "sams").mkdir(parents=True)
        for name in ("my_sam.pth", "sam_vit_h_4b8939.pth"):
            (root / "sams" / name).write_bytes(b"x")
    if depth:
        (root / "depthanything").mkdir(parents=True)
        (root / "depthanything" / "depth_anything_v2_vitl.pth").write_bytes(b"x")
    if mofa:
        adapter("a_mofa", "FlowControlNet")  # first by name: the SurgSora adapter must still win
    if surgsora:
        adapter("trained", "SurgSoraAdapter")
    if cmp:
        (root / "surgsora" / "ckpt_iter_42000.pth.tar").write_bytes(b"x")
    return root


def test_the_best_of_each_present_is_chosen(tmp_path):
    root = _folder(tmp_path / "models", cmp=True)
    found = resolve_generate_models(root)
    assert found == {"sam": root / "sams" / "sam_vit_h_4b8939.pth",  # the catalogue's best, not the first name
                     "depth": root / "depthanything" / "depth_anything_v2_vitl.pth",
                     "svd": root / "checkpoints" / "svd_xt.safetensors",  # a known file before a diffusers folder
                     "adapter": root / "surgsora" / "trained",  # a trained SurgSora adapter before MOFA's ControlNet
                     "decoder": root / "surgsora" / "ckpt_iter_42000.pth.tar"}  # auto: CMP when present
    assert resolve_generate_models(root, decoder="analytic")["decoder"] == "analytic"
    named = resolve_generate_models(root, svd="another-svd", adapter="a_mofa")
    assert named["svd"] == root / "diffusers" / "another-svd" and named["adapter"] == root / "surgsora" / "a_mofa"
    assert "depth" not in named  # MOFA's ControlNet has no depth branch


def test_each_mode_needs_what_it_uses(tmp_path):
    only_svd = _folder(tmp_path / "svd", sam=False, depth=False, surgsora=False, mofa=False)
    assert resolve_generate_models(only_svd, mode="ttm") == {"svd": only_svd / "checkpoints" / "svd_xt.safetensors",
                                                             "decoder": "analytic"}
    with pytest.raises(MissingModels) as info:
        resolve_generate_models(only_svd)  # adapter mode: SAM, depth and an adapter are missing
    report = str(info.value)
    for folder in ("sams", "depthanything", "surgsora"):
        assert str(only_svd / folder) in report
    mofa_only = _folder(tmp_path / "mofa", sam=False, depth=False, surgsora=False)
    assert set(resolve_generate_models(mofa_only)) == {"svd", "adapter", "decoder"}  # SAM optional, no depth
    with pytest.raises(MissingModels, match="asked for 'nope.pth'"):
        resolve_generate_models(only_svd, mode="ttm", sam="nope.pth")  # optional, but asked for by name


def test_bad_names_and_corrupt_configs_get_their_own_sentence(tmp_path):
    root = _folder(tmp_path / "models")
    with pytest.raises(ValueError, match=r"^sam: Invalid model name '\.\./x\.pth': give a name inside"):
        resolve_generate_models(root, sam="../x.pth")
    with pytest.raises(ValueError, match=r"^--decoder: Invalid model name"):
        resolve_generate_models(root, decoder="../ckpt.pth.tar", names={"cmp": "--decoder"})
    broken = _folder(tmp_path / "broken", surgsora=False, mofa=False)
    (broken / "surgsora" / "adapter").mkdir(parents=True)
    (broken / "surgsora" / "adapter" / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"adapter/config.json is corrupt \(not a valid JSON config\)"):
        resolve_generate_models(broken)  # not "missing": the folder is there, its config is broken
