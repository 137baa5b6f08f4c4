"""Minimal stand-ins for the few ComfyUI APIs the nodes call (tests only; never shipped to users).

``install(root)`` puts ``folder_paths``, ``comfy.model_management`` and ``comfy.utils`` into
``sys.modules`` with ComfyUI's names and behaviour for what the nodes use: model folders under
``root/models`` (plus ``add_model_folder_path`` / ``get_folder_paths`` as in ComfyUI), input/output/temp
folders, a CPU device (loading a model onto it does nothing), an interrupt flag and a progress bar that records
its updates.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path


class InterruptProcessingException(Exception):
    pass


class Fakes(types.SimpleNamespace):
    def uninstall(self):
        for name in ("folder_paths", "comfy", "comfy.model_management", "comfy.utils"):
            sys.modules.pop(name, None)


def install(root: str | Path) -> Fakes:
    root = Path(root)
    models_dir = root / "models"
    for sub in ("input", "output", "temp"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
    fp.folder_names_and_paths = {
        "checkpoints": ([str(models_dir / "checkpoints")], set(fp.supported_pt_extensions)),
        "diffusers": ([str(models_dir / "diffusers")], ["folder"]),
    }

    def add_model_folder_path(folder_name, full_folder_path, is_default=False):
        if folder_name in fp.folder_names_and_paths:
            paths = fp.folder_names_and_paths[folder_name][0]
            if full_folder_path not in paths:
                paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)
        else:
            fp.folder_names_and_paths[folder_name] = ([full_folder_path], set())

    fp.add_model_folder_path = add_model_folder_path
    fp.get_folder_paths = lambda name: fp.folder_names_and_paths[name][0][:]
    fp.get_input_directory = lambda: str(root / "input")
    fp.get_output_directory = lambda: str(root / "output")
    fp.get_temp_directory = lambda: str(root / "temp")
    fp.get_annotated_filepath = lambda name: os.path.join(str(root / "input"), name)

    mm = types.ModuleType("comfy.model_management")
    state = Fakes(interrupted=False, freed=[], emptied=0, progress=[])
    mm.InterruptProcessingException = InterruptProcessingException
    mm.get_torch_device = lambda: "cpu"
    mm.unet_offload_device = lambda: "cpu"
    mm.should_use_fp16 = lambda device=None, **k: False
    mm.should_use_bf16 = lambda device=None, **k: False

    def soft_empty_cache(force=False):
        state.emptied += 1

    def free_memory(memory_required, device, keep_loaded=()):
        state.freed.append((memory_required, str(device)))

    def throw_exception_if_processing_interrupted():
        if state.interrupted:
            state.interrupted = False
            raise InterruptProcessingException()

    mm.soft_empty_cache = soft_empty_cache
    mm.load_model_gpu = lambda patcher: None  # everything runs on the CPU here
    mm.intermediate_device = lambda: "cpu"
    mm.free_memory = free_memory
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current = total, 0
            state.progress.append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.current = min(value, self.total)

        def update(self, value):
            self.update_absolute(self.current + value)

    utils.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = mm, utils
    sys.modules.update({"folder_paths": fp, "comfy": comfy, "comfy.model_management": mm, "comfy.utils": utils})
    state.folder_paths, state.mm, state.root, state.models_dir = fp, mm, root, models_dir
    return state
