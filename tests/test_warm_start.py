"""Warm start of SurgSoraAdapter from MOFA-Video-Traj's ControlNet: full-size plan on meta, tiny real copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from surgsora.model.adapter import SurgSoraAdapter
from surgsora.loading.warm_start import WarmStartError, init_from_mofa, plan_warm_start

from data_paths import MANIFESTS
NEW_GROUPS = ("rgb_processor.seg_proj.", "depth_processor.", "depth_encoder.", "fusion.")


@pytest.fixture(scope="module")
def mofa_manifest():
    return {k: tuple(v) for k, v in json.loads((MANIFESTS / "mofa_traj_controlnet.json").read_text())["tensors"].items()}


def test_full_size_plan_against_the_mofa_manifest(mofa_manifest):
    from accelerate import init_empty_weights

    with init_empty_weights():
        adapter = SurgSoraAdapter()  # SVD-xt trunk, MOFA's conditioning widths
    shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    report = plan_warm_start(shapes, mofa_manifest)
    assert len(report.mapping) == len(mofa_manifest) == 683
    assert len(report.loaded) == 682 and list(report.partial) == ["rgb_processor.conv_out.weight"]
    assert report.mapping["rgb_processor.conv_out.weight"] == "controlnet_cond_embedding.conv_out.weight"
    assert report.mapping["rgb_encoder.zeroconvs.2.weight"] == "flow_encoder.zeroconvs.2.weight"
    assert report.new and all(k.startswith(NEW_GROUPS) for k in report.new)
    assert set(report.new) | set(report.mapping) == set(shapes) and not report.unused


# ------------------------------------------------------------------ tiny MOFA-layout checkpoint
TINY_UNET = dict(
    block_out_channels=(32, 64, 96, 96), layers_per_block=2, in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
    cross_attention_dim=32, num_attention_heads=(2, 4, 4, 4), addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=24, num_frames=14,
)
EMBED = (8, 8, 16, 32)  # MOFA's (16, 32, 96, 256) at tiny width


def _tiny_mofa_state_dict(unet, seed=0) -> dict[str, torch.Tensor]:
    """MOFA FlowControlNet tensors at tiny width, following its definition (from_unet + its extra layers)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.1  # noqa: E731
    trunk = ("conv_in.", "time_embedding.", "add_embedding.", "down_blocks.", "mid_block.")
    # MOFA copies the UNet encoder and then trains it: perturb so a copy from the UNet would not match
    sd = {k: v + rnd(*v.shape) for k, v in unet.state_dict().items() if k.startswith(trunk)}
    ch, n = list(TINY_UNET["block_out_channels"]), len(TINY_UNET["block_out_channels"])
    skips = [ch[0]]
    for i, c in enumerate(ch):
        skips += [c] * TINY_UNET["layers_per_block"] + ([c] if i < n - 1 else [])
    for i, c in enumerate(skips):
        sd[f"controlnet_down_blocks.{i}.weight"], sd[f"controlnet_down_blocks.{i}.bias"] = rnd(c, c, 1, 1), rnd(c)
    sd["controlnet_mid_block.weight"], sd["controlnet_mid_block.bias"] = rnd(ch[-1], ch[-1], 1, 1), rnd(ch[-1])
    p = "controlnet_cond_embedding."
    sd[p + "conv_in.weight"], sd[p + "conv_in.bias"] = rnd(EMBED[0], 3, 3, 3), rnd(EMBED[0])
    j = 0
    for c_in, c_out in zip(EMBED[:-1], EMBED[1:]):
        for a, b in ((c_in, c_in), (c_out, c_in)):
            sd[f"{p}blocks.{j}.weight"], sd[f"{p}blocks.{j}.bias"] = rnd(a, b, 3, 3), rnd(a)
            j += 1
    sd[p + "conv_out.weight"], sd[p + "conv_out.bias"] = rnd(ch[0], EMBED[-1], 3, 3), rnd(ch[0])
    prev = ch[0]
    for i, c in enumerate(ch[:3]):
        sd[f"flow_encoder.encoders.{i}.conv_in.weight"] = rnd(c, prev, 3, 3)
        sd[f"flow_encoder.encoders.{i}.conv_in.bias"] = rnd(c)
        sd[f"flow_encoder.zeroconvs.{i}.weight"], sd[f"flow_encoder.zeroconvs.{i}.bias"] = rnd(c, c, 1, 1), rnd(c)
        prev = c
    return sd


@pytest.fixture(scope="module")
def tiny():
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(**TINY_UNET)
    return unet, _tiny_mofa_state_dict(unet)


def _fresh_adapter(unet):
    torch.manual_seed(1)
    return SurgSoraAdapter.from_unet(unet, conditioning_embedding_channels=EMBED, depth_hidden_channels=(8, 16))


