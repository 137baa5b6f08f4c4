"""Dual-clock sampling on ComfyUI's own Wan models vs the same core sampling without it: time and peak RSS, in
one process (the wrapper route users complain about doubles both; target <= 1.05x).

Run it with ComfyUI's Python (it imports ``comfy``), from anywhere:

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfyui-venv/bin/python benchmarks/dual_clock_models.py \\
        [--frames 33] [--size 256] [--dim 256] [--layers 2] [--steps 8] [--repeats 3] [--threads 2]

For each family, a Wan DiT built from ComfyUI's own ``WanModel`` (random weights, every key, ``--dim`` wide,
``--layers`` blocks: the ratio does not need full width) is loaded through ComfyUI's detection
(``load_diffusion_model_state_dict``): Wan 2.2 I2V A14B layout (core ``WAN21``: 36 input channels, the
first-frame conditioning as WanImageToVideo makes it) and Wan 2.2 TI2V-5B layout (core ``WAN22``: 48 channels,
the first frame kept by the latent's noise mask as Wan22ImageToVideoLatent makes it). Both variants sample the
same steps (from t_weak, Euler, cfg 3.5, one CFG batch): plain core ``CFGGuider`` on the signal's latent, and the
``SurgSora Dual-Clock Guider`` with a mask over half of the video, anchored until t_strong. Rounds are
interleaved (round 0 is a warm-up); times are the fastest round's (on a shared machine the median moves with
other processes' load; the fastest is the run least disturbed). SVD's guider equals the one it replaced bit for
bit (tests/integration/test_core_svd.py), so it is not repeated here.

Peak RSS: ``VmHWM`` of /proc/self/status, reset before each timed call by writing "5" to /proc/self/clear_refs;
where that is not writable, a thread samples ``VmRSS`` every 5 ms. Prints a table and one final JSON line.

``--motion-signal`` also times the motion signal a Wan run needs: ``python -m surgsora preview`` (analytic decoder,
occlusion-aware warp, mask) on the EndoVis frame and the demo tracks at ``--signal-sizes`` (default 25 x 512x288,
81 x 832x480, 81 x 1280x720), each in a fresh process whose peak RSS is its own (``os.wait4``), against the first
size (target: memory flat within 1.5x). The larger sizes need many GB; the tracks are not Wan-specific.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=33, help="pixel frames (4n + 1)")
    ap.add_argument("--size", type=int, default=256, help="video width = height in pixels")
    ap.add_argument("--dim", type=int, default=256, help="DiT width (a multiple of 128)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--motion-signal", action="store_true", help="also time the motion signal (see above)")
    ap.add_argument("--signal-sizes", nargs="+", default=["25x512x288", "81x832x480", "81x1280x720"],
                    help="FRAMESxWIDTHxHEIGHT")
    ap.add_argument("--skip-models", action="store_true", help="only the motion signal")
    return ap.parse_args(argv)


def motion_signal_runs(sizes: list[str]) -> list[dict]:
    """``python -m surgsora preview`` per size in a fresh process: wall time and that process's peak RSS (the one
    measurement, shared with ``benchmarks/trajectory_memory.py --sizes``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from trajectory_memory import preview_runs

    return preview_runs(sizes)


class PeakRSS:
    """Highest resident memory (MB) during a block."""

    def __init__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "sampled VmRSS"

    @staticmethod
    def _status(key: str) -> float:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        return 0.0

    def __enter__(self):
        if self.method == "VmHWM":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        else:
            self.peak, self._stop = self._status("VmRSS"), threading.Event()

            def sample():
                while not self._stop.wait(0.005):
                    self.peak = max(self.peak, self._status("VmRSS"))

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.method == "VmHWM":
            self.peak = self._status("VmHWM")
        else:
            self._stop.set()
            self._thread.join()


def import_comfyui():
    """ComfyUI in-process on the CPU and the pack loaded as ComfyUI loads it (the integration scripts' start-up);
    returns the pack's core_svd module."""
    if not os.environ.get("COMFYUI_PATH"):
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout and run with its Python")
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    from in_comfyui import pack_module, start

    start(threads=None)
    return pack_module("nodes.core_svd")


