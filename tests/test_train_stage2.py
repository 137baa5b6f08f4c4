"""Stage 2 of `python -m train`: guide points as published (384 px flow), region masks cached per clip (supplied
instrument masks or SAM at the guide points), and the flow decoded exactly as inference decodes it."""

from pathlib import Path

import numpy as np
import pytest
import torch

from train.data import ClipDataset, ClipSpec, Preprocessor, _clip_id, find_region_masks
from train.fit import flow_decoder, stage2_flow
from train.sparse import sparse_samples

SIZE = (256, 256)
T, STEP = 4, 4  # frames 6, 10, 14, 18: the instruments move ~9 px at 256 px


@pytest.fixture(scope="module")
def masked_clip(tmp_path_factory, endovis_clip):
    """The real clip from frame 6 (where the instrument masks belong), its masks found next to the video."""
    from surgsora.tiny import tiny_depth, tiny_sam

    out = tmp_path_factory.mktemp("stage2")
    spec = ClipSpec(str(endovis_clip), 6, _clip_id(Path(endovis_clip), 6))
    pre = Preprocessor(out, tiny_sam(), tiny_depth(), size=SIZE, num_frames=T, frame_step=STEP, depth_input_size=70,
                       log=lambda *a: None)
    assert pre.run([spec], progress=False) == {"built": 1}
    return ClipDataset(out)[0], pre, spec


def test_guide_points_are_drawn_on_the_384px_flow_and_mapped_to_the_working_size():
    flow = np.zeros((3, 2, 256, 256), np.float32)  # no motion: only the background grid
    points, disp = sparse_samples(flow, np.random.default_rng(0))
    # Stride 80 on 384 px (start 32) = 5 x 5 points, at x = floor((32 + 80k + 0.5) * 256 / 384).
    assert sorted(set(points[:, 0].tolist())) == [21, 75, 128, 181, 235] == sorted(set(points[:, 1].tolist()))
    assert len(points) == 25 and disp.shape == (3, 25, 2) and not disp.any()
    # The same pixel settings on the 256 px flow (the previous behaviour) give a sparser grid.
    assert len(sparse_samples(flow, np.random.default_rng(0), sample_size=None)[0]) == 16
    # Displacements are read from the working-size flow at the mapped points, in working-size pixels.
    ramp = np.broadcast_to(np.arange(256, dtype=np.float32), (3, 2, 256, 256)).copy()
    points, disp = sparse_samples(ramp, np.random.default_rng(0))
    assert np.array_equal(disp[:, :, 0], np.broadcast_to(points[:, 0], (3, len(points))))


def test_supplied_masks_are_found_by_frame_and_fitted_like_the_frames(masked_clip, endovis_clip, tmp_path):
    item, pre, _ = masked_clip
    names = [p.name for p in find_region_masks(endovis_clip, 6)]
    assert names == ["mask_left_instrument_f06.png", "mask_right_instrument_f06.png"]
    assert find_region_masks(endovis_clip, 5) == []  # masks belong to one frame only
    regions = item["regions"]
    assert regions.dtype == torch.bool and regions.shape == (2, *SIZE)
    # 16:9 padded into the square: the masks sit on the picture, none in the black bars.
    assert not regions[:, :56].any() and not regions[:, 200:].any()
    assert 1000 < int(regions[0].sum()) < 5000 and not (regions[0] & regions[1]).any()
    # A masks folder with one sub-folder per video takes precedence; the frame number's padding is free.
    (tmp_path / "clip").mkdir()
    mask = Path(endovis_clip).parent / "mask_left_instrument_f06.png"
    (tmp_path / "clip" / "tool_f6.png").write_bytes(mask.read_bytes())
    assert [p.name for p in find_region_masks(endovis_clip, 6, tmp_path)] == ["tool_f6.png"]


def test_sam_masks_are_prompted_at_the_guide_points(masked_clip):
    _, pre, spec = masked_clip
    frame = torch.from_numpy(ClipDataset(pre.cache)[0]["frames"][0].numpy()).permute(2, 0, 1)[None].float() / 255
    pre.regions = "sam"
    masks, source = pre._regions(spec, (360, 640), frame, np.array([[40, 120], [200, 100]], np.float32))
    pre.regions = "auto"
    assert source == "sam" and masks.dtype == bool and masks.shape[1:] == SIZE and 1 <= len(masks) <= 2
    # Each mask is what SAM predicts for a click at that point's pixel centre, as the CLI prompts it.
    expected = pre.sam.predict_masks(frame, points=np.array([[40.5, 120.5]]))[0][0].numpy()
    assert any(np.array_equal(m, expected) for m in masks)


def test_stage2_flow_with_instrument_masks_is_closer_to_the_real_flow(masked_clip):
    item, _, _ = masked_clip
    decoder, described = flow_decoder("auto", "/nonexistent-models", "cpu")
    assert "analytic" in described  # no CMP checkpoint there
    image = item["frames"][:1].permute(0, 3, 1, 2).float() / 255
    truth = item["flow"].float()  # DIS flow 0 -> t of the real frames
    inside = item["regions"].any(0)
    with_masks = stage2_flow(decoder, image, [item["points"]], [item["disp"]], [item["regions"]], SIZE)[0]
    without = stage2_flow(decoder, image, [item["points"]], [item["disp"]], None, SIZE)[0]

    def epe(flow):
        return float((flow - truth).norm(dim=1)[:, inside].mean())

    e_masks, e_plain, e_zero = epe(with_masks), epe(without), epe(torch.zeros_like(truth))
    print(f"\nstage-2 EPE inside the instrument masks (px, {SIZE[1]}x{SIZE[0]}, frames 6..18 step 4): "
          f"with masks {e_masks:.2f}, without {e_plain:.2f}, zero flow {e_zero:.2f}")
    assert e_masks < 0.85 * e_plain < e_zero


