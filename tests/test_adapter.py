"""SurgSoraAdapter: structure, condition branch shapes at real size, residual placement, save/load."""

import pytest
import torch

from surgsora import SurgSoraAdapter
from surgsora.model.dfm import FusionBlock
from surgsora.model.dsi import align_seg_features
from surgsora.tiny import tiny_adapter, tiny_adapter_options, tiny_svd_components
from surgsora.model.unet import unet_forward


@pytest.fixture(scope="module")
def unet():
    return tiny_svd_components(seed=0, num_frames=4)["unet"]


def _real_size_condition_branch():
    """A full-size SVD-xt adapter whose trunk stays on the meta device (only the condition branch is real)."""
    with torch.device("meta"):
        adapter = SurgSoraAdapter()
    for name in ("rgb_processor", "depth_processor", "rgb_encoder", "depth_encoder", "fusion"):
        module = getattr(adapter, name).to_empty(device="cpu")
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return adapter


@pytest.mark.parametrize("frames", [14, 21, 25])
def test_real_size_condition_scales_for_any_frame_count(frames):
    torch.manual_seed(0)
    adapter = _real_size_condition_branch()
    image = torch.rand(1, 3, 256, 256) * 2 - 1
    depth = torch.rand(1, 1, 256, 256)
    seg = torch.randn(1, 256, 64, 64)
    flow = torch.randn(1, frames - 1, 2, 256, 256)
    with torch.no_grad():
        conds = adapter.encode_conditions(image, depth, seg, flow)
    assert [tuple(c.shape) for c in conds] == [
        (1, frames, 320, 32, 32), (1, frames, 320, 16, 16), (1, frames, 640, 8, 8), (1, frames, 1280, 4, 4),
    ]
    assert all(torch.isfinite(c).all() for c in conds)


def test_full_size_parameter_layout_matches_unet_and_mofa():
    with torch.device("meta"):
        adapter = SurgSoraAdapter()
    sd = adapter.state_dict()
    assert len([k for k in sd if k.startswith("controlnet_down_blocks.") and k.endswith(".weight")]) == 12
    assert sd["rgb_processor.conv_out.weight"].shape == (320, 512, 3, 3)
    assert sd["rgb_encoder.encoders.2.conv_in.weight"].shape == (1280, 640, 3, 3)
    assert sd["depth_processor.conv_out.weight"].shape == (320, 512, 3, 3)
    assert sd["fusion.3.pair_conv.weight"].shape == (1280, 2, 1, 1, 1)
    assert sd["fusion.0.time_conv.weight"].shape == (320, 320, 3, 1, 1)
    # Every trunk tensor has the name and shape of the SVD-xt UNet's (manifest of the real file).
    import json
    from pathlib import Path

    from data_paths import MANIFESTS as manifests
    unet = json.loads((manifests / "svd_xt_diffusers_unet.json").read_text())["tensors"]
    mofa = json.loads((manifests / "mofa_traj_controlnet.json").read_text())["tensors"]
    trunk_groups = ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block")
    trunk = {k: list(v.shape) for k, v in sd.items() if k.split(".")[0] in trunk_groups}
    assert trunk == {k: v for k, v in unet.items() if k.split(".")[0] in trunk_groups}
    assert trunk == {k: v for k, v in mofa.items() if k.split(".")[0] in trunk_groups}
    zero_convs = {k: list(v.shape) for k, v in sd.items() if k.startswith(("controlnet_down_blocks", "controlnet_mid"))}
    assert zero_convs == {k: v for k, v in mofa.items() if k.startswith(("controlnet_down_blocks", "controlnet_mid"))}


