"""``python -m surgsora``: preview without weights (known answers), generate with tiny weights, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from surgsora.cli import main
from surgsora.video_io import read_video, video_info
from fake_models import fake_models_folder

REPO = Path(__file__).resolve().parents[1]
DEMO_TRACKS = REPO / "demo" / "tracks_endovis.json"


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_preview_translates_the_frame_by_the_drawn_track(endovis_frame, tmp_path, capsys):
    """One track on a region covering the frame moves 8 px right over 5 frames: flow is 2 px per frame
    everywhere, and the last preview frame is the first shifted by 8 px."""
    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), cv2.cvtColor(endovis_frame, cv2.COLOR_RGB2BGR))
    mask = tmp_path / "all.png"
    cv2.imwrite(str(mask), np.full(endovis_frame.shape[:2], 255, np.uint8))
    tracks = json.dumps({"width": 256, "height": 144, "tracks": [[[100.5, 70.5], [108.5, 70.5]]]})
    out = tmp_path / "out" / "preview.mp4"
    assert main(["preview", "--image", str(frame), "--tracks", tracks, "--frames", "5", "--size", "256x144",
                 "--masks", str(mask), "--out", str(out), "--save-flow", str(tmp_path / "flow.npy")]) == 0
    result = _last_json(capsys.readouterr().out)
    assert result["frames"] == 5 and set(result["timing_s"]) >= {"tracks -> flow", "motion preview"}
    flow = np.load(tmp_path / "flow.npy")
    assert flow.shape == (4, 2, 144, 256)
    for t in range(4):
        assert np.allclose(flow[t, 0], 2.0 * (t + 1), atol=1e-4) and np.allclose(flow[t, 1], 0, atol=1e-4)
    video = read_video(out).astype(np.float32)
    assert video.shape == (5, 144, 256, 3)
    shifted = np.abs(video[4, :, 8:] - video[0, :, :-8]).mean()
    unshifted = np.abs(video[4, :, 8:] - video[0, :, 8:]).mean()
    assert shifted < 2.0 < unshifted  # mp4 compression aside, an exact 8-pixel shift
    colours = read_video(tmp_path / "out" / "preview_flow.mp4")
    assert colours.shape == (5, 144, 256, 3) and colours[0].min() > 240  # frame 0: no motion, white


def test_preview_of_a_video_frame_runs_in_a_fresh_process_without_weights(endovis_clip, tmp_path):
    out = tmp_path / "preview.mp4"
    cmd = [sys.executable, "-m", "surgsora", "preview", "--image", str(endovis_clip), "--frame-index", "6",
           "--tracks", str(DEMO_TRACKS), "--frames", "14", "--out", str(out), "--draw-tracks"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = _last_json(proc.stdout)
    assert (result["width"], result["height"]) == (512, 288) and result["max_flow_px"] > 5
    assert video_info(out)["frames"] == 14 and video_info(tmp_path / "preview_flow.mp4")["frames"] == 14


def test_generate_lists_every_missing_file_and_where_it_goes(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    code = main(["generate", "--image", "x.png", "--tracks", "[[1, 2]]", "--models", str(models),
                 "--out", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert code == 2
    for folder in ("sams", "depthanything", "checkpoints", "diffusers", "surgsora"):
        assert str(models / folder) in err, folder
    for name in ("sam_vit_b_01ec64.pth", "depth_anything_v2_vitl.pth", "svd_xt.safetensors", "python -m train"):
        assert name in err
    assert not (tmp_path / "o.mp4").exists()


def test_generate_runs_the_whole_pipeline_on_tiny_checkpoints(endovis_frame, tmp_path, capsys):
    from integration.env import tiny_env

    models = tiny_env().models_dir
    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), cv2.cvtColor(endovis_frame, cv2.COLOR_RGB2BGR))
    out = tmp_path / "video.mp4"
    code = main(["generate", "--image", str(frame), "--tracks", str(DEMO_TRACKS), "--models", str(models),
                 "--size", "128x64", "--frames", "4", "--steps", "2", "--out", str(out), "--flow-out",
                 str(tmp_path / "flow.mp4")])
    assert code == 0
    result = _last_json(capsys.readouterr().out)
    assert video_info(out)["frames"] == 4 and video_info(tmp_path / "flow.mp4")["frames"] == 4
    assert Path(result["models"]["decoder"]).name == "ckpt_iter_42000.pth.tar"  # CMP found and used
    assert result["fps"] == 7  # no --fps: the adapter's training fps
    assert set(result["timing_s"]) >= {"SAM features", "depth", "tracks -> flow", "first frame + conditions",
                                       "denoise", "decode"}


def test_generate_ttm_needs_only_svd_and_uses_sam_and_depth_when_present(endovis_frame, tmp_path, capsys):
    """--mode ttm: dual-clock sampling on plain SVD; a models folder with only SVD is enough."""
    import shutil

    from integration.env import tiny_env
    from integration.tiny_models import SVD_FOLDER

    models = tiny_env().models_dir
    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), cv2.cvtColor(endovis_frame, cv2.COLOR_RGB2BGR))
    args = ["generate", "--mode", "ttm", "--image", str(frame), "--tracks", str(DEMO_TRACKS), "--size", "128x64",
            "--frames", "4", "--steps", "3", "--decoder", "analytic"]
    code = main(args + ["--models", str(models), "--out", str(tmp_path / "a.mp4")])
    assert code == 0
    out = capsys.readouterr().out
    result = _last_json(out)
    assert "Dual-clock sampling (Time-to-Move) on plain SVD" in out
    assert result["mode"] == "ttm" and "adapter" not in result["models"] and {"sam", "depth"} <= set(result["models"])
    assert {"SAM features", "depth", "motion signal"} <= set(result["timing_s"])
    assert video_info(tmp_path / "a.mp4")["frames"] == 4
    only_svd = tmp_path / "only_svd"
    shutil.copytree(models / "diffusers" / SVD_FOLDER, only_svd / "diffusers" / SVD_FOLDER)
    code = main(args + ["--models", str(only_svd), "--out", str(tmp_path / "b.mp4"), "--seed", "-1"])
    out = capsys.readouterr().out
    result = _last_json(out)
    assert code == 0 and set(result["models"]) == {"svd", "decoder"}
    # seed -1 is "random": the seed drawn is printed and reported, so the video can be made again
    assert f"--seed -1: using random seed {result['seed']} (give --seed {result['seed']} to repeat" in out
    assert video_info(tmp_path / "b.mp4")["frames"] == 4


@pytest.mark.parametrize("args, message", [
    (["preview", "--tracks", "[[1, 2]]", "--frames", "1"], "--frames must be at least 2"),
    (["preview", "--tracks", "missing.json"], "--tracks: missing.json does not exist"),
    (["preview", "--tracks", '{"width": 10, "height": 10, "tracks": []}'], "draw at least one track"),
    (["preview", "--tracks", "[[1, 2]]", "--size", "big"], "--size must look like 448x256"),
    (["generate", "--tracks", "[[1, 2]]", "--models", "MODELS", "--size", "100x64"], "multiples of 64"),
    (["generate", "--tracks", "[[1, 2]]", "--models", "MODELS", "--mode", "ttm", "--t-weak", "0.5", "--t-strong",
      "0.4"], "--t-weak (0.5) must be smaller than --t-strong (0.4)"),
])
def test_bad_arguments_get_one_clear_sentence(args, message, endovis_frame, tmp_path):
    frame = tmp_path / "f.png"
    cv2.imwrite(str(frame), cv2.cvtColor(endovis_frame[:64, :64], cv2.COLOR_RGB2BGR))
    models = fake_models_folder(tmp_path / "models")
    args = [a.replace("MODELS", str(models)) for a in args]
    with pytest.raises(SystemExit) as info:
        main(args + ["--image", str(frame), "--out", str(tmp_path / "o.mp4")])
    assert message in str(info.value)


def test_download_only_knows_public_files(tmp_path):
    with pytest.raises(SystemExit, match="not a known file"):
        main(["download", "evil.pth", "--models", str(tmp_path)])
