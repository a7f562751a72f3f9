"""The uniform-boxes oracle (checkerboard) against independent truths: 60-digit arithmetic, autograd, Monte Carlo."""

import math

import mpmath
import pytest
import torch
from scipy import integrate, stats

from scoresde import VESDE, VPSDE, UniformBoxes, toy_dataset
from scoresde.datasets.toys import CHECKERBOARD_BLUR

BOARD = toy_dataset("checkerboard").oracle
SDES = {"vp": VPSDE, "ve": VESDE}


def _reference_log_prob(boxes: UniformBoxes, alpha: float, sigma: float, x: list[float]) -> float:
    """log p_t(x) = log sum_k w_k prod_d int_l^h N(x_d; alpha u, sigma^2) du / (h - l), each integral as
    (Phi(b) - Phi(a)) / alpha, b = (x_d - alpha l) / sigma, a = (x_d - alpha h) / sigma, in mpmath at 60 digits
    (as Phi(-a) - Phi(-b) above the box, where both are near 1): plain differences of exact tails, none of the
    oracle's log-domain rearrangements."""
    with mpmath.workdps(60):
        total = mpmath.mpf(0)
        for w, lows, highs in zip(boxes.weights.tolist(), boxes.lows.tolist(), boxes.highs.tolist()):
            factor = mpmath.mpf(w)
            for xd, lo, hi in zip(x, lows, highs):
                b, a = (xd - alpha * lo) / sigma, (xd - alpha * hi) / sigma
                mass = mpmath.ncdf(b) - mpmath.ncdf(a) if a < 0 else mpmath.ncdf(-a) - mpmath.ncdf(-b)
                factor *= mass / (alpha * (hi - lo))
            total += factor
        return float(mpmath.log(total))


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("t", [1e-3, 0.05, 0.5])
def test_marginal_log_prob_matches_a_60_digit_reference(sde_name, t):
    sde = SDES[sde_name]()
    tt = torch.tensor(t, dtype=torch.float64)
    alpha, sigma = float(sde.alpha(tt)), float(sde.sigma(tt))
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2.5
    x[0] = torch.tensor([2.0 + 0.3 * sigma, 1.0], dtype=torch.float64)  # within a blur width of an edge
    ours = BOARD.marginal_log_prob(sde, x, torch.full((6,), t, dtype=torch.float64))
    for i in range(6):
        ref = _reference_log_prob(BOARD, alpha, sigma, x[i].tolist())
        assert abs(float(ours[i]) - ref) < 1e-10 * max(1.0, abs(ref)), (i, float(ours[i]), ref)


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("t", [1e-3, 0.1, 1.0])
def test_marginal_score_equals_autograd(sde_name, t):
    sde = SDES[sde_name]()
    x = (torch.rand(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.5) * 12
    tt = torch.full((64,), t, dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(BOARD.marginal_log_prob(sde, x, tt).sum(), x)
    score = BOARD.score_fn(sde)(x.detach(), tt)
    assert torch.allclose(score, grad, rtol=1e-8, atol=1e-8)


def test_log_density_and_score_stay_finite_and_exact_far_off_the_boxes():
    """1000 blur widths off the board: p_t is one Gaussian tail per box, log p and the score follow its asymptote
    (score along x_1 -> -(x_1 - alpha h) / sigma^2 for the nearest box edge h = 4)."""
    sde = VPSDE()
    t = torch.full((1,), 0.01, dtype=torch.float64)
    alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
    x = torch.tensor([[4 * alpha + 1000 * sigma, 1.0]], dtype=torch.float64)
    log_p, score = BOARD.marginal_log_prob(sde, x, t), BOARD.marginal_score(sde, x, t)
    assert torch.isfinite(log_p).all() and torch.isfinite(score).all()
    assert float(score[0, 0]) == pytest.approx(-1000 / sigma, rel=2e-3)


def test_the_board_matches_its_definition():
    """Uniform on the 8 dark squares: log p = -log 32 where floor(x1/2) + floor(x2/2) is even inside [-4, 4]^2."""
    x = (torch.rand(4000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.5) * 10
    cell = torch.floor(x / 2)
    inside = ((x > -4) & (x < 4)).all(1) & (torch.remainder(cell.sum(1), 2) == 0)
    log_p = BOARD.log_prob(x)
    assert torch.equal(torch.isfinite(log_p), inside)
    assert torch.allclose(log_p[inside], torch.full_like(log_p[inside], -math.log(32.0)), rtol=0, atol=1e-14)
    assert BOARD.entropy() == pytest.approx(math.log(32.0), abs=1e-12)
    draws = BOARD.sample(20000, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.isfinite(BOARD.log_prob(draws)).all()
    # each square holds 1/8 of the draws: within 5 binomial standard errors
    cell = (torch.floor(draws / 2) + 2).long()
    share = torch.bincount(4 * cell[:, 0] + cell[:, 1])
    share = share[share > 0].double() / 20000
    assert len(share) == 8 and ((share - 1 / 8).abs() < 5 * math.sqrt(1 / 8 * 7 / 8 / 20000)).all()


@pytest.mark.slow
def test_checkerboard_perfect_nll_is_the_blurred_cross_entropy():
    """E_p[-log (p * N(0, s^2))] = log 32 + the edge cost. Each square's 4 edges (side 2) cost, to first order in s,
    (1/2) int_0^inf -log Phi(u / s) du each per unit length: 2 s c in all, c = int_0^inf -log Phi(z) dz (corners add
    O(s^2), about 1e-4). Also against an independent Monte-Carlo estimate within 4 standard errors."""
    toy = toy_dataset("checkerboard")
    value = toy.perfect_nll()
    c, _ = integrate.quad(lambda z: -stats.norm.logcdf(z), 0, 50)
    assert value - math.log(32.0) == pytest.approx(2 * CHECKERBOARD_BLUR * c, abs=2e-4)
    x = BOARD.sample(200_000, torch.Generator().manual_seed(4), dtype=torch.float64)
    nll = -toy.nll_log_prob(x)
    assert abs(float(nll.mean()) - value) < 4 * float(nll.std()) / math.sqrt(len(nll)) + 1e-4


def test_bad_boxes_raise_clear_errors():
    with pytest.raises(ValueError, match="highs > lows"):
        UniformBoxes([1.0], [[0.0, 0.0]], [[1.0, 0.0]])
    with pytest.raises(ValueError, match=r"shape \[K, D\]"):
        UniformBoxes([0.5, 0.5], [[0.0, 0.0]], [[1.0, 1.0]])
    with pytest.raises(ValueError, match="2 values per sample"):
        BOARD.log_prob(torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma"):
        BOARD.blurred_log_prob(torch.zeros(3, 2, dtype=torch.float64), 0.0)
