"""The feature networks of the evaluation, rebuilt in torch and loaded from local files only.

- **FID / IS**: the TensorFlow "2015-12-05" Inception-v3 as pytorch-fid / torch-fidelity / torchmetrics
  use it (``pt_inception-2015-12-05-6726825d.pth`` or torch-fidelity's
  ``weights-inception-2015-12-05-6726825d.pth``; both hold the same tensors under torchvision's
  Inception3 names, 1008 classes, no aux head). The blocks are torchvision's with the forward passes
  patched as in TF (average pools exclude padding; the last block max-pools). Preprocessing follows
  torch-fidelity: uint8 RGB, TF1-style bilinear resize to 299x299 (no antialiasing, half-pixel
  offsets off), ``(x - 128) / 128``. FID uses the 2048-d pool features, IS the bias-free logits.
- **FVD**: the Kinetics-400 I3D in the pytorch-i3d layout (TATS / cd-fvd ``i3d_pretrained_400.pt``,
  BatchNorm eps 1e-5 as in their copy): TF "same" padding, 400 logits averaged over time are the
  features. Input: 16-frame clips, bilinear-resized to 224x224, scaled to [-1, 1]. StyleGAN-V's
  TorchScript ``i3d_torchscript.pt`` is supported only by explicit opt-in (see :mod:`.weights`).
- **CD-FVD**: the VideoMAE-v2 ViT-g/14 fine-tuned on SSv2 (``vit_g_hybrid_pt_1200e_ssv2_ft.pth``) as the
  cd-fvd package uses it: transformers VideoMAE patch embedding and encoder layers (q/v biases, fixed
  sin-cos positions, no final LayerNorm: mean pooling) plus the final ``fc_norm`` LayerNorm; features =
  ``fc_norm(mean of tokens)`` (1408-d). Input: clips bilinear-resized to 224x224 in [0, 1] *without*
  mean/std normalisation (as cd-fvd).
- **Frame consistency**: transformers ``CLIPVisionModelWithProjection`` from a local folder; frames are
  resized (shorter side, bicubic, antialiased), centre-cropped to the model size and normalised with
  the folder's ``preprocessor_config.json`` statistics (OpenAI CLIP's by default).

Both video networks see clips prepared the way cd-fvd's loader prepares them (:func:`prepare_clip`): the
first ``clip_len`` frames, shorter side resized to 256 (bilinear, antialiased), centre crop 256x256,
rounded back to uint8.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import inception as tv_inception

from ..loading.io import ModelFileError, load_state_dict
from .weights import SPECS

__all__ = [
    "resize_bilinear_tf1", "FIDInceptionV3", "InceptionExtractor", "load_fid_inception",
    "InceptionI3D", "I3DExtractor", "load_i3d", "is_torchscript_archive",
    "VideoMAEv2Features", "videomae_config_from_state_dict", "convert_videomae_state_dict", "VideoMAEExtractor",
    "load_videomae", "CLIPExtractor", "load_clip", "prepare_clip", "CLIP_MEAN", "CLIP_STD",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_and_load(model: nn.Module, sd: dict, path, what: str, assign: bool = False,
                    ignore_missing: tuple = ("num_batches_tracked",)) -> None:
    """Load ``sd`` into ``model`` after checking names and shapes, or raise one clear ModelFileError."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(ignore_missing)]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(own[k].shape)})" for k in own
             if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("wrong shapes: " + ", ".join(wrong[:3]))
        if missing:
            parts.append(f"{len(missing)} missing tensors such as " + ", ".join(missing[:3]))
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors such as " + ", ".join(unexpected[:3]))
        raise ModelFileError(f"{path} is not {what} ({'; '.join(parts)}).")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False, assign=assign)


