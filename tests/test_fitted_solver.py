"""Few-step multistep solvers: iPNDM and DEIS against their definitions, and the fitted solver against closed forms.

The fitted solver must be its base with zero corrections (bit for bit), must drive the closed-form error of its
linear map toward zero on Gaussian data (the probability-flow map is linear there, and so is a multistep solve), and
fitted on one mixture must not be worse than its base on another it never saw (fresh draws, three evaluation seeds)."""

import json

import pytest
import torch

from scoresde import VESDE, VPSDE, sample, toy_dataset
from scoresde._stats import mean_and_standard_error, sliced_energy_distance
from scoresde.app.cli import main
from scoresde.oracles.gaussian_mixture import GaussianMixture, random_mixture
from scoresde.processes.grids import time_grid
from scoresde.samplers import FittedSolver, fit_solver

SDES = {"vp": VPSDE, "ve": VESDE}


def _base(sde, steps: int, t_min: float, order: int = 3) -> FittedSolver:
    """The base solver as a 'fit' with zero corrections on the start grid."""
    return FittedSolver(time_grid(sde, steps, "log_snr_warped", t_min), order, [[0.0] * 3] * steps, 0.0, 0.0, {})


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_zero_corrections_are_the_base_solver_bit_for_bit(name, order):
    sde = SDES[name]()
    score = toy_dataset("gmm").mixture.score_fn(sde)
    base = _base(sde, 6, sde.sampling_t_min, order)
    x_T = sde.prior_sampling((256, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    fitted = sample(sde, score, (256, 2), solver=base, x_T=x_T)
    dpm = sample(sde, score, (256, 2), "dpm_solver", schedule=base.times, order=order, denoise=False, x_T=x_T)
    assert torch.equal(fitted.x, dpm.x) and fitted.nfe == dpm.nfe == 6


@pytest.mark.parametrize("name", SDES)
def test_ipndm_and_deis_are_ddim_at_order_one_and_converge_at_their_order(name):
    """Order 1 is DDIM to rounding; at higher order the error against a tight solve falls faster than first order
    from 20 to 40 steps (by more than 2^2 = 4; measured 4.5-12)."""
    sde = SDES[name]()
    score = toy_dataset("gmm").mixture.score_fn(sde)
    x_T = sde.prior_sampling((512, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    kw = dict(x_T=x_T, denoise=False, schedule="edm")
    ddim = sample(sde, score, (512, 2), "ddim", steps=8, **kw).x
    tight = sample(sde, score, (512, 2), "dpm_solver", order=3, steps=512, x_T=x_T, denoise=False).x
    for sampler, order in (("ipndm", 4), ("deis", 3)):
        first = sample(sde, score, (512, 2), sampler, steps=8, order=1, **kw)
        assert float((first.x - ddim).abs().max()) < 1e-12 and first.nfe == 8
        errors = [
            float((sample(sde, score, (512, 2), sampler, steps=k, order=order, **kw).x - tight).pow(2).sum(1).mean())
            for k in (20, 40)
        ]
        assert errors[0] / errors[1] > 4, (sampler, errors)


@pytest.mark.parametrize("name", SDES)
def test_the_fitted_solver_drives_the_closed_form_error_of_a_gaussian_toward_zero(name):
    r"""Gaussian data $N(\mu, \mathrm{diag}(s^2))$: the probability-flow map from $T$ to $t_{min}$ is
    $x \mapsto \alpha_{t}\mu + (C_t / C_T)^{1/2}(x - \alpha_T\mu)$, $C_t = \alpha_t^2 s^2 + \sigma_t^2$, and a
    multistep solve is an affine map $Ax + b$ too (read off from the origin and the unit vectors). The fitted
    4-step solver's map error, in closed form, must be a thousandth of its base's (measured: 1e-8 and 1e-8 of it)."""
    sde = SDES[name]()
    mu, s2 = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.09, 1.44], dtype=torch.float64)
    score = GaussianMixture([1.0], mu[None], torch.diag(s2)[None]).score_fn(sde)
    fit = fit_solver(sde, score, 4, (1, 2), n=512, iterations=200, start="log_snr_warped")
    T, t = (torch.tensor(v, dtype=torch.float64) for v in (sde.T, float(fit.times[-1])))
    c = lambda u: sde.alpha(u) ** 2 * s2 + sde.sigma(u) ** 2  # noqa: E731
    A = torch.diag((c(t) / c(T)).sqrt())
    b = sde.alpha(t) * mu - A @ (sde.alpha(T) * mu)
    points = torch.cat([torch.zeros(1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)])

    def map_error(solver: FittedSolver) -> float:
        out = sample(sde, score, (3, 2), solver=solver, x_T=points).x
        A_k, b_k = (out[1:] - out[0]).T, out[0]
        return float(sde.prior_std**2 * (A_k - A).pow(2).sum() + (b_k - b).pow(2).sum())

    assert map_error(fit) < 1e-3 * map_error(_base(sde, 4, float(t)))


@pytest.mark.parametrize("name", SDES)
def test_a_solver_fitted_on_one_mixture_is_no_worse_on_another(name):
    """Fitted on one random mixture, sampled with another's exact score (fresh prior draws, three evaluation seeds):
    the energy distance to that mixture's samples is not above the base solver's by more than the evaluation noise
    (measured: at the floor, where the base is 2-5x above it)."""
    sde = SDES[name]()
    seen, unseen = random_mixture(2, 4, seed=1), random_mixture(2, 4, seed=2)
    fit = fit_solver(sde, seen.score_fn(sde), 5, (1, 2), n=512, iterations=150, start="log_snr_warped")
    base, score = _base(sde, 5, float(fit.times[-1])), unseen.score_fn(sde)
    distances = {"base": [], "fitted": []}
    for seed in range(3):
        g = torch.Generator().manual_seed(100 + seed)
        x_T = sde.prior_sampling((4000, 2), g, dtype=torch.float64)
        truth = unseen.sample(4000, g, dtype=torch.float64)
        for label, solver in (("base", base), ("fitted", fit)):
            distances[label].append(
                sliced_energy_distance(sample(sde, score, (4000, 2), solver=solver, x_T=x_T).x, truth)
            )
    (m_f, se_f), (m_b, se_b) = (mean_and_standard_error(torch.tensor(distances[k])) for k in ("fitted", "base"))
    assert m_f <= m_b + 3 * (se_f**2 + se_b**2) ** 0.5, distances


def test_the_solver_file_round_trips_and_bad_files_and_clashes_are_refused(tmp_path):
    sde = VPSDE()
    score = toy_dataset("gmm").mixture.score_fn(sde)
    fit = fit_solver(sde, score, 3, (1, 2), n=64, iterations=3)
    path = fit.save(tmp_path / "s.json")
    loaded = FittedSolver.load(path, sde, score)
    assert torch.equal(loaded.times, fit.times) and loaded.corrections == fit.corrections and loaded.steps == 3
    record = json.loads(path.read_text())
    for edit, message in (
        ({"order": 7}, "order must be 1, 2 or 3"),
        ({"times": record["times"][::-1]}, "times must decrease strictly"),
        ({"corrections": record["corrections"][:2]}, "one list of finite corrections per step"),
        ({"format": "pickle"}, "format 'pickle'"),
        ({"steps": 9}, "says 9 steps"),
    ):
        (tmp_path / "bad.json").write_text(json.dumps({**record, **edit}))
        with pytest.raises(ValueError, match=message):
            FittedSolver.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="is a fitted solver for another forward SDE"):
        FittedSolver.load(path, VESDE(), score)
    with pytest.raises(ValueError, match="drop sampler, steps"):
        sample(sde, score, (4, 2), "ddim", solver=fit, steps=7)
    with pytest.raises(ValueError, match="cannot reach its base's order 3"):
        fit_solver(sde, score, 2, (1, 2))
    with pytest.raises(ValueError, match="unknown objective 'fid'"):
        fit_solver(sde, score, 3, (1, 2), objective="fid")


def test_fit_solver_sample_and_compare_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = ["--set", "model.kwargs.width=32", "--set", "model.kwargs.depth=1"]
    assert main(["train", "--preset", "toy-vp", "--out", str(run), "--steps", "30", *tiny, "--json"]) == 0
    capsys.readouterr()
    args = ["fit-solver", "--checkpoint", str(run), "--steps", "4", "-n", "128", "--iterations", "20", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["error"] <= out["start_error"] and (run / "solvers" / "fitted-4.png").is_file()
    solver = run / "solvers" / "fitted-4.json"
    assert main(["sample", "--checkpoint", str(run), "--solver", str(solver), "-n", "64", "--out",
                 str(tmp_path / "s.npz"), "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["nfe"] == 4
    assert main(["compare", "--checkpoint", str(run), "--solver", str(solver), "--quick", "-n", "200", "--out",
                 str(tmp_path / "cmp"), "--json"]) == 0  # fmt: skip
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert any(r["label"] == "fitted solver (fitted-4), 4 steps" and r["nfe"] == 4 for r in runs)
    other = tmp_path / "other"
    assert main(["train", "--preset", "toy-vp", "--out", str(other), "--steps", "2", *tiny, "--json"]) == 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(other), "--solver", str(solver), "--out", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a fitted solver for another model" in err
    assert main(["fit-solver", "--checkpoint", str(run), "--steps", "2", "--out", str(tmp_path / "k2.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "below the base solver's order 3" in err and not (tmp_path / "k2.json").exists()