def test_from_unet_copies_trunk_and_zero_residuals(unet):
    adapter = tiny_adapter(unet)
    for name in ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block"):
        for (k, a), (_, b) in zip(getattr(adapter, name).state_dict().items(), getattr(unet, name).state_dict().items()):
            assert torch.equal(a, b), f"{name}.{k}"
    sample = torch.randn(2, 4, 8, 8, 8)
    conds = adapter.encode_conditions(torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 1, 64, 64),
                                      torch.randn(1, 256, 64, 64), torch.randn(1, 3, 2, 64, 64))
    down, mid = adapter(sample, 10.0, torch.randn(2, 1, 32), torch.tensor([[6.0, 127, 0.02]] * 2), conds)
    assert len(down) == 1 + 3 + 2 == len(adapter.controlnet_down_blocks)
    assert all(torch.equal(d, torch.zeros_like(d)) for d in down) and torch.equal(mid, torch.zeros_like(mid))


def test_each_residual_reaches_exactly_its_own_skip_once(unet):
    """A residual on skip i changes the UNet output exactly as adding it to that skip once would."""
    torch.manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, 8)
    ehs = torch.randn(1, 1, 32)
    ids = torch.tensor([[6.0, 127, 0.02]])
    skips = []
    handles = [unet.conv_in.register_forward_hook(lambda m, i, o: skips.append(o))]
    for block in unet.down_blocks:
        for r in block.resnets:
            handles.append(r.register_forward_hook(lambda m, i, o: skips.append(o)))
        for d in block.downsamplers or []:
            handles.append(d.register_forward_hook(lambda m, i, o: skips.append(o)))
    with torch.no_grad():
        base = unet_forward(unet, sample, 10.0, ehs, ids)
    for h in handles:
        h.remove()
    shapes = [s.shape for s in skips]
    assert len(shapes) == 6
    for i in range(len(shapes)):
        zeros = [torch.zeros(s) for s in shapes]
        zeros[i] = torch.full(shapes[i], 0.1)
        with torch.no_grad():
            once = unet_forward(unet, sample, 10.0, ehs, ids, zeros, torch.zeros(1 * 4, 64, 4, 4))
            twice = unet_forward(unet, sample, 10.0, ehs, ids, [z * 2 for z in zeros], torch.zeros(4, 64, 4, 4))
        assert not torch.equal(once, base)
        assert not torch.allclose(once, twice)
    with pytest.raises(ValueError, match="skip connections"):
        unet_forward(unet, sample, 10.0, ehs, ids, [torch.zeros(s) for s in shapes[:-1]])


def test_unet_forward_equals_diffusers_forward(unet):
    torch.manual_seed(1)
    args = (torch.randn(2, 4, 8, 8, 8), torch.tensor(3.5), torch.randn(2, 1, 32), torch.tensor([[6.0, 127, 0.02]] * 2))
    with torch.no_grad():
        assert torch.equal(unet_forward(unet, *args), unet(*args).sample)


def test_conditions_reach_the_trunk_and_are_shared_across_cfg(unet):
    adapter = tiny_adapter(unet, seed=3, randomize=True)
    torch.manual_seed(2)
    image, depth, seg = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 1, 64, 64), torch.randn(1, 256, 64, 64)
    flow = torch.randn(1, 3, 2, 64, 64) * 4
    sample = torch.randn(1, 4, 8, 8, 8)
    ehs, ids = torch.randn(1, 1, 32), torch.tensor([[6.0, 127, 0.02]])
    with torch.no_grad():
        conds = adapter.encode_conditions(image, depth, seg, flow)
        other = adapter.encode_conditions(image, depth, seg, -flow)
        d1, m1 = adapter(sample, 5.0, ehs, ids, conds)
        d2, m2 = adapter(sample, 5.0, ehs, ids, other)
        assert not torch.allclose(m1, m2)
        # Batch of two (CFG halves) with conditions computed once for batch one.
        d3, m3 = adapter(torch.cat([sample] * 2), 5.0, torch.cat([ehs] * 2), torch.cat([ids] * 2), conds)
        assert torch.allclose(m3[:4], m1, atol=1e-6) and torch.allclose(m3[4:], m1, atol=1e-6)
        half, _ = adapter(sample, 5.0, ehs, ids, conds, conditioning_scale=0.5)
        assert torch.allclose(half[0], d1[0] * 0.5)


