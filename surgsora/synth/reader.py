"""Reading a synth dataset back: a PyTorch Dataset of (frames, instance masks) for training a segmenter.

docs/synth.md shows :class:`SegmentationClips` as the example (tests/test_synth.py checks the page shows this
source and that it reads a made dataset).
"""

from __future__ import annotations

# --8<-- [start:dataset]
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset


class SegmentationClips(Dataset):
    """Every frame of every clip: (RGB float [3, H, W] in [0, 1], instance ids long [H, W], 0 = background)."""

    def __init__(self, root, max_epe_px=None):
        root = Path(root)
        index = [json.loads(line) for line in (root / "index.jsonl").read_text().splitlines()]
        # Drop clips that did not follow their motion (follow score: DIS flow vs the conditioning flow).
        clips = [e for e in index if max_epe_px is None or e["follow_epe_px"] <= max_epe_px]
        self.items = [(root / e["path"], t) for e in clips for t in range(e["frames"])]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        clip, t = self.items[i]
        cap = cv2.VideoCapture(str(clip / "video.mp4"))
        cap.set(cv2.CAP_PROP_POS_FRAMES, t)
        ok, bgr = cap.read()
        cap.release()
        if not ok:
            raise IndexError(f"{clip / 'video.mp4'} has no frame {t}")
        image = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1).float() / 255
        ids = cv2.imread(str(clip / "masks" / f"{t:03d}.png"), cv2.IMREAD_UNCHANGED)
        return image, torch.from_numpy(ids.astype(np.int64))
# --8<-- [end:dataset]


__all__ = ["SegmentationClips"]
