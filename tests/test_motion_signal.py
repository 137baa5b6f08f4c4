"""The occlusion-aware motion signal: who is in front, what fills a disocclusion, where the mask is."""

import pytest
import torch

from surgsora.motion.occlusion import backward_warp, dilate, inpaint, motion_disparity, region_disparity
from surgsora.motion.preview import motion_preview, motion_signal
from surgsora.motion.splat import sum_splat

GREY = torch.tensor([0.2, 0.4, 0.6])
RED = torch.tensor([1.0, 0.0, 0.0])
GREEN = torch.tensor([0.0, 1.0, 0.0])


def _scene(h=32, w=40):
    image = GREY.view(3, 1, 1).expand(3, h, w).clone().unsqueeze(0)
    return image


def _box(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w)
    m[y0:y1, x0:x1] = 1
    return m


def _two_squares():
    """A small red square and a larger green one, moved so that they overlap on rows 14..17, x 18..21."""
    h, w = 32, 40
    image = _scene(h, w)
    a = _box(h, w, 14, 18, 4, 8)  # red, 4x4, moves +14 -> x 18..21
    b = _box(h, w, 12, 20, 20, 28)  # green, 8x8, moves -2 -> x 18..25
    image[0, :, a > 0] = RED.view(3, 1)
    image[0, :, b > 0] = GREEN.view(3, 1)
    flow = torch.zeros(1, 1, 2, h, w)
    flow[0, 0, 0][a > 0] = 14.0
    flow[0, 0, 0][b > 0] = -2.0
    return image, flow, torch.stack([a, b]).unsqueeze(0)


def test_of_two_regions_moved_onto_the_same_pixels_the_smaller_one_is_in_front():
    image, flow, regions = _two_squares()
    video, _ = motion_signal(image, flow, regions=regions)
    overlap = video[0, 1, :, 14:18, 18:22]
    assert torch.allclose(overlap, RED.view(3, 1, 1).expand_as(overlap), atol=1e-6)
    # The green square's visible rest is where it moved; its own old right edge (x 26..27) is background.
    assert torch.allclose(video[0, 1, :, 12:14, 18:26], GREEN.view(3, 1, 1).expand(3, 2, 8), atol=1e-6)
    assert torch.allclose(video[0, 1, :, 12:20, 26:28], GREY.view(3, 1, 1).expand(3, 8, 2), atol=1e-6)
    # Without an order (strength 0: average splatting) the colours blend: the order is what decides. At
    # x = 20 red and green land; at x = 19 they also land on the static background pixel there.
    blend, _ = motion_signal(image, flow, regions=regions, strength=0.0)
    assert torch.allclose(blend[0, 1, :, 15, 20], (RED + GREEN) / 2, atol=1e-6)
    assert torch.allclose(blend[0, 1, :, 15, 19], (RED + GREEN + GREY) / 3, atol=1e-6)


def test_depth_decides_over_region_size():
    image, flow, regions = _two_squares()
    depth = torch.full((1, 1, 32, 40), 0.1)
    depth[0, 0][regions[0, 1] > 0] = 0.9  # the larger green square is the nearer one
    depth[0, 0][regions[0, 0] > 0] = 0.4
    video, _ = motion_signal(image, flow, depth=depth, regions=regions)
    overlap = video[0, 1, :, 14:18, 18:22]
    assert torch.allclose(overlap, GREEN.view(3, 1, 1).expand_as(overlap), atol=1e-6)


def _moved_square(h=32, w=40, dx=10.0, background=None):
    image = _scene(h, w) if background is None else background.clone()
    square = _box(h, w, 10, 18, 6, 14)
    image[0, :, square > 0] = RED.view(3, 1)
    flow = torch.zeros(1, 2, 2, h, w)
    flow[0, 0, 0][square > 0] = dx / 2
    flow[0, 1, 0][square > 0] = dx
    return image, flow, square


