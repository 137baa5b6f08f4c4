"""Fit the SurgSora adapter on preprocessed clips (``python -m train fit``).

:func:`run` reads top to bottom: models and data, optimizer, resume, logs, the loop, save.

1. Frozen SVD (UNet, VAE, CLIP image encoder) from a diffusers folder or single file, or tiny random
   components (``--config tiny``); a trainable adapter from the UNet, an adapter folder, or a
   MOFA-Video ControlNet warm start.
2. Stage 1 trains every adapter parameter on dense ground-truth flow. Stage 2 decodes the flow from the
   cached guide points and region masks with the trajectory decoder inference uses (CMP when its
   checkpoint is in the models folder or given, else the mask-aware analytic decoder), through the
   CLI's own tracks -> flow function, and freezes the DSI processors and encoders, training the trunk,
   zero convs and MSF.
3. Each micro-batch (:func:`compute_loss`): VAE latents of the clip, a noise level per clip (log-normal
   or cosine-interpolated), the noise-augmented frame-0 latent and CLIP embedding exactly as the pipeline
   builds them at inference (with conditioning dropout), ``added_time_ids`` from the pipeline's own
   ``time_ids`` with the adapter's fps (``--fps``, saved in the adapter config), the adapter's conditions
   (DSI + DFM + MSF, with gradients), its residuals into the frozen UNet, and the EDM loss
   (``train/objective.py``). The frozen VAE's latent distribution and the CLIP embedding of each clip are
   cached after first use (:class:`LatentCache`).
4. AdamW (optionally 8-bit), constant LR with warm-up (:func:`make_optimizer`), gradient accumulation and
   clipping, mixed precision and multi-GPU through ``accelerate``; crash-safe checkpoints with exact resume
   (``train/checkpoint.py``); TensorBoard + CSV logs (:func:`open_logs`); periodic validation videos.

All randomness (data order, noise, sigmas, dropout) comes from one ``torch.Generator`` per process;
every process checkpoints its own generator state (and, with fp16, its GradScaler), and the data order
is a function of the step, so ``--resume latest`` continues exactly where an uninterrupted run would be,
on one process or many (the same number as wrote the checkpoint).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from surgsora.atomic import as_write_error, atomic_output

from .config import FitConfig

__all__ = ["FitConfig", "run", "compute_loss", "make_optimizer", "open_logs", "stage_trainable", "stage2_flow",
           "LatentCache", "flow_decoder"]

# Modules frozen in stage 2 (the DSI processors and encoders); everything else in the adapter trains.
STAGE2_FROZEN = ("rgb_processor", "depth_processor", "rgb_encoder", "depth_encoder")


def run(cfg: FitConfig, dataset=None) -> dict:
    """Train; returns a summary {step, last_loss, losses, step_seconds, out, trainable}.

    ``dataset`` replaces the preprocessed cache of ``cfg.data`` (any dataset yielding the same items as
    :class:`train.data.ClipDataset`).
    """
    from accelerate import Accelerator
    from tqdm import tqdm

    from surgsora import SurgSoraPipeline

    from .checkpoint import clean_partial, latest_checkpoint, load_checkpoint, save_checkpoint
    from .data import ClipDataset
    from .objective import check_sigma_args

    check_sigma_args(cfg.sigma_scheme, **sigma_settings(cfg))  # before minutes of model loading
    if cfg.device.startswith("cuda:"):
        torch.cuda.set_device(int(cfg.device.split(":")[1]))  # accelerate then uses this GPU (one process)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                              cpu=cfg.device == "cpu")
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)

    # ---- models and data first: a file that fails to load leaves no run folder behind
    components, condition_options = load_frozen_svd(cfg)
    adapter = build_adapter(cfg, components["unet"], condition_options)
    trainable = stage_trainable(adapter, cfg.stage)
    # Fingerprinted before the cast to weight_dtype: the cached values belong to these weights at that dtype.
    cache_off = cfg.no_latent_cache or dataset is not None and not cfg.data
    latent_cache = LatentCache(None if cache_off else Path(cfg.data) / "latents" / _fingerprint(
        components["vae"], components["image_encoder"], extra=str(weight_dtype)))
    if cfg.gradient_checkpointing:
        adapter.enable_gradient_checkpointing()
        components["unet"].enable_gradient_checkpointing()
    for name in ("unet", "vae", "image_encoder"):
        module = components[name].to(device)
        if module.dtype != weight_dtype:
            module.to(weight_dtype)
    # The pipeline object gives training the very same first-frame encoders and time ids as inference.
    pipe = SurgSoraPipeline(**components, adapter=adapter)
    decoder = None
    if cfg.stage == 2:
        decoder, described = flow_decoder(cfg.flow_decoder, cfg.models, device)
        if is_main:
            print(f"stage 2 flow: {described}")

    dataset = dataset if dataset is not None else ClipDataset(cfg.data)
    # With validation on, the last clip is held out of training.
    val_index = len(dataset) - 1
    held_out = cfg.validate_every > 0 and len(dataset) > 1
    train_set = torch.utils.data.Subset(dataset, range(len(dataset) - 1)) if held_out else dataset
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        for p in clean_partial(ckpt_dir) if ckpt_dir.exists() else []:
            print(f"removed a partial checkpoint left by an interrupted write: {p.name}")
        print_batch_note(cfg, world)

    # ---- optimizer; accelerate wraps the adapter (DDP with several processes)
    params = [p for p in adapter.parameters() if p.requires_grad]
    optimizer, lr_scheduler = make_optimizer(params, cfg, device)
    adapter, optimizer = accelerator.prepare(adapter, optimizer)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed * 7919 + rank)
    generators = {f"rank{rank}": generator}
    # Every process saves and restores its own generator and GradScaler (fp16; None otherwise).
    ckpt_args = dict(scaler=accelerator.scaler, rank=rank, world=world)

    # ---- resume
    step = 0
    if cfg.resume:
        ckpt = latest_checkpoint(ckpt_dir) if cfg.resume == "latest" else Path(cfg.resume)
        if ckpt is None:
            print(f"--resume latest: no complete checkpoint in {ckpt_dir}; starting from step 0")
        else:
            state = load_checkpoint(ckpt, pipe.adapter, optimizer, lr_scheduler, generators, **ckpt_args)
            step = state["step"]
            if is_main:
                print(f"resumed from {ckpt} at step {step}")

    # ---- logs
    log = open_logs(out, step, is_main)
    if is_main:
        with atomic_output(out / "fit_config.json") as tmp:
            tmp.write_text(json.dumps(asdict(cfg), indent=1))
    losses = list(log.losses)
    step_seconds: list[float] = []

    # ---- the loop
    # --overfit-one-batch: the same batch, noise and sigmas every step (a sanity check of the loop).
    fixed_state = generator.get_state() if cfg.overfit_one_batch else None
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"stage {cfg.stage}", disable=not is_main)
    while step < cfg.max_steps:
        t_step = time.time()
        if fixed_state is not None:
            generator.set_state(fixed_state)
        step_losses, sigmas = [], []
        for micro in range(step * cfg.grad_accum, (step + 1) * cfg.grad_accum):
            batch = load_batch(train_set, 0 if cfg.overfit_one_batch else micro, cfg, rank, world)
            with accelerator.accumulate(adapter):
                loss, sigma = compute_loss(pipe, adapter, batch, cfg, generator, latent_cache, decoder,
                                           accelerator.autocast)
                accelerator.backward(loss.mean())  # accelerate divides by the accumulation steps
            step_losses.append(loss.detach().mean())
            sigmas.append(sigma.mean().item())
        grad_norm = (accelerator.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0
                     else torch.tensor(0.0))
        lr = lr_scheduler.get_last_lr()[0]  # the rate this step used
        optimizer.step()
        lr_scheduler.step()  # by hand, once per optimizer step (accelerate would step it per process)
        optimizer.zero_grad(set_to_none=True)
        step += 1

        loss_value = accelerator.gather(torch.stack(step_losses).mean().reshape(1)).mean().item()
        losses.append(loss_value)
        step_seconds.append(time.time() - t_step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if is_main and step % cfg.log_every == 0:
            log.write(step, loss_value, lr, float(grad_norm), sigmas)
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:  # collective: every rank writes its file
            try:
                save_checkpoint(ckpt_dir, step, pipe.adapter, optimizer, lr_scheduler, generators,
                                {"stage": cfg.stage, "loss": loss_value}, keep=cfg.keep_checkpoints,
                                barrier=accelerator.wait_for_everyone, **ckpt_args)
            except Exception as e:  # a full disk: no half-written checkpoint left, an OSError naming it
                err = as_write_error(e, ckpt_dir / f"step_{step:08d}")
                if err is None:
                    raise
                shutil.rmtree(ckpt_dir / f".tmp-step_{step:08d}", ignore_errors=True)
                bar.close()  # the error goes on a line of its own, not after the progress bar
                if err is e:
                    raise
                raise err from e
        if is_main and cfg.validate_every and step % cfg.validate_every == 0:
            write_validation(pipe, dataset, val_index, out / "validation", step, cfg, decoder)
        accelerator.wait_for_everyone()
    bar.close()
    log.close()

    # ---- save
    if is_main:
        with atomic_output(out / "adapter", folder=True) as tmp:  # a kill or full disk: no half adapter folder
            pipe.adapter.save_pretrained(tmp)
    return {"step": step, "last_loss": losses[-1] if losses else None, "losses": losses,
            "step_seconds": step_seconds, "out": str(out), "trainable": len(trainable)}


# ----------------------------------------------------------------------------------------- one micro-batch

def compute_loss(pipe, adapter, batch: dict, cfg: FitConfig, generator: torch.Generator,
                 latent_cache: LatentCache | None = None, decoder=None,
                 autocast=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """The EDM loss [B] (float32, with gradients to the adapter) and the noise levels [B] of one micro-batch.

    ``pipe`` holds the frozen UNet, VAE and CLIP encoder (on the training device, in the weight dtype) and the
    adapter; ``adapter`` is that adapter as the loop calls it (DDP-wrapped with several processes; the same
    module otherwise). Stage 1 (``cfg.stage``) conditions on the batch's dense flow, stage 2 on the flow
    ``decoder`` decodes from its guide points and region masks. ``autocast`` is the mixed-precision context
    of the trainable forward (``accelerator.autocast``). The caller calls backward.

    Draws from ``generator`` in this order, which exact resume relies on: the VAE latent sample, the
    noise-augmentation strengths, the frame-0 augmentation noise (in ``pipe.encode_conditioning_latent``),
    the CLIP dropout, the latent dropout, the sigmas, the noise.
    """
    from surgsora.model.unet import unet_forward

    from .objective import edm_loss, preconditioning, sample_noise_aug, sample_sigmas

    device, weight_dtype = pipe.unet.device, pipe.unet.dtype
    frames = batch["frames"].to(device).permute(0, 1, 4, 2, 3).float() / 255.0  # [B,T,3,H,W] in [0,1]
    bsz, num_frames = frames.shape[:2]
    pixels = frames * 2 - 1  # RGB in [-1, 1], as at inference
    with torch.no_grad():
        mean, std, clip_emb = frozen_encodings(pipe, frames, pixels, batch["clip_id"], latent_cache)
        eps_vae = torch.randn(mean.shape, generator=generator).to(device, mean.dtype)
        latents = (mean + std * eps_vae).view(bsz, num_frames, -1, *mean.shape[-2:])
        latents = latents.float() * pipe.vae.config.scaling_factor
        noise_aug = sample_noise_aug(bsz, generator, cfg.noise_aug_mean, cfg.noise_aug_std).to(device)
        cond_latent = pipe.encode_conditioning_latent(pixels[:, 0].to(weight_dtype), noise_aug, generator)
        # Conditioning dropout: classifier-free guidance at inference zeroes both.
        drop_clip = torch.rand(bsz, generator=generator) < cfg.drop_clip_prob
        drop_latent = torch.rand(bsz, generator=generator) < cfg.drop_latent_prob
        clip_emb = clip_emb * (~drop_clip).to(device, clip_emb.dtype).view(-1, 1, 1)
        cond_latent = cond_latent * (~drop_latent).to(device, cond_latent.dtype).view(-1, 1, 1, 1)
        if cfg.stage == 1:
            flow = batch["flow"].to(device).float()
        else:
            flow = stage2_flow(decoder, frames[:, 0], batch["points"], batch["disp"], batch["regions"],
                               tuple(frames.shape[-2:])).to(device)

    sigma = sample_sigmas(bsz, generator, cfg.sigma_scheme, cfg.p_mean, cfg.p_std, **sigma_settings(cfg)).to(device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    noisy = latents + sigma.view(-1, 1, 1, 1, 1) * noise
    _, _, c_in, c_noise = preconditioning(sigma)
    cond = cond_latent.float().unsqueeze(1).expand(-1, num_frames, -1, -1, -1)
    model_in = torch.cat([c_in * noisy, cond], dim=2).to(weight_dtype)
    # added_time_ids by the pipeline's own rule: [fps - 1, motion_bucket_id, noise_aug_strength] with the
    # adapter's fps (--fps, in its config), or the adapter's fixed ids; never the videos' frame rates.
    time_ids = torch.tensor([pipe.time_ids(None, cfg.motion_bucket_id, float(a)) for a in noise_aug.tolist()],
                            device=device, dtype=weight_dtype)

    with autocast():
        conditions = pipe.adapter.encode_conditions(pixels[:, 0], batch["depth"].to(device).float(),
                                                    batch["seg"].to(device).float(), flow)
        down, mid = adapter(model_in, c_noise, clip_emb, time_ids, conditions)
        pred = unet_forward(pipe.unet, model_in, c_noise, clip_emb, time_ids,
                            [d.to(weight_dtype) for d in down], mid.to(weight_dtype))
        loss = edm_loss(pred, noisy, latents, sigma)
    return loss, sigma


def frozen_encodings(pipe, frames, pixels, clip_ids, latent_cache: LatentCache | None):
    """(VAE latent mean, VAE latent std, clean frame-0 CLIP embedding) of a batch, per clip from the cache
    or computed (and cached), so the values never depend on the batch composition."""
    device, weight_dtype = pipe.unet.device, pipe.unet.dtype
    means, stds, clip_embs = [], [], []
    for b, clip_id in enumerate(clip_ids):
        frozen = latent_cache.get(clip_id) if latent_cache is not None else None
        if frozen is None:
            dist = pipe.vae.encode(pixels[b].to(weight_dtype)).latent_dist
            frozen = {"mean": dist.mean, "std": dist.std, "clip": pipe.encode_clip_image(frames[b, :1])}
            if latent_cache is not None:
                latent_cache.put(clip_id, frozen)
        means.append(frozen["mean"].to(device))
        stds.append(frozen["std"].to(device))
        clip_embs.append(frozen["clip"].to(device))
    return torch.cat(means), torch.cat(stds), torch.cat(clip_embs)


def sigma_settings(cfg: FitConfig) -> dict:
    """The sigma range and the cosine schedule's arguments (``train/objective.py``) of a config."""
    return dict(sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, sigma_data=cfg.sigma_data, image_d=cfg.image_d,
                noise_d_low=cfg.noise_d_low, noise_d_high=cfg.noise_d_high)


