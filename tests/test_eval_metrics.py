"""PSNR / SSIM against scikit-image, flow agreement with known answers, IS, frame consistency, bootstrap."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from surgsora.eval import metrics as M
from surgsora.motion.optical_flow import estimate_flow
from surgsora.video_io import read_video

from data_paths import CLIP


def _sk_ssim(a, b):
    # The standard convention: Gaussian 11x11 window, sigma 1.5, K1 0.01, K2 0.03, population covariance.
    return structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255)


@pytest.fixture(scope="module")
def real_frames():
    frames = read_video(CLIP, start=0, count=8)
    # Half resolution keeps the test fast while staying real surgical content.
    return np.stack([cv2.resize(f, (480, 270), interpolation=cv2.INTER_AREA) for f in frames])


def test_ssim_psnr_match_scikit_image_on_random_frames():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 37, 52, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    ours_ssim, ours_psnr = M.ssim(a, b), M.psnr(a, b)
    for i in range(3):
        assert ours_ssim[i] == pytest.approx(_sk_ssim(a[i], b[i]), abs=1e-12)
        assert ours_psnr[i] == pytest.approx(peak_signal_noise_ratio(a[i], b[i], data_range=255), abs=1e-10)


def test_ssim_psnr_match_scikit_image_on_real_frames(real_frames):
    a, b = real_frames[:4], real_frames[4:8]  # frames 0-3 against 4-7 of the real clip: real motion
    ours_ssim, ours_psnr = M.ssim(a, b), M.psnr(a, b)
    ref_ssim = [_sk_ssim(a[i], b[i]) for i in range(4)]
    ref_psnr = [peak_signal_noise_ratio(a[i], b[i], data_range=255) for i in range(4)]
    np.testing.assert_allclose(ours_ssim, ref_ssim, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours_psnr, ref_psnr, rtol=0, atol=1e-9)
    assert 0.3 < min(ours_ssim) < max(ours_ssim) < 1.0  # real frames differ but are alike


def test_identical_frames_give_ssim_one_and_infinite_or_capped_psnr(real_frames):
    a = real_frames[:2]
    np.testing.assert_allclose(M.ssim(a, a), 1.0, atol=1e-12)
    assert np.isinf(M.psnr(a, a)).all()
    np.testing.assert_array_equal(M.psnr(a, a, cap=M.PSNR_CAP_DB), [100.0, 100.0])
    one_off = a.copy()
    one_off[0, 0, 0, 0] ^= 1  # MSE = 1 / (H W 3): finite (104 dB here), but above the cap
    raw = M.psnr(a, one_off)
    assert raw[0] == pytest.approx(10 * np.log10(255.0 ** 2 * a[0].size), rel=1e-12) and np.isinf(raw[1])
    np.testing.assert_array_equal(M.psnr(a, one_off, cap=100.0), [100.0, 100.0])
    assert M.psnr(a, one_off, cap=110.0)[0] == raw[0]


def test_ssim_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        M.ssim(np.zeros((2, 20, 20, 3), np.uint8), np.zeros((2, 20, 21, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 11x11"):
        M.ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))


def test_flow_errors_known_answers():
    h, w = 20, 30
    ref = np.zeros((2, 2, h, w), np.float32)
    ref[:, 0, :, : w // 2] = 50.0   # 5% of 50 = 2.5 px < EPE 5: outliers
    ref[:, 0, :, w // 2:] = 200.0   # 5% of 200 = 10 px > EPE 5: inliers
    est = ref.copy()
    est[:, 0] += 3.0
    est[:, 1] += 4.0                # EPE exactly 5 px everywhere
    err = M.flow_errors(est, ref)
    assert err["fl_epe"] == pytest.approx(5.0)
    assert err["fl_all"] == pytest.approx(50.0)
    np.testing.assert_allclose(err["per_step_epe"], [5.0, 5.0])
    assert err["epe"].shape == (2, h, w)
    # EPE of exactly 3 px is not an outlier (strictly greater), 3.5 px on a zero reference is.
    assert M.flow_errors(ref + np.array([3.0, 0.0], np.float32)[None, :, None, None], ref)["fl_all"] == 0.0
    zero = np.zeros((1, 2, 4, 4), np.float32)
    assert M.flow_errors(zero + 3.5, zero)["fl_all"] == pytest.approx(100.0)
    assert M.flow_errors(ref, ref)["fl_epe"] == 0.0
    with pytest.raises(ValueError, match="one shape"):
        M.flow_errors(ref, ref[:1])


def _known_flow(t: int, h: int, w: int) -> np.ndarray:
    """A smooth flow 0 -> t: a drift plus a gentle sinusoidal shear, in pixels."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    fx = 1.6 * t + 1.2 * t * np.sin(2 * np.pi * ys / h)
    fy = -0.9 * t + 0.8 * t * np.cos(2 * np.pi * xs / w)
    return np.stack([fx, fy]).astype(np.float32)


