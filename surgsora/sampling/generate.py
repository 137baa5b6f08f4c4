"""One frame and its trajectories -> a video: the end-to-end composition, written once.

Two layers, each the one way to do its part:

* :func:`sample` -- a pipeline, the first frame, :class:`~.settings.SamplingSettings` and what steers it (the
  adapter's conditions and/or a dual-clock motion signal) -> the video latents. It checks what it is given
  (frame counts, sizes, the signal's shape) before any compute, then makes the generator from the seed and
  consumes it in one order: the first frame's noise augmentation, then the initial latents and the dual-clock
  noise while denoising. The ComfyUI sampler node calls exactly this.
* :func:`generate` -- :class:`Models`, the frame, tracks (or a flow given directly) and the mode ('adapter' or
  'ttm') -> the decoded video plus what was computed on the way (flow, region masks, depth, the dual-clock
  mask). SAM segments the tracked objects and encodes the frame for the adapter, Depth Anything gives depth,
  the trajectory decoder turns tracks into flow, then :func:`sample` and the VAE. ``python -m surgsora
  generate`` and ``python -m train sample`` compose from it.

:meth:`Models.load` loads the adapter at once (its config decides what else is needed) and defers the rest:
each perception model is loaded when first needed and let go after use, and SVD last, so the largest models
are never in memory together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Mapping, Sequence

import torch

from ..loading.files import ModelFileError
from .dual_clock import dual_clock_indices
from .settings import PRECISIONS, SamplingSettings, check_video_size

if TYPE_CHECKING:  # the pipeline imports diffusers: loaded when sampling, not when the preview loads a decoder
    from .pipeline import SurgSoraPipeline

__all__ = ["sample", "generate", "Models", "Deferred", "Generated", "NonFiniteVideo", "load_model", "load_decoder",
           "PRECISIONS", "precision_dtype"]

Timer = Callable[[str], ContextManager]  # timer("stage name") times the block it opens


class NonFiniteVideo(RuntimeError):
    """The decoded video holds NaN or infinite values (usually fp16 overflow): nothing valid to keep."""


def _stages(timer: Timer | None) -> Timer:
    return timer if timer is not None else (lambda name: contextlib.nullcontext())


# ======================================================================================= precision

def precision_dtype(name: str, device="cpu") -> torch.dtype:
    """The weight dtype of a ``--precision`` choice on ``device``: fp32 / fp16 / bf16 as named; ``auto`` is fp32 on
    the CPU (half precision is slow there) and fp16 on a GPU (what diffusers and ComfyUI run SVD in).

    UNet, CLIP image encoder, adapter and VAE weights take this dtype; an fp16 VAE decodes and encodes in fp32
    (diffusers' ``force_upcast`` rule, :meth:`SurgSoraPipeline.vae_upcast`), bf16 runs as it is."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}.")
    if name == "auto":
        return torch.float32 if torch.device(device).type == "cpu" else torch.float16
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


# ======================================================================================= sample

def _frame_count(pipe: SurgSoraPipeline, frames: int | None, conditions, motion_signal) -> int:
    """The video's frame count from what is given, or one sentence naming the input that disagrees."""
    cond_t = None if conditions is None else int(conditions[0].shape[1])
    signal_t = None if motion_signal is None else int(motion_signal.shape[1])
    if cond_t is not None and signal_t is not None and cond_t != signal_t:
        raise ValueError(f"The motion signal has {signal_t} frames but the conditions {cond_t}; make both from the "
                         "same trajectories.")
    if cond_t is not None and frames is not None and frames != cond_t:
        raise ValueError(f"frames is {frames} but the conditions were made for {cond_t} frames; ask for {cond_t} "
                         "frames (or leave frames unset to follow them), or remake the conditions for "
                         f"{frames} frames.")
    if signal_t is not None and frames is not None and frames != signal_t:
        raise ValueError(f"frames is {frames} but the motion signal has {signal_t} frames; ask for {signal_t} "
                         "frames (or leave frames unset to follow it), or remake the signal for "
                         f"{frames} frames.")
    return cond_t or signal_t or frames or int(pipe.unet.config.num_frames)


@torch.no_grad()
def sample(pipe: SurgSoraPipeline, image, settings: SamplingSettings, *, conditions: Sequence[torch.Tensor] | None = None,
           motion_signal: torch.Tensor | None = None, motion_mask: torch.Tensor | None = None,
           height: int | None = None, width: int | None = None,
           callback: Callable[[int, int, torch.Tensor], None] | None = None,
           timer: Timer | None = None) -> torch.Tensor:
    """Video latents [B, T, 4, h, w] (scaled as the pipeline denoises them, before decoding) of first frames
    ``image`` [B, 3, H, W] in [0, 1] generated at ``height`` x ``width`` (default: the image's size).

    ``conditions``: the adapter's fused conditions [B, T, C_s, h_s, w_s] per scale (``pipe`` must hold that
    adapter); ``motion_signal`` [B, T, 3, H', W'] with ``motion_mask`` [B, T, 1, H', W'], both in [0, 1]: dual-clock
    sampling from ``settings.t_weak`` to ``settings.t_strong``. Neither: plain SVD. ``settings.frames`` None follows
    the conditions or the signal (else the UNet's default). ``callback(step, total, latents)`` after every step
    (raise from it to cancel); ``timer(name)``, if given, times each stage.
    """
    from .pipeline import check_motion_signal, to_image_tensor

    x = to_image_tensor(image)
    if (motion_signal is None) != (motion_mask is None):
        missing = "motion_mask" if motion_mask is None else "motion_signal"
        raise ValueError(f"Dual-clock sampling needs both the motion signal and its mask; {missing} is missing.")
    if conditions is not None:
        if pipe.adapter is None:
            raise ValueError("Conditions were given but the pipeline has no adapter; give the adapter they were "
                             "made with.")
        if int(conditions[0].shape[0]) != x.shape[0]:
            raise ValueError(f"The conditions are for a batch of {conditions[0].shape[0]} but the image batch is "
                             f"{x.shape[0]}; make them from the same images.")
    if motion_signal is not None:
        check_motion_signal(motion_signal, motion_mask)
        if motion_signal.shape[0] != x.shape[0]:
            raise ValueError(f"The motion signal is for a batch of {motion_signal.shape[0]} but the image batch is "
                             f"{x.shape[0]}; make it from the same images.")
    frames = _frame_count(pipe, settings.frames, conditions, motion_signal)
    height, width = int(height or x.shape[-2]), int(width or x.shape[-1])
    check_video_size(width, height)
    anchor_steps = (dual_clock_indices(settings.t_weak, settings.t_strong, settings.steps)
                    if motion_signal is not None else None)

    stage = _stages(timer)
    generator = torch.Generator("cpu").manual_seed(int(settings.seed))
    with stage("first frame + conditions"):
        first = pipe.encode_first_frame(x, height, width, float(settings.noise_aug_strength), generator)
        if conditions is not None:
            conditions = [c.to(pipe._execution_device) for c in conditions]
    anchor = None
    if motion_signal is not None:
        with stage("motion signal"):
            anchor = pipe.encode_motion_signal(motion_signal, motion_mask, *anchor_steps, height, width,
                                               settings.decode_chunk)
    with stage("denoise"):
        return pipe.denoise(first, conditions, frames, settings.steps, settings.min_cfg, settings.max_cfg,
                            settings.fps, settings.motion_bucket_id, settings.control_scale, generator,
                            callback=callback, anchor=anchor)


# ======================================================================================= models

@dataclass(frozen=True)
class Deferred:
    """A model loaded by :func:`generate` when it is first needed, and let go after use."""

    load: Callable[[], Any]


def _get(model):
    return model.load() if isinstance(model, Deferred) else model


def load_model(what: str, path, fn: Callable[[], Any]):
    """Run a loader; a user's model file that fails to load in any library-specific way becomes one sentence
    (:class:`~surgsora.loading.files.ModelFileError`), never a traceback."""
    try:
        return fn()
    except ModelFileError:
        raise
    except MemoryError:
        raise MemoryError(f"Not enough memory to load {what} from {path}; close other programs or use a smaller "
                          "model.") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many library-specific ways
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelFileError(f"{what} at {path} could not be loaded ({type(e).__name__}: {first}); the file may be "
                             "truncated or of another kind: download or write it again.") from None


def load_decoder(spec: str | os.PathLike, device="cpu"):
    """The trajectory decoder: ``"analytic"`` (no weights) or the path of a CMP checkpoint."""
    if str(spec) == "analytic":
        from ..motion.analytic_flow import AnalyticDecoder

        return AnalyticDecoder()
    from ..motion.cmp import load_cmp

    return load_model("The CMP trajectory decoder", spec, lambda: load_cmp(spec, device=device))


@dataclass
class Models:
    """What :func:`generate` runs. ``svd``: SVD's components (``vae``, ``image_encoder``, ``unet``, ``scheduler``,
    ``feature_extractor``, as :func:`~surgsora.loading.svd_checkpoint.load_svd` returns them); ``adapter``: a
    SurgSora adapter or MOFA's ControlNet, or None (plain SVD, dual-clock only); ``sam`` (region masks from the
    track starts, and the adapter's SAM features), ``depth`` (Depth Anything) and ``decoder`` (tracks -> flow) when
    used. Each of ``svd``, ``sam``, ``depth`` and ``decoder`` may be a :class:`Deferred` loader instead."""

    svd: Mapping | Deferred
    adapter: Any = None
    sam: Any = None
    depth: Any = None
    decoder: Any = None

    @classmethod
    def load(cls, paths: Mapping[str, Any], device, dtype: torch.dtype) -> "Models":
        """Models from the paths :func:`~surgsora.loading.models_folder.resolve_generate_models` returns: the adapter
        now (on ``device``, in ``dtype``), every other model deferred (SAM and depth in their own precision).

        ``dtype`` (see :func:`precision_dtype`) is the weight dtype of SVD (UNet, CLIP, VAE) and the adapter; an fp16
        VAE computes in fp32 when the pipeline encodes or decodes (diffusers' ``force_upcast``)."""
        from ..loading.adapters import load_adapter
        from ..loading.svd_checkpoint import load_svd
        from ..perception.depth import load_depth_anything
        from ..perception.sam import load_sam

        adapter = None
        if "adapter" in paths:
            p = paths["adapter"]
            adapter = load_model("The adapter", p, lambda: load_adapter(p, dtype=dtype).to(device))

        def deferred(key: str, what: str, fn):
            p = paths.get(key)
            return None if p is None else Deferred(lambda: load_model(what, p, lambda: fn(p)))

        decoder = paths.get("decoder", "analytic")
        return cls(svd=deferred("svd", "Stable Video Diffusion", lambda p: load_svd(p, device=device, dtype=dtype)),
                   adapter=adapter,
                   sam=deferred("sam", "SAM", lambda p: load_sam(p, device=device)),
                   depth=deferred("depth", "Depth Anything", lambda p: load_depth_anything(p, device=device)),
                   decoder=load_decoder(decoder) if str(decoder) == "analytic" else
                   Deferred(lambda: load_decoder(decoder, device)))


# ======================================================================================= generate

@dataclass
class Generated:
    """A generated video and what was computed to make it."""

    video: torch.Tensor  # [T, 3, H, W] in [0, 1], float32 on the CPU
    flow: torch.Tensor  # [1, T-1, 2, H, W] in pixels, frame 0 -> t
    regions: torch.Tensor | None = None  # [1, M, H, W] region masks (given, or SAM's from the track starts)
    depth: torch.Tensor | None = None  # [1, 1, H, W] disparity in [0, 1] (given, or Depth Anything's)
    motion_mask: torch.Tensor | None = None  # ttm: [1, T, 1, H, W], where the video followed the motion signal


def _check_generate_inputs(models: Models, image: torch.Tensor, settings: SamplingSettings, tracks, flow, regions,
                           depth, seg_features, mode: str) -> int:
    """Every rule :func:`generate` can check before any compute; returns the frame count."""
    if mode not in ("adapter", "ttm"):
        raise ValueError(f"mode must be 'adapter' or 'ttm'; got {mode!r}.")
    adapter = models.adapter
    if mode == "adapter" and adapter is None:
        raise ValueError("mode 'adapter' needs an adapter (a SurgSora adapter or MOFA-Video-Traj's ControlNet); give "
                         "one, or use mode 'ttm', which needs only SVD.")
    if image.shape[0] != 1:
        raise ValueError(f"generate makes one video from one frame; got a batch of {image.shape[0]} images.")
    h, w = image.shape[-2:]
    check_video_size(w, h, "The frame")
    if (tracks is None) == (flow is None):
        raise ValueError("Give either tracks [N, T, 2] (decoded into flow) or a flow [1, T-1, 2, H, W], not "
                         + ("both." if tracks is not None else "neither."))
    if tracks is not None:
        tracks = torch.as_tensor(tracks)
        if tracks.ndim != 3 or tracks.shape[-1] != 2 or tracks.shape[1] < 2:
            raise ValueError(f"tracks must be [N, T, 2] (x, y) with T >= 2 frames; got {tuple(tracks.shape)}.")
        frames, what = int(tracks.shape[1]), "the tracks have"
        if models.decoder is None:
            raise ValueError("Tracks need a trajectory decoder to become flow; give Models a decoder (e.g. "
                             "load_decoder('analytic')).")
    else:
        if not torch.is_tensor(flow) or flow.ndim != 5 or flow.shape[0] != 1 or flow.shape[2] != 2:
            got = tuple(flow.shape) if torch.is_tensor(flow) else type(flow).__name__
            raise ValueError(f"flow must be [1, T-1, 2, H, W] in pixels; got {got}.")
        if flow.shape[-2:] != (h, w):
            raise ValueError(f"flow is {flow.shape[-1]}x{flow.shape[-2]} but the frame is {w}x{h}; give the flow at "
                             "the frame's size (resizing a flow rescales its values).")
        frames, what = int(flow.shape[1]) + 1, "the flow has steps for"
    if settings.frames is not None and settings.frames != frames:
        raise ValueError(f"frames is {settings.frames} but {what} {frames} frames; ask for {frames} frames or give "
                         f"{settings.frames}-frame trajectories.")
    for name, x, channels in (("regions", regions, None), ("depth", depth, 1)):
        if x is not None and (not torch.is_tensor(x) or x.ndim != 4 or x.shape[0] != 1 or x.shape[-2:] != (h, w)
                              or channels is not None and x.shape[1] != channels):
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"{name} must be [1, {channels or 'M'}, {h}, {w}] (the frame's size); got {got}.")
    if adapter is not None and adapter.needs_seg and seg_features is None and models.sam is None:
        raise ValueError("This adapter uses SAM features: give seg_features or a SAM model.")
    if adapter is not None and adapter.needs_depth and depth is None and models.depth is None:
        raise ValueError("This adapter has a depth branch: give depth or a Depth Anything model.")
    return frames


