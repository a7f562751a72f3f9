"""Sample-quality metrics against brute force and closed forms."""

import math

import pytest
import torch
from scipy.stats import norm, wasserstein_distance

from scoresde import energy_distance, mmd
from scoresde._stats import sliced_energy_distance
from scoresde.evaluation import sliced_wasserstein


def _brute_energy(x, y):
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def test_energy_distance_matches_brute_force_across_blocks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2500, 3, generator=g, dtype=torch.float64)  # more rows than one block of 2048
    y = torch.randn(1700, 3, generator=g, dtype=torch.float64) + 0.1
    assert energy_distance(x, y) == pytest.approx(_brute_energy(x, y), rel=1e-10)
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x), rel=1e-10)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)


def test_energy_distance_converges_to_its_closed_form_for_shifted_gaussians():
    r"""1D: E = 2E|X - Y| - 2E|X - X'| with X - Y ~ N(-d, 2), X - X' ~ N(0, 2) and
    E|N(m, s^2)| = s sqrt(2/pi) exp(-m^2 / 2s^2) + m (1 - 2 Phi(-m/s)).

    The mean of 8 independent estimates (n = 3000) must lie within 4 of its standard errors (estimated
    from the 8) plus the V-statistic's bias (E|X-X'| + E|Y-Y'|)/n."""
    d, n, reps = 1.0, 3000, 8
    s = math.sqrt(2.0)
    abs_mean = lambda m: s * math.sqrt(2 / math.pi) * math.exp(-(m**2) / (2 * s**2)) + m * (1 - 2 * norm.cdf(-m / s))  # noqa: E731
    truth = 2 * abs_mean(d) - 2 * abs_mean(0.0)
    g = torch.Generator().manual_seed(1)
    estimates = torch.tensor(
        [
            energy_distance(
                torch.randn(n, 1, generator=g, dtype=torch.float64),
                torch.randn(n, 1, generator=g, dtype=torch.float64) + d,
            )
            for _ in range(reps)
        ]
    )
    bias = 2 * abs_mean(0.0) / n
    se = float(estimates.std()) / math.sqrt(reps)
    assert abs(float(estimates.mean()) - truth) < 4 * se + bias, (float(estimates.mean()), truth, se)
    assert se < 0.02  # the check is sharp enough to catch a wrong formula (e.g. a missing factor 2)


def test_mmd_matches_brute_force_and_its_unbiased_form():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 2, generator=g, dtype=torch.float64)
    y = torch.randn(200, 2, generator=g, dtype=torch.float64) * 1.2
    h = [0.5, 1.0, 2.0]
    k = lambda a, b: sum(torch.exp(-(torch.cdist(a, b) ** 2) / (2 * v**2)) for v in h)  # noqa: E731
    biased = float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    assert mmd(x, y, h) == pytest.approx(biased, rel=1e-10)
    kxx, kyy = k(x, x), k(y, y)
    unbiased = float(
        (kxx.sum() - kxx.trace()) / (300 * 299) + (kyy.sum() - kyy.trace()) / (200 * 199) - 2 * k(x, y).mean()
    )
    assert mmd(x, y, h, unbiased=True) == pytest.approx(unbiased, rel=1e-10)
    assert mmd(x, y) > 0 and mmd(x, x) == pytest.approx(0.0, abs=1e-12)


def test_sliced_wasserstein_in_1d_is_the_wasserstein_distance():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 1, generator=g, dtype=torch.float64)
    y = 1.5 * torch.randn(4000, 1, generator=g, dtype=torch.float64) + 0.3
    # in 1D every direction is +-1, so SW_1 = W_1 exactly (equal sample sizes: sorted differences)
    assert sliced_wasserstein(x, y, p=1) == pytest.approx(
        wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy()), rel=1e-10
    )
    # W_2 between N(0,1) and N(0.3, 1.5^2) is sqrt(0.3^2 + 0.5^2); MC error ~ 2e-2 at n = 4000
    assert sliced_wasserstein(x, y) == pytest.approx(math.sqrt(0.09 + 0.25), abs=3e-2)
    assert sliced_wasserstein(x, y[:1000]) == pytest.approx(sliced_wasserstein(x, y), abs=5e-2)


def test_sliced_energy_distance_is_exact_in_1d_and_unbiased_over_directions():
    """In 1-D the sorted-sample form 2 int (F - G)^2 is the V-statistic itself; in 3-D the mean over directions, times
    C_3 = 2, is the energy distance: 8 independent sets of 400 directions agree with it within 4 standard errors."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(700, 1, generator=g, dtype=torch.float64), torch.randn(400, 1, generator=g, dtype=torch.float64)
    y = 1.3 * y + 0.2
    exact = float(2 * (x - y.T).abs().mean() - (x - x.T).abs().mean() - (y - y.T).abs().mean())
    assert sliced_energy_distance(x, y) == pytest.approx(exact, rel=1e-10)
    x, y = torch.randn(900, 3, generator=g, dtype=torch.float64), torch.randn(800, 3, generator=g, dtype=torch.float64)
    y = y * torch.tensor([1.5, 1.0, 0.7], dtype=torch.float64) + 0.2
    exact = _brute_energy(x, y)
    sliced = torch.tensor(
        [sliced_energy_distance(x, y, 400, generator=torch.Generator().manual_seed(k)) for k in range(8)]
    )
    se = float(sliced.std()) / math.sqrt(8)
    assert abs(float(sliced.mean()) - exact) < 4 * se and se < 0.05 * exact, (float(sliced.mean()), exact, se)
    assert sliced_energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)


def test_metrics_reject_bad_input():
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="same number of values per sample"):
        energy_distance(x, torch.zeros(10, 3))
    with pytest.raises(ValueError, match="non-finite"):
        mmd(x, torch.full((4, 2), float("nan")))
    with pytest.raises(ValueError, match="bandwidths must be positive"):
        mmd(x, x + 1, [0.0])
    with pytest.raises(ValueError, match="n_projections must be an integer >= 1"):
        sliced_wasserstein(x, x, n_projections=0)


def test_energy_distance_floor_is_the_true_vs_true_expectation():
    """For N(0, 1) in 1-D, E|X - X'| = 2/sqrt(pi): the floor (1/n + 1/m) E|X - X'| is estimated within 4 standard
    errors, and 1,000 measured true-vs-true energy distances (n = 50, m = 80) average to it within 4 of theirs."""
    from scoresde.evaluation.metrics import energy_distance_floor

    def draw(k, generator):
        return torch.randn(k, 1, generator=generator, dtype=torch.float64)

    exact = (1 / 50 + 1 / 80) * 2 / math.sqrt(math.pi)
    value, se = energy_distance_floor(draw, 50, 80, pairs=200_000, generator=torch.Generator().manual_seed(0))
    assert abs(value - exact) < 4 * se
    g = torch.Generator().manual_seed(1)
    measured = torch.tensor([energy_distance(draw(50, g), draw(80, g)) for _ in range(1000)], dtype=torch.float64)
    assert abs(float(measured.mean()) - exact) < 4 * float(measured.std()) / math.sqrt(1000)