def _warp_forward(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Frame t with every pixel p of ``frame`` moved to p + flow(p) (inverse found by fixed-point iteration)."""
    h, w = frame.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    qx, qy = xs.copy(), ys.copy()
    for _ in range(6):  # q = p - F(q)
        fx = cv2.remap(flow[0], qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        fy = cv2.remap(flow[1], qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        qx, qy = xs - fx, ys - fy
    return cv2.remap(frame, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def test_flow_agreement_on_a_real_frame_warped_by_a_known_flow(real_frames):
    frame = real_frames[0][:, 60:420]  # 270 x 360 of real tissue and instruments
    h, w = frame.shape[:2]
    flows = np.stack([_known_flow(t, h, w) for t in range(1, 6)])
    video = np.stack([frame] + [_warp_forward(frame, f) for f in flows])
    est = estimate_flow(video, method="dis")
    inner = (slice(None), slice(None), slice(24, h - 24), slice(24, w - 24))  # content leaving the frame excluded
    good = M.flow_errors(est[inner], flows[inner])
    assert good["fl_epe"] < 1.0 and good["fl_all"] < 5.0
    wrong = _known_flow(1, h, w)[None] * np.array([-1.0, 1.0], np.float32)[None, :, None, None] * \
        np.arange(1, 6, dtype=np.float32)[:, None, None, None]  # mirrored horizontal motion
    bad = M.flow_errors(est[inner], wrong[inner])
    assert bad["fl_epe"] > 4.0 and bad["fl_all"] > 50.0


def test_inception_score_known_answers():
    n = 8
    confident = np.full((n, 1008), -30.0)
    confident[np.arange(n), np.arange(n)] = 30.0   # each sample sure of its own class
    mean, std = M.inception_score(confident, splits=1)
    assert mean == pytest.approx(n, rel=1e-6) and std == 0.0
    same = np.zeros((n, 1008))
    same[:, 5] = 30.0                              # all samples sure of one class
    assert M.inception_score(same, splits=2)[0] == pytest.approx(1.0, abs=1e-9)
    uniform = np.zeros((n, 1008))
    assert M.inception_score(uniform, splits=4) == pytest.approx((1.0, 0.0), abs=1e-12)
    # 2 splits of 4 distinct confident samples each: 4 per split
    assert M.inception_score(confident, splits=2) == pytest.approx((4.0, 0.0), rel=1e-6)
    # extreme logits (probabilities underflowing to exactly 0) stay finite
    extreme = np.where(confident > 0, 3000.0, -3000.0)
    assert M.inception_score(extreme, splits=1)[0] == pytest.approx(n, rel=1e-9)


def test_frame_consistency_known_answers():
    assert M.frame_consistency(np.ones((4, 8))) == pytest.approx(1.0)
    alternating = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # orthogonal neighbours
    assert M.frame_consistency(alternating) == pytest.approx(0.0)
    assert M.frame_consistency(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        M.frame_consistency(np.ones((1, 8)))


def test_bootstrap_ci_brackets_the_mean_and_is_reproducible():
    rng = np.random.default_rng(1)
    values = rng.normal(10.0, 1.0, 200)
    ci = M.bootstrap_ci(lambda v: float(np.mean(v)), [values], n_boot=300, seed=3)
    assert ci[0] < values.mean() < ci[1] and ci[1] - ci[0] < 0.5
    assert ci == M.bootstrap_ci(lambda v: float(np.mean(v)), [values], n_boot=300, seed=3)
    assert M.bootstrap_ci(lambda v: 0.0, [values], n_boot=0) is None
