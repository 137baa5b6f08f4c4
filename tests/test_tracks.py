"""Trajectory parsing, validation, PCHIP resampling and sparse-flow rasterisation."""

import json

import numpy as np
import pytest
import torch

from surgsora.motion.tracks import (TrackError, TrackSet, parse_track_data, parse_tracks, prepare_tracks, rasterize,
                             resample_track, tracks_to_editor_json)

TWO_TRACKS = [np.array([[10.0, 20.0], [30.0, 25.0], [50.0, 40.0]]), np.array([[5.0, 6.0]])]


def _same(parsed, expected=TWO_TRACKS):
    assert len(parsed) == len(expected)
    for a, b in zip(parsed, expected):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b)


# ------------------------------------------------------------------------------------------ formats

def test_kjnodes_spline_editor_formats():
    dicts = [[{"x": x, "y": y} for x, y in t] for t in TWO_TRACKS]
    _same(parse_tracks(json.dumps(dicts)))  # list of lists of dicts, as JSON
    _same(parse_tracks(dicts))  # already parsed
    _same(parse_tracks([json.dumps(t) for t in dicts]))  # one JSON string per track
    _same(parse_tracks(json.dumps(dicts).replace('"', "'")))  # KJNodes' single-quoted text
    single = parse_tracks(json.dumps(dicts[0]))  # PointsEditor: one flat list of dicts = one track
    _same(single, TWO_TRACKS[:1])
    # extra keys (KJNodes may store more) are ignored
    _same(parse_tracks([[{"x": 5, "y": 6, "id": 3}]]), [np.array([[5.0, 6.0]])])


def test_dragnuwa_plain_list_and_arrays():
    nested = [t.tolist() for t in TWO_TRACKS]
    _same(parse_tracks(nested))  # DragNUWA [[[x, y], ..], ..]
    _same(parse_tracks(json.dumps(nested)))
    _same(parse_tracks(TWO_TRACKS[0].tolist()), TWO_TRACKS[:1])  # plain [[x, y], ..] = one track
    arr = np.stack([TWO_TRACKS[0], TWO_TRACKS[0] + 1])
    _same(parse_tracks(arr), list(arr))  # [N, P, 2] array
    _same(parse_tracks(torch.from_numpy(arr[0])), [arr[0]])  # [P, 2] tensor


def test_comfy_core_tracks_dict_with_visibility():
    T = 5
    path = torch.zeros(T, 2, 2)
    path[:, 0, 0] = torch.arange(T) * 10.0  # track 0 moves right 10 px per frame
    path[:, 0, 1] = 7.0
    path[:, 1] = torch.tensor([3.0, 4.0])
    vis = torch.ones(T, 2, dtype=torch.bool)
    vis[3:, 0] = False  # track 0 disappears after frame 2
    ts = parse_track_data({"track_path": path, "track_visibility": vis})
    np.testing.assert_allclose(ts.tracks[0], [[0, 7], [10, 7], [20, 7]])
    np.testing.assert_allclose(ts.times[0], [0, 0.25, 0.5])
    # Resampled on the clip's own timeline: moves for frames 0..2, then holds its last visible point.
    out = prepare_tracks({"track_path": path, "track_visibility": vis}, canvas_size=(100, 100), num_frames=T)
    np.testing.assert_allclose(out[0, :, 0], [0, 10, 20, 20, 20], atol=1e-5)
    np.testing.assert_allclose(out[1], np.tile([3.0, 4.0], (T, 1)))
    # numpy / list storage, no visibility, and a [T, 1] visibility that broadcasts over tracks
    _same(parse_tracks({"track_path": path.numpy().tolist()}), [path[:, 0].numpy(), path[:, 1].numpy()])
    ts = parse_track_data({"track_path": path.numpy(), "track_visibility": np.ones((T, 1), bool)})
    assert [len(t) for t in ts.tracks] == [T, T]


def test_editor_format_round_trip_with_canvas_and_start_end():
    text = tracks_to_editor_json(TWO_TRACKS, 640, 480, start_end=[(2, 8), None])
    ts = parse_track_data(text)
    assert ts.canvas == (640, 480)
    assert ts.start_end == [(2, 8), None]
    _same(ts.tracks)
    # the editor canvas wins over the canvas_size argument and is rescaled to the working size
    out = prepare_tracks(text, canvas_size=(10, 10), size=(320, 240), num_frames=10)
    np.testing.assert_allclose(out[0, 0], [5.0, 10.0])
    np.testing.assert_allclose(out[0, :3], np.tile([5.0, 10.0], (3, 1)), atol=1e-5)  # holds until frame 2
    np.testing.assert_allclose(out[0, 8:], np.tile([25.0, 20.0], (2, 1)), atol=1e-5)  # stops at frame 8
    # dict points and a single track without the outer list are accepted too
    ts = parse_track_data({"width": 8, "height": 8, "tracks": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]})
    np.testing.assert_allclose(ts.tracks[0], [[1, 2], [3, 4]])


