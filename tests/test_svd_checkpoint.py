"""SVD single-file <-> diffusers conversion: full-size key/shape mapping on meta, tiny round trips, errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from surgsora.loading.svd_checkpoint import (
    CLIP_PREFIX,
    IGNORED_KEYS,
    IGNORED_PREFIXES,
    SVDCheckpointError,
    build_empty_models,
    check_rules,
    inspect_svd_checkpoint,
    load_svd,
    plan_rules,
)
from svd_export import save_svd_single_file, to_single_file_state_dict

from data_paths import MANIFESTS


def _manifest(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in json.loads((MANIFESTS / name).read_text())["tensors"].items()}


@pytest.fixture(scope="module")
def sgm_manifest():
    return _manifest("svd_xt_sgm_single_file.json")


@pytest.fixture(scope="module")
def full_models():
    return build_empty_models()


def _shapes(models):
    return {c: {k: tuple(v.shape) for k, v in m.state_dict().items()} for c, m in models.items()}


def _write_header_only(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "F16", metadata=None) -> Path:
    """A safetensors file with the real header; the data region is a sparse hole (no disk, no RAM)."""
    size = {"F16": 2, "F32": 4}[dtype]
    header, offset = {}, 0
    for key in sorted(shapes):
        n = size
        for d in shapes[key]:
            n *= d
        header[key] = {"dtype": dtype, "shape": list(shapes[key]), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)
    return path


# ------------------------------------------------------------------ full size, meta device
def test_packaged_configs_build_the_published_diffusers_layouts(full_models):
    for component, manifest in (("unet", "svd_xt_diffusers_unet.json"), ("vae", "svd_xt_diffusers_vae.json"),
                                ("image_encoder", "svd_xt_diffusers_image_encoder.json")):
        assert _shapes(full_models)[component] == _manifest(manifest), component


def test_every_single_file_tensor_maps_to_exactly_one_place(full_models, sgm_manifest):
    rules = plan_rules(full_models)
    targets = _shapes(full_models)
    assert check_rules(rules, sgm_manifest, targets) == 6 + sum(k.startswith("conditioner.embedders.3.") for k in sgm_manifest)
    used = {r.source for r in rules if r.source}
    ignored = {k for k in sgm_manifest if k in IGNORED_KEYS or k.startswith(IGNORED_PREFIXES)}
    assert len(ignored) == 254 and len(IGNORED_KEYS & set(sgm_manifest)) == 6
    assert used == set(sgm_manifest) - ignored
    # each diffusers tensor has one rule; only the three CLIP q/k/v share a source
    assert sorted((r.component, r.target) for r in rules) == sorted((c, k) for c in targets for k in targets[c])
    per_source = {}
    for r in rules:
        if r.source:
            per_source.setdefault(r.source, []).append(r.kind)
    assert {tuple(v) for k, v in per_source.items() if len(v) > 1} == {("qkv",) * 3}
    assert len([k for k in per_source if k.endswith("in_proj_weight")]) == 32
    # the VAE quant_conv is the only target without a source
    assert sorted(r.target for r in rules if r.source is None) == ["quant_conv.bias", "quant_conv.weight"]


def test_full_size_export_reproduces_the_single_file_layout(full_models, sgm_manifest):
    exported = to_single_file_state_dict(**full_models)  # meta tensors: shapes only
    expected = {k: v for k, v in sgm_manifest.items() if k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES)}
    assert {k: tuple(v.shape) for k, v in exported.items()} == expected


@pytest.mark.parametrize("name, dtype, frames, variant", [
    ("svd.safetensors", "F32", 14, "svd"),
    ("svd_xt.safetensors", "F32", 25, "svd_xt"),
    ("svd_xt_1_1.safetensors", "F16", 25, "svd_xt"),
])
def test_load_real_layout_on_meta(tmp_path, sgm_manifest, name, dtype, frames, variant):
    path = _write_header_only(tmp_path / name, sgm_manifest, dtype)
    info = inspect_svd_checkpoint(path)
    torch_dtype = {"F16": torch.float16, "F32": torch.float32}[dtype]
    assert (info.variant, info.num_frames, info.num_frames_from) == (variant, frames, "file name")
    assert info.dtype == torch_dtype and info.num_tensors == 2446 and info.num_ignored == 254
    parts = load_svd(path, device="meta", dtype=None)
    assert parts["unet"].config.num_frames == frames
    assert parts["unet"].dtype == torch_dtype and parts["image_encoder"].dtype == torch_dtype
    assert parts["scheduler"].config.prediction_type == "v_prediction"
    assert parts["feature_extractor"].crop_size == {"height": 224, "width": 224}
    assert load_svd(path, device="meta", num_frames=14)["unet"].config.num_frames == 14


def test_unknown_missing_and_misshaped_keys_are_named(tmp_path, sgm_manifest):
    extra = dict(sgm_manifest, **{"model.diffusion_model.lora_up.weight": (4, 4)})
    with pytest.raises(SVDCheckpointError, match=r"not part of SVD \(model\.diffusion_model\.lora_up\.weight\)"):
        load_svd(_write_header_only(tmp_path / "extra.safetensors", extra), device="meta")

    gone = "first_stage_model.decoder.conv_out.time_mix_conv.weight"
    missing = {k: v for k, v in sgm_manifest.items() if k != gone}
    with pytest.raises(SVDCheckpointError, match=r"1 SVD tensors are missing \(" + gone.replace(".", r"\.")):
        load_svd(_write_header_only(tmp_path / "missing.safetensors", missing), device="meta")

    key = CLIP_PREFIX + "proj"
    wrong = dict(sgm_manifest, **{key: (1280, 768)})
    with pytest.raises(SVDCheckpointError, match="wrong shape.*" + key.replace(".", r"\.")):
        load_svd(_write_header_only(tmp_path / "wrong.safetensors", wrong), device="meta")

    # the ignorable groups may be absent (files saved by ComfyUI or by save_svd_single_file)
    lean = {k: v for k, v in sgm_manifest.items() if k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES)}
    load_svd(_write_header_only(tmp_path / "lean.safetensors", lean), device="meta")


def test_wrong_inputs_give_actionable_errors(tmp_path):
    with pytest.raises(SVDCheckpointError, match="models/checkpoints.*models/diffusers"):
        load_svd(tmp_path / "nope.safetensors")
    unet_only = _write_header_only(tmp_path / "diffusion_pytorch_model.safetensors",
                                   _manifest("svd_xt_diffusers_unet.json"))
    with pytest.raises(SVDCheckpointError, match="pass the whole diffusers folder"):
        load_svd(unet_only, device="meta")
    with pytest.raises(SVDCheckpointError, match="without model_index.json.*pick the file itself"):
        load_svd(tmp_path)
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(SVDCheckpointError, match="not Stable Video Diffusion"):
        load_svd(tmp_path / "sd")
    truncated = tmp_path / "cut.safetensors"
    with open(tmp_path / "diffusion_pytorch_model.safetensors", "rb") as f:
        truncated.write_bytes(f.read(200_000))
    with pytest.raises(SVDCheckpointError, match="truncated"):
        load_svd(truncated)


# ------------------------------------------------------------------ tiny configs, real values
def _tiny_models(seed=0):
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from surgsora.tiny import tiny_unet_config

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(**tiny_unet_config(num_frames=25))
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4,
        layers_per_block=2,
    )
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=28,
        patch_size=14, projection_dim=16, hidden_act="gelu", layer_norm_eps=1e-5,
    ))
    with torch.no_grad():  # make every tensor (mix factors, norms, quant_conv) distinctive
        for m in (unet, vae, clip):
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return dict(unet=unet.eval(), vae=vae.eval(), image_encoder=clip.eval())


def _save_configs(models, folder: Path) -> Path:
    models["unet"].save_config(folder / "unet")
    models["vae"].save_config(folder / "vae")
    models["image_encoder"].config.save_pretrained(folder / "image_encoder")
    return folder


@torch.no_grad()
def _outputs(m):
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 3, 8, 16, 16, generator=g)
    unet_out = m["unet"](sample, torch.tensor([3.0]), torch.randn(1, 1, 32, generator=g),
                         torch.tensor([[6.0, 127.0, 0.02]])).sample
    latents = torch.randn(3, 4, 8, 8, generator=g)
    decoded = m["vae"].decode(latents, num_frames=3).sample
    moments = m["vae"].encode(torch.randn(2, 3, 16, 16, generator=g)).latent_dist.parameters
    embeds = m["image_encoder"](torch.randn(2, 3, 28, 28, generator=g)).image_embeds
    return unet_out, decoded, moments, embeds


def test_tiny_round_trip_gives_identical_outputs(tmp_path):
    models = _tiny_models()
    configs = _save_configs(models, tmp_path / "configs")
    path = save_svd_single_file(tmp_path / "tiny.safetensors", **models)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []

    loaded = load_svd(path, config_dir=configs)
    assert loaded["unet"].config.num_frames == 25  # recorded in the metadata
    unet_a, dec_a, mom_a, emb_a = _outputs(models)
    unet_b, dec_b, mom_b, emb_b = _outputs(loaded)
    assert torch.equal(unet_a, unet_b)
    assert torch.equal(dec_a, dec_b)
    assert torch.equal(emb_a, emb_b)
    # quant_conv was folded into conv_out (float64 algebra), loaded back as the identity
    q = loaded["vae"].quant_conv
    assert torch.equal(q.weight[:, :, 0, 0], torch.eye(8)) and not q.bias.any()
    torch.testing.assert_close(mom_a, mom_b, rtol=1e-5, atol=1e-5)
    assert not torch.equal(models["vae"].quant_conv.weight[:, :, 0, 0], torch.eye(8))

    # loaded -> exported again is bit-identical, so the single file survives any number of round trips
    first = to_single_file_state_dict(**models)
    second = to_single_file_state_dict(loaded["unet"], loaded["vae"], loaded["image_encoder"])
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    # fp16 file: detected and kept with dtype=None, upcast on request
    half = save_svd_single_file(tmp_path / "svd_tiny_fp16.safetensors", **models, dtype=torch.float16, num_frames=14)
    info = inspect_svd_checkpoint(half)
    assert (info.dtype, info.num_frames, info.variant) == (torch.float16, 14, "svd")
    as_is = load_svd(half, config_dir=configs, dtype=None)
    assert {p.dtype for m in ("unet", "vae", "image_encoder") for p in as_is[m].parameters()} == {torch.float16}
    up = load_svd(half, config_dir=configs)
    assert torch.equal(up["unet"].conv_in.weight, models["unet"].conv_in.weight.half().float())


@torch.no_grad()
def _openclip_visual(sd: dict, images: torch.Tensor, heads: int, patch: int) -> torch.Tensor:
    """OpenCLIP's VisionTransformer forward written from its definition, on single-file tensors."""
    p = CLIP_PREFIX
    w = lambda k: sd[p + k]  # noqa: E731
    x = F.conv2d(images, w("conv1.weight"), stride=patch).flatten(2).transpose(1, 2)
    cls = w("class_embedding").expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + w("positional_embedding")
    width = x.shape[-1]
    x = F.layer_norm(x, (width,), w("ln_pre.weight"), w("ln_pre.bias"), eps=1e-5)
    i = 0
    while p + f"transformer.resblocks.{i}.ln_1.weight" in sd:
        b = f"transformer.resblocks.{i}."
        attn = nn.MultiheadAttention(width, heads, batch_first=True)
        attn.in_proj_weight.copy_(w(b + "attn.in_proj_weight"))
        attn.in_proj_bias.copy_(w(b + "attn.in_proj_bias"))
        attn.out_proj.weight.copy_(w(b + "attn.out_proj.weight"))
        attn.out_proj.bias.copy_(w(b + "attn.out_proj.bias"))
        h = F.layer_norm(x, (width,), w(b + "ln_1.weight"), w(b + "ln_1.bias"), eps=1e-5)
        x = x + attn.eval()(h, h, h, need_weights=False)[0]
        h = F.layer_norm(x, (width,), w(b + "ln_2.weight"), w(b + "ln_2.bias"), eps=1e-5)
        h = F.linear(F.gelu(F.linear(h, w(b + "mlp.c_fc.weight"), w(b + "mlp.c_fc.bias"))),
                     w(b + "mlp.c_proj.weight"), w(b + "mlp.c_proj.bias"))
        x = x + h
        i += 1
    pooled = F.layer_norm(x[:, 0], (width,), w("ln_post.weight"), w("ln_post.bias"), eps=1e-5)
    return pooled @ w("proj")


