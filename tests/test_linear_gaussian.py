"""The linear-Gaussian autoencoder oracle (the ground truth of latent score models): its latent law, its decoded
samples and its likelihood bound in closed form, checked by Monte Carlo, by the samplers and by the PF-ODE."""

import math

import pytest
import torch

from scoresde.likelihood.pf_ode import log_likelihood
from scoresde.oracles.gaussian_mixture import GaussianMixture
from scoresde.oracles.linear_gaussian import LinearGaussianAutoencoder
from scoresde.processes import create_sde
from scoresde.samplers.sampling import sample


def _covariance(D: int, seed: int, eigenvalues=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64) if eigenvalues is not None else torch.rand(
        D, generator=g, dtype=torch.float64) * 2 + 0.05  # fmt: skip
    return Q @ torch.diag(lam) @ Q.T


@pytest.fixture(scope="module")
def autoencoder():
    return LinearGaussianAutoencoder(_covariance(6, 0), k=3, encoder_std=0.3, decoder_std=0.2)


def test_bound_terms_are_their_monte_carlo_means(autoencoder):
    """Each term's closed form within 4 standard errors of its mean over 20,000 (x, z ~ q(z|x)) draws."""
    g = torch.Generator().manual_seed(1)
    x = autoencoder.data.sample(20_000, g, dtype=torch.float64)
    z = autoencoder.encode(x, g)
    draws = {
        "prior": -autoencoder.latent.log_prob(z),
        "encoder": autoencoder.encoder_log_prob(z, x),
        "reconstruction": -autoencoder.decoder_log_prob(x, z),
    }
    terms = autoencoder.bound_terms()
    for name, values in draws.items():
        standard_error = float(values.std()) / math.sqrt(len(values))
        assert abs(float(values.mean()) - terms[name]) < 4 * standard_error + 1e-12, (name, terms[name])
    total = sum(draws.values())
    assert abs(float(total.mean()) - terms["bound"]) < 4 * float(total.std()) / math.sqrt(len(total))
    entropy = -autoencoder.data.log_prob(x)
    assert abs(float(entropy.mean()) - terms["data_entropy"]) < 4 * float(entropy.std()) / math.sqrt(len(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_bound_is_above_the_datas_entropy_and_meets_it_in_the_ppca_limit(seed):
    D, k = 5, 2
    for s_e, s_d in ((0.1, 0.1), (0.5, 0.2), (0.05, 1.0)):
        terms = LinearGaussianAutoencoder(_covariance(D, seed), k, s_e, s_d).bound_terms()
        assert terms["bound"] > terms["data_entropy"]
    # probabilistic PCA: discarded eigenvalues = encoder noise = decoder noise = s^2; the gap is
    # 1/2 sum_{i<=k} log(1 + s^2 / lambda_i), which vanishes with s
    gaps = []
    for s in (0.3, 0.03, 0.003):
        lam = [2.0, 0.7] + [s**2] * (D - k)
        terms = LinearGaussianAutoencoder(_covariance(D, seed, lam), k, s, s).bound_terms()
        expected = 0.5 * sum(math.log(1 + s**2 / v) for v in lam[:k])
        gaps.append(terms["bound"] - terms["data_entropy"])
        assert gaps[-1] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-5


def test_a_wrong_prior_costs_its_kl(autoencoder):
    """The bound with a latent model p(z) other than q(z) grows by KL(q(z) || p(z)), closed form."""
    P = torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    m = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    wrong = GaussianMixture([1.0], m[None], P[None])
    Pq = autoencoder.latent.covs[0]
    kl = 0.5 * (torch.trace(torch.linalg.solve(P, Pq)) + m @ torch.linalg.solve(P, m) - 3 + torch.logdet(P)
                - torch.logdet(Pq))  # fmt: skip
    gap = autoencoder.bound_terms(wrong)["bound"] - autoencoder.bound_terms()["bound"]
    assert gap == pytest.approx(float(kl), rel=1e-10)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_latent_samples_with_the_exact_latent_score_decode_to_the_closed_form(autoencoder, sde_name):
    """Sampling the latents with their exact score (DPM-Solver, 20 steps) and decoding gives the closed-form
    decoded law: its mean within 4 standard errors, its covariance within 4 standard errors entry by entry."""
    sde = create_sde(sde_name)
    n = 4000
    g = torch.Generator().manual_seed(2)
    z = sample(sde, autoencoder.latent.score_fn(sde), (n, autoencoder.k), "dpm_solver", steps=20, generator=g,
               dtype=torch.float64).x  # fmt: skip
    x = autoencoder.decode(z, g)
    law = autoencoder.decoded(autoencoder.latent)
    cov = law.covariance()
    assert torch.all((x.mean(0) - law.mean()).abs() < 4 * torch.sqrt(torch.diagonal(cov) / n))
    # the standard error of a sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n)
    se = torch.sqrt((torch.outer(torch.diagonal(cov), torch.diagonal(cov)) + cov**2) / n)
    assert torch.all((torch.cov(x.T) - cov).abs() < 4 * se)
    # and the exact latents decode to the data's covariance less the discarded directions, plus the noises
    expected = autoencoder.W @ torch.diag(autoencoder.eigenvalues[: autoencoder.k] + 0.3**2) @ autoencoder.W.T
    torch.testing.assert_close(cov, expected + 0.2**2 * torch.eye(6, dtype=torch.float64))


def test_the_bound_with_the_pf_ode_latent_likelihood_is_the_closed_form(autoencoder):
    """-log p(z) by the probability-flow ODE with the exact latent score (the solver the latent bits/dim uses)
    equals the latent log-density point by point (to the ODE's tolerance), so the bound's Monte Carlo mean with it
    meets the closed form within its standard error."""
    sde = create_sde("vp")
    g = torch.Generator().manual_seed(3)
    x = autoencoder.data.sample(300, g, dtype=torch.float64)
    z = autoencoder.encode(x, g)
    nll = log_likelihood(sde, autoencoder.latent.score_fn(sde), z, rtol=1e-6, atol=1e-6).nll
    torch.testing.assert_close(nll, -autoencoder.latent.log_prob(z), atol=2e-3, rtol=0)
    total = nll + autoencoder.encoder_log_prob(z, x) - autoencoder.decoder_log_prob(x, z)
    standard_error = float(total.std()) / math.sqrt(len(total))
    assert abs(float(total.mean()) - autoencoder.bound_terms()["bound"]) < 4 * standard_error


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\]"):
        LinearGaussianAutoencoder(torch.eye(4), 5, 0.1, 0.1)
    with pytest.raises(ValueError, match="encoder_std"):
        LinearGaussianAutoencoder(torch.eye(4), 2, 0.0, 0.1)
    with pytest.raises(ValueError, match="square matrix"):
        LinearGaussianAutoencoder(torch.ones(3, 4), 2, 0.1, 0.1)
    with pytest.raises(ValueError, match="latent must have dimension k = 2"):
        LinearGaussianAutoencoder(torch.eye(4), 2, 0.1, 0.1).decoded(GaussianMixture([1.0], [[0.0]], [[1.0]]))
