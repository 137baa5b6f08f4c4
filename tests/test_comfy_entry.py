"""The ComfyUI entry (repo-root ``__init__.py``): loading the pack puts the templates' example image and clip into
ComfyUI's input folder where absent, never replaces a user's file and never fails the load.

The pack is loaded the way ComfyUI's ``load_custom_node`` does (the folder's ``__init__.py`` as a package), over
the suite's ComfyUI fakes (``integration/comfy_fakes.py``); the real server does it in
``integration/test_comfyui_server.py``.
"""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

import comfy_inputs
from integration import comfy_fakes

REPO = Path(__file__).resolve().parents[1]
FAKED = ("folder_paths", "comfy", "comfy.model_management", "comfy.utils")


@pytest.fixture
def comfy(tmp_path):
    """ComfyUI's modules faked over ``tmp_path`` (its input/ empty), the previous ones put back afterwards."""
    before = {name: sys.modules.get(name) for name in FAKED}
    yield comfy_fakes.install(tmp_path)
    for name, module in before.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


def load_pack(name: str = "ComfyUI-SurgSora-entry-test"):
    """Import the repository as ComfyUI imports a custom node folder."""
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
    return module


def test_loading_the_pack_copies_the_example_files_into_an_empty_input_folder(comfy, capsys):
    pack = load_pack()
    assert "SurgSoraTrajectories" in pack.NODE_CLASS_MAPPINGS
    input_dir = Path(comfy.folder_paths.get_input_directory())
    assert sorted(p.name for p in input_dir.iterdir()) == ["surgsora_endovis_clip.mp4", "surgsora_endovis_frame6.png"]
    assert (input_dir / "surgsora_endovis_frame6.png").read_bytes() == (REPO / "demo" / "surgsora_endovis_frame6.png"
                                                                        ).read_bytes()
    assert (input_dir / "surgsora_endovis_clip.mp4").read_bytes() == (REPO / "demo" / "endovis17" / "clip.mp4"
                                                                      ).read_bytes()
    assert "[SurgSora]" not in capsys.readouterr().out


def test_a_users_file_of_the_same_name_is_kept(tmp_path):
    (tmp_path / "surgsora_endovis_frame6.png").write_bytes(b"the user's own picture")
    assert comfy_inputs.copy_example_inputs(tmp_path) == ["surgsora_endovis_clip.mp4"]
    assert (tmp_path / "surgsora_endovis_frame6.png").read_bytes() == b"the user's own picture"
    assert comfy_inputs.copy_example_inputs(tmp_path) == []  # the next start copies nothing


def test_the_pack_loads_when_the_copy_fails_and_says_so_in_one_line(comfy, capsys):
    input_dir = Path(comfy.folder_paths.get_input_directory())
    input_dir.rmdir()
    input_dir.write_text("not a folder")  # ComfyUI's input "folder" is a file: nothing can be copied
    pack = load_pack()
    assert "SurgSoraTrajectories" in pack.NODE_CLASS_MAPPINGS
    lines = [line for line in capsys.readouterr().out.splitlines() if "[SurgSora]" in line]
    assert len(lines) == 1 and "not copied into ComfyUI's input folder" in lines[0], lines
    assert "Traceback" not in lines[0]


def test_a_copy_cut_short_leaves_no_half_file(tmp_path, monkeypatch, capsys):
    def full_disk(src, dst, *args):
        dst.write(src.read(100))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(comfy_inputs.shutil, "copyfileobj", full_disk)
    monkeypatch.setitem(sys.modules, "folder_paths", type(sys)("folder_paths"))
    sys.modules["folder_paths"].get_input_directory = lambda: str(tmp_path)
    comfy_inputs.install_example_inputs()  # never raises
    assert list(tmp_path.iterdir()) == []  # a truncated file would block every later copy
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "No space left on device" in out[0]


def test_the_example_files_ship_with_a_registry_install():
    """ComfyUI-Manager clones the repository; the Comfy Registry packs [tool.comfy] includes: demo/ is there."""
    includes = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]["includes"]
    for src in comfy_inputs.EXAMPLE_INPUTS.values():
        assert src.is_file()
        relative = src.relative_to(REPO).as_posix()
        assert any(relative.startswith(folder.rstrip("/") + "/") for folder in includes), (relative, includes)
