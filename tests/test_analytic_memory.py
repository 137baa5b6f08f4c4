"""The analytic decoder in bounded memory: blocked products and the sparse RBF solve give the dense answer."""

from __future__ import annotations

import numpy as np
import torch

import surgsora.motion.analytic_flow as af


def _scene(k=60, seed=0):
    rng = np.random.default_rng(seed)
    pts = torch.from_numpy(rng.uniform(4, 60, (k, 2)))
    disp = torch.from_numpy(rng.normal(0, 3, (k, 3, 2)))
    mask = torch.zeros(1, 64, 64)
    mask[0, 2:62, 2:62] = 1  # every track in one region: the smooth field with its RBF residuals
    return pts, disp, mask


def test_sparse_rbf_solve_matches_the_dense_one(monkeypatch):
    pts, disp, mask = _scene()
    dense = af.decode_points(pts, disp, (64, 64), mask)
    monkeypatch.setattr(af, "DENSE_RBF_MAX", 10)  # force the sparse branch
    sparse = af.decode_points(pts, disp, (64, 64), mask)
    assert torch.allclose(dense, sparse, atol=1e-3)
    # every track is still followed: the flow at a track's pixel is (close to) its displacement
    px, py = pts[:, 0].long(), pts[:, 1].long()
    assert (sparse[:, :, py, px].permute(2, 0, 1) - disp.float()).abs().median() < 0.3


def test_small_blocks_give_the_same_flow(monkeypatch):
    pts, disp, _ = _scene(k=40, seed=1)
    whole = af.decode_points(pts, disp, (48, 64))  # background tracks only
    monkeypatch.setattr(af, "BLOCK_ELEMENTS", 256)  # many tiny blocks over pixels and tracks
    blocked = af.decode_points(pts, disp, (48, 64))
    assert torch.allclose(whole, blocked, atol=1e-5)
