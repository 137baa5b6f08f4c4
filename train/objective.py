"""The EDM training objective of Stable Video Diffusion (v-prediction, sigma_data = 1).

For a clean latent x and a noise level sigma, the network F sees ``c_in * (x + sigma * eps)`` at
timestep ``c_noise`` and the denoiser is ``D = c_skip * noisy + c_out * F``, with

    c_in = 1 / sqrt(sigma^2 + 1),  c_skip = 1 / (sigma^2 + 1),  c_out = -sigma / sqrt(sigma^2 + 1),
    c_noise = 0.25 * ln(sigma),

exactly what diffusers' ``EulerDiscreteScheduler`` (``timestep_type="continuous"``, v-prediction)
applies at inference. The loss is ``(1 + sigma^2) / sigma^2 * ||D - x||^2`` averaged over latents.

Sigmas are drawn log-normally (``ln sigma ~ N(p_mean, p_std)``, SVD fine-tuning's choice, the default)
or from the cosine-interpolated log-SNR schedule of "simple diffusion" (``scheme="cosine"``), equal to
k-diffusion's ``rand_cosine_interpolated`` that the published SurgSora/MOFA ``Training/train_stage1.py``
calls with image_d 64, noise_d_low 32, noise_d_high 64, sigma_data 0.5, sigma_min 0.002, sigma_max 700
(our defaults). With ``u`` uniform on [0, 1] (stratified across the batch, as k-diffusion does) and
``logsnr = -2 ln(sigma / sigma_data)``:

    cosine(u; a, b)   = -2 ln tan(atan(e^(-a/2)) + u * (atan(e^(-b/2)) - atan(e^(-a/2))))
    shifted_d(u)      = cosine(u; L_lo - s_d, L_hi - s_d) + s_d,      s_d = 2 ln(noise_d / image_d)
    logsnr(u)         = (1 - u) * shifted_{noise_d_low}(u) + u * shifted_{noise_d_high}(u)

where ``L_lo = -2 ln(sigma_max / sigma_data)`` and ``L_hi = -2 ln(sigma_min / sigma_data)``: ``u = 0`` is
the high-noise end (sigma_max, the noise_d_low shift) and ``u = 1`` the low-noise end (sigma_min, the
noise_d_high shift). Quantiles with the published arguments: p1 0.0099, p10 0.087, median 0.71,
p90 5.85, p99 58. That sigma_data only shapes the schedule: the preconditioning and loss weight above keep
SVD's sigma_data = 1, as the published training does.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SIGMA_SCHEMES", "check_sigma_args", "sample_sigmas", "preconditioning", "edm_loss",
           "sample_noise_aug"]


SIGMA_SCHEMES = ("lognormal", "cosine")


def _logsnr_cosine(u: torch.Tensor, logsnr_start: float, logsnr_end: float) -> torch.Tensor:
    """Cosine log-SNR schedule running from ``logsnr_start`` (u = 0) to ``logsnr_end`` (u = 1)."""
    a = math.atan(math.exp(-0.5 * logsnr_start))
    b = math.atan(math.exp(-0.5 * logsnr_end))
    return -2 * torch.log(torch.tan(a + u * (b - a)))


def check_sigma_args(scheme: str, sigma_min: float, sigma_max: float, sigma_data: float = 0.5,
                     image_d: float = 64.0, noise_d_low: float = 32.0, noise_d_high: float = 64.0) -> None:
    """Raise ``ValueError`` (one sentence) for settings the samplers cannot use."""
    if scheme not in SIGMA_SCHEMES:
        raise ValueError(f"unknown sigma scheme {scheme!r}; use 'lognormal' or 'cosine'")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"sigma_min {sigma_min} and sigma_max {sigma_max} must satisfy 0 < sigma_min < sigma_max")
    named = {"sigma_data": sigma_data, "image_d": image_d, "noise_d_low": noise_d_low, "noise_d_high": noise_d_high}
    bad = [f"{k} {v}" for k, v in named.items() if not v > 0]
    if scheme == "cosine" and bad:
        raise ValueError(f"the cosine sigma schedule needs positive {', '.join(bad)}")


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
    sigma_data: float = 0.5,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``n`` noise levels (float32) by ``scheme`` ``"lognormal"`` or ``"cosine"`` (see the module docstring)."""
    check_sigma_args(scheme, sigma_min, sigma_max, sigma_data, image_d, noise_d_low, noise_d_high)
    if scheme == "lognormal":
        z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        return torch.exp(p_mean + p_std * z).clamp(sigma_min, sigma_max).float()
    # Stratified: the i-th of n samples draws u from [i/n, (i+1)/n), as k-diffusion's stratified_uniform.
    u = (torch.arange(n, device=device, dtype=torch.float64)
         + torch.rand(n, generator=generator, device=device, dtype=torch.float64)) / n
    logsnr_lo = -2 * math.log(sigma_max / sigma_data)
    logsnr_hi = -2 * math.log(sigma_min / sigma_data)

    def shifted(noise_d: float) -> torch.Tensor:
        shift = 2 * math.log(noise_d / image_d)
        return _logsnr_cosine(u, logsnr_lo - shift, logsnr_hi - shift) + shift

    logsnr = torch.lerp(shifted(noise_d_low), shifted(noise_d_high), u)
    # The clamp only absorbs float rounding at u = 0 and u = 1, where the schedule meets its bounds.
    return (sigma_data * torch.exp(-0.5 * logsnr)).clamp(sigma_min, sigma_max).float()


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
