"""Bad input at every entry point (CLI, evaluation, nodes, library): one sentence that names the fix, the
right exit code or exception type, no traceback, no hang and no file left behind.

Each case runs in a worker thread with a timeout, so a hang (``--fps inf`` used to spin forever in the video
writer) fails the case instead of the run. The in-process CLI cases check what a user sees on stderr.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from surgsora.cli import main as cli_main
from surgsora.eval.cli import main as eval_main
from surgsora.video_io import write_video
from fake_models import fake_models_folder

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the ComfyUI node package (never installed)
    sys.path.insert(0, str(REPO))

TIMEOUT = 60  # s per case: a hang is a failure, not a stuck test run
FW, FH = 96, 64  # the test frame


def run_with_timeout(fn, timeout=TIMEOUT):
    """(returned value, raised exception) of ``fn()``; fails the test if it does not finish in time."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - SystemExit is how the CLI reports usage errors
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"hung for more than {timeout} s")
    return box.get("value"), box.get("error")


def exit_code(value, error) -> int:
    if error is None:
        return value
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 1
    raise error  # an unexpected exception is a test failure, traceback and all


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def damage_middle(data: bytes, length: int = 400, at: float = 0.5) -> bytes:
    """A video file with ``length`` random bytes written over it at fraction ``at`` (a bad sector, a cut download)."""
    out = bytearray(data)
    mid = int(len(out) * at)
    out[mid:mid + length] = np.random.default_rng(7).integers(0, 256, length, dtype=np.uint8).tobytes()
    return bytes(out)


