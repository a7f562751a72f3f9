"""Every sampler against the exact oracle: samples within the true-vs-true noise floor, honest NFE,
reproducibility, convergence of the deterministic solvers to the probability-flow ODE, bad input."""

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE, energy_distance, predictors, correctors, sample, samplers, toy_dataset

N_SAMPLES = 3000
FLOOR_SEEDS = 16
MIXTURE = toy_dataset("gmm").mixture  # 2D, 8 anisotropic components, unequal weights
ENTROPY = toy_dataset("gmm").entropy()


@pytest.fixture(scope="module")
def floor_tolerance():
    """Calibrated from the true-vs-true energy distance over 16 seeds at the test's n: mean + 4 std.

    A correct sampler's samples are distributed like true samples, so their energy distance to fresh true
    samples follows the law of the floor (n = 3000: mean ~1.2e-3, std ~4e-4, max of 16 ~2.1e-3); the
    check accepts up to mean + 4 std (~2.9e-3). A score scaled by 0.5 lands at 8e-3 (PC with a Langevin
    corrector, which partly compensates) to 4 (ODE).
    """
    g = torch.Generator().manual_seed(999)
    floors = torch.tensor([energy_distance(MIXTURE.sample(N_SAMPLES, g), MIXTURE.sample(N_SAMPLES, g)) for _ in range(FLOOR_SEEDS)])
    return float(floors.mean() + 4 * floors.std())


def _check_cross_entropy(x):
    """A second ground-truth check, sharper on the shape of each component than the energy distance: the
    mean of -log p(x) over the samples estimates the cross-entropy H(q, p), which equals the entropy H(p)
    when q = p. Tolerance: 4 standard errors (std of -log p / sqrt(n) ~ 0.02 nats) plus 0.25 nats for the
    discretisation bias first-order stochastic samplers keep at these step counts (measured on this
    mixture, VP: ancestral / DDIM eta=1 -0.17 nats at 200 steps, -0.07 at 1000; reverse diffusion +0.11 at
    200). A score scaled by 0.5 is off by 1.1 nats (PC + Langevin) to 500 nats (ODE)."""
    nll = -MIXTURE.log_prob(x.double())
    se = float(nll.std()) / math.sqrt(len(nll))
    assert abs(float(nll.mean()) - ENTROPY) < 4 * se + 0.25, (float(nll.mean()), ENTROPY, se)


def _distance_to_truth(x, seed):
    return energy_distance(x, MIXTURE.sample(N_SAMPLES, torch.Generator().manual_seed(10_000 + seed)))


SDES = {"vp": VPSDE, "ve": VESDE}
PC_PAIRS = [(p, c) for p in ("euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none")
            for c in ("langevin", "annealed_langevin", "none") if (p, c) != ("none", "none")]
GENEROUS = {  # (sampler, options): generous settings for 2D
    "ode": {},
    "ode-rk4-logsnr": {"method": "rk4", "steps": 40, "variable": "log_snr"},
    "sde": {"steps": 400},
    "ddim": {"steps": 200},
    "ddim-eta1": {"steps": 1000, "eta": 1.0},
    "heun": {"steps": 40},
    "heun-churn": {"steps": 60, "s_churn": 20.0},
    "dpm_solver": {"steps": 30},
    "dpm_solver-3m": {"steps": 30, "order": 3},
    "unipc": {"steps": 30},
}


def _run(sde_name, sampler, seed=0, score_scale=1.0, **options):
    sde = SDES[sde_name]()
    exact = MIXTURE.score_fn(sde)
    score_fn = exact if score_scale == 1.0 else (lambda x, t: score_scale * exact(x, t))
    g = torch.Generator().manual_seed(seed)
    return sample(sde, score_fn, (N_SAMPLES, 2), sampler, generator=g, dtype=torch.float64, **options)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("predictor, corrector", PC_PAIRS)