@pytest.mark.parametrize("fill", ["pushpull", "telea"])
@pytest.mark.parametrize("with_regions", [True, False])
def test_a_moved_square_leaves_a_hole_filled_from_the_background_not_from_the_square(fill, with_regions):
    image, flow, square = _moved_square()
    regions = square[None, None] if with_regions else None
    video, _ = motion_signal(image, flow, regions=regions, fill=fill)
    tol = 3 / 255 if fill == "telea" else 1e-6  # Telea works on 8-bit images (and rounds a little)
    last = video[0, 2]
    assert torch.allclose(last[:, 10:18, 6:14], GREY.view(3, 1, 1).expand(3, 8, 8), atol=tol)  # where it was
    assert torch.allclose(last[:, 10:18, 16:24], RED.view(3, 1, 1).expand(3, 8, 8), atol=1e-6)  # where it is
    half = video[0, 1]  # frame 1: moved by 5, the left 5 columns of the old square are uncovered
    assert torch.allclose(half[:, 10:18, 6:11], GREY.view(3, 1, 1).expand(3, 8, 5), atol=tol)
    # The old preview keeps the square at its starting position (the defect this signal removes).
    old = motion_preview(image, flow)[0, 2]
    assert torch.allclose(old[:, 10:18, 6:14], RED.view(3, 1, 1).expand(3, 8, 8), atol=1e-6)


def test_the_fill_never_uses_the_objects_boundary_pixels_even_when_the_region_mask_is_too_tight():
    """A region mask one pixel short of the object (SAM edges): the removal margin still keeps the red out."""
    h, w = 32, 40
    stripes = _scene(h, w)
    stripes[0, :, ::2] = 0.8  # a textured background: the fill is no longer one exact colour
    image, flow, square = _moved_square(background=stripes)
    tight = _box(h, w, 11, 17, 7, 13)
    video, _ = motion_signal(image, flow, regions=tight[None, None])
    hole = video[0, 2, :, 10:18, 6:14]
    assert hole[0].max() < 0.81 and hole[1].min() > 0.39  # red would be R = 1, G = 0
    assert (hole - 0.5).abs().mean() < 0.2  # between the two stripe values, not the square's colour


def test_a_pan_shifts_the_frame_and_fills_the_entering_edge_from_the_border():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 16, 20)
    flow = torch.zeros(1, 1, 2, 16, 20)
    flow[:, :, 0] = 3.0  # the whole view moves right by 3
    video, mask = motion_signal(image, flow)
    assert torch.allclose(video[0, 1, :, :, 3:], image[0, :, :, :-3], atol=1e-6)
    # Nothing moved against the scene, so the plate is the frame itself, moved by the pan: border repeated.
    assert torch.allclose(video[0, 1, :, :, :3], image[0, :, :, :1].expand(3, 16, 3), atol=1e-6)
    assert mask[0, 1, 0, :, 3:].min() == 1  # a pan moves everything: all of it is anchored


def test_the_mask_covers_each_moved_region_where_it_lands():
    image, flow, square = _moved_square()
    _, mask = motion_signal(image, flow, regions=square[None, None], mask_dilate=2)
    assert mask.shape == (1, 3, 1, 32, 40) and mask.min() >= 0 and mask.max() <= 1
    assert mask[0, 0, 0, 10:18, 6:14].min() == 1  # frame 0: where the square starts
    assert mask[0, 2, 0, 10:18, 16:24].min() == 1  # frame 2: where it is now
    assert mask[0, 2, 0, 8:20, 14:26].min() == 1  # dilated by 2
    assert mask[0, 2, 0, 10:18, 6:12].max() == 0  # not where it was (the hole is the model's to fill)
    assert mask[0, 2, 0, :, 28:].max() == 0 and mask[0, 2, 0, 22:].max() == 0  # nor far away
    assert mask[0, 1, 0, 10:18, 11:19].min() == 1  # frame 1: half-way


