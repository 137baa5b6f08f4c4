"""`python -m train preprocess|fit|sample`: fit the SurgSora adapter on surgical videos.

    python -m train preprocess --out cache/ videos/ --sam models/sams/sam_vit_b_01ec64.pth \
        --depth models/depthanything/depth_anything_v2_vits.pth --frames 21 --size 256 --fit pad
    python -m train fit --data cache/ --svd models/checkpoints/svd_xt.safetensors --out runs/stage1 --stage 1
    python -m train fit --data cache/ --svd ... --adapter runs/stage1/adapter --out runs/stage2 --stage 2
    accelerate launch -m train fit ...        # several GPUs / nodes

    python -m train preprocess --recipe surgsora-copesd --models models/ --out cache/ clips.csv
    accelerate launch --num_processes 2 -m train fit --recipe surgsora-copesd --models models/ --data cache/ ...
    python -m train sample --data test_cache/ --adapter runs/stage2/adapter --svd ... --out samples/
                                              # real/ fake/ flows/ (+ cropped/) for python -m surgsora.eval

`--recipe surgsora-copesd` applies the paper's settings (train/recipes/surgsora-copesd.json); flags given
on the command line win. `--config tiny` (fit) and `--tiny-models` (preprocess) use tiny random models so the
whole loop runs on a CPU in seconds (tests, smoke runs); they learn nothing useful.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import fields
from pathlib import Path

# Only torch-free modules at import time: bad arguments are rejected in a fraction of a second.
from surgsora.sampling.settings import SettingError, check_settings, resolve_seed

from .config import ConfigError, FitConfig, check_fit_config, check_out_dir, load_recipe, read_adapter_config, \
    resolve_model_path


def _check_seed(seed) -> None:
    """A seed, or -1 for a random one (drawn and printed by resolve_seed once every check has passed)."""
    try:
        check_settings({"seed": "--seed"}, seed=seed)
    except SettingError as e:
        raise ConfigError(str(e)) from None


def _size(text: str) -> tuple[int, int]:
    parts = str(text).lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if h < 64 or w < 64 or h % 64 or w % 64:
        raise argparse.ArgumentTypeError(f"size {h}x{w}: height and width must be positive multiples of 64 (SVD "
                                         "latents /8, adapter scales down to /64)")
    return h, w


def _content_size(text: str) -> tuple[int, int]:
    parts = str(text).lower().split("x")
    try:
        h, w = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"content size must be HxW (e.g. 197x256), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"content size {h}x{w} must be positive")
    return h, w


def _fail(prog: str, message: str) -> int:
    """One sentence on stderr and exit code 2 (the argparse convention for bad input)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def _check_device(device: str) -> None:
    """A CUDA device that is not there is a clear error, not a stack trace minutes later."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is available here; use --device cpu (or auto).")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are available.")


def _apply_recipe(values: dict, section: dict, known: set, where: str) -> None:
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"{where} has settings this command does not know: {', '.join(unknown)}.")
    values.update(section)


# ----------------------------------------------------------------------------------------- preprocess

def preprocess_main(argv: list[str]) -> int:
    prog = "python -m train preprocess"
    ap = argparse.ArgumentParser(prog=prog,
                                 description="Cache frames, SAM features, depth, flow, guide points and region "
                                             "masks per clip.")
    ap.add_argument("inputs", nargs="+", help="videos, frame folders, folders of videos or of frame folders, or "
                                              "clip lists (.csv video,start / .txt 'PATH [START]' lines)")
    ap.add_argument("--out", required=True, help="cache folder")
    ap.add_argument("--recipe", help="a shipped recipe (surgsora-copesd) or a recipe .json: its preprocess settings")
    ap.add_argument("--models", default=None, help="models folder for the recipe's SAM / depth files (default: models)")
    ap.add_argument("--sam", help="SAM v1 checkpoint (sam_vit_{b,l,h}_*.pth)")
    ap.add_argument("--depth", help="Depth Anything V2 checkpoint (.pth / .safetensors / HF folder)")
    ap.add_argument("--tiny-models", action="store_true", help="tiny random SAM/depth (tests and smoke runs only)")
    ap.add_argument("--frames", type=int, help="frames per clip (default 21)")
    ap.add_argument("--frame-step", type=int, help="take every n-th frame (default 1)")
    ap.add_argument("--clip-stride", type=int, default=None, help="frames between clip starts (default: one clip span)")
    ap.add_argument("--size", type=_size, help="N or HxW, multiples of 64 (default 256)")
    ap.add_argument("--fit", choices=("pad", "resize", "crop"), help="default pad")
    ap.add_argument("--pad", choices=("center", "bottom"), help="where the padding goes with --fit pad (default "
                                                                "center; the paper pads at the bottom)")
    ap.add_argument("--content-size", type=_content_size, help="HxW the picture is resized to before padding "
                                                               "(the paper: 197x256)")
    ap.add_argument("--masks", help="folder of region masks for stage 2 (NAME_f<frame>.png, optionally in a "
                                    "sub-folder per video); default: mask_*_f<frame>.png next to each video")
    ap.add_argument("--regions", choices=("auto", "supplied", "sam", "none"),
                    help="stage-2 region masks: supplied masks, else SAM masks at the guide points (auto, default)")
    ap.add_argument("--flow", choices=("dis", "raft"))
    ap.add_argument("--raft-weights", help="torchvision raft_large weights file for --flow raft")
    ap.add_argument("--depth-input-size", type=int, help="Depth Anything input size (default 518; the paper 266)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0, help="default 0; -1 = a random seed, printed")
    args = ap.parse_args(argv)

    values = dict(frames=21, frame_step=1, size=(256, 256), fit="pad", pad="center", content_size=None,
                  regions="auto", flow="dis", depth_input_size=518, models="models")
    known = set(values) | {"sam", "depth", "masks"}  # the settings a recipe or a flag may give
    try:
        if args.recipe:
            section = dict(load_recipe(args.recipe)["preprocess"])
            for key, parse in (("size", _size), ("content_size", _content_size)):
                if key in section:
                    try:
                        section[key] = parse(section[key])
                    except argparse.ArgumentTypeError as e:
                        raise ConfigError(f"recipe {args.recipe}: {e}.") from None
            _apply_recipe(values, section, known, f"recipe {args.recipe}")
        values.update({k: v for k, v in vars(args).items() if v is not None and k in known})
        for key in ("sam", "depth"):
            if values.get(key) and not getattr(args, key):  # the recipe's file names live in the models folder
                values[key] = resolve_model_path(values[key], values["models"])
        for name in ("frames", "frame_step", "clip_stride", "depth_input_size"):
            value = values.get(name, getattr(args, name, None))
            if value is not None and value < (2 if name == "frames" else 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be at least {2 if name == 'frames' else 1}, "
                                  f"got {value}.")
        if values["content_size"] and values["fit"] != "pad":
            raise ConfigError("--content-size applies to --fit pad only.")
        if values["content_size"] and (values["content_size"][0] > values["size"][0]
                                       or values["content_size"][1] > values["size"][1]):
            raise ConfigError(f"--content-size {values['content_size'][0]}x{values['content_size'][1]} is larger "
                              f"than --size {values['size'][0]}x{values['size'][1]}.")
        if values.get("masks") and not Path(values["masks"]).is_dir():
            raise ConfigError(f"--masks {values['masks']} is not a folder.")
        check_out_dir(args.out)
        _check_device(args.device)
        if not args.tiny_models:
            if not (values.get("sam") and values.get("depth")):
                raise ConfigError("give --sam PATH and --depth PATH (put the files in models/sams and "
                                  "models/depthanything), a --recipe, or --tiny-models for a smoke run.")
            for key in ("sam", "depth"):
                if not Path(values[key]).exists():
                    raise ConfigError(f"--{key} {values[key]} does not exist.")
        if args.flow == "raft" and args.raft_weights and not Path(args.raft_weights).is_file():
            raise ConfigError(f"--raft-weights {args.raft_weights} does not exist.")
        _check_seed(args.seed)
    except ConfigError as e:
        return _fail(prog, str(e))
    args.seed = resolve_seed(args.seed, "--seed")

    from surgsora.loading.io import ModelFileError

    from .data import Preprocessor, discover_clips

    specs, problems = discover_clips(args.inputs, values["frames"], values["frame_step"], args.clip_stride)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if not specs:
        return _fail(prog, "no usable clips found in the inputs.")
    try:
        if args.tiny_models:
            from surgsora.tiny import tiny_depth, tiny_sam

            sam, depth, names = tiny_sam(), tiny_depth(), {"sam": "tiny-random", "depth": "tiny-random"}
        else:
            from surgsora.perception.depth import load_depth_anything
            from surgsora.perception.sam import load_sam

            sam = load_sam(values["sam"], device=args.device)
            depth = load_depth_anything(values["depth"], device=args.device)
            names = {"sam": Path(values["sam"]).name, "depth": Path(values["depth"]).name}
    except (ModelFileError, OSError, ValueError) as e:
        return _fail(prog, (str(e).strip().splitlines() or [type(e).__name__])[0])
    pre = Preprocessor(args.out, sam, depth, size=values["size"], fit=values["fit"], num_frames=values["frames"],
                       frame_step=values["frame_step"], flow_method=values["flow"], raft_weights=args.raft_weights,
                       depth_input_size=values["depth_input_size"], seed=args.seed, model_names=names,
                       pad=values["pad"], content_size=values["content_size"], masks_dir=values.get("masks"),
                       regions=values["regions"])
    counts = pre.run(specs)
    print("preprocess: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f" -> {Path(args.out) / 'index.json'}")
    return 1 if counts.get("failed") and len(counts) == 1 else 0


# ----------------------------------------------------------------------------------------- fit

def _fit_config(args, explicit: dict) -> FitConfig:
    cfg = FitConfig()
    names = {f.name for f in fields(FitConfig)} - {"extra"}
    recipe_files = {}
    if explicit.get("recipe"):
        recipe = load_recipe(explicit["recipe"])
        section = recipe["fit"]
        unknown = sorted(set(section) - names)
        if unknown:
            raise ConfigError(f"recipe {explicit['recipe']} has settings `fit` does not know: {', '.join(unknown)}.")
        for k, v in section.items():
            setattr(cfg, k, type(getattr(cfg, k))(v))
        recipe_files = {k: v for k, v in section.items() if k in ("svd", "flow_decoder", "init_from_mofa")}
        cfg.extra = {k: recipe[k] for k in ("total_batch", "processes") if k in recipe}
    for k, v in explicit.items():
        setattr(cfg, k, v)
    for k, v in recipe_files.items():
        if k not in explicit and v not in ("auto", "analytic"):  # the recipe names files in the models folder
            setattr(cfg, k, resolve_model_path(v, cfg.models))
    if "fps" not in explicit and cfg.adapter:
        # Stage 2 continues with the fps stage 1 was trained (and saved) with.
        fps = (read_adapter_config(cfg.adapter) or {}).get("fps")
        if isinstance(fps, (int, float)) and fps != cfg.fps:
            print(f"--fps {int(fps)}: the fps {cfg.adapter} was trained with (give --fps to change it)")
            cfg.fps = int(fps)
    if cfg.no_depth_branch and explicit.get("fusion") == "sum":
        raise ConfigError("--fusion sum adds the depth stream to the RGB stream; it cannot be combined with "
                          "--no-depth-branch (which uses the RGB stream alone).")
    return cfg


def fit_main(argv: list[str]) -> int:
    prog = "python -m train fit"
    ap = argparse.ArgumentParser(prog=prog, description="Train the SurgSora adapter.")
    defaults = FitConfig()
    for f in fields(FitConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            ap.add_argument(flag, action="store_true", default=None)
        elif f.name == "seed":
            ap.add_argument(flag, type=int, default=None, help="default: 0; -1 = a random seed, printed (and kept in "
                                                               "fit_config.json) so that the run can be repeated")
        else:
            ap.add_argument(flag, type=type(default), default=None, help=f"default: {default!r}")
    args = ap.parse_args(argv)
    explicit = {k: v for k, v in vars(args).items() if v is not None}
    try:
        cfg = _fit_config(args, explicit)
        check_fit_config(cfg)
        if cfg.adam8bit and importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("--adam8bit needs bitsandbytes (pip install bitsandbytes), a CUDA-only package.")
        _check_device(cfg.device)
        if cfg.mixed_precision == "fp16" and cfg.device == "auto":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("--mixed-precision fp16 needs a GPU and none is available; use bf16 or no.")
        from .objective import check_sigma_args

        try:
            check_sigma_args(cfg.sigma_scheme, cfg.sigma_min, cfg.sigma_max, cfg.sigma_data, cfg.image_d,
                             cfg.noise_d_low, cfg.noise_d_high)
        except ValueError as e:
            raise ConfigError(f"{e}.") from None
        _check_resume(cfg)
    except ConfigError as e:
        return _fail(prog, str(e))
    cfg.seed = resolve_seed(cfg.seed, "--seed")  # -1: drawn and printed here, and kept in fit_config.json

    from surgsora.loading.io import ModelFileError

    from .checkpoint import CheckpointError
    from .data import CacheError
    from .fit import run

    try:
        summary = run(cfg)
    except (CacheError, CheckpointError, ModelFileError, ConfigError) as e:
        return _fail(prog, (str(e).strip().splitlines() or [type(e).__name__])[0])
    print(f"done: step {summary['step']}, last loss {summary['last_loss']}, adapter in {Path(summary['out']) / 'adapter'}")
    return 0


def _check_resume(cfg) -> None:
    """The checkpoint --resume names (or 'latest' finds) can be read back, checked before any model loads: a
    pickled optimizer state or a cut-off file is one sentence, not torch's advice and a traceback after minutes."""
    if not cfg.resume:
        return
    from .checkpoint import CheckpointError, check_checkpoint, latest_checkpoint

    ckpt = latest_checkpoint(Path(cfg.out) / "checkpoints") if cfg.resume == "latest" else Path(cfg.resume)
    if ckpt is not None:
        try:
            check_checkpoint(ckpt)
        except CheckpointError as e:
            raise ConfigError(f"--resume: {e}") from None


