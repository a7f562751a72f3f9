"""The interactive explorer: its numbers against the closed-form marginals, its page opened and driven in headless
Chromium (slider, sampler menu, followed draw), its command's refusals."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import open_page, train_cli

from scoresde.app.cli import main
from scoresde.app.explorer import FIGURE_IDS, write_explorer
from scoresde.app.explorer_data import ExplorerData, explorer_data, explorer_times, sampler_panel
from scoresde.config.presets import preset
from scoresde.config.schema import DataConfig
from scoresde.evaluation.comparison import SamplerSpec, compare_samplers
from scoresde.evaluation.held_out import held_out
from scoresde.processes.seam import ModelSpec

TOY = "8gaussians"
SIZES = {"frames": 7, "n": 400, "grid": 48, "arrows": 7, "error_grid": 12, "paths": 6, "path_steps": 40}


def _sde():
    return preset("toy-vp").sde.build()


class ShiftedScore:
    """The exact score plus a constant ``shift``: a model whose error is known, sigma(t) * |shift| everywhere."""

    spec = ModelSpec()

    def __init__(self, oracle, sde, shift):
        self.exact, self.shift = oracle.score_fn(sde), torch.tensor(shift, dtype=torch.float64)

    def __call__(self, x, t):
        return self.exact(x, t) + self.shift.to(x)


@pytest.fixture(scope="module")
def toy():
    from scoresde import toy_dataset

    return toy_dataset(TOY)


@pytest.fixture(scope="module")
def exact_page(toy):
    """The exact score's data with a two-sampler comparison and a small likelihood grid (a second or two)."""
    sde = _sde()
    data = held_out(DataConfig(kind="toy", name=TOY), 300, 0)
    lineup = [SamplerSpec("ddim", "ddim", {"steps": 5}), SamplerSpec("dpm_solver", "dpm_solver", {"steps": 10})]
    comparison = compare_samplers(sde, toy.oracle.score_fn(sde), data.x, lineup=lineup, n=300,
                                  floor_reference=data.floor, true_log_prob=data.sample_log_prob,
                                  entropy=data.entropy)  # fmt: skip
    return explorer_data(sde, None, toy.sample, oracle=toy.oracle, extent=toy.extent, comparison=comparison,
                         held_out=data.x, likelihood_grid=10, **SIZES), comparison  # fmt: skip


# the numbers against the closed form ----------------------------------------------------------------------------------
def test_forward_samples_have_the_closed_form_mean_and_covariance(exact_page, toy):
    """Each slider position's samples are draws of p_t: their mean within 4 standard errors of the marginal's."""
    data, _ = exact_page
    sde = _sde()
    for j, t in enumerate(data.times.tolist()):
        marginal = toy.oracle.marginal(sde, t)
        x = torch.from_numpy(data.samples[j]).double()
        standard_error = torch.sqrt(torch.diagonal(marginal.covariance()) / len(x))
        assert torch.all((x.mean(0) - marginal.mean()).abs() < 4 * standard_error), t
        # the covariance's diagonal within 25% (400 draws: its relative standard error is about 7%)
        assert torch.allclose(x.var(0), torch.diagonal(marginal.covariance()), rtol=0.25), t


