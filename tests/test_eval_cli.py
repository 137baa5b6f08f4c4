"""The evaluation CLI end to end on tiny folders of real-clip videos, with random networks in real layouts."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from surgsora.eval.cli import main
from surgsora.eval.networks import FIDInceptionV3
from surgsora.eval.weights import SPECS
from surgsora.motion.optical_flow import estimate_flow
from surgsora.video_io import read_video, write_video
from eval_fakes import TinyTorchScriptI3D as _TinyTorchScriptI3D

from data_paths import CLIP
PNG = b"\x89PNG\r\n\x1a\n"




def _shift(frame, dx, dy):
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(frame, m, (frame.shape[1], frame.shape[0]), borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """real/{a.mp4, b/}, fake/{a.mp4, b/, c.mp4}, flows/{a.npy, b.npy} from the real EndoVis clip at 96x128."""
    root = tmp_path_factory.mktemp("eval_cli")
    frames = read_video(CLIP, start=0, count=10)
    real = np.stack([cv2.resize(f, (128, 96), interpolation=cv2.INTER_AREA) for f in frames])
    for d in ("real", "fake", "flows", "real/b", "fake/b"):
        (root / d).mkdir()
    write_video(root / "real" / "a.mp4", real, fps=10)
    for i, f in enumerate(real[::-1]):  # a different real video as a frame folder
        cv2.imwrite(str(root / "real" / "b" / f"{i:03d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    rng = np.random.default_rng(0)
    noisy = np.clip(real.astype(int) + rng.integers(-6, 7, real.shape), 0, 255).astype(np.uint8)
    write_video(root / "fake" / "a.mp4", noisy, fps=10)
    # fake b: the first real-b frame translated by a known motion of (1.5 t, -1 t) px
    drift = [(1.5 * t, -1.0 * t) for t in range(10)]
    fake_b = np.stack([_shift(real[-1], dx, dy) for dx, dy in drift])
    for i, f in enumerate(fake_b):
        cv2.imwrite(str(root / "fake" / "b" / f"{i:03d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    write_video(root / "fake" / "c.mp4", real[:, :, ::-1].copy(), fps=10)  # unpaired
    flow_b = np.zeros((1, 9, 2, 96, 128), np.float32)
    for t in range(1, 10):
        flow_b[0, t - 1, 0], flow_b[0, t - 1, 1] = drift[t]
    np.save(root / "flows" / "b.npy", flow_b)
    np.save(root / "flows" / "a.npy", estimate_flow(read_video(root / "real" / "a.mp4")))  # ground-truth-flow mode

    weights = root / "weights"
    weights.mkdir()
    torch.manual_seed(0)
    inception = FIDInceptionV3()
    for m in inception.modules():  # He init keeps activations (and so FID) away from a degenerate constant
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    nn.init.normal_(inception.fc.weight, std=0.05)
    torch.save(inception.state_dict(), weights / "pt_inception-2015-12-05-6726825d.pth")
    torch.jit.script(_TinyTorchScriptI3D()).save(str(weights / "i3d_torchscript.pt"))
    hidden, mlp = 64, 128
    g = torch.Generator().manual_seed(1)
    sd = {"patch_embed.proj.weight": torch.randn(hidden, 3, 2, 14, 14, generator=g) * 0.05,
          "patch_embed.proj.bias": torch.zeros(hidden), "fc_norm.weight": torch.ones(hidden),
          "fc_norm.bias": torch.zeros(hidden), "head.weight": torch.zeros(174, hidden), "head.bias": torch.zeros(174)}
    for i in range(2):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": torch.ones(hidden), p + "norm1.bias": torch.zeros(hidden),
                   p + "attn.qkv.weight": torch.randn(3 * hidden, hidden, generator=g) * 0.1,
                   p + "attn.q_bias": torch.zeros(hidden), p + "attn.v_bias": torch.zeros(hidden),
                   p + "attn.proj.weight": torch.randn(hidden, hidden, generator=g) * 0.1,
                   p + "attn.proj.bias": torch.zeros(hidden), p + "norm2.weight": torch.ones(hidden),
                   p + "norm2.bias": torch.zeros(hidden),
                   p + "mlp.fc1.weight": torch.randn(mlp, hidden, generator=g) * 0.1,
                   p + "mlp.fc1.bias": torch.zeros(mlp),
                   p + "mlp.fc2.weight": torch.randn(hidden, mlp, generator=g) * 0.1,
                   p + "mlp.fc2.bias": torch.zeros(hidden)})
    torch.save({"module": sd}, weights / "vit_g_hybrid_pt_1200e_ssv2_ft.pth")
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(weights / "clip")
    return root


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    for s in SPECS.values():
        monkeypatch.delenv(s.env, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))


def test_cli_writes_a_complete_report(dataset, tmp_path, clean_env, capsys):
    w = dataset / "weights"
    out = tmp_path / "run" / "report.json"
    code = main(["--real", str(dataset / "real"), "--fake", str(dataset / "fake"), "--flows", str(dataset / "flows"),
                 "--out", str(out), "--name", "SurgSora-test",
                 "--inception", str(w / "pt_inception-2015-12-05-6726825d.pth"),
                 "--i3d", str(w / "i3d_torchscript.pt"), "--allow-torchscript",
                 "--videomae", str(w / "vit_g_hybrid_pt_1200e_ssv2_ft.pth"), "--clip", str(w / "clip"),
                 "--fvd-frames", "9", "--fid-stride", "10", "--bootstrap", "10", "--max-plots", "2", "--quiet",
                 "--allow-mismatch"])  # c has no real partner and no flow
    assert code == 0
    assert "mismatch allowed" in capsys.readouterr().err  # on the console too, even with --quiet
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert [k for k in m] == ["psnr", "ssim", "fid", "is", "fvd", "cd_fvd", "frame_consistency", "flow"]
    assert all(v["status"] == "ok" for v in m.values()), {k: v.get("reason") for k, v in m.items()}
    assert report["inputs"]["n_pairs"] == 2 and report["inputs"]["unpaired_fake"] == ["c"]
    # paired: the noisy copy is close to its real video, the translated frame far from the reversed clip
    assert m["psnr"]["per_video"]["a"] > 30 > m["psnr"]["per_video"]["b"]
    assert m["ssim"]["per_video"]["a"] > m["ssim"]["per_video"]["b"]
    assert len(m["psnr"]["per_frame_mean"]) == 10 and m["psnr"]["n_frames"] == 20
    assert m["ssim"]["settings"]["sigma"] == 1.5 and m["ssim"]["settings"]["k2"] == 0.03
    # distribution metrics carry their sample counts, settings, intervals and small-N warnings
    assert (m["fid"]["n_real"], m["fid"]["n_fake"]) == (2, 3) and m["fid"]["feature_dim"] == 2048
    assert m["fid"]["value"] > 0 and m["fid"]["settings"]["weights"].endswith("pt_inception-2015-12-05-6726825d.pth")
    assert (m["fvd"]["n_real"], m["fvd"]["n_fake"]) == (2, 3) and m["fvd"]["feature_dim"] == 8
    assert "torchscript" in m["fvd"]["settings"]["format"]
    assert (m["cd_fvd"]["n_real"], m["cd_fvd"]["n_fake"]) == (2, 3) and m["cd_fvd"]["feature_dim"] == 64
    assert m["is"]["n_fake"] == 3 and m["is"]["value"] >= 1.0
    for key in ("fid", "fvd", "cd_fvd"):
        lo, hi = m[key]["ci95"]
        assert lo <= hi and m[key]["warnings"] and "strongly biased" in m[key]["warnings"][0]
    assert 0 < m["frame_consistency"]["value"] <= 100 and m["frame_consistency"]["n_videos"] == 3
    # flow: the known translation is recovered for b; a is compared with the flow of its real video
    assert m["flow"]["n_videos"] == 2 and m["flow"]["per_video"]["b"]["fl_epe"] < 1.0
    assert any("no flow file" in w for w in report["warnings"])
    # markdown in the paper's table layout, plots as PNG files
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| Method | FVD ↓ | CD-FVD ↓ | FID ↓ | IS ↑ | Frame Cons. (%) ↑ | PSNR (dB) ↑ | SSIM ↑" in md
    assert "| SurgSora-test |" in md and "## Warnings" in md
    plots = report["plots"]
    assert len(plots) == 5  # per-frame curves, 2 flow-error maps, 2 first/last difference maps
    for rel in plots.values():
        p = tmp_path / "run" / rel
        assert p.read_bytes()[:8] == PNG and f"]({rel})" in md
    assert {p.name for p in (tmp_path / "run" / "report_plots").iterdir()} >= {
        "per_frame_psnr_ssim.png", "flow_error_b.png", "first_last_diff_a.png"}
    assert not list((tmp_path / "run").rglob("*partial*"))
    # several reports -> one table
    assert main(["table", str(out), str(out)]) == 0
    table = capsys.readouterr().out
    assert table.count("| SurgSora-test |") == 2


def test_cli_skips_metrics_without_weights_and_reports_failures(dataset, tmp_path, clean_env, capsys):
    bad_flows = tmp_path / "flows"
    bad_flows.mkdir()
    np.save(bad_flows / "a.npy", np.zeros((9, 3, 96, 128), np.float32))  # 3 channels: not a flow
    out = tmp_path / "r.json"
    code = main(["--real", str(dataset / "real"), "--fake", str(dataset / "fake"), "--flows", str(bad_flows),
                 "--out", str(out), "--metrics", "psnr,fid,is,fvd,cd_fvd,fc,flow", "--no-plots", "--allow-mismatch"])
    assert code == 1  # the flow metric failed; everything else ran or was skipped
    m = json.loads(out.read_text())["metrics"]
    assert m["psnr"]["status"] == "ok" and "ssim" not in m
    expected = {"fid": "pt_inception-2015-12-05-6726825d.pth", "is": "pt_inception-2015-12-05-6726825d.pth",
                "fvd": "i3d_pretrained_400.pt", "cd_fvd": "vit_g_hybrid_pt_1200e_ssv2_ft.pth",
                "frame_consistency": "--clip"}
    for key, name in expected.items():
        assert m[key]["status"] == "skipped" and name in m[key]["reason"] and "download" in m[key]["reason"]
    assert m["flow"]["status"] == "failed" and "expected [T-1, 2, H, W]" in m["flow"]["reason"]
    err = capsys.readouterr().err
    assert "FVD skipped" in err
    md = out.with_suffix(".md").read_text()
    assert "n/a" in md and "failed" in md


def test_cli_refuses_torchscript_without_opt_in(dataset, tmp_path, clean_env):
    out = tmp_path / "r.json"
    assert main(["--real", str(dataset / "real"), "--fake", str(dataset / "fake"), "--out", str(out), "--metrics",
                 "fvd", "--i3d", str(dataset / "weights" / "i3d_torchscript.pt"), "--no-plots", "--quiet"]) == 1
    assert "--allow-torchscript" in json.loads(out.read_text())["metrics"]["fvd"]["reason"]


def test_cli_bad_input_exits_2_with_one_sentence(dataset, tmp_path, capsys):
    assert main(["--real", str(tmp_path / "missing"), "--fake", str(dataset / "fake"), "--out",
                 str(tmp_path / "r.json")]) == 2
    assert "real folder" in capsys.readouterr().err
    real, fake = str(dataset / "real"), str(dataset / "fake")
    assert main(["--real", real, "--fake", fake, "--out", str(tmp_path / "r.txt")]) == 2
    assert main(["--real", str(dataset / "real"), "--fake", str(dataset / "fake"), "--out", str(tmp_path / "r.json"),
                 "--metrics", "psnr,lpips"]) == 2
    assert "Unknown metric 'lpips'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--real", str(dataset / "real"), "--fake", str(tmp_path / "empty"), "--out",
                 str(tmp_path / "r.json")]) == 2
    assert "holds no videos" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
