"""The few ComfyUI services the nodes use, imported lazily so the package also works without ComfyUI.

ComfyUI modules (``folder_paths``, ``comfy.model_management``, ``comfy.utils``) are looked up at call
time, never at import time: importing ``nodes`` (tests, the CLI, a linter) never needs ComfyUI, and
registering the nodes never loads or downloads a model. Without ComfyUI the helpers fall back to plain
behaviour (CPU, no progress hook, never interrupted), which is what the in-process tests rely on.

Also here: conversions between ComfyUI's ``IMAGE`` ``[N, H, W, 3]`` / ``MASK`` ``[N, H, W]`` and the
library's channels-first tensors (done only at the node boundary), and device placement of our
diffusers/transformers modules under ComfyUI's memory management (``get_torch_device`` to run,
``unet_offload_device`` + ``soft_empty_cache`` after).
"""

from __future__ import annotations

import contextlib
import importlib

import torch

from surgsora.sampling.generate import precision_dtype
from surgsora.sampling.settings import PRECISIONS as SETTING_PRECISIONS

CATEGORY = "SurgSora"


def comfy_module(name: str):
    """``importlib.import_module(name)`` or ``None`` when ComfyUI is not there."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def model_management():
    return comfy_module("comfy.model_management")


# ------------------------------------------------------------------------------------------ devices

def torch_device() -> torch.device:
    mm = model_management()
    return torch.device(mm.get_torch_device()) if mm is not None else torch.device("cpu")


def offload_device() -> torch.device:
    mm = model_management()
    return torch.device(mm.unet_offload_device()) if mm is not None else torch.device("cpu")


def soft_empty_cache() -> None:
    mm = model_management()
    if mm is not None:
        mm.soft_empty_cache()


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (no-op outside ComfyUI)."""
    mm = model_management()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


PRECISIONS = list(SETTING_PRECISIONS)  # a combo widget takes a list
PRECISION_TOOLTIP = ("Weight precision: auto = fp32 on the CPU, fp16 or bf16 (what ComfyUI picks for the device) on "
                     "a GPU.")


def queue_problem(check, *args, **kwargs) -> str | None:
    """The sentence of the ``ValueError`` a library rule ``check(*args, **kwargs)`` raises, or None when it passes:
    what a node's ``VALIDATE_INPUTS`` returns, so a prompt is refused at queue time in the library's words."""
    try:
        check(*args, **kwargs)
    except ValueError as e:
        return str(e)
    return None


def resolve_dtype(precision: str, device: torch.device | None = None) -> torch.dtype:
    """Weight dtype for a loader's ``precision`` widget; ``auto`` = fp32 on CPU, fp16/bf16 on an accelerator."""
    if precision != "auto":
        return precision_dtype(precision)
    device = device or torch_device()
    if device.type == "cpu":
        return torch.float32
    mm = model_management()
    if mm is not None:
        if mm.should_use_fp16(device):
            return torch.float16
        if mm.should_use_bf16(device):
            return torch.bfloat16
        return torch.float32
    return torch.float16


def free_memory_for(modules, device: torch.device) -> None:
    """Ask ComfyUI to unload its own models until ``modules`` fit on ``device``."""
    mm = model_management()
    if mm is None or device.type == "cpu":
        return
    need = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    mm.free_memory(int(need * 1.3) + (512 << 20), device)


