"""Segment Anything (v1) image features and masks from clicks and boxes.

Design
------
The model is segment-anything's own ``Sam`` (``ImageEncoderViT`` + ``PromptEncoder`` + ``MaskDecoder`` with a
``TwoWayTransformer``), built from a :class:`SamConfig`. :func:`load_sam` reads the config from the tensor
shapes of the file, never from its name, so renamed copies of ``sam_vit_{b,l,h}_*.pth`` work:

* encoder width from ``patch_embed``, depth from the number of blocks, head size from the relative
  position tables, and which blocks use global attention from the *length* of those tables
  (``2*64-1`` rows for global blocks, ``2*14-1`` for windowed ones);
* image size from the absolute position embedding grid (64 patches of 16 px = 1024);
* decoder depth, MLP width, mask-token count and IoU-head size from their layers.

Only the decoder's attention-head count (8) cannot be seen in any shape; it is SAM's fixed value.
"Detection" therefore means: the architecture is rebuilt exactly from the shapes and then loaded strictly;
:attr:`SamSegmenter.variant` is ``vit_b``/``vit_l``/``vit_h`` when that architecture equals a published one
and ``custom`` otherwise (e.g. the tiny models used in tests).

:class:`SamSegmenter` applies SAM's own preprocessing on float tensors: resize the longest side to
``img_size`` (1024; bilinear with antialiasing, the tensor counterpart of SAM's PIL resize), normalise with
SAM's pixel mean/std and pad bottom-right to a square (``Sam.preprocess``). A tiny config may use a smaller
``img_size`` (then the embedding grid is ``img_size / 16``); the logic is unchanged. Embeddings are cached
by image content (a hash of the pixels), so the segment features and any number of mask queries on the
same frame run the heavy encoder once.

:func:`as_rgb_batch` is the shared input check for the perception front-ends (also used by
:mod:`surgsora.perception.depth`): float tensors are channels-first ``[B,3,H,W]``/``[3,H,W]`` in [0,1]; numpy arrays
are channels-last ``[B,H,W,3]``/``[H,W,3]`` (uint8 0..255 or float in [0,1]).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..loading.io import ModelFileError, describe_key_mismatch, load_state_dict

__all__ = [
    "SAM_FOLDER",
    "SAM_VARIANTS",
    "SamConfig",
    "SamSegmenter",
    "as_rgb_batch",
    "build_sam",
    "build_sam_from_state_dict",
    "content_key",
    "infer_sam_config",
    "load_sam",
    "sam_variant",
    "tiny_sam_config",
]

SAM_FOLDER = "models/sams"
_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    """Every size of a SAM v1 model (defaults are the published ones shared by vit_b/l/h)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    @property
    def embedding_size(self) -> int:
        return self.img_size // self.patch_size


SAM_VARIANTS = {
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
}


def tiny_sam_config(img_size: int = 1024, embed_dim: int = 32, depth: int = 2) -> SamConfig:
    """A small random-weight SAM for tests: real modules and real 256-channel embedding, few/thin layers.

    With the default ``img_size=1024`` the embedding is the real ``[256, 64, 64]``; block ``depth-1`` is
    global and the others windowed, as in the published models.
    """
    return SamConfig(encoder_embed_dim=embed_dim, encoder_depth=depth, encoder_num_heads=2,
                     encoder_global_attn_indexes=(depth - 1,), img_size=img_size, mask_in_chans=8,
                     decoder_depth=1, decoder_mlp_dim=64, iou_head_hidden_dim=32)


