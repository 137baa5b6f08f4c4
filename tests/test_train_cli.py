"""`python -m train` on bad input: one clear sentence, exit code 2, no traceback, nothing left behind; and the
reproduction recipe, bottom padding and clip lists it offers."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_paths import CLIP

REPO = Path(__file__).resolve().parents[1]


def _safetensors(path: Path, names: list[str]) -> Path:
    header = json.dumps({n: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                         for i, n in enumerate(names)}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * (4 * len(names)))
    return path


@pytest.fixture
def workdir(tmp_path):
    """A minimal cache (index.json only: bad arguments must be refused before any clip is read) and files."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "index.json").write_text(json.dumps({"cache_version": 2, "clips": []}))
    (tmp_path / "a_file").write_text("not a folder")
    _safetensors(tmp_path / "other.safetensors", ["encoder.weight"])
    (tmp_path / "not_an_adapter").mkdir()
    (tmp_path / "not_an_adapter" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (tmp_path / "used" / "checkpoints" / "step_00000002").mkdir(parents=True)
    (tmp_path / "adapter_like").mkdir()
    (tmp_path / "adapter_like" / "config.json").write_text('{"_class_name": "SurgSoraAdapter"}')
    _safetensors(tmp_path / "adapter_like" / "diffusion_pytorch_model.safetensors", ["conv_in.weight"])
    _checkpoint(tmp_path / "ckpt_pickle", optimizer=lambda p: _torch_save({"state": {}, "hook": print}, p))
    return tmp_path


def _torch_save(obj, path: Path) -> None:
    import torch

    torch.save(obj, path)


def _checkpoint(folder: Path, **writers) -> Path:
    """A checkpoint folder as `python -m train fit` writes it; ``writers`` replace how a file is written
    (``optimizer=``, ``lr_scheduler=``, ``rank0=``, ``state=``: a function of its path)."""
    (folder / "adapter").mkdir(parents=True)
    _safetensors(folder / "adapter" / "diffusion_pytorch_model.safetensors", ["conv_in.weight"])
    default = {"optimizer": lambda p: _torch_save({"state": {}, "param_groups": []}, p),
               "lr_scheduler": lambda p: _torch_save({"last_epoch": 3}, p),
               "rank0": lambda p: _torch_save({"generators": {}, "scaler": None}, p),
               "state": lambda p: p.write_text(json.dumps({"step": 3, "world_size": 1}))}
    for name, write in {**default, **writers}.items():
        write(folder / ("state.json" if name == "state" else f"{name}.pt"))
    return folder


FIT = ["fit", "--data", "cache", "--config", "tiny", "--out", "run"]
PRE = ["preprocess", str(CLIP), "--tiny-models", "--out", "newcache"]
SAMPLE = ["sample", "--data", "cache", "--adapter", "not_an_adapter", "--out", "samples", "--config", "tiny"]
# (id, argv, what the one sentence must say)
CASES = [
    ("batch-size-0", FIT + ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ("lr-nan", FIT + ["--lr", "nan"], "--lr must be a finite number, got nan"),
    ("lr-negative", FIT + ["--lr", "-0.0001"], "--lr must be positive"),
    ("max-steps-negative", FIT + ["--max-steps", "-5"], "--max-steps must be at least 1"),
    ("weight-decay-negative", FIT + ["--weight-decay", "-0.1"], "--weight-decay must be 0 or more"),
    ("sigma-max-nan", FIT + ["--sigma-max", "nan"], "--sigma-max must be a finite number"),
    ("p-std-inf", FIT + ["--p-std", "inf"], "--p-std must be a finite number"),
    ("drop-prob-above-1", FIT + ["--drop-clip-prob", "1.5"], "--drop-clip-prob is a probability"),
    ("fps-0", FIT + ["--fps", "0"], "--fps must be at least 1"),
    ("grad-accum-0", FIT + ["--grad-accum", "0"], "--grad-accum must be at least 1"),
    ("batch-size-not-a-number", FIT + ["--batch-size", "two"], "invalid int value: 'two'"),
    ("stage-3", FIT + ["--stage", "3"], "--stage must be one of 1, 2"),
    ("device-cuda-absent", FIT + ["--device", "cuda:99"], "--device cuda:99"),
    ("fp16-on-cpu", FIT + ["--mixed-precision", "fp16", "--device", "cpu"], "fp16 needs a GPU"),
    ("out-is-a-file", FIT[:-1] + ["a_file"], "--out a_file is an existing file"),
    ("out-under-a-file", FIT[:-1] + ["a_file/run"], "a_file is a file, not a folder"),
    ("out-read-only", FIT[:-1] + ["/proc/surgsora-run"], "--out /proc/surgsora-run is not writable"),
    ("out-has-checkpoints", FIT[:-1] + ["used"], "add --resume latest"),
    ("no-cache", ["fit", "--data", "nowhere", "--config", "tiny", "--out", "run"], "index.json missing"),
    ("resume-missing", FIT + ["--resume", "nowhere/step_1"], "--resume nowhere/step_1 is not a checkpoint folder"),
    ("seed-below-random", FIT + ["--seed", "-2"], "--seed must be 0 or more, or -1 for a random seed"),
    ("resume-pickled-optimizer", FIT + ["--resume", "ckpt_pickle"], "holds pickled Python objects (builtins.print)"),
    ("mofa-missing", FIT + ["--init-from-mofa", "missing.safetensors"], "does not exist"),
    ("mofa-wrong-file", FIT + ["--init-from-mofa", "other.safetensors"], "is not MOFA-Video-Traj's ControlNet"),
    ("mofa-text-file", FIT + ["--init-from-mofa", "a_file"], "is not a weights file"),
    ("adapter-typo", FIT + ["--adapter", "runs/stage1/adaptr"], "--adapter runs/stage1/adaptr is not a folder"),
    ("adapter-not-an-adapter", FIT + ["--adapter", "not_an_adapter"], "is not a SurgSora adapter folder"),
    ("adapter-and-mofa", FIT + ["--adapter", "not_an_adapter", "--init-from-mofa", "other.safetensors"], "not both"),
    ("sum-without-depth", FIT + ["--fusion", "sum", "--no-depth-branch"], "cannot be combined with --no-depth-branch"),
    ("flow-decoder-missing", FIT + ["--stage", "2", "--flow-decoder", "cmp.pth.tar"],
     "--flow-decoder cmp.pth.tar is not a file"),
    ("unknown-recipe", FIT + ["--recipe", "surgsora-copesdd"], "no such recipe; shipped: surgsora-copesd"),
    ("recipe-svd-missing", ["fit", "--recipe", "surgsora-copesd", "--data", "cache", "--out", "run", "--device", "cpu",
                            "--mixed-precision", "no"], "--svd models/checkpoints/svd_xt_1_1.safetensors does not exist"),
    ("pre-frames-1", PRE + ["--frames", "1"], "--frames must be at least 2, got 1"),
    ("pre-stride-0", PRE + ["--clip-stride", "0"], "--clip-stride must be at least 1"),
    ("pre-size-not-64", PRE + ["--size", "100"], "multiples of 64"),
    ("pre-out-is-a-file", PRE[:-1] + ["a_file"], "--out a_file is an existing file"),
    ("pre-device-cuda-absent", PRE + ["--device", "cuda:99"], "--device cuda:99"),
    ("pre-masks-missing", PRE + ["--masks", "no_masks"], "--masks no_masks is not a folder"),
    ("pre-content-too-big", PRE + ["--content-size", "300x256"], "is larger than --size 256x256"),
    ("pre-no-models", PRE[:2] + ["--out", "newcache"], "give --sam PATH and --depth PATH"),
    ("sample-steps-0", SAMPLE + ["--steps", "0"], "--steps must be at least 1, got 0"),
    ("sample-not-an-adapter", SAMPLE, "--adapter not_an_adapter is not a SurgSora adapter folder"),
    ("sample-adapter-typo", SAMPLE + ["--adapter", "runs/typo"], "--adapter runs/typo is not a folder"),
    ("sample-no-svd", SAMPLE[:-2] + ["--adapter", "adapter_like"], "--svd (none) does not exist"),
]


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("argv, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_sentence_exit_2_and_leaves_nothing(workdir, argv, message):
    if "/proc/" in " ".join(argv) and not Path("/proc/self").exists():
        pytest.skip("needs /proc (a location nobody can write, root included)")
    before = _tree(workdir)
    # An unreachable hub: a name mistaken for a Hub repo would fail differently (or hang until the timeout).
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_ENDPOINT": "http://127.0.0.1:9", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "train", *argv], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert _tree(workdir) == before  # no run folder, cache, lock or probe left behind


def _truncate(write):
    def cut(path: Path) -> None:
        write(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return cut


# (what is wrong, writers for _checkpoint, words of the sentence): checked before any model is loaded
RESUME_CASES = [
    ("pickled optimizer", dict(optimizer=lambda p: _torch_save({"state": {}, "fn": print}, p)), "pickled Python"),
    ("pickled scheduler", dict(lr_scheduler=lambda p: _torch_save({"lambda": os.getcwd}, p)), "pickled Python"),
    ("truncated optimizer", dict(optimizer=_truncate(lambda p: _torch_save({"w": [1.0] * 1000}, p))), "truncated"),
    ("text as rank file", dict(rank0=lambda p: p.write_text("not a checkpoint")), "not a torch checkpoint"),
    ("empty optimizer", dict(optimizer=lambda p: p.write_bytes(b"")), "truncated"),
    ("no state.json", dict(state=lambda p: None), "not a complete checkpoint"),
    ("state.json cut short", dict(state=lambda p: p.write_text('{"step": ')), "is damaged"),
    ("state.json without a step", dict(state=lambda p: p.write_text("[]")), "is damaged"),
]


def test_resume_checkpoints_that_cannot_be_read_back_are_one_sentence(tmp_path):
    from train.checkpoint import CheckpointError, check_checkpoint

    assert check_checkpoint(_checkpoint(tmp_path / "good"))["step"] == 3
    for i, (what, writers, words) in enumerate(RESUME_CASES):
        folder = _checkpoint(tmp_path / f"c{i}", **writers)
        with pytest.raises(CheckpointError) as e:
            check_checkpoint(folder)
        msg = str(e.value)
        assert words in msg and "\n" not in msg and "weights_only=False" not in msg, (what, msg)
        assert str(folder) in msg, (what, msg)  # names the file (or the folder) at fault
    (tmp_path / "c_weights").mkdir()
    bad = _checkpoint(tmp_path / "c_weights" / "x")
    (bad / "adapter" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match="not readable safetensors"):
        check_checkpoint(bad)


# ------------------------------------------------------------------------------ recipe, padding, clip lists

def test_recipe_sets_the_paper_settings_and_flags_win(tmp_path, monkeypatch):
    from train.__main__ import _fit_config
    from train.config import load_recipe

    recipe = load_recipe("surgsora-copesd")
    assert recipe["preprocess"]["frames"] == 21 and recipe["preprocess"]["content_size"] == "197x256"
    assert recipe["preprocess"]["pad"] == "bottom" and recipe["preprocess"]["depth_input_size"] == 266
    assert recipe["preprocess"]["sam"].endswith("sam_vit_h_4b8939.pth")
    assert recipe["preprocess"]["depth"].endswith("depth_anything_v2_vitb.pth")
    cfg = _fit_config(None, {"recipe": "surgsora-copesd", "models": str(tmp_path), "lr": 1e-5})
    assert (cfg.batch_size, cfg.max_steps, cfg.mixed_precision, cfg.sigma_scheme, cfg.fps) == (2, 20000, "fp16", "cosine", 7)
    assert cfg.lr == 1e-5 and cfg.warmup_steps == 0  # the flag wins; constant LR
    assert cfg.svd == str(tmp_path / "checkpoints" / "svd_xt_1_1.safetensors")
    assert cfg.extra == {"total_batch": 4, "processes": 2}
    # A recipe file of one's own works the same way; settings it cannot apply are named.
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"preprocess": {}, "fit": {"max_steps": 5, "learning_rate": 1}}))
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="learning_rate"):
        _fit_config(None, {"recipe": str(own)})


