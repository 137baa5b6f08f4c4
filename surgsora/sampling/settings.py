"""The rules of the sampling settings, written once (torch-free, light enough for the ComfyUI nodes to import).

Every surface checks its settings here and names them its own way: the library by its argument names, the CLI
by its flags (``names={"min_cfg": "--min-cfg", ...}``), a node by its widgets. A broken rule raises
:class:`SettingError` (a ``ValueError``) with one sentence naming the setting, what it must be and what it got.

:func:`check_settings` checks whatever is given (``None`` = not known yet, as a linked widget at ComfyUI's
queue time), and the pair rules (``min_cfg <= max_cfg``, ``t_weak < t_strong``) when both values are known.
:class:`SamplingSettings` is the whole set with its defaults, checked when made.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

__all__ = ["SettingError", "SamplingSettings", "check_settings", "check_video_size", "resolve_seed", "RANDOM_SEED",
           "MAX_STEPS", "MAX_FRAMES",
           "MAX_MOTION_BUCKET", "MAX_FPS", "MAX_SEED", "SVD_MULTIPLE", "TTM_T_WEAK", "TTM_T_STRONG", "TTM_STEPS",
           "TTM_MOTION_BUCKET"]

MAX_STEPS = 1000
MAX_FRAMES = 4096
MAX_MOTION_BUCKET = 1023  # SVD's motion bucket ids
MAX_FPS = 1000.0
MAX_SEED = 2 ** 64 - 1  # what torch.Generator.manual_seed takes
RANDOM_SEED = -1  # "random" in ComfyUI and most tools: a fresh seed, printed so that the run can be repeated
SVD_MULTIPLE = 64  # the SVD UNet downsamples latents (1/8 of the image) three more times

# Time-to-Move's SVD settings (run_svd.py): t_weak at step 16 and t_strong at step 21 of 50, motion bucket 17.
TTM_T_WEAK, TTM_T_STRONG, TTM_STEPS, TTM_MOTION_BUCKET = 0.32, 0.42, 50, 17


class SettingError(ValueError):
    """A sampling setting out of its rule; the message is one sentence naming it (in the caller's words)."""


def _integer(name: str, value, lo: int, hi: int | None = None) -> None:
    """A whole number in [lo, hi] (``hi`` None: no upper bound)."""
    rng = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
    if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()):
        raise SettingError(f"{name} must be a whole number {rng}; got {value!r}.")
    if value < lo or (hi is not None and value > hi):
        raise SettingError(f"{name} must be {rng}; got {value}.")


def _number(name: str, value, lo: float = 0.0, hi: float | None = None) -> None:
    """A finite number in [lo, hi]."""
    try:
        ok = math.isfinite(value) and value >= lo and (hi is None or value <= hi)
    except TypeError:
        ok = False
    if not ok:
        raise SettingError(f"{name} must be a finite number >= {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
                           + f"; got {value}.")


def check_settings(names: Mapping[str, str] | None = None, **values) -> None:
    """Check the given sampling settings (``None`` values are skipped); one :class:`SettingError` for the first
    broken rule. ``names`` maps a setting to the caller's name for it (a CLI flag, a widget)."""
    names = names or {}

    def n(key: str) -> str:
        return names.get(key, key)

    def given(key: str):
        return values.get(key) is not None

    unknown = set(values) - _RULES.keys()
    if unknown:
        raise TypeError(f"unknown sampling settings: {', '.join(sorted(unknown))}")
    pair = given("t_weak") and given("t_strong")  # checked together below, in one sentence
    for key, rule in _RULES.items():
        if given(key) and not (pair and key in ("t_weak", "t_strong")):
            rule(n(key), values[key])
    if given("min_cfg") and given("max_cfg") and values["min_cfg"] > values["max_cfg"]:
        raise SettingError(f"{n('min_cfg')} ({values['min_cfg']}) must not be larger than {n('max_cfg')} "
                           f"({values['max_cfg']}).")
    if pair and not 0 <= values["t_weak"] < values["t_strong"] <= 1:  # False for NaN too
        raise SettingError(f"{n('t_weak')} ({values['t_weak']}) must be smaller than {n('t_strong')} "
                           f"({values['t_strong']}), both in [0, 1] (fractions of the schedule).")


