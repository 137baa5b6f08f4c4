"""Model folders: registration with ComfyUI's ``folder_paths``, file lists for the loaders, lookup, download.

Folders (ComfyUI ``models/`` sub-folders, so ``extra_model_paths.yaml`` entries with these keys work):
``sams``, ``depthanything``, ``surgsora`` (adapter folders, CMP decoder), ``optical_flow`` (RAFT) and
ComfyUI's own ``checkpoints`` / ``diffusers`` for SVD. Registration only adds paths and extensions; it
never touches the disk beyond that and never loads or downloads a model.

A loader's list is the files (or model folders) present, then each of the catalogue's known public files
(:data:`surgsora.loading.catalogue.KNOWN_FILES`) that is absent, marked as such: ``svd_xt.safetensors
(download)`` (:data:`DOWNLOAD_MARK`). A marked entry resolves to that file, fetched into the component's first
folder (with a progress bar) only when the loader's ``download`` switch is on. Each loader's
``VALIDATE_INPUTS`` calls :func:`validate_choice`, which looks at the disk only (never the network): a
marked entry with ``download`` off, or a plain name that is not there (a shipped workflow on a machine
without the file), fails when the prompt is queued, with one sentence naming the file, its folders and the
fix, before any node runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from surgsora.loading.catalogue import (COMPONENTS, KNOWN_FILES, KnownFile, corrupt_configs, download_model,
                                       find_model, list_models)
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
# A known public file that is not on disk is listed as "<name> (download)": chosen with the loader's
# 'download' switch on, it is fetched; with the switch off the prompt fails validation with the way out.
DOWNLOAD_MARK = " (download)"


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


def model_widget(component: str, tooltip: str, extra: tuple[str, ...] = ()) -> tuple:
    """A loader's model list (:func:`model_choices`) with its tooltip, which also says what a marked entry is."""
    return (model_choices(component, extra), {"tooltip": f"{tooltip} An entry marked (download) is not on disk yet: "
                                                         "it is fetched only with 'download' on."})


def download_widget(folder: str, note: str = "needs internet") -> tuple:
    """The loaders' 'download' switch: fetch a '(download)' entry into models/<folder> when the node runs."""
    return ("BOOLEAN", {"default": False, "tooltip": f"On: a (download) entry is fetched from its public source "
                                                     f"into models/{folder} when the node runs ({note}). Off: "
                                                     "nothing is downloaded."})


def download_entry(name: str) -> str:
    """The list entry of a known file that is not on disk yet."""
    return name + DOWNLOAD_MARK


def _known(component: str, name: str) -> KnownFile | None:
    known = KNOWN_FILES.get(name)
    return known if known is not None and known.component == component else None


def model_choices(component: str, extra: tuple[str, ...] = ()) -> list[str]:
    """What a loader lists: ``extra`` entries, local files/folders, then ``<name> (download)`` for each known
    public file of ``component`` that is not there."""
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
    out = list(extra) + [n for n in local if n not in extra]
    absent = [download_entry(k.name) for k in KNOWN_FILES.values() if k.component == component and k.name not in local]
    return out + [k for k in absent if k not in out]


def _lookup(component: str, name: str) -> tuple[Path | None, KnownFile | None, str]:
    """(path on disk or None, the known file a marked or plain name stands for, the name as a file name).

    Looks at the disk only. Raises ModelFileError for an empty choice, an unknown marked entry or a corrupt
    model folder, and ValueError for names that leave the models folder."""
    folders, _, what = COMPONENTS[component]
    if not isinstance(name, str) or not name.strip():
        raise ModelFileError(f"No model was chosen; pick {what} from the list.")
    known = None
    if name.endswith(DOWNLOAD_MARK):
        known = _known(component, name[:-len(DOWNLOAD_MARK)])
        if known is None:
            raise ModelFileError(f"'{name}' is not a file this loader can download; pick {what} from the list.")
        name, folders = known.name, (known.folder,)
    elif name.startswith(DIFFUSERS_PREFIX):
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
            return path, known, name
    return None, known or _known(component, name), name


def _missing(component: str, name: str, known: KnownFile | None, marked: bool) -> str:
    """The sentence for a choice that is not on disk (and is not to be downloaded)."""
    folders, _, what = COMPONENTS[component]
    if known is None:
        return f"{name} was not found in {_where(folders)}: put it there ({what}), or choose an entry of the list."
    if marked:
        return (f"{known.name} is not downloaded yet: put it in {_where((known.folder,))} ({known.source}), or turn "
                "this loader's 'download' on to fetch it.")
    return (f"{known.name} is not in {_where((known.folder,))}: put it there ({known.source}), or choose "
            f"'{download_entry(known.name)}' and turn this loader's 'download' on to fetch it.")


def resolve_model(component: str, name: str, download: bool = False) -> Path:
    """Full path of a loader's choice ``name``; downloads a known file only when ``download`` is on."""
    path, known, file_name = _lookup(component, name)
    if path is not None:
        return path
    if known is not None and download:
        bar = Progress(100)
        return download_model(known.name, folder_roots(known.folder)[0],
                              progress=lambda done, total: _progress_to(bar, done, total))
    raise ModelFileError(_missing(component, file_name, known, name.endswith(DOWNLOAD_MARK)))


def validate_choice(component: str, name, download=False, extra: tuple[str, ...] = ()) -> bool | str:
    """A loader's ``VALIDATE_INPUTS`` answer for its model widget: True, or one sentence saying what is wrong.

    Run by ComfyUI when the prompt is queued, before any node executes; it reads the models folders only and
    never touches the network. ComfyUI skips its own "value not in list" check for inputs a VALIDATE_INPUTS
    takes, so membership is checked here: an entry of the list (or a ``(download)`` entry whose file has
    arrived since), a marked entry with ``download`` on, or a missing known file with ``download`` on.
    ``name`` None means the widget is linked to another node's output: checked when the loader runs.
    """
    if name is None or name in extra:
        return True
    try:
        path, known, file_name = _lookup(component, name)
    except (ModelFileError, ValueError) as e:
        return str(e)
    if path is None:
        return True if known is not None and download else _missing(component, file_name, known,
                                                                    name.endswith(DOWNLOAD_MARK))
    if known is None and name not in model_choices(component, extra):
        # on disk but not a file this loader lists (another kind of file, or too deep): ComfyUI would refuse it
        _, _, what = COMPONENTS[component]
        return f"{path} is not {what}, so this loader does not list it; choose an entry of the list."
    return True


def _progress_to(bar: Progress, done: int, total: int) -> None:
    pct = int(100 * done / max(total, 1))
    if pct > bar.current:
        bar.update(pct - bar.current)