def family_case(name: str, args, g):
    """(patcher, positive, negative, latent, noise_mask or None, signal, mask) for one family."""
    import comfy.sd
    import torch
    from integration.wan_models import TEXT_DIM, tiny_wan_state

    channels, spatial = (16, 8) if name == "WAN21" else (48, 16)
    patcher = comfy.sd.load_diffusion_model_state_dict(tiny_wan_state(channels, True, 0, args.dim, args.layers))
    assert type(patcher.model).__name__ == name
    frames = (args.frames - 1) // 4 + 1
    h = w = args.size // spatial
    shape = (1, channels, frames, h, w)
    text = torch.randn(1, 16, TEXT_DIM, generator=g)
    positive, negative = [[text, {}]], [[torch.zeros_like(text), {}]]
    noise_mask = None
    if name == "WAN21":  # WanImageToVideo's first-frame conditioning
        extra = {"concat_latent_image": torch.randn(shape, generator=g),
                 "concat_mask": torch.cat([torch.zeros(1, 1, 1, h, w), torch.ones(1, 1, frames - 1, h, w)], 2)}
        positive, negative = [[text, dict(extra)]], [[torch.zeros_like(text), dict(extra)]]
        latent = torch.zeros(shape)
    else:  # Wan22ImageToVideoLatent: the first frame's latent, kept by the noise mask
        latent = torch.zeros(shape)
        latent[:, :, :1] = torch.randn(1, channels, 1, h, w, generator=g)
        noise_mask = torch.cat([torch.zeros(1, 1, 1, h, w), torch.ones(1, 1, frames - 1, h, w)], 2)
    signal = torch.randn(shape, generator=g)
    mask = torch.zeros(1, 1, frames, h, w)
    mask[..., : w // 2] = 1  # half of the video follows the signal
    return patcher, positive, negative, latent, noise_mask, signal, mask


def main(argv=None) -> None:
    args = parse_args(argv)
    signal_runs = motion_signal_runs(args.signal_sizes) if args.motion_signal else None
    if signal_runs:
        for r in signal_runs:
            print(f"motion signal {r['size']:>12}: {r['seconds']:7.1f} s, peak RSS {r['peak_rss_mb']} MB "
                  f"({r['rss_vs_first']}x the first)")
    if args.skip_models:
        print(json.dumps({"args": vars(args), "motion_signal": signal_runs}))
        return
    core_svd = import_comfyui()
    import comfy.samplers
    import torch

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    t_weak, t_strong = 0.25, 0.5
    load = os.getloadavg()
    results = {}
    for name in ("WAN21", "WAN22"):
        patcher, positive, negative, latent, noise_mask, signal, mask = family_case(name, args, g)
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple",
                                                 args.steps).float()
        weak = round(t_weak * args.steps)
        euler = comfy.samplers.sampler_object("euler")
        noise = torch.randn(signal.shape, generator=g)
        start = signal if noise_mask is None else signal * noise_mask + latent * (1 - noise_mask)

        def plain():
            guider = comfy.samplers.CFGGuider(patcher)
            guider.set_conds(positive, negative)
            guider.set_cfg(3.5)
            return guider.sample(noise, start, euler, sigmas[weak:], denoise_mask=noise_mask, seed=0,
                                 disable_pbar=True)

        def dual_clock():
            guider = core_svd.dual_clock_guider_class()(patcher, signal, mask, t_weak, t_strong)
            guider.set_conds(positive, negative)
            guider.set_cfg(3.5)
            return guider.sample(noise, latent, euler, sigmas, denoise_mask=noise_mask, seed=0, disable_pbar=True)

        times, peaks = {"plain": [], "dual_clock": []}, {"plain": 0.0, "dual_clock": 0.0}
        for r in range(args.repeats + 1):
            for label, fn in (("plain", plain), ("dual_clock", dual_clock)):
                with PeakRSS() as rss:
                    t0 = time.perf_counter()
                    fn()
                    dt = time.perf_counter() - t0
                if r:
                    times[label].append(dt)
                    peaks[label] = max(peaks[label], rss.peak)
        t = {k: min(v) for k, v in times.items()}
        results[name] = {"latent": list(signal.shape), "steps_sampled": args.steps - weak,
                         "plain_s": round(t["plain"], 3), "dual_clock_s": round(t["dual_clock"], 3),
                         "time_ratio": round(t["dual_clock"] / t["plain"], 4),
                         "plain_peak_rss_mb": round(peaks["plain"]),
                         "dual_clock_peak_rss_mb": round(peaks["dual_clock"]),
                         "rss_ratio": round(peaks["dual_clock"] / peaks["plain"], 4), "rss_method": rss.method}
        del patcher
    print(f"{'family':8} {'latent':>22} {'plain s':>9} {'dual s':>9} {'time x':>7} {'plain MB':>9} {'dual MB':>9} "
          f"{'RSS x':>6}")
    for name, r in results.items():
        print(f"{name:8} {str(r['latent']):>22} {r['plain_s']:9.3f} {r['dual_clock_s']:9.3f} {r['time_ratio']:7.3f} "
              f"{r['plain_peak_rss_mb']:9d} {r['dual_clock_peak_rss_mb']:9d} {r['rss_ratio']:6.3f}")
    print(json.dumps({"args": vars(args), "load_start": load, "load_end": os.getloadavg(), "families": results,
                      "motion_signal": signal_runs}))


if __name__ == "__main__":
    main()
