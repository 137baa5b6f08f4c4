"""Weight loading of every evaluation network from random weights saved under the real names and layouts."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from surgsora.loading.io import ModelFileError
from surgsora.eval import networks as N
from surgsora.eval.weights import SPECS, MissingWeightsError, resolve_weights
from eval_fakes import TinyTorchScriptI3D as _TinyTorchScriptI3D


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory):
    """A random FID Inception in pytorch-fid's layout, i.e. torchvision's Inception3(1008 classes, no aux)."""
    torch.manual_seed(0)
    tv = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    for m in tv.modules():  # He init + unit BatchNorm statistics: activations keep their scale through 94 layers
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.8, 1.2)
            m.running_mean.normal_(0.0, 0.05)
    nn.init.normal_(tv.fc.weight, std=0.05)
    sd = {k: v for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}  # TF conversion has none
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(sd, path)
    return path


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16)
    folder = tmp_path_factory.mktemp("clip") / "clip-vit-tiny"
    CLIPVisionModelWithProjection(cfg).save_pretrained(folder)
    return folder


def _videomae_original_state_dict(hidden=128, depth=2, mlp=256, patch=14, tubelet=2, classes=174, seed=0,
                                  device="cpu"):
    """A VideoMAE-v2 checkpoint in its original (cd-fvd) layout, random values (or meta tensors)."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape, scale=0.05):
        if device == "meta":
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=g) * scale

    sd = {"patch_embed.proj.weight": t(hidden, 3, tubelet, patch, patch), "patch_embed.proj.bias": t(hidden)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({
            p + "norm1.weight": 1 + t(hidden), p + "norm1.bias": t(hidden),
            p + "attn.qkv.weight": t(3 * hidden, hidden, scale=0.2), p + "attn.q_bias": t(hidden),
            p + "attn.v_bias": t(hidden), p + "attn.proj.weight": t(hidden, hidden, scale=0.1),
            p + "attn.proj.bias": t(hidden), p + "norm2.weight": 1 + t(hidden), p + "norm2.bias": t(hidden),
            p + "mlp.fc1.weight": t(mlp, hidden, scale=0.1), p + "mlp.fc1.bias": t(mlp),
            p + "mlp.fc2.weight": t(hidden, mlp, scale=0.1), p + "mlp.fc2.bias": t(hidden),
        })
    sd.update({"fc_norm.weight": 1 + t(hidden), "fc_norm.bias": t(hidden), "head.weight": t(classes, hidden),
               "head.bias": t(classes)})
    return sd


def _videomae_reference(sd, clips, heads):
    """Independent plain-torch forward of the original VideoMAE-v2 ``forward_features`` (for cross-checking)."""
    w = sd["patch_embed.proj.weight"]
    x = F.conv3d(clips, w, sd["patch_embed.proj.bias"], stride=w.shape[2:]).flatten(2).transpose(1, 2)
    n, d = x.shape[1:]
    pos = torch.tensor([[p / 10000 ** (2 * (j // 2) / d) for j in range(d)] for p in range(n)], dtype=torch.float64)
    pos[:, 0::2], pos[:, 1::2] = pos[:, 0::2].sin(), pos[:, 1::2].cos()
    x = x + pos.float()
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b = lambda name: sd[f"blocks.{i}.{name}"]  # noqa: E731
        h = F.layer_norm(x, (d,), b("norm1.weight"), b("norm1.bias"), eps=1e-6)
        qkv = F.linear(h, b("attn.qkv.weight"), torch.cat([b("attn.q_bias"), torch.zeros(d), b("attn.v_bias")]))
        q, k, v = qkv.reshape(x.shape[0], n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        ctx = (att @ v).transpose(1, 2).reshape(x.shape[0], n, d)
        x = x + F.linear(ctx, b("attn.proj.weight"), b("attn.proj.bias"))
        h = F.layer_norm(x, (d,), b("norm2.weight"), b("norm2.bias"), eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, b("mlp.fc1.weight"), b("mlp.fc1.bias"))), b("mlp.fc2.weight"),
                         b("mlp.fc2.bias"))
    return F.layer_norm(x.mean(1), (d,), sd["fc_norm.weight"], sd["fc_norm.bias"], eps=1e-6)


# -- FID Inception --------------------------------------------------------------------------------


def test_tf1_bilinear_resize_known_answers():
    x = torch.tensor([[[[0.0, 10.0, 20.0]]]])
    # TF1 align_corners=False: source = dst * in/out, right neighbour clamped -> last value repeats
    up = N.resize_bilinear_tf1(x, (1, 6))
    torch.testing.assert_close(up, torch.tensor([[[[0.0, 5.0, 10.0, 15.0, 20.0, 20.0]]]]))
    down = N.resize_bilinear_tf1(torch.arange(8.0).view(1, 1, 1, 8), (1, 4))
    torch.testing.assert_close(down, torch.tensor([[[[0.0, 2.0, 4.0, 6.0]]]]))  # point samples, no antialias
    same = torch.rand(2, 3, 5, 7)
    torch.testing.assert_close(N.resize_bilinear_tf1(same, (5, 7)), same)


def test_fid_inception_has_the_pytorch_fid_layout():
    ours = {k: tuple(v.shape) for k, v in N.FIDInceptionV3().state_dict().items()}
    tv = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    assert ours == {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    assert ours["fc.weight"] == (1008, 2048) and ours["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)


def test_fid_inception_loads_real_file_name_and_computes_features(inception_file):
    model = N.load_fid_inception(inception_file)
    ref = torch.load(inception_file, weights_only=True)
    torch.testing.assert_close(model.fc.weight, ref["fc.weight"])
    torch.testing.assert_close(model.Mixed_6b.branch7x7_2.bn.running_var, ref["Mixed_6b.branch7x7_2.bn.running_var"])
    ext = N.InceptionExtractor(model, batch_size=2)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    pool, logits = ext(frames)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008) and pool.dtype == np.float64
    assert (pool >= 0).all() and np.isfinite(logits).all() and not np.allclose(pool[0], pool[1])
    # logits are the bias-free fc output of the pool features (torch-fidelity's logits_unbiased)
    np.testing.assert_allclose(logits, pool @ ref["fc.weight"].double().numpy().T, rtol=1e-4, atol=1e-4)


def test_fid_inception_rejects_wrong_files(tmp_path):
    tv = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)  # ImageNet, 1000 classes
    torch.save(tv.state_dict(), tmp_path / "inception_v3_google.pth")
    with pytest.raises(ModelFileError, match="not the FID Inception"):
        N.load_fid_inception(tmp_path / "inception_v3_google.pth")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ModelFileError, match="missing tensors"):
        N.load_fid_inception(tmp_path / "other.pth")


# -- I3D ------------------------------------------------------------------------------------------


def test_i3d_has_the_pytorch_i3d_layout():
    sd = N.InceptionI3D().state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    # Facts of the published pytorch-i3d / TATS network (Kinetics-400 logits over 1024 Mixed_5c channels).
    assert shapes["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert shapes["Conv3d_2c_3x3.conv3d.weight"] == (192, 64, 3, 3, 3)
    assert shapes["Mixed_3b.b1b.conv3d.weight"] == (128, 96, 3, 3, 3)
    assert shapes["Mixed_4f.b3b.conv3d.weight"] == (128, 528, 1, 1, 1)
    assert shapes["Mixed_5c.b0.bn.running_var"] == (384,)
    assert shapes["logits.conv3d.weight"] == (400, 1024, 1, 1, 1) and shapes["logits.conv3d.bias"] == (400,)
    assert "logits.bn.weight" not in shapes
    assert sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var",
                                                                      "num_batches_tracked"))) == 12697264


def test_i3d_state_dict_loads_with_weights_only_and_gives_400_features(tmp_path):
    torch.manual_seed(0)
    net = N.InceptionI3D()
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(net.state_dict(), path)
    ext = N.load_i3d(path)
    assert not ext.torchscript
    torch.testing.assert_close(ext.model.Mixed_4c.b2b.conv3d.weight, net.Mixed_4c.b2b.conv3d.weight)
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (1, 9, 32, 32, 3), dtype=np.uint8)  # 9 frames: the shortest I3D accepts
    x = ext.preprocess(clips)  # the documented preprocessing: bilinear to 224, [-1, 1], [B, 3, T, H, W]
    frames = torch.from_numpy(clips[0]).permute(0, 3, 1, 2).float()
    expected = F.interpolate(frames, size=(224, 224), mode="bilinear", align_corners=False) / 127.5 - 1
    torch.testing.assert_close(x, expected.permute(1, 0, 2, 3)[None])
    feats = ext(clips)
    assert feats.shape == (1, 400) and np.isfinite(feats).all() and feats.std() > 0




def test_i3d_torchscript_needs_explicit_opt_in(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    with pytest.warns(FutureWarning):  # torch.jit.script is deprecated; only the test makes such a file
        torch.jit.script(_TinyTorchScriptI3D()).save(str(path))
    assert N.is_torchscript_archive(path)
    with pytest.raises(ModelFileError, match="--allow-torchscript"):
        N.load_i3d(path)
    ext = N.load_i3d(path, allow_torchscript=True)
    clips = np.full((2, 16, 8, 8, 3), 255, np.uint8)
    clips[1] = 0
    feats = ext(clips)
    proj = ext.model.proj
    expected = torch.stack([proj.weight.sum(1) + proj.bias, -proj.weight.sum(1) + proj.bias]).double().detach()
    np.testing.assert_allclose(feats, expected.numpy(), rtol=1e-5)  # got rescale=True and [B, 3, T, H, W] uint8


# -- VideoMAE-v2 (CD-FVD) -----------------------------------------------------------------------------


def test_videomae_loads_cd_fvd_layout_and_matches_independent_forward(tmp_path):
    sd = _videomae_original_state_dict()
    path = tmp_path / "vit_g_hybrid_pt_1200e_ssv2_ft.pth"
    torch.save({"module": sd}, path)  # the released checkpoint wraps the weights in "module"
    ext = N.load_videomae(path)
    assert ext.model.config.hidden_size == 128 and ext.model.config.num_hidden_layers == 2
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (1, 16, 40, 40, 3), dtype=np.uint8)
    feats = ext(clips)
    with torch.no_grad():
        x = torch.from_numpy(clips).reshape(16, 40, 40, 3).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        ref = _videomae_reference(sd, x.view(1, 16, 3, 224, 224).transpose(1, 2), heads=2).double().numpy()
    assert feats.shape == (1, 128)
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-4)
    # Clips of another length use positions interpolated in time (cd-fvd's rule) instead of failing.
    assert ext(clips[:, :8]).shape == (1, 128)


