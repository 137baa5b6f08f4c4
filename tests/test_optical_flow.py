"""Ground-truth flow 0 -> t: DIS chained and composed, composition maths, RAFT from a local file."""

import numpy as np
import pytest
import torch

from surgsora.motion.optical_flow import compose_flows, estimate_flow


def _textured(h=96, w=128, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random((h // 4, w // 4, 3))
    import cv2

    return (cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)


def test_chained_dis_recovers_an_accumulating_shift():
    img = _textured(seed=1)
    # The scene slides 2 px right per frame: flow 0 -> t is (2t, 0).
    frames = np.stack([np.roll(img, 2 * t, axis=1) for t in range(5)])
    flow = estimate_flow(frames)
    assert flow.shape == (4, 2, 96, 128) and flow.dtype == np.float32
    inner = (slice(None), slice(16, -16), slice(24, -24))
    for t in range(1, 5):
        assert np.median(flow[t - 1, 0][inner[1:]]) == pytest.approx(2 * t, abs=0.3)
        assert np.median(np.abs(flow[t - 1, 1][inner[1:]])) < 0.3


def test_compose_flows_adds_the_step_flow_at_the_moved_position():
    f0t = np.zeros((2, 8, 8), np.float32)
    f0t[0] = 2.0  # everything moved 2 px right
    step = np.zeros((2, 8, 8), np.float32)
    step[1, :, 5] = 1.0  # pixels now in column 5 move 1 px down
    out = compose_flows(f0t, step)
    assert np.allclose(out[0], 2.0)
    assert np.allclose(out[1, :, 3], 1.0) and np.allclose(np.delete(out[1], 3, axis=1), 0.0)


def test_raft_from_a_local_weights_file(tmp_path):
    from torchvision.models.optical_flow import raft_large

    torch.manual_seed(0)
    path = tmp_path / "raft_large_C_T_SKHT_V2-ff5fadd5.pth"
    torch.save(raft_large(weights=None).state_dict(), path)
    frames = np.stack([_textured(60, 90, seed=s) for s in range(3)])  # smaller than RAFT's 128 px minimum
    flow = estimate_flow(frames, method="raft", raft_weights=path)
    assert flow.shape == (2, 2, 60, 90) and np.isfinite(flow).all()
    with pytest.raises(ValueError, match="raft_weights"):
        estimate_flow(frames, method="raft")
    with pytest.raises(ValueError, match="at least two frames"):
        estimate_flow(frames[:1])
