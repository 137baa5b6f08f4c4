"""Command line: ``python -m surgsora.eval --real DIR --fake DIR [--flows DIR] --out report.json``.

``python -m surgsora.eval table a.json b.json [--out table.md]`` puts several reports into one table
(one row per report, the paper's Tables 1-2 layout).

Exit status: 0 when every requested metric ran or was skipped (missing weights are reported, not
fatal), 1 when a metric failed (or the report could not be written), 2 for unusable input (one sentence
on stderr says what to fix; never a traceback). Videos without a partner, pairs of different lengths and
flows that do not fit their video are unusable input unless ``--allow-mismatch`` is given; the
differences are then printed on the console and kept in the report.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..atomic import describe_write_error
from .evaluate import ALL_METRICS, EvalConfig, evaluate
from .report import comparison_table, load_report, write_report
from .weights import SPECS

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m surgsora.eval",
        description="Compare generated surgical videos with real ones: PSNR, SSIM, FID, IS, FVD, CD-FVD, frame "
                    "consistency and flow agreement (Fl-epe / Fl-all). Writes JSON, markdown and PNG plots.",
        epilog="Weights are never downloaded. Give each network with its flag or environment variable: "
               + "; ".join(f"{s.flag} / ${s.env}: {s.file_names[0] if not s.folder else 'folder'}"
                           for s in SPECS.values()) + ".",
    )
    p.add_argument("--real", required=True, help="folder of real videos (video files or one frame folder per video)")
    p.add_argument("--fake", required=True, help="folder of generated videos, named like their real partners")
    p.add_argument("--flows", help="folder of conditioning flows NAME.npy [T-1,2,H,W] (for Fl-epe / Fl-all)")
    p.add_argument("--out", required=True, help="report .json path (the .md and a _plots folder go next to it)")
    p.add_argument("--name", help="method name for the table row (default: the --fake folder name)")
    p.add_argument("--metrics", default=",".join(ALL_METRICS),
                   help=f"comma-separated subset of {','.join(ALL_METRICS)} (default: all)")
    for s in SPECS.values():
        if s.key == "raft":
            continue
        p.add_argument(s.flag, dest=s.key, metavar="PATH", help=f"{s.description} for {s.metrics} (or ${s.env})")
    p.add_argument("--allow-torchscript", action="store_true",
                   help="allow --i3d to be StyleGAN-V's TorchScript i3d_torchscript.pt (runs code stored in the file)")
    p.add_argument("--flow-method", choices=("dis", "raft"), default="dis",
                   help="flow estimator for the generated video")
    p.add_argument("--raft-weights", metavar="PATH", help=f"RAFT-Large weights for --flow-method raft "
                                                          f"(or ${SPECS['raft'].env})")
    p.add_argument("--fvd-frames", type=int, default=16, help="clip length for FVD and CD-FVD (default 16)")
    p.add_argument("--max-frames", type=int, help="use at most this many frames of every video")
    p.add_argument("--fid-stride", type=int, default=1, help="use every k-th frame for FID/IS (default 1: all)")
    p.add_argument("--is-splits", type=int, default=10)
    p.add_argument("--psnr-cap", type=float, default=100.0, help="PSNR of identical frames, in dB (default 100)")
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for 95%% intervals (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="torch device for the networks: auto (CUDA when available), "
                                                     "cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-resize-real", action="store_true",
                   help="do not resize real videos to the generated resolution (paired metrics then need equal sizes)")
    p.add_argument("--min-n-frames", type=int, default=2048, help="warn when FID/IS use fewer frames")
    p.add_argument("--min-n-videos", type=int, default=256, help="warn when FVD/CD-FVD use fewer videos")
    p.add_argument("--max-plots", type=int, default=4, help="videos to draw flow-error and first/last plots for")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="compare what matches when names, lengths or flow sizes differ (common first frames, flows "
                        "resized and trimmed) instead of stopping; every difference is printed and reported")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def _table_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m surgsora.eval table",
                                description="One markdown table (paper Tables 1-2 layout) from several reports.")
    p.add_argument("reports", nargs="+", help="report .json files written by python -m surgsora.eval")
    p.add_argument("--out", help="write the table to this .md file instead of printing it")
    a = p.parse_args(argv)
    try:
        table = comparison_table([load_report(r) for r in a.reports])
        if a.out:
            from ..video_io import atomic_output, check_output_path

            check_output_path(a.out, "--out", (".md", ".txt"))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.out:
        try:
            with atomic_output(Path(a.out)) as tmp:
                tmp.write_text(table + "\n", encoding="utf-8")
        except OSError as e:
            sentence = describe_write_error(e) or f"could not write {a.out} ({e.strerror or e}); choose another --out."
            print(f"error: {sentence}", file=sys.stderr)
            return 1
    else:
        print(table)
    return 0


def _usage_problem(a) -> str | None:
    """The first argument that cannot work, as one sentence (checked before any video is read)."""
    from ..video_io import OutputPathError, check_output_path

    ints = [("--fvd-frames", a.fvd_frames, 2), ("--fid-stride", a.fid_stride, 1), ("--batch-size", a.batch_size, 1),
            ("--max-frames", a.max_frames, 1), ("--is-splits", a.is_splits, 1), ("--bootstrap", a.bootstrap, 0),
            ("--seed", a.seed, 0), ("--min-n-frames", a.min_n_frames, 0), ("--min-n-videos", a.min_n_videos, 0),
            ("--max-plots", a.max_plots, 0)]
    for flag, value, lo in ints:
        if value is not None and value < lo:
            return f"{flag} must be at least {lo}; got {value}."
    if not math.isfinite(a.psnr_cap) or a.psnr_cap <= 0:
        return f"--psnr-cap must be a finite number of dB > 0 (default 100); got {a.psnr_cap}."
    if Path(a.out).suffix.lower() != ".json":
        return f"--out must name a .json file (got {a.out}); the markdown and plots go next to it."
    try:
        check_output_path(a.out, "--out", (".json",))
    except OutputPathError as e:
        return str(e)
    if a.device != "auto":
        import torch

        try:
            dev = torch.device(a.device)
        except (RuntimeError, ValueError):
            return f"--device {a.device!r} is not a device; use auto, cpu, cuda or cuda:N."
        if dev.type == "cuda" and not torch.cuda.is_available():
            return f"--device {a.device}: this machine has no CUDA GPU torch can use; use --device cpu (or auto)."
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"--device {a.device}: there are only {torch.cuda.device_count()} CUDA device(s)."
        if dev.type not in ("cpu", "cuda", "mps"):
            return f"--device {a.device}: only auto, cpu, cuda, cuda:N and mps are supported."
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "table":
        return _table_main(argv[1:])
    a = build_parser().parse_args(argv)
    log = (lambda msg: None) if a.quiet else (lambda msg: print(f"[surgsora.eval] {msg}", file=sys.stderr))
    problem = _usage_problem(a)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cfg = EvalConfig(
        real=a.real, fake=a.fake, flows=a.flows, name=a.name,
        metrics=tuple(m for m in a.metrics.split(",") if m.strip()),
        inception=a.inception, i3d=a.i3d, allow_torchscript=a.allow_torchscript, videomae=a.videomae, clip=a.clip,
        flow_method=a.flow_method, raft_weights=a.raft_weights, clip_len=a.fvd_frames, max_frames=a.max_frames,
        fid_stride=a.fid_stride, is_splits=a.is_splits, psnr_cap=a.psnr_cap, bootstrap=a.bootstrap, seed=a.seed,
        device=a.device, batch_size=a.batch_size, resize_real=not a.no_resize_real, min_frames_warn=a.min_n_frames,
        min_videos_warn=a.min_n_videos, max_plots=a.max_plots, allow_mismatch=a.allow_mismatch,
    )
    # Allowed mismatches reach the console even with --quiet: they change what the numbers mean.
    warn = (lambda msg: print(f"[surgsora.eval] warning: {msg}", file=sys.stderr))
    try:
        cfg.normalised_metrics()
        result = evaluate(cfg, log, warn)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        paths = write_report(result, a.out, plots=not a.no_plots)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a folder that became read-only: nothing half-written is left
        sentence = describe_write_error(e) or (f"could not write the report {a.out} ({e.strerror or e}); choose "
                                               "another --out.")
        print(f"error: {sentence}", file=sys.stderr)
        return 1
    n_plots = f" and {len(paths['plots'])} plots" if paths["plots"] else ""
    log(f"wrote {paths['json']} and {paths['markdown']}{n_plots}")
    if not a.quiet:
        print(comparison_table([result.report]))
    failed = [k for k, m in result.report["metrics"].items() if m.get("status") == "failed"]
    return 1 if failed else 0
