"""Faults while writing: a full disk and a SIGKILL during every command that writes leave no partial output that a
later run would take as done, and a full disk is one sentence (what, which file, the fix), exit code 1, no traceback.

The full disk is real, not mocked: ``RLIMIT_FSIZE`` (with SIGXFSZ ignored) makes every write past the limit fail with
EFBIG in this process, whichever library writes (Python, safetensors' Rust, torch's zip writer, FFmpeg through
PyAV). The kill is a real SIGKILL of the command run as a subprocess, at the moment its output exists complete under
the temporary name and is not yet renamed (``SURGSORA_ATOMIC_PAUSE`` holds it there; a download is killed mid-file
on a stalled connection). Then: the final name is absent, what is left is a hidden temporary name no reader lists,
and a rerun does the work again and completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_paths import CLIP, DEMO_TRACKS
# At import, as the other CLI tests do (surgsora.cli.Timer.report binds sys.stdout when the module is imported).
from surgsora.cli import main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@contextlib.contextmanager
def full_disk(limit: int = 0):
    """Every write of this process past ``limit`` bytes of a file fails (EFBIG), as on a disk that filled up."""
    import matplotlib.font_manager  # noqa: F401 - its font cache is written on first import, not during the test

    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def _one_sentence(err: str, *names: str) -> str:
    """The error line; asserts it is the only line (progress bars aside), names the file(s) and gives the fix."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], lines[0]
    assert "could not write" in lines[0] and "free some space or choose another" in lines[0].lower(), lines[0]
    return lines[0]


def _partials(folder: Path, prefix: str = "") -> list[Path]:
    """Temporary outputs (of the final name ``prefix`` suggests) under ``folder``."""
    try:
        return [p for p in Path(folder).rglob("*") if ".partial" in p.name and p.name.startswith(prefix)]
    except FileNotFoundError:  # a temporary name renamed or removed while we looked
        return []