def _save_mofa(folder: Path, sd) -> Path:
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "diffusion_pytorch_model.safetensors"))
    config = json.loads((MANIFESTS / "mofa_traj_controlnet_config.PREDICTED.json").read_text())
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_tiny_mofa_layout_follows_the_manifest(tiny, mofa_manifest):
    _, sd = tiny
    assert set(sd) == set(mofa_manifest)
    assert all(len(sd[k].shape) == len(mofa_manifest[k]) for k in sd)


def test_warm_start_loads_every_overlapping_tensor(tmp_path, tiny):
    unet, mofa = tiny
    adapter = _fresh_adapter(unet)
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    report = init_from_mofa(adapter, _save_mofa(tmp_path / "ckpts" / "controlnet", mofa).parent)  # MOFA's ckpts/
    after = adapter.state_dict()

    assert len(report.loaded) + len(report.partial) == len(mofa) and not report.unused
    for ak, mk in report.mapping.items():
        if ak in report.partial:
            continue
        assert torch.equal(after[ak], mofa[mk]), ak
    w = after["rgb_processor.conv_out.weight"]
    assert torch.equal(w[:, : EMBED[-1]], mofa["controlnet_cond_embedding.conv_out.weight"])
    assert not w[:, EMBED[-1]:].any()
    assert report.new and all(k.startswith(NEW_GROUPS) for k in report.new)
    assert all(torch.equal(after[k], before[k]) for k in report.new)
    assert len(report.notes) == 1 and "num_attention_heads [5, 10, 10, 20]" in report.notes[0]
    summary = report.summary()
    assert f"loaded {len(report.loaded)} tensors" in summary and "partially loaded rgb_processor.conv_out.weight" in summary
    assert f"new (kept as initialised) {len(report.new)} tensors" in summary

    # the RGB stream now computes MOFA's conditioning embedding, whatever the SAM features are
    g = torch.Generator().manual_seed(2)
    image, seg = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, torch.randn(1, 256, 64, 64, generator=g)
    x = F.silu(F.conv2d(image, mofa["controlnet_cond_embedding.conv_in.weight"],
                        mofa["controlnet_cond_embedding.conv_in.bias"], padding=1))
    for j in range(6):
        x = F.silu(F.conv2d(x, mofa[f"controlnet_cond_embedding.blocks.{j}.weight"],
                            mofa[f"controlnet_cond_embedding.blocks.{j}.bias"], padding=1, stride=1 + j % 2))
    expected = F.conv2d(x, mofa["controlnet_cond_embedding.conv_out.weight"],
                        mofa["controlnet_cond_embedding.conv_out.bias"], padding=1)
    with torch.no_grad():
        torch.testing.assert_close(adapter.rgb_processor(image, seg), expected, rtol=1e-5, atol=1e-5)

    config = tmp_path / "ckpts" / "controlnet" / "config.json"
    config.write_text(json.dumps(dict(json.loads(config.read_text()), num_attention_heads=[2, 4, 4, 4])))
    assert init_from_mofa(adapter, config.parent).notes == []  # heads as in the adapter: nothing to note


def test_mismatched_or_foreign_tensors_are_refused(tmp_path, tiny):
    unet, mofa = tiny
    adapter = _fresh_adapter(unet)
    before = {k: v.clone() for k, v in adapter.state_dict().items()}

    bad = dict(mofa, **{"flow_encoder.zeroconvs.1.weight": torch.zeros(64, 32, 1, 1)})
    path = _save_mofa(tmp_path / "bad", bad) / "diffusion_pytorch_model.safetensors"
    with pytest.raises(WarmStartError, match=r"mismatched shapes \(flow_encoder\.zeroconvs\.1\.weight \[64, 32, 1, 1\]"):
        init_from_mofa(adapter, path)
    assert all(torch.equal(v, before[k]) for k, v in adapter.state_dict().items())  # nothing half-loaded

    extra = dict(mofa, **{"controlnet_down_blocks.99.weight": torch.zeros(4, 4, 1, 1)})
    folder = _save_mofa(tmp_path / "extra", extra)
    with pytest.raises(WarmStartError, match=r"no place in the adapter \(controlnet_down_blocks\.99\.weight"):
        init_from_mofa(adapter, folder)
    assert all(torch.equal(v, before[k]) for k, v in adapter.state_dict().items())
    report = init_from_mofa(adapter, folder, strict=False)
    assert report.unused == ["controlnet_down_blocks.99.weight"]

    svd_unet = {k: v for k, v in unet.state_dict().items()}
    with pytest.raises(WarmStartError, match="not a MOFA-Video ControlNet"):
        init_from_mofa(adapter, _save_mofa(tmp_path / "unet", svd_unet))
    with pytest.raises(WarmStartError, match="models/surgsora"):
        init_from_mofa(adapter, tmp_path / "nowhere")
