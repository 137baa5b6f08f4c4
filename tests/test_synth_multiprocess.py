"""`python -m surgsora synth` over accelerate processes (CPU, gloo): two processes make the same dataset, byte for
byte, as one; a run killed (SIGKILL) in the middle of writing a clip and run again equals an uninterrupted run and
holds no partial file."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from data_paths import DEMO_TRACKS, FRAME6, MASKS_F06
from processes import free_port, rank_main

MASKS = ";".join(str(m) for m in MASKS_F06)
# ttm rows with their masks: no SAM per clip, the fastest mode; two rows, the first with a variant: 3 clips.
ROWS = [f"a,{FRAME6},{DEMO_TRACKS},ttm,4,64x64,7,1,{MASKS}", f"b,{FRAME6},{DEMO_TRACKS},ttm,4,64x64,8,0,{MASKS}"]


@pytest.fixture(scope="module")
def ctx():
    """A fork server that imports the stack once, so each process starts in a fraction of that."""
    c = mp.get_context("forkserver")
    c.set_forkserver_preload(["torch", "diffusers", "transformers", "accelerate", "cv2", "av", "surgsora.synth.cli",
                              "surgsora.sampling.pipeline", "surgsora.tiny"])
    return c


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("jobs") / "jobs.csv"
    p.write_text("\n".join(["id,image,tracks,mode,frames,size,seed,variants,masks", *ROWS]) + "\n")
    return p


def _launch(ctx, jobs: Path, out: Path, n: int, logs: Path, extra_env=None) -> list:
    argv = ["--jobs", str(jobs), "--out", str(out), "--tiny-models", "--steps", "2", "--no-progress"]
    # One thread per process whatever N (accelerate would give the lone process both cores): CPU kernels may sum in
    # another order with another thread count, and the comparison is about sharding, not threads.
    env = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n), **(extra_env or {})}
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in range(n):
        p = ctx.Process(target=rank_main, args=(rank, env, "surgsora.cli", ["synth", *argv],
                                                 str(logs / f"rank{rank}.log")))
        p.start()
        p.log = logs / f"rank{rank}.log"
        procs.append(p)
    return procs


def _wait(procs, timeout=300) -> None:
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, p.log.read_text()[-3000:]


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_processes_equal_one_and_kill_then_rerun_equals_uninterrupted(ctx, jobs, tmp_path):
    t0 = time.time()
    one, two = tmp_path / "one", tmp_path / "two"
    _wait(_launch(ctx, jobs, one, 1, tmp_path / "logs1"))
    _wait(_launch(ctx, jobs, two, 2, tmp_path / "logs2"))
    ref = _tree(one)
    assert {k for k in ref if k.endswith("meta.json")} == {f"clips/{c}/meta.json" for c in ("a-v0", "a-v1", "b-v0")}
    assert _tree(two) == ref  # every clip, index.jsonl and the card, byte for byte
    assert "2 processes" in (tmp_path / "logs2" / "rank0.log").read_text()

    # Process 1 makes clip a-v1 (clip 1 of the job); it is killed while writing its flow.npz, with the video and
    # masks of that clip already written and the temporary file of flow.npz on disk.
    killed = tmp_path / "killed"
    procs = _launch(ctx, jobs, killed, 2, tmp_path / "logs3", {"SURGSORA_SYNTH_TEST_PAUSE": "120@a-v1"})
    clip = killed / "clips" / "a-v1"
    deadline = time.time() + 300
    while not (list(clip.glob(".flow.*partial*")) and (killed / "clips" / "a-v0" / "meta.json").exists()):
        assert all(p.is_alive() for p in procs) and time.time() < deadline, "the run ended before the kill"
        time.sleep(0.05)
    for p in procs:
        p.kill()  # SIGKILL: no handler runs
        p.join()
    assert (clip / "video.mp4").exists() and not (clip / "meta.json").exists()
    assert not (killed / "index.jsonl").exists()

    # The same command again, on one process this time: the unfinished clip is remade, the done ones kept.
    _wait(_launch(ctx, jobs, killed, 1, tmp_path / "logs4"))
    assert _tree(killed) == ref
    assert not [p for p in killed.rglob("*") if "partial" in p.name or p.name.startswith(".")]
    made, done = map(int, re.search(r"\((\d+) made now, (\d+) already done\)", (tmp_path / "logs4" / "rank0.log")
                                    .read_text()).groups())
    assert made >= 1 and done >= 1 and made + done == 3  # a-v1 remade, a-v0 kept
    print(f"synth multiprocess test: {time.time() - t0:.1f} s")
