"""2D toys: registry, exact densities that integrate to 1, entropies against Monte Carlo, reproducibility."""

import math

import pytest
import torch

from scoresde import toy_dataset
from scoresde.datasets import toy_datasets
from scoresde.oracles.gaussian_mixture import grid_cells

FFJORD_TOYS = ["swissroll", "circles", "rings", "moons", "8gaussians", "pinwheel", "2spirals", "checkerboard", "gmm"]
DENSITY_TOYS = ["8gaussians", "checkerboard", "gmm"]


def test_registry_holds_the_standard_set():
    assert sorted(FFJORD_TOYS) == toy_datasets()
    assert [n for n in toy_datasets() if toy_dataset(n).has_density] == sorted(DENSITY_TOYS)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown toy data set 'spiral'; valid names are: 2spirals, 8gaussians"):
        toy_dataset("spiral")


def test_sample_only_toys_say_which_have_a_density():
    with pytest.raises(ValueError, match="those with one are: 8gaussians, checkerboard, gmm"):
        toy_dataset("moons").log_prob(torch.zeros(1, 2))


@pytest.mark.parametrize("name", FFJORD_TOYS)
def test_samples_are_reproducible_finite_and_in_range(name):
    toy = toy_dataset(name)
    a = toy.sample(5000, torch.Generator().manual_seed(0))
    b = toy.sample(5000, torch.Generator().manual_seed(0))
    c = toy.sample(5000, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (5000, 2) and a.dtype == torch.get_default_dtype() and torch.isfinite(a).all()
    # the plotting extent holds nearly all the mass
    assert float((a.abs() <= toy.extent).all(dim=1).double().mean()) > 0.99
    assert toy.sample(3, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("name", DENSITY_TOYS)
def test_density_integrates_to_one(name):
    """Midpoint rule on [-8, 8]^2 with 800^2 cells: Gaussian toys converge spectrally; the checkerboard's
    edges lie on cell boundaries (spacing 0.02 divides 2), so its integral is exact."""
    toy = toy_dataset(name)
    cells, volume = grid_cells([-8.0, -8.0], [8.0, 8.0], 800)
    total = float(toy.log_prob(cells).exp().sum() * volume)
    assert abs(total - 1.0) < 1e-3, total


@pytest.mark.parametrize("name", DENSITY_TOYS)
def test_entropy_matches_monte_carlo_of_minus_log_prob(name):
    toy = toy_dataset(name)
    x = toy.sample(200_000, torch.Generator().manual_seed(2), dtype=torch.float64)
    nll = -toy.log_prob(x)
    assert torch.isfinite(nll).all(), "samples must lie where the density is positive"
    se = float(nll.std()) / math.sqrt(len(nll))
    # checkerboard: -log p is constant, so the MC mean is exact
    assert abs(float(nll.mean()) - toy.entropy()) < max(4 * se, 1e-9)


def test_checkerboard_sits_on_the_dark_squares():
    toy = toy_dataset("checkerboard")
    x = toy.sample(20_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    cells = torch.floor(x / 2)
    assert (torch.remainder(cells.sum(1), 2) == 0).all()
    assert ((x >= -4) & (x < 4)).all()
    # all 8 dark squares are used with equal mass: counts within 4 binomial standard errors of n/8
    _, counts = torch.unique(cells, dim=0, return_counts=True)
    assert len(counts) == 8
    p, n = 1 / 8, len(x)
    assert ((counts - n * p).abs() < 4 * math.sqrt(n * p * (1 - p))).all()
