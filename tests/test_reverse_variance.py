"""The reverse chain's variance against the oracle: Gamma_t by quadrature, Tweedie's identity, the optimum's bound
ordering, and Gaussian data, for which the analytic variance makes every reverse step exact."""

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, GaussianMixture, ddpm_bound, sample, toy_dataset
from scoresde.analytic import grid_cells
from scoresde.reverse_variance import VARIANCES, ScoreMoments, chain_step, reverse_variance, score_moments

MIX = toy_dataset("gmm").mixture
SDES = {"vp": VPSDE, "ve": lambda: VESDE(sigma_min=0.01, sigma_max=10.0)}


def _gamma_by_quadrature(mix: GaussianMixture, sde, t: float, points: int = 600) -> float:
    r"""$\Gamma_t = \int p_t \|\nabla\log p_t\|^2 dx / d$ by the midpoint rule on a box 10 marginal stds wide."""
    tt = torch.tensor(t, dtype=torch.float64)
    marginal = mix.marginal(sde, tt)
    spread = 10 * float(torch.linalg.eigvalsh(marginal.covs).max().sqrt())
    lo = (marginal.means.min(0).values - spread).tolist()
    hi = (marginal.means.max(0).values + spread).tolist()
    cells, volume = grid_cells(lo, hi, points)
    p = torch.exp(marginal.log_prob(cells))
    return float((p * marginal.score(cells).pow(2).sum(1)).sum() * volume / 2)


@pytest.mark.parametrize("sde_name", SDES)
def test_score_moments_agree_with_quadrature_within_their_standard_error(sde_name):
    sde = SDES[sde_name]()
    data = MIX.sample(4000, torch.Generator().manual_seed(0), dtype=torch.float64)
    times = torch.tensor([0.01, 0.1, 0.5], dtype=torch.float64)
    moments = score_moments(sde, MIX.score_fn(sde), data, times, generator=torch.Generator().manual_seed(1))
    for t, gamma, se in zip(times.tolist(), moments.gamma.tolist(), moments.standard_error.tolist()):
        exact = _gamma_by_quadrature(MIX, sde, t)
        assert abs(gamma - exact) < 4 * se, (t, gamma, exact, se)


def test_tweedie_second_order_identity_behind_the_analytic_variance():
    """E|x0 - E[x0|x_t]|^2 / d = sigma^2 (1 - sigma^2 Gamma_t) / alpha^2, by Monte Carlo with the exact posterior
    mean against Gamma_t from quadrature (4 standard errors)."""
    sde = VPSDE()
    x0 = MIX.sample(20000, torch.Generator().manual_seed(2), dtype=torch.float64)
    for t in (0.02, 0.2):
        tt = torch.full((len(x0),), t, dtype=torch.float64)
        alpha, sigma = sde.alpha(tt)[:, None], sde.sigma(tt)[:, None]
        x_t = sde.perturb(x0, tt, torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=x0.dtype))
        err = ((x0 - (x_t + sigma**2 * MIX.marginal_score(sde, x_t, tt)) / alpha) ** 2).sum(1) / 2
        predicted = float(sigma[0] ** 2 * (1 - sigma[0] ** 2 * _gamma_by_quadrature(MIX, sde, t)) / alpha[0] ** 2)
        assert abs(float(err.mean()) - predicted) < 4 * float(err.std()) / math.sqrt(len(err)), t


@pytest.mark.parametrize("n_steps", [10, 25, 100, 1000])
def test_the_analytic_variance_gives_the_smallest_bound(n_steps):
    """On the same draws (common random numbers) the DDPM bound with the optimal variance is no larger than with
    either fixed choice: the optimum minimises each step's expected KL, and the spread of the mean's error over 200
    points (and of Gamma_t over 500) moves the empirical optimum by far less than the gap."""
    sde = VPSDE()
    score = MIX.score_fn(sde)
    x = MIX.sample(200, torch.Generator().manual_seed(4), dtype=torch.float64)
    data = MIX.sample(500, torch.Generator().manual_seed(5), dtype=torch.float64)
    from scoresde.samplers.grids import time_grid

    moments = score_moments(sde, score, data, time_grid(sde, n_steps, "uniform", 1e-5))
    bounds = {
        v: float(
            ddpm_bound(
                sde, score, x, n_steps=n_steps, variance=v, moments=moments, generator=torch.Generator().manual_seed(6)
            ).bound.mean()
        )  # fmt: skip
        for v in VARIANCES
    }
    assert bounds["analytic"] <= min(bounds["beta"], bounds["beta_tilde"]), bounds


def _gaussian(std: float) -> GaussianMixture:
    return GaussianMixture([1.0], [[0.0, 0.0]], [[std**2, std**2]])