def check_video_size(width: int, height: int, what: str = "The video size", fix: str = "") -> None:
    """One :class:`SettingError` unless SVD can generate at ``width`` x ``height`` (both multiples of
    :data:`SVD_MULTIPLE`); the sentence suggests the nearest size that works and ends with ``fix``."""
    if width % SVD_MULTIPLE or height % SVD_MULTIPLE or width < SVD_MULTIPLE or height < SVD_MULTIPLE:
        sw, sh = (max(SVD_MULTIPLE, round(v / SVD_MULTIPLE) * SVD_MULTIPLE) for v in (width, height))
        raise SettingError(f"{what} {width}x{height} is not a size SVD can generate: width and height must be "
                           f"multiples of {SVD_MULTIPLE} (e.g. {sw}x{sh}){fix}.")


def _seed(name: str, value) -> None:
    if value == RANDOM_SEED and not isinstance(value, bool):
        return
    try:
        _integer(name, value, 0, MAX_SEED)
    except SettingError:
        raise SettingError(f"{name} must be a whole number between 0 and {MAX_SEED}, or {RANDOM_SEED} for a random "
                           f"seed; got {value!r}.") from None


def resolve_seed(seed, name: str = "seed", announce: Callable[[str], None] | None = print) -> int:
    """``seed`` as an int; :data:`RANDOM_SEED` (-1) draws a fresh one (below 2**32, short enough to type) and
    ``announce`` says which ("seed -1: using random seed N"), so that the run can be repeated with it."""
    check_settings({"seed": name}, seed=seed)
    if seed != RANDOM_SEED:
        return int(seed)
    drawn = secrets.randbelow(2 ** 32)
    if announce is not None:
        announce(f"{name} {RANDOM_SEED}: using random seed {drawn} (give {name} {drawn} to repeat this run).")
    return drawn


def _fraction(name: str, value) -> None:
    _number(name, value, 0.0, 1.0)


def _frames(name: str, value) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 2:
        raise SettingError(f"{name} must be at least 2; got {value}.")
    _integer(name, value, 2, MAX_FRAMES)


def _fps(name: str, value) -> None:
    try:
        ok = math.isfinite(value) and 0 < value <= MAX_FPS
    except TypeError:
        ok = False
    if not ok:
        raise SettingError(f"{name} must be a finite number of frames per second in (0, {MAX_FPS:g}], such as 7; "
                           f"got {value!r}.")


_RULES = {
    "steps": lambda name, v: _integer(name, v, 1, MAX_STEPS),
    "frames": _frames,
    "min_cfg": _number,
    "max_cfg": _number,
    "fps": _fps,
    "motion_bucket_id": lambda name, v: _integer(name, v, 0, MAX_MOTION_BUCKET),
    "noise_aug_strength": lambda name, v: _number(name, v, 0.0, 1.0),
    "control_scale": _number,
    "seed": _seed,
    "t_weak": _fraction,
    "t_strong": _fraction,
    "decode_chunk": lambda name, v: _integer(name, v, 1),  # more than the video's frames = all at once
}


@dataclass(frozen=True)
class SamplingSettings:
    """Everything a sampler call takes besides its inputs, checked when made (:class:`SettingError`, in the
    library's names: a surface with names of its own calls :func:`check_settings` with them first).

    ``fps`` None = the adapter's training fps (7 without an adapter); ``frames`` None = the conditions' or motion
    signal's count (or the UNet's); ``t_weak`` / ``t_strong`` are fractions of the schedule and matter only with a
    motion signal (dual-clock sampling). ``seed`` -1 (:data:`RANDOM_SEED`) becomes a fresh random seed, printed
    (:func:`resolve_seed`) and stored in ``seed``, so that the run can be repeated.
    """

    steps: int = 25
    frames: int | None = None
    min_cfg: float = 1.0
    max_cfg: float = 3.0
    fps: float | None = None
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    control_scale: float = 1.0
    seed: int = 0
    t_weak: float = TTM_T_WEAK
    t_strong: float = TTM_T_STRONG
    decode_chunk: int | None = None

    def __post_init__(self):
        check_settings(**asdict(self))
        if self.seed == RANDOM_SEED:
            object.__setattr__(self, "seed", resolve_seed(self.seed))  # frozen: set once, here


# Weight precision, a choice of the CLIs (--precision) and the loader nodes (precision widget); the dtype it names on
# a device is :func:`surgsora.sampling.generate.precision_dtype` (this module stays torch-free).
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def add_precision_argument(parser) -> None:
    """``--precision auto|fp32|fp16|bf16`` (alias ``--dtype``) on an argparse parser; read it back with
    ``precision_dtype(args.precision, device)``."""
    parser.add_argument("--precision", "--dtype", dest="precision", default="auto", choices=PRECISIONS,
                        help="weight precision: auto = fp32 on the CPU, fp16 on a GPU; bf16 has fp32's range (no "
                             "overflow) at fp16's memory; an fp16 VAE decodes in fp32 as diffusers does")

