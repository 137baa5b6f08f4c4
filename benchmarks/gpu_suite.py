"""Everything only a GPU can prove, in one command and one JSON file: run this first when a GPU is lent.

    python benchmarks/gpu_suite.py                      # CUDA, real sizes; writes gpu_suite.json
    python benchmarks/gpu_suite.py --device cpu --tiny  # the same code on tiny models (the test suite runs it)

Estimated 3-5 minutes on one H100 (not yet run on a GPU: none has been lent; ``--budget-s``, 450 by default, skips
the sections not started by then so the whole stays under 8 minutes). Sections (each is timed, written to the JSON as soon as it ends, and a failure in one is recorded as its ``error``
without stopping the others; ``ok`` is true when every check of every section held):

* ``splat`` -- forward / sum / softmax splatting and the motion signal on the device against the CPU, in fp32
  (CUDA's ``index_add_`` adds in a non-deterministic order, so "equal" is 1e-5 of the output's range), and fp16
  on the device against fp32 on the CPU (one fp16 unit in the last place); the device's splat time.
* ``steps`` -- one real-size denoising step (a CFG batch of 2, 25 frames at 1024x576) per mode: bare SVD UNet,
  SurgSora (adapter trunk with cached conditions + UNet), MOFA-Video-Traj (the same adapter class in MOFA's
  configuration) and dual-clock (the bare step + re-anchoring), in fp32, fp16 and bf16 (models cast, conditions
  made in that dtype): each half output's drift from fp32 (relative RMS and largest difference over the largest
  value), finite or not, its median time, and the adapter's time ratio (SurgSora step / bare step).
* ``memory`` -- peak GPU memory of a whole 25-frame 1024x576 generation per mode in fp16 (CLIP, VAE encode, the
  condition branch, two denoising steps, the VAE decode in chunks of 8 frames with diffusers' fp32 upcast), with
  the models resident and with diffusers' ``enable_model_cpu_offload`` (one model on the GPU at a time; the peak
  does not depend on the number of steps). SAM and Depth Anything run before SVD is loaded (see
  ``surgsora.sampling.generate``), so they are not part of this peak.
* ``train`` -- one fp16 training step with a GradScaler on the real-size adapter (trainable, fp32 weights under
  autocast) and frozen UNet (fp16), 14 frames at 256x256: loss and gradients finite, the scaler's scale, the
  weights updated; peak memory and time.

The models are the real architectures (SVD-xt's UNet, VAE and CLIP ViT-H/14 from the packaged configs, the
SurgSora adapter copied from that UNet, MOFA-Video-Traj's ControlNet layout) with random weights: no real
checkpoint can be downloaded on the machines this runs on. Drift and overflow with random weights are a proxy for
trained weights (whose activations are usually tamer); timings and memory are those of the real sizes.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from surgsora import SurgSoraAdapter  # noqa: E402
from surgsora.loading.mofa import mofa_adapter_config  # noqa: E402
from surgsora.model.unet import unet_forward  # noqa: E402

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
DTYPES = {"fp32": torch.float32, **HALF}
# Expected drift of one step from fp32 (relative RMS); flagged, not fatal to the other sections.
STEP_DRIFT_TOL = {"fp16": 0.02, "bf16": 0.1}
# A tiny SVD-xt layout (four blocks, the last two of equal width, so MOFA's configuration fits too).
TINY_UNET = dict(
    block_out_channels=(32, 64, 96, 96), layers_per_block=1, sample_size=8, in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
    cross_attention_dim=32, num_attention_heads=(2, 4, 8, 8), projection_class_embeddings_input_dim=96,
    addition_time_embed_dim=32, num_frames=4,
)
TINY_CONDITIONING = (8, 8, 8, 16)


# ============================================================================================ helpers

class Ctx:
    """What every section needs: the device, the sizes (real or tiny) and the timer."""

    def __init__(self, args):
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.tiny = args.tiny
        self.repeats = args.repeats
        # fp16 kernels on a CPU are slow (and the CPU's fp16 paths are tested in tests/test_precision.py): the CPU
        # smoke run takes bf16 as its half precision, through the same code
        self.half = dict(HALF) if self.cuda else {"bf16": torch.bfloat16}
        self.amp_dtype = torch.float16 if self.cuda else torch.bfloat16
        if args.tiny:
            self.frames, self.height, self.width = 4, 64, 64
            self.train_frames, self.train_size = 4, 64
        else:
            self.frames, self.height, self.width = args.frames, args.height, args.width
            self.train_frames, self.train_size = 14, 256

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gb(self) -> float | None:
        return round(torch.cuda.max_memory_allocated(self.device) / 2 ** 30, 2) if self.cuda else None

    def timed(self, fn, repeats: int | None = None) -> tuple[object, float]:
        """(the last result, the median seconds of ``repeats`` calls after one warm-up call; no warm-up with
        --tiny, where the times mean nothing)."""
        out = None if self.tiny else fn()
        times = []
        for _ in range(repeats or self.repeats):
            self.sync()
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return out, round(statistics.median(times), 4)


def _fill_zero_layers(*modules, std: float = 0.02) -> None:
    """Zero-initialised layers get small random values, so residuals and fusions act as after training."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                if p.device.type != "meta" and not p.any():
                    p.copy_((torch.randn(p.shape, generator=g) * std).to(p.device, p.dtype))