def test_clip_mapping_matches_openclip_semantics(tmp_path):
    """q/k/v split order and the projection transpose, checked against OpenCLIP's own computation."""
    models = _tiny_models(seed=3)
    path = save_svd_single_file(tmp_path / "svd_xt.safetensors", **models)
    from safetensors.torch import load_file

    sd = load_file(str(path))
    images = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    reference = _openclip_visual(sd, images, heads=4, patch=14)
    loaded = load_svd(path, config_dir=_save_configs(models, tmp_path / "cfg"))["image_encoder"]
    with torch.no_grad():
        ours = loaded(images).image_embeds
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_diffusers_folder_loads_with_the_same_entry_point(tmp_path):
    models = _tiny_models(seed=5)
    folder = tmp_path / "svd-tiny"
    models["unet"].save_pretrained(folder / "unet")
    models["vae"].save_pretrained(folder / "vae", variant="fp16")
    models["image_encoder"].save_pretrained(folder / "image_encoder")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableVideoDiffusionPipeline"}))
    loaded = load_svd(folder, num_frames=14)
    assert loaded["unet"].config.num_frames == 14
    assert inspect_svd_checkpoint(folder).layout == "diffusers"
    a, b = _outputs(models), _outputs(loaded)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert loaded["scheduler"].config.sigma_max == 700.0  # packaged scheduler when the folder has none

    (folder / "image_encoder" / "model.safetensors").unlink()
    with pytest.raises(SVDCheckpointError, match="image_encoder has no weights"):
        load_svd(folder)