def build_sam(config: SamConfig, device: str | torch.device = "cpu"):
    """segment-anything's ``Sam`` for ``config``, with random weights (``device="meta"``: shapes only)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = config.embedding_size
    with torch.device(device):
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.encoder_embed_dim,
                depth=config.encoder_depth, num_heads=config.encoder_num_heads, mlp_ratio=config.mlp_ratio,
                out_chans=config.prompt_embed_dim, qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                window_size=config.window_size, global_attn_indexes=tuple(config.encoder_global_attn_indexes),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=config.prompt_embed_dim, image_embedding_size=(grid, grid),
                input_image_size=(config.img_size, config.img_size), mask_in_chans=config.mask_in_chans,
            ),
            mask_decoder=MaskDecoder(
                transformer_dim=config.prompt_embed_dim,
                transformer=TwoWayTransformer(depth=config.decoder_depth, embedding_dim=config.prompt_embed_dim,
                                              mlp_dim=config.decoder_mlp_dim, num_heads=config.decoder_num_heads),
                num_multimask_outputs=config.num_multimask_outputs,
                iou_head_depth=config.iou_head_depth, iou_head_hidden_dim=config.iou_head_hidden_dim,
            ),
            pixel_mean=list(_PIXEL_MEAN),
            pixel_std=list(_PIXEL_STD),
        )
    return sam.eval()


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def infer_sam_config(sd: Mapping[str, torch.Tensor], where: str = "This checkpoint") -> SamConfig:
    """Rebuild the :class:`SamConfig` of a SAM v1 state dict from its tensor shapes (see module docstring)."""
    _check_sam_layout(sd, where)
    try:
        embed_dim, _, patch, _ = sd["image_encoder.patch_embed.proj.weight"].shape
        grid = sd["image_encoder.pos_embed"].shape[1]
        depth = _count(sd, "image_encoder.blocks.")
        rel_rows, head_dim = sd["image_encoder.blocks.0.attn.rel_pos_h"].shape
        global_idx, window = [], None
        for i in range(depth):
            rows = sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]
            if rows == 2 * grid - 1:
                global_idx.append(i)
            else:
                window = (rows + 1) // 2
        mlp = sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0]
        prompt_dim = sd["image_encoder.neck.0.weight"].shape[0]
        config = SamConfig(
            encoder_embed_dim=embed_dim, encoder_depth=depth, encoder_num_heads=embed_dim // head_dim,
            encoder_global_attn_indexes=tuple(global_idx), img_size=grid * patch, patch_size=patch,
            window_size=window if window is not None else 14, mlp_ratio=mlp / embed_dim,
            prompt_embed_dim=prompt_dim,
            mask_in_chans=sd["prompt_encoder.mask_downscaling.3.weight"].shape[0],
            decoder_depth=_count(sd, "mask_decoder.transformer.layers."),
            decoder_mlp_dim=sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            num_multimask_outputs=sd["mask_decoder.mask_tokens.weight"].shape[0] - 1,
            iou_head_depth=_count(sd, "mask_decoder.iou_prediction_head.layers."),
            iou_head_hidden_dim=sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
        )
    except (KeyError, ValueError) as e:
        raise ModelFileError(
            f"{where} is not a SAM v1 ViT checkpoint (no tensor {e}); MobileSAM, EfficientSAM and SAM-HQ are "
            f"different models. Put sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth in "
            f"{SAM_FOLDER}."
        ) from None
    return config


def sam_variant(config: SamConfig) -> str:
    """``vit_b``/``vit_l``/``vit_h`` if ``config`` is exactly a published architecture, else ``custom``."""
    return next((name for name, c in SAM_VARIANTS.items() if c == config), "custom")


def _check_sam_layout(sd: Mapping[str, torch.Tensor], what: str) -> None:
    keys = list(sd)
    if any(k.startswith(("pretrained.", "depth_head.", "backbone.embeddings.")) for k in keys):
        raise ModelFileError(
            f"{what} is a Depth Anything checkpoint, not Segment Anything: it belongs in models/depthanything "
            f"and loads with the depth loader; the SAM loader takes sam_vit_{{b,l,h}}_*.pth from {SAM_FOLDER}."
        )
    if any(k.startswith(("image_encoder.trunk.", "sam_mask_decoder.")) for k in keys):
        raise ModelFileError(
            f"{what} is a SAM 2 checkpoint; this loader takes SAM v1 (sam_vit_{{b,l,h}}_*.pth) from {SAM_FOLDER}."
        )
    if not any(k.startswith("image_encoder.") for k in keys) or not any(k.startswith("mask_decoder.") for k in keys):
        raise ModelFileError(
            f"{what} is not a Segment Anything checkpoint (no image_encoder/mask_decoder tensors). Put "
            f"sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth in {SAM_FOLDER}."
        )


def build_sam_from_state_dict(sd: Mapping[str, torch.Tensor], where: str = "This checkpoint"):
    """``(Sam, SamConfig)`` with the weights of ``sd`` loaded strictly into the architecture its shapes describe."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    config = infer_sam_config(sd, where)
    model = build_sam(config, device="meta")
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise ModelFileError(f"{where} is not a standard SAM v1 checkpoint: "
                             f"{describe_key_mismatch(missing, unexpected)}. "
                             f"Use the released sam_vit_{{b,l,h}}_*.pth in {SAM_FOLDER}.")
    # pixel_mean/std are non-persistent (not in the file), so the meta build left them empty.
    model.pixel_mean = torch.tensor(_PIXEL_MEAN).view(-1, 1, 1)
    model.pixel_std = torch.tensor(_PIXEL_STD).view(-1, 1, 1)
    return model.eval(), config