def _unet_config(ctx: Ctx) -> dict:
    if ctx.tiny:
        return dict(TINY_UNET, num_frames=ctx.frames)
    from surgsora.loading.svd_checkpoint import CONFIG_DIR

    config = json.loads((CONFIG_DIR / "unet" / "config.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_models(ctx: Ctx) -> dict:
    """The UNet, the SurgSora adapter (trunk copied from the UNet) and the MOFA adapter, random, fp32, on the device
    (initialised there: a real-size UNet built on a CPU takes minutes)."""
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    config = _unet_config(ctx)
    with torch.device(ctx.device):
        unet = UNetSpatioTemporalConditionModel(**config).eval().requires_grad_(False)
        options = dict(conditioning_embedding_channels=TINY_CONDITIONING, depth_hidden_channels=(8, 16)) if ctx.tiny \
            else {}
        adapter = SurgSoraAdapter.from_unet(unet, **options).eval().requires_grad_(False)
        mofa_config = mofa_adapter_config(dict(config, conditioning_embedding_out_channels=TINY_CONDITIONING)
                                          if ctx.tiny else {}, config["block_out_channels"][0])
        mofa = SurgSoraAdapter(**mofa_config).eval().requires_grad_(False)
    # diffusers' AlphaBlender makes its mix_factor with the legacy torch.Tensor([...]), which ignores the default
    # device: move everything once more
    unet, adapter, mofa = (m.to(ctx.device) for m in (unet, adapter, mofa))
    _fill_zero_layers(adapter, mofa)
    return dict(unet=unet, adapter=adapter, mofa=mofa)


def _run_section(name, fn, ctx, result, out_path, deadline):
    if time.perf_counter() > deadline:
        result[name] = {"ok": False, "error": "skipped: the time budget (--budget-s) was spent"}
        return
    print(f"--- {name}", flush=True)
    t0 = time.perf_counter()
    try:
        result[name] = fn(ctx)
    except Exception as e:  # noqa: BLE001 - one section's failure is recorded, the others still run
        result[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        print(result[name]["traceback"], flush=True)
    result[name]["seconds"] = round(time.perf_counter() - t0, 1)
    ctx.reset_peak()
    out_path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result[name].items() if k != "traceback"})[:2000], flush=True)


# ============================================================================================ splat

