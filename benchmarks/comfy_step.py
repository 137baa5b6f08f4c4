"""One core KSampler step with ``SurgSora Apply (SVD)`` vs without, in the real ComfyUI on the CPU, beside the
diffusers-path step ratio, with the peak RSS of each, in one process.

Run it with ComfyUI's Python (it imports ``comfy``), from anywhere; the repo goes on ``sys.path`` after ComfyUI
(whose own ``nodes`` module must win), as ``tests/integration/core_parity.py`` does:

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfyui-venv/bin/python benchmarks/comfy_step.py \\
        [--repeats 2] [--size 256] [--frames 14] [--threads 2] [--tiny]

What it builds: the real-size SVD-xt UNet (diffusers' default ``UNetSpatioTemporalConditionModel`` config,
1.52 B parameters, random weights) and the real-size SurgSoraAdapter made from it (``adapter_overhead.py``'s
helpers). The UNet's tensors are renamed with our sgm <-> diffusers key table (``plan_rules``) and become
ComfyUI's SVD model: ComfyUI detects the config from the keys (``model_config_from_unet``, as
``comfy.sd.load_diffusion_model_state_dict`` does), builds its own ``SVD_img2vid`` model and takes the tensors
without a copy (``load_state_dict(assign=True)`` where the core loader copies), so both paths run the same
weights and the process holds them once (~6 GB instead of ~12). ``--tiny`` runs the same at a tiny config
(smoke test; ComfyUI only detects full-size SVD, so there its SVD class is built from the detected UNet config,
as core_parity.py does).

What it times, interleaved round by round (round 0 is a warm-up), medians:

* ComfyUI: ``nodes.common_ksampler`` (the core KSampler node's function) with steps=1, euler/karras, cfg 2.5
  (cond and uncond batched into one model call, as in real use; the batch sizes seen are reported), core SVD
  conditioning as ``SVD_img2vid_Conditioning`` builds it (CLIP embedding -> ``c_crossattn``, the frame latent
  -> ``concat_latent_image``, fps / motion_bucket_id / augmentation_level -> ``y``, frames from the latent),
  without and with the control of ``SurgSoraApplySVD.apply`` (the node's function) on the same conditioning.
  The step includes core's per-run work (model loading checks, control pre_run / cleanup, noise).
  On the CPU core batches cond + uncond only when 1.5x its estimate of the batched call (0.15 MiB x 2 per latent
  element: ~12.6 GB at 256x256 x 14 frames) is below the RAM available at that moment, so on a shared machine
  it flips between one call of 28 and two of 14 from step to step. The benchmark therefore tells core the
  batched call fits (``memory_required`` of its model returns 0; on the CPU nothing else reads it);
  ``--core-batching`` leaves the decision to core. Core's estimate and the RAM available are reported.
* diffusers: one UNet step bare vs one SurgSora step with cached conditions (``adapter_overhead.py``'s
  ``bare_and_cached_steps``) at batch 2, the CFG batch SurgSoraPipeline runs.

The conditions (DSI + DFM + MSF of random features) are computed once and shared by both paths.

Peak RSS: ``VmHWM`` of /proc/self/status, reset before every timed call by writing "5" to
/proc/self/clear_refs, so each variant's figure is the highest RSS during its own calls (weights included);
where clear_refs is not writable a thread samples ``VmRSS`` every 5 ms instead (reported as ``rss_method``).

Prints a small table and one final JSON line. Load averages at start and end say how busy the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFY_CFG, COMFY_SAMPLER, COMFY_SCHEDULER = 2.5, "euler", "karras"
FPS, MOTION_BUCKET, AUGMENTATION = 7, 127, 0.02  # the diffusers step's time ids are [fps - 1, bucket, aug]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds after one warm-up round (default 2)")
    ap.add_argument("--size", type=int, default=None, help="video side in pixels (default 256; 64 with --tiny)")
    ap.add_argument("--frames", type=int, default=None, help="video frames (default 14; 3 with --tiny)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--tiny", action="store_true", help="tiny UNet and adapter: a smoke run in seconds")
    ap.add_argument("--core-batching", action="store_true",
                    help="let core decide from free RAM whether cond and uncond share one model call (default: "
                         "they always do, so every step is timed alike)")
    args = ap.parse_args(argv)
    # None = not given (an explicit 0 must be refused below, not replaced by the default)
    args.size = (64 if args.tiny else 256) if args.size is None else args.size
    args.frames = (3 if args.tiny else 14) if args.frames is None else args.frames
    if args.size % 64 or args.size <= 0 or args.frames < 2 or args.repeats < 1 or args.threads < 1:
        ap.error("--size must be a positive multiple of 64, --frames at least 2, --repeats and --threads at least 1")
    return args


def comfyui_path() -> str:
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        sys.exit("comfy_step.py: COMFYUI_PATH is not set; point it at a ComfyUI checkout and run this with "
                 "that ComfyUI's Python.")
    if not (Path(path, "comfy", "samplers.py").is_file() and Path(path, "nodes.py").is_file()):
        sys.exit(f"comfy_step.py: COMFYUI_PATH={path} is not a ComfyUI checkout (no comfy/samplers.py and "
                 "nodes.py there).")
    return str(Path(path).resolve())


def import_comfyui(path: str):
    """ComfyUI in-process on the CPU, as core_parity.py imports it; returns the pack's core_svd and generation
    modules (the pack imported as ComfyUI's load_custom_node imports it)."""
    import importlib.util

    sys.path.insert(0, path)
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # after ComfyUI, whose own `nodes` module must win
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401

    spec = importlib.util.spec_from_file_location("ComfyUI_SurgSora", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    spec.loader.exec_module(pack)
    return sys.modules["ComfyUI_SurgSora.nodes.core_svd"], sys.modules["ComfyUI_SurgSora.nodes.generation"]


class PeakRSS:
    """Highest RSS since the last ``reset()``: VmHWM after clear_refs "5", else a 5 ms sampling thread."""

    def __init__(self):
        self.method = "VmHWM after clear_refs 5"
        self._max = 0
        try:
            self._clear()
        except OSError:
            self.method = "VmRSS sampled every 5 ms"
            threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def _clear():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"no {field} in /proc/self/status")

    def _sample(self):
        while True:
            self._max = max(self._max, self._status_kib("VmRSS"))
            time.sleep(0.005)

    def rss_gb(self) -> float:
        return self._status_kib("VmRSS") / 1024 ** 2

    def reset(self):
        if self.method.startswith("VmHWM"):
            self._clear()
        else:
            self._max = self._status_kib("VmRSS")

    def peak_gb(self) -> float:
        kib = self._status_kib("VmHWM") if self.method.startswith("VmHWM") else self._max
        return kib / 1024 ** 2


def comfy_svd_patcher(unet, tiny: bool):
    """ComfyUI's SVD model (in a ModelPatcher) holding the diffusers UNet's own tensors under sgm names."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    from surgsora.loading.svd_checkpoint import COPY, UNET_PREFIX, plan_rules

    state = unet.state_dict()  # detached views of the parameters: no copy
    sd = {}
    for rule in plan_rules({"unet": unet}):
        if rule.kind != COPY:
            raise RuntimeError(f"unexpected key rule {rule.kind} for {rule.target}")
        sd[rule.source[len(UNET_PREFIX):]] = state[rule.target]
    if tiny:  # ComfyUI detects only full-size SVD; its SVD class from the detected UNet config (as core_parity.py)
        config = comfy.supported_models.SVD_img2vid(comfy.model_detection.detect_unet_config(sd, ""))
    else:
        config = comfy.model_detection.model_config_from_unet(sd, "")
    if not isinstance(config, comfy.supported_models.SVD_img2vid):
        raise RuntimeError(f"ComfyUI detected {type(config).__name__} from the UNet's keys, not SVD_img2vid")
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model(sd, "")  # ComfyUI's ops leave the weights uninitialised (untouched pages)
    missing, unexpected = model.diffusion_model.load_state_dict(config.process_unet_state_dict(sd), strict=False,
                                                                assign=True)
    if missing or unexpected:
        raise RuntimeError(f"key table mismatch: missing {missing[:4]}, unexpected {unexpected[:4]}")
    shared = model.diffusion_model.input_blocks[0][0].weight.data_ptr() == unet.conv_in.weight.data_ptr()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return patcher, shared


def svd_conditioning(context_dim: int, h: int, w: int, frames: int):
    """positive, negative, latent as core SVD_img2vid_Conditioning returns them (random CLIP embedding and
    frame latent in place of the encoders' outputs)."""
    import torch

    g = torch.Generator().manual_seed(2)
    pooled = torch.randn(1, 1, context_dim, generator=g)
    frame_latent = torch.randn(1, 4, h, w, generator=g)
    ids = {"motion_bucket_id": MOTION_BUCKET, "fps": FPS, "augmentation_level": AUGMENTATION}
    positive = [[pooled, {**ids, "concat_latent_image": frame_latent}]]
    negative = [[torch.zeros_like(pooled), {**ids, "concat_latent_image": torch.zeros_like(frame_latent)}]]
    return positive, negative, {"samples": torch.zeros([frames, 4, h, w])}


def main(argv=None) -> None:
    args = parse_args(argv)
    path = comfyui_path()
    load_start = os.getloadavg()
    core_svd, generation = import_comfyui(path)

    import comfy.utils
    import nodes as comfy_nodes  # ComfyUI's nodes.py (common_ksampler is the KSampler node's function)
    import torch

    comfy.utils.PROGRESS_BAR_ENABLED = False  # no tqdm bar per step (common_ksampler reads this)

    if not hasattr(comfy_nodes, "common_ksampler"):
        sys.exit(f"comfy_step.py: `nodes` resolved to {comfy_nodes.__file__}, not ComfyUI's nodes.py.")

    from adapter_overhead import (bare_and_cached_steps, build_unet_and_adapter, encode_conditions, step_inputs,
                                  time_interleaved)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rss = PeakRSS()

    t0 = time.perf_counter()
    unet, adapter = build_unet_and_adapter(tiny=args.tiny)
    patcher, shared = comfy_svd_patcher(unet, args.tiny)
    unet_params = sum(p.numel() for p in unet.parameters())
    adapter_params = sum(p.numel() for p in adapter.parameters())
    build_s = time.perf_counter() - t0
    print(f"built UNet ({unet_params / 1e9:.3f} B params), adapter ({adapter_params / 1e9:.3f} B) and ComfyUI's "
          f"{type(patcher.model).__name__} (weights shared: {shared}) in {build_s:.0f} s; RSS {rss.rss_gb():.2f} GB",
          flush=True)

    size, frames, h = args.size, args.frames, args.size // 8
    x = step_inputs(unet, size, frames, batch=2)  # batch 2: cond + uncond, as both samplers run CFG
    cached = encode_conditions(adapter, x)
    bare, surgsora_cached = bare_and_cached_steps(unet, adapter, x, cached)

    positive, negative, latent = svd_conditioning(unet.config.cross_attention_dim, h, h, frames)
    conditions = generation.Conditions([c.cpu() for c in cached], (x["image"] + 1) / 2)
    pos_s, neg_s = core_svd.SurgSoraApplySVD().apply(positive, negative, adapter, conditions)

    model = patcher.model
    estimate_gb = model.memory_required([2 * frames, 4, h, h]) * 1.5 / 1024 ** 3
    available_gb = comfy.model_management.get_free_memory(torch.device("cpu")) / 1024 ** 3
    if not args.core_batching:
        model.memory_required = lambda input_shape, cond_shapes={}: 0  # the batched call always "fits"

    batches = {"comfy_bare": [], "comfy_surgsora": []}  # each core model call's batch: 2 * frames = cond + uncond
    current = [None]

    def record_batch(apply_model, a):
        batches[current[0]].append(int(a["input"].shape[0]))
        return apply_model(a["input"], a["timestep"], **a["c"])

    patcher.set_model_unet_function_wrapper(record_batch)
    outputs = {}

    def comfy_step(name, pos, neg):
        def run():
            current[0] = name
            with torch.inference_mode():  # as ComfyUI's executor runs every node
                out = comfy_nodes.common_ksampler(patcher, 0, 1, COMFY_CFG, COMFY_SAMPLER, COMFY_SCHEDULER, pos, neg,
                                                  latent)[0]["samples"]
            outputs.setdefault(name, out)
        return run

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    variants = {"comfy_bare": comfy_step("comfy_bare", positive, negative),
                "comfy_surgsora": comfy_step("comfy_surgsora", pos_s, neg_s),
                "diff_bare": no_grad(bare), "diff_cached": no_grad(surgsora_cached)}
    peaks = {k: 0.0 for k in variants}
    baseline = rss.rss_gb()

    def after(name):
        peaks[name] = max(peaks[name], rss.peak_gb())

    times = time_interleaved(variants, args.repeats, before=lambda name: rss.reset(), after=after)
    load_end = os.getloadavg()

    med = {k: statistics.median(v) for k, v in times.items()}
    calls = sum(map(len, batches.values())) / (2 * (args.repeats + 1))  # model calls per core step
    result = {
        "size": size, "frames": frames, "threads": args.threads, "repeats": args.repeats, "tiny": args.tiny,
        "unet_params_b": round(unet_params / 1e9, 3), "adapter_params_b": round(adapter_params / 1e9, 3),
        "comfy_model": type(patcher.model).__name__, "weights_shared": shared,
        "comfy_bare_s": round(med["comfy_bare"], 3),
        "comfy_surgsora_s": round(med["comfy_surgsora"], 3),
        "comfy_ratio": round(med["comfy_surgsora"] / med["comfy_bare"], 3),
        "diffusers_bare_s": round(med["diff_bare"], 3),
        "diffusers_cached_s": round(med["diff_cached"], 3),
        "diffusers_ratio": round(med["diff_cached"] / med["diff_bare"], 3),
        "comfy_model_calls_per_step": calls,
        "comfy_call_batches": {k: sorted(set(v)) for k, v in batches.items()},
        "comfy_batching": "core" if args.core_batching else "forced",
        "core_batch_estimate_gb": round(estimate_gb, 2), "available_gb_at_start": round(available_gb, 2),
        "control_effect_max_abs": float((outputs["comfy_surgsora"] - outputs["comfy_bare"]).abs().max()),
        "rss_weights_gb": round(baseline, 2),
        "comfy_peak_rss_gb": round(max(peaks["comfy_bare"], peaks["comfy_surgsora"]), 2),
        "diffusers_peak_rss_gb": round(max(peaks["diff_bare"], peaks["diff_cached"]), 2),
        "peak_rss_gb": {k: round(v, 2) for k, v in peaks.items()},
        "rss_method": rss.method,
        "build_s": round(build_s, 1),
        "loadavg_start": [round(v, 2) for v in load_start], "loadavg_end": [round(v, 2) for v in load_end],
        "cpu_count": os.cpu_count(),
    }
    print(f"\n{size}x{size}, {frames} frames, {args.threads} threads, median of {args.repeats} "
          f"(load average {load_start[0]:.1f} -> {load_end[0]:.1f} on {os.cpu_count()} CPUs):")
    print(f"  {'':36s} {'bare':>8s} {'SurgSora':>9s} {'ratio':>6s} {'peak RSS':>9s}")
    print(f"  {'ComfyUI KSampler, 1 step, cfg ' + str(COMFY_CFG):36s} {med['comfy_bare']:7.2f}s "
          f"{med['comfy_surgsora']:8.2f}s {result['comfy_ratio']:5.2f}x {result['comfy_peak_rss_gb']:6.2f} GB")
    print(f"  {'diffusers UNet step, batch 2':36s} {med['diff_bare']:7.2f}s {med['diff_cached']:8.2f}s "
          f"{result['diffusers_ratio']:5.2f}x {result['diffusers_peak_rss_gb']:6.2f} GB")
    print(f"  RSS with the weights loaded (before timing): {baseline:.2f} GB")
    print(f"  core model calls per step: {calls:g}, batches {result['comfy_call_batches']} "
          f"({result['comfy_batching']}; core wants {estimate_gb:.1f} GB free to batch, {available_gb:.1f} GB was)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