@pytest.mark.parametrize("sde_name", SDES)
def test_for_gaussian_data_the_analytic_variance_makes_the_chain_exact(sde_name):
    """Gaussian data N(0, 0.5^2 I): every reverse transition is Gaussian with variance beta_tilde + a^2 Var(x0|x_t),
    exactly the analytic choice, so 10 ancestral steps sample the data's variance (20,000 samples: within 4 standard
    errors of a variance) and the 10-step bound equals the exact NLL (within 4 standard errors), where both fixed
    choices miss by far more."""
    sde, mix = SDES[sde_name](), _gaussian(0.5)
    score = mix.score_fn(sde)
    data = mix.sample(20000, torch.Generator().manual_seed(7), dtype=torch.float64)
    from scoresde.samplers.grids import time_grid

    grid = time_grid(sde, 10, "uniform")
    moments = score_moments(sde, score, data, grid, generator=torch.Generator().manual_seed(8))
    se_var = 0.25 * math.sqrt(2 / (2 * len(data)))
    variances = {}
    for choice in VARIANCES:
        x = sample(sde, score, (20000, 2), "ddpm", steps=10, variance=choice, moments=moments, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(9), denoise=False).x  # fmt: skip
        variances[choice] = float(x.var(0).mean())
    data_var = 0.25 + float(sde.sigma(grid[-1]) ** 2)  # samples stop at t_min, not denoised
    assert abs(variances["analytic"] - data_var) < 4 * se_var, variances
    assert abs(variances["beta_tilde"] - data_var) > 10 * se_var and abs(variances["beta"] - data_var) > 10 * se_var
    x = mix.sample(2000, torch.Generator().manual_seed(10), dtype=torch.float64)
    true_nll = -mix.marginal_log_prob(sde, x, torch.full((2000,), 1e-5, dtype=torch.float64))
    grid_bound = time_grid(sde, 10, "uniform", 1e-5)
    moments = score_moments(sde, score, data, grid_bound, generator=torch.Generator().manual_seed(11))
    gaps = {}
    for choice in VARIANCES:
        bound = ddpm_bound(sde, score, x, n_steps=10, variance=choice, moments=moments,
                           generator=torch.Generator().manual_seed(12)).bound  # fmt: skip
        gap = bound - true_nll
        gaps[choice] = (float(gap.mean()), float(gap.std()) / math.sqrt(len(gap)))
    mean, se = gaps["analytic"]
    assert abs(mean) < 4 * se + 1e-3, gaps
    assert gaps["beta_tilde"][0] > mean + 0.2 and gaps["beta"][0] > mean + 0.05, gaps  # measured +0.42, +0.19


def test_chain_coefficients_and_the_fixed_choices():
    """VP: beta = 1 - alpha_t^2/alpha_s^2, beta_tilde = beta (1 - alpha_s^2)/(1 - alpha_t^2); the decoder (s = t0)
    has beta_tilde = 0 and both fixed choices fall back to beta_1; analytic lies between its clipping bounds."""
    sde = VPSDE()
    t, s = torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.4], dtype=torch.float64)
    step = chain_step(sde, t, s)
    a2t, a2s = sde.alpha(t) ** 2, sde.alpha(s) ** 2
    assert torch.allclose(step.beta, 1 - a2t / a2s) and torch.allclose(
        step.beta_tilde, step.beta * (1 - a2s) / (1 - a2t)
    )
    decoder = chain_step(sde, t, s, t0=s)
    assert float(decoder.beta_tilde) == 0 and torch.equal(reverse_variance("beta_tilde", decoder), decoder.beta)
    for gamma in (0.0, 0.5, 100.0):
        var = reverse_variance("analytic", step, gamma=torch.tensor([gamma], dtype=torch.float64))
        assert step.beta_tilde <= var <= step.beta_tilde + step.a**2 * step.noise_ratio
    tight = reverse_variance("analytic", step, gamma=torch.zeros(1, dtype=torch.float64), data_range=(-0.01, 0.01))
    assert torch.allclose(tight, step.beta_tilde + step.a**2 * 0.01**2)


def test_moments_interpolate_and_round_trip(tmp_path):
    sde = VPSDE()
    table = ScoreMoments(torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64), torch.tensor([4.0, 2.0, 1.0]).double(),
                         torch.zeros(3, dtype=torch.float64), 10)  # fmt: skip
    assert torch.allclose(table.at(sde, torch.tensor([0.1, 0.5, 1.0])), torch.tensor([4.0, 2.0, 1.0]))
    mid = float(table.at(sde, torch.tensor([0.3])))
    assert 2.0 < mid < 4.0
    table.save(tmp_path / "m.safetensors")
    back = ScoreMoments.load(tmp_path / "m.safetensors")
    assert torch.equal(back.gamma, table.gamma) and back.n == 10


def test_bad_variance_choices_raise_clear_errors():
    sde, x = VPSDE(), MIX.sample(4, torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="analytic, beta, beta_tilde"):
        ddpm_bound(sde, MIX.score_fn(sde), x, n_steps=10, variance="learned")
    with pytest.raises(ValueError, match="needs moments"):
        ddpm_bound(sde, MIX.score_fn(sde), x, n_steps=10, variance="analytic")
    with pytest.raises(ValueError, match="needs moments"):
        sample(sde, MIX.score_fn(sde), (4, 2), "ddpm", steps=5, variance="analytic")
