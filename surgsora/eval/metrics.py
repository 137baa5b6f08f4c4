"""Per-frame and per-video metrics that need no network: PSNR, SSIM, flow agreement, IS, frame consistency.

Conventions (stated in every report):

- **PSNR** per frame over all pixels and the three RGB channels, ``10 log10(R^2 / MSE)`` with data range
  ``R = 255`` for uint8 frames. Identical frames have MSE 0 and an *infinite* PSNR; :func:`psnr` returns
  ``inf`` for them (the mathematical value) and, with ``cap=``, the cap instead. Reports average capped
  per-frame values (default cap 100 dB) and count how many frames hit the cap, so one identical frame
  (typically frame 0, the conditioning frame) cannot turn a mean into ``inf``.
- **SSIM** is the standard convention of Wang et al. (2004) as scikit-image implements it with
  ``gaussian_weights=True``: an 11x11 Gaussian window with sigma 1.5 (truncated at 3.5 sigma), K1 = 0.01,
  K2 = 0.03, population (not sample) covariances, the SSIM map averaged over the *valid* region (the
  5-pixel border where the window would leave the image is excluded), computed per RGB channel and
  averaged over channels.
- **Flow agreement** compares the flow estimated on the generated video with the conditioning flow:
  Fl-epe is the mean end-point error in pixels, Fl-all the percentage of pixels whose EPE exceeds both
  3 px and 5 % of the reference flow magnitude (the KITTI 2015 outlier rule).
- **Inception Score** as torch-fidelity computes it: softmax over the 1008 unbiased logits, the samples
  cut into ``splits`` consecutive chunks, ``exp(E_x KL(p(y|x) || p(y)))`` per chunk, mean and (sample)
  standard deviation over chunks.
- **Frame consistency**: the mean cosine similarity of the CLIP image embeddings of consecutive frames.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "SSIM_SIGMA", "SSIM_TRUNCATE", "SSIM_K1", "SSIM_K2", "PSNR_CAP_DB", "FL_ABS_PX", "FL_REL",
    "psnr", "ssim", "ssim_window", "flow_errors", "inception_score", "frame_consistency",
    "bootstrap_ci",
]

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # scipy/scikit-image truncation: radius int(3.5 * 1.5 + 0.5) = 5 -> 11x11 window
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PSNR_CAP_DB = 100.0
FL_ABS_PX = 3.0
FL_REL = 0.05


def _as_frames(x) -> torch.Tensor:
    """uint8/float array [T,H,W,C], [H,W,C] or [H,W] -> float64 tensor [T, C, H, W]."""
    t = torch.as_tensor(np.asarray(x))
    if t.ndim == 2:
        t = t[None, :, :, None]
    elif t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"expected frames [T,H,W,C], [H,W,C] or [H,W]; got shape {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).to(torch.float64)


def _check_pair(a, b) -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"the two videos differ in shape: {np.shape(a)} vs {np.shape(b)}; "
                         "compare frames of the same size and count")


def psnr(a, b, data_range: float = 255.0, cap: float | None = None) -> np.ndarray:
    """PSNR in dB of each frame pair of ``a`` and ``b`` ([T,H,W,C] or one frame), as float64 [T].

    Identical frames give ``inf``, or ``cap`` when a cap is given.
    """
    _check_pair(a, b)
    x, y = _as_frames(a), _as_frames(b)
    mse = (x - y).pow(2).flatten(1).mean(1).numpy()
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(float(data_range) ** 2 / mse)
    if cap is not None:
        out = np.minimum(out, float(cap))
    return out


def ssim_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> torch.Tensor:
    """The normalised 1-D Gaussian of the SSIM window (length ``2 * int(truncate * sigma + 0.5) + 1``)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim(a, b, data_range: float = 255.0, sigma: float = SSIM_SIGMA, k1: float = SSIM_K1, k2: float = SSIM_K2,
         chunk: int = 8) -> np.ndarray:
    """Mean SSIM of each frame pair of ``a`` and ``b`` ([T,H,W,C] or one frame), as float64 [T]."""
    from scipy.ndimage import correlate1d

    _check_pair(a, b)
    g = ssim_window(sigma).numpy()
    r = len(g) // 2
    xa, xb = _as_frames(a).numpy(), _as_frames(b).numpy()  # float64 [T, C, H, W]
    h, w = xa.shape[-2:]
    if h < len(g) or w < len(g):
        raise ValueError(f"SSIM needs frames of at least {len(g)}x{len(g)} pixels; got {h}x{w}")
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2

    def blur(z):  # separable Gaussian, kept only where the window lies inside the image ('valid')
        z = correlate1d(z, g, axis=-1, mode="constant")[..., r:w - r]
        return correlate1d(z, g, axis=-2, mode="constant")[..., r:h - r, :]

    out = []
    for s in range(0, xa.shape[0], chunk):
        x, y = xa[s:s + chunk], xb[s:s + chunk]
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out.append(smap.mean(axis=(2, 3)).mean(axis=1))
    return np.concatenate(out)


