"""Conditional Motion Propagation (CMP), the sparse-to-dense flow network MOFA-Video uses.

Zhan et al., CVPR 2019; MOFA-Video runs it on the released ``ckpt_iter_42000.pth.tar``
(config ``semiauto_annot/resnet50_vip+mpii_liteflow``). Architecture (module names match the checkpoint
keys, which carry a ``module.`` prefix in the file):

* ``image_encoder``: ResNet-50 whose layer3/layer4 are dilated (2, 4) instead of strided, so it stays
  at 1/8 of the input; a 1x1 ``conv5`` 2048 -> 256. It also returns the 1/2 (conv1, 64 ch) and 1/4
  (layer1, 256 ch) features as decoder skips.
* ``flow_encoder``: a shallow net on the 4-channel sparse input (flow x, y and the mask twice):
  5x5 conv stride 2 + BN + ReLU, max-pool 2, 3x3 conv + BN + ReLU, avg-pool 2 -> 16 ch at 1/8.
* ``flow_decoder``: a four-branch pyramid (max-pool 1, 2, 4, 8; three 3x3 conv-BN-ReLU each, 128 ch),
  fused to 256 ch, then upsampled with skip fusion to 1/4 and 1/2, and a 1x1 head with 2 x 99 logits.
* Flow = softmax expectation over 99 bin centres spanning [-50, 50] pixels per axis, at 1/2 resolution,
  bilinearly upsampled (align_corners=True) to the 384x384 input.

:class:`CMPDecoder` wraps it behind the common decoder interface
``decoder(image, sparse_flow, mask, region_masks=None) -> flow [B, T-1, 2, H, W]``: the frame is
resized to 384x384, the sparse points are moved to the 384 grid with their values rescaled, the
network runs on all T-1 frames in one batch, and the flow comes back at the working size with
magnitudes rescaled. The image encoder is run once per video and its features shared by the T-1
frames: the published code feeds T-1 identical copies of the frame, which in eval mode gives exactly
the same features, T-1 times slower. With ``region_masks`` (a motion brush) tracks inside and outside
the union of the masks are propagated separately and the inside flow is kept only inside the masks,
as MOFA-Video does.

Input normalisation: MOFA-Video and SurgSora feed ``image * 2 - 1`` (``input_norm="mofa"``, default,
what the SurgSora adapter is trained against); the CMP authors normalised 0-255 RGB with ImageNet
mean/std (``input_norm="imagenet"``).

:func:`load_cmp` loads the real file with ``torch.load(weights_only=True)`` (via :mod:`surgsora.loading.io`),
strips ``module.``, accepts the 72 BatchNorm ``num_batches_tracked`` buffers the released file lacks,
and rejects anything else that does not match. :class:`CMPConfig` builds tiny widths for tests; the
config of a checkpoint is inferred from its tensor shapes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..loading.io import ModelFileError, describe_key_mismatch, load_state_dict
from .splat import resize_flow

__all__ = ["CMPConfig", "CMPNet", "CMPDecoder", "build_cmp", "load_cmp", "infer_cmp_config", "check_cmp_state_dict",
           "flow_from_bins", "resample_sparse", "CMP_FOLDER"]

CMP_FOLDER = "models/surgsora"
_IMAGENET_MEAN = (123.675, 116.28, 103.53)
_IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class CMPConfig:
    """Widths of the CMP network. The defaults are the released MOFA-Video checkpoint."""

    base_width: int = 64  # ResNet stem width (64 in ResNet-50); stage widths are 1x, 2x, 4x, 8x of it
    blocks: tuple[int, int, int, int] = (3, 4, 6, 3)  # bottlenecks per ResNet stage
    img_enc_dim: int = 256  # conv5 output
    sparse_enc_dim: int = 16  # flow encoder output
    dec_dim: int = 128  # pyramid branch width (fusion8 = 2x, skip4 = 1x, skip2 = 1/4, fusion2 = 1/2)
    nbins: int = 99
    fmax: float = 50.0


# ------------------------------------------------------------------------------------------ network

class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DilatedResNet(nn.Module):
    """ResNet-50 with dilated layer3/4 (output stride 8) and a 1x1 projection ``conv5``."""

    def __init__(self, cfg: CMPConfig):
        super().__init__()
        w = cfg.base_width
        self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = w
        self.layer1 = self._make_layer(w, cfg.blocks[0])
        self.layer2 = self._make_layer(w * 2, cfg.blocks[1], stride=2)
        # Dilation instead of stride keeps 1/8 resolution (the published model patches these after building).
        self.layer3 = self._make_layer(w * 4, cfg.blocks[2], dilation=2)
        self.layer4 = self._make_layer(w * 8, cfg.blocks[3], dilation=4)
        self.conv5 = nn.Conv2d(w * 8 * Bottleneck.expansion, cfg.img_enc_dim, 1)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride=stride, dilation=dilation, downsample=downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        conv1 = self.relu(self.bn1(self.conv1(x)))  # 1/2
        layer1 = self.layer1(self.maxpool(conv1))  # 1/4
        out = self.layer4(self.layer3(self.layer2(layer1)))  # 1/8
        return self.conv5(out), (conv1, layer1)


class ShallowNet(nn.Module):
    """Sparse-flow encoder; ``features`` indices match the checkpoint (0 conv, 1 BN, 4 conv, 5 BN)."""

    def __init__(self, in_dim: int = 4, out_dim: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_dim, 16, 5, stride=2, padding=2), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(16, out_dim, 3, padding=1), nn.BatchNorm2d(out_dim), nn.ReLU(inplace=True),
            nn.AvgPool2d(2, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _cbr(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SkipDecoder(nn.Module):
    """MotionDecoderSkipLayer: pyramid pooling branches + skip fusion to 1/2 resolution."""

    def __init__(self, in_dim: int, out_dim: int, dec_dim: int, skip2_dim: int, skip4_dim: int):
        super().__init__()
        d = dec_dim
        self.decoder1 = nn.Sequential(*_cbr(in_dim, d), *_cbr(d, d), *_cbr(d, d))
        for k in (2, 4, 8):
            setattr(self, f"decoder{k}", nn.Sequential(nn.MaxPool2d(k, k), *_cbr(in_dim, d), *_cbr(d, d), *_cbr(d, d)))
        self.fusion8 = nn.Sequential(*_cbr(4 * d, 2 * d))
        self.skipconv4 = nn.Sequential(*_cbr(skip4_dim, d))
        self.fusion4 = nn.Sequential(*_cbr(2 * d + d, d))
        self.skipconv2 = nn.Sequential(*_cbr(skip2_dim, d // 4))
        self.fusion2 = nn.Sequential(*_cbr(d + d // 4, d // 2))
        self.head = nn.Conv2d(d // 2, out_dim, 1)

    def forward(self, x: torch.Tensor, skips: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        skip2, skip4 = skips
        x1 = self.decoder1(x)
        size = x1.shape[-2:]
        branches = [x1] + [F.interpolate(getattr(self, f"decoder{k}")(x), size=size, mode="bilinear",
                                         align_corners=True) for k in (2, 4, 8)]
        f8 = self.fusion8(torch.cat(branches, 1))
        f8 = F.interpolate(f8, size=skip4.shape[-2:], mode="bilinear", align_corners=True)
        f4 = self.fusion4(torch.cat([f8, self.skipconv4(skip4)], 1))
        f4 = F.interpolate(f4, size=skip2.shape[-2:], mode="bilinear", align_corners=True)
        f2 = self.fusion2(torch.cat([f4, self.skipconv2(skip2)], 1))
        return self.head(f2)


class CMPNet(nn.Module):
    """The CMP network: ``forward(image, sparse [N, 4, H, W]) -> bin logits [N, 2*nbins, H/2, W/2]``."""

    def __init__(self, cfg: CMPConfig = CMPConfig()):
        super().__init__()
        self.config = cfg
        self.image_encoder = DilatedResNet(cfg)
        self.flow_encoder = ShallowNet(4, cfg.sparse_enc_dim)
        self.flow_decoder = SkipDecoder(cfg.img_enc_dim + cfg.sparse_enc_dim, 2 * cfg.nbins, cfg.dec_dim,
                                        skip2_dim=cfg.base_width, skip4_dim=cfg.base_width * 4)

    def encode_image(self, image: torch.Tensor):
        return self.image_encoder(image)

    def decode(self, image_features, sparse: torch.Tensor) -> torch.Tensor:
        enc, skips = image_features
        return self.flow_decoder(torch.cat([enc, self.flow_encoder(sparse)], 1), skips)

    def forward(self, image: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode_image(image), sparse)


def flow_from_bins(logits: torch.Tensor, nbins: int, fmax: float) -> torch.Tensor:
    """2 x nbins logits -> flow [N, 2, h, w]: softmax expectation over bin centres spanning [-fmax, fmax]."""
    step = 2.0 * fmax / nbins
    centres = torch.arange(nbins, device=logits.device, dtype=torch.float32) * step - fmax + step / 2
    centres = centres.view(1, -1, 1, 1)
    logits = logits.float()
    fx = (torch.softmax(logits[:, :nbins], 1) * centres).sum(1, keepdim=True)
    fy = (torch.softmax(logits[:, nbins:], 1) * centres).sum(1, keepdim=True)
    return torch.cat([fx, fy], 1)


def resample_sparse(sparse_flow: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]):
    """Move sparse points ``[N, 2, H, W]`` / mask ``[N, 1, H, W]`` to another grid ``size = (h, w)``.

    Interpolating a sparse field would smear or drop its points; instead every set pixel moves to the
    pixel of the new grid containing its centre, with values rescaled to the new pixels (points landing
    on the same pixel are averaged).
    """
    n, _, H, W = sparse_flow.shape
    h, w = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return sparse_flow, mask[:, :1]
    idx_n, ys, xs = (mask[:, 0] > 0.5).nonzero(as_tuple=True)
    vals = sparse_flow[idx_n, :, ys, xs].float()  # [P, 2]
    vals = vals * torch.tensor([w / W, h / H], device=vals.device)
    ny = ((ys.float() + 0.5) * h / H).floor().long().clamp(0, h - 1)
    nx = ((xs.float() + 0.5) * w / W).floor().long().clamp(0, w - 1)
    flat = idx_n * (h * w) + ny * w + nx
    acc = torch.zeros(n * h * w, 2, device=vals.device)
    acc.index_add_(0, flat, vals)
    cnt = torch.zeros(n * h * w, device=vals.device)
    cnt.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
    acc = acc / cnt.clamp_min(1).unsqueeze(1)
    out = acc.view(n, h, w, 2).permute(0, 3, 1, 2).contiguous()
    return out, (cnt > 0).float().view(n, 1, h, w)


# ------------------------------------------------------------------------------------------ decoder

class CMPDecoder(nn.Module):
    """CMP behind the common decoder interface (see module docstring).

    ``decoder(image [B,3,H,W] in [0,1], sparse_flow [B,T-1,2,H,W], mask [B,T-1,1|2,H,W], region_masks=None
    [B,M,H,W]) -> flow [B,T-1,2,H,W]`` in pixels of the working size.
    """

    def __init__(self, net: CMPNet, size: int | tuple[int, int] = 384, input_norm: str = "mofa",
                 chunk_size: int | None = None):
        super().__init__()
        if input_norm not in ("mofa", "imagenet"):
            raise ValueError(f"input_norm must be 'mofa' or 'imagenet'; got {input_norm!r}")
        self.net = net.eval()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.input_norm = input_norm
        self.chunk_size = chunk_size  # frames per decoder pass; None = all T-1 in one batch

    @property
    def config(self) -> CMPConfig:
        return self.net.config

    def _normalise(self, image: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "mofa":
            return image * 2 - 1
        mean = torch.tensor(_IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        return (image * 255 - mean) / std

    def _propagate(self, feats, sparse: torch.Tensor, mask: torch.Tensor, frames: int) -> torch.Tensor:
        """Image features of B images, sparse [B*F, 2, h, w] + mask [B*F, 1, h, w] -> flow [B*F, 2, h, w]."""
        enc, (s2, s4) = feats
        sparse_in = torch.cat([sparse, mask, mask], 1).to(enc.dtype)
        chunk = self.chunk_size or sparse_in.shape[0]
        out = []
        for i in range(0, sparse_in.shape[0], chunk):
            j = torch.arange(i, min(i + chunk, sparse_in.shape[0]), device=enc.device) // frames
            logits = self.net.decode((enc[j], (s2[j], s4[j])), sparse_in[i:i + chunk])
            out.append(flow_from_bins(logits, self.config.nbins, self.config.fmax))
        flow = torch.cat(out)
        return F.interpolate(flow, size=self.size, mode="bilinear", align_corners=True)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, sparse_flow: torch.Tensor, mask: torch.Tensor,
                region_masks: torch.Tensor | None = None) -> torch.Tensor:
        from .analytic_flow import check_decoder_inputs

        region_masks = check_decoder_inputs(image, sparse_flow, mask, region_masks)
        b, f, _, H, W = sparse_flow.shape
        if image.shape[-2:] != (H, W):
            raise ValueError(f"image {tuple(image.shape[-2:])} and sparse_flow {(H, W)} must have the same size")
        p = next(self.net.parameters())
        dev, dtype = p.device, p.dtype
        img = F.interpolate(image.to(dev, torch.float32), size=self.size, mode="bilinear", align_corners=False,
                            antialias=True)
        feats = self.net.encode_image(self._normalise(img).to(dtype))

        sp = sparse_flow.to(dev, torch.float32).reshape(b * f, 2, H, W)
        mk = mask.to(dev, torch.float32)[:, :, :1].reshape(b * f, 1, H, W)
        if region_masks is None:
            sp384, mk384 = resample_sparse(sp, mk, self.size)
            flow = self._propagate(feats, sp384, mk384, f)
        else:
            brush = region_masks.to(dev, torch.float32).amax(1, keepdim=True)  # [B, 1, H, W] union of regions
            inside = (brush > 0.5).float().repeat_interleave(f, 0)
            flows = []
            for part in (inside, 1 - inside):
                sp384, mk384 = resample_sparse(sp * part, mk * part, self.size)
                if mk384.any():
                    flows.append(self._propagate(feats, sp384, mk384, f))
                else:
                    flows.append(torch.zeros(b * f, 2, *self.size, device=dev))
            brush384 = F.interpolate(brush, size=self.size, mode="bilinear", align_corners=False)
            brush384 = brush384.clamp(0, 1).repeat_interleave(f, 0)
            flow = brush384 * flows[0] + (1 - brush384) * flows[1]
        flow = resize_flow(flow, (H, W))
        return flow.reshape(b, f, 2, H, W).to(device=sparse_flow.device, dtype=sparse_flow.dtype)


# ------------------------------------------------------------------------------------------ loading

def build_cmp(config: CMPConfig | Mapping | None = None, size: int | tuple[int, int] = 384,
              input_norm: str = "mofa", device: str | torch.device = "cpu") -> CMPDecoder:
    """A randomly initialised CMP decoder (tests use tiny widths, e.g. ``CMPConfig(8, (1,1,1,1), 16, 8, 16)``)."""
    cfg = config if isinstance(config, CMPConfig) else CMPConfig(**(config or {}))
    with torch.device(device):
        net = CMPNet(cfg)
    return CMPDecoder(net, size=size, input_norm=input_norm)


def infer_cmp_config(state_dict: Mapping[str, torch.Tensor], fmax: float = 50.0) -> CMPConfig:
    """Read the widths of a CMP checkpoint (``module.`` prefix already stripped) from its tensor shapes."""
    try:
        base = state_dict["image_encoder.conv1.weight"].shape[0]
        blocks = tuple(
            1 + max(int(m.group(1)) for k in state_dict
                    if (m := re.match(rf"image_encoder\.layer{i}\.(\d+)\.", k)))
            for i in range(1, 5)
        )
        img_enc = state_dict["image_encoder.conv5.weight"].shape[0]
        sparse_enc = state_dict["flow_encoder.features.4.weight"].shape[0]
        dec = state_dict["flow_decoder.decoder1.0.weight"].shape[0]
    except (KeyError, ValueError):
        raise ModelFileError("This is not a MOFA-Video CMP checkpoint (image_encoder / flow_encoder / flow_decoder "
                             "tensors are missing).") from None
    head = state_dict.get("flow_decoder.head.weight")  # if absent, check_cmp_state_dict names it
    nbins = head.shape[0] // 2 if head is not None else CMPConfig.nbins
    return CMPConfig(base_width=base, blocks=blocks, img_enc_dim=img_enc, sparse_enc_dim=sparse_enc, dec_dim=dec,
                     nbins=nbins, fmax=fmax)


def _strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def check_cmp_state_dict(net: CMPNet, state_dict: Mapping[str, torch.Tensor], name: str = "checkpoint") -> None:
    """Raise :class:`ModelFileError` unless ``state_dict`` fits ``net`` exactly (num_batches_tracked may be absent)."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(expected[k].shape)})"
             for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise ModelFileError(f"{name} is not a MOFA-Video CMP checkpoint: "
                             f"{describe_key_mismatch(missing, unexpected, wrong, examples=1)}. Use "
                             "ckpt_iter_42000.pth.tar from MOFA-Video (models/cmp/experiments/semiauto_annot/"
                             f"resnet50_vip+mpii_liteflow/checkpoints) and put it in `{CMP_FOLDER}`.")


def load_cmp(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             size: int | tuple[int, int] = 384, input_norm: str = "mofa", fmax: float = 50.0) -> CMPDecoder:
    """Load MOFA-Video's ``ckpt_iter_42000.pth.tar`` (or a CMP checkpoint of any width) as a :class:`CMPDecoder`."""
    sd = _strip_prefix(load_state_dict(path, folder_hint=CMP_FOLDER))
    cfg = infer_cmp_config(sd, fmax=fmax)
    with torch.device("meta"):
        net = CMPNet(cfg)
    check_cmp_state_dict(net, sd, name=str(path))
    net = net.to_empty(device=device)
    # The released file has no num_batches_tracked buffers (unused in eval); give them a defined value.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d) and m.num_batches_tracked is not None:
            m.num_batches_tracked.zero_()
    net.load_state_dict(sd, strict=False)
    net = net.to(dtype).eval().requires_grad_(False)
    return CMPDecoder(net, size=size, input_norm=input_norm)