def test_bottom_padding_with_a_fixed_content_size():
    from train.data import content_box, fit_frames

    frames = np.full((2, 480, 640, 3), 200, np.uint8)
    out = fit_frames(frames, (256, 256), "pad", pad="bottom", content_size=(197, 256))
    assert out.shape == (2, 256, 256, 3)
    assert (out[:, :197] == 200).all() and (out[:, 197:] == 0).all()  # 59 black rows at the bottom only
    assert content_box((480, 640), (256, 256), "pad", "bottom", (197, 256)) == (0, 197, 0, 256)
    centred = fit_frames(frames, (256, 256), "pad")  # keep aspect 4:3 -> 192 rows, 32 black above and below
    assert (centred[:, :32] == 0).all() and (centred[:, 32:224] == 200).all() and (centred[:, 224:] == 0).all()


def test_clip_lists_of_frame_folders_in_numeric_frame_order(tmp_path):
    from train.data import _read_clip, discover_clips

    folder = tmp_path / "video01"
    folder.mkdir()
    import cv2

    for i in range(1, 13):  # frame_1 .. frame_12: name order would put frame_10 before frame_2
        cv2.imwrite(str(folder / f"frame_{i}.png"), np.full((8, 8, 3), i * 10, np.uint8))
    (tmp_path / "clips.txt").write_text("# CoPESD-style: folder and start frame\nvideo01 0\nvideo01 5  # second\n")
    specs, problems = discover_clips([tmp_path / "clips.txt"], num_frames=4, frame_step=2)
    assert problems == [] and [(Path(s.source).name, s.start) for s in specs] == [("video01", 0), ("video01", 5)]
    clip = _read_clip(folder, 5, 7)[::2]
    assert [int(f[0, 0, 0]) for f in clip] == [60, 80, 100, 120]  # frames 6, 8, 10, 12 in numeric order
    (tmp_path / "clips.csv").write_text("frames,start\nvideo01,3\nvideo01,x\nmissing,0\n")
    specs, problems = discover_clips([tmp_path / "clips.csv"], num_frames=4)
    assert [s.start for s in specs] == [3]
    assert any("'x' is not a frame number" in p for p in problems) and any("missing does not exist" in p for p in problems)


