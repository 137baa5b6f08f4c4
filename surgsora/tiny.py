"""Tiny random configurations of the real architectures, for tests, smoke runs and `--config tiny`.

Same classes as the full-size models (diffusers SVD UNet, temporal-decoder VAE, transformers CLIP
vision tower, SurgSoraAdapter) with small widths, so every code path runs on a CPU in seconds.
The VAE keeps four blocks so that, as in SVD, latents are 1/8 of the image.
"""

from __future__ import annotations

import torch

__all__ = ["tiny_unet_config", "tiny_adapter_options", "tiny_svd_components", "tiny_adapter", "tiny_sam", "tiny_depth"]


def tiny_unet_config(num_frames: int = 14) -> dict:
    return dict(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32, num_attention_heads=8, projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32, num_frames=num_frames,
    )


def tiny_adapter_options() -> dict:
    """Condition-branch widths for the tiny adapter (SAM features keep their real 256 channels)."""
    return dict(conditioning_embedding_channels=(8, 8, 8, 16), depth_hidden_channels=(8, 16), seg_channels=256)


def tiny_svd_components(seed: int = 0, num_frames: int = 14) -> dict:
    """vae, image_encoder, unet, scheduler, feature_extractor: a tiny random SVD, deterministic in ``seed``."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(**tiny_unet_config(num_frames))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    )
    torch.manual_seed(seed + 2)
    # image_size 224 like the real ViT-H/14, so the real CLIP preprocessing path is exercised.
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=224,
        intermediate_size=37, patch_size=32,
    )).eval()
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
        steps_offset=1, timestep_spacing="leading", timestep_type="continuous", trained_betas=None,
        use_karras_sigmas=True,
    )
    feature_extractor = CLIPImageProcessor(crop_size=224, size=224)
    return dict(vae=vae.eval(), image_encoder=image_encoder, unet=unet.eval(), scheduler=scheduler,
                feature_extractor=feature_extractor)


def tiny_adapter(unet, seed: int = 0, randomize: bool = False):
    """A SurgSoraAdapter for a tiny UNet; ``randomize`` re-draws the zero-initialised layers so it acts."""
    from .model.adapter import SurgSoraAdapter

    torch.manual_seed(seed)
    adapter = SurgSoraAdapter.from_unet(unet, **tiny_adapter_options())
    if randomize:
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for p in adapter.parameters():
                if not p.any():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return adapter.eval()


def tiny_sam(seed: int = 0):
    """A SamSegmenter with a tiny random SAM (real modules, real [256, 64, 64] embedding)."""
    from .perception.sam import SamSegmenter, build_sam, tiny_sam_config

    torch.manual_seed(seed)
    config = tiny_sam_config()
    return SamSegmenter(build_sam(config), config)


def tiny_depth(seed: int = 0):
    """A DepthEstimator with a tiny random Depth Anything V2 (transformers classes)."""
    from .perception.depth import DepthEstimator, build_depth_model, depth_config

    torch.manual_seed(seed)
    model = build_depth_model(depth_config(
        "custom", hidden_size=64, num_hidden_layers=4, num_attention_heads=1, out_indices=[1, 2, 3, 4],
        neck_hidden_sizes=[8, 16, 32, 64], fusion_hidden_size=16, head_hidden_size=8,
    ))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 if p.ndim > 1 else torch.rand_like(p) * 1.5 - 0.5)
        model.head.conv3.bias.fill_(1.5)  # keep the final ReLU from flattening the random map
    return DepthEstimator(model, variant="custom")
