"""Training settings, their validation, and the shipped reproduction recipes.

Nothing here imports torch: ``python -m train`` rejects bad arguments (one sentence, exit code 2) in a
fraction of a second and before it creates or touches anything on disk.

A recipe (``--recipe NAME`` or ``--recipe FILE.json``) is a JSON file with a ``preprocess`` and a ``fit``
section of settings named like the command-line flags (underscores for dashes). Its values replace the
built-in defaults; flags given on the command line replace the recipe's. Model files in a recipe are
names inside the ComfyUI-style models folder (``--models``, default ``models``).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

# Torch-free: the safetensors header reader and the MOFA / SurgSora detection the loaders use too.
from surgsora.loading.files import ModelFileError, read_safetensors_header
from surgsora.loading.files import read_config as read_adapter_config  # the config.json of an adapter folder
from surgsora.loading.mofa import MOFA, SURGSORA, adapter_kind, config_class, kind_of_class, kind_of_keys, mofa_weights

__all__ = ["FitConfig", "ConfigError", "check_fit_config", "check_out_dir", "load_recipe", "recipe_names",
           "RECIPES_DIR", "resolve_model_path", "read_adapter_config"]

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class ConfigError(ValueError):
    """A setting that cannot work; the message is one sentence for the user."""


@dataclass
class FitConfig:
    data: str = ""  # preprocessed cache folder (python -m train preprocess --out ...)
    out: str = "runs/surgsora"
    config: str = "full"  # "full" (real SVD from --svd) or "tiny" (random tiny components, CPU smoke runs)
    models: str = "models"  # ComfyUI-style models folder: recipes' files and the CMP decoder are looked up here
    recipe: str = ""  # a shipped recipe name (surgsora-copesd) or a recipe .json file
    svd: str = ""  # diffusers folder or single-file svd_xt.safetensors
    adapter: str = ""  # start from this adapter folder (save_pretrained) instead of the UNet
    init_from_mofa: str = ""  # warm start trunk/zero convs/RGB stream from MOFA-Video-Traj's ControlNet
    # Table 3 ablations (saved in the adapter config): drop the SAM features / the depth branch, or fuse
    # RGB and depth by a plain sum instead of MSF ("msf" | "sum"; without depth the RGB stream is used alone).
    no_seg_features: bool = False
    no_depth_branch: bool = False
    fusion: str = "msf"
    stage: int = 1
    # Stage 2: "auto" (CMP if its checkpoint is in <models>/surgsora, else the analytic decoder with the
    # cached region masks), "analytic", or a CMP checkpoint path.
    flow_decoder: str = "auto"
    device: str = "auto"  # auto (accelerate's choice) | cpu | cuda | cuda:N
    max_steps: int = 10000
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 2e-5
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    adam8bit: bool = False
    mixed_precision: str = "no"  # no | fp16 | bf16 (GPU)
    gradient_checkpointing: bool = False
    sigma_scheme: str = "lognormal"  # lognormal | cosine (k-diffusion's rand_cosine_interpolated, as published)
    p_mean: float = 0.7  # lognormal
    p_std: float = 1.6  # lognormal
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    sigma_data: float = 0.5  # cosine; the published arguments follow
    image_d: float = 64.0
    noise_d_low: float = 32.0
    noise_d_high: float = 64.0
    noise_aug_mean: float = -3.0
    noise_aug_std: float = 0.5
    drop_clip_prob: float = 0.1
    drop_latent_prob: float = 0.1
    motion_bucket_id: int = 127
    # The frame rate SVD is conditioned on (added_time_ids[0] = fps - 1) for every clip, whatever the
    # videos' own rate: the pipeline samples with the adapter's fps, so it is saved in the adapter config.
    fps: int = 7
    # Frozen-VAE latents and CLIP embeddings of each clip are kept in <data>/latents/<model fingerprint>/
    # after their first use (exactly the values a recomputation gives); this turns that off.
    no_latent_cache: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: str = ""  # "latest" or a checkpoint folder
    validate_every: int = 0
    validation_steps: int = 25
    log_every: int = 1
    seed: int = 0
    overfit_one_batch: bool = False  # same batch, noise and sigma every step (sanity check of the loop)
    num_workers: int = 0
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- checks

_POSITIVE_INT = ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every",
                 "validation_steps", "fps")
_NON_NEGATIVE_INT = ("warmup_steps", "validate_every", "num_workers")
_PROBABILITIES = ("drop_clip_prob", "drop_latent_prob")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """An output folder must be a folder (existing or not) in a place this process can write to.

    Probed by creating and removing a temporary folder, which is also right for root on a read-only file
    system (where permission bits say nothing); nothing is left behind.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p} is an existing file; give a folder (it is created if missing).")
    anc = p
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{flag} {p} cannot be created: {anc} is a file, not a folder.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".surgsora-write-test-", dir=anc))
    except OSError as e:
        raise ConfigError(f"{flag} {p} is not writable ({e.strerror or e} in {anc}); choose another folder.") from None