class PatchableModule(torch.nn.Module):
    """Holds one of our modules for ComfyUI's ModelPatcher, which writes ``.device`` and its bookkeeping
    attributes onto the model it manages (``device`` is a read-only property on diffusers' ModelMixin)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module
        self.device = next(module.parameters()).device

    def get_dtype(self) -> torch.dtype:
        return next(self.inner.parameters()).dtype


def patcher_for(module: torch.nn.Module):
    """ComfyUI's ModelPatcher for one of our modules (made once, kept with the module), or None without ComfyUI.

    Through it ComfyUI's memory manager loads, offloads and accounts for SurgSora's UNet, VAE, CLIP and
    adapter like its own models (``load_models_gpu``, free memory for others, keep them loaded across runs).
    """
    mp = comfy_module("comfy.model_patcher")
    if mp is None or not hasattr(mp, "ModelPatcher"):
        return None
    patcher = module.__dict__.get("_surgsora_patcher")
    if patcher is None:
        patcher = mp.ModelPatcher(PatchableModule(module), load_device=torch_device(), offload_device=offload_device())
        module.__dict__["_surgsora_patcher"] = patcher  # a plain attribute, not a submodule (no state_dict entry)
    return patcher


@contextlib.contextmanager
def on_device(*modules):
    """Run ``modules`` on ComfyUI's torch device.

    Under ComfyUI they go through its memory manager (``load_models_gpu`` on their ModelPatchers), which
    also decides when to offload them; without it (tests, other hosts) they are moved by hand and moved
    back to the offload device afterwards.
    """
    device = torch_device()
    modules = [m for m in modules if m is not None]
    mm = model_management()
    patchers = [patcher_for(m) for m in modules]
    if mm is not None and hasattr(mm, "load_models_gpu") and patchers and None not in patchers:
        mm.load_models_gpu(patchers)
        yield device
        return
    free_memory_for(modules, device)
    for m in modules:
        m.to(device)
    try:
        yield device
    finally:
        off = offload_device()
        if off != device:
            for m in modules:
                m.to(off)
            soft_empty_cache()


class Progress:
    """``comfy.utils.ProgressBar`` when ComfyUI is there, else a silent counter (tests read ``.current``)."""

    def __init__(self, total: int):
        utils = comfy_module("comfy.utils")
        self.total = int(total)
        self.current = 0
        self._bar = utils.ProgressBar(self.total) if utils is not None else None

    def update(self, n: int = 1, preview=None) -> None:
        """Advance by ``n``; ``preview`` (what ComfyUI's previewers return) is shown on the node while it runs."""
        self.current += n
        if self._bar is not None:
            if preview is not None:
                self._bar.update_absolute(self.current, self.total, preview)
            else:
                self._bar.update(n)


def latent_previewer():
    """ComfyUI's latent previewer for SVD latents (SD1.x latent space, as scaled for denoising), as a function
    of latents [N, 4, h, w] -> preview for ``Progress.update``; None without ComfyUI or with previews off."""
    lp, formats = comfy_module("latent_preview"), comfy_module("comfy.latent_formats")
    if lp is None or formats is None:
        return None
    previewer = lp.get_previewer(torch_device(), formats.SD15())
    if previewer is None:
        return None
    return lambda latents: previewer.decode_latent_to_preview_image("JPEG", latents)


# ------------------------------------------------------------------------------------- conversions

def image_to_bchw(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE ``[N, H, W, C]`` in [0, 1] -> float32 RGB ``[N, 3, H, W]`` (alpha dropped, grey repeated)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{what} must be a ComfyUI IMAGE [N, H, W, 3]; got {shape}.")
    c = image.shape[-1]
    if c not in (1, 3, 4):
        raise ValueError(f"{what} must have 1, 3 or 4 channels (IMAGE [N, H, W, C]); got {c}.")
    x = image[..., :3] if c >= 3 else image.expand(*image.shape[:3], 3)
    return x.movedim(-1, 1).float().clamp(0, 1).contiguous()


def bchw_to_image(x: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> ComfyUI IMAGE ``[N, H, W, 3]`` float32 on the CPU."""
    return x.detach().movedim(1, -1).float().clamp(0, 1).cpu().contiguous()


def video_to_image(video: torch.Tensor) -> torch.Tensor:
    """A video ``[B, T, 3, H, W]`` -> IMAGE batch ``[B*T, H, W, 3]`` (what video-saving nodes take)."""
    return bchw_to_image(video.flatten(0, 1))


def image_to_depth(depth: torch.Tensor) -> torch.Tensor:
    """A depth map from any depth node (IMAGE ``[N,H,W,C]`` or MASK ``[N,H,W]``) -> ``[N, 1, H, W]`` in [0, 1]."""
    if isinstance(depth, torch.Tensor) and depth.ndim == 3:
        d = depth.unsqueeze(1)
    elif isinstance(depth, torch.Tensor) and depth.ndim == 4:
        d = depth[..., :3].mean(-1, keepdim=True).movedim(-1, 1)
    else:
        shape = tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth).__name__
        raise ValueError(f"depth must be an IMAGE [N, H, W, C] or a MASK [N, H, W]; got {shape}.")
    return d.float().clamp(0, 1).contiguous()


def mask_to_regions(mask: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """MASK ``[M, H, W]`` (any size) -> region masks ``[1, M', H, W]`` at ``size``; empty masks are dropped."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise ValueError(f"region_masks must be a MASK [M, H, W]; got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}.")
    m = mask.float()
    m = m.unsqueeze(0) if m.ndim == 2 else m
    m = m[m.flatten(1).amax(1) > 0.5]
    if m.shape[0] == 0:
        return None
    if tuple(m.shape[-2:]) != tuple(size):
        m = torch.nn.functional.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
    return m.clamp(0, 1).unsqueeze(0)