def test_every_predictor_corrector_pair_samples_the_mixture(sde_name, predictor, corrector, floor_tolerance):
    if predictor == "none":
        # corrector-only sampling (Song et al.'s "C2000") mixes slowly: 500 levels x 2 Langevin steps with a
        # larger snr reach the energy-distance floor, but stay over-dispersed (+0.1 to +0.4 nats), so the
        # cross-entropy check is not applied to them
        result = _run(sde_name, "pc", predictor=predictor, corrector=corrector, steps=500, corrector_steps=2, snr=0.3)
    else:
        result = _run(sde_name, "pc", predictor=predictor, corrector=corrector, steps=400)
        _check_cross_entropy(result.x)
    assert _distance_to_truth(result.x, 0) < floor_tolerance


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("key", list(GENEROUS))
def test_ode_sde_and_few_step_solvers_sample_the_mixture(sde_name, key, floor_tolerance):
    result = _run(sde_name, key.split("-")[0], **GENEROUS[key])
    assert _distance_to_truth(result.x, 1) < floor_tolerance
    _check_cross_entropy(result.x)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("sampler, options", [("pc", {"steps": 400}), ("ode", {}), ("dpm_solver", {"steps": 30})])
def test_a_wrong_score_fails_the_same_check(sde_name, sampler, options, floor_tolerance):
    result = _run(sde_name, sampler, score_scale=0.5, **options)
    assert _distance_to_truth(result.x, 0) > floor_tolerance
    with pytest.raises(AssertionError):
        _check_cross_entropy(result.x)


def test_probability_flow_predictor_and_subvp(floor_tolerance):
    sde = SubVPSDE()
    g = torch.Generator().manual_seed(4)
    for opts in ({"predictor": "reverse_diffusion", "corrector": "none", "probability_flow": True}, {}):
        x = sample(sde, MIXTURE.score_fn(sde), (N_SAMPLES, 2), "pc", steps=400, generator=g, dtype=torch.float64, **opts).x
        assert _distance_to_truth(x, 2) < floor_tolerance
        _check_cross_entropy(x)


ALL_RUNS = [("pc", {"steps": 5, "corrector_steps": 2}), ("pc", {"steps": 5, "predictor": "ancestral_sampling", "corrector": "annealed_langevin"}),
            ("ode", {}), ("ode", {"method": "rk4", "steps": 4}), ("ode", {"backend": "scipy", "method": "RK45"}),
            ("sde", {"steps": 6}), ("sde", {"steps": 3, "method": "srk"}), ("ddim", {"steps": 5, "eta": 0.5}),
            ("heun", {"steps": 4, "s_churn": 5.0}), ("dpm_solver", {"steps": 5, "order": 3}), ("unipc", {"steps": 6})]


@pytest.mark.parametrize("sampler, options", ALL_RUNS)
def test_nfe_is_the_number_of_score_calls(sampler, options):
    sde = VPSDE()
    exact = MIXTURE.score_fn(sde)
    calls = []

    def counting(x, t):
        calls.append(1)
        return exact(x, t)

    result = sample(sde, counting, (64, 2), sampler, generator=torch.Generator().manual_seed(0), **options)
    assert result.nfe == len(calls) > 0


def test_nfe_formulas_of_the_fixed_step_samplers():
    sde = VPSDE()
    score = MIXTURE.score_fn(sde)
    run = lambda name, **o: sample(sde, score, (8, 2), name, **o).nfe  # noqa: E731
    assert run("pc", steps=7, corrector_steps=3) == 7 * 4 + 1
    assert run("pc", steps=7, corrector="none", denoise=False) == 7
    assert run("ddim", steps=9) == 10
    assert run("dpm_solver", steps=9) == 10
    assert run("heun", steps=9) == 19
    assert run("unipc", steps=9) == 10
    assert run("ode", method="euler", steps=9) == 10


@pytest.mark.parametrize("sampler, options", [("pc", {"steps": 20}), ("sde", {"steps": 20}), ("ddim", {"steps": 10, "eta": 1.0}),
                                              ("heun", {"steps": 5, "s_churn": 10.0}), ("ode", {})])