# ----------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A frame, a short video, masks of every kind, tracks files of every kind, a pickled checkpoint."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (FH, FW, 3), dtype=np.uint8)
    cv2.imwrite(str(d / "frame.png"), frame)
    cv2.imwrite(str(d / "tiny.png"), frame[:8, :8])
    write_video(d / "clip.mp4", np.stack([frame] * 3), fps=5)
    mask = np.zeros((FH, FW), np.uint8)
    mask[10:40, 20:60] = 255
    cv2.imwrite(str(d / "mask.png"), mask)
    cv2.imwrite(str(d / "mask_small.png"), cv2.resize(mask, (40, 30)))
    cv2.imwrite(str(d / "mask_empty.png"), np.zeros((FH, FW), np.uint8))
    (d / "mask_text.png").write_text("not an image")
    tracks = {"width": FW, "height": FH, "tracks": [[[30, 20], [40, 24]], [[70, 50]]]}
    (d / "tracks.json").write_text(json.dumps(tracks))
    (d / "tracks_bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(tracks).encode())
    (d / "tracks_latin1.json").write_bytes('{"width": 96, "height": 64, "tracks": [], "n": "caf\xe9"}'.encode("latin-1"))
    (d / "tracks_binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": print}, d / "pickle.pth")  # a global: not weights
    smooth = np.stack([np.roll(frame, 4 * t, 1) for t in range(10)])
    write_video(d / "long.mp4", smooth, fps=5)
    (d / "damaged.mp4").write_bytes(damage_middle((d / "long.mp4").read_bytes()))
    (d / "damaged_late.mp4").write_bytes(damage_middle((d / "long.mp4").read_bytes(), 100, at=0.9))
    noisy = np.clip(mask.astype(int) + rng.integers(0, 40, mask.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(d / "mask_noisy.png"), noisy)
    models = fake_models_folder(d / "models")
    corrupt = d / "models_corrupt"
    (corrupt / "surgsora" / "adapter").mkdir(parents=True)
    (corrupt / "surgsora" / "adapter" / "config.json").write_text('{"_class_name": "SurgSora')  # cut short
    return d


# ----------------------------------------------------------------------------------------- the CLI

TRACKS = json.dumps({"width": FW, "height": FH, "tracks": [[[30, 20], [40, 24]]]})

# (arguments, words the one-sentence message must contain). IN = the inputs folder, OUT = a fresh folder.
CLI_CASES = [
    (["preview", "--fps", "inf"], "--fps must be a finite number"),
    (["preview", "--fps", "nan"], "--fps must be a finite number"),
    (["preview", "--fps", "0"], "--fps must be a finite number"),
    (["preview", "--frames", "1"], "--frames must be at least 2"),
    (["preview", "--size", "100000x100"], "larger than 8192"),
    (["preview", "--size", "wide"], "--size must look like 448x256"),
    (["preview", "--frames", "4000", "--size", "4096x4096"], "fewer --frames"),
    (["preview", "--image", "IN/clip.mp4", "--frame-index", "-1"], "--frame-index must be 0 or more"),
    (["preview", "--image", "IN/clip.mp4", "--frame-index", "99"], "beyond the end"),
    (["preview", "--frame-index", "2"], "only applies to videos"),
    (["preview", "--image", "IN/tiny.png"], "at least 32x32"),
    (["preview", "--image", "IN/missing.png"], "does not exist"),
    (["preview", "--image", "IN/mask_text.png"], "not a readable image"),
    (["preview", "--masks", "IN/mask_small.png"], "is 40x30 but the frame is 96x64"),
    (["preview", "--masks", "IN/mask_small.png"], "--resize-masks"),
    (["preview", "--masks", "IN/mask_empty.png"], "empty (all zeros)"),
    (["preview", "--masks", "IN/mask_text.png"], "not a readable image"),
    (["preview", "--masks", "IN/nope.png"], "does not exist"),
    (["preview", "--depth", "IN/mask_small.png"], "--resize-masks"),
    (["preview", "--tracks", json.dumps({"width": 100, "height": 100, "tracks": [[[3, 3]]]})], "another shape"),
    (["preview", "--tracks", '{"width": 96, "height": 64, "tracks": [[[true, 5], [10, 5]]]}'], "non-numeric"),
    (["preview", "--tracks", "[[1, 2], [3"], "not valid JSON"),
    (["preview", "--tracks", ""], "--tracks is empty"),
    (["preview", "--tracks", "IN/tracks_binary.json"], "binary file"),
    (["preview", "--tracks", "IN/tracks_latin1.json"], "not UTF-8"),
    (["preview", "--tracks", "IN/trakcs.json"], "file not found"),
    (["preview", "--tracks", "my_tracks"], "file not found"),
    (["preview", "--tracks", "IN"], "is a folder"),
    (["preview", "--tracks", json.dumps({"width": 96, "height": 64, "tracks": [[[1, 1], [2, 2]]],
                                         "start_end": [[-5, 2]]})], "start frame must be 0 or more"),
    (["preview", "--out", "OUT/video"], "has no extension"),
    (["preview", "--out", "OUT/video.gif"], "'.gif'"),
    (["preview", "--out", "OUT"], "existing folder"),
    (["preview", "--flow-out", "OUT/o.mp4"], "same file as --out"),
    (["preview", "--save-flow", "OUT/flow.txt"], ".npy"),
    (["preview", "--decoder", "IN/nope.pth.tar"], "use 'analytic'"),
    (["preview", "--decoder", "IN/pickle.pth"], "pickled Python objects"),
    (["generate", "--control-scale", "nan"], "--control-scale must be a finite number"),
    (["generate", "--min-cfg", "nan"], "--min-cfg must be a finite number"),
    (["generate", "--max-cfg", "inf"], "--max-cfg must be a finite number"),
    (["generate", "--noise-aug", "-0.1"], "--noise-aug must be a finite number >= 0"),
    (["generate", "--motion-bucket", "-1"], "--motion-bucket must be between 0 and 1023"),
    (["generate", "--steps", "0"], "--steps must be between 1"),
    (["generate", "--decode-chunk", "0"], "--decode-chunk must be at least 1"),
    (["generate", "--seed", "-2"], "or -1 for a random seed"),
    (["preview", "--image", "IN/damaged.mp4", "--frame-index", "8"], "damaged.mp4 is damaged at frame"),
    (["generate", "--t-weak", "nan"], "--t-weak (nan) must be smaller"),
    (["generate", "--device", "banana"], "is not a device"),
    (["generate", "--sam", "../no_such_folder/sam.pth"], "inside the models folder"),
    (["generate", "--models", "IN/models_corrupt"], "is corrupt"),
    (["generate", "--out", "OUT/video.gif"], "'.gif'"),
    (["generate", "--size", "100x64"], "multiples of 64"),
    (["download", "evil.pth", "--models", "OUT"], "not a known file"),
    (["download", "sam_vit_b_01ec64.pth", "--models", "IN/frame.png"], "is a file"),
]
if not torch.cuda.is_available():
    CLI_CASES.append((["generate", "--device", "cuda"], "use --device cpu"))


def _cli_args(args, inputs: Path, out: Path) -> list[str]:
    args = [a.replace("IN/", f"{inputs}/").replace("OUT", str(out)) for a in args]
    if args[-1] == "IN":
        args[-1] = str(inputs)
    if args[0] in ("preview", "generate"):
        defaults = {"--image": str(inputs / "frame.png"), "--tracks": TRACKS, "--out": str(out / "o.mp4")}
        if args[0] == "generate":
            defaults["--models"] = str(inputs / "models")
        for flag, value in defaults.items():
            if flag not in args:
                args += [flag, value]
    return args


@pytest.mark.parametrize("args, words", CLI_CASES, ids=[" ".join(a)[:60] for a, _ in CLI_CASES])
def test_cli_bad_input(args, words, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    value, error = run_with_timeout(lambda: cli_main(_cli_args(args, inputs, out)))
    code = exit_code(value, error)
    err = capsys.readouterr().err
    assert code == 2, err
    assert words in err, err
    assert "Traceback" not in err
    assert listing(out) == set()  # nothing written, not even a temporary file


def test_cli_refuses_a_read_only_output_folder_before_computing(inputs, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root writes anywhere: let the check see what a normal user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    try:
        value, error = run_with_timeout(lambda: cli_main(_cli_args(["preview", "--out", str(ro / "v.mp4")], inputs,
                                                                   tmp_path)))
        err = capsys.readouterr().err
        assert exit_code(value, error) == 2 and "is not writable" in err and "Traceback" not in err
    finally:
        ro.chmod(0o755)


def test_cli_accepts_a_bom_and_creates_the_output_folder(inputs, tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "p.mp4"
    value, error = run_with_timeout(lambda: cli_main(
        ["preview", "--image", str(inputs / "frame.png"), "--tracks", str(inputs / "tracks_bom.json"), "--frames", "3",
         "--masks", str(inputs / "mask.png"), "--out", str(out)]))
    assert exit_code(value, error) == 0, capsys.readouterr().err
    assert {p.name for p in out.parent.iterdir()} == {"p.mp4", "p_flow.mp4", "p_mask.mp4"}


def test_cli_masks_of_another_size_are_resized_only_when_asked(inputs, tmp_path, capsys):
    value, error = run_with_timeout(lambda: cli_main(
        ["preview", "--image", str(inputs / "frame.png"), "--tracks", TRACKS, "--frames", "3", "--masks",
         str(inputs / "mask_small.png"), "--resize-masks", "--out", str(tmp_path / "p.mp4")]))
    assert exit_code(value, error) == 0, capsys.readouterr().err


def test_cli_full_disk_leaves_nothing_behind(inputs, tmp_path, capsys, monkeypatch):
    """The encoder fails half-way through the second video (ENOSPC): exit 1, one sentence, no file at all."""
    import surgsora.video_io as vio

    real = vio.encode_video
    calls = []

    def failing(path, frames, *a, **kw):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"\x00" * 1000)  # some bytes reached the disk before it filled up
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, frames, *a, **kw)

    monkeypatch.setattr(vio, "encode_video", failing)
    out = tmp_path / "out"
    out.mkdir()
    value, error = run_with_timeout(lambda: cli_main(
        ["preview", "--image", str(inputs / "frame.png"), "--tracks", TRACKS, "--frames", "3",
         "--out", str(out / "p.mp4"), "--save-flow", str(out / "f.npy")]))
    err = capsys.readouterr().err
    assert exit_code(value, error) == 1 and "disk is full" in err and "Traceback" not in err
    assert listing(out) == set()


# (extra arguments, the one warning line expected on stderr or None): what the CLI assumed, said once
CLI_WARNING_CASES = [
    (["--tracks", json.dumps({"width": 2 * FW, "height": 2 * FH, "tracks": [[[60, 40], [80, 48]]]})],
     f"warning: tracks drawn on a {2 * FW}x{2 * FH} canvas were scaled to --image frame.png ({FW}x{FH})"),
    (["--masks", "IN/mask_noisy.png"], "is not binary"),
    (["--masks", "IN/mask.png"], None),  # a clean mask and tracks on the frame's own canvas: nothing to say
    (["--image", "IN/damaged_late.mp4", "--frame-index", "0"], None),  # damage after the frame used: quiet
]


@pytest.mark.parametrize("extra, line", CLI_WARNING_CASES, ids=[" ".join(e)[:40] for e, _ in CLI_WARNING_CASES])
def test_cli_says_once_what_it_assumed(extra, line, inputs, tmp_path, capfd):
    args = [a.replace("IN/", f"{inputs}/") for a in extra]
    argv = _cli_args(["preview", *args, "--frames", "2", "--size", f"{FW}x{FH}"], inputs, tmp_path)
    value, error = run_with_timeout(lambda: cli_main(argv))
    err = capfd.readouterr().err
    assert exit_code(value, error) == 0, err
    lines = [x for x in err.splitlines() if x.strip()]
    if line is None:
        assert lines == [], err  # no warning, and no decoder noise either
    else:
        assert len(lines) == 1 and lines[0].startswith("warning: ") and line in lines[0], err


def test_demo_tracks_fit_the_demo_frame_without_a_warning():
    """README's preview command: the shipped tracks declare the demo frame's own canvas."""
    import warnings

    from surgsora.motion.tracks import check_canvas, parse_track_data

    ts = parse_track_data((REPO / "demo" / "tracks_endovis.json").read_text())
    h, w = cv2.imread(str(REPO / "demo" / "surgsora_endovis_frame6.png")).shape[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_canvas(ts.canvas, (w, h))


def test_cli_subprocess_usage_error_has_no_traceback(inputs, tmp_path):
    """The real entry point: exit status 2 and one line, no Python traceback (and no hang on --fps inf)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "surgsora", "preview", "--image", str(inputs / "frame.png"),
                           "--tracks", TRACKS, "--fps", "inf", "--out", str(tmp_path / "o.mp4")],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO)
    assert proc.returncode == 2 and "--fps must be a finite number" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------- evaluation

@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(1)
    vid = rng.integers(0, 256, (4, 24, 32, 3), dtype=np.uint8)
    write_video(d / "real" / "a.mp4", vid)
    write_video(d / "fake" / "a.mp4", vid)
    write_video(d / "fake_unpaired" / "a.mp4", vid)
    write_video(d / "fake_unpaired" / "z.mp4", vid)
    write_video(d / "fake_short" / "a.mp4", vid[:3])
    for name, flow in (("ok", np.zeros((3, 2, 24, 32))), ("size", np.zeros((3, 2, 12, 16))),
                       ("nan", np.full((3, 2, 24, 32), np.nan))):
        (d / f"flows_{name}").mkdir()
        np.save(d / f"flows_{name}" / "a.npy", flow.astype(np.float32))
    (d / "flows_pickle").mkdir()
    torch.save({"flow": torch.zeros(3, 2, 24, 32), "hook": print}, d / "flows_pickle" / "a.pt")
    return d


EVAL_CASES = [  # (arguments, exit code, words on stderr)
    (["--fake", "D/fake_unpaired"], 2, "no partner of the same name"),
    (["--fake", "D/fake_unpaired"], 2, "--allow-mismatch"),
    (["--fake", "D/fake_short"], 2, "differ in length"),
    (["--metrics", "flow", "--flows", "D/flows_size"], 2, "differ in size"),
    (["--metrics", "flow", "--flows", "D/flows_nan"], 2, "NaN or infinite"),
    (["--metrics", "flow", "--flows", "D/flows_nan", "--allow-mismatch"], 2, "NaN or infinite"),
    (["--metrics", "flow", "--flows", "D/flows_pickle"], 1, "not loaded for safety"),
    (["--metrics", "flow", "--flows", "D/missing"], 2, "does not exist"),
    (["--batch-size", "0"], 2, "--batch-size must be at least 1"),
    (["--bootstrap", "-1"], 2, "--bootstrap must be at least 0"),
    (["--psnr-cap", "nan"], 2, "--psnr-cap must be a finite number"),
    (["--out", "OUT/report.txt"], 2, ".json"),
    (["--out", "OUT/already.json"], 2, "existing folder"),
    (["--real", "D/nowhere"], 2, "does not exist"),
    (["--device", "banana"], 2, "is not a device"),
]
if not torch.cuda.is_available():
    EVAL_CASES.append((["--device", "cuda"], 2, "use --device cpu"))


@pytest.mark.parametrize("args, code, words", EVAL_CASES, ids=[" ".join(a)[:60] for a, _, _ in EVAL_CASES])
def test_eval_bad_input(args, code, words, eval_data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "already.json").mkdir()
    args = [a.replace("D/", f"{eval_data}/").replace("OUT", str(out)) for a in args]
    defaults = {"--real": str(eval_data / "real"), "--fake": str(eval_data / "fake"), "--out": str(out / "r.json"),
                "--metrics": "psnr"}
    for flag, value in defaults.items():
        if flag not in args:
            args += [flag, value]
    value, error = run_with_timeout(lambda: eval_main(args + ["--no-plots", "--quiet"] if code == 2 else
                                                      args + ["--no-plots"]))
    got = exit_code(value, error)
    err = capsys.readouterr().err
    assert got == code, err
    assert words in err and "Traceback" not in err
    assert "weights_only=False" not in err  # never repeat torch's unsafe advice
    if code == 2:
        assert listing(out) == {"already.json"}


def test_eval_allow_mismatch_prints_the_differences(eval_data, tmp_path, capsys):
    out = tmp_path / "r.json"
    value, error = run_with_timeout(lambda: eval_main(
        ["--real", str(eval_data / "real"), "--fake", str(eval_data / "fake_unpaired"), "--out", str(out),
         "--metrics", "psnr", "--no-plots", "--quiet", "--allow-mismatch"]))
    assert exit_code(value, error) == 0
    err = capsys.readouterr().err
    assert "mismatch allowed" in err and "z" in err
    assert any("mismatch allowed" in w for w in json.loads(out.read_text())["warnings"])


# ----------------------------------------------------------------------------------------- nodes

@pytest.fixture(scope="module")
def image():
    return torch.rand(1, FH, FW, 3)


def _node(module, name):
    import importlib

    mod = importlib.import_module(f"nodes.{module}")
    obj = mod.NODE_CLASS_MAPPINGS[name]()
    return getattr(obj, obj.FUNCTION)


def _analytic():
    from surgsora.motion.analytic_flow import AnalyticDecoder

    return AnalyticDecoder()


def _tracks_dict():
    from nodes.trajectory import _tracks_dict

    return _tracks_dict(np.array([[[30.0, 20.0], [40.0, 24.0]]], np.float32), FW, FH)


NODE_CASES = [  # (node module, node name, kwargs builder, exception type, words)
    ("trajectory", "SurgSoraTrajectories", lambda im: dict(tracks=TRACKS, frames=True, image=im), ValueError,
     "frames must be a whole number"),
    ("trajectory", "SurgSoraTrajectories", lambda im: dict(tracks=TRACKS, frames=5000, image=im), ValueError,
     "frames must be between 2 and 4096"),
    ("trajectory", "SurgSoraTrajectories",
     lambda im: dict(tracks=json.dumps({"width": 64, "height": 64, "tracks": [[[3, 3]]]}), image=im), ValueError,
     "another shape"),
    ("trajectory", "SurgSoraTrajectories",
     lambda im: dict(tracks='[[{"x": true, "y": 3}, {"x": 4, "y": 3}]]', canvas_width=FW, canvas_height=FH),
     ValueError, "non-numeric"),
    ("trajectory", "SurgSoraTracksToFlow",
     lambda im: dict(decoder=_analytic(), tracks=_tracks_dict(), image=im, region_masks=torch.zeros(1, FH, FW)),
     ValueError, "empty (all zeros)"),
    ("trajectory", "SurgSoraTracksToFlow",
     lambda im: dict(decoder=_analytic(), tracks=_tracks_dict(), image=im, region_masks=torch.ones(1, 64, 64)),
     ValueError, "are 64x64 but the image is 96x64"),
    ("trajectory", "SurgSoraMotionPreview",
     lambda im: dict(image=im, flow=torch.full((1, 2, 2, FH, FW), float("nan"))), ValueError, "NaN or infinite"),
    ("trajectory", "SurgSoraMotionPreview",
     lambda im: dict(image=im, flow=torch.zeros(1, 2, 2, 64, 64)), ValueError, "flow is 64x64 but the image is 96x64"),
    ("trajectory", "SurgSoraMotionSignal",
     lambda im: dict(image=im, flow=torch.zeros(1, 2, 2, FH, FW), depth=torch.rand(1, 64, 64)), ValueError,
     "depth is 64x64"),
    ("trajectory", "SurgSoraVideoFlow", lambda im: dict(frames=im.expand(3, -1, -1, -1), start=5), ValueError,
     "beyond the clip"),
    ("perception", "SurgSoraDepth", lambda im: dict(depth_model=None, image=im, input_size=True), ValueError,
     "multiple of 14"),
]


@pytest.mark.parametrize("module, name, kwargs, exc, words", NODE_CASES,
                         ids=[f"{n}-{w[:25]}" for _, n, _, _, w in NODE_CASES])
def test_node_bad_input(module, name, kwargs, exc, words, image):
    value, error = run_with_timeout(lambda: _node(module, name)(**kwargs(image)))
    assert isinstance(error, exc), error
    assert words in str(error) and "\n" not in str(error)


def test_node_noisy_region_masks_are_thresholded_with_a_warning(image):
    """The node's own MASK path (_regions_for): a soft or noisy MASK is read as > 0.5 and says so; a clean one,
    with anti-aliased edges or not, stays quiet."""
    import warnings

    from surgsora.video_io import MaskThresholdWarning

    clean = torch.zeros(1, FH, FW)
    clean[0, 10:40, 20:60] = 1
    soft_edge = clean.clone()
    soft_edge[0, 9, 20:60] = 0.5
    noisy = (clean + torch.rand(1, FH, FW) * 0.3).clamp(0, 1)
    flow = _node("trajectory", "SurgSoraTracksToFlow")
    for mask, warned in ((clean, False), (soft_edge, False), (noisy, True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            flow(decoder=_analytic(), tracks=_tracks_dict(), image=image, region_masks=mask)
        got = [w for w in caught if w.category is MaskThresholdWarning]
        assert len(got) == (1 if warned else 0), [str(w.message) for w in caught]
        if warned:
            assert "region_masks mask 0 is not binary" in str(got[0].message)
            assert "thresholded at 0.5" in str(got[0].message)


def test_node_clicks_far_outside_the_image_are_refused():
    from nodes.perception import _clicks

    with pytest.raises(ValueError, match="outside the 96x64 image"):
        _clicks("[[500, 10]]", None, (FW, FH))
    with pytest.raises(ValueError, match="another shape"):
        _clicks(json.dumps({"width": 64, "height": 64, "tracks": [[[3, 3]]]}), None, (FW, FH))
    assert _clicks("[[96.5, 10]]", None, (FW, FH))[0, 0] < FW  # just past the edge: on the edge


def test_node_model_names_symlinks_and_corrupt_configs(tmp_path, monkeypatch):
    """Containment on the name as chosen: symlinked files (HF cache snapshots) work, ../ names do not."""
    from nodes.models import model_choices, resolve_model

    from surgsora.loading.io import ModelFileError

    blobs = tmp_path / "hf_cache" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "abc123").write_bytes(b"weights")
    sams = tmp_path / "models" / "sams"
    sams.mkdir(parents=True)
    (sams / "sam_vit_b_01ec64.pth").symlink_to(blobs / "abc123")
    (tmp_path / "models" / "surgsora" / "adapter").mkdir(parents=True)
    (tmp_path / "models" / "surgsora" / "adapter" / "config.json").write_text("{broken")
    import nodes.models

    # the folders ComfyUI would configure (other tests may have installed a stand-in folder_paths)
    monkeypatch.setattr(nodes.models, "folder_roots", lambda folder: [tmp_path / "models" / folder])
    path = resolve_model("sam", "sam_vit_b_01ec64.pth")
    assert path.read_bytes() == b"weights"
    with pytest.raises(ValueError, match="inside the models folder"):
        resolve_model("sam", "../hf_cache/blobs/abc123")
    assert "adapter" in model_choices("adapter")  # listed, so choosing it can say what is wrong
    with pytest.raises(ModelFileError, match="is corrupt"):
        resolve_model("adapter", "adapter")


# ----------------------------------------------------------------------------------------- library

def _nan_flow():
    return torch.full((1, 2, 4, 4), float("nan"))


def _library_cases():
    from surgsora.eval.data import load_flow
    from surgsora.eval.metrics import flow_errors
    from surgsora.loading.io import safe_join
    from surgsora.motion.analytic_flow import AnalyticDecoder, decode_points
    from surgsora.motion.flow_viz import draw_tracks, flow_to_rgb
    from surgsora.motion.splat import forward_splat
    from surgsora.motion.tracks import TrackError, check_canvas, parse_track_data, prepare_tracks
    from surgsora.video_io import OutputPathError, check_output_path

    inf_flow = torch.zeros(1, 2, 4, 4)
    inf_flow[0, 0, 1, 1] = float("inf")
    return [
        (lambda d: forward_splat(torch.ones(1, 3, 4, 4), _nan_flow()), ValueError, "finite"),
        (lambda d: forward_splat(torch.ones(1, 3, 4, 4), inf_flow), ValueError, "finite"),
        (lambda d: flow_to_rgb(_nan_flow()), ValueError, "NaN or infinite"),
        (lambda d: flow_to_rgb(inf_flow), ValueError, "NaN or infinite"),
        (lambda d: flow_to_rgb(torch.zeros(1, 2, 4, 4), max_flow=float("nan")), ValueError, "max_flow"),
        (lambda d: draw_tracks(np.zeros((8, 8, 3), np.uint8), [np.array([[1.0, np.nan]])]), ValueError, "track 0"),
        (lambda d: parse_track_data([[[True, 1], [2, 3]]]), TrackError, "non-numeric"),
        (lambda d: parse_track_data(np.ones((1, 2, 2), bool)), TrackError, "boolean"),
        (lambda d: parse_track_data(b"[[1, 2], [3, \xff]]"), TrackError, "not UTF-8"),
        (lambda d: parse_track_data("\x00\x01binary"), TrackError, "binary"),
        (lambda d: parse_track_data({"width": 12.7, "height": 8, "tracks": [[[1, 1]]]}), TrackError, "integers"),
        (lambda d: prepare_tracks([[[1, 1], [2, 2]]], canvas_size=(8, 8), num_frames=4, start_end=[(-5, 2)]),
         TrackError, "start frame must be 0 or more"),
        (lambda d: prepare_tracks([[[1, 1], [2, 2]]], canvas_size=(8, 8), num_frames=2.5), TrackError, "integer"),
        (lambda d: check_canvas((100, 100), (96, 64)), TrackError, "another shape"),
        (lambda d: AnalyticDecoder(radius=float("nan")), ValueError, "radius"),
        (lambda d: decode_points(torch.tensor([[1.0, float("nan")]]), torch.zeros(1, 2, 2), (8, 8)), ValueError,
         "NaN or inf"),
        (lambda d: AnalyticDecoder()(None, torch.full((1, 1, 2, 8, 8), float("nan")), torch.ones(1, 1, 1, 8, 8)),
         ValueError, "finite"),
        (lambda d: write_video(d / "v.mp4", np.zeros((2, 8, 8, 3), np.uint8), fps=float("inf")), ValueError,
         "finite number of frames per second"),
        (lambda d: write_video(d / "v.mp4", np.full((2, 8, 8, 3), np.nan, np.float32)), ValueError,
         "NaN or infinite"),
        (lambda d: write_video(d / "v.gif", np.zeros((2, 8, 8, 3), np.uint8)), OutputPathError, ".mp4"),
        (lambda d: check_output_path(d, "--out"), OutputPathError, "existing folder"),
        (lambda d: safe_join(d, "../escape.pth"), ValueError, "points outside"),
        (lambda d: safe_join(d, "/etc/passwd"), ValueError, "absolute"),
        (lambda d: (np.save(d / "nan.npy", np.full((2, 2, 4, 4), np.nan, np.float32)), load_flow(d / "nan.npy")),
         ValueError, "NaN or infinite"),
        (lambda d: (torch.save({"flow": torch.zeros(1, 2, 4, 4), "x": print}, d / "f.pt"), load_flow(d / "f.pt")),
         ValueError, "not loaded for safety"),
        (lambda d: flow_errors(np.zeros((1, 2, 4, 4)), np.full((1, 2, 4, 4), np.nan)), ValueError, "finite"),
    ]


def _size_cases():
    """Impossible sizes: refused in one sentence before interpolate's bare error."""
    from surgsora.motion.preview import motion_signal
    from surgsora.motion.splat import resize_flow
    from surgsora.motion.tracks import TrackError, rasterize

    flow = torch.zeros(1, 2, 8, 8)
    return [(lambda d, s=s: resize_flow(flow, s), ValueError, w) for s, w in [
        ((0, 4), "each at least 1"), ((-3, 4), "each at least 1"), ((4, 0), "each at least 1"),
        ((4.5, 4), "whole pixels"), ((True, 4), "whole pixels"), (None, "(height, width)"), ((4,), "(height, width)"),
        ((float("nan"), 4), "whole pixels")]] + [
        (lambda d: rasterize(torch.zeros(1, 3, 2), (0, 8)), TrackError, "rasterize: size must be"),
        (lambda d: rasterize(torch.zeros(1, 3, 2), (8, -8)), TrackError, "each at least 1"),
        (lambda d: motion_signal(torch.rand(1, 3, 8, 8), flow[None, :1], mask_dilate=-2), ValueError,
         "mask_dilate must be a whole number of pixels >= 0"),
        (lambda d: motion_signal(torch.rand(1, 3, 8, 8), flow[None, :1], strength=float("inf")), ValueError,
         "strength must be a finite number")]


def _image_cases():
    """Images that are not what a function draws on or warps: uint8, 0..255 or [-1, 1] floats, other layouts."""
    from surgsora.motion.flow_viz import draw_tracks
    from surgsora.motion.preview import motion_preview, motion_signal

    flow = torch.zeros(1, 1, 2, 8, 8)
    u8 = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    tr = [np.array([[1.0, 1.0], [3.0, 3.0]])]
    cases = []
    for fn in (motion_preview, motion_signal):
        name = fn.__name__
        cases += [(lambda d, fn=fn: fn(u8, flow), ValueError,
                   f"{name} expects a floating-point image in [0, 1]; got uint8"),
                  (lambda d, fn=fn: fn(u8.float(), flow), ValueError, "divide by 255"),
                  (lambda d, fn=fn: fn(u8.float() / 127.5 - 1, flow), ValueError, "(x + 1) / 2")]
    cases += [(lambda d, im=im: draw_tracks(im, tr), ValueError, w) for im, w in [
        (np.zeros((3, 8, 8), np.float32), "use image.transpose(1, 2, 0)"),  # CHW where numpy is HWC
        (np.zeros((8, 8, 2), np.uint8), "RGB: 3 channels"),
        (torch.rand(8, 8, 4), "RGB: 3 channels"),
        (np.zeros((2, 8, 8, 3), np.uint8), "a batch"),
        (torch.rand(2, 8, 8, 3), "use image.permute(0, 3, 1, 2)"),  # a ComfyUI IMAGE batch
        (torch.rand(3, 8, 3), "cannot tell the layout"),
        (torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8), "got uint8"),
        (torch.rand(8, 8, 3) * 255, "divide by 255"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN or infinite")]]
    return cases


@pytest.mark.parametrize("cases", [_size_cases, _image_cases], ids=["impossible sizes", "images of the wrong kind"])
def test_library_refuses_in_one_sentence(cases):
    for i, (call, exc, words) in enumerate(cases()):
        value, error = run_with_timeout(lambda: call(None))
        assert isinstance(error, exc), (i, words, error)
        msg = str(error)
        assert words in msg and "\n" not in msg and msg.endswith("."), (i, msg)


def test_library_warns_once_with_what_it_assumed():
    """The silent cases now say what was assumed (and the clean inputs stay quiet)."""
    import warnings

    from surgsora.motion.tracks import CanvasScaledWarning, check_canvas
    from surgsora.video_io import MaskThresholdWarning, threshold_mask

    disc = np.zeros((64, 96), np.uint8)
    cv2.circle(disc, (48, 32), 20, 255, -1, cv2.LINE_AA)  # anti-aliased edge
    noise = np.random.default_rng(3).integers(0, 40, disc.shape)
    cases = [  # (call, warning class or None, words)
        (lambda: check_canvas((1280, 720), (640, 360)), CanvasScaledWarning,
         "tracks drawn on a 1280x720 canvas were scaled to the image (640x360)"),
        (lambda: check_canvas((320, 180), (640, 360)), CanvasScaledWarning, "declare width 640 and height 360"),
        (lambda: check_canvas((641, 360), (640, 360)), CanvasScaledWarning, "641x360"),
        (lambda: check_canvas((640, 360), (640, 360)), None, ""),
        (lambda: check_canvas((320, 180), (640, 360), warn=False), None, ""),  # a map resampled by design
        (lambda: threshold_mask(disc, "m"), None, ""),  # anti-aliasing only: silent
        (lambda: threshold_mask((disc > 0) * 255, "m"), None, ""),
        (lambda: threshold_mask(np.where(disc > 0, 20, 0), "m"), None, ""),  # a label mask (EndoVis parts)
        (lambda: threshold_mask(np.clip(disc + noise, 0, 255), "mask m"), MaskThresholdWarning,
         "thresholded at 127.5"),
        (lambda: threshold_mask(np.clip(disc / 255 + noise / 255, 0, 1), "mask f", threshold=0.5),
         MaskThresholdWarning, "mask f is not binary"),
    ]
    for i, (call, category, words) in enumerate(cases):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        if category is None:
            assert caught == [], (i, [str(w.message) for w in caught])
        else:
            assert len(caught) == 1 and caught[0].category is category, (i, caught)
            assert words in str(caught[0].message), (i, str(caught[0].message))
    with pytest.warns(MaskThresholdWarning):  # and the region is the disc, not "> 0" over the noise
        assert threshold_mask(np.clip(disc + noise, 0, 255)).sum() < 1.1 * (disc > 127).sum()


def test_library_bad_input(tmp_path):
    for i, (call, exc, words) in enumerate(_library_cases()):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        value, error = run_with_timeout(lambda: call(folder))
        assert isinstance(error, exc), (i, words, error)
        msg = str(error)
        assert words in msg and "weights_only=False" not in msg, (i, msg)
        assert {p.name for p in folder.iterdir()} <= {"nan.npy", "f.pt"}, i  # no video, no temporary file


def test_seed_minus_one_is_a_random_seed_that_is_printed(capsys):
    """-1 means "random" (as in ComfyUI): a fresh seed, printed so that the run can be repeated; below -1 or not a
    whole number is refused, saying so."""
    from surgsora.sampling.settings import SamplingSettings, SettingError, check_settings, resolve_seed

    seeds = [SamplingSettings(seed=-1).seed for _ in range(3)]
    out = capsys.readouterr().out
    assert len(set(seeds)) == 3 and all(0 <= s < 2 ** 32 for s in seeds)
    assert all(f"seed -1: using random seed {s} (give seed {s} to repeat this run)." in out for s in seeds)
    assert resolve_seed(7, "--seed") == 7 and SamplingSettings(seed=7).seed == 7 and capsys.readouterr().out == ""
    for bad in (-2, 1.5, True, "1", 2 ** 64):
        with pytest.raises(SettingError, match="--seed must be a whole number .* or -1 for a random seed"):
            check_settings({"seed": "--seed"}, seed=bad)


def test_library_accepts_a_bom_and_symlinked_models(tmp_path):
    from surgsora.loading.catalogue import find_model
    from surgsora.motion.tracks import parse_tracks

    assert parse_tracks("\ufeff[[1, 2], [3, 4]]")[0].shape == (2, 2)
    assert parse_tracks(b"\xef\xbb\xbf[[1, 2]]")[0].shape == (1, 2)
    snapshot = tmp_path / "hub" / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (tmp_path / "models" / "diffusers").mkdir(parents=True)
    (tmp_path / "models" / "diffusers" / "svd").symlink_to(snapshot, target_is_directory=True)
    assert find_model([tmp_path / "models" / "diffusers"], "svd") is not None
