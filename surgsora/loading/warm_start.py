"""Warm-start a SurgSoraAdapter from MOFA-Video-Traj's released ControlNet.

MOFA-Video's adapter (``FlowControlNet``, saved as ``controlnet/config.json`` +
``diffusion_pytorch_model.safetensors``) was trained for flow-conditioned SVD, so it is a far better
starting point than a fresh copy of the UNet. Most of SurgSoraAdapter matches it part for part:

=====================================================  ==============================================
MOFA ControlNet                                        SurgSoraAdapter
=====================================================  ==============================================
conv_in, time_embedding, add_embedding,                same names (the SVD UNet encoder copy)
down_blocks, mid_block
controlnet_down_blocks.{i}, controlnet_mid_block       same names (zero-initialised in MOFA's training)
controlnet_cond_embedding.conv_in / blocks.{0..5}      rgb_processor.conv_in / blocks.{0..5}
controlnet_cond_embedding.conv_out [320, 256, 3, 3]    rgb_processor.conv_out [320, 256 + 256(SAM), 3, 3]:
                                                       MOFA's weights fill input channels 0..255, the
                                                       SAM channels stay zero, so the RGB stream starts
                                                       out computing exactly what MOFA's did
flow_encoder.encoders.{i}.conv_in / zeroconvs.{i}      rgb_encoder.encoders.{i}.conv_in / zeroconvs.{i}
=====================================================  ==============================================

Everything else (``depth_processor``, ``depth_encoder``, ``fusion``, ``rgb_processor.seg_proj``) is
new and keeps its initialisation. Before anything is copied, every MOFA tensor is checked: a tensor
with no place in the adapter, or whose shape differs (other than the one declared partial load),
raises :class:`WarmStartError` naming it, and the adapter is left untouched.

One difference does not show in the shapes: MOFA's ``FlowControlNet`` always runs with
ControlNetSDVModel's default ``num_attention_heads`` (5, 10, 10, 20), whatever its config says,
while an adapter copied from the SVD UNet uses (5, 10, 20, 20). The weights load either way; the
report carries a note when the adapter's heads differ from the ones in MOFA's ``config.json``.

The renames, the partial load and MOFA's other constants are in :mod:`.mofa`; this module copies tensors.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from .io import ModelFileError, SafetensorsReader, load_state_dict
from .mofa import (MOFA, MOFA_WHERE, PARTIAL_LOADS, SURGSORA, adapter_key, kind_of_class, kind_of_keys,
                   mofa_adapter_config, mofa_heads, mofa_weights, per_block)

# mofa_adapter_config (defined in .mofa) stays importable from here for existing callers.
__all__ = ["WarmStartError", "WarmStartReport", "plan_warm_start", "init_from_mofa", "load_mofa_controlnet",
           "mofa_adapter_config"]


class WarmStartError(ModelFileError):
    """The MOFA checkpoint cannot initialise this adapter (missing, wrong kind, or mismatched shapes)."""


@dataclass
class WarmStartReport:
    """Which adapter tensors came from MOFA and which kept their initialisation."""

    source: str
    loaded: list[str] = field(default_factory=list)         # adapter keys copied whole
    partial: dict[str, str] = field(default_factory=dict)   # adapter key -> what was copied
    new: list[str] = field(default_factory=list)            # adapter keys MOFA has nothing for
    unused: list[str] = field(default_factory=list)         # MOFA keys left out (strict=False only)
    mapping: dict[str, str] = field(default_factory=dict)   # adapter key -> MOFA key
    notes: list[str] = field(default_factory=list)          # things that load but differ from MOFA

    def groups(self, keys) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in keys:
            parts = k.split(".")
            g = ".".join(parts[:2]) if parts[0] in ("rgb_processor", "rgb_encoder", "depth_processor",
                                                    "depth_encoder") else parts[0]
            out[g] = out.get(g, 0) + 1
        return out

    def summary(self) -> str:
        lines = [f"Warm start from {self.source}:",
                 f"  loaded {len(self.loaded)} tensors: " + _fmt(self.groups(self.loaded))]
        for k, how in self.partial.items():
            lines.append(f"  partially loaded {k}: {how}")
        lines.append(f"  new (kept as initialised) {len(self.new)} tensors: " + _fmt(self.groups(self.new)))
        if self.unused:
            lines.append(f"  MOFA tensors not used {len(self.unused)}: " + _fmt(self.groups(self.unused)))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __str__ = summary


def _fmt(groups: Mapping[str, int]) -> str:
    return ", ".join(f"{g} {n}" for g, n in groups.items()) or "none"


def _names(keys, limit: int = 6) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_kind(keys, source: str) -> None:
    """One sentence unless the tensor names are those of MOFA's ControlNet."""
    kind = kind_of_keys(keys)
    if kind == SURGSORA:
        raise WarmStartError(f"{source} is a SurgSora adapter, not MOFA-Video's ControlNet: load it with "
                             "SurgSoraAdapter.from_pretrained.")
    if kind != MOFA:
        raise WarmStartError(f"{source} is not a MOFA-Video ControlNet: it has no controlnet_cond_embedding.* or "
                             f"flow_encoder.* tensors. {MOFA_WHERE}")