def test_the_mask_has_no_gaps_where_motion_stretches_a_region():
    """A square whose right edge moves much farther than its left is spread thin; the mask stays solid."""
    h, w = 24, 48
    image = _scene(h, w)
    square = _box(h, w, 8, 16, 4, 12)
    flow = torch.zeros(1, 1, 2, h, w)
    xs = torch.arange(w).float()
    flow[0, 0, 0] = torch.where(square > 0, 4.0 + (xs - 4) * 1.5, torch.zeros(h, w))  # x 4 -> 8 ... x 11 -> 25.5
    # No regions: the mask is the moving pixels where they land, which stretching leaves 1 px apart.
    landed = sum_splat(square[None, None], flow[:, 0])[0, 0, 10, 8:26]
    assert (landed == 0).sum() >= 5  # x 9, 12, 14, 17, ... receive nothing
    _, mask = motion_signal(image, flow, mask_dilate=1)
    assert mask[0, 1, 0, 8:16, 8:26].min() == 1 and mask[0, 1, 0, :, 28:].max() == 0


def test_batches_match_single_videos_and_inputs_broadcast():
    torch.manual_seed(1)
    image = torch.rand(2, 3, 20, 24)
    flow = torch.randn(2, 3, 2, 20, 24) * 2
    regions = (torch.rand(1, 2, 20, 24) > 0.6).float()
    depth = torch.rand(2, 1, 20, 24)
    video, mask = motion_signal(image, flow, depth=depth, regions=regions)
    assert video.shape == (2, 4, 3, 20, 24) and mask.shape == (2, 4, 1, 20, 24)
    for i in range(2):
        v, m = motion_signal(image[i:i + 1], flow[i:i + 1], depth=depth[i:i + 1], regions=regions)
        assert torch.allclose(video[i:i + 1], v, atol=1e-6) and torch.equal(mask[i:i + 1], m)
    assert torch.equal(video[:, 0], image)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    image, flow, square = _moved_square()
    ref_v, ref_m = motion_signal(image, flow, regions=square[None, None])
    video, mask = motion_signal(image.to(dtype), flow.to(dtype), regions=square[None, None].to(dtype))
    assert video.dtype == dtype and mask.dtype == dtype
    assert torch.allclose(video.float(), ref_v, atol=1e-2) and torch.equal(mask.float(), ref_m)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    image, flow, square = _moved_square()
    depth = torch.rand(1, 1, 32, 40)
    ref_v, ref_m = motion_signal(image, flow, depth=depth, regions=square[None, None])
    video, mask = motion_signal(image.cuda(), flow.cuda(), depth=depth.cuda(), regions=square[None, None].cuda())
    assert video.device.type == "cuda" and mask.device.type == "cuda"
    assert torch.allclose(video.cpu(), ref_v, atol=1e-5) and torch.equal(mask.cpu(), ref_m)


def test_bad_inputs_raise_one_clear_sentence():
    image, flow, square = _moved_square()
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = flow.clone()
        broken[0, 1, 0, 3, 4] = bad
        with pytest.raises(ValueError, match=r"^motion_signal: the flow contains NaN or infinite values"):
            motion_signal(image, broken)
        depth = torch.rand(1, 1, 32, 40)
        depth[0, 0, 5, 5] = bad
        with pytest.raises(ValueError, match=r"^motion_signal: depth contains NaN or infinite values"):
            motion_signal(image, flow, depth=depth)
    with pytest.raises(ValueError, match=r"depth must be \[1, 1, 32, 40\] \(or batch 1\) .* got \(1, 1, 16, 20\)"):
        motion_signal(image, flow, depth=torch.rand(1, 1, 16, 20))
    with pytest.raises(ValueError, match=r"regions must be \[1, M, 32, 40\]"):
        motion_signal(image, flow, regions=square)
    with pytest.raises(ValueError, match="same B, H, W"):
        motion_signal(image, flow[..., :20])
    with pytest.raises(ValueError, match="floating-point"):
        motion_signal((image * 255).to(torch.uint8), flow)
    with pytest.raises(ValueError, match="no frames"):
        motion_signal(image, flow[:, :0])
    with pytest.raises(ValueError, match="fill must be"):
        motion_signal(image, flow, fill="blur")


