"""Motion preview (forward warp + hole filling), Middlebury flow colours and the trajectory overlay."""

import numpy as np
import pytest
import torch

from surgsora.motion.flow_viz import TRACK_COLOURS, colour_wheel, draw_tracks, flow_to_rgb
from surgsora.motion.preview import motion_preview


def test_preview_of_uniform_flow_is_the_shifted_image_with_holes_from_the_first_frame():
    torch.manual_seed(0)
    h, w = 20, 24
    image = torch.rand(2, 3, h, w)
    flow = torch.zeros(2, 2, 2, h, w)
    flow[:, 0, 0], flow[:, 0, 1] = 3.0, 2.0  # frame 1: right 3, down 2
    flow[:, 1, 0], flow[:, 1, 1] = -1.0, 0.0  # frame 2: left 1
    video = motion_preview(image, flow)
    assert video.shape == (2, 3, 3, h, w)
    assert torch.equal(video[:, 0], image)
    shifted = image.clone()
    shifted[..., 2:, 3:] = image[..., :-2, :-3]  # the hole (top rows, left columns) keeps the first frame
    assert torch.allclose(video[:, 1], shifted, atol=1e-6)
    left = image.clone()
    left[..., :, :-1] = image[..., :, 1:]
    assert torch.allclose(video[:, 2], left, atol=1e-6)
    # zero flow: every frame is the first frame
    still = motion_preview(image, torch.zeros(2, 4, 2, h, w))
    assert torch.allclose(still, image.unsqueeze(1).expand(-1, 5, -1, -1, -1), atol=1e-6)


def test_preview_half_pixel_flow_blends_neighbours_and_rejects_bad_shapes():
    image = torch.zeros(1, 3, 4, 8)
    image[..., 2] = 1.0  # a bright column at x = 2
    flow = torch.zeros(1, 1, 2, 4, 8)
    flow[:, :, 0] = 0.5
    out = motion_preview(image, flow)[0, 1]
    assert torch.allclose(out[0, 1, 2], torch.tensor(0.5)) and torch.allclose(out[0, 1, 3], torch.tensor(0.5))
    with pytest.raises(ValueError, match="same B, H, W"):
        motion_preview(image, torch.zeros(1, 1, 2, 4, 7))


def test_colour_wheel_and_flow_colours():
    wheel = colour_wheel()
    assert wheel.shape == (55, 3)
    assert torch.allclose(wheel[0], torch.tensor([1.0, 0.0, 0.0]))  # the wheel starts at pure red
    flow = torch.zeros(2, 2, 1, 4)  # [F, 2, H, W]
    flow[0, 0, 0, 1] = 5.0  # +x
    flow[0, 0, 0, 2] = -5.0  # -x
    flow[0, 1, 0, 3] = 2.5  # +y at half the maximum magnitude
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (2, 3, 1, 4) and rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(rgb[0, :, 0, 0], torch.ones(3))  # zero motion is white
    assert torch.allclose(rgb[1], torch.ones(3, 1, 4))  # normalised over all frames: frame 2 is all white
    r, g, b = rgb[0, :, 0, 1]
    assert r > 0.95 and g < 0.05 and b < 0.25  # +x is red
    r, g, b = rgb[0, :, 0, 2]
    assert r < 0.05 and g > 0.5 and b > 0.9  # -x is cyan-blue, the opposite hue
    assert rgb[0, :, 0, 3].min() > 0.3  # half magnitude: paler (closer to white)
    # a fixed max_flow makes colours comparable across calls; beyond it colours darken
    dark = flow_to_rgb(flow, max_flow=2.0)
    assert dark[0, 0, 0, 1] == pytest.approx(0.75, abs=0.01)
    assert flow_to_rgb(torch.zeros(2, 3, 3)).eq(1).all()
    with pytest.raises(ValueError):
        flow_to_rgb(torch.zeros(3, 4, 4))


def test_draw_tracks_marks_start_path_and_arrow_head():
    image = torch.zeros(3, 64, 64)
    tracks = np.zeros((2, 5, 2), np.float32)
    tracks[0, :, 0] = np.linspace(10, 50, 5) + 0.5  # moving right along the centre of row 20
    tracks[0, :, 1] = 20.5
    tracks[1] = [40.5, 50.5]  # a static anchor on pixel (y=50, x=40)
    out = draw_tracks(image, tracks, thickness=2)
    assert out.shape == image.shape and out.dtype == image.dtype
    assert torch.equal(image, torch.zeros(3, 64, 64))  # the input is untouched
    colour = torch.tensor(TRACK_COLOURS[0], dtype=torch.float32) / 255
    assert torch.allclose(out[:, 20, 30], colour, atol=0.02)  # on the path
    assert torch.allclose(out[:, 20, 10], colour, atol=0.02)  # the start dot
    assert torch.allclose(out[:, 22, 10], colour, atol=0.02)  # the start dot is wider than the line
    assert out[1, 22, 30] < 0.4 and out[:, 24, 30].sum() == 0  # the line itself is thin
    assert out[:, 15, 44].sum() > 1 and out[:, 25, 44].sum() > 1  # arrow head wings near the end
    assert out[:, 15, 20].sum() == 0 and out[:, 25, 20].sum() == 0  # no wings along the path
    anchor = torch.tensor(TRACK_COLOURS[1], dtype=torch.float32) / 255
    assert torch.allclose(out[:, 50, 40], anchor, atol=0.02)  # the anchor's centre dot
    assert torch.allclose(out[:, 50, 45], anchor, atol=0.02) and out[0, 50, 43] < 0.4  # its ring
    assert out[:, 0:5, 0:5].sum() == 0  # nothing elsewhere


def test_draw_tracks_keeps_the_image_kind():
    tracks = [np.array([[2.0, 2.0], [12.0, 12.0]])]
    hwc = np.zeros((16, 16, 3), np.uint8)
    out = draw_tracks(hwc, tracks)
    assert out.dtype == np.uint8 and out.shape == hwc.shape and out.sum() > 0
    f = draw_tracks(np.zeros((16, 16, 3), np.float32), tracks)
    assert f.dtype == np.float32 and f.max() <= 1.0
    batch = draw_tracks(torch.zeros(2, 3, 16, 16), np.array(tracks))
    assert batch.shape == (2, 3, 16, 16) and torch.equal(batch[0], batch[1]) and batch.sum() > 0
    comfy = draw_tracks(torch.zeros(16, 16, 3), tracks)  # ComfyUI IMAGE layout of one frame
    assert comfy.shape == (16, 16, 3) and comfy.sum() > 0
    with pytest.raises(ValueError, match="RGB"):
        draw_tracks(np.zeros((16, 16)), tracks)