@pytest.mark.parametrize("data, words", [
    ("[[1, 2], [3", "not valid JSON"),
    ("", "empty"),
    ("[]", "empty"),
    ([[], []], "every track is empty"),
    (None, "No trajectories"),
    ([[[1, 2], [float("nan"), 3]]], "non-finite"),
    ([[[1, 2], [np.inf, 3]]], "non-finite"),
    ('[{"x": 1}]', "point"),
    ([[["a", "b"], [1, 2]]], "non-numeric"),
    ({"foo": 1}, "Unrecognised"),
    ({"track_path": np.zeros((3, 2, 3))}, "[T, N, 2]"),
    ({"track_path": np.zeros((3, 2, 2)), "track_visibility": np.ones((4, 2))}, "track_visibility"),
    ({"width": "wide", "height": 4, "tracks": [[[1, 1]]]}, "integers"),
    ({"width": 8, "height": 8, "tracks": [[[1, 1]]], "start_end": [[0, 1], [0, 2]]}, "one [start, end]"),
    (42, "Unrecognised"),
])
def test_malformed_input_raises_one_clear_error(data, words):
    with pytest.raises(TrackError) as info:
        parse_tracks(data)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_empty_tracks_inside_a_list_are_skipped():
    _same(parse_tracks([[], [[5.0, 6.0]]]), [np.array([[5.0, 6.0]])])


@pytest.mark.parametrize("kwargs, words", [
    (dict(data=[[[1, 1], [2, 2]]], canvas_size=(8, 8), num_frames=1), "at least 2"),
    (dict(data=[[[1, 1], [2, 2]]], canvas_size=(8, 8), num_frames="x"), "integer"),
    (dict(data=[[[50, 1], [2, 2]]], canvas_size=(8, 8), num_frames=4), "outside the 8x8 canvas"),
    (dict(data=[[[1, 1], [900, 2]]], canvas_size=(8, 8), num_frames=4), "canvas sizes away"),
    (dict(data=[[[1, 1], [2, 2]]], num_frames=4), "canvas size is unknown"),
    (dict(data=[[[0, 0]]] * 5, canvas_size=(2, 2), num_frames=4), "cannot fit"),
    (dict(data=[[[1, 1], [2, 2]]], canvas_size=(8, 8), num_frames=4, start_end=[(3, 1)]), "start < end"),
    (dict(data=[[[1, 1], [2, 2]]], canvas_size=(8, 8), num_frames=4, start_end=[(0, 9)]), "start < end"),
])
def test_prepare_validation(kwargs, words):
    with pytest.raises(TrackError, match=None) as info:
        prepare_tracks(**kwargs)
    assert words in str(info.value)


def test_start_slightly_outside_is_clamped_and_later_points_may_leave_the_frame():
    out = prepare_tracks([[[-0.3, 4.0], [20.0, 4.0]]], canvas_size=(10, 10), num_frames=3)
    assert out[0, 0, 0] == 0.0  # clamped onto the canvas edge
    assert out[0, -1, 0] == 20.0  # the motion itself is kept, even out of frame


# ---------------------------------------------------------------------------------------- resampling

def test_pchip_is_monotone_without_overshoot_and_not_linear():
    # x rises steeply then flattens; a cubic spline would overshoot past 11, linear would have kinks.
    pts = np.array([[0.0, 0.0], [1.0, 5.0], [10.0, 6.0], [11.0, 20.0]])
    out = resample_track(pts, 50)
    assert np.all(np.diff(out[:, 0]) >= -1e-9) and np.all(np.diff(out[:, 1]) >= -1e-9)
    assert out[:, 0].min() >= 0 and out[:, 0].max() <= 11 + 1e-9
    np.testing.assert_allclose(out[0], pts[0])
    np.testing.assert_allclose(out[-1], pts[-1])
    # passes through every drawn point at its time (uniform parameter: point i at frame i*(T-1)/(P-1))
    out4 = resample_track(pts, 4)
    np.testing.assert_allclose(out4, pts, atol=1e-9)
    u = np.linspace(0, 1, 50)
    linear = np.interp(u, np.linspace(0, 1, 4), pts[:, 0])
    assert np.abs(out[:, 0] - linear).max() > 0.1  # curved, not piecewise linear


