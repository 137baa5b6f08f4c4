"""Forward splatting (average, summation, softmax) and flow resizing: known answers, a slow reference, gradients."""

import pytest
import torch

from surgsora.motion.splat import forward_splat, forward_splat_video, resize_flow, softmax_splat, sum_splat


def _uniform(n, h, w, dx, dy, dtype=torch.float32):
    flow = torch.zeros(n, 2, h, w, dtype=dtype)
    flow[:, 0] = dx
    flow[:, 1] = dy
    return flow


def _reference(features, flow, eps=1e-4):
    """Per-pixel Python loop: bilinear weights to the 4 neighbours, average, holes 0."""
    n, c, h, w = features.shape
    acc = torch.zeros(n, c, h, w, dtype=torch.float64)
    wsum = torch.zeros(n, 1, h, w, dtype=torch.float64)
    for b in range(n):
        for y in range(h):
            for x in range(w):
                tx = x + float(flow[b, 0, y, x])
                ty = y + float(flow[b, 1, y, x])
                x0, y0 = int(torch.floor(torch.tensor(tx))), int(torch.floor(torch.tensor(ty)))
                for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                    wt = (1 - abs(tx - xi)) * (1 - abs(ty - yi))
                    if 0 <= xi < w and 0 <= yi < h and wt > 0:
                        acc[b, :, yi, xi] += wt * features[b, :, y, x].double()
                        wsum[b, 0, yi, xi] += wt
    return (acc / wsum.clamp_min(eps)).float()


@pytest.mark.parametrize("dx,dy", [(3, 0), (0, -2), (2, 5), (-4, -1)])
def test_integer_uniform_flow_shifts_exactly(dx, dy):
    torch.manual_seed(0)
    f = torch.randn(2, 5, 16, 20)
    out = forward_splat(f, _uniform(2, 16, 20, dx, dy))
    shifted = torch.roll(f, shifts=(dy, dx), dims=(2, 3))
    ys = slice(max(dy, 0), 16 + min(dy, 0))
    xs = slice(max(dx, 0), 20 + min(dx, 0))
    assert torch.equal(out[:, :, ys, xs], shifted[:, :, ys, xs])
    # The vacated border receives nothing: exactly 0 (no wrap-around).
    hole = torch.ones(16, 20, dtype=torch.bool)
    hole[ys, xs] = False
    assert hole.any()
    assert torch.equal(out[:, :, hole], torch.zeros_like(out[:, :, hole]))


def test_half_pixel_flow_splits_mass_bilinearly():
    f = torch.zeros(1, 1, 4, 6)
    f[0, 0, 1, 2] = 8.0
    flow = _uniform(1, 4, 6, 0.5, 0.0)
    # Unnormalised mass: splat the features together with a ones channel and read both.
    both = forward_splat(torch.cat([f, torch.ones_like(f)], 1), flow)
    assert both[0, 0, 1, 2].item() == pytest.approx(4.0)  # average of 8 (w .5) and the empty left neighbour (w .5)
    assert both[0, 0, 1, 3].item() == pytest.approx(4.0)
    # Weight seen by a pixel: 0.5 from itself + 0.5 from its left neighbour, except the first column.
    mass = forward_splat(torch.ones(1, 1, 4, 6), flow, eps=10.0) * 10.0  # eps>1 exposes the raw weights
    assert torch.allclose(mass[0, 0, :, 0], torch.full((4,), 0.5))
    assert torch.allclose(mass[0, 0, :, 1:], torch.ones(4, 5))


def test_quarter_pixel_weights_match_bilinear():
    f = torch.zeros(1, 1, 5, 5)
    f[0, 0, 2, 2] = 1.0
    flow = _uniform(1, 5, 5, 0.25, 0.75)
    raw = forward_splat(torch.cat([f, torch.ones_like(f)]), torch.cat([flow, flow]), eps=1e3) * 1e3
    delta = raw[0, 0]
    expected = {(2, 2): 0.75 * 0.25, (2, 3): 0.25 * 0.25, (3, 2): 0.75 * 0.75, (3, 3): 0.25 * 0.75}
    for (y, x), v in expected.items():
        assert delta[y, x].item() == pytest.approx(v, abs=1e-6)
    assert delta.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_matches_slow_reference_on_random_input():
    torch.manual_seed(1)
    f = torch.randn(2, 3, 7, 9)
    flow = torch.randn(2, 2, 7, 9) * 2.5
    assert torch.allclose(forward_splat(f, flow), _reference(f, flow), atol=1e-5)


