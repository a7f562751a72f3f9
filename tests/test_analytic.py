"""The Gaussian-mixture oracle against independent truths: autograd, scipy, Monte Carlo and moments."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from scoresde import VPSDE, GaussianMixture


def _random_mixture(D, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    covs = A @ A.transpose(-1, -2) + 0.02 * torch.eye(D, dtype=torch.float64)
    means = torch.randn(K, D, generator=g, dtype=torch.float64) * 2
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.1
    return GaussianMixture(w / w.sum(), means, covs)


def test_log_prob_matches_scipy():
    mix = _random_mixture(3, seed=1)
    x = torch.randn(50, 3, dtype=torch.float64) * 2
    ref = np.log(
        sum(
            float(w) * multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
            for w, m, c in zip(mix.weights, mix.means, mix.covs)
        )
    )
    assert np.allclose(mix.log_prob(x).numpy(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("D", [2, 10, 100])
def test_score_fn_equals_autograd_of_marginal_log_prob(sde, D):
    """Test 3 of the issue: exact score = grad of marginal(sde, t).log_prob, float64, 1e-8 relative."""
    mix = _random_mixture(D, seed=D)
    score_fn = mix.score_fn(sde)
    g = torch.Generator().manual_seed(7)
    for frac in (0.0, 0.01, 0.3, 1.0):
        t = frac * sde.T
        marginal = mix.marginal(sde, t)
        x = marginal.sample(16, g, dtype=torch.float64).requires_grad_(True)
        (grad,) = torch.autograd.grad(marginal.log_prob(x).sum(), x)
        s = score_fn(x.detach(), torch.full((16,), t, dtype=torch.float64))
        assert ((s - grad).norm(dim=1) / grad.norm(dim=1).clamp(min=1e-12)).max() < 1e-8, (t, D)


def test_score_is_finite_and_exact_far_in_the_tails():
    """Far from every component the naive ratio of densities is 0/0; log-sum-exp keeps the exact answer.

    At x = m + 1e3 u in D = 100, every density underflows; the score still equals the score of the
    component with the largest responsibility to round-off, which we compute directly."""
    D = 100
    mix = _random_mixture(D, K=3, seed=3)
    sde = VPSDE()
    x = mix.means[0] + 1e3 * torch.ones(D, dtype=torch.float64) / math.sqrt(D)
    x = x[None]
    t = torch.full((1,), 0.05, dtype=torch.float64)
    s = mix.marginal_score(sde, x, t)
    assert torch.isfinite(s).all()
    assert bool(torch.isfinite(mix.marginal_log_prob(sde, x, t)).all())
    a, sig = sde.alpha(t), sde.sigma(t)
    logits, scores = [], []
    for w, m, c in zip(mix.weights, mix.means, mix.covs):
        C = a**2 * c + sig**2 * torch.eye(D, dtype=torch.float64)
        dist = torch.distributions.MultivariateNormal(a * m, C)
        logits.append(torch.log(w) + dist.log_prob(x))
        scores.append(-torch.linalg.solve(C, (x - a * m).T).T)
    resp = torch.softmax(torch.cat(logits), 0)
    ref = sum(r * sc for r, sc in zip(resp, scores))
    assert torch.allclose(s, ref, rtol=1e-9)


def test_float32_score_is_close_to_float64(sde):
    mix = _random_mixture(5, seed=2)
    x = torch.randn(64, 5, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64) * sde.T * 0.98 + 0.01 * sde.T
    s64 = mix.marginal_score(sde, x, t)
    s32 = mix.marginal_score(sde, x.float(), t.float())
    assert s32.dtype == torch.float32
    assert ((s32.double() - s64).norm(dim=1) / s64.norm(dim=1).clamp(min=1)).max() < 1e-3


def test_sample_moments_match_the_mixture(gen):
    mix = _random_mixture(3, seed=4)
    n = 200_000
    x = mix.sample(n, gen, dtype=torch.float64)
    cov = mix.covariance()
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert ((x.mean(0) - mix.mean()).abs() < 4 * se).all()
    # variance of a sample variance: (m4 - var^2)/n, bounded here by 3 var^2 (mixtures have heavier tails: use 5)
    emp_cov = torch.cov(x.T)
    se_var = torch.sqrt(5 * torch.diagonal(cov) ** 2 / n)
    assert ((torch.diagonal(emp_cov) - torch.diagonal(cov)).abs() < 4 * se_var).all()


def test_marginal_moments_agree_with_the_perturbation_kernel(sde, gen):
    mix = _random_mixture(2, seed=5)
    t = 0.4 * sde.T
    x0 = mix.sample(100_000, gen, dtype=torch.float64)
    mean, std = sde.marginal_prob(x0, torch.full((x0.shape[0],), t, dtype=torch.float64))
    xt = mean + std[:, None] * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    marginal = mix.marginal(sde, t)
    se = torch.sqrt(torch.diagonal(marginal.covariance()) / x0.shape[0])
    assert ((xt.mean(0) - marginal.mean()).abs() < 4 * se).all()
    # mean of log p_t over its own samples = -entropy: compare the MC mean against a quadrature entropy
    logp = marginal.log_prob(xt)
    assert abs(float(-logp.mean()) - marginal.entropy()) < 4 * float(logp.std()) / math.sqrt(len(logp))


def test_same_generator_seed_same_samples():
    mix = _random_mixture(2)
    a = mix.sample(10, torch.Generator().manual_seed(3))
    b = mix.sample(10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weights": [0.5, 0.6], "means": [[0.0], [1.0]], "covs": [[1.0], [1.0]]}, "weights must sum to 1"),
        ({"weights": [1.5, -0.5], "means": [[0.0], [1.0]], "covs": [[1.0], [1.0]]}, "weights must be > 0"),
        (
            {"weights": [1.0], "means": [[0.0, 0.0]], "covs": [[[1.0, 2.0], [2.0, 1.0]]]},
            "covs\\[0\\] must be positive definite",
        ),
        (
            {"weights": [1.0], "means": [[0.0, 0.0]], "covs": [[[1.0, 0.5], [0.0, 1.0]]]},
            "covs\\[0\\] must be symmetric",
        ),
        ({"weights": [0.5, 0.5], "means": [[0.0, 0.0]], "covs": [[1.0, 1.0]]}, "means must have shape"),
        ({"weights": [1.0], "means": [[0.0, 0.0]], "covs": [[1.0, 1.0, 1.0]]}, "covs must have shape"),
        ({"weights": [1.0], "means": [[float("nan"), 0.0]], "covs": [[1.0, 1.0]]}, "means holds 1 non-finite"),
    ],
)
def test_bad_mixtures_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(**kwargs)


def test_bad_points_raise_clear_errors():
    mix = _random_mixture(2)
    sde = VPSDE()
    with pytest.raises(ValueError, match="2 values per sample"):
        mix.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="non-finite"):
        mix.log_prob(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="t must lie in"):
        mix.marginal_score(sde, torch.zeros(2, 2), torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"t must have shape \[B\] = \[2\] to match x, got \(3,\)"):
        mix.marginal_score(sde, torch.zeros(2, 2), torch.tensor([0.5, 0.5, 0.5]))