def splat_section(ctx: Ctx) -> dict:
    from surgsora.motion.preview import motion_signal
    from surgsora.motion.splat import forward_splat, softmax_splat, sum_splat

    g = torch.Generator().manual_seed(0)
    t1 = ctx.frames - 1
    h, w = ctx.height // 8, ctx.width // 8
    channels = 16 if ctx.tiny else 320
    feats = torch.rand(t1, channels, h, w, generator=g)
    flow = torch.randn(t1, 2, h, w, generator=g) * 4
    metric = torch.rand(t1, 1, h, w, generator=g) * 50
    dev = ctx.device
    checks = {}
    cases = {
        "forward_splat": lambda f, fl, m: forward_splat(f, fl),
        "forward_splat_softsplat": lambda f, fl, m: forward_splat(f, fl, normalize="softsplat"),
        "sum_splat": lambda f, fl, m: sum_splat(f, fl),
        "softmax_splat": lambda f, fl, m: softmax_splat(f, fl, m),
    }
    for name, fn in cases.items():
        ref = fn(feats, flow, metric)
        on_dev = fn(feats.to(dev), flow.to(dev), metric.to(dev)).cpu()
        scale = max(1.0, ref.abs().max().item())
        d32 = (on_dev - ref).abs().max().item()
        half_in = (feats.half(), flow.half(), metric.half())
        ref_half = fn(*(x.float() for x in half_in))
        half = fn(*(x.to(dev) for x in half_in)).cpu()
        d16 = (half.float() - ref_half).abs().max().item()
        tol16 = torch.finfo(torch.float16).eps * max(1.0, ref_half.abs().max().item())
        checks[name] = dict(fp32_max_diff=d32, fp32_tol=1e-5 * scale, fp16_max_diff=d16, fp16_tol=tol16,
                            finite=bool(torch.isfinite(half).all()),
                            ok=d32 <= 1e-5 * scale and d16 <= tol16 and bool(torch.isfinite(half).all()))
    _, splat_s = ctx.timed(lambda: forward_splat(feats.to(dev), flow.to(dev)), repeats=3)

    # the motion signal at the video's size (softmax splat, inpainting, masks) on the device vs the CPU
    image = torch.rand(1, 3, ctx.height, ctx.width, generator=g)
    base = torch.randn(t1, 2, 4, 4, generator=g) * 12
    vflow = torch.nn.functional.interpolate(base, size=(ctx.height, ctx.width), mode="bicubic")[None]
    depth = torch.rand(1, 1, ctx.height, ctx.width, generator=g)
    ref_video, ref_mask = motion_signal(image, vflow, depth=depth)
    video, mask = motion_signal(image.to(dev), vflow.to(dev), depth=depth.to(dev))
    vdiff = (video.cpu() - ref_video).abs().max().item()
    mask_flips = (mask.cpu() != ref_mask).float().mean().item()
    checks["motion_signal"] = dict(max_diff=vdiff, tol=1e-4, mask_fraction_differing=mask_flips, mask_tol=1e-3,
                                   ok=vdiff <= 1e-4 and mask_flips <= 1e-3)
    return dict(ok=all(c["ok"] for c in checks.values()), checks=checks, device_forward_splat_s=splat_s,
                shape=dict(frames=t1, channels=channels, height=h, width=w),
                note="fp32 tolerance 1e-5 of the range: CUDA's index_add_ adds in a non-deterministic order")


# ============================================================================================ steps

