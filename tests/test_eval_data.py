"""Finding and pairing videos, reading conditioning flows in every accepted format."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from surgsora.eval import EvalConfig, evaluate
from surgsora.eval.data import find_flow, list_videos, load_flow, pair_videos
from surgsora.video_io import write_video


def _frames(folder, frames):
    import cv2

    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), f[..., ::-1])


def test_list_and_pair_videos(tmp_path):
    rng = np.random.default_rng(0)
    vid = rng.integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    real, fake = tmp_path / "real", tmp_path / "fake"
    write_video(real / "case1.mp4", vid)
    _frames(real / "case2", vid)
    (real / "notes.txt").write_text("not a video")
    (real / "empty_dir").mkdir()
    _frames(fake / "case2", vid)
    write_video(fake / "case3.mp4", vid)
    r, f = list_videos(real), list_videos(fake)
    assert [e.name for e in r] == ["case1", "case2"] and [e.name for e in f] == ["case2", "case3"]
    pairs, only_real, only_fake = pair_videos(r, f)
    assert [(a.name, b.name) for a, b in pairs] == [("case2", "case2")]
    assert only_real == ["case1"] and only_fake == ["case3"]
    _frames(real / "case1x", vid)
    (real / "case1x").rename(real / "case1")  # a folder and a file both named case1
    with pytest.raises(ValueError, match="two videos named 'case1'"):
        list_videos(real)
    single = list_videos(real / "case1")  # a folder of frames is itself one video
    assert [e.name for e in single] == ["case1"]
    with pytest.raises(ValueError, match="holds no videos"):
        list_videos(real / "empty_dir")


def test_single_videos_with_different_names_are_paired(tmp_path):
    rng = np.random.default_rng(1)
    vid = rng.integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    _frames(tmp_path / "ground_truth", vid)
    _frames(tmp_path / "generated", vid)
    result = evaluate(EvalConfig(real=tmp_path / "ground_truth", fake=tmp_path / "generated", metrics="psnr,ssim"))
    m = result.report["metrics"]
    assert m["ssim"]["value"] == pytest.approx(1.0) and m["psnr"]["value"] == 100.0
    assert m["psnr"]["capped_frames"] == 3
    assert any("although their names differ" in w for w in result.report["warnings"])


def test_load_flow_formats(tmp_path):
    flow = np.random.default_rng(2).normal(size=(4, 2, 6, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", flow[None])  # [1, T-1, 2, H, W] is accepted
    np.savez(tmp_path / "b.npz", flow=flow, extra=np.zeros(3))
    save_file({"flow": torch.from_numpy(flow)}, str(tmp_path / "c.safetensors"))
    torch.save({"flow": torch.from_numpy(flow)}, tmp_path / "d.pt")
    torch.save(torch.from_numpy(flow), tmp_path / "e.pth")
    for name in "abcde":
        path = find_flow(tmp_path, name)
        assert path is not None
        np.testing.assert_array_equal(load_flow(path), flow)
    assert find_flow(tmp_path, "zzz") is None


def test_load_flow_rejects_bad_files(tmp_path):
    np.save(tmp_path / "pickled.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled.npy"):
        load_flow(tmp_path / "pickled.npy")  # never unpickled
    np.save(tmp_path / "hwc.npy", np.zeros((4, 6, 8, 2), np.float32))
    with pytest.raises(ValueError, match=r"expected \[T-1, 2, H, W\]"):
        load_flow(tmp_path / "hwc.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(ValueError, match="name the flow 'flow'"):
        load_flow(tmp_path / "two.npz")
