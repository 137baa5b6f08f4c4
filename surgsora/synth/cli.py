"""``python -m surgsora synth``: a job file -> a labelled synthetic video dataset (see docs/synth.md).

:func:`add_parser` adds the ``synth`` sub-command to ``python -m surgsora``'s parser; :func:`run` runs it (user
mistakes raise :class:`surgsora.cli.UsageError`, a failed run :class:`surgsora.cli.RunFailure`, as the other
sub-commands do, so ``surgsora.cli.main`` turns them into one sentence and exit code 2 or 1). :func:`main` runs
the command alone: ``python -m surgsora.synth ...`` and ``accelerate launch -m surgsora.synth ...``.

Order of work: every flag, then every row of the job file, then the models folder, then the output folder are
checked before anything is written or loaded; only then is ``dataset.json`` written and are the models loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ..sampling.settings import MAX_FRAMES, MAX_STEPS, TTM_MOTION_BUCKET, TTM_STEPS, add_precision_argument
from . import variants as V
from .jobs import COLUMNS, MAX_VARIANTS, MODES
from .run import finish, load_models, model_hashes, plan_modes, run_process, versions

__all__ = ["add_parser", "add_arguments", "run"]

FLAG_NAMES = {"steps": "--steps", "frames": "--frames", "min_cfg": "--min-cfg", "max_cfg": "--max-cfg", "fps": "--fps",
              "motion_bucket_id": "--motion-bucket", "noise_aug_strength": "--noise-aug",
              "control_scale": "--control-scale", "seed": "--seed", "t_weak": "--t-weak", "t_strong": "--t-strong",
              "decode_chunk": "--decode-chunk"}
MAX_LISTED = 20  # bad rows listed before "and N more"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", required=True,
                   help=f"job file, .csv (header row) or .jsonl, one row per source frame; columns: "
                        f"{','.join(COLUMNS)} "
                        "(image and tracks required; relative paths are relative to the job file)")
    p.add_argument("--out", required=True, help="dataset folder (new, empty, or this same dataset to resume it)")
    models = p.add_mutually_exclusive_group(required=True)
    models.add_argument("--models", help="a ComfyUI-style models folder (sams/, depthanything/, checkpoints/ or "
                                         "diffusers/, surgsora/)")
    models.add_argument("--tiny-models", action="store_true",
                        help="tiny random models instead (smoke runs and tests only: the videos are noise)")
    p.add_argument("--mode", default="auto", choices=("auto",) + MODES,
                   help="mode of rows whose mode is empty: auto (default: surgsora if a SurgSora adapter is present, "
                        "else mofa if MOFA's ControlNet is, else ttm), ttm, mofa or surgsora")
    p.add_argument("--frames", type=int, default=14, help=f"frames of rows without frames (2..{MAX_FRAMES})")
    p.add_argument("--size", default=None, help="working size WxH of rows without size, multiples of 64 (default: "
                                                "~448x256 with the frame's aspect)")
    p.add_argument("--seed", type=int, default=0, help="seed of rows without seed")
    p.add_argument("--variants", type=int, default=0,
                   help=f"jittered copies of the motion per row without variants (0..{MAX_VARIANTS})")
    p.add_argument("--jitter-angle", type=float, default=V.DEFAULT_ANGLE,
                   help=f"variants: largest rotation of a track's motion, degrees (0..{V.MAX_ANGLE:g})")
    p.add_argument("--jitter-scale", type=float, default=V.DEFAULT_SCALE,
                   help=f"variants: largest relative change of a track's motion magnitude (0..{V.MAX_SCALE:g})")
    p.add_argument("--save-frames", action="store_true", help="also write lossless frames/*.png per clip")
    p.add_argument("--on-error", default="stop", choices=("stop", "skip"),
                   help="stop (default) at the first bad row or failed clip; skip: record it in failures.jsonl and "
                        "go on")
    p.add_argument("--decoder", default="auto", help="'auto' (CMP if present, else analytic), 'analytic', or a CMP "
                                                     "file in models/surgsora")
    p.add_argument("--steps", type=int, default=None, help=f"denoising steps, 1..{MAX_STEPS} (default 25; "
                                                           f"{TTM_STEPS} for ttm)")
    p.add_argument("--min-cfg", type=float, default=1.0)
    p.add_argument("--max-cfg", type=float, default=3.0)
    p.add_argument("--fps", type=float, default=None, help="fps condition and video rate (default: the adapter's, "
                                                           "else 7)")
    p.add_argument("--motion-bucket", type=int, default=None,
                   help=f"SVD motion bucket (default 127; {TTM_MOTION_BUCKET} for ttm)")
    p.add_argument("--noise-aug", type=float, default=0.02)
    p.add_argument("--control-scale", type=float, default=1.0)
    p.add_argument("--t-weak", type=float, default=0.32, help="ttm: start fraction of the schedule")
    p.add_argument("--t-strong", type=float, default=0.42, help="ttm: end of the anchoring, fraction of the schedule")
    p.add_argument("--decode-chunk", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (each process its accelerate device), cpu, cuda, ...")
    add_precision_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the summary is still printed)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``synth`` sub-command on ``python -m surgsora``'s sub-parsers."""
    p = subparsers.add_parser("synth", help="a labelled synthetic video dataset from a job file (multi-GPU with "
                                            "accelerate launch, resumable)")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def _check_flags(args, UsageError) -> None:
    from ..cli_inputs import check_device, parse_size
    from ..sampling.settings import SettingError, check_settings, check_video_size

    try:
        check_settings(FLAG_NAMES, steps=args.steps, frames=args.frames, min_cfg=args.min_cfg, max_cfg=args.max_cfg,
                       fps=args.fps, motion_bucket_id=args.motion_bucket, noise_aug_strength=args.noise_aug,
                       control_scale=args.control_scale, seed=args.seed, t_weak=args.t_weak, t_strong=args.t_strong,
                       decode_chunk=args.decode_chunk)
        size = parse_size(args.size)
        if size is not None:
            check_video_size(*size, what="--size")
    except SettingError as e:
        raise UsageError(str(e)) from None
    if args.seed < 0:
        raise UsageError(f"--seed must be 0 or more (a dataset's clips are reproducible, so there is no random seed); "
                         f"got {args.seed}.")
    if not 0 <= args.variants <= MAX_VARIANTS:
        raise UsageError(f"--variants must be between 0 and {MAX_VARIANTS}; got {args.variants}.")
    if not 0 <= args.jitter_angle <= V.MAX_ANGLE:  # False for NaN too
        raise UsageError(f"--jitter-angle must be between 0 and {V.MAX_ANGLE:g} degrees; got {args.jitter_angle}.")
    if not 0 <= args.jitter_scale <= V.MAX_SCALE:
        raise UsageError(f"--jitter-scale must be between 0 and {V.MAX_SCALE:g}; got {args.jitter_scale}.")
    if args.models is not None and not Path(args.models).is_dir():
        raise UsageError(f"--models: {args.models} is not a folder; give a ComfyUI-style models folder (with sams/, "
                         "depthanything/, checkpoints/ or diffusers/, surgsora/), or --tiny-models for a smoke run.")
    check_device(args.device)