# ----------------------------------------------------------------------------------------- models

def load_frozen_svd(cfg: FitConfig) -> tuple[dict, dict]:
    """(SVD components, the adapter's condition-branch options): tiny random or loaded, frozen, on the CPU."""
    if cfg.config == "tiny":
        from surgsora.tiny import tiny_adapter_options, tiny_svd_components

        components = tiny_svd_components(seed=cfg.seed)
        condition_options = tiny_adapter_options()
    else:
        from surgsora.loading.svd_checkpoint import load_svd

        components = load_svd(cfg.svd, device="cpu")
        condition_options = {}
    for name in ("unet", "vae", "image_encoder"):
        components[name].requires_grad_(False).eval()
    return components, condition_options


def build_adapter(cfg: FitConfig, unet, condition_options: dict):
    """The adapter to train: from ``--adapter``, or from the UNet (with a MOFA warm start if asked)."""
    from surgsora import SurgSoraAdapter

    from .config import ConfigError

    if cfg.adapter:
        try:
            # local_files_only: a mistyped folder must never turn into a Hugging Face Hub download.
            adapter = SurgSoraAdapter.from_pretrained(cfg.adapter, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"--adapter {cfg.adapter} could not be loaded: {first}") from None
    else:
        from surgsora.loading.mofa import MOFA_HEADS, MOFA_SEMANTICS

        torch.manual_seed(cfg.seed)
        options = dict(condition_options, use_seg_features=not cfg.no_seg_features,
                       use_depth_branch=not cfg.no_depth_branch,
                       fusion_type="rgb" if cfg.no_depth_branch else cfg.fusion)
        if cfg.init_from_mofa:
            # Keep MOFA's semantics (injection, residual multiplicity, nearest flow resize): its weights were
            # trained under them, so the warm-started adapter starts out computing exactly MOFA's function
            # and the new parts (SAM channels, depth stream, MSF) start at zero. They are saved in config.json.
            options.update(MOFA_SEMANTICS)
            if len(unet.config.down_block_types) == 4:
                options["num_attention_heads"] = MOFA_HEADS  # what MOFA's code ran, whatever its config says
        try:
            adapter = SurgSoraAdapter.from_unet(unet, **options)
        except ValueError as e:
            raise ConfigError(f"Invalid adapter options: {e}.") from None
        if cfg.init_from_mofa:
            from surgsora.loading.warm_start import init_from_mofa

            print(init_from_mofa(adapter, cfg.init_from_mofa))
    # The fps SVD is conditioned on travels with the weights: the pipeline samples with it by default.
    adapter.register_to_config(fps=int(cfg.fps))
    return adapter


