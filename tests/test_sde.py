"""Forward SDEs against independent truths: Monte Carlo of the SDE, the Fokker–Planck equation, first-order
consistency of the discrete chain, exact inversion of the log-SNR, and the reverse / PF-ODE transport equations."""

import math

import pytest
import torch
import torchsde

from scoresde import VESDE, VPSDE, GaussianMixture, SubVPSDE

torch.set_default_dtype(torch.float32)


def _random_mixture(D, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64) * 0.4
    covs = A @ A.transpose(-1, -2) + 0.05 * torch.eye(D, dtype=torch.float64)
    means = torch.randn(K, D, generator=g, dtype=torch.float64) * 1.5
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.2
    return GaussianMixture(w / w.sum(), means, covs)


class _ForwardSDE(torch.nn.Module):
    """The forward SDE in torchsde's interface (Itô, diagonal noise)."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, sde):
        super().__init__()
        self.sde = sde

    def f(self, t, y):
        return self.sde.sde(y, t.expand(y.shape[0]))[0]

    def g(self, t, y):
        return self.sde.sde(y, t.expand(y.shape[0]))[1][:, None].expand_as(y)


def test_marginal_prob_matches_monte_carlo_of_the_sde(sde):
    # 10,000 Euler paths with dt = 2e-3. Tolerance: 4 standard errors (std / sqrt(n) for the mean,
    # std / sqrt(2n) for the std) plus Euler's bias on the std, at most dt / (2t) relative: the left-point
    # sum of an increasing g(t)^2 (sub-VP: g^2 ~ t near 0) misses that fraction of the variance, and the
    # drift's O(beta dt) error is smaller still. The Brownian motion is seeded, so the test is deterministic.
    n, dt = 10_000, 2e-3
    x0 = torch.tensor([1.5, -0.7], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    y0 = x0.expand(n, 2).clone()
    # VE starts from x(0) = x0 + sigma_min z, the convention under which sigma(t) is the marginal std.
    y0 = y0 + sde.sigma(torch.tensor(0.0, dtype=torch.float64)) * torch.randn(n, 2, generator=g, dtype=torch.float64)
    ts = torch.tensor([0.0, 0.1, 0.3, 0.6, 0.9], dtype=torch.float64) * sde.T
    bm = torchsde.BrownianInterval(t0=0.0, t1=float(ts[-1]), size=(n, 2), dtype=torch.float64, entropy=0)
    ys = torchsde.sdeint(_ForwardSDE(sde), y0, ts, method="euler", dt=dt, bm=bm)
    for i in range(1, len(ts)):
        mean, std = sde.marginal_prob(x0[None], ts[i : i + 1])
        mc_mean, mc_std = ys[i].mean(0), ys[i].std(0)
        se_mean = std / math.sqrt(n)
        se_std = std / math.sqrt(2 * n)
        euler_bias = std * dt / (2 * float(ts[i]))
        assert ((mc_mean - mean[0]).abs() < 4 * se_mean).all(), (float(ts[i]), mc_mean, mean)
        assert ((mc_std - std).abs() < 4 * se_std + euler_bias).all(), (float(ts[i]), mc_std, std)


@pytest.mark.parametrize("D", [2, 5])
def test_mixture_marginal_solves_fokker_planck(sde, D):
    r"""In log form, d_t log p = -f D - f x.grad log p + g^2/2 (lap log p + |grad log p|^2) for drift f(t) x.

    Every term is computed by float64 autograd; the residual is round-off (~1e-12), far below 1e-6 relative."""
    mix = _random_mixture(D, seed=D)
    g = torch.Generator().manual_seed(3)
    t = (0.02 + 0.96 * torch.rand(16, generator=g, dtype=torch.float64)) * sde.T
    x = torch.cat([mix.marginal(sde, float(ti)).sample(1, g, dtype=torch.float64) for ti in t])
    x.requires_grad_(True)
    t.requires_grad_(True)
    logp = mix.marginal_log_prob(sde, x, t)
    dlogp_dt, grad = torch.autograd.grad(logp.sum(), (t, x), create_graph=True)
    lap = sum(torch.autograd.grad(grad[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(D))
    drift_coeff = (sde.sde(torch.ones(len(t), 1, dtype=torch.float64), t.detach())[0])[:, 0]
    g2 = sde.sde(x.detach(), t.detach())[1] ** 2
    rhs = -drift_coeff * D - drift_coeff * (x * grad).sum(1) + 0.5 * g2 * (lap + (grad**2).sum(1))
    scale = dlogp_dt.abs() + rhs.abs() + 1.0
    assert ((dlogp_dt - rhs).abs() / scale).max() < 1e-6


def test_probability_flow_and_reverse_sde_transport_the_marginals(sde):
    r"""PF-ODE velocity v = f x - g^2 s / 2 solves the continuity equation d_t p = -div(v p); the reverse SDE's
    drift b = f x - g^2 s solves d_t p = -div(b p) - g^2/2 lap p (read in forward time). Float64 autograd."""
    D = 2
    mix = _random_mixture(D, seed=11)
    score = mix.score_fn(sde)
    g = torch.Generator().manual_seed(5)
    t = (0.05 + 0.9 * torch.rand(8, generator=g, dtype=torch.float64)) * sde.T
    x = torch.randn(8, D, generator=g, dtype=torch.float64).requires_grad_(True)
    for pf, sign in ((True, 0.0), (False, -1.0)):
        drift, diffusion = sde.reverse(score, probability_flow=pf).sde(x, t)
        div = sum(torch.autograd.grad(drift[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(D))
        tt = t.clone().requires_grad_(True)
        logp = mix.marginal_log_prob(sde, x, tt)
        dlogp_dt, grad = torch.autograd.grad(logp.sum(), (tt, x), create_graph=True)
        lap = sum(torch.autograd.grad(grad[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(D))
        g2 = sde.sde(x, t)[1] ** 2
        # d_t log p = -div b - b.grad log p + sign * g^2/2 (lap log p + |grad log p|^2)
        rhs = -div - (drift * grad).sum(1) + sign * 0.5 * g2 * (lap + (grad**2).sum(1))
        assert torch.allclose(dlogp_dt, rhs, rtol=1e-8, atol=1e-8), (pf, dlogp_dt, rhs)
        assert (diffusion == 0).all() if pf else torch.allclose(diffusion, torch.sqrt(_g2_by_hand(sde, t)), rtol=1e-12)


def _g2_by_hand(sde, t):
    """g(t)^2 written out from the papers' definitions, independently of the classes' closed forms."""
    if isinstance(sde, VESDE):  # Song et al. 2021, Eq. 9: g = sigma(t) sqrt(2 log(sigma_max / sigma_min))
        r = math.log(sde.sigma_max / sde.sigma_min)
        return (sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t) ** 2 * 2 * r
    if (
        isinstance(sde, VPSDE) and sde.schedule == "cosine"
    ):  # beta = d/dt[-log alpha^2], alpha^2 = cos^2(theta)/cos^2(theta_0)
        s = 0.008
        return math.pi / (1 + s) * torch.tan(0.5 * math.pi * (t + s) / (1 + s))
    beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
    if isinstance(sde, SubVPSDE):  # Song et al. 2021, Eq. 11
        return beta * (1 - torch.exp(-2 * (sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2)))
    return beta


def test_discretize_is_first_order_consistent_with_the_sde(sde):
    # f / dt -> f(t) x and G / sqrt(dt) -> g(t) with an error O(dt): error * N stays bounded and the error
    # halves (ratio in [1.6, 2.4]) when N doubles.
    x = torch.tensor([[1.0, -2.0], [0.5, 0.25], [3.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64) * sde.T
    drift, diffusion = sde.sde(x, t)
    errors = []
    for N in (100, 200, 400, 800):
        s = type(sde)(**{**_init_kwargs(sde), "N": N})
        f, G = s.discretize(x, t)
        dt = s.T / N
        errors.append(
            max(
                float((f / dt - drift).abs().max() / drift.abs().max().clamp(min=1)),
                float(((G / math.sqrt(dt) - diffusion).abs() / diffusion).max()),
            )
        )
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(1.6 < r < 2.4 for r in ratios), (errors, ratios)
    assert errors[-1] < 0.05


def _init_kwargs(sde):
    if isinstance(sde, VESDE):
        return {"sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max}
    if isinstance(sde, SubVPSDE):
        return {"beta_min": sde.beta_min, "beta_max": sde.beta_max}
    return {"beta_min": sde.beta_min, "beta_max": sde.beta_max, "schedule": sde.schedule}


def test_discretize_chain_reproduces_the_marginal_exactly(sde):
    # The discrete step is the exact Gaussian transition, so N chained steps from t=0 give alpha(T) and
    # sigma(T) to round-off: mean coefficient = prod(1 + f/x), variance by the same recursion.
    s = type(sde)(**{**_init_kwargs(sde), "N": 50})
    ones = torch.ones(1, 1, dtype=torch.float64)
    coeff, var = 1.0, float(s.sigma(torch.tensor(0.0, dtype=torch.float64))) ** 2
    for i in range(1, s.N + 1):
        t = torch.tensor([i * s.T / s.N], dtype=torch.float64)
        f, G = s.discretize(ones, t)
        step = 1 + float(f)
        coeff, var = coeff * step, var * step**2 + float(G) ** 2
    T = torch.tensor(s.T, dtype=torch.float64)
    assert coeff == pytest.approx(float(s.alpha(T)), rel=1e-10)
    assert math.sqrt(var) == pytest.approx(float(s.sigma(T)), rel=1e-10)


def test_ddpm_and_smld_steps_have_their_textbook_form():
    vp, ve = VPSDE(N=1000), VESDE(N=1000)
    x = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    t = torch.tensor([0.5], dtype=torch.float64)
    s = t - 1e-3
    alpha_bar = lambda u: vp.alpha(u) ** 2  # noqa: E731
    beta_i = 1 - alpha_bar(t) / alpha_bar(s)
    f, G = vp.discretize(x, t)
    assert torch.allclose(f, (torch.sqrt(1 - beta_i) - 1) * x, rtol=1e-12)
    assert torch.allclose(G, torch.sqrt(beta_i), rtol=1e-12)
    f, G = ve.discretize(x, t)
    assert (f == 0).all()
    assert torch.allclose(G, torch.sqrt(ve.sigma(t) ** 2 - ve.sigma(s) ** 2), rtol=1e-12)


def test_log_snr_inverse(sde):
    t = torch.linspace(1e-4, 1, 2001, dtype=torch.float64) * sde.T
    lam = sde.log_snr(t)
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must decrease in t"
    assert (sde.t_from_log_snr(lam) - t).abs().max() < 1e-6
    # the closed forms agree with their definitions alpha^2 + sigma^2 = 1 (VP) etc. via lam
    assert torch.allclose(lam, 2 * torch.log(sde.alpha(t) / sde.sigma(t)), rtol=1e-10, atol=1e-10)


def test_closed_forms_match_their_definitions():
    """alpha, sigma, f, g^2 against hand-written formulas of Song et al. (2021) and Nichol & Dhariwal (2021)."""
    t = torch.linspace(0.01, 0.99, 9, dtype=torch.float64)
    vp = VPSDE(0.1, 20.0)
    log_mean = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    assert torch.allclose(vp.alpha(t), torch.exp(log_mean))
    assert torch.allclose(vp.sigma(t), torch.sqrt(1 - torch.exp(2 * log_mean)))
    assert torch.allclose(vp.beta(t), 0.1 + t * 19.9)
    sub = SubVPSDE(0.1, 20.0)
    assert torch.allclose(sub.sigma(t), 1 - torch.exp(2 * log_mean))
    x = torch.ones(9, 1, dtype=torch.float64)
    assert torch.allclose(sub.sde(x, t)[1] ** 2, (0.1 + t * 19.9) * (1 - torch.exp(-2 * 0.1 * t - 19.9 * t**2)))
    ve = VESDE(0.01, 50.0)
    assert torch.allclose(ve.sigma(t), 0.01 * 5000**t)
    assert torch.allclose(ve.sde(x, t)[1], 0.01 * 5000**t * math.sqrt(2 * math.log(5000)))
    cos = VPSDE(schedule="cosine")
    s = 0.008
    fn = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    assert torch.allclose(cos.alpha(t) ** 2, fn(t) / fn(torch.zeros(1, dtype=torch.float64)))
    assert cos.T == pytest.approx(0.9946)


def test_prior(sde, gen):
    z = sde.prior_sampling((40_000, 2), gen, dtype=torch.float64)
    std = sde.prior_std
    # sample std within 4 standard errors (std / sqrt(2n))
    assert abs(float(z.std()) - std) < 4 * std / math.sqrt(2 * z.numel())
    normal = torch.distributions.Normal(0.0, std)
    assert torch.allclose(sde.prior_logp(z[:100]), normal.log_prob(z[:100]).sum(1))
    img = sde.prior_sampling((3, 1, 4, 4), gen)
    assert img.shape == (3, 1, 4, 4) and sde.prior_logp(img).shape == (3,)
    # the prior matches the marginal at T up to the small prior mismatch of each SDE
    T = torch.tensor(sde.T, dtype=torch.float64)
    assert abs(float(sde.sigma(T)) - std) / std < 1e-3
    # signal-to-noise at T: the data is forgotten (VP: e^-5 ~ 7e-3; VE: 1 / sigma_max = 2e-2)
    assert float(sde.alpha(T) / sde.sigma(T)) < 0.03


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_shape_follow_the_input(sde, dtype):
    x = torch.randn(4, 3, 2, 2, dtype=dtype)
    t = torch.rand(4, dtype=dtype) * sde.T
    drift, diffusion = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    f, G = sde.discretize(x, t)
    for out, shape in ((drift, x.shape), (diffusion, (4,)), (mean, x.shape), (std, (4,)), (f, x.shape), (G, (4,))):
        assert out.dtype == dtype and out.shape == shape
        assert torch.isfinite(out).all()
    assert sde.prior_sampling((2, 3), dtype=dtype).dtype == dtype
    # a scalar t broadcasts over the batch
    assert sde.marginal_prob(x, 0.5 * sde.T)[1].shape == (4,)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VPSDE(beta_min=-0.1), "beta_min must be a finite number >= 0, got -0.1"),
        (lambda: VPSDE(beta_min=1.0, beta_max=1.0), "beta_max must be > beta_min = 1, got 1"),
        (lambda: SubVPSDE(beta_max=float("nan")), "beta_max must be a finite number > 0"),
        (lambda: VESDE(sigma_min=0.0), "sigma_min must be a finite number > 0, got 0"),
        (lambda: VESDE(sigma_min=1.0, sigma_max=0.5), "sigma_max must be > sigma_min = 1, got 0.5"),
        (lambda: VPSDE(N=0), "N must be an integer >= 1, got 0"),
        (lambda: VESDE(N=2.5), "N must be an integer >= 1, got 2.5"),
        (lambda: VPSDE(schedule="quadratic"), "unknown schedule 'quadratic'; valid schedules are: linear, cosine"),
    ],
)
def test_invalid_parameters(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_invalid_times_and_inputs(sde):
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        sde.sde(x, torch.tensor([0.1, 0.2, 1.5]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        sde.marginal_prob(x, torch.tensor([-0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"t must have shape \[B\] = \[3\] to match x, got \(2,\)"):
        sde.sde(x, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="t holds 1 non-finite"):
        sde.discretize(x, torch.tensor([0.1, float("nan"), 0.3]))
    with pytest.raises(ValueError, match="x holds 1 non-finite"):
        sde.sde(torch.tensor([[0.0, float("inf")], [0.0, 0.0], [1.0, 1.0]]), torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="x0 holds"):
        sde.marginal_prob(torch.full((3, 2), float("nan")), 0.5)
    with pytest.raises(ValueError, match="lam must lie in this SDE's log-SNR range"):
        sde.t_from_log_snr(torch.tensor([-1000.0]))
    with pytest.raises(ValueError, match="shape must be a non-empty tuple"):
        sde.prior_sampling((0, 2))


def test_reverse_checks_the_score():
    sde = VPSDE()
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"score_fn returned shape \(3,\) at t=0.5, expected the shape of x \(3, 2\)"):
        sde.reverse(lambda x, t: x.sum(1)).sde(x, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="score_fn returned non-finite values .* at t=0.25"):
        sde.reverse(lambda x, t: x / 0.0).discretize(x, torch.full((3,), 0.25))
    with pytest.raises(TypeError, match="score_fn must be callable"):
        sde.reverse(3)
