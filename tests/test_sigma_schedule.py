"""The "cosine" training sigmas equal k-diffusion's rand_cosine_interpolated with the published arguments.

The reference below is written independently of train/objective.py: directly in sigma space (no log-SNR),
in numpy float64. For one cosine-shifted schedule with resolution ratio r = noise_d / image_d,

    sigma_r(u) = sigma_data / r * tan(atan(r * sigma_max / sigma_data)
                                      + u * (atan(r * sigma_min / sigma_data) - atan(r * sigma_max / sigma_data)))

and the interpolated schedule is the geometric blend sigma_low(u)^(1-u) * sigma_high(u)^u (a linear blend of
log-SNR). It decreases strictly in u, so its quantile q is sigma(1 - q) (inverse CDF).
"""

import numpy as np
import pytest
import torch

from train.objective import sample_sigmas

PUBLISHED = dict(image_d=64.0, noise_d_low=32.0, noise_d_high=64.0, sigma_data=0.5, sigma_min=0.002, sigma_max=700.0)
QS = np.array([0.01, 0.1, 0.5, 0.9, 0.99])
TOL = np.array([0.02, 0.01, 0.01, 0.01, 0.02])  # relative; the 1% / 99% tails are sparser


def reference_sigma(u, image_d, noise_d_low, noise_d_high, sigma_data, sigma_min, sigma_max):
    u = np.asarray(u, dtype=np.float64)

    def one(noise_d):
        r = noise_d / image_d
        top, bottom = np.arctan(r * sigma_max / sigma_data), np.arctan(r * sigma_min / sigma_data)
        return sigma_data / r * np.tan(top + u * (bottom - top))

    return one(noise_d_low) ** (1 - u) * one(noise_d_high) ** u


@pytest.mark.parametrize("args", [PUBLISHED, dict(PUBLISHED, image_d=32.0, noise_d_low=16.0, noise_d_high=128.0,
                                                  sigma_data=1.0, sigma_min=0.01, sigma_max=100.0)])
def test_cosine_quantiles_match_an_independent_reference(args):
    grid = reference_sigma(np.linspace(0, 1, 200_001), **args)
    assert np.all(np.diff(grid) < 0)  # strictly decreasing: the inverse-CDF quantiles below are exact
    assert grid[0] == pytest.approx(args["sigma_max"]) and grid[-1] == pytest.approx(args["sigma_min"])
    exact = reference_sigma(1 - QS, **args)
    monte_carlo = np.quantile(reference_sigma(np.random.default_rng(0).random(2_000_000), **args), QS)

    ours = sample_sigmas(2_000_000, torch.Generator().manual_seed(0), "cosine", **args).double()
    assert ours.min() >= args["sigma_min"] and ours.max() <= args["sigma_max"]
    ours_q = torch.quantile(ours, torch.tensor(QS)).numpy()
    print(f"quantiles {QS.tolist()}: ours {ours_q.round(5).tolist()}, reference {exact.round(5).tolist()}, "
          f"reference Monte Carlo {monte_carlo.round(5).tolist()}")
    assert np.all(np.abs(ours_q / exact - 1) < TOL), (ours_q, exact)
    assert np.all(np.abs(monte_carlo / exact - 1) < TOL), (monte_carlo, exact)


def test_published_schedule_quantiles():
    # Published (SurgSora / MOFA Training/train_stage1.py): p1 0.0099, p10 0.087, median 0.71, p99 58.
    sigmas = sample_sigmas(2_000_000, torch.Generator().manual_seed(1), "cosine").double()  # defaults = published
    p1, p10, p50, p99 = torch.quantile(sigmas, torch.tensor([0.01, 0.1, 0.5, 0.99], dtype=torch.float64)).tolist()
    assert p1 == pytest.approx(0.0099, rel=0.015)
    assert p10 == pytest.approx(0.087, rel=0.015)
    assert p50 == pytest.approx(0.71, rel=0.015)
    assert p99 == pytest.approx(58, rel=0.015)


def test_cosine_batches_are_stratified_and_single_draws_uniform():
    g = torch.Generator().manual_seed(2)
    median = float(reference_sigma(0.5, **PUBLISHED))
    # As k-diffusion: sample i of a batch of n draws u from [i/n, (i+1)/n), so the first is the noisiest.
    pairs = torch.stack([sample_sigmas(2, g, "cosine") for _ in range(200)])
    assert (pairs[:, 0] >= median).all() and (pairs[:, 1] <= median).all()
    # A batch of one is a plain uniform draw: the share below the reference p10 / median is binomial.
    singles = torch.cat([sample_sigmas(1, g, "cosine") for _ in range(4000)]).double().numpy()
    assert abs((singles < median).mean() - 0.5) < 0.03
    assert abs((singles < reference_sigma(0.9, **PUBLISHED)).mean() - 0.1) < 0.02


def test_bad_schedule_arguments_are_one_clear_sentence():
    with pytest.raises(ValueError, match="unknown sigma scheme 'cos'"):
        sample_sigmas(4, scheme="cos")
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        sample_sigmas(4, scheme="cosine", sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="positive noise_d_low 0"):
        sample_sigmas(4, scheme="cosine", noise_d_low=0)