def stage_trainable(adapter, stage: int) -> list[str]:
    """Set ``requires_grad`` for ``stage`` and return the names of the trainable parameters."""
    names = []
    for name, p in adapter.named_parameters():
        train = stage == 1 or not name.startswith(STAGE2_FROZEN)
        p.requires_grad_(train)
        if train:
            names.append(name)
    return names


def flow_decoder(spec: str, models: str, device):
    """(decoder, description) for stage 2: ``auto`` (CMP if its checkpoint is in ``models``, else analytic),
    ``analytic``, or a CMP checkpoint path."""
    from surgsora.motion.analytic_flow import AnalyticDecoder

    if spec == "auto":
        from surgsora.loading.catalogue import best_model, list_models

        name = best_model(list_models([models], "cmp"), "cmp")
        if name is None:
            return AnalyticDecoder(), (f"the analytic decoder with the cached region masks (no CMP checkpoint "
                                       f"ckpt_iter_42000.pth.tar in {Path(models) / 'surgsora'})")
        spec = str(Path(models) / name)
    if spec == "analytic":
        return AnalyticDecoder(), "the analytic decoder with the cached region masks"
    from surgsora.motion.cmp import load_cmp

    return load_cmp(spec, device=device), f"CMP from {spec} (region masks as a motion brush)"