def test_frame_zero_condition_is_unwarped(unet):
    """Frame 0 of every scale does not depend on the flow; later frames do."""
    adapter = tiny_adapter(unet, seed=4, randomize=True)
    torch.manual_seed(3)
    image, depth, seg = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 1, 64, 64), torch.randn(1, 256, 64, 64)
    with torch.no_grad():
        a = adapter.encode_conditions(image, depth, seg, torch.zeros(1, 3, 2, 64, 64))
        b = adapter.encode_conditions(image, depth, seg, torch.full((1, 3, 2, 64, 64), 16.0))
    # The temporal conv mixes neighbouring frames, so compare the fusion inputs' effect via frame 1..3.
    assert not torch.allclose(a[0][:, 1:], b[0][:, 1:])


def test_fusion_pairs_rgb_channel_i_with_depth_channel_i():
    block = FusionBlock(4, temporal_kernel=3)
    with torch.no_grad():
        block.time_conv.weight.zero_()
        for i in range(4):
            block.time_conv.weight[i, i, 1] = 1.0  # identity over channels, centre frame only
    rgb = torch.zeros(1, 5, 4, 2, 2)
    dep = torch.zeros(1, 5, 4, 2, 2)
    dep[:, :, 2] = 1.0  # only depth channel 2 is non-zero
    with torch.no_grad():
        base = block(rgb, torch.zeros_like(dep))
        out = block(rgb, dep)
    changed = (out - base).abs().amax(dim=(0, 1, 3, 4))
    assert changed[2] > 0 and torch.all(changed[[0, 1, 3]] == 0)


def test_fresh_fusion_passes_rgb_through_for_any_frame_count():
    block = FusionBlock(6)
    for t in (1, 14, 21, 25):
        rgb, dep = torch.randn(2, t, 6, 3, 3), torch.randn(2, t, 6, 3, 3)
        assert torch.equal(block(rgb, dep), rgb)


def test_align_seg_features_crops_the_padded_sam_grid():
    seg = torch.zeros(1, 1, 64, 64)
    seg[..., :36, :] = 1.0  # a 1920x1080 image covers the top 36 of 64 rows (1080 * 64 / 1920 = 36)
    out = align_seg_features(seg, (1080, 1920), (135, 240))
    assert out.shape == (1, 1, 135, 240)
    assert torch.allclose(out, torch.ones_like(out))


def test_save_pretrained_round_trip_is_exact(unet, tmp_path):
    adapter = tiny_adapter(unet, seed=5, randomize=True)
    adapter.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = SurgSoraAdapter.from_pretrained(tmp_path / "adapter")
    assert loaded.config.conditioning_embedding_channels == list(tiny_adapter_options()["conditioning_embedding_channels"])
    a, b = adapter.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_encode_conditions_rejects_bad_shapes(unet):
    adapter = tiny_adapter(unet)
    good = dict(image=torch.zeros(1, 3, 64, 64), depth=torch.zeros(1, 1, 64, 64), seg=torch.zeros(1, 256, 64, 64),
                flow=torch.zeros(1, 3, 2, 64, 64))
    for key, bad, msg in [("image", torch.zeros(1, 4, 64, 64), "RGB"), ("image", torch.zeros(1, 3, 60, 64), "multiples"),
                          ("depth", torch.zeros(1, 3, 64, 64), "depth"), ("seg", torch.zeros(1, 64, 64, 64), "SAM"),
                          ("flow", torch.zeros(1, 3, 64, 64), "flow")]:
        with pytest.raises(ValueError, match=msg):
            adapter.encode_conditions(**{**good, key: bad})


# ------------------------------------------------------------------ config.json that still parses but lies