# ----------------------------------------------------------------------------------------------------
# FID Inception-v3


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [N, C, H, W] exactly as TensorFlow 1.x ``resize_bilinear(align_corners=False)``.

    Source coordinate = destination index x (in / out), no half-pixel offset, no antialiasing; the
    right/bottom neighbour is clamped to the border. This is what the FID graph does.
    """
    n, c, h, w = x.shape
    oh, ow = int(size[0]), int(size[1])

    def axis(n_in, n_out):
        pos = torch.arange(n_out, dtype=torch.float32, device=x.device) * torch.tensor(
            n_in / n_out, dtype=torch.float32, device=x.device)
        lo = pos.long().clamp_max(n_in - 1)
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, (pos - lo.float()).to(x.dtype)

    y0, y1, dy = axis(h, oh)
    x0, x1, dx = axis(w, ow)
    top, bottom = x[:, :, y0], x[:, :, y1]
    top = top[..., x0] + (top[..., x1] - top[..., x0]) * dx
    bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * dx
    return top + (bottom - top) * dy.view(1, 1, oh, 1)


def _avg3(x):  # TF average pooling ignores the zero padding
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _FIDInceptionA(tv_inception.InceptionA):
    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class _FIDInceptionC(tv_inception.InceptionC):
    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
            bd = m(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg3(x))], 1)


class _FIDInceptionE(tv_inception.InceptionE):
    def __init__(self, in_channels, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool  # the last block of the TF graph max-pools its pool branch

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3; tensor names as torchvision's ``Inception3`` (1008 classes, no aux head)."""

    input_size = 299

    def __init__(self):
        super().__init__()
        conv = tv_inception.BasicConv2d
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.Mixed_5b = _FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = _FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = _FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = tv_inception.InceptionB(288)
        self.Mixed_6b = _FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = _FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = _FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = _FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = tv_inception.InceptionD(768)
        self.Mixed_7b = _FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = _FIDInceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB [N, 3, H, W] with values in 0..255 -> (pool features [N, 2048], unbiased logits [N, 1008])."""
        x = resize_bilinear_tf1(images.float(), (self.input_size, self.input_size))
        x = (x - 128.0) / 128.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return pool, pool @ self.fc.weight.T  # IS uses the logits without the bias (torch-fidelity)


def load_fid_inception(path: str | os.PathLike) -> FIDInceptionV3:
    """The FID Inception-v3 with weights from ``path`` (weights_only / safetensors)."""
    sd = load_state_dict(path)
    if "fc.weight" in sd and tuple(sd["fc.weight"].shape) == (1000, 2048):
        raise ModelFileError(f"{path} is torchvision's ImageNet Inception-v3 (1000 classes), not the FID Inception "
                             f"weights; use {SPECS['inception'].file_names[0]}.")
    model = FIDInceptionV3()
    _check_and_load(model, sd, path, "the FID Inception-v3 weights (torchvision Inception3 names, 1008 classes)")
    return model.eval().requires_grad_(False)


class InceptionExtractor:
    """uint8 frames [N, H, W, 3] -> (pool [N, 2048], logits [N, 1008]) as float64 numpy arrays."""

    def __init__(self, model: FIDInceptionV3, device="cpu", batch_size: int = 16):
        self.model = model.to(device)
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pools, logits = [], []
        for s in range(0, len(frames), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[s:s + self.batch_size])).permute(0, 3, 1, 2)
            p, lg = self.model(x.to(self.device))
            pools.append(p.double().cpu().numpy())
            logits.append(lg.double().cpu().numpy())
        return np.concatenate(pools), np.concatenate(logits)


# ----------------------------------------------------------------------------------------------------
# I3D (pytorch-i3d layout)


def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    t, h, w = x.shape[-3:]
    pt, ph, pw = (_same_pad(n, k, s) for n, k, s in zip((t, h, w), kernel, stride))
    return F.pad(x, (*pw, *ph, *pt))


class Unit3D(nn.Module):
    """Conv3d with TF 'same' padding, optional BatchNorm and ReLU (pytorch-i3d's ``Unit3D`` names)."""

    def __init__(self, in_channels, out_channels, kernel=(1, 1, 1), stride=(1, 1, 1), relu=True, bn=True,
                 bias=False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.001) if bn else None

    def forward(self, x):
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):  # zero padding is harmless: the input follows a ReLU
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule3D(nn.Module):
    def __init__(self, in_channels, c):
        super().__init__()
        self.b0 = Unit3D(in_channels, c[0])
        self.b1a = Unit3D(in_channels, c[1])
        self.b1b = Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, c[3])
        self.b2b = Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, c[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


_I3D_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3D(nn.Module):
    """Inception-v1 I3D (Carreira & Zisserman 2017) with pytorch-i3d's tensor names; outputs 400 logits."""

    input_size = 224

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule3D(*_I3D_MIXED["Mixed_3b"])
        self.Mixed_3c = InceptionModule3D(*_I3D_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            setattr(self, name, InceptionModule3D(*_I3D_MIXED[name]))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule3D(*_I3D_MIXED["Mixed_5b"])
        self.Mixed_5c = InceptionModule3D(*_I3D_MIXED["Mixed_5c"])
        self.logits = Unit3D(1024, num_classes, relu=False, bn=False, bias=True)
        self._order = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                       "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
                       "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clips [B, 3, T, 224, 224] in [-1, 1] (T >= 9) -> logits [B, classes] averaged over time."""
        for name in self._order:
            x = getattr(self, name)(x)
        if x.shape[2] < 2:
            raise ValueError("I3D needs clips of at least 9 frames (its final 2x7x7 pool runs out of time steps)")
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        return self.logits(x).mean(dim=(3, 4)).mean(2)


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript zip (it stores code and constants next to the tensors)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


class I3DExtractor:
    """uint8 clips [B, T, 256, 256, 3] (from :func:`prepare_clip`) -> I3D features [B, 400] (float64)."""

    def __init__(self, model: nn.Module, device="cpu", batch_size: int = 4, torchscript: bool = False):
        self.model = model.to(device)
        self.device = device
        self.batch_size = batch_size
        self.torchscript = torchscript

    def preprocess(self, clips: np.ndarray) -> torch.Tensor:
        """uint8 [B, T, H, W, 3] -> the network input: uint8 [B, 3, T, H, W] for the TorchScript model
        (StyleGAN-V's convention: it rescales and resizes itself), else float [B, 3, T, 224, 224] in [-1, 1]
        (bilinear resize, as cd-fvd's ``preprocess_i3d``)."""
        x = torch.from_numpy(np.ascontiguousarray(clips)).to(self.device)
        if self.torchscript:
            return x.permute(0, 4, 1, 2, 3).contiguous()
        b, t, h, w, _ = x.shape
        f = x.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).float()
        f = F.interpolate(f, size=(224, 224), mode="bilinear", align_corners=False)
        return f.view(b, t, 3, 224, 224).transpose(1, 2) * (2.0 / 255.0) - 1.0

    @torch.no_grad()
    def __call__(self, clips: np.ndarray) -> np.ndarray:
        out = []
        for s in range(0, len(clips), self.batch_size):
            x = self.preprocess(clips[s:s + self.batch_size])
            if self.torchscript:
                feats = self.model(x, rescale=True, resize=True, return_features=True)
            else:
                feats = self.model(x)
            out.append(feats.double().cpu().numpy())
        return np.concatenate(out)


def load_i3d(path: str | os.PathLike, allow_torchscript: bool = False, device="cpu",
             batch_size: int = 4) -> I3DExtractor:
    """The FVD I3D from a plain state dict, or (only with ``allow_torchscript``) StyleGAN-V's TorchScript file."""
    path = Path(path)
    if path.is_file() and is_torchscript_archive(path):
        if not allow_torchscript:
            raise ModelFileError(
                f"{path} is a TorchScript program (StyleGAN-V's i3d_torchscript.pt): loading it runs code stored in "
                "the file, so it is refused unless you pass --allow-torchscript for a file from a source you trust "
                f"(or use the plain state dict {SPECS['i3d'].file_names[0]})."
            )
        try:
            module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:  # noqa: BLE001 - one sentence instead of a TorchScript traceback
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelFileError(f"{path} could not be loaded as TorchScript ({msg}).") from None
        return I3DExtractor(module, device, batch_size, torchscript=True)
    sd = load_state_dict(path)
    model = InceptionI3D()
    _check_and_load(model, sd, path, "an I3D state dict in the pytorch-i3d / TATS layout (i3d_pretrained_400.pt)")
    return I3DExtractor(model.eval().requires_grad_(False), device, batch_size)


# ----------------------------------------------------------------------------------------------------
# VideoMAE-v2 (CD-FVD)

_HEADS_BY_WIDTH = {1408: 16, 1024: 16, 768: 12, 384: 6}


def _sinusoid_table(n: int, d: int) -> torch.Tensor:
    pos = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(d)[None, :]
    angle = pos / np.power(10000, 2 * (j // 2) / d)
    table = np.empty_like(angle)
    table[:, 0::2] = np.sin(angle[:, 0::2])
    table[:, 1::2] = np.cos(angle[:, 1::2])
    return torch.from_numpy(table).float()[None]


class VideoMAEv2Features(nn.Module):
    """VideoMAE-v2 encoder (transformers VideoMAE patch embedding + encoder layers) + ``fc_norm``.

    The transformers building blocks are used directly rather than ``VideoMAEModel``, whose constructor
    spends seconds filling its own position table in Python; positions are computed here (vectorised).
    """

    def __init__(self, hidden_size=1408, num_layers=40, num_heads=16, intermediate_size=6144, patch_size=14,
                 tubelet_size=2, image_size=224, num_frames=16):
        super().__init__()
        from transformers import VideoMAEConfig
        from transformers.models.videomae.modeling_videomae import VideoMAEEncoder, VideoMAEPatchEmbeddings

        self.config = VideoMAEConfig(
            image_size=image_size, patch_size=patch_size, num_channels=3, num_frames=num_frames,
            tubelet_size=tubelet_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, intermediate_size=intermediate_size, hidden_act="gelu",
            layer_norm_eps=1e-6, qv_bias=True, use_mean_pooling=True,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
        self.config._attn_implementation = "sdpa"
        self.patch_embeddings = VideoMAEPatchEmbeddings(self.config)
        self.encoder = VideoMAEEncoder(self.config)
        self.fc_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self._pos_cache: dict = {}

    def position_embedding(self, frames: int) -> torch.Tensor:
        """Fixed sin-cos positions; for clips other than ``num_frames`` long, interpolated in time as cd-fvd does."""
        c = self.config
        if frames not in self._pos_cache:
            grid = c.image_size // c.patch_size
            t_ref = c.num_frames // c.tubelet_size
            table = _sinusoid_table(t_ref * grid * grid, c.hidden_size)
            t_new = frames // c.tubelet_size
            if t_new != t_ref:
                vol = table.permute(0, 2, 1).reshape(1, c.hidden_size, t_ref, grid, grid)
                vol = F.interpolate(vol, scale_factor=((t_new + 0.1) / t_ref, 1, 1), mode="trilinear")
                table = vol.reshape(1, c.hidden_size, -1).permute(0, 2, 1)
            self._pos_cache[frames] = table
        return self._pos_cache[frames]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips [B, 3, T, H, W] in [0, 1] (H = W = image_size) -> features [B, hidden_size]."""
        tokens = self.patch_embeddings(clips.transpose(1, 2))
        tokens = tokens + self.position_embedding(clips.shape[2]).to(tokens)
        hidden = self.encoder(tokens).last_hidden_state
        return self.fc_norm(hidden.mean(1))


def videomae_config_from_state_dict(sd: dict) -> dict:
    """Architecture sizes of a VideoMAE-v2 checkpoint (original ``blocks.N`` layout) from its tensor shapes."""
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.ndim != 5:
        raise ValueError("not a VideoMAE-v2 checkpoint: it has no 5-D patch_embed.proj.weight")
    hidden, _, tubelet, patch, _ = w.shape
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    heads = _HEADS_BY_WIDTH.get(hidden, max(1, hidden // 64))
    return dict(hidden_size=hidden, num_layers=depth, num_heads=heads,
                intermediate_size=sd["blocks.0.mlp.fc1.weight"].shape[0], patch_size=patch, tubelet_size=tubelet)


def convert_videomae_state_dict(sd: dict) -> dict:
    """Rename a VideoMAE-v2 checkpoint (``blocks.N.attn.qkv`` ...) to :class:`VideoMAEv2Features` names.

    The fused qkv weight is split into query/key/value (rows q, k, v in that order); ``q_bias`` and
    ``v_bias`` become the query/value biases (the key has none). The classification ``head`` is dropped.
    """
    out = {}
    for k, v in sd.items():
        if k.startswith("head.") or k == "pos_embed":
            continue
        if k.startswith("patch_embed.proj."):
            out["patch_embeddings.projection." + k.split(".")[-1]] = v
        elif k.startswith("fc_norm."):
            out[k] = v
        elif k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            p = f"encoder.layer.{i}."
            if rest == "attn.qkv.weight":
                q, kk, vv = v.chunk(3, dim=0)
                out[p + "attention.attention.query.weight"] = q
                out[p + "attention.attention.key.weight"] = kk
                out[p + "attention.attention.value.weight"] = vv
            elif rest == "attn.q_bias":
                out[p + "attention.attention.query.bias"] = v
            elif rest == "attn.v_bias":
                out[p + "attention.attention.value.bias"] = v
            else:
                for old, new in (("attn.proj.", "attention.output.dense."), ("norm1.", "layernorm_before."),
                                 ("norm2.", "layernorm_after."), ("mlp.fc1.", "intermediate.dense."),
                                 ("mlp.fc2.", "output.dense.")):
                    if rest.startswith(old):
                        out[p + new + rest[len(old):]] = v
                        break
                else:
                    out[k] = v  # unknown (e.g. layer-scale gamma): reported as unexpected by the loader
        else:
            out[k] = v
    return out


class VideoMAEExtractor:
    """uint8 clips [B, T, 256, 256, 3] -> VideoMAE-v2 features [B, hidden] (float64), cd-fvd preprocessing."""

    def __init__(self, model: VideoMAEv2Features, device="cpu", batch_size: int = 2):
        self.model = model.to(device)
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, clips: np.ndarray) -> np.ndarray:
        size = self.model.config.image_size
        out = []
        for s in range(0, len(clips), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(clips[s:s + self.batch_size])).to(self.device)
            b, t, h, w, _ = x.shape
            f = x.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).float() / 255.0
            f = F.interpolate(f, size=(size, size), mode="bilinear", align_corners=False)
            out.append(self.model(f.view(b, t, 3, size, size).transpose(1, 2)).double().cpu().numpy())
        return np.concatenate(out)


def load_videomae(path: str | os.PathLike, device="cpu", batch_size: int = 2) -> VideoMAEExtractor:
    """The cd-fvd VideoMAE-v2 feature network from a ``.pth`` (weights_only) or ``.safetensors`` file."""
    sd = load_state_dict(path)
    try:
        cfg = videomae_config_from_state_dict(sd)
    except (ValueError, KeyError) as e:
        raise ModelFileError(f"{path} is not a VideoMAE-v2 checkpoint ({e}).") from None
    with torch.device("meta"):  # no second copy of a 1B-parameter model: tensors are assigned below
        model = VideoMAEv2Features(**cfg)
    _check_and_load(model, convert_videomae_state_dict(sd), path,
                    "a VideoMAE-v2 checkpoint in the layout cd-fvd loads (blocks.N.attn.qkv, fc_norm)", assign=True)
    model = model.float().eval().requires_grad_(False)
    return VideoMAEExtractor(model, device, batch_size)


# ----------------------------------------------------------------------------------------------------
# CLIP (frame consistency)


class CLIPExtractor:
    """uint8 frames [N, H, W, 3] -> CLIP image embeddings [N, projection_dim] (float64)."""

    def __init__(self, model: nn.Module, size: int, mean=CLIP_MEAN, std=CLIP_STD, device="cpu", batch_size: int = 16):
        self.model = model.to(device)
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.device = device
        self.batch_size = batch_size

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = []
        for s in range(0, len(frames), self.batch_size):
            x = self.preprocess(frames[s:s + self.batch_size]).to(self.device)
            out.append(self.model(pixel_values=x).image_embeds.double().cpu().numpy())
        return np.concatenate(out)


def load_clip(folder: str | os.PathLike, device="cpu", batch_size: int = 16) -> CLIPExtractor:
    """CLIP vision tower + projection from a local Hugging Face folder (no download, safetensors or weights_only)."""
    from transformers import CLIPVisionModelWithProjection

    folder = Path(folder)
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; give one sentence
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelFileError(f"{folder} could not be loaded as a CLIP vision model ({msg}).") from None
    mean, std, size = CLIP_MEAN, CLIP_STD, model.config.image_size
    pp = folder / "preprocessor_config.json"
    if pp.is_file():
        try:
            cfg = json.loads(pp.read_text())
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        except (json.JSONDecodeError, OSError):
            pass
    return CLIPExtractor(model.float().eval().requires_grad_(False), size, mean, std, device, batch_size)


# ----------------------------------------------------------------------------------------------------
# clip preparation shared by FVD and CD-FVD


def prepare_clip(frames: np.ndarray, clip_len: int = 16, resolution: int = 256) -> np.ndarray:
    """First ``clip_len`` frames of uint8 [T, H, W, 3]: shorter side -> ``resolution`` (bilinear, antialiased),
    centre crop, rounded to uint8 [clip_len, resolution, resolution, 3] (cd-fvd's loader)."""
    if frames.shape[0] < clip_len:
        raise ValueError(f"the clip needs {clip_len} frames but the video has {frames.shape[0]}")
    x = torch.from_numpy(np.ascontiguousarray(frames[:clip_len])).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    if (h, w) != (resolution, resolution):
        scale = resolution / min(h, w)
        size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        top, left = (x.shape[-2] - resolution) // 2, (x.shape[-1] - resolution) // 2
        x = x[..., top:top + resolution, left:left + resolution]
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