def stage2_flow(decoder, image01: torch.Tensor, points, disp, regions, size) -> torch.Tensor:
    """Trajectory-decoded flow [B, T-1, 2, H, W] from cached guide points and region masks (stage 2).

    The guide points become tracks [N, T, 2] in the working size's pixel coordinates (pixel centres, as a
    user's clicks) and go through the inference CLI's own tracks -> flow function with the clip's region
    masks, so training decodes flow exactly as ``python -m surgsora generate`` does.
    """
    from surgsora.motion.tracks import tracks_to_flow

    h, w = size
    flows = []
    for b in range(image01.shape[0]):
        start = points[b].float() + 0.5
        tracks = torch.cat([start[None], start[None] + disp[b].float()], dim=0).permute(1, 0, 2)  # [N, T, 2]
        masks = regions[b] if regions is not None else None
        masks = masks.float()[None] if masks is not None and masks.shape[0] else None
        with torch.no_grad():
            flows.append(tracks_to_flow(decoder, image01[b:b + 1], tracks, (w, h), masks).cpu())
    return torch.cat(flows)


# ----------------------------------------------------------------------------------------- optimizer

def make_optimizer(params: list, cfg: FitConfig, device: torch.device):
    """(AdamW, its LR schedule): the fused AdamW (or bitsandbytes' 8-bit one), constant LR after a linear
    warm-up of ``cfg.warmup_steps`` optimizer steps."""
    if cfg.adam8bit:
        import bitsandbytes as bnb  # checked by `python -m train fit` before anything starts

        optimizer = bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        # The fused kernel: one pass over all parameters instead of a Python loop of small ops per tensor
        # (the per-tensor loop was ~8% of a CPU step in benchmarks/train_step.py).
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      fused=device.type in ("cpu", "cuda"))
    warmup = max(0, cfg.warmup_steps)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    return optimizer, lr_scheduler


