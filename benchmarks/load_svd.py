"""Benchmark: load SVD from the Stability single file vs diffusers ``from_pretrained`` of the same weights.

    python benchmarks/load_svd.py [--workdir DIR] [--keep] [--repeat N]

1. Writes a full-size random-weight single file in the real ``svd_xt.safetensors`` layout, in fp16
   (about 4.8 GB; the key list comes from tests/fixtures/checkpoint_manifests, the real file's names and
   shapes), streaming one tensor at a time.
2. Converts it once into a diffusers folder (unet/, vae/, image_encoder/, fp16) with the same weights.
3. In separate fresh subprocesses, measures wall time and peak RSS (ru_maxrss) of
   ``surgsora.loading.svd_checkpoint.load_svd(file, dtype=float16)`` and of ``from_pretrained`` of the three
   diffusers/transformers models, and checks both loads give identical weights.

Target: single-file peak RSS within 1.3x of the diffusers load. Temporary files are deleted unless
``--keep``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "tests" / "fixtures" / "checkpoint_manifests" / "svd_xt_sgm_single_file.json"
TARGET_RSS_RATIO = 1.3


def _single_file_layout() -> dict[str, list[int]]:
    return json.loads(MANIFEST.read_text())["tensors"]


def write_random_single_file(path: Path, seed: int = 0) -> int:
    """Stream a random fp16 safetensors file of the SVD single-file layout; returns its size."""
    import torch

    layout = _single_file_layout()
    header, offset = {}, 0
    for key in sorted(layout):
        n = 2
        for d in layout[key]:
            n *= d
        header[key] = {"dtype": "F16", "shape": layout[key], "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    g = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key in sorted(layout):
            t = (torch.randn(layout[key], generator=g) * 0.02).half()
            f.write(t.numpy().tobytes())
    return path.stat().st_size


# ------------------------------------------------------------------ subprocess modes
def _child_convert(single: str, folder: str) -> None:
    import torch

    from surgsora.loading.svd_checkpoint import CONFIG_DIR, load_svd

    parts = load_svd(single, dtype=torch.float16)
    folder = Path(folder)
    parts["unet"].save_pretrained(folder / "unet")
    parts["vae"].save_pretrained(folder / "vae")
    parts["image_encoder"].save_pretrained(folder / "image_encoder")
    for name in ("model_index.json", "scheduler", "feature_extractor"):
        src = CONFIG_DIR / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, folder / name)


def _child_measure(mode: str, path: str, result_out: str) -> None:
    import resource

    import torch

    torch.set_num_threads(2)
    if mode == "single":
        from surgsora.loading.svd_checkpoint import load_svd
    else:
        from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
        from transformers import CLIPVisionModelWithProjection

    def peak_kb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    base_rss = peak_kb()
    t0 = time.perf_counter()
    if mode == "single":
        parts = load_svd(path, dtype=torch.float16)
        models = [parts["unet"], parts["vae"], parts["image_encoder"]]
    else:
        models = [
            UNetSpatioTemporalConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch.float16),
            AutoencoderKLTemporalDecoder.from_pretrained(path, subfolder="vae", torch_dtype=torch.float16),
            CLIPVisionModelWithProjection.from_pretrained(os.path.join(path, "image_encoder"), dtype=torch.float16),
        ]
    t_load, rss_load = time.perf_counter() - t0, peak_kb()
    # Read every weight once, as the first denoising step / first .to("cuda") does. diffusers leaves
    # weights memory-mapped and unread after from_pretrained, so only this state compares like with like.
    # The sums double as a fingerprint showing both loads hold the same model.
    with torch.no_grad():
        digest = [sum(float(p.float().sum()) for p in m.state_dict().values()) for m in models]
    t_ready, rss_ready = time.perf_counter() - t0, peak_kb()
    n_params = sum(p.numel() for m in models for p in m.parameters())
    Path(result_out).write_text(json.dumps({
        "load_s": t_load, "load_peak_rss_kb": rss_load, "ready_s": t_ready, "ready_peak_rss_kb": rss_ready,
        "rss_after_imports_kb": base_rss, "digest": digest, "params": n_params,
    }))


def _warm_page_cache(path: Path) -> None:
    # Both loaders start from the page cache, so disk speed does not decide the comparison.
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


def _run_child(args: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               DIFFUSERS_VERBOSITY="error")
    subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=None, help="where to write the temporary model files (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--repeat", type=int, default=1, help="measurements per loader (best wall time, max RSS)")
    ap.add_argument("--reuse", default=None, help="measure files kept by an earlier --keep run in this folder")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child[0] == "convert":
            _child_convert(*args.child[1:])
        else:
            _child_measure(*args.child)
        return

    work = Path(args.reuse) if args.reuse else Path(tempfile.mkdtemp(prefix="surgsora_load_svd_", dir=args.workdir))
    keep = args.keep or bool(args.reuse)
    try:
        single = work / "svd_xt.safetensors"
        folder = work / "svd_xt_diffusers"
        if not args.reuse:
            t0 = time.perf_counter()
            write_random_single_file(single)
            print(f"wrote {single} in {time.perf_counter() - t0:.0f} s", flush=True)
            t0 = time.perf_counter()
            _run_child(["--child", "convert", str(single), str(folder)])
            print(f"wrote {folder} in {time.perf_counter() - t0:.0f} s", flush=True)
        size = single.stat().st_size
        folder_size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

        results: dict[str, list[dict]] = {"diffusers": [], "single": []}
        for _ in range(args.repeat):
            for mode, path in (("diffusers", folder), ("single", single)):
                _warm_page_cache(path)
                out = work / f"{mode}.json"
                _run_child(["--child", mode, str(path), str(out)])
                results[mode].append(json.loads(out.read_text()))
                r = results[mode][-1]
                print(f"{mode:9s}: load {r['load_s']:6.1f} s, peak RSS {r['load_peak_rss_kb'] / 2**20:5.2f} GiB | "
                      f"every weight read: {r['ready_s']:6.1f} s, peak RSS {r['ready_peak_rss_kb'] / 2**20:5.2f} GiB "
                      f"(after imports {r['rss_after_imports_kb'] / 2**20:4.2f} GiB)", flush=True)
        same = results["single"][0]["digest"] == results["diffusers"][0]["digest"]

        def summary(rs):
            gib = lambda kb: round(kb / 2**20, 3)  # noqa: E731
            return {"load_s": round(min(r["load_s"] for r in rs), 2),
                    "load_peak_rss_gib": gib(max(r["load_peak_rss_kb"] for r in rs)),
                    "ready_s": round(min(r["ready_s"] for r in rs), 2),
                    "ready_peak_rss_gib": gib(max(r["ready_peak_rss_kb"] for r in rs)),
                    "rss_after_imports_gib": gib(rs[0]["rss_after_imports_kb"])}

        s, d = summary(results["single"]), summary(results["diffusers"])
        ratio = s["ready_peak_rss_gib"] / d["ready_peak_rss_gib"]
        line = {
            "benchmark": "load_svd",
            "single_file_gb": round(size / 1e9, 3),
            "diffusers_folder_gb": round(folder_size / 1e9, 3),
            "params": results["single"][0]["params"],
            "single_file": s,
            "diffusers_from_pretrained": d,
            "peak_rss_ratio": round(ratio, 3),
            "load_peak_rss_ratio": round(s["load_peak_rss_gib"] / d["load_peak_rss_gib"], 3),
            "ready_wall_ratio": round(s["ready_s"] / d["ready_s"], 3),
            "target_peak_rss_ratio": TARGET_RSS_RATIO,
            "same_weights": same,
            "pass": bool(ratio <= TARGET_RSS_RATIO and same),
        }
        print(json.dumps(line))
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