def plan_warm_start(
    adapter_shapes: Mapping[str, tuple[int, ...]],
    mofa_shapes: Mapping[str, tuple[int, ...]],
    source: str = "the MOFA checkpoint",
    strict: bool = True,
) -> WarmStartReport:
    """Decide, from shapes only, what :func:`init_from_mofa` will copy; raise if anything does not fit."""
    _check_kind(mofa_shapes, source)
    report = WarmStartReport(source=source)
    foreign, missing_place, mismatched = [], [], []
    for mk, mshape in mofa_shapes.items():
        ak = adapter_key(mk)
        if ak is None:
            foreign.append(mk)
            continue
        if ak not in adapter_shapes:
            missing_place.append(f"{mk} -> {ak}")
            continue
        ashape, mshape = tuple(adapter_shapes[ak]), tuple(mshape)
        if ashape == mshape:
            report.loaded.append(ak)
        elif ak in PARTIAL_LOADS and _fits_partially(mshape, ashape, PARTIAL_LOADS[ak]):
            d = PARTIAL_LOADS[ak]
            report.partial[ak] = (f"MOFA {list(mshape)} into {list(ashape)} at dim {d} indices 0..{mshape[d] - 1}; "
                                  f"{mshape[d]}..{ashape[d] - 1} set to zero")
        else:
            mismatched.append(f"{mk} {list(mshape)} vs adapter {ak} {list(ashape)}")
            continue
        report.mapping[ak] = mk
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} tensors have mismatched shapes ({_names(mismatched, 4)})")
    if strict and (foreign or missing_place):
        problems.append(f"{len(foreign) + len(missing_place)} MOFA tensors have no place in the adapter "
                        f"({_names(foreign + missing_place)})")
    if problems:
        raise WarmStartError(
            f"Cannot warm-start the adapter from {source}: " + "; ".join(problems)
            + ". Build the adapter from the same SVD UNet config MOFA was trained on (SVD-xt) with "
            "conditioning_embedding_channels (16, 32, 96, 256)."
        )
    report.unused = foreign + [m.split(" -> ")[0] for m in missing_place]
    report.new = [k for k in adapter_shapes if k not in report.mapping]
    return report


def _fits_partially(small: tuple[int, ...], big: tuple[int, ...], dim: int) -> bool:
    return (len(small) == len(big) and small[dim] < big[dim]
            and all(s == b for i, (s, b) in enumerate(zip(small, big)) if i != dim))


def _resolve(path) -> Path:
    path = Path(path).expanduser()
    weights = mofa_weights(path)
    if weights is None and path.is_dir():
        raise WarmStartError(f"{path} has no diffusion_pytorch_model.safetensors. {MOFA_WHERE}")
    if weights is None:
        raise WarmStartError(f"MOFA ControlNet not found: {path}. {MOFA_WHERE}")
    return weights


class _Reader:
    """Shapes first (header only), then tensors one at a time."""

    def __init__(self, path: Path):
        self.path = path
        self._sd = None
        try:
            if path.suffix == ".safetensors":
                self._st = SafetensorsReader(path, folder_hint="ComfyUI/models/surgsora")
                self.shapes = self._st.shapes
            else:
                self._sd = load_state_dict(path, folder_hint="ComfyUI/models/surgsora")
                self.shapes = {k: tuple(v.shape) for k, v in self._sd.items()}
        except ModelFileError as e:
            raise WarmStartError(str(e)) from None

    def get(self, key: str) -> torch.Tensor:
        return self._sd[key] if self._sd is not None else self._st.get(key)