def _check_mofa(path: str) -> None:
    p = Path(path).expanduser()
    where = ("give MOFA-Video-Traj's released ControlNet: its ckpts/controlnet folder (config.json + "
             "diffusion_pytorch_model.safetensors) or that weights file")
    if not p.exists():
        raise ConfigError(f"--init-from-mofa {p} does not exist; {where}.")
    if p.is_dir():
        weights = mofa_weights(p)
        if kind_of_class(config_class(weights.parent if weights else p)) == SURGSORA:
            raise ConfigError(f"--init-from-mofa {p} is a SurgSora adapter; continue from it with --adapter {p}.")
        if weights is None:
            raise ConfigError(f"--init-from-mofa {p} holds no diffusion_pytorch_model.safetensors; {where}.")
        p = weights
    if p.suffix != ".safetensors":
        # A .bin/.pth state dict (torch.save writes zip archives) is checked key by key when it loads.
        if p.suffix not in (".bin", ".pth", ".pt") or not zipfile.is_zipfile(p):
            raise ConfigError(f"--init-from-mofa {p} is not a weights file (.safetensors, or a torch .bin/.pth); "
                              f"{where}.")
    else:
        try:
            keys = read_safetensors_header(p).keys()
        except (ModelFileError, OSError):
            raise ConfigError(f"--init-from-mofa {p} is not a readable safetensors file; {where}.") from None
        kind = kind_of_keys(keys)
        if kind == SURGSORA:
            raise ConfigError(f"--init-from-mofa {p} is a SurgSora adapter, not MOFA's ControlNet; use --adapter.")
        if "conv_in.weight" not in keys or kind != MOFA:
            raise ConfigError(f"--init-from-mofa {p} is not MOFA-Video-Traj's ControlNet (no conv_in / flow "
                              f"encoder tensors); {where}.")


def _check_adapter(path: str) -> None:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"--adapter {p} is not a folder; give an adapter folder written by `python -m train` "
                          "(its runs/<name>/adapter).")
    kind = adapter_kind(p)
    if kind == MOFA:
        raise ConfigError(f"--adapter {p} is MOFA-Video-Traj's ControlNet; start from it with --init-from-mofa {p}.")
    if kind != SURGSORA or not (p / "diffusion_pytorch_model.safetensors").is_file():
        raise ConfigError(f"--adapter {p} is not a SurgSora adapter folder (config.json of a SurgSoraAdapter + "
                          "diffusion_pytorch_model.safetensors, as `python -m train` writes).")