def load_sam(path: str | os.PathLike, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None) -> "SamSegmenter":
    """Load a SAM v1 checkpoint (``.pth`` via weights_only, or ``.safetensors`` with the same keys).

    The architecture (vit_b/l/h or custom) is detected from tensor shapes. On CPU the model runs in float32;
    on CUDA ``dtype`` defaults to float32 (float16/bfloat16 accepted).
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder; give the path of a sam_vit_{{b,l,h}}_*.pth file in {SAM_FOLDER}.")
    sd = load_state_dict(path, folder_hint=SAM_FOLDER)
    model, config = build_sam_from_state_dict(sd, where=path.name)
    return SamSegmenter(model, config, device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# input checking shared by the perception front-ends
# --------------------------------------------------------------------------------------------------

def _as_one_batch(images, what: str) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        if images.dtype == object or images.dtype.kind not in "uif":
            raise ValueError(f"{what} must be an RGB image; got a numpy array of {images.dtype}.")
        if images.ndim not in (3, 4):
            raise ValueError(f"{what} must be an RGB image [H,W,3] or batch [B,H,W,3]; got shape {images.shape}.")
        if images.shape[-1] != 3:
            hint = " (numpy images are channels-last [H,W,3])" if images.shape[-3] == 3 else ""
            raise ValueError(f"{what} must have 3 channels (RGB); got shape {images.shape}{hint}.")
        t = torch.from_numpy(np.ascontiguousarray(images))
        t = t.unsqueeze(0) if t.ndim == 3 else t
        t = t.permute(0, 3, 1, 2)
    elif isinstance(images, torch.Tensor):
        if images.dtype == torch.bool or images.is_complex():
            raise ValueError(f"{what} must be an RGB image tensor; got dtype {images.dtype}.")
        if images.ndim not in (3, 4):
            raise ValueError(
                f"{what} must be a float RGB tensor [B,3,H,W] or [3,H,W]; got shape {tuple(images.shape)}.")
        t = images.unsqueeze(0) if images.ndim == 3 else images
        if t.shape[1] != 3:
            if t.shape[-1] in (1, 3, 4) and t.shape[1] > 4:
                raise ValueError(
                    f"{what} must be channels-first [B,3,H,W]; got {tuple(images.shape)}, which looks like a "
                    f"channels-last ComfyUI IMAGE [B,H,W,C]: use images.permute(0, 3, 1, 2).")
            hint = {1: " (grey: repeat it to 3 channels)", 4: " (RGBA: drop the alpha channel)"}.get(t.shape[1], "")
            raise ValueError(f"{what} must have 3 channels (RGB); got {t.shape[1]}{hint}.")
    else:
        raise ValueError(
            f"{what} must be an RGB image (torch tensor [B,3,H,W] in [0,1] or numpy [H,W,3] uint8); "
            f"got {type(images).__name__}.")
    if t.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch (0 images); pass at least one image.")
    if t.shape[-1] < 2 or t.shape[-2] < 2:
        raise ValueError(f"{what} is {t.shape[-2]}x{t.shape[-1]} pixels; it needs at least 2x2.")
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    t = t.float()
    lo, hi = (v.item() for v in torch.aminmax(t))  # one pass; NaN propagates into both
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{what} contains NaN or infinite values.")
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"{what} values must be in [0,1]; got [{lo:.3g}, {hi:.3g}] (divide 0..255 images by 255, "
            f"map [-1,1] images with (x + 1) / 2).")
    return t.clamp(0, 1)


def content_key(image: torch.Tensor, *extra) -> str:
    """A hash of an image's pixels (and ``extra`` settings): the cache key of the perception front-ends."""
    data = image.detach().to("cpu", torch.float32).contiguous().numpy()
    h = hashlib.blake2b(repr((data.shape, extra)).encode(), digest_size=16)
    h.update(memoryview(data).cast("B"))
    return h.hexdigest()


