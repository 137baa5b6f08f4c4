"""`python -m train`: preprocessing cache on the real clip, EDM objective, overfitting, exact resume, stage 2."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from train.checkpoint import latest_checkpoint
from train.data import CACHE_VERSION, CacheError, ClipDataset, Preprocessor, discover_clips, validate_shard
from train.fit import STAGE2_FROZEN, FitConfig, run, stage_trainable
from train.objective import edm_loss, preconditioning, sample_sigmas

REPO = Path(__file__).resolve().parents[1]
T = 4


@pytest.fixture(scope="module")
def perception():
    from surgsora.tiny import tiny_depth, tiny_sam

    return tiny_sam(), tiny_depth()


@pytest.fixture(scope="module")
def cache(tmp_path_factory, endovis_clip, perception):
    out = tmp_path_factory.mktemp("cache")
    specs, problems = discover_clips([endovis_clip], num_frames=T, clip_stride=8)
    assert problems == [] and [s.start for s in specs] == [0, 8, 16]
    # No region masks here (SAM prompting per guide point costs seconds per clip on a CPU); the stage-2
    # region paths are tested in test_train_stage2.py.
    pre = Preprocessor(out, *perception, size=(64, 64), num_frames=T, depth_input_size=70, log=lambda *a: None,
                       regions="none")
    counts = pre.run(specs, progress=False)
    assert counts == {"built": 3}
    return out, pre, specs


def test_preprocessed_real_clip_has_documented_shapes_dtypes_ranges(cache):
    out, _, _ = cache
    ds = ClipDataset(out)
    assert len(ds) == 3 and ds.num_frames == T and ds.size == (64, 64)
    item = ds[0]
    assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (T, 64, 64, 3)
    assert item["seg"].dtype == torch.float16 and item["seg"].shape == (256, 64, 64)
    assert item["depth"].dtype == torch.float16 and item["depth"].shape == (1, 64, 64)
    assert 0 <= item["depth"].min() and item["depth"].max() <= 1
    assert item["flow"].dtype == torch.float16 and item["flow"].shape == (T - 1, 2, 64, 64)
    assert torch.isfinite(item["flow"]).all() and item["flow"].abs().max() > 0.05  # the instruments move
    n = item["points"].shape[0]
    assert n >= 4 and item["disp"].shape == (T - 1, n, 2)
    # Guide point displacements are the flow read at those points.
    x, y = item["points"][0].long()
    assert torch.allclose(item["disp"][:, 0], item["flow"][:, :, y, x].float(), atol=1e-2)
    # Padded to 64x64 keeping the 16:9 aspect: black bars top and bottom.
    assert item["frames"][:, :8].max() == 0 and item["frames"][:, 28:36].float().mean() > 20
    assert float(item["fps"]) == pytest.approx(10.0)


def test_second_run_does_nothing_and_a_truncated_shard_is_rebuilt(cache):
    out, pre, specs = cache
    index = out / "index.json"
    before = index.stat().st_mtime_ns
    assert pre.run(specs, progress=False) == {"cached": 3}
    assert index.stat().st_mtime_ns == before

    shard = pre.shard_path(specs[1])
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])  # a download/kill cut it short
    assert validate_shard(shard, T)[0] is None
    with pytest.raises(CacheError, match="rebuild"):
        ClipDataset(out)[1]
    assert pre.run(specs, progress=False) == {"cached": 2, "rebuilt": 1}
    assert validate_shard(shard, T)[0] is not None
    assert len(ClipDataset(out)) == 3


def test_clip_lock_shares_work_between_processes(cache, tmp_path, perception):
    out, pre, specs = cache
    other = Preprocessor(tmp_path / "c2", *perception, size=(64, 64), num_frames=T, depth_input_size=70,
                         log=lambda *a: None, regions="none")
    lock = other.shard_path(specs[0]).with_suffix(".lock")
    lock.write_text(f"{os.uname().nodename}:{os.getpid()}")  # held by a live process (this one)
    assert other.process(specs[0]) == "busy"
    lock.write_text(f"{os.uname().nodename}:999999999")  # left by a killed process
    assert other.process(specs[0]) == "built" and not lock.exists()


def test_bad_inputs_are_reported_and_the_rest_processed(tmp_path, endovis_clip):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    specs, problems = discover_clips([empty, broken, endovis_clip, tmp_path / "missing.avi"], num_frames=T, clip_stride=8)
    assert len(specs) == 3
    text = "\n".join(problems)
    assert "empty folder" in text and "broken.mp4" in text and "no such file" in text
    specs, problems = discover_clips([endovis_clip], num_frames=30)
    assert specs == [] and "shorter than one clip" in problems[0]
    csv_list = tmp_path / "clips.csv"
    csv_list.write_text(f"video,start\n{endovis_clip},2\n{endovis_clip},18\n")
    specs, problems = discover_clips([csv_list], num_frames=T)
    assert [s.start for s in specs] == [2] and "runs past the end" in problems[0]


def test_mismatched_cache_version_is_a_clear_error(cache, tmp_path):
    out, _, _ = cache
    stale = tmp_path / "stale"
    stale.mkdir()
    index = json.loads((out / "index.json").read_text())
    index["cache_version"] = CACHE_VERSION - 1
    (stale / "index.json").write_text(json.dumps(index))
    with pytest.raises(CacheError, match="re-run `python -m train preprocess`"):
        ClipDataset(stale)
    with pytest.raises(CacheError, match="python -m train preprocess --out"):
        ClipDataset(tmp_path / "nothing-here")


def test_preconditioning_matches_the_inference_scheduler():
    from diffusers import EulerDiscreteScheduler

    from surgsora.tiny import tiny_svd_components

    sched: EulerDiscreteScheduler = tiny_svd_components()["scheduler"]
    sched.set_timesteps(5)
    sigma = sched.sigmas[2]
    t = sched.timesteps[2]
    c_skip, c_out, c_in, c_noise = preconditioning(sigma.view(1))
    assert c_noise.item() == pytest.approx(t.item(), rel=1e-5)  # continuous timesteps: 0.25 ln(sigma)
    x = torch.randn(1, 2, 4, 3, 3)
    assert torch.allclose(sched.scale_model_input(x, t), c_in * x, rtol=1e-5)
    # The scheduler's x0 estimate for v-prediction is c_skip * x + c_out * v.
    v = torch.randn_like(x)
    sched._step_index = 2
    prev = sched.step(v, t, x).prev_sample
    x0 = c_skip * x + c_out * v
    expected = x + (x - x0) / sigma * (sched.sigmas[3] - sigma)
    assert torch.allclose(prev, expected, rtol=1e-4, atol=1e-5)


def test_sigma_samplers_and_loss_weighting():
    g = torch.Generator().manual_seed(0)
    ln = sample_sigmas(20000, g, "lognormal", p_mean=0.7, p_std=1.6).log()
    assert abs(ln.mean().item() - 0.7) < 0.05 and abs(ln.std().item() - 1.6) < 0.05
    cos = sample_sigmas(20000, g, "cosine")
    assert cos.min() >= 0.002 and cos.max() <= 700 and 0.05 < cos.median() < 20
    # A perfect prediction has zero loss; the weight is (1 + s^2)/s^2 on the squared denoising error.
    sigma = torch.tensor([0.5, 2.0])
    clean = torch.randn(2, 3, 4, 4, 4)
    noisy = clean + sigma.view(-1, 1, 1, 1, 1) * torch.randn_like(clean)
    c_skip, c_out, _, _ = preconditioning(sigma)
    perfect = (clean - c_skip * noisy) / c_out
    assert torch.allclose(edm_loss(perfect, noisy, clean, sigma), torch.zeros(2), atol=1e-5)
    off = edm_loss(perfect + 1.0 / c_out.abs(), noisy, clean, sigma)  # denoised off by exactly 1 everywhere
    assert torch.allclose(off, (1 + sigma ** 2) / sigma ** 2, rtol=1e-4)


def test_overfitting_one_batch_lowers_the_loss(cache, tmp_path):
    out, _, _ = cache
    cfg = FitConfig(data=str(out), out=str(tmp_path / "run"), config="tiny", max_steps=20, lr=2e-3,
                    overfit_one_batch=True, checkpoint_every=1000, drop_clip_prob=0.0, drop_latent_prob=0.0,
                    max_grad_norm=0.0)
    losses = run(cfg)["losses"]
    assert len(losses) == 20
    assert min(losses) <= 0.7 * losses[0], losses  # at least 30% lower within 20 (< 60) steps


def test_stage2_freezes_exactly_the_dsi(cache, tmp_path):
    from surgsora.tiny import tiny_adapter, tiny_svd_components

    adapter = tiny_adapter(tiny_svd_components()["unet"])
    names = stage_trainable(adapter, 2)
    frozen = [n for n, p in adapter.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(STAGE2_FROZEN) for n in frozen)
    assert all(not n.startswith(STAGE2_FROZEN) for n in names)
    assert any(n.startswith("fusion.") for n in names) and any(n.startswith("down_blocks.") for n in names)
    assert len(stage_trainable(adapter, 1)) == len(list(adapter.parameters()))

    out, _, _ = cache
    stage1 = tmp_path / "s1"
    run(FitConfig(data=str(out), out=str(stage1), config="tiny", max_steps=1, lr=1e-3, checkpoint_every=1000))
    before = {k: v.clone() for k, v in _load_adapter(stage1 / "adapter").state_dict().items()}
    run(FitConfig(data=str(out), out=str(tmp_path / "s2"), config="tiny", stage=2, adapter=str(stage1 / "adapter"),
                  max_steps=2, lr=1e-3, checkpoint_every=1000))
    after = _load_adapter(tmp_path / "s2" / "adapter").state_dict()
    for k, v in after.items():
        if k.startswith(STAGE2_FROZEN):
            assert torch.equal(v, before[k]), k
    changed = [k for k, v in after.items() if not k.startswith(STAGE2_FROZEN) and not torch.equal(v, before[k])]
    assert any(k.startswith("fusion.") for k in changed) and any(k.startswith("controlnet_") for k in changed)


def _load_adapter(path):
    from surgsora import SurgSoraAdapter

    return SurgSoraAdapter.from_pretrained(path)


def _fit_cmd(data, out, steps, resume=False):
    cmd = [sys.executable, "-m", "train", "fit", "--data", str(data), "--out", str(out), "--config", "tiny",
           "--max-steps", str(steps), "--checkpoint-every", "2", "--lr", "1e-3", "--seed", "3"]
    return cmd + (["--resume", "latest"] if resume else [])


def _read_losses(run_dir: Path) -> list[str]:
    lines = (run_dir / "train_log.csv").read_text().splitlines()[1:]
    return [line.split(",")[1] for line in lines]


def test_sigkill_during_checkpoint_write_then_resume_is_exact(cache, tmp_path):
    data, _, _ = cache
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_fit_cmd(data, ref, 4), cwd=REPO, env=env, check=True, capture_output=True, timeout=600)

    run_dir = tmp_path / "killed"
    slow = {**env, "SURGSORA_CKPT_WRITE_DELAY": "30@4"}  # only the step-4 write pauses
    proc = subprocess.Popen(_fit_cmd(data, run_dir, 4), cwd=REPO, env=slow, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    partial = run_dir / "checkpoints" / ".tmp-step_00000004"
    deadline = time.time() + 600
    while not (partial / "optimizer.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # in the middle of writing the step-4 checkpoint
    proc.wait()
    assert partial.is_dir()
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_00000002"  # never the half-written one

    subprocess.run(_fit_cmd(data, run_dir, 4, resume=True), cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=600)
    assert not partial.exists()
    assert _read_losses(run_dir) == _read_losses(ref)
    a = _load_adapter(ref / "adapter").state_dict()
    b = _load_adapter(run_dir / "adapter").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_latent_cache_leaves_training_unchanged(cache, tmp_path):
    """Cached frozen-VAE latents and CLIP embeddings are exactly what a recomputation gives."""
    out, _, _ = cache
    before = set((out / "latents").glob("*")) if (out / "latents").exists() else set()
    runs = []
    for i in range(2):  # the first run computes and stores the latents, the second reads them
        cfg = FitConfig(data=str(out), out=str(tmp_path / f"r{i}"), config="tiny", max_steps=2, lr=1e-3,
                        checkpoint_every=1000, seed=5)
        runs.append(run(cfg)["losses"])
    new = set((out / "latents").glob("*")) - before  # this seed's frozen models: one new fingerprint folder
    assert len(new) == 1 and len(list(next(iter(new)).glob("*.safetensors"))) >= 1
    assert runs[0] == runs[1]
    a = _load_adapter(tmp_path / "r0" / "adapter").state_dict()
    b = _load_adapter(tmp_path / "r1" / "adapter").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