def test_videomae_vit_g_layout_on_meta_device():
    sd = _videomae_original_state_dict(hidden=1408, depth=40, mlp=6144, device="meta")
    cfg = N.videomae_config_from_state_dict(sd)
    assert cfg == dict(hidden_size=1408, num_layers=40, num_heads=16, intermediate_size=6144, patch_size=14,
                       tubelet_size=2)
    with torch.device("meta"):
        model = N.VideoMAEv2Features(**cfg)
    N._check_and_load(model, N.convert_videomae_state_dict(sd), "vit_g.pth", "ViT-g", assign=True)
    assert 1.0e9 < sum(p.numel() for p in model.parameters()) < 1.02e9


def test_videomae_rejects_layer_scale_checkpoints(tmp_path):
    sd = _videomae_original_state_dict()
    sd["blocks.0.gamma_1"] = torch.ones(128)
    torch.save(sd, tmp_path / "vit.pth")
    with pytest.raises(ModelFileError, match="unexpected tensors such as blocks.0.gamma_1"):
        N.load_videomae(tmp_path / "vit.pth")


# -- CLIP -------------------------------------------------------------------------------------------


def test_clip_loads_from_local_folder_and_embeds_frames(clip_folder):
    ext = N.load_clip(clip_folder)
    assert ext.size == 32
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    emb = ext(frames)
    assert emb.shape == (3, 16)
    with torch.no_grad():
        direct = ext.model(pixel_values=ext.preprocess(frames)).image_embeds.double().numpy()
    np.testing.assert_allclose(emb, direct, rtol=1e-5, atol=1e-6)
    x = ext.preprocess(frames[:1])
    assert x.shape == (1, 3, 32, 32)  # shorter side to 32, centre crop
    static = np.repeat(frames[:1], 3, axis=0)
    from surgsora.eval.metrics import frame_consistency

    assert frame_consistency(ext(static)) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ModelFileError, match="could not be loaded as a CLIP"):
        N.load_clip(clip_folder.parent)