def _visible(folder: Path) -> set[str]:
    """Paths under ``folder`` a reader would see (hidden temporary names excluded)."""
    return {p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")
            if not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def _kill_when(cmd: list[str], seen, env: dict | None = None, timeout: float = 300) -> None:
    """Run ``cmd``; SIGKILL it as soon as ``seen()`` is true (it must become true while the command runs)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env={**ENV, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not seen():
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"{cmd[2:4]} ended ({proc.returncode}) before the write to kill it in: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _pause(glob: str) -> dict:
    return {"SURGSORA_ATOMIC_PAUSE": f"60@{glob}"}


# ----------------------------------------------------------------------------------------- preview / generate

def _scene(tmp_path: Path) -> tuple[Path, str]:
    frame = np.full((144, 256, 3), (150, 120, 90), np.uint8)
    frame[56:88, 40:72] = (230, 20, 20)
    cv2.imwrite(str(tmp_path / "frame.png"), frame)
    return tmp_path / "frame.png", json.dumps({"width": 256, "height": 144, "tracks": [[[56.5, 72.5], [104.5, 72.5]]]})


def test_preview(tmp_path, capsys):
    from surgsora.video_io import video_info

    frame, tracks = _scene(tmp_path)
    out = tmp_path / "out"
    argv = ["preview", "--image", str(frame), "--tracks", tracks, "--frames", "5", "--size", "256x144",
            "--out", str(out / "p.mp4"), "--save-flow", str(out / "p.npy")]
    with full_disk():
        code = main(argv)
    assert code == 1
    _one_sentence(capsys.readouterr().err, str(out / "p"))
    assert not out.exists() or _visible(out) == set() and not _partials(out)

    _kill_when([sys.executable, "-m", "surgsora", *argv], lambda: _partials(out, ".p_flow."), _pause("*/p_flow.mp4"))
    assert _visible(out) == set()  # the preview and its flow video are renamed together, after both are whole
    assert main(argv) == 0
    assert video_info(out / "p.mp4")["frames"] == 5 and np.load(out / "p.npy").shape == (4, 2, 144, 256)


@pytest.mark.integration  # about 30 s on a CPU: the tiny SVD pipeline runs twice and once more in a subprocess
def test_generate(tmp_path, capsys, endovis_frame):
    from integration.tiny_models import write_tiny_models
    from surgsora.video_io import video_info

    write_tiny_models(tmp_path / "models")
    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), cv2.cvtColor(endovis_frame, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    argv = ["generate", "--image", str(frame), "--tracks", str(DEMO_TRACKS), "--models", str(tmp_path / "models"),
            "--size", "128x64", "--frames", "4", "--steps", "2", "--out", str(out / "g.mp4")]
    with full_disk():
        code = main(argv)
    assert code == 1
    _one_sentence(capsys.readouterr().err, str(out / "g.mp4"))
    assert not out.exists() or (_visible(out) == set() and not _partials(out))

    _kill_when([sys.executable, "-m", "surgsora", *argv], lambda: _partials(out, ".g."), _pause("*/g.mp4"))
    assert _visible(out) == set()
    assert main(argv) == 0 and video_info(out / "g.mp4")["frames"] == 4


# ----------------------------------------------------------------------------------------- download

DATA = b"fake SAM weights " * 4096


@pytest.fixture
def fake_sam(monkeypatch):
    """sam_vit_b_01ec64.pth as a 68 KB file with DATA's size and hash ends; the network step replaced."""
    import hashlib
    from dataclasses import replace

    import surgsora.loading.catalogue as cat

    sha = hashlib.sha256(DATA).hexdigest()
    known = replace(cat.KNOWN_FILES["sam_vit_b_01ec64.pth"], size=len(DATA), sha256_prefix=sha[:8],
                    sha256_suffix=sha[-4:])
    monkeypatch.setitem(cat.KNOWN_FILES, known.name, known)

    def fetch(url, dest, total, tqdm_cls):
        with open(dest, "wb") as f:
            for i in range(0, len(DATA), 4096):
                f.write(DATA[i:i + 4096])
    monkeypatch.setattr(cat, "_fetch_url", fetch)
    return known


# The same download in a subprocess whose connection stalls halfway (the kill comes mid-file).
STALLED = """
import hashlib, sys, time
from dataclasses import replace
import surgsora.loading.catalogue as cat
from surgsora.cli import main
DATA = b"fake SAM weights " * 4096
sha = hashlib.sha256(DATA).hexdigest()
cat.KNOWN_FILES["sam_vit_b_01ec64.pth"] = replace(cat.KNOWN_FILES["sam_vit_b_01ec64.pth"], size=len(DATA),
                                                  sha256_prefix=sha[:8], sha256_suffix=sha[-4:])
def fetch(url, dest, total, tqdm_cls):
    with open(dest, "wb") as f:
        f.write(DATA[: len(DATA) // 2])
        f.flush()
        time.sleep(60)
cat._fetch_url = fetch
sys.exit(main(sys.argv[1:]))
"""


def test_download(tmp_path, capsys, fake_sam):

    models = tmp_path / "models"
    argv = ["download", fake_sam.name, "--models", str(models)]
    with full_disk(16384):  # the first 16 KB fit, the rest does not
        code = main(argv)
    assert code == 1
    assert "choose another --models" in _one_sentence(capsys.readouterr().err, str(models / "sams" / fake_sam.name))
    assert _visible(models) <= {"sams"} and not _partials(models)

    def half_written():
        return any(p.stat().st_size >= len(DATA) // 2 for p in _partials(models))
    _kill_when([sys.executable, "-c", STALLED, *argv], half_written)
    assert _visible(models) == {"sams"}  # the half file only under its hidden temporary name
    assert main(argv) == 0  # not taken as downloaded: fetched again, in full
    assert (models / "sams" / fake_sam.name).read_bytes() == DATA


# ----------------------------------------------------------------------------------------- train

def _train(argv: list[str]) -> int:
    from train.__main__ import main

    return main(argv)


PRE = ["--tiny-models", "--frames", "4", "--size", "64", "--clip-stride", "100", "--regions", "none",
       "--depth-input-size", "70"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A one-clip cache of the real clip (tiny SAM / depth) and a tiny adapter, for fit and sample."""
    from surgsora.tiny import tiny_adapter, tiny_svd_components

    root = tmp_path_factory.mktemp("faults")
    assert _train(["preprocess", str(CLIP), "--out", str(root / "cache"), *PRE]) == 0
    tiny_adapter(tiny_svd_components()["unet"], randomize=True).save_pretrained(root / "adapter")
    return root


def test_train_preprocess(tmp_path, capsys):
    from train.data import ClipDataset

    out = tmp_path / "cache"
    argv = ["preprocess", str(CLIP), "--out", str(out), *PRE]
    with full_disk(4096):  # a shard is ~100 KB: cut off partway, as the disk fills
        code = _train(argv)
    assert code == 1
    _one_sentence(capsys.readouterr().err, str(out / "clips"))
    assert not list((out / "clips").glob("[!.]*.safetensors")) and not _partials(out)

    _kill_when([sys.executable, "-m", "train", *argv], lambda: _partials(out), _pause("*/clips/*"))
    assert not list((out / "clips").glob("[!.]*.safetensors"))  # only the hidden temporary file
    assert not (out / "index.json").exists() or json.loads((out / "index.json").read_text())["clips"] == []
    assert _train(argv) == 0  # the killed clip is built, not skipped as cached
    assert "1 built" in capsys.readouterr().out
    assert len(ClipDataset(out)) == 1 and ClipDataset(out)[0]["frames"].shape == (4, 64, 64, 3)


@pytest.mark.integration  # about 20 s on a CPU: three tiny training runs, one in a subprocess
def test_train_fit(cache, tmp_path, capsys):
    from train.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    argv = ["fit", "--data", str(cache / "cache"), "--out", str(run), "--config", "tiny", "--max-steps", "1",
            "--checkpoint-every", "1", "--validate-every", "0"]
    with full_disk(65536):  # the config and log fit; a checkpoint (the adapter alone is ~1 MB) does not
        code = _train(argv)
    assert code == 1
    _one_sentence(capsys.readouterr().err, str(run / "checkpoints" / "step_00000001"))
    assert latest_checkpoint(run / "checkpoints") is None and not (run / "adapter").exists()
    assert not [p for p in (run / "checkpoints").iterdir()]  # no half-written .tmp-step_ folder either

    _kill_when([sys.executable, "-m", "train", *argv], lambda: _partials(run, ".adapter."), _pause("*/run/adapter"))
    assert latest_checkpoint(run / "checkpoints").name == "step_00000001"
    assert not (run / "adapter").exists()  # killed while the final adapter folder was written: not there at all
    assert _train([*argv, "--resume", "latest"]) == 0
    from surgsora import SurgSoraAdapter

    SurgSoraAdapter.from_pretrained(run / "adapter")


@pytest.mark.integration  # about 30 s on a CPU: the tiny SVD pipeline runs three times, once in a subprocess
def test_train_sample(cache, tmp_path, capsys):
    from surgsora.eval.data import list_videos

    out = tmp_path / "s"
    argv = ["sample", "--data", str(cache / "cache"), "--adapter", str(cache / "adapter"), "--out", str(out),
            "--config", "tiny", "--flow", "dense", "--steps", "1"]
    with full_disk(0):
        code = _train(argv)
    assert code == 1
    _one_sentence(capsys.readouterr().err, str(out / "real"))
    assert not _partials(out) and not [p for p in out.rglob("*.png")]

    _kill_when([sys.executable, "-m", "train", *argv], lambda: _partials(out / "fake"), _pause("*/fake/*"))
    assert list(out.glob("real/[!.]*/*.png")) and not list(out.glob("fake/[!.]*/*.png"))  # real whole, fake absent
    with pytest.raises(ValueError, match="holds no videos"):  # the temporary folder is not a video to evaluate
        list_videos(out / "fake")
    assert _train(argv) == 0
    assert len(list(out.glob("fake/[!.]*/*.png"))) == 4


# ----------------------------------------------------------------------------------------- eval

def test_eval_report(tmp_path, capsys):
    from surgsora.eval.cli import main
    from surgsora.video_io import read_video

    frames = read_video(CLIP, start=0, count=4)[:, ::8, ::8]
    for side, shift in (("real", 0), ("fake", 3)):
        (tmp_path / side / "a").mkdir(parents=True)
        for i, f in enumerate(frames):
            cv2.imwrite(str(tmp_path / side / "a" / f"{i:02d}.png"), np.roll(f, shift, axis=1))
    report = tmp_path / "r" / "report.json"
    argv = ["--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"), "--out", str(report),
            "--metrics", "psnr,ssim", "--quiet"]
    with full_disk(0):
        code = main(argv)
    assert code == 1
    _one_sentence(capsys.readouterr().err, str(report.parent))
    assert not report.exists() and not _partials(report.parent)

    _kill_when([sys.executable, "-m", "surgsora.eval", *argv], lambda: _partials(report.parent, ".report."),
               _pause("*/report.json"))
    assert not report.exists()  # the JSON, written last, is what `table` and readers take as the report
    assert main(argv) == 0
    assert json.loads(report.read_text())["metrics"]["psnr"]["status"] == "ok"
