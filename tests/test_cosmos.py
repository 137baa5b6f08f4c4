"""Cosmos-H-Surgical without ComfyUI: the key/shape list the loader requires against the manifest of the published
2B architecture, the bad files it refuses (one sentence each, naming the file to use), the Reason1 embedding maths
and the dual-clock presets for its 35-step schedule. The model itself runs in tests/integration/test_cosmos.py."""

from __future__ import annotations

import json

import pytest
import torch

from data_paths import MANIFESTS
from surgsora.loading.cosmos import (ARCH_2B, PREDICT_FILE, CosmosArch, check_state_dict, expected_tensors,
                                     load_cosmos_state_dict, normalise_keys, reason1_embedding, reason1_prompt)
from surgsora.loading.io import ModelFileError
from surgsora.sampling.dual_clock import COSMOS_PRESETS, COSMOS_STEPS, dual_clock_indices

MANIFEST = MANIFESTS / "cosmos_h_surgical_predict_2b.json"
TINY = CosmosArch(blocks=2, channels=64, head_dim=32, crossattn_proj_in=96)


def _file_state(arch: CosmosArch = ARCH_2B, device: str = "meta") -> dict:
    """A state dict as the training code saves it: ``net.`` prefix, RoPE buffers, TransformerEngine state."""
    sd = {f"net.{k}": torch.empty(s, device=device) for k, s in expected_tensors(arch).items()}
    sd["net.pos_embedder.seq"] = torch.empty(240, device=device)
    sd["net.pos_embedder.dim_temporal_range"] = torch.empty(22, device=device)
    sd["net.blocks.0.self_attn.attn_op._extra_state"] = torch.empty(0, device=device)
    return sd


def test_the_loader_requires_exactly_the_published_2b_layout():
    manifest = json.loads(MANIFEST.read_text())
    published = {k: tuple(v) for k, v in manifest["tensors"].items()}
    expected = expected_tensors(ARCH_2B)
    assert sorted(set(published) - set(expected)) == [] and sorted(set(expected) - set(published)) == []
    assert expected == published and list(expected) == list(published)  # shapes and ComfyUI's key order
    assert published["crossattn_proj.0.weight"] == (1024, 100352) and published["crossattn_proj.0.bias"] == (1024,)
    assert published["x_embedder.proj.1.weight"] == (2048, 72)  # (16 latent + condition mask + padding mask) x 4
    assert manifest["num_tensors"] == 569 and manifest["total_params"] == 2_059_174_912  # x 2 bytes (bf16) = 4.1 GB
    # the file's own form (net. prefix, RoPE buffers, TE state) normalises to it and is accepted as the 2B
    sd = normalise_keys(_file_state())
    assert {k: tuple(v.shape) for k, v in sd.items()} == published
    assert check_state_dict(sd) == ARCH_2B


def test_an_ema_copy_wins_over_the_training_network():
    sd = {**{k.replace("net.", "net_ema.", 1): v for k, v in _file_state(TINY).items()},
          "net.blocks.0.mlp.layer1.weight": torch.empty(3, 3, device="meta")}
    assert check_state_dict(normalise_keys(sd)) == TINY


def _refusal(sd: dict, name: str = "x.pt") -> str:
    with pytest.raises(ModelFileError) as e:
        check_state_dict(normalise_keys(sd), name)
    message = str(e.value)
    assert "\n" not in message and message.count(". ") == 0 and PREDICT_FILE in message
    return message


def test_other_cosmos_models_and_wrong_layouts_are_one_sentence():
    tiny = _file_state(TINY)
    assert "Cosmos Transfer" in _refusal({**tiny, "net.control_blocks.0.mlp.layer1.weight": torch.empty(1)})
    assert "Cosmos 3" in _refusal({"model.language_model.layers.0.mlp.up_proj.weight": torch.empty(2, 2)})
    assert "not a Cosmos Predict2.5 DiT" in _refusal({"encoder.conv_in.weight": torch.empty(2)})
    t2w = {k: v for k, v in tiny.items()}
    t2w["net.x_embedder.proj.1.weight"] = torch.empty(64, 68, device="meta")  # 16 + padding mask: text-to-world
    assert "without the condition-mask input" in _refusal(t2w)
    missing = {k: v for k, v in tiny.items() if k != "net.blocks.1.mlp.layer2.weight"}
    assert "keys: 1 missing (blocks.1.mlp.layer2.weight)" in _refusal(missing)
    wrong = {**tiny, "net.crossattn_proj.0.bias": torch.empty(7, device="meta")}
    assert "keys: 1 of the wrong shape (crossattn_proj.0.bias)" in _refusal(wrong)


class _NotWeights:  # a pickled object: weights_only refuses to run its code
    pass


def test_bad_files_are_one_sentence(tmp_path):
    good = {k: torch.zeros(v.shape) for k, v in _file_state(TINY).items()}
    torch.save(good, tmp_path / "tiny.pt")
    assert load_cosmos_state_dict(tmp_path / "tiny.pt")[1] == TINY
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "tiny.pt").read_bytes()[:4096])
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "settings.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"model": _NotWeights()}, tmp_path / "object.pt")
    torch.save({**good, "net.control_embedder.proj.1.weight": torch.zeros(1)}, tmp_path / "transfer.pt")
    expect = {"truncated.pt": "is truncated", "settings.pt": "is not a readable state dict (no tensors)",
              "list.pt": "is not a readable state dict (no tensors)", "object.pt": "pickled Python objects",
              "transfer.pt": "Cosmos Transfer"}
    for name, words in expect.items():
        with pytest.raises(ModelFileError) as e:
            load_cosmos_state_dict(tmp_path / name)
        message = str(e.value)
        assert words in message and name in message and PREDICT_FILE in message, message
        assert "\n" not in message and ". " not in message, message


def test_reason1_embedding_is_every_layer_normalised_and_concatenated():
    g = torch.Generator().manual_seed(0)
    layers, tokens, width = 3, 5, 16
    hidden = torch.randn(2, layers, tokens, width, generator=g) * 3 + torch.arange(layers)[None, :, None, None]
    emb = reason1_embedding(hidden)
    assert emb.shape == (2, tokens, layers * width)
    # independent: per layer and token, subtract the mean and divide by the unbiased std (+ 1e-8), then concatenate
    ref = torch.zeros(2, tokens, layers * width)
    for b in range(2):
        for t in range(tokens):
            for i in range(layers):
                v = hidden[b, i, t].double()
                mean = v.sum() / width
                std = ((v - mean).pow(2).sum() / (width - 1)).sqrt()
                ref[b, t, i * width:(i + 1) * width] = ((v - mean) / (std + 1e-8)).float()
    assert (emb - ref).abs().max() < 1e-5
    chunks = emb.reshape(2, tokens, layers, width)
    assert chunks.mean(-1).abs().max() < 1e-5 and (chunks.std(-1) - 1).abs().max() < 1e-5


def test_reason1_prompt_is_the_trainings_chat():
    text = reason1_prompt("a grasper retracts the gallbladder")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant who will provide prompts to an image "
                           "generator.<|im_end|>\n<|im_start|>user\na grasper retracts the gallbladder<|im_end|>\n")
    assert "assistant\n" not in text.split("<|im_start|>user")[1]  # no generation prompt


def test_dual_clock_presets_for_the_35_step_schedule():
    steps = [dual_clock_indices(*pair, COSMOS_STEPS) for pair in COSMOS_PRESETS.values()]
    assert COSMOS_STEPS == 35 and steps == [(2, 5), (1, 4)]
