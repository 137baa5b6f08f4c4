"""Exact resume across processes: two CPU processes (gloo) killed mid-run and resumed, and the GradScaler
state in checkpoints."""

import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from processes import free_port, rank_main
from train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS = 3  # checkpoints at 2 and 3: the run is killed while writing 3 and resumes from 2


@pytest.fixture(scope="module")
def cache(tmp_path_factory, endovis_clip):
    """Two 2-frame clips of the real clip at 64x64 with tiny random SAM / depth (the smallest valid cache)."""
    from surgsora.tiny import tiny_depth, tiny_sam
    from train.data import Preprocessor, discover_clips

    out = tmp_path_factory.mktemp("cache2")
    specs, problems = discover_clips([endovis_clip], num_frames=2, clip_stride=8)
    assert problems == []
    pre = Preprocessor(out, tiny_sam(), tiny_depth(), size=(64, 64), num_frames=2, depth_input_size=70,
                       log=lambda *a: None, regions="none")
    assert pre.run(specs[:2], progress=False) == {"built": 2}
    return out


@pytest.fixture(scope="module")
def mp_context():
    """A fork server that imports the training stack once (~10 s), so each rank starts in a fraction of that."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "train.fit", "train.__main__", "surgsora.sampling.pipeline",
                                "surgsora.tiny", "accelerate"])
    return ctx


def _launch(ctx, data, out, resume=False, extra_env=None) -> list:
    """Two CPU processes, gloo, over a fresh port."""
    argv = ["fit", "--data", str(data), "--out", str(out), "--config", "tiny", "--max-steps", str(STEPS),
            "--checkpoint-every", "2", "--lr", "1e-3", "--seed", "5", "--sigma-scheme", "cosine"]
    argv += ["--resume", "latest"] if resume else []
    env = {"ACCELERATE_USE_CPU": "true", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", **(extra_env or {})}
    Path(out).mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in range(2):
        p = ctx.Process(target=rank_main, args=(rank, env, "train.__main__", argv,
                                                 str(Path(out) / f"rank{rank}.log")))
        p.start()
        p.log = Path(out) / f"rank{rank}.log"
        procs.append(p)
    return procs


def _wait(procs, timeout=300) -> None:
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, p.log.read_text()[-3000:]


def _losses(run_dir: Path) -> list[str]:
    return [line.split(",")[1] for line in (run_dir / "train_log.csv").read_text().splitlines()[1:]]


def _adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "diffusion_pytorch_model.safetensors"))


def test_two_process_run_killed_mid_run_resumes_exactly(cache, mp_context, tmp_path):
    t0 = time.time()
    ref = tmp_path / "ref"
    _wait(_launch(mp_context, cache, ref))
    assert len(_losses(ref)) == STEPS

    run_dir = tmp_path / "killed"
    procs = _launch(mp_context, cache, run_dir, extra_env={"SURGSORA_CKPT_WRITE_DELAY": f"120@{STEPS}"})
    partial = run_dir / "checkpoints" / f".tmp-step_{STEPS:08d}"
    deadline = time.time() + 300
    while not ((partial / "rank0.pt").exists() and (partial / "rank1.pt").exists()):
        assert all(p.is_alive() for p in procs) and time.time() < deadline, "the run ended before the kill"
        time.sleep(0.05)
    for p in procs:  # both ranks, in the middle of writing the last checkpoint
        p.kill()  # SIGKILL
        p.join()
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_00000002"
    assert sorted(f.name for f in (run_dir / "checkpoints" / "step_00000002").glob("rank*.pt")) == \
        ["rank0.pt", "rank1.pt"]

    _wait(_launch(mp_context, cache, run_dir, resume=True))
    assert not partial.exists()
    assert _losses(run_dir) == _losses(ref)
    a, b = _adapter(ref), _adapter(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Each rank continued from its own generator: the final per-rank states match the uninterrupted run.
    for rank in range(2):
        final = f"checkpoints/step_{STEPS:08d}/rank{rank}.pt"
        ga = torch.load(ref / final, weights_only=True)["generators"][f"rank{rank}"]
        gb = torch.load(run_dir / final, weights_only=True)["generators"][f"rank{rank}"]
        assert torch.equal(ga, gb)
    r0 = torch.load(ref / f"checkpoints/step_{STEPS:08d}/rank0.pt", weights_only=True)["generators"]["rank0"]
    r1 = torch.load(ref / f"checkpoints/step_{STEPS:08d}/rank1.pt", weights_only=True)["generators"]["rank1"]
    assert not torch.equal(r0, r1)  # the ranks really hold different streams
    print(f"two-process kill/resume test: {time.time() - t0:.1f} s")


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x)

    def save_pretrained(self, folder, safe_serialization=True):
        from safetensors.torch import save_file

        Path(folder).mkdir(parents=True)
        save_file(self.state_dict(), str(Path(folder) / "diffusion_pytorch_model.safetensors"))


def _scaled_steps(model, opt, scaler, n, start):
    for i in range(start, start + n):
        loss = model(torch.full((1, 3), float(i))).sum()
        scaler.scale(loss).backward()
        if i % 3 == 0:  # an overflow: the step is skipped and the scale backs off
            model.lin.weight.grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()


def test_grad_scaler_state_is_saved_and_restored(tmp_path):
    torch.manual_seed(0)
    model = _Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    _scaled_steps(model, opt, scaler, 5, 0)
    saved_state = scaler.state_dict()
    assert saved_state["scale"] != 2.0 ** 10  # it moved: backed off and grew again
    gen = torch.Generator().manual_seed(1)
    path = save_checkpoint(tmp_path, 5, model, opt, sched, {"rank0": gen}, {}, scaler=scaler)

    fresh_model, fresh_scaler = _Tiny(), torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    fresh_opt = torch.optim.SGD(fresh_model.parameters(), lr=0.1)
    fresh_sched = torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda s: 1.0)
    load_checkpoint(path, fresh_model, fresh_opt, fresh_sched, {"rank0": torch.Generator()}, scaler=fresh_scaler)
    assert fresh_scaler.state_dict() == saved_state
    # Continuing both gives the same scale trajectory and the same weights.
    _scaled_steps(model, opt, scaler, 4, 5)
    _scaled_steps(fresh_model, fresh_opt, fresh_scaler, 4, 5)
    assert fresh_scaler.get_scale() == scaler.get_scale()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh_model.parameters()))

    # A checkpoint of two processes does not resume on one: a clear error, not a KeyError.
    two = tmp_path / "two"
    save_checkpoint(two, 1, model, opt, sched, {"rank0": gen}, {}, scaler=scaler, world=2)
    with pytest.raises(CheckpointError, match="written by 2 process"):
        load_checkpoint(two / "step_00000001", fresh_model, fresh_opt, fresh_sched, {"rank0": gen}, world=1)
