"""Which files of a ComfyUI-style models folder ``generate`` uses: the policy, written once.

:func:`resolve_generate_models` picks each model (the one asked for, else the best one present), knows which
ones a mode needs (MOFA-Video-Traj's ControlNet needs no depth and makes SAM optional; dual-clock sampling needs
only SVD), and answers before anything is loaded: a :class:`MissingModels` listing every missing file and the
folder it goes in, or a corrupt ``config.json`` named as corrupt (not as missing). The catalogue of known files
and the folder search are :mod:`.catalogue`'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .catalogue import COMPONENTS, KNOWN_FILES, best_model, corrupt_configs, find_model, list_models
from .files import ModelFileError
from .mofa import MOFA, SURGSORA, adapter_kind

__all__ = ["MissingModels", "resolve_generate_models", "pick_model"]

# How a model is named when a sentence has to name the argument that chose it (callers pass their own words).
ARGUMENT_NAMES = {"sam": "sam", "depth": "depth", "svd": "svd", "adapter": "adapter", "cmp": "decoder"}


class MissingModels(Exception):
    """The list of missing files and where each goes, one line each (front ends print it as it is)."""


def pick_model(models_dir: Path, component: str, name: str | None,
               names: Mapping[str, str] | None = None) -> tuple[Path | None, str]:
    """(path or None, where it was looked for) of ``component``: ``name`` if given (a path, or a name inside the
    component's sub-folders), else the best one present. A name escaping the models folder is a ValueError."""
    roots = [models_dir / f for f in COMPONENTS[component][0]]
    if name:
        p = Path(name)
        if p.is_absolute() or p.exists():
            return (p if p.exists() else None), str(p)
        try:
            found = find_model(roots, name)
        except ValueError as e:  # "../x": outside the models folder
            raise ValueError(f"{(names or ARGUMENT_NAMES).get(component, component)}: {e}") from None
        return found, str(roots[0] / name)
    present = [(root, n) for root in roots for n in list_models([root], component)]
    if component == "adapter":  # a trained SurgSora adapter first, else MOFA's released ControlNet
        present.sort(key=lambda rn: adapter_kind(rn[0] / rn[1]) != SURGSORA)
        return (present[0][0] / present[0][1], present[0][1]) if present else (None, str(roots[0]))
    best = best_model([n for _, n in present], component)
    if best is None:
        return None, str(roots[0])
    if component == "svd":  # the catalogue's names first, then diffusers folders, in the folder it was found in
        root = next(r for r, n in present if n == best)
        return root / best, str(root / best)
    return find_model(roots, best), best


def resolve_generate_models(models_dir: str | os.PathLike, sam=None, depth=None, svd=None, adapter=None,
                            decoder="auto", mode: str = "adapter",
                            names: Mapping[str, str] | None = None) -> dict[str, Path | str]:
    """Paths of every model ``generate`` needs ({"sam", "depth", "svd", "adapter", "decoder"}, the ones used), or
    :class:`MissingModels` listing each missing one.

    With MOFA-Video-Traj's ControlNet as the adapter, SAM is optional (used for region masks when present) and
    Depth Anything is not used. ``mode="ttm"`` (dual-clock on plain SVD) needs only SVD: SAM (region masks) and
    Depth Anything (what is in front) are used when present, an adapter only when named. ``decoder`` is "auto"
    (the CMP checkpoint if present, else the analytic decoder), "analytic", or a CMP file. A model folder whose
    config is corrupt is reported as corrupt (:class:`~surgsora.loading.files.ModelFileError`), not as missing;
    ``names`` maps a component to the caller's word for its argument (e.g. ``{"sam": "--sam"}``).
    """
    models_dir = Path(models_dir)
    found, missing = {}, []
    ttm = mode == "ttm"
    path, _ = pick_model(models_dir, "adapter", adapter, names)
    mofa = path is not None and adapter_kind(path) == MOFA
    for component, name in (("sam", sam), ("depth", depth), ("svd", svd), ("adapter", adapter)):
        if not name and ((ttm and component == "adapter") or (mofa and not ttm and component == "depth")):
            continue
        path, where = pick_model(models_dir, component, name, names)
        if path is None:
            optional = (ttm and component in ("sam", "depth")) or (mofa and component == "sam")
            if name or not optional:
                missing.append((component, name, where))
        else:
            found[component] = path
    if decoder in ("auto", "analytic"):
        path = pick_model(models_dir, "cmp", None)[0] if decoder == "auto" else None
        found["decoder"] = path if path is not None else "analytic"
    else:
        path, where = pick_model(models_dir, "cmp", decoder, names)
        if path is None:
            missing.append(("cmp", decoder, where))
        else:
            found["decoder"] = path
    if missing:
        corrupt = [c for component, _, _ in missing for c in
                   corrupt_configs([models_dir / f for f in COMPONENTS[component][0]])]
        if corrupt:
            raise ModelFileError(f"{corrupt[0]} is corrupt (not a valid JSON config), so its model folder cannot be "
                                 "used; restore the file (or write the folder again, e.g. with `python -m train`).")
        raise MissingModels(_missing_report(models_dir, missing))
    return found


def _missing_report(models_dir: Path, missing: list[tuple[str, str | None, str]]) -> str:
    lines = [f"Missing model files under {models_dir}:"]
    for component, name, where in missing:
        folders, _, what = COMPONENTS[component]
        target = " or ".join(str(models_dir / f) + "/" for f in folders)
        lines.append(f"  - {what}" + (f" (asked for {name!r}, looked at {where})" if name else "")
                     + f"\n      put it in {target}")
        for k in KNOWN_FILES.values():
            if k.component == component:
                gated = " (gated: accept the licence, then `huggingface-cli login`)" if k.gated else ""
                lines.append(f"      {k.name:<44} {k.source}{gated}")
    lines.append("Known public files can be fetched with `python -m surgsora download NAME --models "
                 f"{models_dir}`; a SurgSora adapter comes from `python -m train`, and MOFA-Video-Traj's "
                 "released ControlNet (mofa_traj_controlnet.safetensors) generates without one.")
    return "\n".join(lines)