# ----------------------------------------------------------------------------------------- data

_LISTS = ("points", "disp", "regions", "clip_id")  # per-clip sizes differ: kept as lists


def load_batch(dataset, micro: int, cfg: FitConfig, rank: int = 0, world: int = 1) -> dict:
    """The items of micro-batch number ``micro`` for process ``rank`` of ``world``, collated."""
    idx = _batch_indices(micro, len(dataset), cfg.batch_size, rank, world, cfg.seed)
    items = [dataset[i] for i in idx]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if k not in _LISTS}
    for k in _LISTS:
        batch[k] = [it.get(k) for it in items]
    return batch


def _batch_indices(step: int, n: int, batch_size: int, rank: int, world: int, seed: int) -> list[int]:
    """Data order as a function of the step: a seeded permutation per epoch, split across processes."""
    per_step = batch_size * world
    steps_per_epoch = max(1, n // per_step) if n >= per_step else 1
    epoch, k = divmod(step, steps_per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    perm = (perm * math.ceil(per_step / n + 1))[: max(n, per_step) + per_step]
    start = k * per_step + rank * batch_size
    return perm[start:start + batch_size]


def _fingerprint(*modules, extra: str = "") -> str:
    """A short hash of the modules' weights: cached latents belong to exactly these frozen models."""
    h = hashlib.blake2b(extra.encode(), digest_size=8)
    for module in modules:
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class LatentCache:
    """Per-clip frozen-model outputs (VAE latent mean/std of every frame, clean frame-0 CLIP embedding) in
    ``<data>/latents/<fingerprint>/<clip>.safetensors``, written atomically on first use.

    They depend only on the clip and the frozen weights, and are computed per clip whether cached or not,
    so a cached value is bit-for-bit what a recomputation gives and training is unchanged by the cache.
    """

    def __init__(self, folder: Path | None):
        self.folder = folder
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                print(f"latent cache off: cannot write {folder} ({e.strerror})")
                self.folder = None

    def _path(self, clip_id: str) -> Path:
        return self.folder / f"{clip_id}.safetensors"

    def get(self, clip_id: str | None) -> dict | None:
        if self.folder is None or clip_id is None or not self._path(clip_id).is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(self._path(clip_id)))
        except (SafetensorError, OSError):
            return None  # a damaged file is recomputed and rewritten

    def put(self, clip_id: str | None, tensors: dict) -> None:
        if self.folder is None or clip_id is None:
            return
        from safetensors.torch import save_file

        try:
            with atomic_output(self._path(clip_id)) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        except OSError as e:
            print(f"latent cache off: cannot write {self.folder} ({e.strerror})")
            self.folder = None


# ----------------------------------------------------------------------------------------- logs

LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "sigma", "seconds")


