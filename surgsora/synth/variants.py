"""Jittered copies of a motion: each moving track's displacement from its start rotated and scaled, seeded.

For variant k of a row, every moving track gets its own angle ``a ~ U(-max_angle, max_angle)`` degrees and scale
``s ~ U(1 - max_scale, 1 + max_scale)``; its displacement from frame 0, ``p(t) - p(0)``, becomes
``s * R(a) (p(t) - p(0))``. The start point of every track is kept (the trajectory still grabs the same object) and
anchors (tracks that never move) are left exactly as they are. Draws come from a generator seeded by
(row id, row seed, k) only, so a variant is the same on any number of processes.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["MAX_ANGLE", "MAX_SCALE", "DEFAULT_ANGLE", "DEFAULT_SCALE", "jitter_tracks"]

DEFAULT_ANGLE = 15.0  # degrees
DEFAULT_SCALE = 0.25  # relative
# Beyond these a "variant" is another motion rather than a perturbation of the drawn one.
MAX_ANGLE = 45.0
MAX_SCALE = 0.5


def _rng(row_id: str, seed: int, variant: int) -> np.random.Generator:
    digest = hashlib.sha256(f"surgsora-synth-jitter:{row_id}:{int(seed)}:{int(variant)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def jitter_tracks(tracks: np.ndarray, row_id: str, seed: int, variant: int, max_angle: float = DEFAULT_ANGLE,
                  max_scale: float = DEFAULT_SCALE) -> tuple[np.ndarray, list[dict]]:
    """``tracks`` [N, T, 2] -> (jittered copy [N, T, 2] float32, per track {"angle_deg", "scale", "anchor"}).

    Variant 0 is the motion as drawn (returned unchanged, with angle 0 and scale 1).
    """
    if not 0 <= max_angle <= MAX_ANGLE or not 0 <= max_scale <= MAX_SCALE:
        raise ValueError(f"jitter bounds must be 0..{MAX_ANGLE:g} degrees and 0..{MAX_SCALE:g}; got {max_angle} and "
                         f"{max_scale}.")
    tracks = np.asarray(tracks, dtype=np.float32)
    disp = tracks.astype(np.float64) - tracks[:, :1].astype(np.float64)  # [N, T, 2]
    anchor = np.abs(disp).max(axis=(1, 2)) == 0
    if variant == 0:
        return tracks.copy(), [{"angle_deg": 0.0, "scale": 1.0, "anchor": bool(a)} for a in anchor]
    rng = _rng(row_id, seed, variant)
    # Draw for every track (anchors too) so one track's status does not shift the others' draws.
    angles = rng.uniform(-max_angle, max_angle, size=len(tracks))
    scales = rng.uniform(1 - max_scale, 1 + max_scale, size=len(tracks))
    out = tracks.astype(np.float64).copy()
    info = []
    for k in range(len(tracks)):
        if anchor[k]:
            info.append({"angle_deg": 0.0, "scale": 1.0, "anchor": True})
            continue
        a = np.deg2rad(angles[k])
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        out[k] = tracks[k, :1].astype(np.float64) + scales[k] * disp[k] @ rot.T
        info.append({"angle_deg": round(float(angles[k]), 6), "scale": round(float(scales[k]), 6), "anchor": False})
    out[:, 0] = tracks[:, 0]  # the start is kept bit for bit
    return out.astype(np.float32), info