# -- clips and weight lookup ------------------------------------------------------------------------


def test_prepare_clip_follows_cd_fvd_loader():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (20, 90, 160, 3), dtype=np.uint8)
    clip = N.prepare_clip(frames, 16)
    assert clip.shape == (16, 256, 256, 3) and clip.dtype == np.uint8
    square = rng.integers(0, 256, (16, 256, 256, 3), dtype=np.uint8)
    np.testing.assert_array_equal(N.prepare_clip(square, 16), square)  # already 256: untouched
    with pytest.raises(ValueError, match="needs 16 frames"):
        N.prepare_clip(frames[:10], 16)


def test_weight_lookup_flag_env_cache_and_missing_messages(tmp_path, monkeypatch, inception_file):
    for s in SPECS.values():
        monkeypatch.delenv(s.env, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeightsError) as e:
        resolve_weights("inception")
    msg = str(e.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in msg and "--inception" in msg and "https://" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence
    with pytest.raises(MissingWeightsError, match=r"i3d_pretrained_400\.pt.*not found at .*nope"):
        resolve_weights("i3d", tmp_path / "nope" / "i3d_pretrained_400.pt")
    assert resolve_weights("inception", inception_file) == inception_file
    assert resolve_weights("inception", inception_file.parent) == inception_file  # folder holding the file
    monkeypatch.setenv("SURGSORA_INCEPTION_WEIGHTS", str(inception_file))
    assert resolve_weights("inception") == inception_file
    monkeypatch.delenv("SURGSORA_INCEPTION_WEIGHTS")
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "weights-inception-2015-12-05-6726825d.pth").write_bytes(inception_file.read_bytes())
    assert resolve_weights("inception") == cache / "weights-inception-2015-12-05-6726825d.pth"
    (cache / "config.json").write_text("{}")  # CLIP folders are never taken from the cache
    with pytest.raises(MissingWeightsError, match="--clip"):
        resolve_weights("clip")


def test_missing_or_truncated_files_give_one_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        N.load_i3d(tmp_path / "i3d_pretrained_400.pt")
    (tmp_path / "i3d_pretrained_400.pt").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ModelFileError, match="i3d_pretrained_400.pt"):
        N.load_i3d(tmp_path / "i3d_pretrained_400.pt")