def test_stage2_flow_is_the_inference_cli_decoding(masked_clip):
    """Training hands the cached points and masks to surgsora.cli's own tracks -> flow function."""
    from surgsora.motion.tracks import tracks_to_flow

    item, _, _ = masked_clip
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, image, sparse, mask, region_masks=None):
            calls.append((sparse, mask, region_masks))
            return torch.zeros_like(sparse)

    image = item["frames"][:1].permute(0, 3, 1, 2).float() / 255
    stage2_flow(Spy(), image, [item["points"]], [item["disp"]], [item["regions"]], SIZE)
    start = item["points"] + 0.5
    tracks = torch.cat([start[None], start[None] + item["disp"]]).permute(1, 0, 2)
    tracks_to_flow(Spy(), image, tracks, SIZE[::-1], item["regions"].float()[None])
    (s1, m1, r1), (s2, m2, r2) = calls
    assert torch.equal(s1, s2) and torch.equal(m1, m2) and torch.equal(r1, r2)
    assert int(m1[0, 0, 0].sum()) == len(item["points"])  # every guide point is a track start


def test_cmp_is_used_when_its_checkpoint_is_in_the_models_folder(tmp_path, masked_clip):
    from surgsora.motion.cmp import CMPConfig, CMPDecoder, CMPNet

    torch.manual_seed(0)
    net = CMPNet(CMPConfig(8, (1, 1, 1, 1), 16, 8, 16)).eval()
    (tmp_path / "surgsora").mkdir()
    path = tmp_path / "surgsora" / "ckpt_iter_42000.pth.tar"
    torch.save({"step": 42000, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    decoder, described = flow_decoder("auto", str(tmp_path), "cpu")
    assert isinstance(decoder, CMPDecoder) and str(path) in described
    item, _, _ = masked_clip
    image = item["frames"][:1].permute(0, 3, 1, 2).float() / 255
    flow = stage2_flow(decoder, image, [item["points"]], [item["disp"]], [item["regions"]], SIZE)
    assert flow.shape == (1, T - 1, 2, *SIZE) and torch.isfinite(flow).all()
    # A path given explicitly is used as is; "analytic" forces the analytic decoder.
    assert isinstance(flow_decoder(str(path), "/nonexistent", "cpu")[0], CMPDecoder)
    assert not isinstance(flow_decoder("analytic", str(tmp_path), "cpu")[0], CMPDecoder)


def test_sample_writes_the_eval_layout_with_and_without_padding(masked_clip, tmp_path):
    """`python -m train sample` output goes straight into `python -m surgsora.eval`; cropped/ drops the black
    rows, which are identical in real and generated videos and would inflate PSNR."""
    import json

    from surgsora.tiny import tiny_adapter, tiny_svd_components
    from train.sample import sample_cache
    from surgsora.video_io import read_video

    _, pre, _ = masked_clip
    tiny_adapter(tiny_svd_components()["unet"], randomize=True).save_pretrained(tmp_path / "adapter")
    result = sample_cache(str(pre.cache), str(tmp_path / "adapter"), str(tmp_path / "s"), config="tiny", steps=1,
                          decoder_spec="analytic", log=lambda *a: None)
    assert result == {"clips": 1, "out": str(tmp_path / "s"), "cropped": True}
    name = ClipDataset(pre.cache).clips[0]["id"]
    real = read_video(tmp_path / "s" / "real" / name)
    assert np.array_equal(real, ClipDataset(pre.cache)[0]["frames"].numpy())  # lossless frames
    assert read_video(tmp_path / "s" / "fake" / name).shape == (T, *SIZE, 3)
    assert read_video(tmp_path / "s" / "cropped" / "fake" / name).shape == (T, 144, 256, 3)  # rows 56..200
    assert np.load(tmp_path / "s" / "cropped" / "flows" / f"{name}.npy").shape == (T - 1, 2, 144, 256)

    # The eval CLI on cropped/ measures the picture rows only (56..200 of the 16:9 clip padded to 256x256).
    from surgsora.eval.cli import main as eval_main

    report = tmp_path / "report.json"
    assert eval_main(["--real", str(tmp_path / "s" / "cropped" / "real"), "--fake", str(tmp_path / "s" / "cropped" / "fake"),
                      "--out", str(report), "--metrics", "psnr", "--no-plots", "--quiet"]) == 0
    fake = read_video(tmp_path / "s" / "fake" / name).astype(np.float64)
    mse = ((real.astype(np.float64)[:, 56:200] - fake[:, 56:200]) ** 2).mean(axis=(1, 2, 3))
    expected = float(np.mean(10 * np.log10(255.0 ** 2 / mse)))
    assert json.loads(report.read_text())["metrics"]["psnr"]["value"] == pytest.approx(expected, abs=1e-6)
