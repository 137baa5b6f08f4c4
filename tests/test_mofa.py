"""MOFA-Video-Traj's released ControlNet run inside our adapter and pipeline, against an independent reference.

``mofa_reference.py`` re-implements MOFA's published inference (FlowControlNet, its in-loop residual UNet,
its pipeline) from the paper's code, without importing ``surgsora``; ``mofa_fixture.py`` writes a tiny
checkpoint in the released folder layout. Here the project's MOFA mode (one adapter class, one pipeline)
must compute the same numbers, the MOFA warm start of a SurgSora adapter must start from exactly that
function, and bad files must end in one sentence.
"""

from __future__ import annotations

import json

import pytest
import torch

from mofa_fixture import (mofa_heads_for, mofa_keys_from_manifest, mofa_predicted_config, tiny_mofa_svd_components,
                          tiny_mofa_unet_config, write_tiny_mofa_controlnet)
from mofa_reference import RefFlowControlNet, ref_mofa_sample, ref_mofa_step, residual_multiplicities_in_loop

from surgsora import SurgSoraAdapter, SurgSoraPipeline
from surgsora.loading.adapters import load_adapter
from surgsora.loading.io import ModelFileError
from surgsora.loading.mofa import (MOFA, MOFA_HEADS, MOFA_SEMANTICS, SURGSORA, adapter_key, adapter_kind, kind_of_keys,
                                   mofa_adapter_config)
from surgsora.loading.warm_start import WarmStartError, init_from_mofa, plan_warm_start
from surgsora.model.unet import unet_forward

FRAMES, H, W = 4, 128, 128
TOL = 1e-5  # relative to max(1, |reference|)


@pytest.fixture(scope="module")
def parts():
    return tiny_mofa_svd_components(seed=0, num_frames=FRAMES)


@pytest.fixture(scope="module")
def mofa_dir(tmp_path_factory, parts):
    return write_tiny_mofa_controlnet(tmp_path_factory.mktemp("ckpts") / "controlnet",
                                      tiny_mofa_unet_config(FRAMES), seed=3)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(11)
    image = torch.rand(1, 3, H, W, generator=g)
    # a smooth flow with sub-pixel parts, up to ~12 px, so every scale really moves features
    base = torch.randn(1, FRAMES - 1, 2, 4, 4, generator=g) * 6
    flow = torch.nn.functional.interpolate(base.flatten(0, 1), size=(H, W), mode="bicubic",
                                           align_corners=False).view(1, FRAMES - 1, 2, H, W)
    return image, flow


def _max(a, b):
    """Largest difference, relative to the reference's scale when that exceeds 1 (float32 round-off grows
    with the values: residuals of random tiny weights reach ~20)."""
    b = b.float()
    return (a.float() - b).abs().max().item() / max(1.0, b.abs().max().item())


# ------------------------------------------------------------------------------------ the released layout

def test_load_plan_uses_every_tensor_of_the_full_size_checkpoint():
    """On the meta device: the adapter built for MOFA's released config takes each of the 683 tensors whole."""
    predicted = mofa_predicted_config()
    manifest = mofa_keys_from_manifest()
    with torch.device("meta"):
        adapter = SurgSoraAdapter(**mofa_adapter_config(predicted, manifest["conv_in.weight"][0]))
    shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    report = plan_warm_start(shapes, manifest, "manifest", strict=True)
    assert len(manifest) == 683 and len(report.loaded) == 683
    assert report.new == [] and report.partial == {} and report.unused == []
    cfg = adapter.config
    assert list(cfg.num_attention_heads) == list(MOFA_HEADS)  # what MOFA's code runs, not the SVD UNet's
    assert adapter.residual_counts == [4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1]
    assert (cfg.condition_injection, cfg.residual_multiplicity, cfg.flow_resize, cfg.splat_normalize) == \
        ("mofa", "mofa", "nearest", "softsplat")
    assert list(cfg.fixed_time_ids) == [6, 128, 0.02] and cfg.clip_normalize is False
    assert not adapter.needs_depth and not adapter.needs_seg and cfg.svd_num_frames == 25