def test_static_anchor_and_two_point_constant_speed():
    out = prepare_tracks([[[12.0, 7.0]], [[0.0, 0.0], [9.0, 12.0]]], canvas_size=(16, 16), num_frames=4)
    assert out.shape == (2, 4, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], np.tile([12.0, 7.0], (4, 1)))
    steps = np.diff(out[1], axis=0)
    np.testing.assert_allclose(steps, np.tile([3.0, 4.0], (3, 1)), atol=1e-5)


def test_rescaling_to_working_resolution():
    out = prepare_tracks([[[100.0, 50.0], [200.0, 150.0]]], canvas_size=(400, 200), size=(100, 100), num_frames=2)
    np.testing.assert_allclose(out[0], [[25.0, 25.0], [50.0, 75.0]])


def test_trackset_prepare_matches_function():
    ts = TrackSet(tracks=[np.array([[1.0, 2.0], [3.0, 2.0]])])
    np.testing.assert_array_equal(ts.prepare(size=(8, 8), num_frames=3), prepare_tracks(ts, size=(8, 8), num_frames=3))


# -------------------------------------------------------------------------------------- rasterising

def test_rasterize_positions_values_and_mask():
    tracks = np.zeros((2, 4, 2), np.float32)
    tracks[0] = [[10.7, 5.2], [12.7, 5.2], [14.7, 6.2], [16.7, 8.2]]  # start pixel (y=5, x=10)
    tracks[1] = [[3.0, 9.9], [3.0, 9.9], [3.0, 9.9], [3.0, 9.9]]  # static anchor at (y=9, x=3)
    sparse, mask = rasterize(tracks, (12, 20))
    assert sparse.shape == (1, 3, 2, 12, 20) and mask.shape == (1, 3, 1, 12, 20)
    assert sparse.dtype == torch.float32
    np.testing.assert_allclose(sparse[0, :, :, 5, 10].numpy(), [[2, 0], [4, 1], [6, 3]], atol=1e-6)
    assert torch.all(sparse[0, :, :, 9, 3] == 0)
    assert torch.all(mask[0, :, 0, 5, 10] == 1) and torch.all(mask[0, :, 0, 9, 3] == 1)
    assert mask.sum() == 2 * 3  # nothing else is set
    assert torch.count_nonzero(sparse) == 5  # only the moving track's pixel (its first y step is 0)
    _, mask2 = rasterize(tracks, (12, 20), mask_channels=2)
    assert mask2.shape == (1, 3, 2, 12, 20) and torch.equal(mask2[:, :, 0], mask2[:, :, 1])


def test_rasterize_averages_tracks_on_the_same_pixel_and_batches():
    tracks = np.array([[[2.2, 2.2], [4.2, 2.2]], [[2.8, 2.9], [2.8, 6.9]]], np.float32)
    sparse, mask = rasterize(tracks, (8, 8))
    np.testing.assert_allclose(sparse[0, 0, :, 2, 2].numpy(), [1.0, 2.0], atol=1e-6)  # mean of (2, 0) and (0, 4)
    batch = np.stack([tracks, tracks + 1])
    sb, mb = rasterize(batch, (8, 8))
    assert sb.shape == (2, 1, 2, 8, 8) and mb[1, 0, 0, 3, 3] == 1 and mb[1, 0, 0, 2, 2] == 0


def test_rasterize_rejects_bad_tracks():
    with pytest.raises(TrackError, match="at least 2 frames"):
        rasterize(np.zeros((1, 1, 2)), (4, 4))
    with pytest.raises(TrackError, match="NaN"):
        rasterize(np.full((1, 2, 2), np.nan), (4, 4))
    with pytest.raises(TrackError, match="cannot fit"):
        rasterize(np.zeros((17, 2, 2)), (4, 4))


def test_prepare_then_rasterize_end_to_end():
    text = json.dumps([[{"x": 64, "y": 32}, {"x": 96, "y": 32}]])
    tracks = prepare_tracks(text, canvas_size=(128, 64), size=(32, 16), num_frames=5)
    sparse, mask = rasterize(tracks, (16, 32))
    # start (16, 8) at 32x16; moves 8 px right over 4 frames at constant speed
    np.testing.assert_allclose(sparse[0, :, 0, 8, 16].numpy(), [2, 4, 6, 8], atol=1e-5)
