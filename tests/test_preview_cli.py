"""``python -m surgsora preview`` with the occlusion-aware motion signal (default) and the old average warp."""

from __future__ import annotations

import json

import cv2
import numpy as np

from surgsora.cli import main
from surgsora.video_io import read_video


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def _red_box_scene(tmp_path):
    """A grey 256x144 frame with a red 32x32 box at x 40..71, y 56..87, its mask, and a track moving it 48 px right."""
    frame = np.full((144, 256, 3), (150, 120, 90), np.uint8)  # RGB
    frame[56:88, 40:72] = (230, 20, 20)
    mask = np.zeros((144, 256), np.uint8)
    mask[56:88, 40:72] = 255
    cv2.imwrite(str(tmp_path / "frame.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "box.png"), mask)
    tracks = json.dumps({"width": 256, "height": 144, "tracks": [[[56.5, 72.5], [104.5, 72.5]]]})
    return tmp_path / "frame.png", tmp_path / "box.png", tracks


def _reddish(pixels: np.ndarray) -> int:
    return int((np.abs(pixels - np.array([230, 20, 20])) < 40).all(-1).sum())


def _preview(tmp_path, capsys, *extra):
    frame, box, tracks = _red_box_scene(tmp_path)
    out = tmp_path / "preview.mp4"
    assert main(["preview", "--image", str(frame), "--tracks", tracks, "--frames", "5", "--size", "256x144",
                 "--masks", str(box), "--out", str(out), *extra]) == 0
    return read_video(out).astype(np.float32), _last_json(capsys.readouterr().out)


def test_preview_moves_the_box_away_and_shows_the_background_where_it_was(tmp_path, capsys):
    video, result = _preview(tmp_path, capsys)
    assert result["warp"] == "occlusion" and video.shape == (5, 144, 256, 3)
    grey, red = np.array([150, 120, 90]), np.array([230, 20, 20])
    last = video[4]
    assert np.abs(last[60:84, 44:68] - grey).mean() < 8  # where the box was: background (mp4 aside)
    assert _reddish(last[60:84, 44:68]) == 0
    assert np.abs(last[60:84, 92:116] - red).mean() < 12  # where it is now
    mask = read_video(result["mask_video"]).astype(np.float32)[..., 0] / 255
    assert mask.shape == (5, 144, 256)
    assert mask[4, 58:86, 90:118].min() > 0.8 and mask[4, :, 140:].max() < 0.2 and mask[4, :40].max() < 0.2
    assert mask[0, 58:86, 42:70].min() > 0.8  # frame 0: where the box starts


def test_preview_average_warp_keeps_the_old_behaviour_for_comparison(tmp_path, capsys):
    video, result = _preview(tmp_path, capsys, "--warp", "average")
    assert result["warp"] == "average" and result["mask_video"] is None
    assert not (tmp_path / "preview_mask.mp4").exists()
    # The box also stays where it started (in streaks: the decoder drags the grey around it along too).
    assert _reddish(video[4, 60:84, 44:68]) > 0.25 * 24 * 24


def test_preview_depth_image_decides_who_passes_in_front(tmp_path, capsys):
    """A small red box driven onto a larger anchored green box: in front by region size, behind with --depth."""
    frame = np.full((144, 256, 3), (150, 120, 90), np.uint8)
    frame[60:84, 30:54] = (230, 20, 20)
    frame[52:92, 100:140] = (20, 200, 40)
    red, green = np.zeros((144, 256), np.uint8), np.zeros((144, 256), np.uint8)
    red[60:84, 30:54] = 255
    green[52:92, 100:140] = 255
    depth = np.full((144, 256), 60, np.uint8)
    depth[52:92, 100:140] = 220  # green is nearer
    for name, img in (("red.png", red), ("green.png", green), ("depth.png", depth)):
        cv2.imwrite(str(tmp_path / name), img)
    cv2.imwrite(str(tmp_path / "frame.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    tracks = json.dumps({"width": 256, "height": 144, "tracks": [[[42.5, 72.5], [122.5, 72.5]], [[120.5, 72.5]]]})
    common = ["preview", "--image", str(tmp_path / "frame.png"), "--tracks", tracks, "--frames", "3", "--size",
              "256x144", "--masks", str(tmp_path / "red.png"), str(tmp_path / "green.png")]
    window = (slice(66, 78), slice(116, 128))  # inside the overlap at the last frame
    assert main([*common, "--out", str(tmp_path / "a.mp4")]) == 0
    assert _reddish(read_video(tmp_path / "a.mp4").astype(np.float32)[2][window]) == 12 * 12
    assert main([*common, "--depth", str(tmp_path / "depth.png"), "--out", str(tmp_path / "b.mp4")]) == 0
    last = read_video(tmp_path / "b.mp4").astype(np.float32)[2][window]
    assert np.abs(last - np.array([20, 200, 40])).mean() < 12
    capsys.readouterr()


def test_the_streamed_preview_writes_what_the_whole_one_does(tmp_path, capsys, monkeypatch):
    """The demo frame and tracks, one chunk (today's whole-video computation) against one frame per chunk."""
    import surgsora.motion.preview as pv
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "demo"

    def run(name: str, budget: int):
        monkeypatch.setattr(pv, "CHUNK_PIXELS", budget)
        out = tmp_path / f"{name}.mp4"
        assert main(["preview", "--image", str(demo / "surgsora_endovis_frame6.png"), "--tracks",
                     str(demo / "tracks_endovis.json"), "--frames", "9", "--size", "128x72", "--out", str(out),
                     "--save-flow", str(tmp_path / f"{name}.npy")]) == 0
        result = _last_json(capsys.readouterr().out)
        videos = [read_video(out), read_video(tmp_path / f"{name}_mask.mp4"), read_video(tmp_path / f"{name}_flow.mp4")]
        return result, videos, np.load(tmp_path / f"{name}.npy")

    whole, (video, mask, colours), flow = run("whole", 1 << 30)
    streamed, (video_s, mask_s, colours_s), flow_s = run("streamed", 128 * 72)
    assert whole["frames"] == streamed["frames"] == 9 and flow.shape == (8, 2, 72, 128)
    # The flow is evaluated per chunk (float32 rounding of the decoder's products), everything else per frame.
    assert np.abs(flow_s - flow).max() <= 1e-6 * np.abs(flow).max()
    assert abs(streamed["max_flow_px"] - whole["max_flow_px"]) <= 1e-6 * whole["max_flow_px"]
    assert np.array_equal(mask_s, mask)
    for a, b in ((video_s, video), (colours_s, colours)):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 2 and (diff > 0).mean() < 1e-3


def test_the_memory_estimate_of_the_streamed_preview_does_not_grow_with_frames_x_pixels():
    from surgsora.cli import BASE_BYTES, BYTES_PER_PIXEL_FRAME, estimate_memory

    # Measured (benchmarks/trajectory_memory.py --sizes): ~1.4 GB at 25x512x288, ~1.8 GB at 81x1280x720 (16 GB
    # before streaming).
    small, wan720 = estimate_memory((512, 288), 25, streamed=True), estimate_memory((1280, 720), 81, streamed=True)
    assert wan720 < 3 * 2**30 and wan720 < 1.5 * small
    assert estimate_memory((1280, 720), 161, streamed=True) - wan720 == 80 * 1280 * 720  # the 1-byte mask frames
    # generate still holds whole videos: its estimate is unchanged.
    assert estimate_memory((1280, 720), 81) == BASE_BYTES + BYTES_PER_PIXEL_FRAME * 1280 * 720 * 81