# ----------------------------------------------------------------------------------------- sample

def sample_main(argv: list[str]) -> int:
    prog = "python -m train sample"
    ap = argparse.ArgumentParser(prog=prog, description="Generate every clip of a preprocessed (test) cache with an "
                                                        "adapter, in the folder layout python -m surgsora.eval reads.")
    ap.add_argument("--data", required=True, help="preprocessed cache of the test clips")
    ap.add_argument("--adapter", required=True, help="adapter folder written by python -m train fit")
    ap.add_argument("--out", required=True, help="output folder (real/, fake/, flows/, and cropped/ if padded)")
    ap.add_argument("--config", choices=("full", "tiny"), default="full")
    ap.add_argument("--svd", default="", help="SVD checkpoint (default with --recipe: the recipe's)")
    ap.add_argument("--recipe", help="take --svd from this recipe (names inside --models)")
    ap.add_argument("--models", default="models")
    ap.add_argument("--flow", choices=("trajectory", "dense"), default="trajectory",
                    help="trajectory: decoded from the guide points (Tables 1-2); dense: the ground-truth flow")
    ap.add_argument("--flow-decoder", default="auto", help="auto | analytic | CMP checkpoint path")
    ap.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    ap.add_argument("--seed", type=int, default=0, help="default 0; -1 = a random seed, printed")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--ids", nargs="*", help="only these clip ids (default: all)")
    args = ap.parse_args(argv)
    try:
        if args.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {args.steps}.")
        if not (Path(args.data) / "index.json").is_file():
            raise ConfigError(f"--data {args.data} holds no preprocessed cache (index.json missing).")
        from .config import _check_adapter

        _check_adapter(args.adapter)
        svd = args.svd
        if not svd and args.recipe:
            svd = resolve_model_path(load_recipe(args.recipe)["fit"].get("svd", ""), args.models)
        if args.config == "full" and not (svd and Path(svd).exists()):
            raise ConfigError(f"--svd {svd or '(none)'} does not exist; give the SVD checkpoint the adapter was "
                              "trained with (or a --recipe).")
        if args.flow_decoder not in ("auto", "analytic") and not Path(args.flow_decoder).is_file():
            raise ConfigError(f"--flow-decoder {args.flow_decoder} is not a file.")
        check_out_dir(args.out)
        _check_device(args.device)
        _check_seed(args.seed)
    except ConfigError as e:
        return _fail(prog, str(e))
    args.seed = resolve_seed(args.seed, "--seed")
    from surgsora.loading.io import ModelFileError

    from .data import CacheError
    from .sample import sample_cache

    try:
        result = sample_cache(args.data, args.adapter, args.out, args.config, svd, args.flow, args.flow_decoder,
                              args.models, args.steps, args.seed, args.device, args.ids)
    except (CacheError, ModelFileError) as e:
        return _fail(prog, (str(e).strip().splitlines() or [type(e).__name__])[0])
    print(f"sample: {result['clips']} clips -> {result['out']}" + (" (+ cropped/ without the padding)"
                                                                    if result["cropped"] else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"preprocess": preprocess_main, "fit": fit_main, "sample": sample_main}
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from surgsora.atomic import describe_write_error

    try:
        return commands[argv[0]](argv[1:])
    except Exception as e:  # a full disk while writing: one sentence, exit 1 (nothing half-written is left)
        sentence = describe_write_error(e)
        if sentence is None:
            raise
        print(f"python -m train {argv[0]}: error: {sentence}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
