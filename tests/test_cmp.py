"""MOFA-Video CMP: architecture vs the real checkpoint manifest, loading, and tiny end-to-end decoding."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from surgsora.motion.cmp import (CMPConfig, CMPDecoder, CMPNet, build_cmp, flow_from_bins, infer_cmp_config, load_cmp,
                          resample_sparse)
from surgsora.loading.io import ModelFileError
from surgsora.motion.tracks import rasterize

from data_paths import MANIFESTS

MANIFEST = MANIFESTS / "mofa_cmp_ckpt_iter_42000.json"
TINY = CMPConfig(base_width=8, blocks=(1, 1, 1, 1), img_enc_dim=16, sparse_enc_dim=8, dec_dim=16)


def _randomise_bn(net: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _save_real_layout(net: CMPNet, path: Path, drop_bn_counters: bool = True) -> None:
    """Write a checkpoint the way CMP's save_state does: {'step', 'state_dict' with 'module.', 'optimizer'}."""
    sd = {f"module.{k}": v for k, v in net.state_dict().items()
          if not (drop_bn_counters and k.endswith("num_batches_tracked"))}
    # SGD.state_dict() layout, written by hand (building torch.optim.SGD imports torch._dynamo: seconds)
    params = list(net.parameters())
    optimizer = {"state": {i: {"momentum_buffer": torch.zeros_like(p)} for i, p in enumerate(params)},
                 "param_groups": [{"lr": 0.001, "momentum": 0.9, "dampening": 0, "weight_decay": 0.0001,
                                   "nesterov": False, "params": list(range(len(params)))}]}
    torch.save({"step": 42000, "state_dict": sd, "optimizer": optimizer}, path)


def test_architecture_matches_the_real_checkpoint_manifest_on_meta():
    manifest = json.loads(MANIFEST.read_text())
    with torch.device("meta"):
        net = CMPNet()
    ours = {f"module.{k}": list(v.shape) for k, v in net.state_dict().items()}
    absent = set(manifest["absent_in_real_file"])
    assert set(ours) - absent == set(manifest["tensors"])  # every key
    assert all(ours[k] == shape for k, shape in manifest["tensors"].items())  # every shape
    assert [k for k in ours if k not in absent] == list(manifest["tensors"])  # and the module order
    assert absent <= set(ours) and all(k.endswith("num_batches_tracked") for k in absent)
    assert sum(torch.Size(s).numel() for s in manifest["tensors"].values()) == manifest["total_params"]
    cfg = manifest["config"]["module"]
    ours_cfg = (net.config.nbins, net.config.fmax, net.config.img_enc_dim)
    assert ours_cfg == (cfg["nbins"], cfg["fmax"], cfg["img_enc_dim"])
    # the loader's own check accepts the manifest layout (shapes only, on meta) and infers the full config
    meta_sd = {k[len("module."):]: torch.empty(s, device="meta") for k, s in manifest["tensors"].items()}
    assert infer_cmp_config(meta_sd) == CMPConfig()
    from surgsora.motion.cmp import check_cmp_state_dict
    check_cmp_state_dict(net, meta_sd)


def test_load_tiny_checkpoint_in_the_real_file_layout(tmp_path):
    torch.manual_seed(0)
    net = CMPNet(TINY).eval()
    _randomise_bn(net)
    path = tmp_path / "ckpt_iter_42000.pth.tar"
    _save_real_layout(net, path)
    dec = load_cmp(path, size=64)
    assert dec.config == TINY
    for k, v in net.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(dec.net.state_dict()[k], v), k
    assert not dec.net.training and not any(p.requires_grad for p in dec.net.parameters())


def test_load_errors_name_the_file_and_folder(tmp_path):
    with pytest.raises(ModelFileError, match="models/surgsora"):
        load_cmp(tmp_path / "ckpt_iter_42000.pth.tar")
    net = CMPNet(TINY)
    sd = {f"module.{k}": v for k, v in net.state_dict().items() if "flow_decoder.head" not in k}
    bad = tmp_path / "bad.pth.tar"
    torch.save({"step": 1, "state_dict": sd}, bad)
    with pytest.raises(ModelFileError, match="missing .*flow_decoder.head"):
        load_cmp(bad)
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(ModelFileError, match="not a MOFA-Video CMP checkpoint"):
        load_cmp(other)


def test_flow_from_bins_known_answer():
    nbins, fmax = 99, 50.0
    step = 2 * fmax / nbins
    logits = torch.full((1, 2 * nbins, 3, 3), -1e4)
    logits[:, 70] = 0  # x: all mass on bin 70
    logits[:, nbins + 10] = 0  # y: bin 10
    flow = flow_from_bins(logits, nbins, fmax)
    assert torch.allclose(flow[0, 0], torch.tensor(70 * step - fmax + step / 2))
    assert torch.allclose(flow[0, 1], torch.tensor(10 * step - fmax + step / 2))
    assert torch.allclose(flow_from_bins(torch.zeros(1, 2 * nbins, 1, 1), nbins, fmax), torch.zeros(1, 2, 1, 1),
                          atol=1e-5)  # uniform = 0


