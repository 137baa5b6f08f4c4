"""Our float64 eigendecomposition Frechet distance against a float64 scipy.linalg.sqrtm reference."""

import numpy as np
import pytest
import scipy.linalg

from surgsora.eval.frechet import feature_stats, frechet_distance, frechet_distance_features


def _reference_fd(x, y):
    # The textbook formula with sqrtm (allowed here as an independent reference only).
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@pytest.mark.parametrize("n1,n2,d", [(300, 280, 24), (64, 70, 64), (40, 35, 96), (12, 9, 64)])
def test_frechet_matches_sqrtm_reference_including_n_below_d(n1, n2, d):
    rng = np.random.default_rng(n1 + d)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)  # correlated features, like network activations
    x = rng.normal(size=(n1, d)) @ mix
    y = (rng.normal(size=(n2, d)) * 1.3 + 0.4) @ mix + 0.1 * rng.normal(size=(n2, d))
    ref = _reference_fd(x, y)
    assert frechet_distance_features(x, y) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(*feature_stats(x), *feature_stats(y)) == pytest.approx(ref, rel=1e-6)


def test_frechet_of_identical_sets_is_zero_and_symmetric():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 20))
    y = rng.normal(size=(30, 20)) + 1.0
    assert frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance_features(x[:10], x[:10]) == pytest.approx(0.0, abs=1e-9)  # N < d route
    assert frechet_distance_features(x, y) == pytest.approx(frechet_distance_features(y, x), rel=1e-10)


def test_frechet_known_answer_for_gaussians():
    # FD(N(0, I), N(m, 4 I)) = |m|^2 + d + 4d - 2 * 2d = |m|^2 + d
    d = 5
    mu2 = np.arange(d, dtype=float)
    assert frechet_distance(np.zeros(d), np.eye(d), mu2, 4 * np.eye(d)) == pytest.approx(mu2 @ mu2 + d)


def test_frechet_is_float64_and_rejects_bad_input():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 8)).astype(np.float32)
    mu, sigma = feature_stats(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance_features(x[:1], x)
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance_features(x, x[:, :4])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance_features(bad, x)