class TrainLog:
    """``train_log.csv`` and, when installed, TensorBoard; written by the main process only."""

    def __init__(self, path: Path | None, losses: list[float], writer=None):
        self.path, self.losses, self.writer = path, losses, writer
        self.t_last = time.time()

    def write(self, step: int, loss: float, lr: float, grad_norm: float, sigmas: list[float]) -> None:
        """One row: the step's loss, learning rate, gradient norm, mean sigma and seconds since the last row."""
        now = time.time()
        row = {"step": step, "loss": f"{loss:.6f}", "lr": f"{lr:.3e}", "grad_norm": f"{grad_norm:.4f}",
               "sigma": f"{sum(sigmas) / len(sigmas):.4f}", "seconds": f"{now - self.t_last:.3f}"}
        self.t_last = now
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=LOG_FIELDS).writerow(row)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/grad_norm", grad_norm, step)
            # Loss per noise-level decade (sigma 1e-3 .. 1e2+): where the adapter still struggles.
            bucket = min(max(int(math.floor(math.log10(max(sigmas[-1], 1e-3)))), -3), 2)
            self.writer.add_scalar(f"train/loss_sigma_1e{bucket}", loss, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _log_row_ok(row: dict) -> bool:
    try:
        int(row["step"]), float(row["loss"]), float(row["seconds"])
    except (TypeError, ValueError, KeyError):
        return False
    return True


def open_logs(out: Path, step: int, is_main: bool) -> TrainLog:
    """The run's log, continuing at ``step``: CSV rows past it belong to an interrupted run and are dropped.

    Its ``losses`` are the logged losses up to ``step``. Only the main process writes (CSV, and TensorBoard
    when it is installed).
    """
    path = Path(out) / "train_log.csv"
    rows = []
    if path.exists():
        with open(path, newline="") as f:  # a row cut short by a kill mid-append is dropped
            rows = [r for r in csv.DictReader(f) if _log_row_ok(r) and int(r["step"]) <= step]
    losses = [float(r["loss"]) for r in rows]
    if not is_main:
        return TrainLog(None, losses)
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:  # a kill here keeps the old log
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
    writer = None
    try:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(out) / "tensorboard"))
    except ImportError:
        print("tensorboard is not installed: logging to CSV only")
    return TrainLog(path, losses, writer)


