"""Shared fixtures: the real EndoVis clip from ../shared/data (next to the repo checkout)."""

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CLIP = SHARED / "data" / "endovis17_clip" / "clip.mp4"

# Two cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED}: clone the repo next to shared/")
    return SHARED


@pytest.fixture(scope="session")
def endovis_clip(shared_dir) -> Path:
    return CLIP


@pytest.fixture(scope="session")
def endovis_frame(endovis_clip) -> np.ndarray:
    """Frame 6 of the real clip (the frame the instrument masks belong to), RGB uint8 [1080, 1920, 3]."""
    from surgsora.video_io import read_video

    return read_video(endovis_clip, start=6, count=1)[0]