def test_out_of_frame_is_dropped_not_wrapped():
    f = torch.ones(1, 1, 4, 4)
    out = forward_splat(f, _uniform(1, 4, 4, 10.0, 0.0))
    assert torch.equal(out, torch.zeros_like(out))


def test_gradients_flow_to_features_and_flow():
    torch.manual_seed(2)
    f = torch.randn(1, 2, 6, 6, requires_grad=True)
    flow = (torch.randn(1, 2, 6, 6) * 0.7).requires_grad_()
    weights = torch.randn(1, 2, 6, 6)
    (forward_splat(f, flow) * weights).sum().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert flow.grad is not None and flow.grad.abs().sum() > 0
    # Finite-difference check on one flow entry.
    with torch.no_grad():
        e = 1e-3
        fp = flow.clone(); fp[0, 0, 2, 3] += e
        fm = flow.clone(); fm[0, 0, 2, 3] -= e
        num = ((forward_splat(f, fp) - forward_splat(f, fm)) * weights).sum() / (2 * e)
    assert flow.grad[0, 0, 2, 3].item() == pytest.approx(num.item(), rel=2e-2, abs=2e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    f = torch.randn(1, 3, 8, 8).to(dtype)
    out = forward_splat(f, _uniform(1, 8, 8, 1, 1, dtype))
    assert out.dtype == dtype
    assert torch.equal(out[:, :, 1:, 1:], f[:, :, :-1, :-1])


def test_video_warp_keeps_frame_zero_and_batches_frames():
    torch.manual_seed(3)
    f = torch.randn(2, 4, 8, 8)
    flow = torch.stack([_uniform(2, 8, 8, t, 0) for t in range(1, 5)], dim=1)  # [2, 4, 2, 8, 8]
    video = forward_splat_video(f, flow)
    assert video.shape == (2, 5, 4, 8, 8)
    assert torch.equal(video[:, 0], f)
    for t in range(1, 5):
        assert torch.equal(video[:, t, :, :, t:], f[:, :, :, : 8 - t])


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\[N,2,H,W\]"):
        forward_splat(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="resize_flow"):
        forward_splat_video(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 2, 16, 16))


def test_resize_flow_scales_magnitudes():
    flow = torch.zeros(1, 3, 2, 64, 96)
    flow[:, :, 0] = 8.0
    flow[:, :, 1] = -16.0
    small = resize_flow(flow, (8, 12))  # 1/8 in both directions
    assert small.shape == (1, 3, 2, 8, 12)
    assert torch.allclose(small[:, :, 0], torch.full_like(small[:, :, 0], 1.0))
    assert torch.allclose(small[:, :, 1], torch.full_like(small[:, :, 1], -2.0))
    aniso = resize_flow(flow, (32, 24))  # y by 1/2, x by 1/4
    assert torch.allclose(aniso[:, :, 0], torch.full_like(aniso[:, :, 0], 2.0))
    assert torch.allclose(aniso[:, :, 1], torch.full_like(aniso[:, :, 1], -8.0))
    up = resize_flow(small, (64, 96))
    assert torch.allclose(up, flow)


def test_uniform_flow_at_full_resolution_shifts_features_by_scaled_amount():
    """The DFM path: a uniform 16-px flow moves 1/8-scale features by exactly 2 cells."""
    torch.manual_seed(4)
    f = torch.randn(1, 6, 8, 8)
    flow = torch.zeros(1, 1, 2, 64, 64)
    flow[:, :, 0] = 16.0
    video = forward_splat_video(f, resize_flow(flow, (8, 8)))
    assert torch.equal(video[0, 1, :, :, 2:], f[0, :, :, :6])
    assert torch.equal(video[0, 1, :, :, :2], torch.zeros(6, 8, 2))


# ------------------------------------------------------------------------- softmax and summation splatting