def test_from_mofa_takes_the_folder_the_folder_above_or_the_file(mofa_dir, tmp_path):
    ref = RefFlowControlNet.from_pretrained(mofa_dir)
    for path in (mofa_dir, mofa_dir.parent, mofa_dir / "diffusion_pytorch_model.safetensors"):
        if path.is_file():  # the file alone carries no widths: copy it beside its config under another name
            continue
        adapter = SurgSoraAdapter.from_mofa(path)
        assert adapter_kind(path) == MOFA
        ours = adapter.state_dict()
        for key, value in ref.state_dict().items():
            name = key.replace("controlnet_cond_embedding.", "rgb_processor.").replace("flow_encoder.", "rgb_encoder.")
            assert torch.equal(ours[name], value), key
        assert list(adapter.config.num_attention_heads) == mofa_heads_for(tiny_mofa_unet_config(FRAMES))
    # saved and reloaded, the adapter keeps its MOFA mode
    adapter.save_pretrained(tmp_path / "saved")
    again = SurgSoraAdapter.from_pretrained(tmp_path / "saved")
    assert again.config.condition_injection == "mofa" and list(again.config.fixed_time_ids) == [6, 128, 0.02]
    assert adapter_kind(tmp_path / "saved") == SURGSORA


def _header_only(path, names):
    """A safetensors file with these tensor names (one float each): enough for anything that reads headers."""
    header = json.dumps({n: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                         for i, n in enumerate(names)}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4 * len(names)))
    return path


def test_one_detection_tells_mofa_from_a_surgsora_adapter(tmp_path):
    """adapter_kind reads config.json and safetensors headers only; the loaders and train's checks all use it."""
    released = list(mofa_keys_from_manifest())
    renamed = [adapter_key(k) for k in released]  # the same tensors under the adapter's names
    assert None not in renamed and kind_of_keys(released) == MOFA and kind_of_keys(renamed) == SURGSORA
    assert kind_of_keys(released + ["rgb_processor.seg_proj.weight"]) == SURGSORA  # an adapter's own names win
    assert kind_of_keys(["conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"]) is None  # a bare UNet copy

    mofa = tmp_path / "ckpts" / "controlnet"
    _header_only(mofa / "diffusion_pytorch_model.safetensors", released)
    (mofa / "config.json").write_text(json.dumps({"_class_name": "FlowControlNet"}))
    ours = tmp_path / "adapter"
    _header_only(ours / "diffusion_pytorch_model.safetensors", renamed)
    (ours / "config.json").write_text(json.dumps({"_class_name": "SurgSoraAdapter"}))
    other = tmp_path / "unet"
    (other / "config.json").parent.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "UNetSpatioTemporalConditionModel"}))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((mofa / "diffusion_pytorch_model.safetensors").read_bytes()[:100])
    kinds = {
        mofa: MOFA, mofa.parent: MOFA,  # its folder, or the folder above it
        _header_only(tmp_path / "mofa_traj_controlnet.safetensors", released): MOFA,  # the file, under any name
        ours: SURGSORA,
        ours / "diffusion_pytorch_model.safetensors": None,  # an adapter is a folder (its config says how to build it)
        other: None, cut: None, tmp_path / "missing": None, tmp_path / "empty.pth": None,
    }
    (tmp_path / "empty.pth").write_bytes(b"")
    assert {path: adapter_kind(path) for path in kinds} == kinds


# ------------------------------------------------------------------------------------ equal to the reference

