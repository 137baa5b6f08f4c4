"""Forward splatting (average, summation, softmax) and flow resizing, in pure PyTorch.

The published SurgSora/MOFA code splats with a CuPy kernel (``softsplat``), which fails on CPU and
breaks with new CUDA toolkits. This module does the same maths with ``index_add_``: every source pixel
is pushed to the four integer neighbours of its target position ``p + flow(p)`` with bilinear weights,
and each target is divided by the total weight it received ("average" splatting). Targets that fall
outside the frame are dropped (never wrapped) and pixels that receive nothing stay exactly 0.
It is batched over every image and frame at once, works on any device and float dtype, and is
differentiable with respect to both the features and the flow.

Two relatives share the same scatter: :func:`sum_splat` (no normalisation: coverage and mask mass) and
:func:`softmax_splat` (Niklaus & Liu 2020), which weighs each source by ``exp(metric)`` so that, where an
instrument and the tissue behind it land on one pixel, the nearer one shows instead of a blend.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

__all__ = ["forward_splat", "forward_splat_video", "softmax_splat", "sum_splat", "resize_flow"]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every splat accumulates in: fp32 at least. In fp16 a target position ``x + flow`` at x ~ 1000 has
    a resolution of 0.5 px, a sum of bilinear weights loses small contributions, and a softmax metric above ~11
    (e.g. 50 x disparity) overflows ``exp`` unless shifted; outputs go back to the input dtype."""
    return torch.promote_types(dtype, torch.float32)


def _all_finite(x: torch.Tensor) -> bool:
    """``isfinite(x).all()``, True on the ``meta`` device (no values there: device and shape checks only)."""
    return x.device.type == "meta" or bool(torch.isfinite(x).all())


# Below this total weight a target pixel fades linearly to 0 instead of being divided by a tiny
# number; keeps the output continuous in the flow (and the gradients finite).
_EPS = 1e-4


def _corners(flow: torch.Tensor, n: int, h: int, w: int):
    """The four bilinear targets of every source pixel: yields (flat index [N*H*W], weight [N*H*W]) per corner.

    Targets outside the frame (and sources with a non-finite flow) point at one extra row, index
    ``n*h*w``, with weight 0, so a caller accumulates into ``n*h*w + 1`` rows and drops the last.
    """
    ys, xs = torch.meshgrid(
        torch.arange(h, device=flow.device, dtype=flow.dtype),
        torch.arange(w, device=flow.device, dtype=flow.dtype),
        indexing="ij",
    )
    tx = xs + flow[:, 0]  # [N, H, W] target x
    ty = ys + flow[:, 1]
    x0 = torch.floor(tx)
    y0 = torch.floor(ty)
    fx = tx - x0  # fractional parts carry the gradient with respect to the flow
    fy = ty - y0
    # Clamp before the integer cast: a huge (or non-finite) float has no defined long value.
    x0 = x0.clamp(-2, w + 1).nan_to_num(-2).long()
    y0 = y0.clamp(-2, h + 1).nan_to_num(-2).long()
    batch_offset = (torch.arange(n, device=flow.device) * (h * w)).view(n, 1, 1)
    dump = n * h * w
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi = x0 + dx
        yi = y0 + dy
        wgt = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        index = torch.where(inside, batch_offset + yi * w + xi, torch.full_like(xi, dump))
        yield index.reshape(-1), torch.where(inside, wgt, torch.zeros_like(wgt)).reshape(-1)


# softsplat's 'avg' mode (the CuPy kernel of the published SurgSora/MOFA code) divides by weight + 1e-7.
SOFTSPLAT_EPS = 1e-7


def forward_splat(features: torch.Tensor, flow: torch.Tensor, eps: float = _EPS, normalize: str = "clamp"
                  ) -> torch.Tensor:
    """Forward-warp ``features`` [N, C, H, W] by ``flow`` [N, 2, H, W] (pixels; channel 0 = x, 1 = y).

    Returns the average-splatted features [N, C, H, W] in the input dtype; holes are exactly 0.
    ``normalize="clamp"`` divides by max(weight, eps) (continuous in the flow); ``"softsplat"`` divides by
    weight + 1e-7 as the published softsplat 'avg' does (MOFA's weights were trained with it).
    """
    if normalize not in ("clamp", "softsplat"):
        raise ValueError(f"normalize must be 'clamp' or 'softsplat'; got {normalize!r}")
    if features.ndim != 4 or flow.ndim != 4:
        raise ValueError(
            f"forward_splat expects features [N,C,H,W] and flow [N,2,H,W]; got {tuple(features.shape)} "
            f"and {tuple(flow.shape)}"
        )
    n, c, h, w = features.shape
    if flow.shape != (n, 2, h, w):
        raise ValueError(
            f"flow must be [N,2,H,W] = [{n},2,{h},{w}] to match the features; got {tuple(flow.shape)}"
        )
    if not features.is_floating_point():
        raise TypeError(f"forward_splat needs floating-point features, got {features.dtype}")
    if not _all_finite(flow):
        # NaN/inf would silently splat nothing (an all-zero, "valid-looking" result).
        raise ValueError("forward_splat: the flow contains NaN or infinite values; every displacement must be "
                         "finite.")

    out_dtype = features.dtype
    # Accumulating many small contributions in half precision loses mass; work in >= fp32 (_work_dtype).
    work = _work_dtype(out_dtype)
    feats = features.to(work)
    flow = flow.to(work)

    # Source values with a trailing ones channel, so one index_add_ accumulates features and weights.
    src = torch.cat([feats, feats.new_ones(n, 1, h, w)], dim=1).permute(0, 2, 3, 1).reshape(n * h * w, c + 1)
    dump = n * h * w
    acc = src.new_zeros(dump + 1, c + 1)
    for index, wgt in _corners(flow, n, h, w):
        acc.index_add_(0, index, src * wgt.unsqueeze(1))

    acc = acc[:dump].view(n, h, w, c + 1).permute(0, 3, 1, 2)
    total = acc[:, c:]
    out = acc[:, :c] / (total + SOFTSPLAT_EPS if normalize == "softsplat" else total.clamp_min(eps))
    return out.to(out_dtype)