def _settings(args) -> dict:
    """Every setting that changes a clip's bytes: part of the dataset's identity."""
    return {"mode": args.mode, "frames": args.frames, "size": args.size, "seed": args.seed, "variants": args.variants,
            "jitter_angle": args.jitter_angle, "jitter_scale": args.jitter_scale, "save_frames": args.save_frames,
            "decoder": args.decoder, "steps": args.steps, "min_cfg": args.min_cfg, "max_cfg": args.max_cfg,
            "fps": args.fps, "motion_bucket": args.motion_bucket, "noise_aug": args.noise_aug,
            "control_scale": args.control_scale, "t_weak": args.t_weak, "t_strong": args.t_strong,
            "decode_chunk": args.decode_chunk, "precision": args.precision,
            "models": "tiny-random" if args.tiny_models else str(Path(args.models).resolve())}


def run(args) -> dict:
    """Run ``synth``; returns the summary (on the main process; others return their own stats)."""
    from ..cli_inputs import RunFailure, UsageError, device_and_dtype, parse_size
    from .dataset import FORMAT, DatasetMismatch, check_out, write_json
    from .jobs import Defaults, JobError, expand_clips, file_sha256, read_job_file, validate_rows

    t_start = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model folders are local files only
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _check_flags(args, UsageError)
    from accelerate import PartialState

    import torch

    # Accelerate shards CPU processes only when told it runs on the CPU (as Accelerator reads ACCELERATE_USE_CPU).
    cpu = args.device == "cpu" or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or (
        args.device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    rank, n, main_process = state.process_index, state.num_processes, state.is_main_process

    jobs = Path(args.jobs)
    defaults = Defaults(mode=None if args.mode == "auto" else args.mode, frames=args.frames,
                        size=parse_size(args.size), seed=args.seed, variants=args.variants)
    try:
        rows, problems = validate_rows(read_job_file(jobs), jobs, defaults, tiny=args.tiny_models)
    except JobError as e:
        raise UsageError(str(e)) from None
    if problems and args.on_error != "skip":
        listed = [str(p) for p in problems[:MAX_LISTED]]
        more = len(problems) - len(listed)
        raise UsageError("\n".join(listed) + (f"\n... and {more} more bad rows (fix them, or add --on-error skip to "
                                              "record them in failures.jsonl and make the rest)." if more else ""))
    if not rows:
        raise UsageError(f"--jobs: every row of {jobs} is bad ({len(problems)}); nothing to make.")
    models_dir = None if args.tiny_models else Path(args.models)
    try:
        mode_of, plan = plan_modes(rows, models_dir, args.decoder, jobs.name, UsageError)
    except ValueError as e:  # a model name outside the models folder
        raise UsageError(str(e)) from None
    out = Path(args.out)
    identity = {"format": FORMAT, "jobs_sha256": file_sha256(jobs), "settings": _settings(args)}
    try:
        check_out(out, identity)
    except DatasetMismatch as e:
        raise UsageError(str(e)) from None

    # From here on files are written: the dataset's identity first, then the models' hashes (main process first,
    # so the others read its cache instead of hashing gigabytes again).
    device, dtype = device_and_dtype(args.device, args.precision)
    if args.device == "auto":
        device = state.device
    state.wait_for_everyone()  # every process has checked --out before the main one writes into it
    with state.main_process_first():
        if main_process:
            import shutil

            from .dataset import remove_partials

            remove_partials(out)  # what a killed run was writing here
            write_json(out / "dataset.json", identity)
            shutil.rmtree(out / "index", ignore_errors=True)  # shards of an interrupted run: remade below
        model_info = model_hashes(out, plan, models_dir) if main_process else None
    if model_info is None:
        model_info = model_hashes(out, plan, models_dir)

    from .clip import ClipEnv

    models = load_models(plan, device, dtype)
    sampling = {}
    for mode, m in models.items():
        from ..sampling.conditioning import default_fps

        ttm = mode == "ttm"
        fps = args.fps if args.fps is not None else default_fps(None if m.adapter is None else m.adapter.config)
        sampling[mode] = dict(steps=args.steps or (TTM_STEPS if ttm else 25), min_cfg=args.min_cfg,
                              max_cfg=args.max_cfg, fps=float(fps),
                              motion_bucket_id=args.motion_bucket if args.motion_bucket is not None else
                              (TTM_MOTION_BUCKET if ttm else 127),
                              noise_aug_strength=args.noise_aug, control_scale=args.control_scale,
                              t_weak=args.t_weak, t_strong=args.t_strong, decode_chunk=args.decode_chunk)
    env = ClipEnv(out=out, models=models, mode_of=mode_of, sampling=sampling, model_info=model_info,
                  jitter=(args.jitter_angle, args.jitter_scale), save_frames=args.save_frames, versions=versions(),
                  device_type=torch.device(device).type, dtype=str(dtype).replace("torch.", ""))
    clips = expand_clips(rows)
    stats = run_process(clips, env, rank, n, args.on_error, not args.no_progress, RunFailure)
    if not main_process:
        return stats
    failed_rows = [{"line": p.line, "id": p.row_id, "error": str(p)} for p in problems]
    summary = finish(out, n, identity, failed_rows, model_info, t_start, RunFailure)
    print(f"synth: {summary['clips']} clips in {out} ({summary['made']} made now, {summary['already_done']} already "
          f"done), {summary['failed']} failed or skipped, {n} process{'es' if n > 1 else ''}, "
          f"{summary['seconds']:.1f} s.")
    print(json.dumps(summary))
    return summary