@torch.no_grad()
def generate(models: Models, image, settings: SamplingSettings, *, tracks=None, flow: torch.Tensor | None = None,
             regions: torch.Tensor | None = None, depth: torch.Tensor | None = None,
             seg_features: torch.Tensor | None = None, mode: str = "adapter", segment: bool = True,
             callback: Callable[[int, int, torch.Tensor], None] | None = None,
             timer: Timer | None = None) -> Generated:
    """The video of first frame ``image`` [1, 3, H, W] in [0, 1] (H and W multiples of 64) moving as asked.

    Motion: ``tracks`` [N, T, 2] in pixels of the frame (decoded into flow by ``models.decoder``, with ``regions``
    [1, M, H, W] if given, else SAM's masks of the tracked objects when ``models.sam`` is there and ``segment``), or
    ``flow`` [1, T-1, 2, H, W] given directly. ``mode`` 'adapter': the adapter steers SVD from the flow (with
    ``depth`` [1, 1, H, W] and ``seg_features`` computed by ``models.depth`` / ``models.sam`` unless given);
    'ttm': dual-clock sampling after Time-to-Move from the motion signal (the frame warped along the flow, nearer
    in front by depth or the regions), with the adapter too if ``models.adapter`` is set.

    Everything is checked before any model runs. ``timer(name)`` times each stage; ``callback(step, total,
    latents)`` runs after every denoising step. Raises :class:`NonFiniteVideo` if the result is not finite.
    """
    from ..motion.tracks import tracks_to_flow
    from .pipeline import SurgSoraPipeline, to_image_tensor

    image = to_image_tensor(image)
    frames = _check_generate_inputs(models, image, settings, tracks, flow, regions, depth, seg_features, mode)
    settings = dataclasses.replace(settings, frames=frames)
    adapter, ttm = models.adapter, mode == "ttm"
    h, w = image.shape[-2:]
    stage = _stages(timer)

    need_seg = adapter is not None and adapter.needs_seg and seg_features is None
    need_masks = regions is None and segment and tracks is not None
    if models.sam is not None and (need_seg or need_masks):
        with stage("SAM features"):
            sam = _get(models.sam)
            if need_seg:
                seg_features = sam.encode(image)
            if need_masks:
                starts = tracks[:, 0]
                masks = [sam.predict_masks(image, points=starts[i:i + 1])[0] for i in range(len(starts))]
                regions = torch.cat(masks).float().unsqueeze(0).cpu()
            del sam
    if depth is None and models.depth is not None and ((adapter is not None and adapter.needs_depth) or ttm):
        with stage("depth"):
            depth_model = _get(models.depth)
            depth = depth_model(image)
            del depth_model
    if flow is None:
        with stage("tracks -> flow"):
            decoder = _get(models.decoder)
            flow = tracks_to_flow(decoder, image, tracks, (w, h), regions)
            del decoder
    with stage("load SVD"):
        pipe = SurgSoraPipeline(adapter=adapter, **_get(models.svd))
    conditions = None
    if adapter is not None and settings.control_scale != 0:
        with stage("first frame + conditions"):
            conditions = pipe.prepare_conditions(image, depth, seg_features, flow)
    signal = mask = None
    if ttm:
        from ..motion.preview import motion_signal

        with stage("motion signal"):  # the crude animation, computed on the CPU as the preview is
            signal, mask = motion_signal(image, flow.float().cpu(), depth=None if depth is None else depth.cpu(),
                                         regions=None if regions is None else regions.cpu())
    latents = sample(pipe, image, settings, conditions=conditions, motion_signal=signal, motion_mask=mask,
                     height=h, width=w, callback=callback, timer=timer)
    with stage("decode"):
        video = pipe.decode(latents, settings.decode_chunk)[0].float().cpu()  # [T, 3, H, W]
    if not bool(torch.isfinite(video).all()):
        raise NonFiniteVideo("The generated video contains NaN or infinite values (often fp16 overflow); try fp32 or "
                             "bf16, or a smaller control scale.")
    return Generated(video, flow, regions, depth, mask)