def _step_inputs(ctx: Ctx, unet, dtype, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(3)
    h, w = ctx.height // 8, ctx.width // 8
    x = dict(sample=torch.randn(batch, ctx.frames, unet.config.in_channels, h, w, generator=g),
             ehs=torch.randn(batch, 1, unet.config.cross_attention_dim, generator=g),
             time_ids=torch.tensor([[6.0, 127.0, 0.02]]).repeat(batch, 1),
             image=torch.rand(1, 3, ctx.height, ctx.width, generator=g) * 2 - 1,
             depth=torch.rand(1, 1, ctx.height, ctx.width, generator=g),
             seg=torch.randn(1, 256, 64, 64, generator=g),
             flow=torch.randn(1, ctx.frames - 1, 2, ctx.height, ctx.width, generator=g) * 4,
             anchor=torch.randn(1, ctx.frames, 4, h, w, generator=g),
             mask=(torch.rand(1, ctx.frames, 1, h, w, generator=g) > 0.5).float())
    x = {k: v.to(ctx.device, dtype) for k, v in x.items()}
    x["timestep"] = torch.tensor(1.5, device=ctx.device)
    return x


def _mode_steps(models: dict, x: dict) -> dict:
    """One step per mode; the condition branch of each adapter runs once here (as the pipeline does)."""
    unet, adapter, mofa = models["unet"], models["adapter"], models["mofa"]
    conds = adapter.encode_conditions(x["image"], x["depth"], x["seg"], x["flow"])
    mofa_conds = mofa.encode_conditions(x["image"], None, None, x["flow"])

    def bare():
        return unet_forward(unet, x["sample"], x["timestep"], x["ehs"], x["time_ids"])

    def with_adapter(a, c):
        down, mid = a(x["sample"], x["timestep"], x["ehs"], x["time_ids"], c)
        return unet_forward(unet, x["sample"], x["timestep"], x["ehs"], x["time_ids"], down, mid)

    def dual_clock():  # the bare step, then the latents inside the mask re-anchored to the noised signal
        out = bare()
        return out * (1 - x["mask"]) + (x["anchor"] + 0.7 * x["sample"][:1, :, :4]) * x["mask"]

    return dict(bare=bare, surgsora=lambda: with_adapter(adapter, conds), mofa=lambda: with_adapter(mofa, mofa_conds),
                dual_clock=dual_clock)


def steps_section(ctx: Ctx) -> dict:
    models = build_models(ctx)
    params = {k: round(sum(p.numel() for p in m.parameters()) / 1e9, 3) for k, m in models.items()}
    refs, times, drift, finite = {}, {}, {}, {}
    with torch.no_grad():
        for name, dtype in {"fp32": torch.float32, **ctx.half}.items():
            cast = models if name == "fp32" else {k: copy.deepcopy(m).to(dtype) for k, m in models.items()}
            steps = _mode_steps(cast, _step_inputs(ctx, cast["unet"], dtype))
            for mode, fn in steps.items():
                out, seconds = ctx.timed(fn)
                times[f"{mode}_{name}_s"] = seconds
                out = out.float()
                finite[f"{mode}_{name}"] = bool(torch.isfinite(out).all())
                if name == "fp32":
                    refs[mode] = out
                else:
                    ref = refs[mode]
                    diff = out - ref
                    drift[f"{mode}_{name}"] = dict(
                        rel_rms=round((diff.norm() / ref.norm().clamp_min(1e-12)).item(), 5),
                        max_diff_over_max=round((diff.abs().max() / ref.abs().max().clamp_min(1e-12)).item(), 5),
                        tol_rel_rms=STEP_DRIFT_TOL[name])
            del cast, steps
            ctx.reset_peak()
    ratios = {f"{mode}_over_bare_{name}": round(times[f"{mode}_{name}_s"] / times[f"bare_{name}_s"], 3)
              for name in ("fp32", *ctx.half) for mode in ("surgsora", "mofa", "dual_clock")}
    ok = all(finite.values()) and all(d["rel_rms"] <= d["tol_rel_rms"] for d in drift.values())
    return dict(ok=ok, params_billion=params, finite=finite, drift=drift, step_times=times, ratios=ratios,
                shape=dict(cfg_batch=2, frames=ctx.frames, height=ctx.height, width=ctx.width))


# ============================================================================================ memory

def _svd_parts(ctx: Ctx, dtype) -> dict:
    """Real-size (or tiny) SVD-xt components, random, in ``dtype`` on the CPU, plus the scheduler and CLIP processor."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    if ctx.tiny:
        from surgsora.tiny import tiny_svd_components

        parts = tiny_svd_components(seed=0, num_frames=ctx.frames)
        torch.manual_seed(0)
        parts["unet"] = UNetSpatioTemporalConditionModel(**_unet_config(ctx)).eval()
    else:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from surgsora.loading.svd_checkpoint import CONFIG_DIR, _scheduler_and_feature_extractor

        def read(part):
            return json.loads((CONFIG_DIR / part / "config.json").read_text())

        torch.manual_seed(0)
        init = ctx.device if ctx.cuda else torch.device("cpu")
        with torch.device(init):  # initialised on the GPU (fast), then kept on the CPU until a run needs them
            parts = dict(unet=UNetSpatioTemporalConditionModel.from_config(read("unet")).eval(),
                         vae=AutoencoderKLTemporalDecoder.from_config(read("vae")).eval(),
                         image_encoder=CLIPVisionModelWithProjection(
                             CLIPVisionConfig.from_dict(read("image_encoder"))).eval())
        parts["scheduler"], parts["feature_extractor"] = _scheduler_and_feature_extractor(None)
    for k in ("unet", "vae", "image_encoder"):
        parts[k] = parts[k].requires_grad_(False).to("cpu", dtype)
    return parts


def memory_section(ctx: Ctx) -> dict:
    from surgsora import SurgSoraPipeline
    from surgsora.motion.preview import motion_signal

    dtype = torch.float16 if ctx.cuda else torch.float32  # half on the CPU is slow (the steps section covers it)
    parts = _svd_parts(ctx, dtype)
    unet = parts["unet"]
    options = dict(conditioning_embedding_channels=TINY_CONDITIONING, depth_hidden_channels=(8, 16)) if ctx.tiny \
        else {}
    adapters = dict(surgsora=SurgSoraAdapter.from_unet(unet, **options),
                    mofa=SurgSoraAdapter(**mofa_adapter_config(
                        dict(unet.config, conditioning_embedding_out_channels=TINY_CONDITIONING) if ctx.tiny else {},
                        unet.config.block_out_channels[0])))
    for a in adapters.values():
        a.eval().requires_grad_(False).to("cpu", dtype)
        _fill_zero_layers(a)
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, ctx.height, ctx.width, generator=g)
    base = torch.randn(ctx.frames - 1, 2, 4, 4, generator=g) * 12
    flow = torch.nn.functional.interpolate(base, size=(ctx.height, ctx.width), mode="bicubic")[None]
    depth = torch.rand(1, 1, ctx.height, ctx.width, generator=g)
    seg = torch.randn(1, 256, 64, 64, generator=g)
    signal, signal_mask = motion_signal(image, flow, depth=depth)
    runs = dict(
        surgsora=(adapters["surgsora"], dict(flow=flow, depth=depth, seg_features=seg)),
        mofa=(adapters["mofa"], dict(flow=flow)),
        dual_clock=(None, dict(motion_signal=signal, motion_mask=signal_mask, t_weak_index=0, t_strong_index=1,
                               num_frames=ctx.frames)),
    )
    offloads = ("none", "model_cpu_offload") if ctx.cuda else ("none",)
    out, ok = {}, True
    for mode, (adapter, kw) in runs.items():
        for offload in offloads:
            key = f"{mode}_{offload}"
            pipe = SurgSoraPipeline(**parts, adapter=adapter)
            pipe.set_progress_bar_config(disable=True)
            try:
                if offload == "none":
                    pipe.to(ctx.device)
                else:
                    pipe.enable_model_cpu_offload(device=ctx.device)
                ctx.reset_peak()
                t0 = time.perf_counter()
                video = pipe(image, num_inference_steps=2, decode_chunk_size=8, max_guidance_scale=3.0,
                             generator=torch.Generator().manual_seed(0), **kw)
                ctx.sync()
                finite = bool(torch.isfinite(video).all())
                out[key] = dict(peak_gb=ctx.peak_gb(), seconds_2_steps=round(time.perf_counter() - t0, 2),
                                finite=finite, shape=list(video.shape))
                ok &= finite
            except Exception as e:  # noqa: BLE001 - e.g. out of memory with the models resident: recorded
                out[key] = dict(error=f"{type(e).__name__}: {e}"[:500])
                ok = False
            finally:
                if offload != "none":
                    pipe.remove_all_hooks()
                pipe.to("cpu")
                del pipe
                ctx.reset_peak()
    weights = {k: round(sum(p.numel() * p.element_size() for p in m.parameters()) / 2 ** 30, 2)
               for k, m in dict(parts, surgsora_adapter=adapters["surgsora"], mofa_adapter=adapters["mofa"]).items()
               if isinstance(m, torch.nn.Module)}
    return dict(ok=ok, dtype=str(dtype).replace("torch.", ""), runs=out, weights_gb=weights,
                shape=dict(frames=ctx.frames, height=ctx.height, width=ctx.width, steps=2, decode_chunk=8),
                note=("peak_gb is torch.cuda.max_memory_allocated over a whole generation (2 steps: the peak does "
                      "not depend on the step count); the VAE decodes in fp32 (diffusers' force_upcast); SAM and "
                      "Depth Anything run before SVD loads and are not included. None on the CPU."))


# ============================================================================================ train

def train_section(ctx: Ctx) -> dict:
    """One (three, so that a step the GradScaler skips for an inf gradient is seen) fp16 training steps (bf16 in the
    CPU smoke run, through the same GradScaler code)."""
    models = build_models(ctx)
    unet, adapter = models["unet"], models["adapter"]
    del models["mofa"]
    amp_dtype = ctx.amp_dtype
    unet.to(amp_dtype)
    adapter.train().requires_grad_(True)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(ctx.device.type)
    g = torch.Generator().manual_seed(9)
    size, frames = ctx.train_size, ctx.train_frames
    h = size // 8
    x = dict(sample=torch.randn(1, frames, unet.config.in_channels, h, h, generator=g),
             ehs=torch.randn(1, 1, unet.config.cross_attention_dim, generator=g),
             time_ids=torch.tensor([[6.0, 127.0, 0.02]]), target=torch.randn(1, frames, 4, h, h, generator=g),
             image=torch.rand(1, 3, size, size, generator=g) * 2 - 1, depth=torch.rand(1, 1, size, size, generator=g),
             seg=torch.randn(1, 256, 64, 64, generator=g),
             flow=torch.randn(1, frames - 1, 2, size, size, generator=g) * 3)
    x = {k: v.to(ctx.device) for k, v in x.items()}
    before = [p.detach().clone() for p in list(adapter.parameters())[:8]]
    log = []
    ctx.reset_peak()
    for step in range(3):
        ctx.sync()
        t0 = time.perf_counter()
        with torch.autocast(ctx.device.type, dtype=amp_dtype):
            conds = adapter.encode_conditions(x["image"], x["depth"], x["seg"], x["flow"])
            down, mid = adapter(x["sample"], 1.5, x["ehs"], x["time_ids"], conds)
            pred = unet_forward(unet, x["sample"].to(amp_dtype), 1.5, x["ehs"].to(amp_dtype),
                                x["time_ids"].to(amp_dtype), down, mid)
            loss = torch.nn.functional.mse_loss(pred.float(), x["target"])
        scale = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        ctx.sync()
        log.append(dict(loss=round(loss.item(), 5), grad_norm=round(float(grad_norm), 5), scale_before=scale,
                        scale_after=scaler.get_scale(), seconds=round(time.perf_counter() - t0, 3)))
    updated = any(not torch.equal(b, p.detach()) for b, p in zip(before, list(adapter.parameters())[:8]))
    finite_loss = all(torch.isfinite(torch.tensor(s["loss"])) for s in log)
    return dict(ok=bool(updated and finite_loss), steps=log, weights_updated=updated, peak_gb=ctx.peak_gb(),
                shape=dict(frames=frames, size=size),
                amp=f"autocast {str(amp_dtype)[6:]} + GradScaler, frozen UNet in {str(amp_dtype)[6:]}, adapter "
                    "weights fp32",
                note="a step whose gradients hold inf/NaN is skipped by the GradScaler and its scale halved")


SECTIONS = {"splat": splat_section, "steps": steps_section, "memory": memory_section, "train": train_section}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu (with --tiny: the CI smoke run)")
    ap.add_argument("--tiny", action="store_true", help="tiny models and sizes: the code paths in seconds")
    ap.add_argument("--out", default="gpu_suite.json", help="the JSON file written (after every section)")
    ap.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run only these sections")
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--height", type=int, default=576)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per step (after one warm-up)")
    ap.add_argument("--budget-s", type=float, default=450, help="sections not started by then are skipped")
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available here; use --device cpu --tiny for the smoke run.")
    if args.tiny:
        args.repeats = 1
    ctx = Ctx(args)
    out = Path(args.out)
    t0 = time.perf_counter()
    result = dict(
        suite="surgsora gpu_suite", tiny=args.tiny, device=str(ctx.device),
        device_name=torch.cuda.get_device_name(ctx.device) if ctx.cuda else platform.processor() or "cpu",
        torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
        weights=("random: real architectures (SVD-xt UNet / VAE / CLIP ViT-H from the packaged configs, the SurgSora "
                 "adapter, MOFA-Video-Traj's ControlNet layout) with random initialisation; no real checkpoint can be "
                 "downloaded on the machines this runs on"),
    )
    deadline = t0 + args.budget_s
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        _run_section(name, fn, ctx, result, out, deadline)
    ran = [k for k in SECTIONS if k in result]
    result["ok"] = all(result[k].get("ok", False) for k in ran)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if not ctx.cuda:
        result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
    out.write_text(json.dumps(result, indent=2))
    states = ", ".join(f"{k}={'ok' if result[k].get('ok') else 'NOT ok'}" for k in ran)
    print(f"{'ok' if result['ok'] else 'NOT ok'}: {states}; {result['seconds']} s; wrote {out}", flush=True)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