def _softmax_reference(features, flow, metric):
    """Per-pixel Python loop of Niklaus & Liu's softmax splatting (float64, no stabilisation needed)."""
    n, c, h, w = features.shape
    num = torch.zeros(n, c, h, w, dtype=torch.float64)
    den = torch.zeros(n, 1, h, w, dtype=torch.float64)
    cov = torch.zeros(n, 1, h, w, dtype=torch.float64)
    for b in range(n):
        for y in range(h):
            for x in range(w):
                tx = x + float(flow[b, 0, y, x])
                ty = y + float(flow[b, 1, y, x])
                x0, y0 = int(torch.floor(torch.tensor(tx))), int(torch.floor(torch.tensor(ty)))
                e = float(torch.exp(metric[b, 0, y, x].double()))
                for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                    wt = (1 - abs(tx - xi)) * (1 - abs(ty - yi))
                    if 0 <= xi < w and 0 <= yi < h and wt > 0:
                        num[b, :, yi, xi] += wt * e * features[b, :, y, x].double()
                        den[b, 0, yi, xi] += wt * e
                        cov[b, 0, yi, xi] += wt
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num)), cov


def test_softmax_splat_matches_slow_reference_and_reports_coverage():
    torch.manual_seed(5)
    f = torch.randn(2, 3, 7, 9)
    flow = torch.randn(2, 2, 7, 9) * 2.5
    metric = torch.randn(2, 1, 7, 9) * 3
    out, cov = softmax_splat(f, flow, metric, return_coverage=True)
    ref, ref_cov = _softmax_reference(f, flow, metric)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    assert torch.allclose(cov.double(), ref_cov, atol=1e-5)
    assert torch.allclose(sum_splat(torch.ones(2, 1, 7, 9), flow).double(), ref_cov, atol=1e-5)


def test_constant_metric_is_average_splatting():
    torch.manual_seed(6)
    f = torch.randn(1, 4, 10, 12)
    flow = torch.randn(1, 2, 10, 12) * 2
    out, cov = softmax_splat(f, flow, torch.full((1, 1, 10, 12), 7.0), return_coverage=True)
    covered = (cov > 1e-3).expand_as(f)  # average splatting fades pixels below its eps; compare the rest
    assert covered.float().mean() > 0.5
    assert torch.allclose(out[covered], forward_splat(f, flow)[covered], atol=1e-5)
    assert torch.equal(out[~(cov > 0).expand_as(f)], torch.zeros_like(out[~(cov > 0).expand_as(f)]))


def test_nearer_source_wins_where_two_land_on_one_pixel():
    """Pixel (2, 1) moves right by 2 onto pixel (2, 3), which stays: a tie decided by the metric alone."""
    f = torch.zeros(1, 1, 5, 6)
    f[0, 0, 2, 1] = 1.0
    f[0, 0, 2, 3] = -1.0
    flow = torch.zeros(1, 2, 5, 6)
    flow[0, 0, 2, 1] = 2.0
    metric = torch.zeros(1, 1, 5, 6)
    metric[0, 0, 2, 1] = 30.0  # the mover is nearer
    assert softmax_splat(f, flow, metric)[0, 0, 2, 3].item() == pytest.approx(1.0, abs=1e-9)
    metric[0, 0, 2, 1] = -30.0  # now it passes behind
    assert softmax_splat(f, flow, metric)[0, 0, 2, 3].item() == pytest.approx(-1.0, abs=1e-9)
    assert softmax_splat(f, flow, torch.zeros_like(metric))[0, 0, 2, 3].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("scale", [1e3, 1e6, 1e30])
def test_huge_metrics_stay_finite_and_do_not_punch_holes(scale):
    """exp(1e3) overflows and exp(-1e3) underflows; the per-target shift keeps every covered pixel."""
    torch.manual_seed(7)
    f = torch.rand(2, 3, 9, 9)
    flow = torch.randn(2, 2, 9, 9) * 1.5
    metric = torch.randn(2, 1, 9, 9) * scale
    out, cov = softmax_splat(f, flow, metric, return_coverage=True)
    assert torch.isfinite(out).all()
    covered = cov[:, 0] > 0
    # Every covered pixel shows one of the source colours (a convex combination stays in [0, 1]) ...
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    # ... and is not left empty even when only far (tiny-metric) sources reach it.
    assert (out.sum(1)[covered] > 0).all()


