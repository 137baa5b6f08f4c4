"""Shared fixtures: the real EndoVis clip and demo frame shipped in ``demo/`` (see ``tests/data_paths.py``)."""

import numpy as np
import pytest
import torch

from data_paths import CLIP, FRAME6

# Two cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def endovis_clip():
    """The real clip (640x360, 20 frames); frame 6 is the one the instrument masks belong to."""
    return CLIP


@pytest.fixture(scope="session")
def endovis_frame() -> np.ndarray:
    """Frame 6 of the real clip, as the demo ships it: RGB uint8 [360, 640, 3]."""
    from surgsora.video_io import read_image

    return read_image(FRAME6)


def pytest_collection_modifyitems(config, items):
    """Slow checks outside tests/integration carry the integration marker too: they run only when asked for with
    ``-m integration`` (the default suite must stay under 5 minutes on two cores); tests/integration skips itself
    without COMFYUI_PATH."""
    if "integration" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with python -m pytest -m integration <file>")
    for item in items:
        if "integration" in item.keywords and "tests/integration/" not in item.nodeid.replace("\\", "/") \
                and not item.nodeid.startswith("integration/"):
            item.add_marker(skip)