def as_rgb_batch(images, what: str = "image") -> torch.Tensor:
    """Validate and convert images to float32 RGB ``[B,3,H,W]`` in [0,1] (see module docstring).

    A list/tuple of images of one size is stacked. Bad inputs raise ``ValueError`` with one sentence.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{what} is an empty list; pass at least one image.")
        parts = [_as_one_batch(im, what) for im in images]
        if len({p.shape[-2:] for p in parts}) > 1:
            raise ValueError(f"{what}: images in one batch must share one size; pass them one at a time.")
        return torch.cat(parts)
    return _as_one_batch(images, what)


# --------------------------------------------------------------------------------------------------
# segmenter
# --------------------------------------------------------------------------------------------------

@dataclass
class _Entry:
    embedding: torch.Tensor  # [C, E, E]
    input_size: tuple[int, int]  # after resize, before padding
    original_size: tuple[int, int]


def _encoder_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    """The image encoder's dtype: float32 on the CPU (half precision is slow or missing there; a warning says so),
    else ``dtype`` (default float32)."""
    if device.type == "cpu":
        if dtype not in (None, torch.float32):
            warnings.warn(f"{dtype} requested on CPU; running SAM in float32 instead.", stacklevel=3)
        return torch.float32
    return dtype or torch.float32


class SamSegmenter:
    """SAM image embeddings (segment features) and prompt masks, with a per-image embedding cache."""

    def __init__(self, model, config: SamConfig, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, cache_size: int = 8, max_batch: int = 4):
        self.device = torch.device(device)
        self.dtype = _encoder_dtype(self.device, dtype)
        # Only the heavy image encoder runs in ``dtype``; the prompt encoder casts clicks to float32 before
        # its Gaussian projection, so the (cheap) prompt encoder and mask decoder stay in float32.
        self.model = model.to(device=self.device, dtype=torch.float32).eval()
        self.model.image_encoder.to(self.dtype)
        self.config = config
        self.variant = sam_variant(config)
        self.cache_size = cache_size
        self.max_batch = max_batch
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self.encoder_images = 0  # number of images the heavy encoder has processed (cache misses)

    # ---- preprocessing --------------------------------------------------------------------------
    def _resized_shape(self, h: int, w: int) -> tuple[int, int]:
        from segment_anything.utils.transforms import ResizeLongestSide

        return ResizeLongestSide.get_preprocess_shape(h, w, self.config.img_size)

    def _prepare(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[3,H,W]`` in [0,1] -> SAM's normalised, padded ``[1,3,S,S]`` and the resized size."""
        x = image.to(self.device, torch.float32).unsqueeze(0) * 255.0
        size = self._resized_shape(*x.shape[-2:])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.model.preprocess(x.clamp(0, 255)), size

    # ---- encoding -------------------------------------------------------------------------------
    @torch.no_grad()
    def _entries(self, images: torch.Tensor) -> list[_Entry]:
        keys = [content_key(im) for im in images]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        # Deduplicate within the batch too: identical frames are encoded once.
        first = {}
        for i in todo:
            first.setdefault(keys[i], i)
        pending = list(first.values())
        for start in range(0, len(pending), self.max_batch):
            idx = pending[start:start + self.max_batch]
            prepared = [self._prepare(images[i]) for i in idx]
            batch = torch.cat([p[0] for p in prepared]).to(self.dtype)
            emb = self.model.image_encoder(batch).float()
            self.encoder_images += len(idx)
            for j, i in enumerate(idx):
                self._cache[keys[i]] = _Entry(emb[j].clone(), prepared[j][1], tuple(images[i].shape[-2:]))
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        out = []
        for k in keys:
            self._cache.move_to_end(k)
            out.append(self._cache[k])
        return out

    def encode(self, images) -> torch.Tensor:
        """SAM image embeddings ``[B,256,64,64]`` (``[B, prompt_dim, img_size/16, img_size/16]``).

        ``images``: float RGB ``[B,3,H,W]``/``[3,H,W]`` in [0,1], numpy ``[B,H,W,3]``/``[H,W,3]``, or a list of
        images (sizes may differ). Images already encoded in this run come from the cache.
        """
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("SAM input is an empty list; pass at least one image.")
            return torch.cat([self.encode(im) for im in images])
        x = as_rgb_batch(images, what="SAM input")
        return torch.stack([e.embedding for e in self._entries(x)])

    def clear_cache(self) -> None:
        self._cache.clear()

    def to(self, device: str | torch.device) -> "SamSegmenter":
        """Move the model and the cached embeddings to ``device`` (e.g. to offload between runs)."""
        device = torch.device(device)
        if device.type == "cpu" and self.dtype != torch.float32:
            self.dtype = torch.float32
            self.model.image_encoder.to(torch.float32)
        self.model.to(device)
        self.device = device
        for entry in self._cache.values():  # a later mask query must not mix devices
            entry.embedding = entry.embedding.to(device)
        return self

    # ---- prompts --------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_masks(self, image, points=None, labels=None, boxes=None, multimask: bool = False):
        """Masks for one image from clicks and/or boxes given in input-image pixel coordinates.

        * ``points``: ``[N,2]`` (x, y) clicks; ``labels``: ``[N]`` with 1 = object, 0 = background
          (default: all 1).
        * ``boxes``: ``[4]`` or ``[M,4]`` as x0, y0, x1, y1. Each box is one object; clicks, if also given,
          apply to every box. Without boxes, all clicks describe one object.

        Returns ``(masks, scores)``: ``masks`` bool ``[N,H,W]`` at the input resolution and ``scores``
        (SAM's predicted IoU) ``[N]``. With ``multimask=False``, N = number of objects and each mask is the best
        one: for a single click (ambiguous) the highest-scoring of SAM's three, otherwise SAM's single-mask
        output, as SAM recommends. With ``multimask=True`` all three candidates of each object are returned,
        object-major (N = 3 x objects). The image embedding comes from the cache when available.
        """
        x = as_rgb_batch(image, what="SAM input")
        if x.shape[0] != 1:
            raise ValueError(f"predict_masks takes one image; got a batch of {x.shape[0]}.")
        pts, lbl, bxs = _check_prompts(points, labels, boxes, *x.shape[-2:])  # before the costly encode
        entry = self._entries(x)[0]

        from segment_anything.utils.transforms import ResizeLongestSide

        tf = ResizeLongestSide(self.config.img_size)
        n_obj = bxs.shape[0] if bxs is not None else 1
        point_arg = None
        if pts is not None:
            coords = tf.apply_coords_torch(pts, entry.original_size).to(self.device)
            point_arg = (coords[None].expand(n_obj, -1, -1), lbl.to(self.device)[None].expand(n_obj, -1))
        box_arg = tf.apply_boxes_torch(bxs, entry.original_size).to(self.device) if bxs is not None else None

        single_click = bxs is None and pts is not None and pts.shape[0] == 1
        want_three = multimask or single_click
        pe = self.model.prompt_encoder
        sparse, dense = pe(points=point_arg, boxes=box_arg, masks=None)
        low_res, iou = self.model.mask_decoder(
            image_embeddings=entry.embedding[None], image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=want_three,
        )
        if want_three and not multimask:
            best = iou.argmax(dim=1)
            sel = torch.arange(n_obj, device=iou.device)
            low_res, iou = low_res[sel, best][:, None], iou[sel, best][:, None]
        masks = self.model.postprocess_masks(low_res, entry.input_size, entry.original_size)
        masks = masks > self.model.mask_threshold
        return masks.flatten(0, 1), iou.flatten()


