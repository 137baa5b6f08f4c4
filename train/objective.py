"""The EDM training objective of Stable Video Diffusion (v-prediction, sigma_data = 1).

For a clean latent x and a noise level sigma, the network F sees ``c_in * (x + sigma * eps)`` at
timestep ``c_noise`` and the denoiser is ``D = c_skip * noisy + c_out * F``, with

    c_in = 1 / sqrt(sigma^2 + 1),  c_skip = 1 / (sigma^2 + 1),  c_out = -sigma / sqrt(sigma^2 + 1),
    c_noise = 0.25 * ln(sigma),

exactly what diffusers' ``EulerDiscreteScheduler`` (``timestep_type="continuous"``, v-prediction)
applies at inference. The loss is ``(1 + sigma^2) / sigma^2 * ||D - x||^2`` averaged over latents.

Sigmas are drawn log-normally (``ln sigma ~ N(p_mean, p_std)``, SVD fine-tuning's choice) or from
the cosine-interpolated log-SNR schedule of "simple diffusion" that the published SurgSora/MOFA
training uses (shifted by latent resolution, interpolated between two shifts).
"""

from __future__ import annotations

import math

import torch

__all__ = ["sample_sigmas", "preconditioning", "edm_loss", "sample_noise_aug"]


def _uniform(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def _logsnr_cosine(u: torch.Tensor, logsnr_min: float, logsnr_max: float) -> torch.Tensor:
    a = math.atan(math.exp(-0.5 * logsnr_max))
    b = math.atan(math.exp(-0.5 * logsnr_min))
    return -2 * torch.log(torch.tan(a + u * (b - a)))


def sample_sigmas(
    n: int,
    generator: torch.Generator | None = None,
    scheme: str = "lognormal",
    p_mean: float = 0.7,
    p_std: float = 1.6,
    sigma_min: float = 0.002,
    sigma_max: float = 700.0,
    image_d: float = 64.0,
    noise_d_low: float = 32.0,
    noise_d_high: float = 64.0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``n`` noise levels (float32) by ``scheme`` ``"lognormal"`` or ``"cosine"`` (cosine-interpolated)."""
    if scheme == "lognormal":
        z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        sigma = torch.exp(p_mean + p_std * z)
    elif scheme == "cosine":
        u = _uniform(n, generator, device)
        lmin = -2 * math.log(sigma_max)  # sigma_data = 1
        lmax = -2 * math.log(sigma_min)

        def shifted(noise_d: float) -> torch.Tensor:
            shift = 2 * math.log(noise_d / image_d)
            return _logsnr_cosine(u, lmin - shift, lmax - shift) + shift

        logsnr = torch.lerp(shifted(noise_d_low), shifted(noise_d_high), u)
        sigma = torch.exp(-0.5 * logsnr)
    else:
        raise ValueError(f"unknown sigma scheme {scheme!r}; use 'lognormal' or 'cosine'")
    return sigma.clamp(sigma_min, sigma_max).float()


def sample_noise_aug(n: int, generator: torch.Generator | None = None, mean: float = -3.0, std: float = 0.5,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Noise-augmentation strengths for the frame-0 condition: ln(s) ~ N(mean, std) (about 0.05 typical)."""
    z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
    return torch.exp(mean + std * z).float()


def preconditioning(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) for sigma of shape [B]; the first three shaped [B,1,1,1,1]."""
    s = sigma.view(-1, 1, 1, 1, 1)
    c_skip = 1 / (s ** 2 + 1)
    c_out = -s / (s ** 2 + 1).sqrt()
    c_in = 1 / (s ** 2 + 1).sqrt()
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def edm_loss(model_output: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample weighted denoising loss [B] (float32): (1 + sigma^2)/sigma^2 * mean((D - x)^2)."""
    c_skip, c_out, _, _ = preconditioning(sigma)
    denoised = c_skip * noisy.float() + c_out * model_output.float()
    weight = (1 + sigma.float() ** 2) / sigma.float() ** 2
    return weight * ((denoised - clean.float()) ** 2).flatten(1).mean(dim=1)