def test_resample_sparse_moves_points_and_rescales_values():
    sparse = torch.zeros(1, 2, 32, 48)
    mask = torch.zeros(1, 1, 32, 48)
    sparse[0, :, 10, 20] = torch.tensor([4.0, -2.0])
    mask[0, 0, 10, 20] = 1
    s, m = resample_sparse(sparse, mask, (64, 64))
    assert m.sum() == 1 and m[0, 0, 21, 27] == 1  # centre (20.5, 10.5) * (64/48, 64/32)
    assert torch.allclose(s[0, :, 21, 27], torch.tensor([4.0 * 64 / 48, -2.0 * 2]))


def test_tiny_cmp_end_to_end_matches_the_published_t_minus_1_copies_batch():
    torch.manual_seed(0)
    dec = build_cmp(TINY, size=64)
    _randomise_bn(dec.net)
    h, w, T = 40, 56, 4
    image = torch.rand(1, 3, h, w)
    tracks = np.array([[[10.5, 12.5], [14.5, 12.5], [18.5, 14.5], [22.5, 16.5]],
                       [[40.5, 30.5], [40.5, 30.5], [40.5, 30.5], [40.5, 30.5]]], np.float32)
    sparse, mask = rasterize(tracks, (h, w))
    flow = dec(image, sparse, mask)
    assert flow.shape == (1, T - 1, 2, h, w) and torch.isfinite(flow).all()

    # The published path: T-1 copies of the 384-px frame through the whole network, then resize.
    img = torch.nn.functional.interpolate(image, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    sp, mk = resample_sparse(sparse[0], mask[0], (64, 64))
    logits = dec.net(img.repeat(T - 1, 1, 1, 1) * 2 - 1, torch.cat([sp, mk, mk], 1))
    ref = flow_from_bins(logits, TINY.nbins, TINY.fmax)
    ref = torch.nn.functional.interpolate(ref, size=(64, 64), mode="bilinear", align_corners=True)
    from surgsora.motion.splat import resize_flow
    assert torch.allclose(flow[0], resize_flow(ref, (h, w)), atol=1e-5)
    # frames see different sparse input, so they decode to different flows
    assert not torch.allclose(flow[0, 0], flow[0, 2])
    # chunked decoding gives the same answer
    dec.chunk_size = 2
    assert torch.allclose(dec(image, sparse, mask), flow, atol=1e-5)


def test_cmp_output_is_rescaled_to_the_working_resolution():
    # Force the head to a constant bin: the network then predicts a uniform flow of that bin's centre in
    # 64-px units, which must come back as centre * W/64 (x) and centre * H/64 (y).
    dec = build_cmp(TINY, size=64)
    head = dec.net.flow_decoder.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)
        head.bias[60] = 0
        head.bias[TINY.nbins + 40] = 0
    step = 2 * TINY.fmax / TINY.nbins
    cx, cy = 60 * step - TINY.fmax + step / 2, 40 * step - TINY.fmax + step / 2
    h, w = 32, 96
    sparse, mask = rasterize(np.array([[[5.5, 5.5], [6.5, 5.5]]], np.float32), (h, w))
    flow = dec(torch.rand(2, 3, h, w), sparse.expand(2, -1, -1, -1, -1), mask.expand(2, -1, -1, -1, -1))
    assert flow.shape == (2, 1, 2, h, w)
    assert torch.allclose(flow[:, :, 0], torch.tensor(cx * w / 64), atol=1e-4)
    assert torch.allclose(flow[:, :, 1], torch.tensor(cy * h / 64), atol=1e-4)


def test_region_masks_keep_inside_flow_inside_the_brush():
    torch.manual_seed(1)
    dec = build_cmp(TINY, size=64)
    h = w = 32
    tracks = np.array([[[8.5, 8.5], [12.5, 8.5]], [[24.5, 24.5], [24.5, 20.5]]], np.float32)
    sparse, mask = rasterize(tracks, (h, w))
    brush = torch.zeros(1, 1, h, w)
    brush[..., :16, :16] = 1
    image = torch.rand(1, 3, h, w)
    flow = dec(image, sparse, mask, region_masks=brush)
    inside_only = dec(image, sparse * brush, mask * brush)
    outside_only = dec(image, sparse * (1 - brush), mask * (1 - brush))
    assert torch.allclose(flow[..., 2:14, 2:14], inside_only[..., 2:14, 2:14], atol=1e-5)
    assert torch.allclose(flow[..., 18:, 18:], outside_only[..., 18:, 18:], atol=1e-5)
    with pytest.raises(ValueError, match="input_norm"):
        CMPDecoder(CMPNet(TINY), input_norm="bgr")