def test_stage2_continues_with_the_fps_its_adapter_was_trained_with(tmp_path, capsys):
    from train.__main__ import _fit_config

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "config.json").write_text(json.dumps({"_class_name": "SurgSoraAdapter", "fps": 12}))
    assert _fit_config(None, {"adapter": str(adapter)}).fps == 12
    assert "--fps 12" in capsys.readouterr().out  # said, not silent
    assert _fit_config(None, {"adapter": str(adapter), "fps": 9}).fps == 9  # an explicit flag wins
    assert _fit_config(None, {}).fps == 7  # a new adapter: 7, i.e. added_time_ids[0] = 6 as published


def test_mofa_and_surgsora_adapters_are_told_apart_before_training(workdir):
    """--init-from-mofa and --adapter each name the other when given the other kind (the loaders' detection)."""
    import zipfile

    from train.config import ConfigError, FitConfig, check_fit_config

    mofa = workdir / "ckpts" / "controlnet"
    mofa.mkdir(parents=True)
    (mofa / "config.json").write_text('{"_class_name": "FlowControlNet"}')
    _safetensors(mofa / "diffusion_pytorch_model.safetensors", ["conv_in.weight", "flow_encoder.zeroconvs.0.weight"])
    adapter = workdir / "adapter_like"  # config.json of a SurgSoraAdapter + weights with its names
    _safetensors(adapter / "diffusion_pytorch_model.safetensors", ["conv_in.weight", "rgb_encoder.zeroconvs.0.weight"])
    bin_only = workdir / "bin_only" / "controlnet"  # a torch .bin state dict (a zip archive) is checked when loaded
    bin_only.mkdir(parents=True)
    with zipfile.ZipFile(bin_only / "diffusion_pytorch_model.bin", "w") as z:
        z.writestr("archive/data.pkl", b"")
    (workdir / "garbage.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0not json at all!")

    def check(**settings):
        check_fit_config(FitConfig(data=str(workdir / "cache"), out=str(workdir / "run"), config="tiny", **settings))

    for settings in (dict(init_from_mofa=str(mofa)), dict(init_from_mofa=str(mofa.parent)),
                     dict(init_from_mofa=str(mofa / "diffusion_pytorch_model.safetensors")),
                     dict(init_from_mofa=str(bin_only.parent)), dict(adapter=str(adapter))):
        check(**settings)  # accepted
    refused = {
        "init_from_mofa=adapter": (dict(init_from_mofa=str(adapter)), "is a SurgSora adapter; continue from it with --adapter"),
        "init_from_mofa=its weights": (dict(init_from_mofa=str(adapter / "diffusion_pytorch_model.safetensors")),
                                       "is a SurgSora adapter, not MOFA's ControlNet; use --adapter."),
        "adapter=mofa": (dict(adapter=str(mofa.parent)), "is MOFA-Video-Traj's ControlNet; start from it with --init-from-mofa"),
        "init_from_mofa=garbage": (dict(init_from_mofa=str(workdir / "garbage.safetensors")),
                                   "is not a readable safetensors file"),
    }
    for name, (settings, message) in refused.items():
        with pytest.raises(ConfigError) as e:
            check(**settings)
        assert message in str(e.value), name