# ------------------------------------------------------------------------------------- the helpers

def test_region_disparity_puts_the_smaller_region_in_front_of_the_larger_and_both_before_the_background():
    big = _box(10, 10, 0, 8, 0, 8)
    small = _box(10, 10, 2, 5, 2, 5)
    d = region_disparity(torch.stack([small, big]).unsqueeze(0))
    assert d.shape == (1, 1, 10, 10)
    assert d[0, 0, 3, 3] == 1.0 and d[0, 0, 6, 6] == 0.5 and d[0, 0, 9, 9] == 0.0
    assert torch.equal(region_disparity(torch.stack([big, small]).unsqueeze(0)), d)  # order of listing: irrelevant


def test_motion_disparity_is_zero_for_a_pan_and_highest_on_what_moves_against_it():
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0] = 2.0
    assert torch.equal(motion_disparity(flow), torch.zeros(1, 1, 8, 8))
    flow[0, 0, 3, 3] = 6.0
    d = motion_disparity(flow)
    assert d[0, 0, 3, 3] == 1.0 and d[0, 0, 0, 0] == 0.0


@pytest.mark.parametrize("method", ["pushpull", "telea"])
def test_inpaint_keeps_known_pixels_and_fills_the_hole_from_around_it(method):
    h, w = 24, 24
    image = torch.zeros(1, 3, h, w)
    image[:, 0] = 0.25
    image[:, 1] = torch.linspace(0, 1, w)  # a ramp in green
    hole = _box(h, w, 8, 16, 8, 16)[None, None]
    damaged = torch.where(hole > 0, torch.ones_like(image), image)  # white where the hole is
    out = inpaint(damaged, hole, method=method)
    tol = 1 / 255 + 1e-6 if method == "telea" else 0
    assert torch.allclose(out[..., hole[0, 0] == 0], image[..., hole[0, 0] == 0], atol=tol)
    inside = out[0, :, 8:16, 8:16]
    assert torch.allclose(inside[0], torch.full((8, 8), 0.25), atol=tol + 1e-6)  # flat red: exact
    assert inside[2].max() <= tol and inside[1].min() > 0.2 and inside[1].max() < 0.8  # between the ramp's ends
    with pytest.raises(ValueError, match="'pushpull' or 'telea'"):
        inpaint(image, hole, method="navier")


def test_inpaint_with_nothing_known_returns_the_input():
    image = torch.rand(1, 2, 6, 6)
    assert torch.equal(inpaint(image, torch.ones(1, 1, 6, 6)), image)


def test_backward_warp_and_dilate_known_answers():
    image = torch.arange(20.0).view(1, 1, 4, 5)
    flow = torch.zeros(1, 2, 4, 5)
    flow[:, 0] = 1.0
    out = backward_warp(image, flow)
    assert torch.allclose(out[0, 0, :, 1:], image[0, 0, :, :-1]) and torch.allclose(out[0, 0, :, 0], image[0, 0, :, 0])
    dot = torch.zeros(1, 1, 7, 7)
    dot[0, 0, 3, 3] = 1
    assert torch.equal(dilate(dot, 2)[0, 0], _box(7, 7, 1, 6, 1, 6))
    assert torch.equal(dilate(dot, 0), dot)


# ------------------------------------------------------------------ the benchmark's disocclusion figures

