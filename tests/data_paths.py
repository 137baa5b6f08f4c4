"""Where the tests' real data lives: all of it inside the repository, so a clone runs its tests alone.

* ``demo/endovis17/`` -- the EndoVis 2017 clip at 640x360 with the instrument masks of frame 6 (provenance in
  its README); ``demo/surgsora_endovis_frame6.png`` is frame 6 and ``demo/tracks_endovis.json`` the demo tracks.
* ``tests/fixtures/checkpoint_manifests/`` -- every tensor name and shape of the real checkpoints users bring.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
ENDOVIS = DEMO / "endovis17"
CLIP = ENDOVIS / "clip.mp4"
FRAME6 = DEMO / "surgsora_endovis_frame6.png"
MASKS_F06 = (ENDOVIS / "mask_left_instrument_f06.png", ENDOVIS / "mask_right_instrument_f06.png")
DEMO_TRACKS = DEMO / "tracks_endovis.json"
MANIFESTS = REPO / "tests" / "fixtures" / "checkpoint_manifests"
