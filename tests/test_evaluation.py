"""compare_samplers against the oracle: with the exact score an accurate sampler's samples have mean true NLL equal
to the data's entropy (within Monte-Carlo error); a wrong score does not."""

import math

import pytest
import torch

from scoresde import VPSDE, toy_dataset
from scoresde.config.schema import DataConfig
from scoresde.evaluation.comparison import SamplerSpec, compare_samplers, default_lineup
from scoresde.evaluation.held_out import held_out

TOY = toy_dataset("8gaussians")
SDE = VPSDE()


def _compare(score, lineup, n=2000):
    data = held_out(DataConfig(name="8gaussians"), n)
    return compare_samplers(
        SDE,
        score,
        data.x,
        lineup=lineup,
        n=n,
        floor_reference=data.floor,
        true_log_prob=data.log_prob,
        entropy=data.entropy,
        dtype=torch.float64,
    )


def test_exact_score_samples_have_the_entropy_as_mean_true_nll():
    lineup = [
        SamplerSpec("ode", "ode", {"rtol": 1e-5, "atol": 1e-5}),
        SamplerSpec("dpm", "dpm_solver", {"steps": 20, "order": 3}),
        SamplerSpec("em", "pc", {"steps": 500, "predictor": "euler_maruyama", "corrector": "none"}),
    ]
    comparison = _compare(TOY.mixture.score_fn(SDE), lineup)
    assert comparison.entropy == pytest.approx(TOY.entropy())
    for run in comparison.runs:
        # E_p[-log p(x)] = H(p) exactly; 4.5 standard errors (n = 2000) leave room for the samplers' small bias
        assert abs(run.true_nll - comparison.entropy) < 4.5 * run.true_nll_standard_error, run.spec.label
        assert run.energy_distance < 6 * comparison.floor["energy_distance"], (
            run.spec.label
        )  # floor: one draw, heavy-tailed
        assert run.n_nonfinite == 0 and run.x.shape == (2000, 2)
    assert comparison.runs[1].nfe == 21 and comparison.runs[2].nfe == 501


def test_a_wrong_score_is_caught_by_every_figure():
    exact = TOY.mixture.score_fn(SDE)
    comparison = _compare(lambda x, t: 0.6 * exact(x, t), [SamplerSpec("dpm", "dpm_solver", {"steps": 20, "order": 3})])
    run = comparison.runs[0]
    assert run.true_nll - comparison.entropy > 10 * run.true_nll_standard_error
    assert run.energy_distance > 10 * comparison.floor["energy_distance"]


def test_deterministic_samplers_share_the_prior_draw():
    exact = TOY.mixture.score_fn(SDE)
    spec = SamplerSpec("ddim", "ddim", {"steps": 10})
    comparison = _compare(exact, [spec, spec], n=200)
    assert torch.equal(comparison.runs[0].x, comparison.runs[1].x)
    table = comparison.markdown()
    assert "ddim, 10 steps" in table and "Noise floor" in table and "perfect sampler's mean true NLL" in table
    assert set(comparison.to_dict()) == {"n", "noise_floor", "entropy", "image_floor", "runs"}


def test_default_lineup_covers_pc_ode_and_the_few_step_solvers():
    samplers = {spec.sampler for spec in default_lineup()}
    assert samplers == {"pc", "sde", "ode", "ddim", "heun", "dpm_solver", "unipc", "ipndm", "deis"}
    # the benchmarks' best few-step setting (warped log-SNR grid) is in the line-up next to the defaults
    warped = {spec.sampler for spec in default_lineup() if spec.options.get("schedule") == "log_snr_warped"}
    assert warped == {"dpm_solver"} and any(
        spec.sampler == "unipc" and spec.options["steps"] == 10 for spec in default_lineup()
    )
    assert len(default_lineup(quick=True)) < len(default_lineup())


def test_bad_lineups_and_data_raise():
    exact = TOY.mixture.score_fn(SDE)
    with pytest.raises(ValueError, match="unknown sampler 'euler' in the line-up; valid names are: consistency, ddim"):
        compare_samplers(SDE, exact, torch.zeros(10, 2), lineup=[SamplerSpec("x", "euler")])
    with pytest.raises(ValueError, match="lineup is empty"):
        compare_samplers(SDE, exact, torch.zeros(10, 2), lineup=[])
    with pytest.raises(ValueError, match="non-finite"):
        compare_samplers(SDE, exact, torch.full((10, 2), math.nan))


def test_held_out_images_are_bin_centres_of_the_test_split():
    data = held_out(DataConfig(kind="image", name="digits"), 50)
    assert data.x.shape == (50, 1, 8, 8) and data.floor.shape == (50, 1, 8, 8) and data.log_prob is None
    levels = (data.x + 1) / 2 * 17 - 0.5  # back to the integer levels 0..16
    assert (
        torch.allclose(levels, levels.round(), atol=1e-5) and levels.round().min() == 0 and levels.round().max() == 16
    )
    assert not torch.equal(data.x, data.floor)
