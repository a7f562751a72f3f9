"""DSM losses against their closed-form minimum for Gaussian data (the irreducible part)."""

import math

import pytest
import torch
from scipy.integrate import quad

from scoresde import VESDE, VPSDE, GaussianMixture
from scoresde.training.losses import ddpm_loss, dsm_loss, smld_loss

DIM, MEAN, VAR, N = 3, 0.4, 0.5, 40_000


def _gaussian():
    return GaussianMixture(
        torch.ones(1, dtype=torch.float64),
        torch.full((1, DIM), MEAN, dtype=torch.float64),
        VAR * torch.eye(DIM, dtype=torch.float64)[None],
    )


def _minimum_integrand(sde, weighting, t):
    r"""E over x0, eps of the per-sample loss at the exact score for data N(m, v I):
    E||sigma s + eps||^2 = D - sigma^2 E||s||^2 = D alpha^2 v / (alpha^2 v + sigma^2)."""
    tt = torch.tensor([t], dtype=torch.float64)
    a2, s2 = float(sde.alpha(tt)) ** 2, float(sde.sigma(tt)) ** 2
    residual = DIM * a2 * VAR / (a2 * VAR + s2)
    if weighting == "sigma2":
        return 0.5 * residual
    if weighting == "eps":
        return residual / DIM
    g2 = float(sde.sde(torch.ones(1, 1, dtype=torch.float64), tt)[1]) ** 2
    return 0.5 * g2 / s2 * residual


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize(
    "weighting, importance", [("sigma2", False), ("likelihood", False), ("likelihood", True), ("eps", False)]
)
def test_dsm_loss_at_the_exact_score_is_its_analytic_minimum_and_a_worse_score_costs_more(sde, weighting, importance):
    """Mean loss over 40k draws within 4 standard errors of E_t[minimum(t)] (t uniform on [eps, T],
    by quadrature); scaling the score by 0.9 raises the loss by more than 4 standard errors of the
    paired difference."""
    mix = _gaussian()
    x0 = mix.sample(N, torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = mix.score_fn(sde)
    eps = sde.sampling_t_min
    expected = quad(lambda t: _minimum_integrand(sde, weighting, t), eps, sde.T, limit=200, points=[0.01, 0.1])[0] / (
        sde.T - eps
    )
    losses = dsm_loss(
        exact, sde, x0, weighting=weighting, importance_sampling=importance, generator=torch.Generator().manual_seed(1)
    )
    se = float(losses.std()) / math.sqrt(N)
    assert abs(float(losses.mean()) - expected) < 4 * se, (float(losses.mean()), expected, se)
    worse = dsm_loss(
        lambda x, t: 0.9 * exact(x, t),
        sde,
        x0,
        weighting=weighting,
        importance_sampling=importance,
        generator=torch.Generator().manual_seed(1),
    )
    d = worse - losses
    assert float(d.mean()) > 4 * float(d.std()) / math.sqrt(N)


def test_importance_sampling_cuts_the_variance_of_the_likelihood_weighted_loss():
    sde, mix = VPSDE(), _gaussian()
    x0 = mix.sample(N, torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = dsm_loss(mix.score_fn(sde), sde, x0, weighting="likelihood", generator=torch.Generator().manual_seed(1))
    weighted = dsm_loss(
        mix.score_fn(sde),
        sde,
        x0,
        weighting="likelihood",
        importance_sampling=True,
        generator=torch.Generator().manual_seed(1),
    )
    assert float(weighted.var()) < 0.2 * float(plain.var())


@pytest.mark.parametrize("loss, sde", [(ddpm_loss, VPSDE()), (smld_loss, VESDE())], ids=["ddpm", "smld"])
def test_discrete_losses_average_the_minimum_over_the_chain(loss, sde):
    """On the N-step chain the expectation is the mean of the minimum over the N times."""
    mix, n_steps = _gaussian(), 10
    x0 = mix.sample(N, torch.Generator().manual_seed(0), dtype=torch.float64)
    values = loss(mix.score_fn(sde), sde, x0, n_steps=n_steps, generator=torch.Generator().manual_seed(1))
    eps = sde.sampling_t_min
    times = [eps + (sde.T - eps) * i / (n_steps - 1) for i in range(n_steps)]
    weighting = "eps" if loss is ddpm_loss else "sigma2"
    expected = sum(_minimum_integrand(sde, weighting, t) for t in times) / n_steps
    assert abs(float(values.mean()) - expected) < 4 * float(values.std()) / math.sqrt(N)


def test_bad_input():
    sde, mix = VPSDE(), _gaussian()
    with pytest.raises(ValueError, match="unknown weighting 'snr'; valid names are: eps, likelihood, sigma2"):
        dsm_loss(mix.score_fn(sde), sde, torch.zeros(4, DIM), weighting="snr")
    with pytest.raises(ValueError, match="importance_sampling applies to the continuous 'likelihood' weighting only"):
        dsm_loss(mix.score_fn(sde), sde, torch.zeros(4, DIM), importance_sampling=True)
    with pytest.raises(ValueError, match="x0 holds 12 non-finite value"):
        dsm_loss(mix.score_fn(sde), sde, torch.full((4, DIM), float("nan")))
    with pytest.raises(ValueError, match="x0 must be a floating-point tensor"):
        dsm_loss(mix.score_fn(sde), sde, torch.zeros(4))