# (what was done to config.json, the edit, words of the one sentence): refused at load, naming the file
CONFIG_CORRUPTIONS = [
    ("a down block cut off", lambda c: c.update(down_block_types=c["down_block_types"][:1],
                                                block_out_channels=c["block_out_channels"][:1]), "does not match"),
    ("another block width", lambda c: c.update(block_out_channels=[32, 128]), "does not match"),
    ("another layer count", lambda c: c.update(layers_per_block=1), "does not match"),
    ("other conditioning channels", lambda c: c.update(conditioning_embedding_channels=[8, 8, 16, 16]),
     "rgb_processor"),
    ("no depth branch", lambda c: c.update(use_depth_branch=False, fusion_type="rgb"), "which the config has no place"),
    ("missing block widths (defaults of SVD-xt)", lambda c: c.pop("block_out_channels"), "does not describe"),
    ("missing everything but the class", lambda c: [c.pop(k) for k in list(c) if k != "_class_name"],
     "conv_in.weight is [32, 8, 3, 3] in the weights but [320, 8, 3, 3] by the config"),
]


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory, unet):
    folder = tmp_path_factory.mktemp("adapters") / "good"
    tiny_adapter(unet).save_pretrained(folder)
    return folder


def test_an_edited_config_is_refused_at_load_against_its_weights(saved_adapter, tmp_path):
    import json
    import shutil

    from surgsora.loading.adapters import load_adapter
    from surgsora.loading.files import ModelFileError

    config = json.loads((saved_adapter / "config.json").read_text())
    for i, (what, edit, words) in enumerate(CONFIG_CORRUPTIONS):
        folder = tmp_path / f"a{i}"
        shutil.copytree(saved_adapter, folder)
        c = json.loads(json.dumps(config))
        edit(c)
        (folder / "config.json").write_text(json.dumps(c))
        with pytest.raises(ModelFileError) as e:
            load_adapter(folder)
        msg = str(e.value)
        assert str(folder / "config.json") in msg and words in msg, (what, msg)
        assert "\n" not in msg and "ignore_mismatched_sizes" not in msg and "restore" in msg, (what, msg)
    assert load_adapter(saved_adapter).config.block_out_channels == [32, 64]  # the intact folder loads


def test_an_adapter_for_another_unet_is_refused_at_load(saved_adapter):
    """Against the UNet it will drive (a diffusers UNet, its config or ComfyUI's unet_config), before any weight."""
    from surgsora.loading.adapters import check_adapter_fits, load_adapter
    from surgsora.loading.files import ModelFileError
    from surgsora.tiny import tiny_unet_config

    def unet_with(**changes):
        return {**tiny_unet_config(), **changes}

    blocks3 = dict(block_out_channels=(32, 64, 64),
                   down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2 + ("DownBlockSpatioTemporal",))
    comfy_svd_xt = dict(model_channels=320, channel_mult=[1, 2, 4, 4], num_res_blocks=2, context_dim=1024,
                        in_channels=8, adm_in_channels=768)
    cases = [
        (unet_with(**blocks3), "down blocks: 2 in the adapter, 3 in this SVD's UNet"),
        (unet_with(block_out_channels=(32, 96)), "block widths (block_out_channels): [32, 64] in the adapter"),
        (unet_with(layers_per_block=1), "layers per down block: [2, 2] in the adapter, [1, 1]"),
        (unet_with(cross_attention_dim=64), "cross-attention widths"),
        (unet_with(in_channels=12), "input channels: 8 in the adapter, 12"),
        (unet_with(projection_class_embeddings_input_dim=192, addition_time_embed_dim=64), "added-time"),
        (comfy_svd_xt, "down blocks: 2 in the adapter, 4 in this SVD's UNet"),
    ]
    for unet_config, words in cases:
        with pytest.raises(ModelFileError) as e:
            load_adapter(saved_adapter, unet=unet_config)
        msg = str(e.value)
        assert words in msg and str(saved_adapter) in msg and "retrain" in msg and "\n" not in msg, msg
    load_adapter(saved_adapter, unet=tiny_unet_config())  # its own UNet: fine
    adapter = load_adapter(saved_adapter)
    adapter.register_to_config(svd_num_frames=25)
    with pytest.raises(ModelFileError, match="25-frame SVD-xt but the SVD given is the 14-frame model"):
        check_adapter_fits(adapter, tiny_unet_config(14))