def flow_errors(estimated, reference, abs_px: float = FL_ABS_PX, rel: float = FL_REL) -> dict:
    """End-point errors of ``estimated`` against ``reference`` flow, both [..., 2, H, W] in pixels.

    Returns ``epe`` (the per-pixel EPE map [..., H, W]), ``fl_epe`` (mean EPE, px), ``fl_all`` (percentage
    of outliers: EPE > ``abs_px`` and EPE > ``rel`` x |reference|), and both per leading index
    (``per_step_epe``, ``per_step_fl_all``) when the input has a time axis.
    """
    est = torch.as_tensor(np.asarray(estimated), dtype=torch.float64)
    ref = torch.as_tensor(np.asarray(reference), dtype=torch.float64)
    if est.shape != ref.shape or est.ndim < 3 or est.shape[-3] != 2:
        raise ValueError(f"flows must both be [..., 2, H, W] of one shape; got {tuple(est.shape)} and "
                         f"{tuple(ref.shape)}")
    for name, f in (("estimated", est), ("reference", ref)):
        if not bool(torch.isfinite(f).all()):  # NaN compares false: it would count as "no outlier" (Fl-all 0 %)
            raise ValueError(f"the {name} flow contains NaN or infinite values; every displacement must be finite.")
    epe = (est - ref).norm(dim=-3)
    mag = ref.norm(dim=-3)
    outlier = (epe > abs_px) & (epe > rel * mag)
    res = {
        "epe": epe.float().numpy(),
        "fl_epe": float(epe.mean()),
        "fl_all": 100.0 * float(outlier.double().mean()),
    }
    if epe.ndim >= 3:
        res["per_step_epe"] = epe.flatten(1).mean(1).numpy()
        res["per_step_fl_all"] = 100.0 * outlier.flatten(1).double().mean(1).numpy()
    return res


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """Inception Score (mean, std over splits) of [N, classes] logits, in float64."""
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"logits must be [N, classes] with N >= 1; got {tuple(x.shape)}")
    n = x.shape[0]
    splits = max(1, min(int(splits), n))
    logp = torch.log_softmax(x, dim=1)
    p = logp.exp()
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        part_p, part_logp = p[lo:hi], logp[lo:hi]
        # log of the marginal p(y) from log-probabilities: finite even where every p(y|x) underflows to 0
        log_py = torch.logsumexp(part_logp, dim=0, keepdim=True) - math.log(hi - lo)
        kl = (part_p * (part_logp - log_py)).sum(1).mean()
        scores.append(math.exp(float(kl)))
    scores = np.asarray(scores)
    std = float(scores.std(ddof=1)) if len(scores) > 1 else 0.0
    return float(scores.mean()), std


def frame_consistency(embeddings) -> float:
    """Mean cosine similarity of consecutive rows of [T, D] embeddings (T >= 2)."""
    e = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    if e.ndim != 2 or e.shape[0] < 2:
        raise ValueError(f"frame consistency needs embeddings [T>=2, D]; got {tuple(e.shape)}")
    e = F.normalize(e, dim=1)
    return float((e[1:] * e[:-1]).sum(1).mean())


def bootstrap_ci(statistic: Callable[..., float], samples: Sequence, n_boot: int, seed: int = 0,
                 level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of ``statistic(*resampled)``.

    ``samples`` is a list of arrays, each resampled independently with replacement along its first
    axis (one array for per-video values, two for real/fake feature sets). ``None`` when ``n_boot`` is 0.
    """
    if n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        drawn = [np.asarray(s)[rng.integers(0, len(s), len(s))] for s in samples]
        v = statistic(*drawn)
        if np.isfinite(v):
            values.append(v)
    if not values:
        return None
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [a, 1.0 - a])
    return [float(lo), float(hi)]
