"""SAM v1 loading (variant from shapes), segment features and prompt masks on the real EndoVis frame."""

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from surgsora.loading.io import ModelFileError
from surgsora.perception.sam import (
    SAM_VARIANTS,
    SamSegmenter,
    build_sam,
    build_sam_from_state_dict,
    infer_sam_config,
    load_sam,
    sam_variant,
    tiny_sam_config,
)
from surgsora.video_io import read_video

from data_paths import CLIP, MANIFESTS


@pytest.fixture(scope="module")
def frame():
    return read_video(CLIP, start=6, count=1)[0]  # RGB uint8 [360, 640, 3]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = tiny_sam_config()
    return build_sam(config), config


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory):
    # Named like the real ViT-H file on purpose: detection must come from the shapes, not the name.
    path = tmp_path_factory.mktemp("sams") / "sam_vit_h_4b8939.pth"
    torch.save(tiny[0].state_dict(), path)
    return path


# ---------------------------------------------------------------------------------------------- loading

@pytest.mark.parametrize("name, variant", [("sam_vit_b_01ec64", "vit_b"), ("sam_vit_l_0b3195", "vit_l"),
                                           ("sam_vit_h_4b8939", "vit_h")])
def test_variant_detected_from_full_manifest_on_meta(name, variant):
    tensors = json.loads((MANIFESTS / f"{name}.json").read_text())["tensors"]
    sd = {k: torch.empty(shape, device="meta") for k, shape in tensors.items()}
    config = infer_sam_config(sd)
    assert config == SAM_VARIANTS[variant] and sam_variant(config) == variant
    # The rebuilt architecture has exactly the file's tensors (strict load on meta succeeds too).
    built = build_sam(config, device="meta").state_dict()
    assert {k: tuple(v.shape) for k, v in built.items()} == {k: tuple(v) for k, v in tensors.items()}
    model, _ = build_sam_from_state_dict(sd)
    assert model.image_encoder.img_size == 1024 and model.pixel_mean.device.type == "cpu"


def test_pth_and_safetensors_round_trip(tiny, tiny_file, tmp_path):
    model, config = tiny
    seg = load_sam(tiny_file)
    assert seg.variant == "custom"  # not "vit_h", whatever the file name says
    assert seg.config == config
    st = tmp_path / "renamed_sam.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    seg_st = load_sam(st)
    for a, b in zip(model.state_dict().values(), seg_st.model.state_dict().values()):
        assert torch.equal(a, b)
    # A tiny model with the vit_b layout but fewer blocks is still "custom".
    fewer = dataclasses.replace(SAM_VARIANTS["vit_b"], encoder_depth=3, encoder_global_attn_indexes=(2,))
    sd = {k: torch.empty_like(v, device="meta") for k, v in build_sam(fewer, device="meta").state_dict().items()}
    assert infer_sam_config(sd) == fewer and sam_variant(fewer) == "custom"


# ---------------------------------------------------------------------------------------------- features

def test_matches_segment_anything_predictor(tiny, frame):
    from segment_anything import SamPredictor

    model, config = tiny
    seg = SamSegmenter(model, config)
    # 1024x576 already has SAM's long side, so both paths skip resizing and must agree exactly.
    small = cv2.resize(frame, (1024, 576), interpolation=cv2.INTER_AREA)
    predictor = SamPredictor(model)
    predictor.set_image(small)
    emb = seg.encode(small)
    assert emb.shape == (1, 256, 64, 64)
    torch.testing.assert_close(emb, predictor.features, rtol=1e-4, atol=1e-4)

    # Prompts through the same embedding: a 1e-4 difference in it can flip a pixel that sits on the threshold.
    predictor.features = emb
    pts, lbl, box = np.array([[300, 200], [700, 400]]), np.array([1, 0]), np.array([100, 50, 600, 500])
    ref_m, ref_s, _ = predictor.predict(point_coords=pts, point_labels=lbl, box=box, multimask_output=False)
    masks, scores = seg.predict_masks(small, points=pts, labels=lbl, boxes=box)
    assert masks.shape == (1, 576, 1024) and masks.dtype == torch.bool
    assert 0 < masks.float().mean() < 1  # a real partition of the frame, not all/none
    assert np.array_equal(masks.numpy(), ref_m) and np.allclose(scores.numpy(), ref_s, atol=1e-5)

    ref_m, ref_s, _ = predictor.predict(point_coords=pts[:1], point_labels=lbl[:1], multimask_output=True)
    masks, scores = seg.predict_masks(small, points=pts[:1], multimask=True)
    assert masks.shape == (3, 576, 1024)
    assert np.array_equal(masks.numpy(), ref_m) and np.allclose(scores.numpy(), ref_s, atol=1e-5)
    best, best_score = seg.predict_masks(small, points=pts[:1])  # single click: best of three
    assert torch.equal(best[0], masks[scores.argmax()]) and best_score.item() == pytest.approx(scores.max().item())
    assert seg.encoder_images == 1  # one image, encoded once for features and every prompt


