"""Cost of the SurgSora adapter per denoising step, at real size, measured side by side.

Builds the real-size SVD UNet (diffusers defaults = the SVD/SVD-xt architecture, random weights) and the
real-size SurgSoraAdapter, then times, interleaved in one process:

  (a) one bare UNet step;
  (b) one SurgSora step with cached conditions (adapter trunk + UNet with residuals);
  (c) one SurgSora step that recomputes the condition branch (DSI + DFM + MSF) every step, as the
      published code does;
  (d) one MOFA-mode step (MOFA-Video-Traj's ControlNet configuration: RGB stream only, deepest feature
      injected three times, residual multiplicity folded in), conditions cached;
  (e) one dual-clock step on plain SVD (the bare step plus re-anchoring the latents inside the mask to the
      motion signal noised to the next level), and (f) the same with the cached SurgSora step.
Targets: cached_over_bare <= 1.55 and < recompute_over_bare; dual_clock_over_bare <= 1.02 and
dual_clock_adapter_over_cached <= 1.02.

Prints medians, the ratios b/a and c/a, the condition branch alone, peak RSS, and one JSON line at the end.
Target: cached_over_bare <= 1.55 and cached_over_bare < recompute_over_bare.

    python benchmarks/adapter_overhead.py [--size 256] [--frames 14] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # comfy_step.py puts the repo after ComfyUI (whose `nodes` must win); keep that order
    sys.path.insert(0, str(REPO))

from diffusers import UNetSpatioTemporalConditionModel  # noqa: E402

from surgsora import SurgSoraAdapter  # noqa: E402
from surgsora.loading.warm_start import mofa_adapter_config  # noqa: E402
from surgsora.model.unet import unet_forward  # noqa: E402

# A tiny SVD UNet for smoke runs: 64-channel attention heads, as ComfyUI's SVD model assumes.
TINY_UNET = dict(
    block_out_channels=(64, 128), layers_per_block=1, in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    cross_attention_dim=64, num_attention_heads=(1, 2), projection_class_embeddings_input_dim=768,
    addition_time_embed_dim=256)
TINY_ADAPTER = dict(conditioning_embedding_channels=(8, 8, 8, 16), depth_hidden_channels=(8, 16))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def give_zero_layers_values(*modules: torch.nn.Module, std: float = 0.02) -> None:
    """Fill zero-initialised parameters with small random values, so adapters do real work (as after training)."""
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                if not p.any():
                    p.normal_(0, std)


def build_unet_and_adapter(tiny: bool = False) -> tuple[UNetSpatioTemporalConditionModel, SurgSoraAdapter]:
    """The SVD UNet (diffusers defaults = SVD/SVD-xt, or ``TINY_UNET``; random weights) and a SurgSoraAdapter
    built from it, zero layers filled, both in eval mode without gradients."""
    unet = UNetSpatioTemporalConditionModel(**(TINY_UNET if tiny else {})).eval().requires_grad_(False)
    adapter = SurgSoraAdapter.from_unet(unet, **(TINY_ADAPTER if tiny else {})).eval().requires_grad_(False)
    give_zero_layers_values(adapter)
    return unet, adapter


def step_inputs(unet, size: int, frames: int, batch: int = 1) -> dict[str, torch.Tensor]:
    """Random inputs of one denoising step (``batch`` rows, e.g. 2 for a CFG-batched step) and of the
    condition branch (one video: image in [-1, 1], depth, SAM features, flow in pixels)."""
    h = size // 8
    return dict(
        sample=torch.randn(batch, frames, unet.config.in_channels, h, h),
        timestep=torch.tensor(1.5),
        ehs=torch.randn(batch, 1, unet.config.cross_attention_dim),
        time_ids=torch.tensor([[6.0, 127.0, 0.02]]).repeat(batch, 1),
        image=torch.rand(1, 3, size, size) * 2 - 1,
        depth=torch.rand(1, 1, size, size),
        seg=torch.randn(1, 256, 64, 64),
        flow=torch.randn(1, frames - 1, 2, size, size) * 4,
    )


def encode_conditions(adapter, x: dict) -> list[torch.Tensor]:
    """The condition branch (DSI + DFM + MSF) of one video, computed once."""
    with torch.no_grad():
        return adapter.encode_conditions(x["image"], x["depth"], x["seg"], x["flow"])


def bare_and_cached_steps(unet, adapter, x: dict, cached) -> tuple[Callable, Callable]:
    """(one bare UNet step, one SurgSora step with cached conditions: adapter trunk + UNet with residuals),
    as SurgSoraPipeline.denoise runs them; call them under ``torch.no_grad()``."""
    def bare():
        return unet_forward(unet, x["sample"], x["timestep"], x["ehs"], x["time_ids"])

    def surgsora_cached():
        down, mid = adapter(x["sample"], x["timestep"], x["ehs"], x["time_ids"], cached)
        return unet_forward(unet, x["sample"], x["timestep"], x["ehs"], x["time_ids"], down, mid)

    return bare, surgsora_cached


def time_interleaved(variants: dict[str, Callable], repeats: int, before: Callable | None = None,
                     after: Callable | None = None) -> dict[str, list[float]]:
    """Run ``variants`` in turn, ``repeats`` + 1 rounds (round 0 is a warm-up, not kept); seconds per call.

    ``before(name)`` and ``after(name)`` run around each call, outside the timed span."""
    times = {k: [] for k in variants}
    for r in range(repeats + 1):
        for name, fn in variants.items():
            if before is not None:
                before(name)
            t1 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t1
            if after is not None:
                after(name)
            if r:
                times[name].append(dt)
            print(f"round {r} {name:10s} {dt:7.2f} s{'  (warm-up)' if r == 0 else ''}", flush=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    unet, adapter = build_unet_and_adapter()
    mofa = SurgSoraAdapter(**mofa_adapter_config({}, 320)).eval().requires_grad_(False)  # MOFA's real widths
    give_zero_layers_values(mofa)
    print(f"built real-size UNet ({sum(p.numel() for p in unet.parameters()) / 1e9:.2f} B params) and adapter "
          f"({sum(p.numel() for p in adapter.parameters()) / 1e9:.2f} B) in {time.perf_counter() - t0:.0f} s",
          flush=True)

    s, t = args.size, args.frames
    h = s // 8
    x = step_inputs(unet, s, t)
    sample, timestep, ehs, time_ids = x["sample"], x["timestep"], x["ehs"], x["time_ids"]
    image, depth, seg, flow = x["image"], x["depth"], x["seg"], x["flow"]

    with torch.no_grad():
        cached = encode_conditions(adapter, x)
        mofa_cached = mofa.encode_conditions(image, None, None, flow)
        bare, surgsora_cached = bare_and_cached_steps(unet, adapter, x, cached)

        def surgsora_recompute():
            conds = adapter.encode_conditions(image, depth, seg, flow)
            down, mid = adapter(sample, timestep, ehs, time_ids, conds)
            return unet_forward(unet, sample, timestep, ehs, time_ids, down, mid)

        def mofa_cached_step():
            down, mid = mofa(sample, timestep, ehs, time_ids, mofa_cached)
            return unet_forward(unet, sample, timestep, ehs, time_ids, down, mid)

        # dual-clock re-anchoring: what SurgSoraPipeline.denoise adds after each step while i < t_strong
        ref = torch.randn(1, t, 4, h, h)
        fixed_noise = torch.randn_like(ref)
        mask = (torch.rand(1, t, 1, h, h) > 0.5).float()

        def reanchor(out):
            target = ref + fixed_noise * 0.7
            return out[:, :, :4] * (1 - mask) + target * mask

        def dual_clock():
            return reanchor(bare())

        def dual_clock_adapter():
            return reanchor(surgsora_cached())

        def condition_branch():
            return adapter.encode_conditions(image, depth, seg, flow)

        variants = {"bare": bare, "cached": surgsora_cached, "recompute": surgsora_recompute,
                    "mofa": mofa_cached_step, "dual_clock": dual_clock, "dual_clock_adapter": dual_clock_adapter,
                    "condition": condition_branch}
        times = time_interleaved(variants, args.repeats)

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "bare_s": round(med["bare"], 3),
        "cached_s": round(med["cached"], 3),
        "recompute_s": round(med["recompute"], 3),
        "cached_over_bare": round(med["cached"] / med["bare"], 3),
        "recompute_over_bare": round(med["recompute"] / med["bare"], 3),
        "mofa_s": round(med["mofa"], 3),
        "mofa_over_bare": round(med["mofa"] / med["bare"], 3),
        "dual_clock_over_bare": round(med["dual_clock"] / med["bare"], 3),
        "dual_clock_adapter_over_cached": round(med["dual_clock_adapter"] / med["cached"], 3),
        "condition_branch_s": round(med["condition"], 3),
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }
    print(f"\n{s}x{s}, {t} frames, batch 1, {args.threads} threads, median of {args.repeats}:")
    print(f"  bare UNet step          {med['bare']:.2f} s")
    print(f"  SurgSora, cached conds  {med['cached']:.2f} s  ({result['cached_over_bare']:.2f}x)")
    print(f"  SurgSora, recomputed    {med['recompute']:.2f} s  ({result['recompute_over_bare']:.2f}x)")
    print(f"  MOFA mode, cached conds {med['mofa']:.2f} s  ({result['mofa_over_bare']:.2f}x)")
    print(f"  dual-clock, plain SVD   {med['dual_clock']:.2f} s  ({result['dual_clock_over_bare']:.3f}x bare)")
    print(f"  dual-clock + SurgSora   {med['dual_clock_adapter']:.2f} s  ({result['dual_clock_adapter_over_cached']:.3f}x "
          "cached)")
    print(f"  condition branch alone  {med['condition']:.2f} s  (saved per step by caching; x2 with CFG in the "
          "published code)")
    print(f"  peak RSS                {result['peak_rss_gb']:.2f} GB")
    ok = result["cached_over_bare"] <= 1.55 and result["cached_over_bare"] < result["recompute_over_bare"]
    print(f"  target (cached/bare <= 1.55 and < recompute/bare): {'met' if ok else 'NOT met'}")
    ok = result["dual_clock_over_bare"] <= 1.02 and result["dual_clock_adapter_over_cached"] <= 1.02
    print(f"  target (dual-clock step <= 1.02x the step it anchors): {'met' if ok else 'NOT met'}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