def _check_pair(name: str, features: torch.Tensor, flow: torch.Tensor) -> None:
    if features.ndim != 4 or flow.ndim != 4 or flow.shape != (features.shape[0], 2, *features.shape[2:]):
        raise ValueError(f"{name} expects features [N,C,H,W] and flow [N,2,H,W] of the same N, H, W; got "
                         f"{tuple(features.shape)} and {tuple(flow.shape)}.")
    if not features.is_floating_point() or not flow.is_floating_point():
        raise TypeError(f"{name} needs floating-point features and flow; got {features.dtype} and {flow.dtype}.")
    if not _all_finite(flow):
        raise ValueError(f"{name}: the flow contains NaN or infinite values; every displacement must be finite.")


def sum_splat(features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Summation splatting: ``features`` [N, C, H, W] pushed along ``flow`` [N, 2, H, W], not normalised.

    Each target holds the bilinear-weighted sum of what lands on it, so splatting ones gives the
    coverage of every pixel (0 on a hole, about 1 where one layer lands, more where layers pile up)
    and splatting a mask gives how much of the masked region arrives there. Input dtype out.
    """
    _check_pair("sum_splat", features, flow)
    n, c, h, w = features.shape
    work = _work_dtype(features.dtype)
    src = features.to(work).permute(0, 2, 3, 1).reshape(n * h * w, c)
    acc = src.new_zeros(n * h * w + 1, c)
    for index, wgt in _corners(flow.to(work), n, h, w):
        acc.index_add_(0, index, src * wgt.unsqueeze(1))
    return acc[:-1].view(n, h, w, c).permute(0, 3, 1, 2).to(features.dtype)


def softmax_splat(features: torch.Tensor, flow: torch.Tensor, metric: torch.Tensor,
                  return_coverage: bool = False):
    """Softmax splatting (Niklaus & Liu, CVPR 2020): where several sources land on one pixel, the one
    with the larger ``metric`` wins.

    ``features`` [N, C, H, W], ``flow`` [N, 2, H, W] (pixels; channel 0 = x, 1 = y), ``metric``
    [N, 1, H, W] the z-metric of every source pixel (e.g. ``alpha * disparity``: nearer is larger).
    A target receives ``sum(w_i exp(z_i) f_i) / sum(w_i exp(z_i))`` over the sources i landing on it
    with bilinear weight ``w_i``. A metric that is constant gives average splatting; a gap of ~20
    between two layers is a hard z-buffer.

    Returns the splatted features [N, C, H, W] in the input dtype, normalised wherever anything
    landed (however little) and exactly 0 on holes; with ``return_coverage`` also the coverage
    [N, 1, H, W] (the sum of bilinear weights, as :func:`sum_splat` of ones), so a caller can fade
    thinly covered pixels into a fill of its own.
    """
    _check_pair("softmax_splat", features, flow)
    n, c, h, w = features.shape
    if metric.shape != (n, 1, h, w):
        raise ValueError(f"softmax_splat: metric must be [N,1,H,W] = [{n},1,{h},{w}] to match the features; "
                         f"got {tuple(metric.shape)}.")
    if not _all_finite(metric):
        raise ValueError("softmax_splat: the metric contains NaN or infinite values; it must be finite everywhere.")
    out_dtype = features.dtype
    work = _work_dtype(out_dtype)  # the metric, exp and the weight sums in fp32 at least (fp16 overflows past e^11)
    src = features.to(work).permute(0, 2, 3, 1).reshape(n * h * w, c)
    z = metric.to(work).reshape(n * h * w)
    corners = list(_corners(flow.to(work), n, h, w))

    # exp(z) overflows for large metrics, and subtracting one global maximum underflows every far
    # layer to 0 (a false hole). Subtract instead, per target pixel, the largest metric that reaches it
    # with a non-zero weight: its own source then weighs exp(0) = 1 there, so every covered pixel keeps a
    # positive denominator. The shift cancels in the ratio, hence no gradient through it.
    dump = n * h * w
    with torch.no_grad():
        zmax = z.new_full((dump + 1,), float("-inf"))
        for index, wgt in corners:
            zmax.scatter_reduce_(0, torch.where(wgt > 0, index, dump), z, reduce="amax")
        zmax = torch.where(torch.isfinite(zmax), zmax, torch.zeros_like(zmax))
    acc = src.new_zeros(dump + 1, c + 2)  # features, softmax weight, bilinear weight (coverage)
    for index, wgt in corners:
        soft = wgt * torch.exp((z - zmax[index]).clamp_max(0))
        acc.index_add_(0, index, torch.cat([src * soft.unsqueeze(1), soft.unsqueeze(1), wgt.unsqueeze(1)], 1))
    acc = acc[:dump].view(n, h, w, c + 2).permute(0, 3, 1, 2)
    out = (acc[:, :c] / acc[:, c:c + 1].clamp_min(torch.finfo(work).tiny)).to(out_dtype)
    if return_coverage:
        return out, acc[:, c + 1:].to(out_dtype)
    return out


def forward_splat_video(features: torch.Tensor, flow: torch.Tensor, normalize: str = "clamp") -> torch.Tensor:
    """Warp one feature map per video to every frame.

    ``features`` [B, C, h, w] (the frame-0 features), ``flow`` [B, T-1, 2, h, w] (frame 0 -> t).
    Returns [B, T, C, h, w]: frame 0 is the input unchanged, frame t the features splatted by flow t
    (``normalize`` as in :func:`forward_splat`).
    """
    b, c, h, w = features.shape
    if flow.ndim != 5 or flow.shape[0] != b or flow.shape[2] != 2 or flow.shape[3:] != (h, w):
        raise ValueError(
            f"flow must be [B,T-1,2,h,w] = [{b},T-1,2,{h},{w}] for features {tuple(features.shape)}; "
            f"got {tuple(flow.shape)} (resize it with resize_flow first)"
        )
    t1 = flow.shape[1]
    expanded = features.unsqueeze(1).expand(b, t1, c, h, w).reshape(b * t1, c, h, w)
    warped = forward_splat(expanded, flow.reshape(b * t1, 2, h, w), normalize=normalize).view(b, t1, c, h, w)
    return torch.cat([features.unsqueeze(1), warped], dim=1)


def _check_size(fn: str, size) -> tuple[int, int]:
    """``size = (h, w)`` as two whole numbers >= 1, or one sentence (before interpolate's bare error)."""
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: size must be (height, width); got {size!r}.") from None
    out = []
    for v in (h, w):
        try:  # ints, numpy and 0-d torch integers; 64.0 too, but never 63.5, True or None
            n = int(v) if isinstance(v, float) and v.is_integer() else operator.index(v)
        except TypeError:
            n = None
        if isinstance(v, bool) or n is None or n < 1:
            raise ValueError(f"{fn}: size must be (height, width) in whole pixels, each at least 1; got {size!r}.")
        out.append(n)
    return out[0], out[1]


def resize_flow(flow: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a flow field ``[..., 2, H, W]`` to ``size = (h, w)`` and rescale its values.

    A flow is measured in pixels of the tensor it belongs to, so resizing by 1/8 also divides the
    displacements by 8 (x by w/W, y by h/H). Downsampling is antialiased so that a small moving
    region still contributes its mean motion instead of being skipped by point sampling.
    ``mode="nearest"`` point-samples instead (what MOFA-Video does, so its weights see the flow they
    were trained on). A size that is not two whole numbers >= 1 raises ``ValueError``.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"flow resize mode must be 'bilinear' or 'nearest'; got {mode!r}")
    if flow.ndim < 3 or flow.shape[-3] != 2:
        raise ValueError(f"flow must be [..., 2, H, W]; got {tuple(flow.shape)}")
    lead = flow.shape[:-3]
    H, W = flow.shape[-2:]
    h, w = _check_size("resize_flow", size)
    if 0 in (H, W):
        raise ValueError(f"resize_flow: the flow is empty ({H}x{W} pixels); give a flow of at least 1x1.")
    if (h, w) == (H, W):
        return flow
    flat = flow.reshape(-1, 2, H, W)
    down = h < H or w < W
    dtype = flat.dtype
    work = flat if dtype in (torch.float32, torch.float64) else flat.float()
    if mode == "nearest":
        resized = F.interpolate(work, size=(h, w), mode="nearest")
    else:
        resized = F.interpolate(work, size=(h, w), mode="bilinear", align_corners=False, antialias=down)
    scale = torch.tensor([w / W, h / H], dtype=resized.dtype, device=resized.device).view(1, 2, 1, 1)
    return (resized * scale).to(dtype).reshape(*lead, 2, h, w)
