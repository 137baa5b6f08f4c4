"""Where the evaluation networks' weights come from: a flag, an environment variable, or the torch cache.

Nothing is ever downloaded. Each network metric names the exact file it expects; when it is absent the
metric is skipped with one sentence saying which file, where it was looked for, and where to get it,
and every metric whose weights are present still runs.

Lookup order for each network: the explicit path (CLI flag / keyword), then the environment variable,
then (for files the reference tools cache there) ``$TORCH_HOME/hub/checkpoints/<file name>``. A folder
given for a single-file network is searched for the expected file names.

TorchScript policy (FVD): StyleGAN-V's ``i3d_torchscript.pt`` is a TorchScript program, which cannot be
loaded with ``weights_only``: loading it deserialises and later runs code stored in the file. It is
therefore used only when the user names it explicitly *and* opts in (``--allow-torchscript``); it is never
picked up from the cache. The default FVD network is the plain state dict ``i3d_pretrained_400.pt``
(TATS / cd-fvd, pytorch-i3d layout), rebuilt in torch by :mod:`surgsora.eval.networks` and loaded with
``weights_only=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WeightSpec", "SPECS", "MissingWeightsError", "resolve_weights", "torch_cache_dir"]


class MissingWeightsError(FileNotFoundError):
    """The weights a metric needs are not on this machine (the message says which and where to get them)."""


@dataclass(frozen=True)
class WeightSpec:
    key: str               # short name used in flags and reports
    metrics: str           # which metrics need it
    description: str       # what the file is
    file_names: tuple      # accepted file names, preferred first
    env: str               # environment variable
    flag: str              # CLI flag
    source: str            # where to obtain it
    folder: bool = False   # a Hugging Face folder rather than one file
    search_cache: bool = True


SPECS: dict[str, WeightSpec] = {
    "inception": WeightSpec(
        key="inception", metrics="FID and IS",
        description="FID Inception-v3 weights",
        file_names=("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth"),
        env="SURGSORA_INCEPTION_WEIGHTS", flag="--inception",
        source="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth (or torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
               "from https://github.com/toshas/torch-fidelity/releases/tag/v0.2.0)",
    ),
    "i3d": WeightSpec(
        key="i3d", metrics="FVD",
        description="I3D (Kinetics-400) state dict",
        file_names=("i3d_pretrained_400.pt",),
        env="SURGSORA_I3D_WEIGHTS", flag="--i3d",
        source="https://github.com/songweige/TATS/raw/main/tats/fvd/i3d_pretrained_400.pt "
               "(StyleGAN-V's i3d_torchscript.pt also works with --allow-torchscript)",
    ),
    "videomae": WeightSpec(
        key="videomae", metrics="CD-FVD",
        description="VideoMAE-v2 ViT-g weights of cd-fvd",
        file_names=("vit_g_hybrid_pt_1200e_ssv2_ft.pth", "vit_g_hybrid_pt_1200e_ssv2_ft.safetensors"),
        env="SURGSORA_VIDEOMAE_WEIGHTS", flag="--videomae",
        source="https://huggingface.co/OpenGVLab/VideoMAEv2 (file vit_g_hybrid_pt_1200e_ssv2_ft.pth, "
               "the checkpoint the cd-fvd package downloads)",
    ),
    "clip": WeightSpec(
        key="clip", metrics="frame consistency",
        description="CLIP vision model folder",
        file_names=("config.json",),
        env="SURGSORA_CLIP_MODEL", flag="--clip",
        source="https://huggingface.co/openai/clip-vit-large-patch14 (any CLIP folder works, e.g. the image_encoder "
               "folder of an SVD diffusers checkpoint)",
        folder=True, search_cache=False,
    ),
    "raft": WeightSpec(
        key="raft", metrics="flow agreement with --flow-method raft",
        description="torchvision RAFT-Large weights",
        file_names=("raft_large_C_T_SKHT_V2-ff5fadd5.pth",),
        env="SURGSORA_RAFT_WEIGHTS", flag="--raft-weights",
        source="https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth",
    ),
}


def torch_cache_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (where pytorch-fid, torch-fidelity and torchvision cache weights)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
    return Path(home) / "hub" / "checkpoints"


def _in_folder(spec: WeightSpec, folder: Path) -> Path | None:
    if spec.folder:
        return folder if (folder / "config.json").is_file() else None
    for name in spec.file_names:
        if (folder / name).is_file():
            return folder / name
    return None


def resolve_weights(spec: WeightSpec | str, explicit: str | os.PathLike | None = None) -> Path:
    """The weights path for ``spec``, or :class:`MissingWeightsError` with a one-sentence explanation."""
    spec = SPECS[spec] if isinstance(spec, str) else spec
    names = " or ".join(f"`{n}`" for n in spec.file_names) if not spec.folder else "config.json + model.safetensors"
    tried: list[str] = []
    for origin, value in ((f"given with {spec.flag}", explicit), (f"from ${spec.env}", os.environ.get(spec.env))):
        if not value:
            continue
        p = Path(value).expanduser()
        if p.is_dir():
            found = _in_folder(spec, p)
            if found is not None:
                return found
        elif p.is_file() and not spec.folder:
            return p
        elif p.is_file() and spec.folder and p.parent.joinpath("config.json").is_file():
            return p.parent  # a weights file inside a model folder: use the folder
        raise MissingWeightsError(
            f"{spec.metrics} skipped: the {spec.description} ({names}) was not found at {p} ({origin}); "
            f"download it from {spec.source}."
        )
    if spec.search_cache:
        cache = torch_cache_dir()
        found = _in_folder(spec, cache) if cache.is_dir() else None
        if found is not None:
            return found
        tried.append(str(cache))
    where = f" and none is in {tried[0]}" if tried else ""
    raise MissingWeightsError(
        f"{spec.metrics} skipped: no {spec.description} ({names}) was given (pass {spec.flag} PATH or set "
        f"${spec.env}){where}; download it from {spec.source}."
    )
