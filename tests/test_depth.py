"""Depth Anything V2 loading, key conversion and inference (tiny random models, real EndoVis frame)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from surgsora.perception.depth import (
    DEPTH_VARIANTS,
    build_depth_model,
    checkpoint_layout,
    convert_original_to_transformers,
    convert_transformers_to_original,
    depth_config,
    depth_to_rgb,
    infer_depth_config,
    load_depth_anything,
    match_model_key_names,
    target_size,
)
from surgsora.loading.io import ModelFileError
from surgsora.video_io import read_video

from data_paths import CLIP, MANIFESTS

TINY = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=1, out_indices=[1, 2, 3, 4],
            neck_hidden_sizes=[8, 16, 32, 64], fusion_hidden_size=16, head_hidden_size=8)


@pytest.fixture(scope="module")
def frame():
    return read_video(CLIP, start=6, count=1)[0]  # RGB uint8 [360, 640, 3]


@pytest.fixture(scope="module")
def tiny_hf():
    """A tiny transformers DAv2 with every weight random (layer scales and biases too)."""
    torch.manual_seed(0)
    model = build_depth_model(depth_config("custom", **TINY))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 if p.ndim > 1 else torch.rand_like(p) * 1.5 - 0.5)
        # lift the last conv so the final ReLU keeps a non-constant map (random weights sit near -1.2)
        model.head.conv3.bias.fill_(1.5)
    return model


def _meta_manifest(name):
    tensors = json.loads((MANIFESTS / f"depth_anything_v2_{name}.json").read_text())["tensors"]
    return {k: torch.empty(shape, device="meta") for k, shape in tensors.items()}


# ---------------------------------------------------------------------------------------------- conversion

@pytest.mark.parametrize("variant", ["vits", "vitb", "vitl"])
def test_converter_covers_full_manifest_on_meta(variant):
    sd = _meta_manifest(variant)
    assert checkpoint_layout(sd) == "original"
    hf = convert_original_to_transformers(sd)  # raises on any unused key
    n_qkv = sum(k.endswith("attn.qkv.weight") or k.endswith("attn.qkv.bias") for k in sd)
    assert len(hf) == len(sd) + 2 * n_qkv  # each qkv became q, k, v; nothing dropped
    expected = build_depth_model(depth_config(variant), device="meta").state_dict()
    named = match_model_key_names(hf, expected.keys())  # the installed transformers' names (4.x or 5.x)
    assert set(named) == set(expected)
    assert {k: tuple(v.shape) for k, v in named.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    config, detected = infer_depth_config(hf)
    assert detected == variant
    assert config.backbone_config.hidden_size == DEPTH_VARIANTS[variant]["hidden_size"]
    assert config.backbone_config.out_indices == DEPTH_VARIANTS[variant]["out_indices"]
    back = convert_transformers_to_original(hf)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in sd.items()}


def _reference_forward(sd, x, blocks_out, heads):
    """Depth Anything V2 written directly on the ORIGINAL key names (independent of the rename table)."""
    g = lambda k: sd[k].float()  # noqa: E731
    b, _, h, w = x.shape
    ph, pw = h // 14, w // 14
    t = F.conv2d(x, g("pretrained.patch_embed.proj.weight"), g("pretrained.patch_embed.proj.bias"), stride=14)
    t = t.flatten(2).transpose(1, 2)
    c = t.shape[-1]
    t = torch.cat([g("pretrained.cls_token").expand(b, -1, -1), t], 1) + g("pretrained.pos_embed")
    n = t.shape[1]
    ln = lambda v, p: F.layer_norm(v, (c,), g(p + ".weight"), g(p + ".bias"), 1e-6)  # noqa: E731
    feats = []
    for i in range(1 + max(int(k.split(".")[2]) for k in sd if k.startswith("pretrained.blocks."))):
        p = f"pretrained.blocks.{i}."
        qkv = F.linear(ln(t, p + "norm1"), g(p + "attn.qkv.weight"), g(p + "attn.qkv.bias"))
        q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        t = t + F.linear(a, g(p + "attn.proj.weight"), g(p + "attn.proj.bias")) * g(p + "ls1.gamma")
        m = F.gelu(F.linear(ln(t, p + "norm2"), g(p + "mlp.fc1.weight"), g(p + "mlp.fc1.bias")))
        t = t + F.linear(m, g(p + "mlp.fc2.weight"), g(p + "mlp.fc2.bias")) * g(p + "ls2.gamma")
        if i in blocks_out:
            feats.append(ln(t, "pretrained.norm"))
    d = "depth_head."
    layers = []
    for j, f in enumerate(feats):
        f = f[:, 1:].permute(0, 2, 1).reshape(b, c, ph, pw)
        f = F.conv2d(f, g(f"{d}projects.{j}.weight"), g(f"{d}projects.{j}.bias"))
        rw, rb = (g(f"{d}resize_layers.{j}.weight"), g(f"{d}resize_layers.{j}.bias")) if j != 2 else (None, None)
        if j in (0, 1):
            f = F.conv_transpose2d(f, rw, rb, stride=4 if j == 0 else 2)
        elif j == 3:
            f = F.conv2d(f, rw, rb, stride=2, padding=1)
        layers.append(F.conv2d(f, g(f"{d}scratch.layer{j + 1}_rn.weight"), padding=1))

    def rcu(v, p):
        r = F.conv2d(F.relu(v), g(p + ".conv1.weight"), g(p + ".conv1.bias"), padding=1)
        return v + F.conv2d(F.relu(r), g(p + ".conv2.weight"), g(p + ".conv2.bias"), padding=1)

    def fuse(k, v, skip=None, size=None):
        p = f"{d}scratch.refinenet{k}"
        if skip is not None:
            v = v + rcu(skip, p + ".resConfUnit1")
        v = rcu(v, p + ".resConfUnit2")
        v = F.interpolate(v, size=size, scale_factor=None if size else 2, mode="bilinear", align_corners=True)
        return F.conv2d(v, g(p + ".out_conv.weight"), g(p + ".out_conv.bias"))

    l1, l2, l3, l4 = layers
    path = fuse(4, l4, size=l3.shape[2:])
    path = fuse(3, path, l3, size=l2.shape[2:])
    path = fuse(2, path, l2, size=l1.shape[2:])
    path = fuse(1, path, l1)
    out = F.conv2d(path, g(f"{d}scratch.output_conv1.weight"), g(f"{d}scratch.output_conv1.bias"), padding=1)
    out = F.interpolate(out, (ph * 14, pw * 14), mode="bilinear", align_corners=True)
    out = F.relu(F.conv2d(out, g(f"{d}scratch.output_conv2.0.weight"), g(f"{d}scratch.output_conv2.0.bias"), padding=1))
    return F.relu(F.conv2d(out, g(f"{d}scratch.output_conv2.2.weight"), g(f"{d}scratch.output_conv2.2.bias")))[:, 0]


def test_converted_model_matches_original_layout_and_native_transformers(tiny_hf, frame, tmp_path):
    from transformers import DepthAnythingForDepthEstimation

    original = convert_transformers_to_original(tiny_hf.state_dict())
    assert checkpoint_layout(original) == "original"
    torch.save(original, tmp_path / "depth_anything_v2_vits.pth")  # name says vits; shapes say custom
    tiny_hf.save_pretrained(tmp_path / "hf")

    est_pth = load_depth_anything(tmp_path / "depth_anything_v2_vits.pth")
    est_hf = load_depth_anything(tmp_path / "hf")
    native = DepthAnythingForDepthEstimation.from_pretrained(tmp_path / "hf").eval()
    assert est_pth.variant == "custom" and est_hf.variant == "custom"

    # 518x518 real-frame input (the centre square): square, so the position embedding is used as stored in both layouts.
    x = est_pth.preprocess(torch.from_numpy(frame[:, 140:500]).permute(2, 0, 1)[None].float() / 255, 518)
    assert x.shape == (1, 3, 518, 518)
    with torch.no_grad():
        ref = _reference_forward(original, x, blocks_out=[0, 1, 2, 3], heads=1)
        out_native = native(pixel_values=x).predicted_depth
        out_pth = est_pth.model(pixel_values=x).predicted_depth
        out_hf = est_hf.model(pixel_values=x).predicted_depth
    assert ref.std() > 0.01  # a real, non-constant map
    torch.testing.assert_close(out_pth, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_pth, out_native, rtol=0, atol=1e-6)
    torch.testing.assert_close(out_hf, out_native, rtol=0, atol=1e-6)


def test_kijai_fp16_safetensors_and_legacy_hf_folder(tiny_hf, tmp_path):
    original = convert_transformers_to_original(tiny_hf.state_dict())
    save_file({k: v.half().contiguous() for k, v in original.items()}, str(tmp_path / "dav2_fp16.safetensors"))
    est16 = load_depth_anything(tmp_path / "dav2_fp16.safetensors")
    assert est16.dtype == torch.float32  # CPU runs fp32 whatever the file holds

    # A transformers 4.x folder (attention.attention.query / attention.output.dense names, max_depth null).
    legacy = {}
    for k, v in tiny_hf.state_dict().items():
        k = k.replace(".attention.q_proj.", ".attention.attention.query.")
        k = k.replace(".attention.k_proj.", ".attention.attention.key.")
        k = k.replace(".attention.v_proj.", ".attention.attention.value.")
        k = k.replace(".attention.o_proj.", ".attention.output.dense.")
        legacy[k] = v.contiguous()
    folder = tmp_path / "Depth-Anything-V2-Tiny-hf"
    folder.mkdir()
    save_file(legacy, str(folder / "model.safetensors"))
    cfg = tiny_hf.config.to_dict()
    cfg["max_depth"] = None
    (folder / "config.json").write_text(json.dumps(cfg))
    est_legacy = load_depth_anything(folder)

    img = torch.rand(1, 3, 70, 98, generator=torch.Generator().manual_seed(1))
    ref = tiny_hf(pixel_values=img).predicted_depth.detach()
    with torch.no_grad():
        torch.testing.assert_close(est_legacy.model(pixel_values=img).predicted_depth, ref, rtol=0, atol=1e-6)
        err16 = (est16.model(pixel_values=img).predicted_depth - ref).abs().max()
    assert 0 < err16 < 0.02 * float(ref.abs().max())  # fp16-rounded weights: close, not identical


# ---------------------------------------------------------------------------------------------- inference

def test_target_size_matches_original_resize_rule():
    assert target_size(1080, 1920, 518) == (518, 924)
    assert target_size(256, 256, 266) == (266, 266)
    assert target_size(1920, 1080, 518) == (924, 518)
    assert target_size(300, 400, 518) == (518, 686)  # 690.67 rounds to 686 (a multiple of 14)


def test_estimator_on_real_frame(tiny_hf, frame, tmp_path):
    torch.save(convert_transformers_to_original(tiny_hf.state_dict()), tmp_path / "d.pth")
    est = load_depth_anything(tmp_path / "d.pth")
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    d = est(frame, input_size=266)  # numpy uint8 HWC, as read_video returns it
    assert d.shape == (1, 1, 360, 640) and d.dtype == torch.float32
    assert d.min() == 0 and d.max() == 1 and d.std() > 0.01
    # float tensor input, batched with a darkened copy: deterministic, and each image normalised on its own
    batch = est(torch.cat([x, x * 0.5]), input_size=266)
    assert batch.shape == (2, 1, 360, 640)
    torch.testing.assert_close(batch[0], d[0], rtol=0, atol=1e-5)
    assert batch[1].min() == 0 and batch[1].max() == 1
    assert not torch.allclose(batch[1], batch[0], atol=1e-3)  # the model does see the darker image
    # the first frame was served from the cache: 2 network passes for 3 requested images
    assert est.model_images == 2
    est(x, input_size=280)  # another input size is another result
    assert est.model_images == 3


def test_depth_to_rgb():
    import matplotlib

    d = torch.linspace(0, 1, 256).view(1, 1, 1, 256).repeat(2, 1, 4, 1)
    rgb = depth_to_rgb(d)
    assert rgb.shape == (2, 3, 4, 256) and 0 <= rgb.min() and rgb.max() <= 1
    expected = torch.tensor(matplotlib.colormaps["Spectral_r"]([0.0, 1.0])[:, :3], dtype=torch.float32)
    torch.testing.assert_close(rgb[0, :, 0, 0], expected[0])
    torch.testing.assert_close(rgb[0, :, 0, -1], expected[1])
    torch.testing.assert_close(depth_to_rgb(d, cmap="gray"), d.expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match=r"\[B,1,H,W\]"):
        depth_to_rgb(torch.rand(1, 3, 4, 4))


# ---------------------------------------------------------------------------------------------- errors

@pytest.fixture(scope="module")
def tiny_est(tiny_hf, tmp_path_factory):
    path = tmp_path_factory.mktemp("dav2") / "d.pth"
    torch.save(convert_transformers_to_original(tiny_hf.state_dict()), path)
    return load_depth_anything(path)


@pytest.mark.parametrize("bad, match", [
    ("frame.png", "must be an RGB image"),
    (torch.rand(64, 64), "must be a float RGB tensor"),
    (torch.rand(1, 4, 32, 32), "3 channels.*RGBA"),
    (torch.rand(1, 1, 32, 32), "3 channels.*grey"),
    (torch.rand(1, 32, 32, 3), "channels-last ComfyUI IMAGE"),
    (torch.rand(0, 3, 32, 32), "empty batch"),
    ([], "empty list"),
    (torch.rand(1, 3, 32, 32) * 255, r"must be in \[0,1\]"),
    (np.zeros((32, 32, 4), np.uint8), "3 channels"),
])
def test_bad_images_raise_one_clear_error(tiny_est, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_est(bad)


def test_bad_input_size(tiny_est):
    with pytest.raises(ValueError, match="multiple of 14.*266"):
        tiny_est(torch.rand(1, 3, 32, 32), input_size=256)


def test_sam_checkpoint_given_to_depth_loader(tmp_path):
    from surgsora.perception.sam import build_sam, tiny_sam_config

    torch.save(build_sam(tiny_sam_config(img_size=256)).state_dict(), tmp_path / "depth_anything_v2_vitb.pth")
    with pytest.raises(ModelFileError, match="Segment Anything.*models/sams.*models/depthanything"):
        load_depth_anything(tmp_path / "depth_anything_v2_vitb.pth")


def test_truncated_and_missing_files(tiny_hf, tmp_path):
    path = tmp_path / "depth_anything_v2_vits.pth"
    torch.save(convert_transformers_to_original(tiny_hf.state_dict()), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated.*models/depthanything"):
        load_depth_anything(path)
    st = tmp_path / "depth_anything_v2_vits_fp16.safetensors"
    save_file({k: v.half().contiguous() for k, v in convert_transformers_to_original(tiny_hf.state_dict()).items()},
              str(st))
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="truncated"):
        load_depth_anything(st)
    with pytest.raises(ModelFileError, match="not found.*models/depthanything"):
        load_depth_anything(tmp_path / "nope.pth")
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text(json.dumps(depth_config("vits").to_dict()))
    with pytest.raises(ModelFileError, match="no model.safetensors.*models/depthanything"):
        load_depth_anything(tmp_path / "no_weights")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ModelFileError, match="without config.json.*models/depthanything"):
        load_depth_anything(tmp_path / "empty_folder")


def test_foreign_keys_are_rejected(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ModelFileError, match="not a Depth Anything V2 checkpoint.*models/depthanything"):
        load_depth_anything(tmp_path / "other.pth")
    sd = {k: torch.empty(v, device="meta") for k, v in
          json.loads((MANIFESTS / "depth_anything_v2_vits.json").read_text())["tensors"].items()}
    sd["depth_head.readout_projects.0.0.weight"] = torch.empty(384, 768, device="meta")
    with pytest.raises(ModelFileError, match="does not have"):
        convert_original_to_transformers(sd)
