"""Test doubles shared by the evaluation tests."""

import torch
from torch import nn


class TinyTorchScriptI3D(nn.Module):
    """Stands in for StyleGAN-V's i3d_torchscript.pt (same call signature)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 8)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        v = x.float()
        if rescale:
            v = v / 127.5 - 1
        return self.proj(v.mean(dim=(2, 3, 4)))
