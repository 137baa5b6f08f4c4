"""`python -m surgsora synth` on tiny random models and the real EndoVis frame: the labels of a clip agree with
what conditioned it (masks = the regions softmax-splatted by the flow as the motion signal places them, flow.npz =
the decoded conditioning flow, tracks.json read back by the core TRACKS reader), variants keep their anchors and stay
within their bounds, a rerun of a finished dataset changes nothing, and every bad job row or flag is one sentence,
exit code 2, with nothing written. Two processes and kill + resume: tests/test_synth_multiprocess.py."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data_paths import DEMO_TRACKS, FRAME6, MASKS_F06
from surgsora.cli import main as cli_main
from surgsora.synth.cli import add_arguments


def main(argv) -> int:
    """``python -m surgsora synth ARGV``'s exit code (a usage error exits through SystemExit(2))."""
    try:
        return cli_main(["synth", *argv])
    except SystemExit as e:
        return e.code

SIZE, T = 64, 4
FAST = ["--tiny-models", "--steps", "2", "--no-progress"]
MASKS = ";".join(str(m) for m in MASKS_F06)


def _csv(path: Path, rows: list[str], header: str = "id,image,tracks,mode,frames,size,seed,variants,masks") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One dataset: row `inst` (dual-clock, the fastest mode on tiny models; the two instrument masks; one variant)
    and a row whose frame is missing (skipped with --on-error skip)."""
    root = tmp_path_factory.mktemp("synth")
    jobs = _csv(root / "jobs.csv", [f"inst,{FRAME6},{DEMO_TRACKS},ttm,{T},{SIZE}x{SIZE},3,1,{MASKS}",
                                    f"gone,missing.png,{DEMO_TRACKS},,{T},{SIZE}x{SIZE},0,0,"])
    out = root / "ds"
    argv = ["--jobs", str(jobs), "--out", str(out), "--on-error", "skip", *FAST]
    assert main(argv) == 0
    return out, argv


def _inputs():
    """The frame, the demo tracks and the instrument masks at the working size, as the job row asks."""
    from surgsora.cli_inputs import masks_arg, resize_frame as resize
    from surgsora.motion.tracks import prepare_tracks
    from surgsora.video_io import read_image

    frame = read_image(FRAME6)
    image = torch.from_numpy(resize(frame, (SIZE, SIZE))).permute(2, 0, 1).float().div(255)[None]
    tracks = prepare_tracks(DEMO_TRACKS.read_text(), canvas_size=(640, 360), size=(SIZE, SIZE), num_frames=T)
    regions = masks_arg([str(m) for m in MASKS_F06], (SIZE, SIZE), (640, 360))
    return image, tracks, regions


def test_dataset_layout_index_card_and_failures(made):
    out, _ = made
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [e["id"] for e in index] == ["inst-v0", "inst-v1"]
    assert [e["variant"] for e in index] == [0, 1] and index[0]["seed"] == 3 and index[1]["seed"] != 3
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 1 and failures[0]["line"] == 3 and "missing.png does not exist" in failures[0]["error"]
    assert not (out / "index").exists()  # the shards were merged and removed
    card = (out / "README.md").read_text()
    assert "clips: 2 from 1 source rows" in card and "failures.jsonl" in card and "track_path" in card
    for e in index:
        folder = out / e["path"]
        meta_bytes = (folder / "meta.json").read_bytes()
        assert hashlib.sha256(meta_bytes).hexdigest() == e["meta_sha256"]
        meta = json.loads(meta_bytes)
        names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"meta.json"}
        assert set(meta["files"]) == names == {"video.mp4", "flow.npz", "tracks.json",
                                               *(f"masks/{t:03d}.png" for t in range(T))}
        for name, info in meta["files"].items():  # meta.json checksums every other file of the clip
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == info["sha256"]
        assert meta["mode"] == "ttm" and meta["settings"]["steps"] == 2 and meta["regions"]["count"] == 2
        assert meta["settings"]["motion_bucket_id"] == 17  # TTM's default, as `generate --mode ttm` uses
        assert meta["regions"]["moved"] == [True, True] and math.isfinite(meta["follow"]["epe_px"])
        assert meta["follow"]["inside"] == "regions" and len(meta["follow"]["per_frame_epe_px"]) == T - 1
        assert meta["source"]["masks"] == MASKS.split(";") and meta["source"]["tracks"] == str(DEMO_TRACKS)
        from surgsora.video_io import read_video

        assert read_video(folder / "video.mp4").shape == (T, SIZE, SIZE, 3)


def test_labels_agree_with_the_conditioning(made):
    """flow.npz is the decoded conditioning flow; masks are the regions softmax-splatted by it with the motion
    signal's metric (50 x Depth Anything's disparity); tracks.json goes back through the core TRACKS reader."""
    import cv2

    from surgsora.motion.analytic_flow import AnalyticDecoder
    from surgsora.motion.splat import softmax_splat
    from surgsora.motion.tracks import parse_track_data, prepare_tracks, tracks_to_flow
    from surgsora.tiny import tiny_depth

    out, _ = made
    image, drawn, regions = _inputs()
    depth = tiny_depth(0)(image)  # what generate() computed for the motion signal (same tiny model, same seed)
    for variant in (0, 1):
        folder = out / "clips" / f"inst-v{variant}"
        ts = parse_track_data(json.loads((folder / "tracks.json").read_text()))
        assert ts.canvas == (SIZE, SIZE) and ts.times is not None  # read as core TRACKS, tied to frames
        tracks = prepare_tracks(ts, size=(SIZE, SIZE), num_frames=T)
        if variant == 0:
            np.testing.assert_allclose(tracks, drawn, atol=1e-5)
        flow = tracks_to_flow(AnalyticDecoder(), image, tracks, (SIZE, SIZE), regions)
        saved = np.load(folder / "flow.npz")["flow"]
        assert saved.dtype == np.float16 and saved.shape == (T - 1, 2, SIZE, SIZE)
        np.testing.assert_array_equal(saved, flow[0].numpy().astype(np.float16))

        masks = np.stack([cv2.imread(str(folder / f"masks/{t:03d}.png"), cv2.IMREAD_UNCHANGED) for t in range(T)])
        ids0 = torch.zeros(SIZE, SIZE, dtype=torch.int64)  # the two instruments do not overlap
        for k in range(2):
            ids0[regions[0, k] > 0.5] = k + 1
        np.testing.assert_array_equal(masks[0], ids0.numpy())
        onehot = torch.nn.functional.one_hot(ids0, 3).permute(2, 0, 1).float()[None]
        for t in range(1, T):
            splat, cover = softmax_splat(onehot, flow[:, t - 1], 50.0 * depth, return_coverage=True)
            want = torch.where(cover[0, 0] > 0.1, splat[0].argmax(0), 0)
            np.testing.assert_array_equal(masks[t], want.numpy())
        if variant == 0:  # the left instrument is drawn moving down, the right one to the right
            ys, _ = np.nonzero(masks[0] == 1)
            ys3, _ = np.nonzero(masks[-1] == 1)
            _, xs = np.nonzero(masks[0] == 2)
            _, xs3 = np.nonzero(masks[-1] == 2)
            assert ys3.mean() > ys.mean() + 1 and xs3.mean() > xs.mean() + 1


def test_variant_keeps_anchors_and_stays_in_bounds(made):
    from surgsora.motion.tracks import parse_track_data

    out, _ = made

    def tracks(v):
        path = np.array(parse_track_data((out / f"clips/inst-v{v}/tracks.json").read_text()).tracks)
        return path  # [N, T, 2]

    a, b = tracks(0), tracks(1)
    meta = json.loads((out / "clips/inst-v1/meta.json").read_text())
    anchors = [k for k, j in enumerate(meta["jitter"]["tracks"]) if j["anchor"]]
    assert anchors == [4, 5, 6]  # the demo's three one-point tracks
    np.testing.assert_array_equal(a[:, 0], b[:, 0])  # every start kept
    np.testing.assert_array_equal(a[anchors], b[anchors])
    for k in range(4):
        da, db = a[k, -1] - a[k, 0], b[k, -1] - b[k, 0]
        scale = np.linalg.norm(db) / np.linalg.norm(da)
        angle = math.degrees(math.atan2(da[0] * db[1] - da[1] * db[0], da @ db))
        assert 0.75 - 1e-4 <= scale <= 1.25 + 1e-4 and abs(angle) <= 15 + 1e-3
        assert not np.allclose(da, db)


def test_rerun_of_a_finished_dataset_changes_nothing(made, capsys):
    out, argv = made
    before = _tree(out)
    capsys.readouterr()
    assert main(argv) == 0
    assert "(0 made now, 2 already done)" in capsys.readouterr().out
    assert _tree(out) == before


# ------------------------------------------------------------------------------------------------ bad jobs

GOOD = f"a,{FRAME6},{DEMO_TRACKS},ttm,{T},{SIZE}x{SIZE},0,0,"


def _bad_tracks(tmp: Path, text: str) -> str:
    p = tmp / "bad_tracks.json"
    p.write_text(text)
    return str(p)


SQUARE = {"width": 100, "height": 100, "tracks": [[[5, 5], [9, 9]]]}  # drawn on a square canvas
# (name, rows or a callable(tmp) -> rows, extra flags, fragments the one sentence must hold)
BAD = [
    ("missing frame", [f"a,{FRAME6.parent / 'nope.png'},{DEMO_TRACKS},,{T},,0,0,"], [],
     ["jobs.csv line 2", "nope.png does not exist"]),
    ("tracks for another canvas",
     lambda tmp: [f"a,{FRAME6},{_bad_tracks(tmp, json.dumps(SQUARE))},,{T},,0,0,"],
     [], ["line 2", "100x100 canvas", "640x360, another shape"]),
    ("NaN in tracks", lambda tmp: [f"a,{FRAME6},{_bad_tracks(tmp, '[[10, 10], [NaN, 12]]')},,{T},,0,0,"], [],
     ["line 2", "non-finite coordinate"]),
    ("unknown mode", [f"a,{FRAME6},{DEMO_TRACKS},fast,{T},,0,0,"], [], ["line 2", "unknown mode 'fast'", "ttm, mofa"]),
    ("duplicate ids", [GOOD, GOOD.replace(",0,0,", ",1,0,")], [], ["line 3", "id 'a' is already used by line 2"]),
    ("duplicate rows without ids", [GOOD[1:], GOOD[1:]], [], ["line 3", "is already used by line 2"]),
    ("bad size", [GOOD.replace(f"{SIZE}x{SIZE}", "100x64")], [], ["line 2: size 100x64", "multiples of 64"]),
    ("bad frames", [GOOD.replace(f"ttm,{T},", "ttm,1,")], [], ["line 2: frames must be at least 2"]),
    ("bad seed", [GOOD.replace(",0,0,", ",-1,0,")], [], ["line 2: seed must be 0 or more"]),
    ("bad variants", [GOOD.replace(",0,0,", ",0,5000,")], [], ["line 2: variants must be between 0 and 1000"]),
    ("unsafe id", ["../x" + GOOD[1:]], [], ["line 2: id '../x' names the clip folder"]),
    ("missing mask", [GOOD + "nomask.png"], [], ["line 2: masks:", "nomask.png does not exist"]),
    ("mofa on tiny models", [GOOD.replace(",ttm,", ",mofa,")], [], ["line 2: mode mofa", "--tiny-models"]),
    ("unknown column", [GOOD], [], ["line 1 has the unknown column 'seeds'"]),
    ("bad flag", [GOOD], ["--jitter-angle", "90"], ["--jitter-angle must be between 0 and 45"]),
    ("bad flag size", [GOOD], ["--size", "100x100"], ["--size 100x100", "multiples of 64"]),
]


@pytest.mark.parametrize("name,rows,flags,says", BAD, ids=[b[0] for b in BAD])
def test_bad_jobs_one_sentence_exit_2_nothing_written(tmp_path, capsys, name, rows, flags, says):
    rows = rows(tmp_path) if callable(rows) else rows
    header = "id,image,tracks,mode,frames,size,seeds,variants,masks" if name == "unknown column" else \
        "id,image,tracks,mode,frames,size,seed,variants,masks"
    jobs = _csv(tmp_path / "jobs.csv", rows, header)
    out = tmp_path / "ds"
    capsys.readouterr()
    assert main(["--jobs", str(jobs), "--out", str(out), *FAST, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and err.endswith("."), err
    for s in says:
        assert s in err, err
    assert not out.exists()


def _identity_args(jobs: Path, out: Path, *flags: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    return ap.parse_args(["--jobs", str(jobs), "--out", str(out), *FAST, *flags])


@pytest.mark.parametrize("case", ["another job file", "other settings", "other files"])
def test_output_folder_holding_another_dataset_is_refused(tmp_path, capsys, case):
    from surgsora.synth.cli import _settings
    from surgsora.synth.dataset import FORMAT
    from surgsora.synth.jobs import file_sha256

    jobs = _csv(tmp_path / "jobs.csv", [GOOD])
    out = tmp_path / "ds"
    out.mkdir()
    if case == "other files":
        (out / "notes.txt").write_text("mine")
    else:
        settings = _settings(_identity_args(jobs, out, *(["--steps", "3"] if case == "other settings" else [])))
        sha = "0" * 64 if case == "another job file" else file_sha256(jobs)
        (out / "dataset.json").write_text(json.dumps({"format": FORMAT, "jobs_sha256": sha, "settings": settings}))
    before = _tree(out)
    capsys.readouterr()
    assert main(["--jobs", str(jobs), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    want = {"another job file": "holds another dataset, made from a different job file",
            "other settings": "made with steps = 3, but this run has 2",
            "other files": "is not a synth dataset"}[case]
    assert want in err, err
    assert _tree(out) == before


def test_jsonl_job_rows_and_inline_tracks_are_read(tmp_path):
    """JSONL rows with inline tracks (the DragNUWA layout) and a list of masks validate like CSV rows."""
    from surgsora.synth.jobs import Defaults, expand_clips, read_job_file, validate_rows

    jobs = tmp_path / "jobs.jsonl"
    rows = [{"id": "j", "image": str(FRAME6), "tracks": [[[100, 100], [120, 110]], [[300, 200]]], "frames": T,
             "size": f"{SIZE}x{SIZE}", "variants": 2, "masks": [str(m) for m in MASKS_F06]},
            {"image": str(FRAME6), "tracks": str(DEMO_TRACKS), "mode": "ttm", "clicks": "100,120;300,200"}]
    jobs.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    good, problems = validate_rows(read_job_file(jobs), jobs, Defaults(frames=5))
    assert problems == []
    assert good[0].tracks.shape == (2, T, 2) and len(good[0].masks) == 2 and good[0].tracks_source == "inline"
    assert good[1].frames == 5 and good[1].size == (448, 256) and good[1].clicks == ((100.0, 120.0), (300.0, 200.0))
    assert good[1].id.startswith("surgsora_endovis_frame6-")  # derived from the image name and the row's cells
    clips = expand_clips(good)
    assert [c.id for c in clips] == ["j-v0", "j-v1", "j-v2", good[1].id + "-v0"]
    assert [c.order for c in clips] == [0, 1, 2, 3] and len({c.seed for c in clips[:3]}) == 3


def test_docs_dataset_example_is_the_reader_and_reads_the_dataset(made):
    """docs/synth.md shows SegmentationClips as it is in surgsora/synth/reader.py, and it reads a made dataset."""
    import cv2

    from surgsora.synth import reader
    from surgsora.synth.reader import SegmentationClips

    repo = Path(__file__).resolve().parents[1]
    page = (repo / "docs" / "synth.md").read_text()
    shown = page.split("```python\n", 1)[1].split("```", 1)[0]
    source = Path(reader.__file__).read_text().split("# --8<-- [start:dataset]\n")[1].split("# --8<-- [end:dataset]")[0]
    assert shown == source
    assert len(shown.strip().splitlines()) <= 40

    out, _ = made
    ds = SegmentationClips(out)
    assert len(ds) == 2 * T
    image, ids = ds[T + 2]  # clip inst-v1, frame 2
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    want = cv2.imread(str(out / "clips/inst-v1/masks/002.png"), cv2.IMREAD_UNCHANGED)
    assert ids.dtype == torch.int64 and torch.equal(ids, torch.from_numpy(want.astype(np.int64)))
    epe = sorted(json.loads(line)["follow_epe_px"] for line in (out / "index.jsonl").read_text().splitlines())
    assert len(SegmentationClips(out, max_epe_px=epe[0])) == T  # the filter on the follow score keeps one clip


@pytest.mark.parametrize("mode,says", [("ttm", "Missing model files under"),
                                       ("surgsora", "line 2: mode surgsora needs a SurgSora adapter")])
def test_missing_models_are_listed_before_anything_loads(tmp_path, capsys, mode, says):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    jobs = _csv(tmp_path / "jobs.csv", [GOOD.replace(",ttm,", f",{mode},")])
    out = tmp_path / "ds"
    capsys.readouterr()
    assert main(["--jobs", str(jobs), "--out", str(out), "--models", str(models), "--no-progress"]) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_a_run_killed_while_writing_dataset_json_is_resumed_not_refused(tmp_path):
    """Only the temporary file of a killed write in --out: still a new dataset, and the file is cleaned up."""
    from surgsora.synth.dataset import FORMAT, check_out, remove_partials

    out = tmp_path / "ds"
    out.mkdir()
    (out / ".dataset.x1y2.partial.json").write_text("{")
    assert check_out(out, {"format": FORMAT, "jobs_sha256": "0" * 64, "settings": {}}) is True
    remove_partials(out)
    assert list(out.iterdir()) == []


def test_docs_smoke_command_runs_as_written(tmp_path, monkeypatch, capsys):
    """The page's smoke run, exactly as written, with its example job file saved as jobs.csv next to demo/ (one clip
    on tiny models, mode auto = the tiny SurgSora adapter)."""
    import shlex

    repo = Path(__file__).resolve().parents[1]
    page = (repo / "docs" / "synth.md").read_text()
    (tmp_path / "jobs.csv").write_text(page.split("```csv\n", 1)[1].split("```", 1)[0])
    (tmp_path / "demo").symlink_to(repo / "demo")
    bash = [line for block in page.split("```bash\n")[1:] for line in block.split("```")[0].splitlines()]
    smoke = [line for line in bash if "--tiny-models" in line]
    assert len(smoke) == 1
    tokens = shlex.split(smoke[0])
    assert tokens[:4] == ["python", "-m", "surgsora", "synth"]
    monkeypatch.chdir(tmp_path)
    assert main(tokens[4:] + ["--no-progress"]) == 0
    index = [json.loads(line) for line in (tmp_path / "smoke" / "index.jsonl").read_text().splitlines()]
    assert [(e["id"], e["mode"], e["frames"], e["width"], e["regions"]) for e in index] == \
        [("endovis6-v0", "surgsora", 4, 64, 2)]


def test_a_clip_that_fails_while_generating_is_recorded_with_on_error_skip_and_made_by_a_rerun(tmp_path,
                                                                                              monkeypatch):
    """A clip whose generation fails (here: a non-finite video) is recorded in failures.jsonl with its line and
    left out of the index, its folder removed; without --on-error skip the run stops in one sentence (exit 1); the
    same command, once the cause is gone, makes it and forgets the failure."""
    import surgsora.synth.clip as clip_module
    from surgsora.sampling.generate import NonFiniteVideo

    jobs = _csv(tmp_path / "jobs.csv", [f"a,{FRAME6},{DEMO_TRACKS},ttm,{T},{SIZE}x{SIZE},1,0,",
                                        f"b,{FRAME6},{DEMO_TRACKS},ttm,{T},{SIZE}x{SIZE},2,0,"])
    out = tmp_path / "ds"
    make_clip = clip_module.make_clip

    def failing(clip, env):
        if clip.id.startswith("b"):
            raise NonFiniteVideo("the generated video contains NaN values")
        return make_clip(clip, env)

    monkeypatch.setattr(clip_module, "make_clip", failing)
    argv = ["--jobs", str(jobs), "--out", str(out), *FAST]
    assert main(argv) == 1  # stops at the failing clip, naming --on-error skip
    assert main([*argv, "--on-error", "skip"]) == 0
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["line"], f["id"][:1]) for f in failures] == [(3, "b")] and "NaN" in failures[0]["error"]
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [e["id"][:1] for e in index] == ["a"]
    assert not any(p.name.startswith("b") for p in (out / "clips").iterdir())

    monkeypatch.setattr(clip_module, "make_clip", make_clip)
    assert main([*argv, "--on-error", "skip"]) == 0
    assert not (out / "failures.jsonl").exists()
    assert [json.loads(line)["id"][:1] for line in (out / "index.jsonl").read_text().splitlines()] == ["a", "b"]