def check_fit_config(cfg: FitConfig) -> None:
    """Raise :class:`ConfigError` (one sentence) for settings ``python -m train fit`` cannot run with.

    Checks only what needs no torch and touches nothing; the device and optional packages are checked by
    the caller.
    """
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{_flag(f.name)} must be a finite number, got {v}.")
    for name in _POSITIVE_INT:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{_flag(name)} must be at least 1, got {getattr(cfg, name)}.")
    for name in _NON_NEGATIVE_INT:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{_flag(name)} must be 0 or more, got {getattr(cfg, name)}.")
    if cfg.seed < -1:
        raise ConfigError(f"--seed must be 0 or more, or -1 for a random seed; got {cfg.seed}.")
    if cfg.seed == -1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would draw its own seed
        raise ConfigError("--seed -1 (a random seed) cannot be used with several processes, which would each draw "
                          "their own; give a seed such as --seed 1234.")
    for name in _PROBABILITIES:
        if not 0 <= getattr(cfg, name) <= 1:
            raise ConfigError(f"{_flag(name)} is a probability between 0 and 1, got {getattr(cfg, name)}.")
    if not cfg.lr > 0:
        raise ConfigError(f"--lr must be positive, got {cfg.lr}.")
    for name in ("weight_decay", "max_grad_norm", "noise_aug_std"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{_flag(name)} must be 0 or more, got {getattr(cfg, name)}.")
    if not cfg.p_std > 0:
        raise ConfigError(f"--p-std must be positive, got {cfg.p_std}.")
    if not 0 <= cfg.motion_bucket_id <= 255:
        raise ConfigError(f"--motion-bucket-id must be between 0 and 255 (SVD's range), got {cfg.motion_bucket_id}.")
    choices = {"config": ("full", "tiny"), "stage": (1, 2), "mixed_precision": ("no", "fp16", "bf16"),
               "sigma_scheme": ("lognormal", "cosine"), "fusion": ("msf", "sum")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{_flag(name)} must be one of {', '.join(map(str, allowed))}; got {getattr(cfg, name)!r}.")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N; got {cfg.device!r}.")
    if cfg.mixed_precision == "fp16" and cfg.device == "cpu":
        raise ConfigError("--mixed-precision fp16 needs a GPU; use bf16 or no on the CPU.")
    if not cfg.data:
        raise ConfigError("--data CACHE_DIR is required (made by `python -m train preprocess --out CACHE_DIR ...`).")
    if not (Path(cfg.data) / "index.json").is_file():
        raise ConfigError(f"--data {cfg.data} holds no preprocessed cache (index.json missing): run "
                          f"`python -m train preprocess --out {cfg.data} VIDEOS...` first.")
    check_out_dir(cfg.out)
    if cfg.resume not in ("", "latest") and not Path(cfg.resume).is_dir():
        raise ConfigError(f"--resume {cfg.resume} is not a checkpoint folder; give one of {cfg.out}/checkpoints/step_* "
                          "or 'latest'.")
    ckpts = Path(cfg.out) / "checkpoints"
    if not cfg.resume and ckpts.is_dir() and any(p.name.startswith("step_") for p in ckpts.iterdir()):
        raise ConfigError(f"--out {cfg.out} already holds checkpoints of a run; add --resume latest to continue it, "
                          "or choose another --out.")
    if cfg.adapter and cfg.init_from_mofa:
        raise ConfigError("give either --adapter (continue a SurgSora adapter) or --init-from-mofa (warm start), not both.")
    if cfg.adapter:
        _check_adapter(cfg.adapter)
    if cfg.init_from_mofa:
        _check_mofa(cfg.init_from_mofa)
    if cfg.config == "full":
        if not cfg.svd:
            raise ConfigError("give --svd PATH (a diffusers SVD folder or svd_xt.safetensors), a --recipe, or "
                              "--config tiny.")
        if not Path(cfg.svd).exists():
            raise ConfigError(f"--svd {cfg.svd} does not exist; put the SVD checkpoint in {cfg.models}/checkpoints "
                              "or give its path.")
    if cfg.flow_decoder not in ("auto", "analytic") and not Path(cfg.flow_decoder).is_file():
        raise ConfigError(f"--flow-decoder {cfg.flow_decoder} is not a file; give auto, analytic or the CMP "
                          "checkpoint (ckpt_iter_42000.pth.tar).")


# ----------------------------------------------------------------------------------------- recipes

def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def load_recipe(spec: str) -> dict:
    """A shipped recipe by name, or a recipe .json file: {"preprocess": {...}, "fit": {...}, ...}."""
    path = Path(spec)
    if not (path.suffix == ".json" and path.is_file()):
        path = RECIPES_DIR / f"{spec}.json"
        if not path.is_file():
            raise ConfigError(f"--recipe {spec}: no such recipe; shipped: {', '.join(recipe_names())} "
                              "(or give a recipe .json file).")
    try:
        recipe = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--recipe {path} is not valid JSON ({e}).") from None
    if not isinstance(recipe, dict) or not all(isinstance(recipe.get(k, {}), dict) for k in ("preprocess", "fit")):
        raise ConfigError(f"--recipe {path} must be a JSON object with 'preprocess' and 'fit' sections.")
    return recipe


def resolve_model_path(value: str, models: str) -> str:
    """A recipe's model file: a path as given if it exists, else a name inside the models folder."""
    if not value or Path(value).exists() or Path(value).is_absolute():
        return value
    return str(Path(models) / value)
