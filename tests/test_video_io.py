"""Videos are H.264 / yuv420p in a browser-playable MP4, written safely (temporary file, fsync, rename)."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from surgsora.video_io import OutputPathError, atomic_output, check_output_path, read_video, write_video


def _frames(t=5, h=31, w=45, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _smooth(t=5, h=31, w=45):
    """Gradients (what yuv420p's half-resolution colour keeps), moving one pixel per frame."""
    y, x = np.mgrid[:h, :w]
    return np.stack([np.stack([(x + i) * 5, y * 8, (x + y) * 3], -1) % 256 for i in range(t)]).astype(np.uint8)


def test_mp4_is_h264_yuv420p_faststart_with_even_sizes(tmp_path):
    path = write_video(tmp_path / "v.mp4", _smooth(), fps=29.97)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert "mp4" in c.format.name and s.codec_context.name == "h264"
        assert s.codec_context.pix_fmt == "yuv420p"
        assert (s.codec_context.width, s.codec_context.height) == (46, 32)  # 45x31 padded to even
        assert s.average_rate == Fraction(2997, 100) and s.frames == 5
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: plays while it downloads
    back = read_video(path)
    assert back.shape == (5, 32, 46, 3)
    # the padding repeats the last column/row; the content survives compression
    assert np.abs(back[:, :31, :45].astype(int) - _smooth().astype(int)).mean() < 6


def test_streamed_chunks_and_float_frames(tmp_path):
    chunks = (np.full((2, 16, 16, 3), v, np.float32) for v in (0.0, 0.5, 1.0))
    path = write_video(tmp_path / "v.mkv", chunks, fps=7)
    with av.open(str(path)) as c:
        assert c.format.name == "matroska,webm" and c.streams.video[0].codec_context.name == "h264"
    means = read_video(path).reshape(6, -1).mean(1)
    assert np.allclose(means, [0, 0, 128, 128, 255, 255], atol=3)


@pytest.mark.parametrize("fps", [float("inf"), float("nan"), 0, -1, 1e9])
def test_bad_fps_is_refused_before_writing(tmp_path, fps):
    with pytest.raises(ValueError, match="frames per second"):
        write_video(tmp_path / "v.mp4", _frames(), fps=fps)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, _frames(seed=1))
    before = path.read_bytes()

    def frames():
        yield from _frames(seed=2)[:3]
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_video(path, frames())
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_atomic_output_removes_folders_it_created(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(tmp_path / "a" / "b" / "x.json") as tmp:
            tmp.write_text("{}")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_mode_a_plain_open_would_give(tmp_path, umask):
    """Not mkstemp's 0600: another account (a web server, a ComfyUI running as another user) reads the video."""
    import os
    import stat

    old = os.umask(umask)
    try:
        write_video(tmp_path / "v.mp4", _frames(seed=1))
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "v.mp4").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "v.mp4").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


@pytest.mark.parametrize("name, words", [("out", "has no extension"), ("out.gif", "'.gif'"),
                                         ("out.avi", "'.avi'"), ("", "is empty")])
def test_output_names_are_checked(tmp_path, name, words):
    with pytest.raises(OutputPathError, match=words):
        check_output_path(str(tmp_path / name) if name else "", "--out")
    assert check_output_path(tmp_path / "new" / "dir" / "x.mp4") == tmp_path / "new" / "dir" / "x.mp4"


def _damage(at: float, length: int = 400):
    def damage(data: bytes) -> bytes:
        out = bytearray(data)
        i = int(len(out) * at)
        out[i:i + length] = np.random.default_rng(7).integers(0, 256, length, dtype=np.uint8).tobytes()
        return bytes(out)
    return damage


# (how the file was damaged, the function applied to its bytes): each must be refused, naming the file and the
# first bad frame, with none of the decoder's own complaints on stderr
DAMAGE = [
    ("random bytes over the middle", _damage(0.5)),
    ("random bytes over a later frame", _damage(0.85, 120)),
    ("zeros over the middle", lambda d: d[: len(d) // 2] + bytes(300) + d[len(d) // 2 + 300:]),
    ("cut off half-way", lambda d: d[: int(len(d) * 0.6)]),
]


@pytest.mark.parametrize("damage", [d for _, d in DAMAGE], ids=[n for n, _ in DAMAGE])
def test_a_damaged_video_is_refused_at_its_first_bad_frame(tmp_path, capfd, damage):
    from surgsora.video_io import check_video_decodes

    good = write_video(tmp_path / "good.mp4", np.stack([np.roll(_smooth(1, 64, 96)[0], 4 * t, 1) for t in range(10)]),
                       fps=5)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(damage(good.read_bytes()))
    capfd.readouterr()
    with pytest.raises(ValueError, match=r"bad\.mp4 is damaged at frame (\d+)") as e:
        read_video(bad)
    first = int(e.value.args[0].split("damaged at frame ")[1].split()[0])
    assert 0 <= first < 10 and "\n" not in str(e.value)
    if first:  # the frames before the damage are still readable, exactly as from the intact file
        assert np.array_equal(read_video(bad, 0, first), read_video(good, 0, first))
    check_video_decodes(good)  # the intact file passes
    assert capfd.readouterr().err == ""  # the decoder's complaints are turned into the sentence