def test_same_seed_same_samples(sampler, options):
    sde = VESDE()
    score = MIXTURE.score_fn(sde)
    a, b, c = (sample(sde, score, (32, 2), sampler, generator=torch.Generator().manual_seed(s), **options).x for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_deterministic_solvers_converge_to_the_probability_flow_ode_at_their_order(sde_name):
    """From the same x_T, ddim (order 1), heun and dpm_solver 2M (order 2) and unipc-3 (order 3 plus the
    corrector's one) approach a tight dopri5 solve: doubling the steps divides the error by ~2, ~4 and
    ~8-16 (accepted: > 1.6, > 3.0 and > 6.0)."""
    sde = SDES[sde_name]()
    score = MIXTURE.score_fn(sde)
    x_T = sde.prior_sampling((200, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = sample(sde, score, (200, 2), "ode", x_T=x_T, rtol=1e-10, atol=1e-10, denoise=False).x
    for name, order_ratio in (("ddim", 1.6), ("heun", 3.0), ("dpm_solver", 3.0), ("unipc", 6.0)):
        errors = [float((sample(sde, score, (200, 2), name, x_T=x_T, steps=s, denoise=False).x - ref).norm(dim=1).mean())
                  for s in (40, 80, 160)]
        assert errors[0] / errors[1] > order_ratio and errors[1] / errors[2] > order_ratio, (name, errors)
        assert errors[-1] < 1e-2, (name, errors)  # mean displacement at 160 steps; the data has scale ~1.5


def test_few_step_solvers_stay_finite_at_5_nfe():
    for sde in (VPSDE(), VESDE(), SubVPSDE()):
        score = MIXTURE.score_fn(sde)
        for name, steps in (("dpm_solver", 4), ("heun", 2), ("unipc", 4)):
            result = sample(sde, score, (N_SAMPLES, 2), name, steps=steps, generator=torch.Generator().manual_seed(0))
            assert result.nfe == 5 and torch.isfinite(result.x).all()
            # the figure itself is reported by benchmarks/samplers.py; here it must at least be finite
            assert math.isfinite(_distance_to_truth(result.x, 3))


def test_trajectory_holds_the_states_on_the_grid():
    sde = VPSDE()
    result = sample(sde, MIXTURE.score_fn(sde), (16, 2), "dpm_solver", steps=6, return_trajectory=True,
                    generator=torch.Generator().manual_seed(0))
    assert result.trajectory.shape == (8, 16, 2)  # x_T, 6 steps, denoised
    assert result.times[0] == pytest.approx(sde.T) and result.times[-1] == 0.0
    assert (result.times[1:] < result.times[:-1]).all()
    assert torch.equal(result.trajectory[-1], result.x)
    assert result.to_dict()["nfe"] == 7 and result.settings["order"] == 2


def test_registries_list_their_names():
    assert samplers() == ["ddim", "dpm_solver", "heun", "ode", "pc", "sde", "unipc"]
    assert predictors() == ["ancestral_sampling", "euler_maruyama", "none", "reverse_diffusion"]
    assert correctors() == ["annealed_langevin", "langevin", "none"]


def _bad(message, sde=None, score=None, shape=(4, 2), sampler="pc", **options):
    sde = sde or VPSDE()
    score = score or MIXTURE.score_fn(sde)
    with pytest.raises(ValueError, match=message):
        sample(sde, score, shape, sampler, **options)


def test_bad_input_gets_clear_errors():
    _bad("unknown sampler .euler.; valid names are: ddim, dpm_solver, heun, ode, pc, sde, unipc", sampler="euler")
    _bad("unknown predictor 'em'; valid names are: ancestral_sampling, euler_maruyama", predictor="em")
    _bad("unknown corrector 'mala'; valid names are: annealed_langevin, langevin, none", corrector="mala")
    _bad("unknown option\\(s\\) order for sampler 'pc'; valid options are: steps, predictor", order=2)
    _bad("shape must be a sequence \\[B, ...\\]", shape=(4,))
    _bad("shape must be a sequence", shape=(0, 2))
    _bad("steps must be an integer >= 1, got 0", steps=0)
    _bad("snr must be a finite number > 0, got 0", snr=0.0)
    _bad("eps must lie in \\(0, T\\) = \\(0, 1\\), got 1.5", eps=1.5)
    _bad("eps must be a finite number > 0", eps=-1e-3, sampler="ode")
    _bad("unknown torchdiffeq method 'rk45'", sampler="ode", method="rk45")
    _bad("unknown time grid .cosine.; valid names are: edm, log_snr, log_snr_warped, uniform", sampler="ddim", schedule="cosine")
    _bad("'ancestral_sampling' has no probability-flow form", predictor="ancestral_sampling", probability_flow=True)


def test_a_broken_score_is_reported_with_the_time():
    _bad(r"score_fn returned shape \(4, 3\) at t=1, expected the shape of x \(4, 2\)",
         score=lambda x, t: torch.zeros(x.shape[0], 3), steps=3)

    def nan_late(x, t):
        return torch.full_like(x, float("nan")) if float(t[0]) < 0.5 else -x

    _bad(r"score_fn returned non-finite values \(NaN or inf\) at t=0.4", score=nan_late, steps=5, corrector="none", sampler="pc")
