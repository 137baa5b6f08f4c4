"""Mask-aware analytic dense-flow decoder: tracks (+ region masks) -> dense flow, no weights.

It has the same interface as the CMP network (:class:`surgsora.motion.cmp.CMPDecoder`), so the two are
swappable::

    flow = decoder(image, sparse_flow, mask, region_masks=None)   # -> [B, T-1, 2, H, W]

The control points are read back from the sparse input: every pixel where ``mask`` is set is a
track start, its value in ``sparse_flow`` the track's displacement from frame 0 (exactly what
:func:`surgsora.motion.tracks.rasterize` writes). ``image`` is accepted for the common interface and not used.
:meth:`AnalyticDecoder.decode_tracks` takes the ``[N, T, 2]`` tracks directly (sub-pixel starts).

The model, per video:

1. **Regions.** ``region_masks`` ``[B, M, H, W]`` (values in [0, 1]; SAM masks from clicks at the track
   starts, or any ComfyUI MASK). Masks that overlap with IoU >= ``merge_iou`` are merged (one SAM mask
   per click on the same instrument). A track belongs to the smallest region containing its start
   pixel; tracks in no region are *background tracks*. A region without tracks stays still.
2. **Motion inside a region** (as a function of the frame-0 position ``x``):

   * ``region_motion="smooth"`` (default): an affine field fitted to the region's tracks by least
     squares, its gradient shrunk towards a pure translation by ``stiffness`` (one track = a rigid
     translation; few or collinear tracks do not extrapolate wild stretches), plus a Gaussian
     radial-basis interpolation of the residuals (width: half the typical track spacing), so every
     track is followed exactly and the field bends smoothly between several tracks.
   * ``region_motion="rigid"``: the best rotation + translation (2-D Kabsch) of the region's tracks.

3. **Fade and overlap.** A region's weight is its (soft) mask inside and ``exp(-d^2 / 2f^2)`` at
   distance ``d`` outside, ``f = feather * max(H, W)``. Regions are composited from the smallest to
   the largest, each taking the weight the smaller ones left, ``w_eff = w_m * prod_smaller (1 - w_j)``,
   so a part drawn inside an instrument wins over the instrument.
4. **Background** (and the whole frame when no masks are given): a normalised Gaussian radial-basis
   interpolation of the background tracks' motions, faded out away from them::

       g_k(x) = exp(-|x - p_k|^2 / 2 s^2),  s = radius * max(H, W)
       F_bg(x) = (sum_k g_k d_k / sum_k g_k) * (1 - prod_k (1 - g_k))

   so the frame stays still far from every track and a static anchor (d = 0) pins its neighbourhood.
   It fills the weight the regions leave: ``flow = sum_m w_eff_m F_m + prod_m (1 - w_m) F_bg``.

Everything is a handful of dense matrix products over the pixels, solved once for all frames:
well under 100 ms for T = 21 at 256x256 on a CPU (see ``benchmarks/trajectory_endovis.py``).

Memory is bounded whatever the number of tracks: every pixels x tracks product is computed in blocks of
at most :data:`BLOCK_ELEMENTS` entries, and a region with more than :data:`DENSE_RBF_MAX` tracks solves its
residual interpolation as a sparse system (Gaussian entries below 1e-12 dropped), so peak memory is the
output flow plus a few tens of MB (``benchmarks/trajectory_memory.py``). The fits are per frame and axis, so
:class:`PointFlow` (and :meth:`AnalyticDecoder.lazy` / :meth:`AnalyticDecoder.lazy_tracks`) solves them once and
evaluates any range of frames on demand: a caller that streams (the CLI preview) holds one chunk of the flow,
not all of it; the whole flow is the one-chunk case.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

__all__ = ["AnalyticDecoder", "DecodedFlow", "PointFlow", "decode_points", "region_weights", "check_decoder_inputs",
           "refuse_meta"]

# Largest pixels x tracks block evaluated at once (float32/64 entries): ~8-16 MB, whatever the track count.
BLOCK_ELEMENTS = 1 << 20
# Above this many tracks in one region the residual RBF system is solved sparse (a dense K x K float64
# matrix would be 200 MB at 5000 tracks).
DENSE_RBF_MAX = 1500


def check_decoder_inputs(image, sparse_flow, mask, region_masks):
    """Validate the common decoder inputs; returns ``region_masks`` as ``[B, M, H, W]`` (or ``None``)."""
    if sparse_flow.ndim != 5 or sparse_flow.shape[2] != 2:
        raise ValueError(f"sparse_flow must be [B, T-1, 2, H, W]; got {tuple(sparse_flow.shape)}")
    b, f, _, h, w = sparse_flow.shape
    if mask.ndim != 5 or mask.shape[:2] != (b, f) or mask.shape[3:] != (h, w) or mask.shape[2] not in (1, 2):
        raise ValueError(f"mask must be [B, T-1, 1 or 2, H, W] = [{b}, {f}, 1, {h}, {w}]; got {tuple(mask.shape)}")
    if image is not None and (image.ndim != 4 or image.shape[0] != b or image.shape[1] != 3):
        raise ValueError(f"image must be RGB [B, 3, H, W] with B = {b}; got {tuple(image.shape)}")
    if not sparse_flow.is_floating_point() or not bool(torch.isfinite(sparse_flow).all()):
        raise ValueError("sparse_flow must hold finite floating-point displacements (no NaN or inf); check the "
                         "tracks it was rasterised from.")
    if region_masks is not None:
        if not isinstance(region_masks, torch.Tensor):
            raise ValueError(f"region_masks must be a tensor [B, M, H, W]; got {type(region_masks).__name__}")
        if not bool(torch.isfinite(region_masks.float()).all()):
            raise ValueError("region_masks contain NaN or infinite values; masks must be in [0, 1].")
        if region_masks.ndim == 3:
            region_masks = region_masks.unsqueeze(0)
        if region_masks.ndim != 4 or region_masks.shape[0] not in (1, b) or region_masks.shape[2:] != (h, w):
            raise ValueError(f"region_masks must be [B, M, H, W] = [{b}, M, {h}, {w}] (or [M, H, W]); "
                             f"got {tuple(region_masks.shape)}; resize the masks to the flow size first")
        region_masks = region_masks.expand(b, *region_masks.shape[1:])
    return region_masks


def _merge_regions(masks: np.ndarray, merge_iou: float) -> list[np.ndarray]:
    """Binary masks [M, H, W] (float soft values kept) -> list of soft masks with near-duplicates merged."""
    soft = [m for m in masks if (m > 0.5).any()]
    if len(soft) < 2 or merge_iou > 1:
        return soft
    binary = [m > 0.5 for m in soft]
    parent = list(range(len(soft)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(soft)):
        for j in range(i + 1, len(soft)):
            inter = np.count_nonzero(binary[i] & binary[j])
            if inter and inter / np.count_nonzero(binary[i] | binary[j]) >= merge_iou:
                parent[find(j)] = find(i)
    groups: dict[int, np.ndarray] = {}
    for i, m in enumerate(soft):
        r = find(i)
        groups[r] = m if r not in groups else np.maximum(groups[r], m)
    return list(groups.values())


def region_weights(mask: np.ndarray, feather_px: float) -> np.ndarray:
    """Soft weight of one region: the mask inside, ``exp(-d^2/2f^2)`` at distance ``d`` outside (float32)."""
    inside = mask > 0.5
    if feather_px <= 0:
        return np.maximum(mask, inside).astype(np.float32)
    # Distance of every outside pixel to the nearest inside pixel.
    dist = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, 5)
    fade = np.exp(-(dist ** 2) / (2.0 * feather_px ** 2))
    return np.maximum(np.clip(mask, 0, 1), fade).astype(np.float32)


def _grid(y0: int, y1: int, x0: int, x1: int, dtype=torch.float64) -> torch.Tensor:
    """Pixel-centre coordinates [(y1-y0)*(x1-x0), 2] (x, y) of a box, in the continuous convention of
    surgsora.motion.tracks (pixel i spans [i, i+1), so its centre is i + 0.5)."""
    ys, xs = torch.meshgrid(torch.arange(y0, y1, dtype=dtype) + 0.5, torch.arange(x0, x1, dtype=dtype) + 0.5,
                            indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _blocks(n_rows: int, n_cols: int):
    """(row slice, column slice) blocks of at most BLOCK_ELEMENTS entries covering an n_rows x n_cols product."""
    cols = max(1, min(n_cols, BLOCK_ELEMENTS // 64))
    rows = max(1, BLOCK_ELEMENTS // cols)
    for r0 in range(0, n_rows, rows):
        for c0 in range(0, n_cols, cols):
            yield slice(r0, min(r0 + rows, n_rows)), slice(c0, min(c0 + cols, n_cols))


def _gauss_apply(coords: torch.Tensor, points: torch.Tensor, values: torch.Tensor, sigma: float) -> torch.Tensor:
    """``exp(-|coords - points|^2 / 2 sigma^2) @ values`` in bounded memory. [P, 2], [K, 2], [K, D] -> [P, D]."""
    out = values.new_zeros(coords.shape[0], values.shape[1])
    for rows, cols in _blocks(coords.shape[0], points.shape[0]):
        g = torch.exp(-_sq_dist(coords[rows], points[cols]) / (2 * sigma ** 2))
        out[rows] += g @ values[cols]
    return out


def _smooth_fit(points: torch.Tensor, disp: torch.Tensor, stiffness: float) -> tuple:
    """Ridge-regularised affine field + Gaussian RBF interpolation of the residuals, solved once for all frames.

    points [K, 2], disp [K, F*2] (float64) -> the fit :func:`_smooth_eval` evaluates. The affine gradient is
    shrunk towards a pure translation by ``stiffness`` (in coordinates scaled by the tracks' spread), so few or
    badly spread tracks do not extrapolate wild stretches over the region; the residuals are interpolated
    exactly, so every track is still followed. Every column (frame and axis) is its own solution, so the
    fit is cheap ([3 + K, F*2]) and a chunk of frames is evaluated from its columns alone.
    """
    k = points.shape[0]
    c = points.mean(0)
    scale = max(float((points - c).norm(dim=1).max()), 1.0)
    X = torch.cat([torch.ones(k, 1, dtype=points.dtype), (points - c) / scale], dim=1)  # [K, 3]
    # Ridge on the two gradient columns only, written as extra rows of the least-squares system.
    prior = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=X.dtype) * math.sqrt(stiffness * k)
    Xa = torch.cat([X, prior])
    Da = torch.cat([disp, disp.new_zeros(2, disp.shape[1])])
    beta = torch.linalg.pinv(Xa, rtol=1e-9) @ Da  # [3, F*2]; minimum-norm when the tracks are collinear
    resid = disp - X @ beta
    rbf = None
    if k >= 2 and float(resid.abs().max()) > 1e-6:
        if k <= DENSE_RBF_MAX:
            d2 = _sq_dist(points, points)
            nn = (d2 + torch.eye(k, dtype=d2.dtype) * 1e30).min(1).values.sqrt()
            # Half the typical spacing of the tracks: each one bends the field around itself only.
            sigma = max(0.5 * float(nn.median()), 2.0)
            phi = torch.exp(-d2 / (2 * sigma ** 2))
            coef = torch.linalg.solve(phi + 1e-6 * torch.eye(k, dtype=phi.dtype), resid)
        else:
            sigma, coef = _sparse_rbf_solve(points, resid)
        rbf = (sigma, coef.float())
    return c.float(), scale, beta.float(), points.float(), rbf


def _smooth_eval(fit: tuple, coords: torch.Tensor, cols: slice) -> torch.Tensor:
    """The fitted field at ``coords`` [P, 2] for the columns ``cols`` of ``disp`` -> [P, len(cols)] (float32)."""
    c, scale, beta, points, rbf = fit
    coords = coords.to(torch.float32)
    basis = torch.cat([torch.ones(coords.shape[0], 1), (coords - c) / scale], dim=1)
    field = basis @ beta[:, cols]
    if rbf is not None:
        field += _gauss_apply(coords, points, rbf[1][:, cols], rbf[0])
    return field


def _sparse_rbf_solve(points: torch.Tensor, resid: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The same Gaussian RBF system as the dense branch, for many tracks: entries below 1e-12 (beyond ~7.4
    sigma) are dropped, so the matrix has a few dozen entries per row and memory stays linear in K."""
    from scipy.sparse import coo_matrix, identity
    from scipy.sparse.linalg import splu
    from scipy.spatial import cKDTree

    pts = points.numpy()
    tree = cKDTree(pts)
    nn = tree.query(pts, k=2)[0][:, 1]
    sigma = max(0.5 * float(np.median(nn)), 2.0)
    radius = sigma * math.sqrt(2 * math.log(1e12))
    pairs = tree.query_pairs(radius, output_type="ndarray")
    k = len(pts)
    if len(pairs):
        d2 = ((pts[pairs[:, 0]] - pts[pairs[:, 1]]) ** 2).sum(1)
        v = np.exp(-d2 / (2 * sigma ** 2))
        off = coo_matrix((np.r_[v, v], (np.r_[pairs[:, 0], pairs[:, 1]], np.r_[pairs[:, 1], pairs[:, 0]])),
                         shape=(k, k))
        phi = (off + identity(k) * (1 + 1e-6)).tocsc()
    else:
        phi = (identity(k) * (1 + 1e-6)).tocsc()
    coef = splu(phi).solve(np.ascontiguousarray(resid.numpy()))
    return sigma, torch.from_numpy(coef)


def _rigid_field(points: torch.Tensor, disp: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Best 2-D rotation + translation per frame (Kabsch). points [K,2], disp [K,F,2] -> [P, F*2]."""
    cp = points.mean(0)  # [2]
    targets = points[:, None, :] + disp  # [K, F, 2]
    cq = targets.mean(0)  # [F, 2]
    a = points - cp  # [K, 2]
    bq = targets - cq  # [K, F, 2]
    cross = (a[:, None, 0] * bq[..., 1] - a[:, None, 1] * bq[..., 0]).sum(0)
    dot = (a[:, None, 0] * bq[..., 0] + a[:, None, 1] * bq[..., 1]).sum(0)
    theta = torch.atan2(cross, dot)  # [F]; atan2(0, 0) = 0: one track = translation
    cos, sin = torch.cos(theta), torch.sin(theta)
    rel = coords - cp  # [P, 2]
    nx = rel[:, None, 0] * cos - rel[:, None, 1] * sin + cq[:, 0]
    ny = rel[:, None, 0] * sin + rel[:, None, 1] * cos + cq[:, 1]
    field = torch.stack([nx - coords[:, None, 0], ny - coords[:, None, 1]], dim=-1)  # [P, F, 2]
    return field.reshape(coords.shape[0], -1)


def _rbf_background(points: torch.Tensor, disp: torch.Tensor, coords: torch.Tensor, sigma: float) -> torch.Tensor:
    """Normalised Gaussian RBF of the tracks' motions, faded to zero away from all of them. -> [P, F*2].

    Accumulated over blocks of pixels x tracks so memory does not grow with the number of tracks.
    """
    p = coords.shape[0]
    num = disp.new_zeros(p, disp.shape[1])
    den = disp.new_zeros(p, 1)
    keep = disp.new_ones(p, 1)  # prod_k (1 - g_k)
    for rows, cols in _blocks(p, points.shape[0]):
        g = torch.exp(-_sq_dist(coords[rows], points[cols]) / (2 * sigma ** 2))
        num[rows] += g @ disp[cols]
        den[rows] += g.sum(1, keepdim=True)
        keep[rows] *= torch.prod(1 - g, dim=1, keepdim=True)
    return num / den.clamp_min(1e-12) * (1 - keep)


class PointFlow:
    """The dense flow of one video's control points, solved once and evaluated a chunk of frames at a time.

    What :func:`decode_points` returns whole: ``shape`` is ``(F, 2, H, W)``, ``frames(a, b)`` the flow of frames
    ``a..b-1`` ``[b - a, 2, H, W]`` (float32) and ``chunks(n)`` yields it ``n`` frames at a time. Frame t depends
    only on the tracks' displacements at t (the fits are per column), so the chunks concatenate to the whole
    flow while holding ``n`` frames instead of F; :func:`decode_points` is ``frames(0, F)``.
    """

    def __init__(self, points: torch.Tensor, disp: torch.Tensor, size: tuple[int, int],
                 region_masks: torch.Tensor | np.ndarray | None = None, region_motion: str = "smooth",
                 feather: float = 0.02, radius: float = 0.1, merge_iou: float = 0.8, stiffness: float = 0.3):
        if region_motion not in ("smooth", "rigid"):
            raise ValueError(f"region_motion must be 'smooth' or 'rigid'; got {region_motion!r}")
        h, w = int(size[0]), int(size[1])
        if h < 1 or w < 1:
            raise ValueError(f"size must be (H, W) of at least 1x1 pixels; got {size}")
        points = torch.as_tensor(points).detach().cpu().to(torch.float64).reshape(-1, 2)
        disp = torch.as_tensor(disp).detach().cpu().to(torch.float64)
        if disp.ndim != 3 or disp.shape[0] != points.shape[0] or disp.shape[2] != 2:
            raise ValueError(f"disp must be [K, F, 2] for {points.shape[0]} points; got {tuple(disp.shape)}")
        if not (bool(torch.isfinite(points).all()) and bool(torch.isfinite(disp).all())):
            raise ValueError("decode_points: the track positions or displacements contain NaN or inf; every "
                             "coordinate must be finite.")
        for name, v in (("feather", feather), ("radius", radius), ("stiffness", stiffness)):
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0; got {v}")
        if radius == 0:
            raise ValueError("radius must be > 0 (the background tracks' reach, a fraction of the frame size)")
        k, f = disp.shape[0], disp.shape[1]
        self.shape = (f, 2, h, w)
        # Region terms (box, its weight, the field of a frame range) and the background: all per-video, frame-free.
        self._terms: list[tuple] = []
        self._background = None
        if k == 0:
            return
        flat_disp = disp.reshape(k, f * 2)

        regions: list[np.ndarray] = []
        if region_masks is not None:
            rm = (region_masks.detach().cpu().numpy() if isinstance(region_masks, torch.Tensor)
                  else np.asarray(region_masks))
            regions = _merge_regions(rm.astype(np.float32).reshape(-1, h, w), merge_iou)

        px = points[:, 0].floor().long().clamp(0, w - 1).numpy()
        py = points[:, 1].floor().long().clamp(0, h - 1).numpy()
        owner = np.full(k, -1)
        if regions:
            areas = np.array([np.count_nonzero(r > 0.5) for r in regions])
            inside = np.stack([r[py, px] > 0.5 for r in regions])  # [M, K]
            for j in range(k):
                cand = np.flatnonzero(inside[:, j])
                if len(cand):
                    owner[j] = cand[np.argmin(areas[cand])]

        # Regions are composited from the smallest (most specific: a jaw inside an instrument) to the
        # largest; each takes what the smaller ones left: w_eff = w_m * prod_{smaller j} (1 - w_j).
        remaining = torch.ones(h, w, dtype=torch.float32)
        feather_px = feather * max(h, w)
        for m in (np.argsort(areas, kind="stable") if regions else []):
            wgt = torch.from_numpy(region_weights(regions[m], feather_px))
            sel = np.flatnonzero(owner == m)
            if len(sel):
                rows = np.flatnonzero((wgt > 1e-4).any(1).numpy())
                cols = np.flatnonzero((wgt > 1e-4).any(0).numpy())
                box = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)  # evaluate only where it matters
                idx = torch.from_numpy(sel)
                if region_motion == "rigid":
                    pts, d = points[idx], disp[idx]
                    field = (lambda a, b, pts=pts, d=d, box=box:
                             _rigid_field(pts, d[:, a:b], _grid(*box)))
                else:
                    fit = _smooth_fit(points[idx], flat_disp[idx], stiffness)
                    field = lambda a, b, fit=fit, box=box: _smooth_eval(fit, _grid(*box), slice(2 * a, 2 * b))
                y0, y1, x0, x1 = box
                self._terms.append((box, (wgt * remaining)[y0:y1, x0:x1], field))
            # A region nobody drags still claims its pixels, with zero motion: it stays still.
            remaining *= 1 - wgt
        background = np.flatnonzero(owner == -1)
        if len(background):
            idx = torch.from_numpy(background)
            self._background = (points[idx].float(), flat_disp[idx].float(), radius * max(h, w), remaining)

    def __len__(self) -> int:
        return self.shape[0]

    def frames(self, a: int, b: int) -> torch.Tensor:
        """The flow of frames ``a`` to ``b - 1`` (0 = the flow 0 -> 1): ``[b - a, 2, H, W]`` float32."""
        f, _, h, w = self.shape
        a, b = max(0, a), min(b, f)
        n = max(0, b - a)
        out = torch.zeros(n * 2, h, w, dtype=torch.float32)
        if n == 0:
            return out.view(n, 2, h, w)
        for (y0, y1, x0, x1), box, field in self._terms:
            out[:, y0:y1, x0:x1] += field(a, b).T.to(torch.float32).reshape(n * 2, y1 - y0, x1 - x0) * box
        if self._background is not None:
            pts, flat_disp, sigma, remaining = self._background
            bg = _rbf_background(pts, flat_disp[:, 2 * a:2 * b], _grid(0, h, 0, w, torch.float32), sigma)
            out += remaining * bg.T.reshape(n * 2, h, w)
        return out.view(n, 2, h, w)

    def chunks(self, chunk: int | None = None):
        """Yield the flow ``chunk`` frames at a time (``None``: all at once)."""
        f = self.shape[0]
        step = f if chunk is None else max(1, int(chunk))
        for a in range(0, f, max(step, 1)):
            yield self.frames(a, a + step)


def decode_points(points: torch.Tensor, disp: torch.Tensor, size: tuple[int, int],
                  region_masks: torch.Tensor | np.ndarray | None = None, region_motion: str = "smooth",
                  feather: float = 0.02, radius: float = 0.1, merge_iou: float = 0.8,
                  stiffness: float = 0.3) -> torch.Tensor:
    """Dense flow ``[F, 2, H, W]`` from control points for one video.

    ``points`` [K, 2] frame-0 positions (x, y, continuous pixels: pixel i spans [i, i+1)); ``disp``
    [K, F, 2] displacements from frame 0; ``region_masks`` [M, H, W] or ``None``. The whole flow of
    :class:`PointFlow` (use that to evaluate a few frames at a time).
    """
    plan = PointFlow(points, disp, size, region_masks, region_motion, feather, radius, merge_iou, stiffness)
    return plan.frames(0, plan.shape[0])


def _control_points(sparse: torch.Tensor, where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Control points of one video's sparse flow ``[F, 2, H, W]`` where ``where`` [H, W] is set: pixel centres
    [K, 2] and their displacements [K, F, 2] (float64), in row-major pixel order."""
    ys, xs = where.nonzero(as_tuple=True)
    points = torch.stack([xs, ys], 1).to("cpu", torch.float64) + 0.5
    disp = sparse[:, :, ys, xs].permute(2, 0, 1).to("cpu", torch.float64)  # [K, F, 2]
    return points, disp


class DecodedFlow:
    """A decoded flow ``[B, F, 2, H, W]`` evaluated on demand: ``frames(a, b)`` is ``flow[:, a:b]`` (in ``dtype`` on
    ``device``) computed from the per-video solutions, so a caller holds one chunk of frames at a time."""

    def __init__(self, videos: list[list[tuple[int, PointFlow]]], shape: tuple, dtype: torch.dtype,
                 device: torch.device):
        self.videos, self.shape, self.dtype, self.device = videos, tuple(shape), dtype, device

    def frames(self, a: int, b: int) -> torch.Tensor:
        out = []
        for groups in self.videos:
            parts = [pf.frames(max(a, t0) - t0, min(b, t0 + len(pf)) - t0) for t0, pf in groups
                     if t0 < b and t0 + len(pf) > a]
            out.append(parts[0] if len(parts) == 1 else torch.cat(parts))
        return torch.stack(out).to(device=self.device, dtype=self.dtype)

    def chunks(self, chunk: int | None = None):
        """Yield ``[B, c, 2, H, W]`` chunks of ``chunk`` frames (``None``: all at once)."""
        f = self.shape[1]
        step = max(1, f if chunk is None else int(chunk))
        for a in range(0, f, step):
            yield self.frames(a, a + step)


def refuse_meta(what: str, *tensors) -> None:
    """NumPy / OpenCV / SciPy code needs values: one sentence for ``meta`` tensors. (Inputs on any real device are
    moved to the CPU explicitly, solved there once per video, and the result moved back to the input's device.)"""
    if any(isinstance(x, torch.Tensor) and x.device.type == "meta" for x in tensors):
        raise ValueError(f"{what} computes with NumPy on the CPU and needs values; got tensors on the meta device.")


class AnalyticDecoder(torch.nn.Module):
    """Weight-free dense-flow decoder with the CMP decoder's interface (see module docstring).

    ``decoder(image, sparse_flow, mask, region_masks=None) -> flow [B, T-1, 2, H, W]``.
    """

    def __init__(self, region_motion: str = "smooth", feather: float = 0.02, radius: float = 0.1,
                 merge_iou: float = 0.8, stiffness: float = 0.3):
        super().__init__()
        if region_motion not in ("smooth", "rigid"):
            raise ValueError(f"region_motion must be 'smooth' or 'rigid'; got {region_motion!r}")
        for name, v in (("feather", feather), ("radius", radius), ("merge_iou", merge_iou), ("stiffness", stiffness)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
        if radius == 0:
            raise ValueError("radius must be > 0 (the background tracks' reach, a fraction of the frame size)")
        self.region_motion = region_motion
        self.feather = float(feather)
        self.radius = float(radius)
        self.merge_iou = float(merge_iou)
        self.stiffness = float(stiffness)

    def _options(self):
        return dict(region_motion=self.region_motion, feather=self.feather, radius=self.radius,
                    merge_iou=self.merge_iou, stiffness=self.stiffness)

    @torch.no_grad()
    def forward(self, image: torch.Tensor | None, sparse_flow: torch.Tensor, mask: torch.Tensor,
                region_masks: torch.Tensor | None = None) -> torch.Tensor:
        lazy = self.lazy(image, sparse_flow, mask, region_masks)
        return lazy.frames(0, lazy.shape[1])

    @torch.no_grad()
    def lazy(self, image: torch.Tensor | None, sparse_flow: torch.Tensor, mask: torch.Tensor,
             region_masks: torch.Tensor | None = None) -> "DecodedFlow":
        """What :meth:`forward` returns, solved but not evaluated: a :class:`DecodedFlow` whose ``frames(a, b)``
        gives ``forward(...)[:, a:b]`` holding only those frames."""
        refuse_meta("The analytic decoder", image, sparse_flow, mask, region_masks)
        region_masks = check_decoder_inputs(image, sparse_flow, mask, region_masks)
        b, f, _, h, w = sparse_flow.shape
        present = mask.detach()[:, :, 0] > 0.5  # [B, F, H, W]
        videos = []
        for i in range(b):
            rm = region_masks[i] if region_masks is not None else None
            if bool((present[i] == present[i, :1]).all()):
                groups = [(0, f, present[i, 0])]
            else:
                # A control point missing in some frames: solve those frames separately.
                groups = [(t, t + 1, present[i, t]) for t in range(f)]
            videos.append([(t0, PointFlow(*_control_points(sparse_flow[i, t0:t1], where), (h, w), rm,
                                          **self._options())) for t0, t1, where in groups])
        return DecodedFlow(videos, (b, f, 2, h, w), sparse_flow.dtype, sparse_flow.device)

    @torch.no_grad()
    def lazy_tracks(self, image: torch.Tensor | None, tracks, size: tuple[int, int], regions=None,
                    chunk: int | None = None) -> "DecodedFlow":
        """``tracks_to_flow(self, image, tracks, size, regions)`` (tracks [N, T, 2] at ``size = (W, H)``) as a
        :class:`DecodedFlow`, never holding the rasterised sparse flow of more than ``chunk`` frames: the tracks
        are rasterised ``chunk`` frames at a time (rasterize is per frame) and only their K displacements kept."""
        from .tracks import rasterize

        w, h = size
        t = torch.as_tensor(np.asarray(tracks) if not isinstance(tracks, torch.Tensor) else tracks)
        nf = t.shape[-2] - 1 if t.ndim >= 2 else 0
        step = max(1, nf if chunk is None else int(chunk))
        points, disp, rm = None, [], None
        for a in range(0, max(nf, 1), step):
            frames = [0, *range(a + 1, min(a + step, nf) + 1)]
            sparse, mask = rasterize(t[..., frames, :], (h, w))  # refuses bad tracks in one sentence
            if a == 0:  # forward's checks, once: the later chunks are the same tracks
                refuse_meta("The analytic decoder", image, sparse, mask, regions)
                rm = check_decoder_inputs(image, sparse, mask, regions)
            # rasterize marks every track's pixel in all frames: one set of control points for the video.
            pts, d = _control_points(sparse[0], mask[0, 0, 0] > 0.5)
            points = pts if points is None else points
            disp.append(d)
        plan = PointFlow(points, torch.cat(disp, 1), (h, w), None if rm is None else rm[0], **self._options())
        return DecodedFlow([[(0, plan)]], (1, nf, 2, h, w), torch.float32, torch.device("cpu"))

    @torch.no_grad()
    def decode_tracks(self, tracks: np.ndarray | torch.Tensor, size: tuple[int, int],
                      region_masks: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Tracks ``[N, T, 2]`` at the working resolution, ``size = (H, W)`` -> flow ``[1, T-1, 2, H, W]``."""
        t = torch.as_tensor(np.asarray(tracks) if not isinstance(tracks, torch.Tensor) else tracks,
                            dtype=torch.float64)
        if t.ndim != 3 or t.shape[-1] != 2 or t.shape[1] < 2:
            raise ValueError(f"tracks must be [N, T, 2] with T >= 2; got {tuple(t.shape)}")
        if region_masks is not None and region_masks.ndim == 4:
            region_masks = region_masks[0]
        flow = decode_points(t[:, 0], t[:, 1:] - t[:, :1], size, region_masks, **self._options())
        return flow.unsqueeze(0)