def print_batch_note(cfg: FitConfig, world: int) -> None:
    """Say so when this run's total batch differs from the recipe's (another number of processes)."""
    total = cfg.batch_size * cfg.grad_accum * world
    wanted = cfg.extra.get("total_batch")
    if wanted and wanted != total:
        print(f"note: the recipe's batch is {wanted} ({cfg.extra.get('processes')} processes x "
              f"{cfg.batch_size}); this run's is {total} ({world} process(es) x "
              f"{cfg.batch_size} x {cfg.grad_accum} accumulation steps)")


@torch.no_grad()
def write_validation(pipe, dataset, index: int, folder: Path, step: int, cfg: FitConfig, decoder) -> Path:
    """Generate the held-out clip from its first frame with the current adapter; save mp4 + flow video."""
    from surgsora.motion.flow_viz import flow_to_rgb
    from surgsora.video_io import write_video

    adapter = pipe.adapter
    was_training = adapter.training
    adapter.eval()
    item = dataset[index]
    frames = item["frames"].permute(0, 3, 1, 2).float() / 255.0
    image = frames[:1]
    if cfg.stage == 1:
        flow = item["flow"][None].float()
    else:
        size = tuple(frames.shape[-2:])
        flow = stage2_flow(decoder, image, [item["points"]], [item["disp"]], [item["regions"]], size)
    device = pipe._execution_device
    video = pipe(image, flow=flow.to(device), depth=item["depth"][None].float().to(device),
                 seg_features=item["seg"][None].float().to(device), num_inference_steps=cfg.validation_steps,
                 generator=torch.Generator().manual_seed(cfg.seed))
    folder.mkdir(parents=True, exist_ok=True)
    fps = float(item["fps"]) or cfg.fps
    path = write_video(folder / f"step_{step:08d}.mp4", video[0].permute(0, 2, 3, 1).cpu().numpy(), fps=fps)
    write_video(folder / f"step_{step:08d}_flow.mp4", flow_to_rgb(flow[0]).permute(0, 2, 3, 1).cpu().numpy(), fps=fps)
    adapter.train(was_training)
    return path


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("run `python -m train fit ...`")