def test_closed_form_density_is_the_oracle_and_holds_the_mass(exact_page, toy):
    data, _ = exact_page
    sde = _sde()
    for j, t in enumerate(data.times.tolist()):
        half, grid = float(data.half[j]), data.density.shape[-1]
        cell = (2 * half / grid) ** 2
        # the square alpha*extent + 3 sigma holds nearly all of p_t; the midpoint rule errs by < 0.5% here
        assert abs(float(data.density[j].sum()) * cell - 1.0) < 0.02, t
        centre = torch.zeros(1, 2, dtype=torch.float64) + half / grid  # the cell just above and right of 0
        exact = toy.oracle.marginal_log_prob(sde, centre, t).exp()
        assert float(data.density[j][grid // 2, grid // 2]) == pytest.approx(float(exact), rel=1e-5), t


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard"])
def test_kernel_estimate_approaches_the_closed_form_where_the_noise_dominates(name):
    """Without an oracle p_t is a kernel estimate: within 0.2 in total variation of the closed form at every t
    (measured 0.11 and 0.17 at t_min on these two), within 0.02 where the noise dominates (sigma > 0.9)."""
    from scoresde import toy_dataset

    toy, sde = toy_dataset(name), _sde()
    sizes = {**SIZES, "paths": 2, "path_steps": 8}
    kde = explorer_data(sde, ShiftedScore(toy.oracle, sde, [0.0, 0.0]), toy.sample, extent=toy.extent, **sizes)
    exact = explorer_data(sde, None, toy.sample, oracle=toy.oracle, extent=toy.extent, **sizes)
    assert kde.density_kind == "kernel estimate" and exact.exact is not None and kde.exact is None
    for j in range(len(kde.times)):
        cell = (2 * float(kde.half[j]) / kde.density.shape[-1]) ** 2
        total_variation = 0.5 * float(np.abs(kde.density[j] - exact.density[j]).sum()) * cell
        if kde.sigma[j] > 0.9:
            assert total_variation < 0.02, (kde.times[j], total_variation)
        assert total_variation < 0.2, (kde.times[j], total_variation)


def test_score_arrows_and_their_error_against_the_exact_score(toy):
    """A model off by a constant c has error sigma(t) |c| everywhere (and as its RMS under p_t); its arrows are
    sigma (s + c) and the exact ones sigma s."""
    sde = _sde()
    shift = [0.3, -0.4]
    data = explorer_data(sde, ShiftedScore(toy.oracle, sde, shift), toy.sample, oracle=toy.oracle,
                         extent=toy.extent, **SIZES)  # fmt: skip
    sigma = data.sigma.astype(np.float64)
    np.testing.assert_allclose(data.error, 0.5 * sigma[:, None, None] * np.ones_like(data.error), rtol=1e-5)
    np.testing.assert_allclose(data.error_rms, 0.5 * sigma, rtol=1e-5)
    where = torch.from_numpy(data.arrows).double()
    for j, t in enumerate(data.times.tolist()):
        exact = sigma[j] * toy.oracle.marginal_score(sde, where, t).numpy()
        np.testing.assert_allclose(data.exact[j], exact, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(data.learned[j], exact + sigma[j] * np.array(shift), rtol=1e-5, atol=1e-6)


def test_paths_start_from_the_same_prior_draws_and_schedule_is_the_sdes(exact_page):
    data, _ = exact_page
    sde = _sde()
    np.testing.assert_array_equal(data.sde_paths[-1], data.ode_paths[-1])  # the same x_T at t = T
    assert not np.allclose(data.sde_paths[0], data.ode_paths[0])  # and different ends
    times = explorer_times(sde, len(data.times))
    np.testing.assert_allclose(data.times, times.numpy(), rtol=1e-6)
    assert data.times[0] == pytest.approx(sde.sampling_t_min) and data.times[-1] == pytest.approx(sde.T)
    np.testing.assert_allclose(data.log_snr, 2 * np.log(data.alpha / data.sigma), rtol=1e-4, atol=1e-4)


def test_sampler_panel_carries_the_comparisons_figures(exact_page):
    data, comparison = exact_page
    panel = data.samplers
    assert panel.labels == [run.spec.label for run in comparison.runs]
    assert panel.nfe == [run.nfe for run in comparison.runs]
    assert panel.energy_distance == [run.energy_distance for run in comparison.runs]
    assert panel.floor == comparison.floor["energy_distance"] and panel.entropy == comparison.entropy
    np.testing.assert_allclose(panel.x[1], comparison.runs[1].x.numpy(), rtol=1e-6)
    assert sampler_panel(comparison, comparison.runs[0].x, m=50).x.shape == (2, 50, 2)


def test_likelihood_panel_of_the_exact_score_matches_the_truth(exact_page):
    """The PF-ODE density of the exact score is the true density up to the solver's tolerance (1e-4)."""
    data, _ = exact_page
    grid = data.likelihood
    assert grid.true_log_prob is not None and grid.model_log_prob.shape == (10, 10)
    solved = ~torch.isnan(grid.model_log_prob)  # the exact score alone: where the data has mass (corners left out)
    assert 50 < int(solved.sum()) < 100
    assert float((grid.model_log_prob - grid.true_log_prob)[solved].abs().max()) < 0.02


def test_save_and_load_round_trip_in_half_precision(exact_page, tmp_path):
    data, _ = exact_page
    path = data.save(tmp_path / "e.npz")
    back = ExplorerData.load(path)
    for name in ("times", "samples", "density", "exact", "sde_paths"):
        np.testing.assert_allclose(getattr(back, name), getattr(data, name), rtol=2e-3, atol=1e-4)
    assert back.learned is None and back.error is None and back.title == data.title
    assert back.samplers.labels == data.samplers.labels and back.likelihood.nfe == data.likelihood.nfe
    (tmp_path / "bad.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="is not an explorer data file"):
        ExplorerData.load(tmp_path / "bad.npz")


# the command ----------------------------------------------------------------------------------------------------------
SMALL = ["--quick", "-n", "60", "--frames", "5", "--likelihood-grid", "6", "--json"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explore") / "run"
    assert train_cli(folder, "--steps", "4") == 0
    return folder


def test_explore_a_run_writes_one_page_under_10_mb(run, capsys):
    capsys.readouterr()
    assert main(["explore", "--checkpoint", str(run), *SMALL]) == 0
    summary = json.loads(capsys.readouterr().out)
    page = run / "explorer.html"
    assert summary["explorer"] == str(page) and page.stat().st_size < 10e6
    text = page.read_text()
    assert all(f'id="{name}"' in text for name in FIGURE_IDS)
    assert "<script src" not in text and 'src="http' not in text  # nothing to fetch at view time (see the browser)


def status(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as stop:  # argparse's refusals
        return stop.code


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explore-digits") / "digits"
    sets = ["--set", "model.kwargs.ch=8", "--set", "model.kwargs.groups=4", "--set", "train.batch_size=8"]
    assert main(["train", "--preset", "digits-ddpm", "--out", str(folder), "--steps", "1", *sets, "--json"]) == 0
    return folder


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explore-student") / "student"
    args = ["distill", "--teacher", "oracle:gmm", "--method", "consistency", "--train-steps", "2", "--json"]
    assert main([*args, "--out", str(folder)]) == 0
    return folder


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown toy", "unknown toy 'nope'; valid names are: 2spirals, 8gaussians"),
        ("toy without a score", "toy 'swissroll' has no closed-form score; --toy takes one of: 8gaussians"),
        ("both", "not both"),
        ("neither", "not both"),
        ("existing output", "already exists; pass --force"),
        ("image run", "the explorer is for 2D toy runs"),
        ("consistency student", "is a consistency model, which has no score for explore"),
        ("sde with a run", "--sde goes with --toy"),
        ("student with a toy", "--student and --solver belong to a run's model"),
    ],
)
def test_explore_refuses_in_one_line_and_writes_nothing(case, message, run, image_run, student, tmp_path, capsys):
    out = tmp_path / "new" / "page.html"
    args = {
        "unknown toy": ["--toy", "nope"],
        "toy without a score": ["--toy", "swissroll"],
        "both": ["--toy", TOY, "--checkpoint", str(run)],
        "neither": [],
        "existing output": ["--toy", TOY],
        "image run": ["--checkpoint", str(image_run)],
        "consistency student": ["--checkpoint", str(student)],
        "sde with a run": ["--checkpoint", str(run), "--sde", "ve"],
        "student with a toy": ["--toy", TOY, "--student", str(student)],
    }[case]
    if case == "existing output":
        out.parent.mkdir()
        out.write_text("mine")
    before = sorted(p.name for p in run.iterdir())
    capsys.readouterr()
    assert status(["explore", *args, "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err and message in err, err
    assert sorted(p.name for p in run.iterdir()) == before
    if case == "existing output":
        assert out.read_text() == "mine"
    else:
        assert not out.parent.exists()


# the page in a browser ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page_file(tmp_path_factory, toy):
    """The page of a slightly wrong model (the exact score shifted), with samplers and likelihood: every panel."""
    sde = _sde()
    data = held_out(DataConfig(kind="toy", name=TOY), 200, 0)
    model = ShiftedScore(toy.oracle, sde, [0.2, 0.0])
    lineup = [SamplerSpec("ddim", "ddim", {"steps": 3}), SamplerSpec("heun", "heun", {"steps": 8})]
    comparison = compare_samplers(sde, model, data.x, lineup=lineup, n=200, floor_reference=data.floor)
    page = explorer_data(sde, model, toy.sample, oracle=toy.oracle, extent=toy.extent, comparison=comparison,
                         held_out=data.x, likelihood_grid=6, **SIZES)  # fmt: skip
    return write_explorer(page, tmp_path_factory.mktemp("page") / "explorer.html")


def _points(page, figure: str, subplot: str) -> list[str]:
    """The drawn positions (SVG transforms) of the points of one panel."""
    return page.eval_on_selector_all(
        f"#{figure} g.subplot.{subplot} path.point", "els => els.map(e => e.getAttribute('transform'))"
    )


@pytest.mark.slow  # a headless browser: the default tier checks the page's data and markup above
def test_page_renders_offline_and_its_slider_and_menus_change_what_is_drawn(browser, page_file):
    page = open_page(browser, page_file.as_uri(), offline=True)
    try:
        for name in FIGURE_IDS:
            page.wait_for_selector(f"#{name} .main-svg")
        time_fig = FIGURE_IDS[0]
        at_T = _points(page, time_fig, "xy")
        assert len(at_T) == SIZES["n"]
        rail = page.locator(f"#{time_fig} rect.slider-rail-rect")
        shots, title = [], f"document.getElementById('{time_fig}').layout.title.text"
        for fraction in (0.05, 0.6):
            rail.scroll_into_view_if_needed()  # (a screenshot scrolls the page)
            box = rail.bounding_box()
            before = page.evaluate(title)
            page.mouse.click(box["x"] + fraction * box["width"], box["y"] + box["height"] / 2)
            page.wait_for_function(f"{title} !== {json.dumps(before)}", timeout=10_000)
            shots.append((_points(page, time_fig, "xy"), page.locator(f"#{time_fig}").screenshot()))
        (early, early_png), (late, late_png) = shots
        assert len(early) == len(late) == SIZES["n"]
        assert early != late and early != at_T  # the samples moved with t
        assert early_png != late_png  # and so did the picture

        lines = page.locator(f"#{time_fig} g.subplot.x5y6 path.js-line")  # the SDE panel: one line a draw's path
        assert lines.count() == SIZES["paths"]
        _choose(page, time_fig, "follow draw 2")
        page.wait_for_function(f"document.querySelectorAll('#{time_fig} g.subplot.x5y6 path.js-line').length > 6")
        widths = [lines.nth(i).evaluate("e => e.style.strokeWidth") for i in range(lines.count())]
        assert "2.5px" in widths  # the followed draw, drawn bold over the others

        samplers = FIGURE_IDS[1]
        page.locator(f"#{samplers}").scroll_into_view_if_needed()
        first = _points(page, samplers, "xy")
        title = page.eval_on_selector(f"#{samplers}", "e => e.layout.title.text")
        _choose(page, samplers, "ddim, 3 steps (NFE 4)")
        page.wait_for_function(
            f"document.getElementById('{samplers}').layout.title.text.startsWith('ddim, 3 steps')", timeout=10_000
        )
        assert title.startswith("heun") and _points(page, samplers, "xy") != first  # other samples drawn
        assert page.problems == [] and page.refused == [], (page.problems, page.refused)
    finally:
        page.close()


def _choose(page, figure: str, label: str) -> None:
    """Open the drop-down menu of ``figure`` and click the item ``label``."""
    page.locator(f"#{figure} g.updatemenu-header text.updatemenu-item-text").click(force=True)  # the text covers it
    page.locator(f"#{figure} g.updatemenu-dropdown-button", has_text=label).first.click(force=True)


def test_exact_score_page_of_the_command_has_no_learned_field(tmp_path, capsys):
    out = tmp_path / "ve.html"
    assert main(["explore", "--toy", "gmm", "--sde", "ve", "--out", str(out), *SMALL]) == 0
    text = out.read_text()
    assert "score error: none (the exact score alone)" in text and "VESDE" in text
    assert math.isfinite(json.loads(capsys.readouterr().out)["megabytes"])


def test_tiny_settings_are_checked(toy):
    with pytest.raises(ValueError, match="frames must be >= 2"):
        explorer_times(_sde(), 1)
    with pytest.raises(ValueError, match="needs a score_fn, an oracle or both"):
        explorer_data(_sde(), None, toy.sample)


def test_density_grid_on_the_support_only_leaves_the_rest_out(toy):
    """For the exact score of data with edges the flow is singular outside the data: the grid solves only where the
    true log-density is within SUPPORT_NATS of its peak, and there the exact score's density is the true one."""
    from scoresde.app.figures import SUPPORT_NATS, model_density_grid

    sde = _sde()
    grid = model_density_grid(sde, toy.oracle.score_fn(sde), extent=toy.extent, grid=8, true_log_prob=toy.log_prob,
                              support_only=True)  # fmt: skip
    kept = grid.true_log_prob > grid.true_log_prob.max() - SUPPORT_NATS
    assert 0 < int(kept.sum()) < 64 and bool(torch.isnan(grid.model_log_prob[~kept]).all())
    assert float((grid.model_log_prob[kept] - grid.true_log_prob[kept]).abs().max()) < 0.02