def test_mofa_mode_step_equals_the_published_step(parts, mofa_dir, inputs):
    """Residuals (with MOFA's multiplicity) and the guided UNet output of one CFG step, against the reference."""
    image, flow = inputs
    ref = RefFlowControlNet.from_pretrained(mofa_dir)
    adapter = SurgSoraAdapter.from_mofa(mofa_dir)
    pipe = SurgSoraPipeline(**parts, adapter=adapter)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(3)
    t = scheduler.timesteps[0]
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(1, FRAMES, 4, H // 8, W // 8, generator=g) * scheduler.init_noise_sigma
    embeddings = torch.randn(1, 1, parts["unet"].config.cross_attention_dim, generator=g)
    image_latents = torch.randn(1, 4, H // 8, W // 8, generator=g)
    guidance = torch.linspace(1.0, 3.0, FRAMES)
    trace = {}
    ref_mofa_step(parts["unet"], ref, latents, t, scheduler, embeddings, image_latents, image * 2 - 1, flow,
                  guidance, trace=trace)

    conditions = pipe.prepare_conditions(image, None, None, flow)  # once, shared by both CFG halves
    down, mid = adapter(trace["model_input"], t, trace["encoder_hidden_states"], trace["added_time_ids"], conditions)
    multiplicity = residual_multiplicities_in_loop([2, 2, 2, 2])
    assert adapter.residual_counts == multiplicity
    for ours, theirs, m in zip(down, trace["down"], multiplicity):
        assert _max(ours, theirs * m) < TOL
        assert theirs.abs().max() > 1e-3  # the residuals are real, not zeros on both sides
    assert _max(mid, trace["mid"]) < TOL
    noise = unet_forward(parts["unet"], trace["model_input"], t, trace["encoder_hidden_states"],
                         trace["added_time_ids"], down, mid)
    uncond, cond = noise.chunk(2)
    assert _max(uncond, trace["noise_pred_uncond"]) < TOL and _max(cond, trace["noise_pred_cond"]) < TOL
    # ... and MOFA's residuals change the prediction a lot more than the tolerance
    plain = unet_forward(parts["unet"], trace["model_input"], t, trace["encoder_hidden_states"],
                         trace["added_time_ids"]).chunk(2)[1]
    assert _max(plain, trace["noise_pred_cond"]) > 100 * TOL


def test_mofa_pipeline_equals_the_published_pipeline(parts, mofa_dir, inputs):
    """The whole sampler (CLIP without normalisation, fixed time ids, noise order, CFG) over 3 steps."""
    image, flow = inputs
    ref = RefFlowControlNet.from_pretrained(mofa_dir)
    pipe = SurgSoraPipeline(**parts, adapter=SurgSoraAdapter.from_mofa(mofa_dir))
    kw = dict(num_inference_steps=3, min_guidance_scale=1.0, max_guidance_scale=2.5, noise_aug_strength=0.02)
    theirs = ref_mofa_sample(parts["unet"], ref, parts["vae"], parts["image_encoder"], pipe.scheduler, image, flow,
                             fps=7, motion_bucket_id=127, generator=torch.Generator().manual_seed(42), **kw)
    # fps / motion bucket are ignored under MOFA's fixed time ids, as in the published pipeline
    ours = pipe(image, flow=flow, fps=20, motion_bucket_id=3, generator=torch.Generator().manual_seed(42),
                output_type="latent", **kw)
    assert _max(ours, theirs) < TOL
    plain = SurgSoraPipeline(**parts)(image, num_frames=FRAMES, generator=torch.Generator().manual_seed(42),
                                      output_type="latent", **kw)
    assert _max(plain, theirs) > 100 * TOL


def test_warm_started_surgsora_adapter_computes_mofa_at_step_zero(parts, mofa_dir, inputs):
    """--init-from-mofa: depth stream, SAM channels and MSF contribute nothing until trained."""
    from surgsora.tiny import tiny_adapter_options

    image, flow = inputs
    unet = parts["unet"]
    mofa = SurgSoraAdapter.from_mofa(mofa_dir)
    warm = SurgSoraAdapter.from_unet(unet, **tiny_adapter_options(), **MOFA_SEMANTICS,
                                     num_attention_heads=list(mofa.config.num_attention_heads))
    report = init_from_mofa(warm, mofa_dir)
    assert report.notes == [] and set(report.partial) == {"rgb_processor.conv_out.weight"}
    g = torch.Generator().manual_seed(9)
    depth = torch.rand(1, 1, H, W, generator=g)
    seg = torch.randn(1, 256, 64, 64, generator=g)
    pixels = image * 2 - 1
    c_mofa = mofa.encode_conditions(pixels, None, None, flow)
    c_warm = warm.encode_conditions(pixels, depth, seg, flow)
    for a, b in zip(c_mofa, c_warm):
        assert _max(a, b) < TOL
    sample = torch.randn(2, FRAMES, 8, H // 8, W // 8, generator=g)
    ehs = torch.randn(2, 1, unet.config.cross_attention_dim, generator=g)
    ids = torch.tensor([[6.0, 128.0, 0.02]] * 2)
    d1, m1 = mofa(sample, torch.tensor(1.3), ehs, ids, c_mofa)
    d2, m2 = warm(sample, torch.tensor(1.3), ehs, ids, c_warm)
    errors = [_max(a, b) for a, b in zip(d1, d2)] + [_max(m1, m2)]
    assert max(errors) < TOL, errors
    assert max(r.abs().max().item() for r in d1) > 1e-3


# ------------------------------------------------------------------------------------ bad input

def test_wrong_files_and_inputs_end_in_one_sentence(parts, mofa_dir, inputs, tmp_path):
    from surgsora.tiny import tiny_adapter, tiny_svd_components

    image, flow = inputs
    # a SurgSora adapter where MOFA is expected
    surg = tiny_adapter(tiny_svd_components()["unet"])
    surg.save_pretrained(tmp_path / "surgsora_adapter")
    with pytest.raises(WarmStartError, match="is a SurgSora adapter.*from_pretrained"):
        SurgSoraAdapter.from_mofa(tmp_path / "surgsora_adapter")
    alone = tmp_path / "alone" / "weights.safetensors"  # its weights without their config: told by tensor names
    alone.parent.mkdir()
    alone.write_bytes((tmp_path / "surgsora_adapter" / "diffusion_pytorch_model.safetensors").read_bytes())
    with pytest.raises(WarmStartError, match="is a SurgSora adapter.*from_pretrained"):
        SurgSoraAdapter.from_mofa(alone)
    # MOFA where a SurgSora adapter is expected: the one loader tells them apart
    assert load_adapter(mofa_dir).config.condition_injection == "mofa"
    assert load_adapter(tmp_path / "surgsora_adapter").config.condition_injection == "once"
    # neither, and a corrupt config
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="neither a SurgSora adapter folder .* nor MOFA"):
        load_adapter(tmp_path / "empty")
    bad = tmp_path / "bad_config"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not a readable adapter config"):
        load_adapter(bad)
    # a truncated download
    cut = tmp_path / "cut" / "controlnet"
    cut.mkdir(parents=True)
    (cut / "config.json").write_text((mofa_dir / "config.json").read_text())
    data = (mofa_dir / "diffusion_pytorch_model.safetensors").read_bytes()
    (cut / "diffusion_pytorch_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WarmStartError, match="truncated"):
        SurgSoraAdapter.from_mofa(cut)
    # MOFA's weights with an SVD of another frame count (its config says which it was trained with)
    other = json.loads((mofa_dir / "config.json").read_text())
    assert other["num_frames"] == FRAMES
    wrong = tiny_mofa_svd_components(seed=0, num_frames=FRAMES + 2)
    with pytest.raises(ValueError, match=f"trained on the {FRAMES}-frame SVD.*{FRAMES + 2}-frame"):
        SurgSoraPipeline(**wrong, adapter=SurgSoraAdapter.from_mofa(mofa_dir))
    # flow missing or of the wrong length
    pipe = SurgSoraPipeline(**parts, adapter=SurgSoraAdapter.from_mofa(mofa_dir))
    with pytest.raises(ValueError, match="this adapter needs flow"):
        pipe(image, num_inference_steps=1)
    with pytest.raises(ValueError, match="flow has 3 steps but num_frames=6 needs 5"):
        pipe(image, flow=flow, num_frames=6, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"flow must be \[B,T-1,2,H,W\]"):
        pipe.prepare_conditions(image, None, None, flow[0])
    # MOFA's injection needs SVD-xt's layout (equal widths of the last two blocks)
    with pytest.raises(ValueError, match="widths must match"):
        SurgSoraAdapter.from_unet(tiny_svd_components()["unet"], **MOFA_SEMANTICS)


def test_generate_picks_mofa_when_it_is_the_only_adapter(mofa_dir, tmp_path):
    """CLI model resolution: MOFA needs no SAM or depth file; a trained SurgSora adapter is preferred."""
    import shutil

    from surgsora.cli import MissingModels, resolve_generate_models

    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "svd_xt.safetensors").write_bytes(b"")
    shutil.copytree(mofa_dir, models / "surgsora" / "controlnet")
    found = resolve_generate_models(models, decoder="analytic")
    assert found["adapter"] == models / "surgsora" / "controlnet" and "sam" not in found and "depth" not in found
    from surgsora.tiny import tiny_adapter, tiny_svd_components

    tiny_adapter(tiny_svd_components()["unet"]).save_pretrained(models / "surgsora" / "my_adapter")
    with pytest.raises(MissingModels, match="Segment Anything"):  # the SurgSora adapter needs SAM and depth
        resolve_generate_models(models, decoder="analytic")
    found = resolve_generate_models(models, adapter="controlnet", decoder="analytic")
    assert found["adapter"].name == "controlnet"