def _head_note(adapter, mofa_config: dict, width: int) -> str | None:
    # Head count changes the computation but not the weight shapes, so a mismatch loads silently.
    heads = mofa_heads(mofa_config, width) if mofa_config else None
    config = getattr(adapter, "config", None)
    if heads is None or config is None or "num_attention_heads" not in config:
        return None
    n = len(config["down_block_types"])
    ours, theirs = per_block(config["num_attention_heads"], n), per_block(heads, n)
    if ours == theirs:
        return None
    return (f"MOFA ran its attention with num_attention_heads {theirs}, this adapter uses {ours}: the weights "
            f"load (shapes do not depend on heads) but the trunk will not compute exactly what MOFA did; "
            f"build the adapter with num_attention_heads={theirs} to match it.")


def _read_mofa_config(weights: Path) -> dict:
    config_file = weights.parent / "config.json"
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise WarmStartError(f"{config_file} is not valid JSON. {MOFA_WHERE}") from None
    if not isinstance(config, dict):
        raise WarmStartError(f"{config_file} is not a model config. {MOFA_WHERE}")
    cls = config.get("_class_name")
    if kind_of_class(cls) == SURGSORA:
        raise WarmStartError(f"{weights.parent} is a SurgSora adapter, not MOFA-Video's ControlNet: load it with "
                             "SurgSoraAdapter.from_pretrained (the adapter loader's SurgSora entry).")
    if cls and "ControlNet" not in str(cls):  # MOFA's class, or another ControlNet in its layout
        raise WarmStartError(f"{weights.parent} holds a {cls}, not MOFA-Video's FlowControlNet. {MOFA_WHERE}")
    return config


def load_mofa_controlnet(adapter_class, path: str | os.PathLike, dtype: torch.dtype | None = None):
    """MOFA-Video-Traj's released ControlNet as an ``adapter_class`` (SurgSoraAdapter) in MOFA mode.

    Called by ``SurgSoraAdapter.from_mofa``, which passes its class: this module never imports the model,
    so model/adapter.py and this module do not import each other in a circle. ``path``: the ``controlnet`` folder
    (``config.json`` + ``diffusion_pytorch_model.safetensors``), the folder above it, or the weights file
    alone (SVD-xt widths assumed without a config). Every tensor of the file must find its place and every
    adapter tensor must come from the file; otherwise one sentence names what is wrong. ``dtype`` converts
    (default: the file's).
    """
    weights = _resolve(path)
    mofa_config = _read_mofa_config(weights)
    reader = _Reader(weights)
    _check_kind(reader.shapes, str(weights))
    if "conv_in.weight" not in reader.shapes:
        raise WarmStartError(f"{weights} has no conv_in.weight: it is not MOFA-Video's ControlNet. {MOFA_WHERE}")
    with torch.device("meta"):
        adapter = adapter_class(**mofa_adapter_config(mofa_config, reader.shapes["conv_in.weight"][0]))
    shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    report = plan_warm_start(shapes, reader.shapes, str(weights), strict=True)
    if report.new or report.partial:
        missing = report.new + list(report.partial)
        raise WarmStartError(
            f"{weights} lacks {len(missing)} tensors of MOFA-Video-Traj's ControlNet ({_names(missing)}): it is "
            f"incomplete or from another model. {MOFA_WHERE}")
    state = {}
    for ak, mk in report.mapping.items():
        value = reader.get(mk)
        state[ak] = value.to(dtype) if dtype is not None and value.is_floating_point() else value
    adapter.load_state_dict(state, strict=True, assign=True)
    return adapter.eval()


@torch.no_grad()
def init_from_mofa(adapter: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> WarmStartReport:
    """Copy MOFA-Video-Traj's ControlNet weights into ``adapter`` (a SurgSoraAdapter) in place.

    ``path``: MOFA's ``controlnet`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``),
    the folder above it, or the weights file. With ``strict=False``, MOFA tensors that have no place
    in the adapter are skipped and listed in ``report.unused`` instead of raising; mismatched shapes
    always raise. Returns a :class:`WarmStartReport` (``print(report)`` gives a summary).
    """
    weights = _resolve(path)
    mofa_config = _read_mofa_config(weights)
    reader = _Reader(weights)
    state = adapter.state_dict()
    report = plan_warm_start({k: tuple(v.shape) for k, v in state.items()}, reader.shapes, str(weights), strict)
    note = _head_note(adapter, mofa_config, reader.shapes.get("conv_in.weight", (0,))[0])
    if note:
        report.notes.append(note)
    for ak, mk in report.mapping.items():
        target = state[ak]
        value = reader.get(mk).to(device=target.device, dtype=target.dtype)
        if ak in report.partial:
            d = PARTIAL_LOADS[ak]
            target.zero_()
            target.narrow(d, 0, value.shape[d]).copy_(value)
        else:
            target.copy_(value)
    return report