def _check_prompts(points, labels, boxes, h: int, w: int):
    def as_tensor(v, name):
        try:
            t = torch.as_tensor(np.asarray(v, dtype=np.float64) if not isinstance(v, torch.Tensor) else v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numbers; got {type(v).__name__}.") from None
        return t.detach().to("cpu", torch.float32)

    if points is None and labels is not None:
        raise ValueError("labels were given without points; pass points=[[x, y], ...] with one label each.")
    if points is None and boxes is None:
        raise ValueError("predict_masks needs at least one click (points=[[x, y]]) or box (boxes=[x0, y0, x1, y1]).")
    pts = lbl = bxs = None
    if points is not None:
        pts = as_tensor(points, "points")
        pts = pts[None] if pts.ndim == 1 else pts
        if pts.ndim != 2 or pts.shape[-1] != 2 or pts.shape[0] == 0:
            raise ValueError(f"points must be [N,2] pixel (x, y) pairs; got shape {tuple(pts.shape)}.")
        if labels is None:
            lbl = torch.ones(pts.shape[0], dtype=torch.int)
        else:
            lbl = as_tensor(labels, "labels").reshape(-1)
            if lbl.shape[0] != pts.shape[0]:
                raise ValueError(f"labels has {lbl.shape[0]} entries for {pts.shape[0]} points; give one per point.")
            if not torch.isin(lbl, torch.tensor([0.0, 1.0])).all():
                raise ValueError("labels must be 1 (object) or 0 (background).")
            lbl = lbl.int()
        _check_inside(pts, h, w, "point")
    if boxes is not None:
        bxs = as_tensor(boxes, "boxes")
        bxs = bxs[None] if bxs.ndim == 1 else bxs
        if bxs.ndim != 2 or bxs.shape[-1] != 4 or bxs.shape[0] == 0:
            raise ValueError(f"boxes must be [4] or [M,4] as x0, y0, x1, y1 pixels; got shape {tuple(bxs.shape)}.")
        if (bxs[:, 2] < bxs[:, 0]).any() or (bxs[:, 3] < bxs[:, 1]).any():
            raise ValueError("boxes must be x0, y0, x1, y1 with x1 >= x0 and y1 >= y0.")
        _check_inside(bxs.reshape(-1, 2), h, w, "box corner")
    return pts, lbl, bxs


def _check_inside(xy: torch.Tensor, h: int, w: int, what: str) -> None:
    if not torch.isfinite(xy).all():
        raise ValueError(f"a {what} has a NaN or infinite coordinate.")
    bad = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
    if bad.any():
        x, y = xy[bad][0].tolist()
        raise ValueError(
            f"{what} ({x:g}, {y:g}) is outside the {w}x{h} image; give pixel coordinates of the input image.")
