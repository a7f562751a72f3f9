"""The teaching figures: each returns a Figure with titles and labelled axes, and draws what it says (checked on
the oracle, where the learned and exact quantities coincide)."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from scoresde import VPSDE, sample, toy_dataset
from scoresde.app import figures as viz
from scoresde.app import image_figures, result_figures
from scoresde.evaluation.comparison import SamplerSpec, compare_samplers

TOY = toy_dataset("8gaussians")
SDE = VPSDE()
EXACT = TOY.mixture.score_fn(SDE)


def _labelled(fig: Figure, twins: int = 0) -> None:
    """Every axes with data has a title and both axis labels (``twins``: the last axes are twinned, y label only)."""
    axes = fig.axes[: len(fig.axes) - twins]
    assert all(ax.get_ylabel() for ax in fig.axes[len(axes) :])
    plotted = [ax for ax in axes if ax.has_data() and ax.axison and ax.get_label() != "<colorbar>"]
    assert plotted, "no axes with data"
    for ax in plotted:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), ax


def test_score_field_of_the_oracle_draws_identical_learned_and_exact_arrows():
    fig = viz.plot_score_field(SDE, EXACT, times=(0.05, 0.5), mixture=TOY.mixture, arrows=9, grid=20)
    _labelled(fig)
    top, bottom = fig.axes[0], fig.axes[2]
    assert top.get_title().startswith("learned") and bottom.get_title().startswith("exact")
    (q_learned,), (q_exact,) = (
        [c for c in top.collections if hasattr(c, "U")],
        [c for c in bottom.collections if hasattr(c, "U")],
    )
    np.testing.assert_allclose(q_learned.U, q_exact.U, atol=1e-6)
    np.testing.assert_allclose(q_learned.V, q_exact.V, atol=1e-6)


def test_model_density_of_the_oracle_matches_the_true_density():
    fig = viz.plot_model_density(
        SDE, EXACT, extent=TOY.extent, grid=12, true_log_prob=TOY.log_prob, rtol=1e-5, atol=1e-5
    )
    model, truth, ratio = (ax.images[0].get_array() for ax in fig.axes[:3])
    # the exact likelihood of the exact score is the true density up to the ODE tolerance (1e-5) and p_eps vs p_0
    np.testing.assert_allclose(model, truth, atol=2e-3 * truth.max())
    assert fig.axes[0].get_title().startswith("model density") and "true density" == fig.axes[1].get_title()


def test_trajectories_start_from_the_same_noise():
    fig = viz.plot_trajectories(SDE, EXACT, n=5, steps=40, data=TOY.sample(200))
    _labelled(fig)
    sde_ax, ode_ax = fig.axes[:2]
    starts = [ax.collections[-2].get_offsets() for ax in (sde_ax, ode_ax)]
    np.testing.assert_array_equal(starts[0], starts[1])
    assert len(sde_ax.lines) == 5 and "NFE" in ode_ax.get_title()


def test_comparison_and_quality_against_nfe():
    specs = [SamplerSpec("ddim", "ddim", {"steps": s}) for s in (5, 10)] + [
        SamplerSpec("dpm", "dpm_solver", {"steps": 10})
    ]
    reference = TOY.sample(300)
    comparison = compare_samplers(
        SDE, EXACT, reference, lineup=specs, n=300, floor_reference=TOY.sample(300), dtype=torch.float64
    )
    fig = result_figures.plot_comparison(comparison, reference, extent=TOY.extent)
    _labelled(fig)
    assert len(fig.axes) == 4  # data, ddim (its largest NFE), dpm, quality against NFE
    quality = fig.axes[-1]
    assert [line.get_label() for line in quality.lines] == ["ddim", "dpm", "noise floor (n = 300)"]
    np.testing.assert_array_equal(quality.lines[0].get_xdata(), [6, 11])
    with pytest.raises(ValueError, match="metric must be"):
        result_figures.plot_quality_vs_nfe(comparison, metric="fid")


def test_image_grids_and_bad_shapes():
    images = torch.randint(0, 17, (12, 1, 8, 8)).float()
    fig = image_figures.plot_samples(images, "digits", levels=17)
    assert fig.axes[0].images[0].get_array().shape == (2 * 9 - 1, 10 * 9 - 1)
    with pytest.raises(ValueError, match=r"expected 2D points \[N, 2\] or images"):
        image_figures.plot_samples(torch.zeros(4, 3))
    fig = image_figures.plot_sample_grids({"teacher": images / 8 - 1, "student": -images / 8 + 1}, n=12, cols=6)
    assert [ax.get_title() for ax in fig.axes] == ["teacher", "student"]
    first, second = (ax.images[0].get_array() for ax in fig.axes)
    assert first.shape == (2 * 9 - 1, 6 * 9 - 1) and np.allclose(first[:8, :8] + second[:8, :8], 1.0)
    for bad in (torch.zeros(4, 1, 8), torch.zeros(4, 2)):  # not images; 2D points have plot_samples
        with pytest.raises(ValueError, match=r"samples\['bad'\]: expected images \[N, 1\|3, H, W\]"):
            image_figures.plot_sample_grids({"bad": bad})


def test_training_curve_from_a_metrics_file(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss,lr,seconds\n10,5.0,0.001,1\n20,3.0,0.002,2\n")
    fig = result_figures.plot_training_curve(path)
    _labelled(fig, twins=1)
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), [5.0, 3.0])
    with pytest.raises(ValueError, match="no rows with step and loss"):
        result_figures.plot_training_curve([])


def test_reverse_process_animation_saves_a_gif(tmp_path):
    result = sample(SDE, EXACT, (100, 2), "ddim", steps=20, return_trajectory=True, dtype=torch.float64)
    animation = viz.animate_reverse_process(result.trajectory, result.times, frames=8)
    animation.save(tmp_path / "r.gif", writer="pillow", dpi=40)
    from PIL import Image

    with Image.open(tmp_path / "r.gif") as gif:
        assert gif.n_frames == 8
    with pytest.raises(ValueError, match="trajectory must be"):
        viz.animate_reverse_process(result.trajectory[:, :, :1], result.times)