def test_softmax_splat_gradients_reach_features_flow_and_metric():
    torch.manual_seed(8)
    f = torch.randn(1, 2, 6, 6, requires_grad=True)
    flow = (torch.randn(1, 2, 6, 6) * 0.7).requires_grad_()
    metric = torch.randn(1, 1, 6, 6, requires_grad=True)
    weights = torch.randn(1, 2, 6, 6)
    (softmax_splat(f, flow, metric) * weights).sum().backward()
    for t in (f, flow, metric):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    with torch.no_grad():
        e = 1e-3
        mp = metric.clone(); mp[0, 0, 2, 3] += e
        mm = metric.clone(); mm[0, 0, 2, 3] -= e
        num = ((softmax_splat(f, flow, mp) - softmax_splat(f, flow, mm)) * weights).sum() / (2 * e)
    assert metric.grad[0, 0, 2, 3].item() == pytest.approx(num.item(), rel=2e-2, abs=2e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_softmax_and_sum_splat_dtypes(dtype):
    f = torch.rand(2, 3, 8, 8).to(dtype)
    flow = _uniform(2, 8, 8, 1, 1, dtype)
    metric = torch.rand(2, 1, 8, 8).to(dtype)
    out, cov = softmax_splat(f, flow, metric, return_coverage=True)
    assert out.dtype == dtype and cov.dtype == dtype
    assert torch.equal(out[:, :, 1:, 1:], f[:, :, :-1, :-1])
    assert torch.equal(cov[:, :, 0], torch.zeros_like(cov[:, :, 0]))
    assert sum_splat(f, flow).dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_softmax_splat_on_cuda_matches_cpu():
    torch.manual_seed(9)
    f, flow, metric = torch.randn(3, 4, 16, 20), torch.randn(3, 2, 16, 20) * 3, torch.randn(3, 1, 16, 20) * 40
    cpu = softmax_splat(f, flow, metric)
    gpu = softmax_splat(f.cuda(), flow.cuda(), metric.cuda())
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-4)


def test_softmax_splat_rejects_non_finite_and_misshaped_input():
    f = torch.zeros(1, 3, 4, 4)
    flow = torch.zeros(1, 2, 4, 4)
    metric = torch.zeros(1, 1, 4, 4)
    for bad in (float("nan"), float("inf")):
        broken = flow.clone(); broken[0, 1, 2, 2] = bad
        with pytest.raises(ValueError, match="flow contains NaN or infinite"):
            softmax_splat(f, broken, metric)
        broken = metric.clone(); broken[0, 0, 1, 1] = bad
        with pytest.raises(ValueError, match="metric contains NaN or infinite"):
            softmax_splat(f, flow, broken)
    with pytest.raises(ValueError, match=r"metric must be \[N,1,H,W\] = \[1,1,4,4\]"):
        softmax_splat(f, flow, torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="same N, H, W"):
        sum_splat(f, torch.zeros(1, 2, 4, 5))


def test_softsplat_normalisation_divides_by_weight_plus_1e7():
    """MOFA's published softsplat 'avg' divides by weight + 1e-7; the default clamps tiny weights instead."""
    features = torch.tensor([[[[2.0, 0.0]]]], dtype=torch.float64)  # 1x2 image: only pixel 0 carries a value
    flow = torch.zeros(1, 2, 1, 2, dtype=torch.float64)
    flow[0, 0, 0, 0] = 1 - 1e-6  # pixel 0 lands almost entirely on pixel 1, weight 1e-6 stays on pixel 0
    soft = forward_splat(features, flow, normalize="softsplat")
    clamp = forward_splat(features, flow)
    w = torch.tensor(1e-6, dtype=torch.float64)
    # pixel 0 receives only the 1e-6 share of itself (pixel 1 moves off the image to the right)
    assert torch.allclose(soft[0, 0, 0, 0], 2 * w / (w + 1e-7), rtol=1e-6)
    assert torch.allclose(clamp[0, 0, 0, 0], 2 * w / 1e-4, rtol=1e-6)
    with pytest.raises(ValueError, match="normalize must be"):
        forward_splat(features, flow, normalize="avg")
