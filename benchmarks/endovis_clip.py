"""Which EndoVis 2017 clip the benchmarks measure: the full-resolution original (1920x1080) in ``../shared`` when
this checkout sits next to it (the figures in the docs were measured on it), else the repository's 640x360 copy
in ``demo/endovis17/`` (its README: provenance). Both folders hold ``clip.mp4`` and the two frame-6 masks under
the same names."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL = REPO.parent / "shared" / "data" / "endovis17_clip"
COPY = REPO / "demo" / "endovis17"


def endovis_folder() -> Path:
    """The folder of the clip to measure; prints which one it is."""
    full = (FULL / "clip.mp4").is_file()
    folder = FULL if full else COPY
    kind = "the full-resolution original" if full else "the repository's 640x360 copy (../shared is absent)"
    print(f"EndoVis clip: {folder / 'clip.mp4'}, {kind}", flush=True)
    return folder
