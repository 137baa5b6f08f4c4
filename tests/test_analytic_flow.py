"""Mask-aware analytic flow decoder: known answers, and the real-clip benchmark's metric code."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from surgsora.motion.analytic_flow import AnalyticDecoder, decode_points, region_weights
from surgsora.motion.tracks import rasterize
from surgsora.video_io import read_image

REPO = Path(__file__).resolve().parents[1]
from data_paths import ENDOVIS as DATA


def _track(start, disps):
    """[T, 2] track from a start point and per-frame displacements (frame 0 excluded)."""
    start = np.asarray(start, np.float32)
    return np.concatenate([start[None], start[None] + np.asarray(disps, np.float32)], 0)


def _square(h, w, y0, y1, x0, x1):
    m = torch.zeros(1, 1, h, w)
    m[..., y0:y1, x0:x1] = 1
    return m


def test_single_rigid_track_moves_exactly_its_square_and_background_stays_still():
    h, w, T = 48, 64, 5
    disps = [(1.0, 0.5), (2.0, 1.0), (3.0, -2.0), (4.5, 3.0)]
    tracks = _track((20.5, 20.5), disps)[None]
    sparse, mask = rasterize(tracks, (h, w))
    square = _square(h, w, 10, 30, 12, 28)
    flow = AnalyticDecoder(feather=0.0)(None, sparse, mask, region_masks=square)
    assert flow.shape == (1, T - 1, 2, h, w)
    inside = square[0, 0].bool()
    for t, (dx, dy) in enumerate(disps):
        assert torch.allclose(flow[0, t, 0][inside], torch.tensor(dx), atol=1e-5)
        assert torch.allclose(flow[0, t, 1][inside], torch.tensor(dy), atol=1e-5)
    assert torch.all(flow[0, :, :, ~inside] == 0)

    # with the default feather the flow fades out smoothly and is exactly 0 far from the square
    soft = AnalyticDecoder()(None, sparse, mask, region_masks=square)
    assert torch.allclose(soft[0, :, :, inside], flow[0, :, :, inside], atol=1e-5)
    assert 0 < soft[0, -1, 0, 20, 30] < 4.5  # 2 px right of the square: partly moved
    assert soft[0, -1, 0, 20, 29] > soft[0, -1, 0, 20, 31] > soft[0, -1, 0, 20, 33]
    assert torch.all(soft[0, :, :, :, 50:] == 0) and torch.all(soft[0, :, :, 42:] == 0)


def test_region_without_tracks_and_track_in_region_choose_smallest():
    h, w = 32, 32
    big = _square(h, w, 0, 32, 0, 32)[0, 0]
    small = _square(h, w, 8, 16, 8, 16)[0, 0]
    other = _square(h, w, 20, 30, 20, 30)[0, 0]  # nobody drags it
    regions = torch.stack([big, small, other]).unsqueeze(0)
    tracks = np.stack([_track((10.5, 10.5), [(3.0, 0.0)]), _track((2.5, 28.5), [(0.0, -2.0)])])
    sparse, mask = rasterize(tracks, (h, w))
    flow = AnalyticDecoder(feather=0.0, merge_iou=1.01)(None, sparse, mask, region_masks=regions)[0, 0]
    # the small square follows its own track, the rest of the big region the other track, and the
    # region nobody drags stays still even though it lies inside the big one
    assert torch.allclose(flow[:, 8:16, 8:16], torch.tensor([3.0, 0.0]).view(2, 1, 1), atol=1e-5)
    assert torch.allclose(flow[:, 0, 0], torch.tensor([0.0, -2.0]), atol=1e-5)
    assert torch.allclose(flow[:, 17:19, 0:32], torch.tensor([0.0, -2.0]).view(2, 1, 1), atol=1e-5)
    assert torch.all(flow[:, 20:30, 20:30] == 0)


def test_several_tracks_on_one_region_are_followed_exactly_and_interpolated_smoothly():
    h, w = 64, 64
    region = _square(h, w, 4, 60, 4, 60)
    starts = [(10.5, 10.5), (50.5, 12.5), (30.5, 50.5), (45.5, 45.5)]
    moves = [(2.0, 1.0), (-3.0, 4.0), (5.0, 5.0), (0.0, -2.0)]
    tracks = np.stack([_track(s, [m, (2 * m[0], 2 * m[1])]) for s, m in zip(starts, moves)])
    sparse, mask = rasterize(tracks, (h, w))
    flow = AnalyticDecoder()(None, sparse, mask, region_masks=region)[0]
    for (x, y), (dx, dy) in zip(starts, moves):
        np.testing.assert_allclose(flow[0, :, int(y), int(x)].numpy(), [dx, dy], atol=1e-3)
        np.testing.assert_allclose(flow[1, :, int(y), int(x)].numpy(), [2 * dx, 2 * dy], atol=1e-3)
    inner = flow[:, :, 6:58, 6:58]
    # smooth: neighbouring pixels differ by far less than the tracks differ from each other
    assert inner.diff(dim=-1).abs().max() < 1.5 and inner.diff(dim=-2).abs().max() < 1.5


def test_affine_motion_is_recovered_between_tracks():
    # a pure translation + shear seen by three non-collinear tracks: the field is that affine map.
    h, w = 40, 40
    region = _square(h, w, 0, 40, 0, 40)
    A = np.array([[0.1, 0.0], [0.05, -0.1]])
    starts = np.array([[8.5, 8.5], [32.5, 10.5], [18.5, 32.5]])
    disp = starts @ A.T + [1.0, 2.0]
    tracks = np.stack([_track(s, [d]) for s, d in zip(starts, disp)])
    flow = AnalyticDecoder(stiffness=0.0, feather=0.0)(None, *rasterize(tracks, (h, w)), region_masks=region)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    expected = np.stack([A[0, 0] * xs + A[0, 1] * ys + 1.0, A[1, 0] * xs + A[1, 1] * ys + 2.0])
    np.testing.assert_allclose(flow[0, 0].numpy(), expected, atol=1e-3)


def test_rigid_mode_recovers_a_rotation():
    h, w = 64, 64
    theta = math.radians(10)
    c = np.array([32.0, 32.0])
    R = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    starts = np.array([[20.5, 30.5], [44.5, 30.5], [32.5, 45.5]])
    disp = (starts - c) @ R.T + c - starts
    tracks = np.stack([_track(s, [d]) for s, d in zip(starts, disp)])
    region = _square(h, w, 8, 56, 8, 56)
    flow = AnalyticDecoder(region_motion="rigid", feather=0.0)(None, *rasterize(tracks, (h, w)), region_masks=region)
    y, x = 12, 50  # a pixel far from every track
    p = np.array([x + 0.5, y + 0.5])
    np.testing.assert_allclose(flow[0, 0, :, y, x].numpy(), (p - c) @ R.T + c - p, atol=1e-3)


def test_no_mask_fallback_rbf_follows_tracks_and_stays_still_far_away():
    h, w = 64, 64
    tracks = np.stack([_track((10.5, 10.5), [(4.0, 0.0)]), _track((54.5, 54.5), [(0.0, 0.0)])])
    flow = AnalyticDecoder(radius=0.05)(None, *rasterize(tracks, (h, w)))[0, 0]
    np.testing.assert_allclose(flow[:, 10, 10].numpy(), [4.0, 0.0], atol=1e-3)
    sigma = 0.05 * 64
    assert flow[0, 10, 13] == pytest.approx(4.0 * math.exp(-9 / (2 * sigma ** 2)), rel=1e-3)  # Gaussian falloff
    assert torch.all(flow[:, 54, 54].abs() < 1e-3)  # the static anchor pins its spot
    assert flow[0, 40, 40].abs() < 1e-3  # far from both: still
    assert flow[0, 10, 14] > flow[0, 10, 20] > flow[0, 10, 30]  # fades with distance


def test_sparse_interface_matches_decode_tracks():
    h, w = 32, 48
    tracks = np.stack([_track((8.5, 8.5), [(1.0, 2.0), (2.0, 3.0)]), _track((30.5, 20.5), [(0.0, -1.0), (1.0, -2.0)])])
    regions = torch.stack([_square(h, w, 2, 16, 2, 16)[0, 0], _square(h, w, 14, 30, 24, 40)[0, 0]])[None]
    dec = AnalyticDecoder()
    a = dec(torch.rand(1, 3, h, w), *rasterize(tracks, (h, w)), region_masks=regions)
    b = dec.decode_tracks(tracks, (h, w), region_masks=regions)
    assert torch.allclose(a, b, atol=1e-5)


def test_duplicate_masks_are_merged_into_one_smoothly_interpolated_region():
    h, w = 32, 64
    m1 = _square(h, w, 8, 24, 4, 60)[0, 0]
    m2 = _square(h, w, 8, 24, 5, 60)[0, 0]  # a second SAM mask of the same instrument
    tracks = np.stack([_track((10.5, 16.5), [(0.0, 0.0)]), _track((54.5, 16.5), [(0.0, 6.0)])])
    flow = AnalyticDecoder(feather=0.0)(None, *rasterize(tracks, (h, w)), region_masks=torch.stack([m1, m2])[None])
    mid = flow[0, 0, 1, 16, 32]
    assert 1.0 < mid < 5.0  # between the anchor (0) and the dragged end (6): one region, interpolated


def test_real_instrument_mask_moves_as_one_piece():
    mask = read_image(DATA / "mask_left_instrument_f06.png")[..., 0] > 0
    small = torch.from_numpy(mask.astype(np.float32))[None, None]
    small = torch.nn.functional.interpolate(small, size=(72, 128), mode="area")[0, 0] > 0.5
    ys, xs = np.nonzero(small.numpy())
    i = len(ys) // 2
    tracks = _track((xs[i] + 0.5, ys[i] + 0.5), [(3.0, -1.0)])[None]
    flow = AnalyticDecoder(feather=0.0)(None, *rasterize(tracks, (72, 128)), region_masks=small.float()[None, None])
    assert torch.allclose(flow[0, 0, :, small], torch.tensor([[3.0], [-1.0]]), atol=1e-5)
    assert torch.all(flow[0, 0, :, ~small] == 0)


def test_region_weights_and_bad_inputs():
    m = np.zeros((9, 9), np.float32)
    m[4, 4] = 1
    wgt = region_weights(m, 1.0)
    assert wgt[4, 4] == 1 and wgt[4, 5] == pytest.approx(math.exp(-0.5), rel=1e-3)
    dec = AnalyticDecoder()
    with pytest.raises(ValueError, match="sparse_flow"):
        dec(None, torch.zeros(1, 2, 3, 4, 4), torch.zeros(1, 2, 1, 4, 4))
    with pytest.raises(ValueError, match="region_masks"):
        dec(None, torch.zeros(1, 2, 2, 4, 4), torch.zeros(1, 2, 1, 4, 4), region_masks=torch.zeros(1, 1, 5, 5))
    with pytest.raises(ValueError, match="region_motion"):
        AnalyticDecoder(region_motion="wobbly")
    assert torch.all(decode_points(torch.zeros(0, 2), torch.zeros(0, 3, 2), (4, 4)) == 0)


# ---------------------------------------------------------------------------- benchmark metric code

def _bench():
    spec = importlib.util.spec_from_file_location("trajectory_endovis", REPO / "benchmarks" / "trajectory_endovis.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_metrics_known_answers():
    b = _bench()
    gt = np.zeros((2, 2, 4, 4), np.float32)
    pred = gt.copy()
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    pred[:, 0][:, mask] = 3.0
    pred[:, 1][:, mask] = 4.0  # error 5 px on the 4 masked pixels, 0 elsewhere
    assert b.flow_epe(pred, gt, mask) == pytest.approx(5.0)
    assert b.flow_epe(pred, gt) == pytest.approx(5.0 * 4 / 16)
    a = np.zeros((4, 4, 3))
    assert b.psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01 -> 20 dB
    # nearest-track baseline copies each track's motion to its Voronoi cell
    tracks = np.array([[[0.5, 0.5], [1.5, 0.5]], [[3.5, 3.5], [3.5, 1.5]]])
    nm = b.nearest_track_flow(tracks, (4, 4))
    np.testing.assert_allclose(nm[0, :, 0, 0], [1.0, 0.0])
    np.testing.assert_allclose(nm[0, :, 3, 3], [0.0, -2.0])


def test_benchmark_pipeline_on_a_synthetic_rigid_instrument():
    """A textured square translating on a still background: picked tracks + mask decode it exactly."""
    b = _bench()
    h = w = 48
    T = 4
    mask = np.zeros((h, w), bool)
    mask[10:26, 12:30] = True
    gt = np.zeros((T - 1, 2, h, w), np.float32)
    for t in range(T - 1):
        gt[t, 0][mask] = t + 1.0
        gt[t, 1][mask] = -0.5 * (t + 1)
    rng = np.random.default_rng(0)
    frames = (rng.random((T, h, w, 3)) * 255).astype(np.uint8)
    res = b.evaluate(frames, gt, mask[None], tracks_per_region=3, repeats=1)
    assert res["epe_mask"] < 1e-4 and res["epe_mask_zero"] == pytest.approx(np.hypot(1, 0.5) * 2)
    assert res["epe_all"] < 0.2 < res["epe_all_nomask"]
    assert res["num_tracks"] == 3


# ------------------------------------------------------------------------------------ chunked == whole

def _chunk_scene(frames=9, w=80, h=48):
    rng = np.random.default_rng(3)
    tracks = np.zeros((12, frames, 2), np.float32)
    tracks[:, 0] = rng.uniform(2, [w - 2, h - 2], (12, 2))
    tracks[:, 1:] = tracks[:, :1] + np.cumsum(rng.normal(0, 2, (12, frames - 1, 2)), 1)
    tracks[:3, 1:] = tracks[:3, :1]  # static anchors
    regions = torch.cat([_square(h, w, 5, 30, 5, 45), _square(h, w, 10, 20, 10, 25)], 1)
    return tracks, regions, (w, h)


@pytest.mark.parametrize("motion", ["smooth", "rigid"])
@pytest.mark.parametrize("with_regions", [False, True])
def test_the_decoder_solved_once_and_evaluated_per_chunk_gives_the_whole_flow(motion, with_regions):
    from surgsora.motion.tracks import tracks_to_flow

    tracks, regions, (w, h) = _chunk_scene()
    regions = regions if with_regions else None
    image = torch.rand(1, 3, h, w)
    dec = AnalyticDecoder(region_motion=motion)
    whole = tracks_to_flow(dec, image, tracks, (w, h), regions)
    # Rasterised a few frames at a time, solved once: the whole flow bit for bit (today's output).
    lazy = dec.lazy_tracks(image, tracks, (w, h), regions, chunk=3)
    assert lazy.shape == tuple(whole.shape) and torch.equal(lazy.frames(0, 8), whole)
    sparse, mask = rasterize(tracks, (h, w))
    assert torch.equal(dec.lazy(image, sparse, mask, regions).frames(0, 8), whole)
    # Evaluated per chunk: frame t uses only the tracks at t, so the chunks are the whole flow up to float32
    # rounding of the matrix products (BLAS may sum a product of another width in another order).
    scale = float(whole.abs().max())
    assert (lazy.frames(2, 7) - whole[:, 2:7]).abs().max() <= 1e-6 * scale
    for chunk in (1, 3):
        pieces = list(lazy.chunks(chunk))
        assert [p.shape[1] for p in pieces] == [chunk] * (8 // chunk) + ([8 % chunk] if 8 % chunk else [])
        assert (torch.cat(pieces, 1) - whole).abs().max() <= 1e-6 * scale


def test_a_control_point_missing_in_some_frames_is_chunked_per_frame_too():
    tracks, regions, (w, h) = _chunk_scene(frames=5)
    sparse, mask = rasterize(tracks, (h, w))
    mask[0, 1, 0] = 0  # frame 2 without its control points: solved on its own
    sparse[0, 1] = 0
    dec = AnalyticDecoder()
    whole = dec(None, sparse, mask, regions)
    lazy = dec.lazy(None, sparse, mask, regions)
    assert torch.equal(lazy.frames(0, 4), whole)
    assert (torch.cat(list(lazy.chunks(3)), 1) - whole).abs().max() <= 1e-6 * float(whole.abs().max())