def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "trajectory_endovis.py"
    spec = importlib.util.spec_from_file_location("trajectory_endovis", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_disoccluded_pixels_and_fills_on_a_synthetic_instrument():
    """A dark square slides 4 px right per frame over a smooth background; the real frames show the background
    where it was. Disoccluded = the square's trailing columns; only the new signal restores them."""
    import numpy as np

    b = _bench()
    h, w, T = 32, 48, 3
    ys, xs = np.mgrid[0:h, 0:w]
    background = np.stack([0.3 + 0.4 * xs / w, 0.5 + 0.2 * ys / h, np.full((h, w), 0.4)], -1)
    square = np.zeros((h, w), bool)
    square[10:20, 8:18] = True
    frames, gt = [], np.zeros((T - 1, 2, h, w), np.float32)
    for t in range(T):
        f = background.copy()
        f[10:20, 8 + 4 * t:18 + 4 * t] = 0.05
        frames.append(f)
        if t:
            gt[t - 1, 0][square] = 4.0 * t
    real = np.stack(frames).astype(np.float32)
    disocc = b.disoccluded_pixels(square[None], gt)
    expected = np.zeros((T - 1, h, w), bool)
    expected[0, 10:20, 8:12] = True
    expected[1, 10:20, 8:16] = True
    np.testing.assert_array_equal(disocc, expected)
    image = torch.from_numpy(real[0]).permute(2, 0, 1)[None]
    regions = torch.from_numpy(square.astype(np.float32))[None, None]
    fig = b.signal_figures(image, torch.from_numpy(gt)[None], regions, real, disocc)
    assert fig["preview_disocc_psnr"] < 12 < 30 < fig["signal_disocc_psnr"]  # first frame there: the dark square
    assert fig["telea_disocc_psnr"] > fig["preview_disocc_psnr"]
    assert fig["signal_psnr"] > fig["preview_psnr"] and fig["signal_ssim"] > fig["preview_ssim"]
    assert b.pooled_psnr(real, real + 0.1, disocc) == pytest.approx(20.0, abs=1e-4)


# ------------------------------------------------------------------------------------ chunked == whole

def _demo_case(endovis_frame, w=96, h=64, frames=9):
    """The demo frame and demo tracks at a small size, with two regions and a depth map."""
    import cv2

    from surgsora.motion.tracks import parse_track_data, prepare_tracks

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    ts = parse_track_data((root / "demo" / "tracks_endovis.json").read_text())
    tracks = prepare_tracks(ts, canvas_size=ts.canvas, size=(w, h), num_frames=frames)
    small = cv2.resize(endovis_frame, (w, h), interpolation=cv2.INTER_AREA)
    image = torch.from_numpy(small).permute(2, 0, 1).float().div(255).unsqueeze(0)
    regions = torch.stack([_box(h, w, 10, 50, 15, 70), _box(h, w, 20, 35, 25, 45)]).unsqueeze(0)
    depth = torch.linspace(0, 1, w).expand(h, w).reshape(1, 1, h, w).contiguous()
    return image, tracks, regions, depth


def _cat(pieces):
    pieces = list(pieces)
    if isinstance(pieces[0], tuple):
        return tuple(torch.cat(p, 1) for p in zip(*pieces))
    return torch.cat(pieces, 1)


@pytest.mark.parametrize("with_regions, with_depth, fill",
                         [(False, False, "pushpull"), (True, False, "pushpull"), (True, True, "telea")])
def test_the_chunked_motion_signal_is_the_whole_one_bit_for_bit(endovis_frame, with_regions, with_depth, fill):
    from surgsora.motion.analytic_flow import AnalyticDecoder
    from surgsora.motion.preview import motion_preview_chunks, motion_signal_chunks
    from surgsora.motion.tracks import tracks_to_flow

    image, tracks, regions, depth = _demo_case(endovis_frame)
    regions = regions if with_regions else None
    depth = depth if with_depth else None
    flow = tracks_to_flow(AnalyticDecoder(), image, tracks, (96, 64), regions)
    video, mask = motion_signal(image, flow, depth=depth, regions=regions, fill=fill)
    assert video.shape == (1, 9, 3, 64, 96) and mask.shape == (1, 9, 1, 64, 96) and mask.amax() == 1
    for chunk in (1, 3, 8):
        pieces = list(motion_signal_chunks(image, flow, depth, regions, chunk=chunk, fill=fill))
        assert [p[0].shape[1] for p in pieces][0] == 1 + min(chunk, 8)  # frame 0 rides with the first piece
        v, m = _cat(pieces)
        assert torch.equal(v, video) and torch.equal(m, mask)
    assert torch.equal(_cat(motion_preview_chunks(image, flow, 3)), motion_preview(image, flow))
    # From the decoder's lazy flow (solved once, evaluated per chunk): the same up to float32 rounding of the flow.
    lazy = AnalyticDecoder().lazy_tracks(image, tracks, (96, 64), regions, chunk=2)
    v, m = _cat(motion_signal_chunks(image, lazy, depth, regions, chunk=2, fill=fill))
    assert (v - video).abs().max() < 1e-3 and (m != mask).float().mean() < 1e-3


def test_chunked_signal_never_splats_more_than_a_chunk_of_frames(endovis_frame, monkeypatch):
    """The memory bound, structurally: every splat and every flow read of the chunked signal covers at most
    ``chunk`` frames (the working set is that of a chunk, whatever T)."""
    import surgsora.motion.preview as pv
    from surgsora.motion.analytic_flow import AnalyticDecoder, PointFlow

    image, tracks, regions, _ = _demo_case(endovis_frame, frames=13)
    seen = []
    for name in ("softmax_splat", "sum_splat"):
        real = getattr(pv, name)
        monkeypatch.setattr(pv, name, lambda x, f, *a, _real=real, **k: seen.append(f.shape[0]) or _real(x, f, *a, **k))
    real_frames = PointFlow.frames
    monkeypatch.setattr(PointFlow, "frames", lambda self, a, b: seen.append(min(b, len(self)) - a)
                        or real_frames(self, a, b))
    lazy = AnalyticDecoder().lazy_tracks(image, tracks, (96, 64), regions, chunk=3)
    list(pv.motion_signal_chunks(image, lazy, regions=regions, chunk=3))
    assert seen and max(seen) <= 3 and len(seen) == 4 * 2 + 4 * 2  # 4 chunks: two flow reads, two splats each
    assert pv.chunk_frames(720, 1280) == max(1, pv.CHUNK_PIXELS // (1280 * 720))


def test_the_signal_and_preview_nodes_give_the_library_result_when_chunked(endovis_frame, monkeypatch):
    import surgsora.motion.preview as pv
    from nodes.trajectory import SurgSoraMotionPreview, SurgSoraMotionSignal, flow_colours
    from surgsora.motion.analytic_flow import AnalyticDecoder
    from surgsora.motion.flow_viz import flow_to_rgb
    from surgsora.motion.tracks import tracks_to_flow

    image, tracks, regions, _ = _demo_case(endovis_frame)
    flow = tracks_to_flow(AnalyticDecoder(), image, tracks, (96, 64), regions)
    video, mask = motion_signal(image, flow, regions=regions)
    monkeypatch.setattr(pv, "CHUNK_PIXELS", 2 * 96 * 64)  # two frames per chunk
    frame = image.permute(0, 2, 3, 1)
    sig, msk = SurgSoraMotionSignal().build(frame, flow, region_masks=regions[0])
    assert torch.equal(sig, video[0].permute(0, 2, 3, 1)) and torch.equal(msk, mask[0, :, 0])
    (prev,) = SurgSoraMotionPreview().preview(frame, flow, warp="average")
    assert torch.equal(prev, motion_preview(image, flow)[0].permute(0, 2, 3, 1))
    colours = flow_colours(flow)
    assert torch.equal(colours[1:], flow_to_rgb(flow[0]).permute(0, 2, 3, 1)) and bool((colours[0] == 1).all())
