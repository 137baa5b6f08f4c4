"""Model folders: registration with ComfyUI's ``folder_paths``, file lists for the loaders, lookup, download.

Folders (ComfyUI ``models/`` sub-folders, so ``extra_model_paths.yaml`` entries with these keys work):
``sams``, ``depthanything``, ``surgsora`` (adapter folders, CMP decoder), ``optical_flow`` (RAFT) and
ComfyUI's own ``checkpoints`` / ``diffusers`` for SVD. Registration only adds paths and extensions; it
never touches the disk beyond that and never loads or downloads a model.

A loader's list is the files (or model folders) found there plus the catalogue's known public files
(:data:`surgsora.loading.catalogue.KNOWN_FILES`), so a shipped workflow validates on any machine. Choosing a known
file that is not there fails with a sentence naming the folders to put it in, unless the loader's
``download`` switch is on: then exactly that file is fetched into the first folder, with a progress bar.
"""

from __future__ import annotations

import os
from pathlib import Path

from surgsora.loading.catalogue import (COMPONENTS, KNOWN_FILES, corrupt_configs, download_model, find_model,
                                       list_models)
from surgsora.loading.io import ModelFileError

from .runtime import Progress, comfy_module

# our folder key -> ComfyUI-style folder name (the same here) and accepted extensions
FOLDERS = {
    "sams": {".pth", ".pt", ".safetensors"},
    "depthanything": {".pth", ".pt", ".safetensors", ".bin"},
    "surgsora": {".tar", ".pth", ".pt", ".safetensors"},
    "optical_flow": {".pth", ".pt"},
}
DIFFUSERS_PREFIX = "[diffusers] "


def register_folders() -> None:
    """Add our model folders to ComfyUI's ``folder_paths`` (no-op without ComfyUI)."""
    fp = comfy_module("folder_paths")
    if fp is None:
        return
    for name, exts in FOLDERS.items():
        fp.add_model_folder_path(name, os.path.join(fp.models_dir, name))
        paths, current = fp.folder_names_and_paths[name]
        if isinstance(current, set):
            current.update(exts)  # in place: other packs may hold a reference to it
        else:
            fp.folder_names_and_paths[name] = (paths, set(current) | exts)


def folder_roots(folder: str) -> list[Path]:
    """Every configured path of a ComfyUI model folder (models/<folder> and extra_model_paths.yaml entries)."""
    fp = comfy_module("folder_paths")
    if fp is None:
        base = os.environ.get("SURGSORA_MODELS", "models")
        return [Path(base) / folder]
    try:
        return [Path(p) for p in fp.get_folder_paths(folder)]
    except KeyError:
        return [Path(fp.models_dir) / folder]


def _where(folders: tuple[str, ...]) -> str:
    return " or ".join(str(root) for f in folders for root in folder_roots(f))


def model_choices(component: str, extra: tuple[str, ...] = ()) -> list[str]:
    """What a loader lists: ``extra`` entries, local files/folders, then known public files not yet present."""
    folders, _, _ = COMPONENTS[component]
    local: list[str] = []
    for folder in folders:
        names = list_models(folder_roots(folder), component)
        if component in ("adapter", "svd", "depth"):
            # Model folders whose config is corrupt stay in the list, so choosing one says "corrupt", not "missing".
            for root in folder_roots(folder):
                names += [bad.parent.relative_to(root).as_posix() for bad in corrupt_configs([root])
                          if bad.parent != root]
            names = sorted(set(names))
        if folder == "diffusers":
            names = [DIFFUSERS_PREFIX + n for n in names]
        local += names
    known = [k.name for k in KNOWN_FILES.values() if k.component == component and k.name not in local]
    out = list(extra) + [n for n in local if n not in extra]
    return out + [k for k in known if k not in out]


def resolve_model(component: str, name: str, download: bool = False) -> Path:
    """Full path of a loader's choice ``name``; downloads a known file only when ``download`` is on."""
    folders, _, what = COMPONENTS[component]
    if not isinstance(name, str) or not name.strip():
        raise ModelFileError(f"No model was chosen; pick {what} from the list.")
    if name.startswith(DIFFUSERS_PREFIX):
        name, folders = name[len(DIFFUSERS_PREFIX):], ("diffusers",)
    for folder in folders:
        # Containment is checked on the name as chosen (ValueError for "../" names): symlinked files and HF
        # cache snapshots inside the folder work.
        path = find_model(folder_roots(folder), name)
        if path is not None:
            corrupt = corrupt_configs([path], depth=0) if path.is_dir() else []
            if corrupt:
                raise ModelFileError(f"{corrupt[0]} is corrupt (not a valid JSON config), so {name} cannot be used; "
                                     "restore the file (or write the folder again).")
            return path
    known = KNOWN_FILES.get(name)
    if known is not None and known.component == component:
        target = folder_roots(known.folder)[0]
        if download:
            bar = Progress(100)
            return download_model(name, target, progress=lambda done, total: _progress_to(bar, done, total))
        raise ModelFileError(
            f"{name} is not in {_where((known.folder,))}. Put it there ({known.source}), or switch the loader's "
            f"'download' option on to fetch it.")
    raise ModelFileError(f"{name} was not found in {_where(folders)}; put {what} there.")


def _progress_to(bar: Progress, done: int, total: int) -> None:
    pct = int(100 * done / max(total, 1))
    if pct > bar.current:
        bar.update(pct - bar.current)