def test_full_frame_features_cache_and_masks(tiny, tiny_file, frame):
    from segment_anything import SamPredictor

    seg = load_sam(tiny_file)
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    emb = seg.encode(x)
    assert emb.shape == (1, 256, 64, 64) and torch.isfinite(emb).all()
    # Same pixels as uint8 numpy hit the cache; the float result is returned unchanged.
    assert torch.equal(seg.encode(frame), emb) and seg.encoder_images == 1
    # SAM's own uint8 PIL resize gives nearly the same embedding as our float antialiased resize.
    predictor = SamPredictor(tiny[0])
    predictor.set_image(frame)
    corr = torch.corrcoef(torch.stack([emb.flatten(), predictor.features.flatten()]))[0, 1]
    assert corr > 0.999
    # With the same embedding, SAM's predictor maps full-resolution clicks/boxes exactly as we do.
    predictor.features = emb
    pts, box = np.array([[217, 183], [400, 100]]), np.array([133, 100, 300, 267])
    ref_m, ref_s, _ = predictor.predict(point_coords=pts, point_labels=np.array([1, 0]), box=box,
                                        multimask_output=False)
    m, s = seg.predict_masks(frame, points=pts, labels=[1, 0], boxes=box)
    assert m.shape == (1, 360, 640) and 0 < m.float().mean() < 1
    assert np.array_equal(m.numpy(), ref_m) and np.allclose(s.numpy(), ref_s, atol=1e-5)

    masks, scores = seg.predict_masks(x[0], boxes=[[133, 100, 300, 267], [333, 67, 500, 233]],
                                      points=[[217, 183]], labels=[1])
    assert masks.shape == (2, 360, 640) and scores.shape == (2,)
    m3, s3 = seg.predict_masks(frame, boxes=[133, 100, 300, 267], multimask=True)
    assert m3.shape == (3, 360, 640) and s3.shape == (3,)
    assert seg.encoder_images == 1

    # batch: a new image is encoded, the known one is served from the cache; results are deterministic
    flipped = np.ascontiguousarray(frame[:, ::-1])
    both = seg.encode([frame, flipped])
    assert both.shape == (2, 256, 64, 64) and seg.encoder_images == 2
    assert torch.equal(both[0], emb[0]) and not torch.allclose(both[1], emb[0])
    seg.clear_cache()
    assert torch.equal(seg.encode(flipped), both[1:]) and seg.encoder_images == 3
    assert seg.to("cpu") is seg and seg.device == torch.device("cpu")


# ---------------------------------------------------------------------------------------------- errors

def test_depth_checkpoint_given_to_sam_loader(tmp_path):
    tensors = json.loads((MANIFESTS / "depth_anything_v2_vits.json").read_text())["tensors"]
    # A few real DAv2 key names and shapes are enough for the loader to recognise the file.
    keys = ["pretrained.cls_token", "pretrained.pos_embed", "depth_head.projects.0.weight"]
    torch.save({k: torch.zeros(tensors[k]) for k in keys}, tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(ModelFileError, match="Depth Anything.*models/depthanything.*models/sams"):
        load_sam(tmp_path / "sam_vit_b_01ec64.pth")


def test_truncated_missing_and_foreign_files(tiny_file, tmp_path):
    cut = tmp_path / "sam_vit_b_01ec64.pth"
    data = tiny_file.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="truncated.*models/sams"):
        load_sam(cut)
    with pytest.raises(ModelFileError, match="not found.*models/sams"):
        load_sam(tmp_path / "missing.pth")
    torch.save({"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(1),
                "sam_mask_decoder.iou_token.weight": torch.zeros(1)}, tmp_path / "sam2.pth")
    with pytest.raises(ModelFileError, match="SAM 2"):
        load_sam(tmp_path / "sam2.pth")
    sd = torch.load(tiny_file, weights_only=True)
    sd["mask_decoder.hf_token.weight"] = torch.zeros(1, 256)  # SAM-HQ adds tokens like this
    torch.save(sd, tmp_path / "sam_hq.pth")
    with pytest.raises(ModelFileError, match="not a standard SAM v1.*hf_token.*models/sams"):
        load_sam(tmp_path / "sam_hq.pth")


@pytest.fixture(scope="module")
def small_seg():
    torch.manual_seed(1)
    config = tiny_sam_config(img_size=256)  # grid 16: enough to exercise the checks quickly
    return SamSegmenter(build_sam(config), config)


@pytest.mark.parametrize("bad, match", [
    (None, "must be an RGB image"),
    ("frame.png", "must be an RGB image"),
    (torch.rand(32, 32), "must be a float RGB tensor"),
    (torch.rand(1, 4, 32, 32), "3 channels.*RGBA"),
    (torch.rand(1, 32, 32, 3), "channels-last ComfyUI IMAGE"),
    (np.zeros((3, 32, 32), np.uint8), "channels-last"),
    (torch.rand(0, 3, 32, 32), "empty batch"),
    (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    (torch.rand(1, 3, 32, 32) * 2 - 1, r"\[0,1\].*\(x \+ 1\) / 2"),
])
def test_bad_images_raise_one_clear_error(small_seg, bad, match):
    with pytest.raises(ValueError, match=match):
        small_seg.encode(bad)


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "needs at least one click"),
    (dict(points=[[10, 10]], labels=[1, 0]), "labels has 2 entries"),
    (dict(points=[[10, 10]], labels=[2]), "1 \\(object\\) or 0"),
    (dict(points=[[100, 10]]), r"outside the 64x48 image"),
    (dict(points=[1, 2, 3]), r"\[N,2\]"),
    (dict(boxes=[30, 30, 10, 10]), "x1 >= x0"),
    (dict(labels=[1]), "without points"),
])
def test_bad_prompts(small_seg, kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_seg.predict_masks(torch.rand(3, 48, 64), **kwargs)
