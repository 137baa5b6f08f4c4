"""Frechet distance between two Gaussians fitted to feature sets (FID, FVD, CD-FVD), in float64.

``FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``.

The matrix square root is never formed with ``scipy.linalg.sqrtm`` (a general, non-symmetric Schur
method: slow, deprecated options, and complex or NaN output for the singular covariances that small
sample counts produce). Instead the trace term is computed from *symmetric* eigendecompositions:

- from covariances: ``tr((S1 S2)^(1/2)) = sum sqrt(eig(A S2 A))`` with ``A = S1^(1/2)`` taken from
  ``eigh(S1)``. ``S1 S2`` and ``A S2 A`` are similar (they share their non-zero eigenvalues), and
  ``A S2 A`` is symmetric positive semi-definite, so ``eigvalsh`` is exact and stable;
- from features, when there are fewer samples than dimensions (N < d): with centred feature matrices
  ``X`` (n1 x d) and ``Y`` (n2 x d), ``S1 S2`` has the same non-zero eigenvalues as
  ``X Y^T Y X^T / ((n1-1)(n2-1))``, an n1 x n1 symmetric matrix, so the trace term is the sum of the
  singular values of ``X Y^T`` divided by ``sqrt((n1-1)(n2-1))``. This costs O(n^2 d) instead of O(d^3).

Tiny negative eigenvalues from rounding are clipped to 0. Covariances are unbiased (divided by N - 1),
as in pytorch-fid, torchmetrics and cd-fvd.
"""

from __future__ import annotations

import numpy as np

__all__ = ["feature_stats", "frechet_distance", "frechet_distance_features"]


def _features(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} features must be [N, d]; got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"a Frechet distance needs at least 2 samples per set; {name} has {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} features contain NaN or inf")
    return x


def feature_stats(x) -> tuple[np.ndarray, np.ndarray]:
    """Mean [d] and unbiased covariance [d, d] of features [N, d], in float64."""
    x = _features(x, "the")
    mu = x.mean(0)
    xc = x - mu
    return mu, (xc.T @ xc) / (x.shape[0] - 1)


def _sym(m: np.ndarray) -> np.ndarray:
    return 0.5 * (m + m.T)


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    w, v = np.linalg.eigh(_sym(s1))
    a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S1^(1/2), symmetric PSD
    ev = np.linalg.eigvalsh(_sym(a @ s2 @ a))
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"inconsistent shapes: mu {mu1.shape}, {mu2.shape}; sigma {s1.shape}, {s2.shape}")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * _trace_sqrt_product(s1, s2)
    return max(float(fd), 0.0)


def frechet_distance_features(x, y) -> float:
    """Frechet distance between Gaussians fitted to features ``x`` [n1, d] and ``y`` [n2, d].

    Uses the n x n route when min(n1, n2) < d, the d x d covariance route otherwise.
    """
    x, y = _features(x, "first"), _features(y, "second")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    n1, n2, d = x.shape[0], y.shape[0], x.shape[1]
    if min(n1, n2) >= d:
        return frechet_distance(*feature_stats(x), *feature_stats(y))
    mu1, mu2 = x.mean(0), y.mean(0)
    xc, yc = x - mu1, y - mu2
    scale = np.sqrt((n1 - 1) * (n2 - 1))
    c = (xc @ yc.T) / scale  # n1 x n2; its singular values sum to tr((S1 S2)^(1/2))
    g = c @ c.T if n1 <= n2 else c.T @ c
    ev = np.linalg.eigvalsh(_sym(g))
    tr_sqrt = float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    tr1 = float((xc * xc).sum()) / (n1 - 1)
    tr2 = float((yc * yc).sum()) / (n2 - 1)
    diff = mu1 - mu2
    return max(float(diff @ diff + tr1 + tr2 - 2.0 * tr_sqrt), 0.0)
