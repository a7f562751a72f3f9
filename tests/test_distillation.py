"""Few-step students against closed forms: for Gaussian data the probability-flow map is linear and known, so a
distilled student's map is measured against it; the boundary condition, the losses at the exact answer, exact resume,
the consistency sampler and the one-line errors of the distill command."""

import dataclasses
import json
import math

import pytest
import torch

from scoresde import VESDE, VPSDE, GaussianMixture, sample
from scoresde.app.cli import main
from scoresde.config.schema import config_from_dict
from scoresde.models import ModelSpec, create_model
from scoresde.models.consistency import ConsistencyModel, noise_to_signal
from scoresde.samplers import fit_grid
from scoresde.training.distillation import (
    consistency_loss,
    consistency_times,
    progressive_grid,
    progressive_loss,
    teacher_step,
)
from scoresde.training.trainer import Trainer

MEAN, STD = torch.tensor([0.5, -0.3], dtype=torch.float64), 0.6
GAUSS = GaussianMixture([1.0], [MEAN.tolist()], [[STD**2, STD**2]])
SDES = {"vp": VPSDE, "ve": lambda: VESDE(sigma_min=0.01, sigma_max=10.0)}


def flow_map(sde, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    r"""The exact probability-flow map from ``t`` to ``s`` for N(m, v I) data: the marginal at t is
    N(alpha_t m, alpha_t^2 v + sigma_t^2) and the flow is the linear map between the two standardisations."""
    std = lambda u: torch.sqrt(sde.alpha(u) ** 2 * STD**2 + sde.sigma(u) ** 2)[:, None]  # noqa: E731
    mean = lambda u: sde.alpha(u)[:, None] * MEAN.to(x.dtype)  # noqa: E731
    return mean(s) + std(s) / std(t) * (x - mean(t))


class ExactConsistency(torch.nn.Module):
    """The exact consistency function of the Gaussian data: the flow map from t to t_min."""

    spec = ModelSpec(output="consistency")

    def __init__(self, sde, t_min: float, scale: float = 1.0) -> None:
        super().__init__()
        self.sde, self.t_min, self.scale, self.sigma_data = sde, t_min, scale, STD

    def forward(self, x, t):
        exact = flow_map(self.sde, x, t, torch.full_like(t, self.t_min))
        return x + self.scale * (exact - x) if self.scale != 1.0 else exact


@pytest.mark.parametrize("sde_name", SDES)
def test_consistency_function_meets_the_boundary_condition_to_round_off(sde_name):
    sde = SDES[sde_name]()
    torch.manual_seed(0)
    model = ConsistencyModel(create_model("mlp", dim=2, width=16, depth=1).double(), sde, 1e-3, sigma_data=0.7)
    with torch.no_grad():
        model.net.out.weight.normal_()  # a network whose output is far from zero
        x = torch.randn(64, 2, dtype=torch.float64) * 3
        out = model(x, torch.full((64,), 1e-3, dtype=torch.float64))
        assert float((out - x).abs().max()) < 1e-13
        assert float((model(x, torch.full((64,), 0.5, dtype=torch.float64)) - x).abs().max()) > 1e-2


@pytest.mark.parametrize("sde_name", SDES)
def test_consistency_distillation_loss_is_zero_at_the_exact_flow_map(sde_name):
    """With the exact score the heun teacher step has O(h^3) error: on 400 times the loss at the exact map is
    10^5 times below the loss of a map 1 % off it."""
    sde = SDES[sde_name]()
    x0 = GAUSS.sample(2000, torch.Generator().manual_seed(0), dtype=torch.float64)
    times = 400
    score = GAUSS.score_fn(sde)
    exact = consistency_loss(ExactConsistency(sde, 1e-3), ExactConsistency(sde, 1e-3), sde, x0, times, teacher=score,
                             generator=torch.Generator().manual_seed(1)).mean()  # fmt: skip
    off = ExactConsistency(sde, 1e-3, scale=0.99)
    perturbed = consistency_loss(off, ExactConsistency(sde, 1e-3), sde, x0, times, teacher=score,
                                 generator=torch.Generator().manual_seed(1)).mean()  # fmt: skip
    assert float(perturbed) > 0 and float(exact) < 1e-5 * float(perturbed), (float(exact), float(perturbed))


def test_teacher_steps_converge_to_the_flow_map():
    """heun is second order and ddim first order against the closed-form map (error ratios when halving h)."""
    sde = VPSDE()
    score = GAUSS.score_fn(sde)
    x = GAUSS.marginal(sde, torch.tensor(0.8, dtype=torch.float64)).sample(500, torch.Generator().manual_seed(0))
    for solver, order in (("heun", 2), ("ddim", 1)):
        errors = []
        for n in (8, 16):
            grid = torch.linspace(0.8, 0.1, n + 1, dtype=torch.float64)
            y = x
            for a, b in zip(grid[:-1], grid[1:]):
                y = teacher_step(sde, score, y, a.expand(500), b.expand(500), solver)
            exact = flow_map(
                sde, x, torch.full((500,), 0.8, dtype=torch.float64), torch.full((500,), 0.1, dtype=torch.float64)
            )
            errors.append(float((y - exact).abs().max()))
        assert errors[0] / errors[1] > 2**order * 0.8, (solver, errors)


def test_progressive_target_is_the_denoiser_whose_ddim_step_matches_two_teacher_steps():
    """The loss's x_tilde: one DDIM step from t with D = x_tilde lands where two teacher DDIM steps land, so the loss
    of a student with that denoiser is zero to round-off and positive for the teacher itself."""
    sde = VPSDE()
    teacher = GAUSS.score_fn(sde)
    grid = progressive_grid(sde, 2)  # the teacher's 4 steps, the student's 2

    class TwoStep(torch.nn.Module):
        def forward(self, x, t):
            i = torch.argmin((grid[None, :] - t[:, None]).abs(), dim=1)  # each row's step
            mid, end = grid[i + 1], grid[i + 2]
            z_end = teacher_step(sde, teacher, teacher_step(sde, teacher, x, t, mid, "ddim"), mid, end, "ddim")
            ratio = sde.sigma(end) / sde.sigma(t)
            d = (z_end - ratio[:, None] * x) / (sde.alpha(end) - ratio * sde.alpha(t))[:, None]
            return (sde.alpha(t)[:, None] * d - x) / sde.sigma(t)[:, None] ** 2  # the score whose denoiser is d

    x0 = GAUSS.sample(256, torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = progressive_loss(TwoStep(), teacher, sde, x0, grid, generator=torch.Generator().manual_seed(1))
    assert float(loss.max()) < 1e-20
    own = progressive_loss(teacher, teacher, sde, x0, grid, generator=torch.Generator().manual_seed(1))
    assert float(own.mean()) > 1e-6


def _config(method: str, steps: int, train_steps: int, **distill):
    return config_from_dict(
        {
            "sde": {"name": "vp"},
            "model": {"name": "mlp", "parameterization": "edm", "sigma_data": STD,
                      "kwargs": {"dim": 2, "width": 64, "depth": 2}},
            "data": {"kind": "toy", "name": "gmm"},
            "train": {"steps": train_steps, "batch_size": 256, "lr": 2e-3, "warmup": 50, "lr_schedule": "cosine",
                      "checkpoint_every": 0, "ema_decay": 0.99},
            "distill": {"method": method, "teacher": "oracle:gmm", "steps": steps, **distill},
        }
    )  # fmt: skip


class _GaussianData:
    """Point the trainer's data stream at the Gaussian (the toys have no single-Gaussian data set)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def __enter__(self):
        import scoresde.training as training

        self.saved = training.DataStream.batch
        from scoresde.training.objectives import Batch

        training.DataStream.batch = lambda stream, step, generator: Batch(
            GAUSS.sample(256, generator).float().to(stream.device), None, step
        )
        return self.trainer

    def __exit__(self, *exc):
        import scoresde.training as training

        training.DataStream.batch = self.saved


def test_consistency_student_recovers_the_linear_flow_map(tmp_path):
    """Consistency distillation with the exact Gaussian score as teacher, 600 steps: the student's f(x_t, t) is the
    closed-form flow map to t_min within 15 % of the data's standard deviation (RMS) at every t tried, on and off the
    discretisation's 18 times (measured 0.02-0.11 of it), and its one-step samples have the data's mean and standard
    deviation within 0.1."""
    config = _config("consistency", 1, 600, n_times=18)
    trainer = Trainer(config, tmp_path / "cd", progress=False, teacher=GAUSS.score_fn(config.sde.build()))
    with _GaussianData(trainer):
        trainer.train()
    student, sde = trainer.score_fn, trainer.sde
    x0 = GAUSS.sample(4000, torch.Generator().manual_seed(2))
    for t_value in (0.01, 0.05, 0.3, 0.7, 1.0):
        t = torch.full((4000,), t_value)
        x = sde.perturb(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(3)))
        with torch.no_grad():
            error = student(x, t).double() - flow_map(
                sde, x.double(), t.double(), torch.full((4000,), 1e-3, dtype=torch.float64)
            )
        assert float(error.pow(2).mean().sqrt()) < 0.15 * STD, (t_value, float(error.pow(2).mean().sqrt()))
    with torch.no_grad():
        result = sample(sde, student, (4000, 2), "consistency", steps=1, generator=torch.Generator().manual_seed(4))
    assert result.nfe == 1
    assert float((result.x.double().mean(0) - MEAN).abs().max()) < 0.1
    assert abs(float(result.x.std(0).mean()) - STD) < 0.1


def test_progressive_student_recovers_its_teachers_two_step_map(tmp_path):
    """Progressive distillation to one DDIM step from the exact Gaussian score (teacher: 2 DDIM steps): the linear
    two-step map is known in closed form; the student's one-step map matches it within 5 % of the data's std."""
    config = _config("progressive", 1, 600)
    trainer = Trainer(config, tmp_path / "pd", progress=False, teacher=GAUSS.score_fn(config.sde.build()))
    with _GaussianData(trainer):
        trainer.train()
    student, sde = trainer.score_fn, trainer.sde
    grid = progressive_grid(sde, 1)
    x = sde.prior_sampling((4000, 2), torch.Generator().manual_seed(5), dtype=torch.float64)
    teacher = GAUSS.score_fn(sde)
    t, mid, end = (grid[k].expand(4000) for k in range(3))
    two_steps = teacher_step(sde, teacher, teacher_step(sde, teacher, x, t, mid, "ddim"), mid, end, "ddim")
    with torch.no_grad():
        result = sample(sde, student, (4000, 2), "ddim", steps=1, schedule="log_snr", denoise=False, x_T=x.float())
    assert result.nfe == 1
    error = (result.x.double() - two_steps).pow(2).mean().sqrt()
    assert float(error) < 0.05 * STD, float(error)


@pytest.mark.parametrize("method", ["consistency", "progressive", "consistency_training"])
def test_a_distillation_run_resumes_exactly(tmp_path, method):
    """20 + 20 steps with a restart (the consistency target network and the EMA in the checkpoint) give the weights
    of 40 in one run."""
    config = dataclasses.replace(
        _config(method, 2, 40), train=dataclasses.replace(_config(method, 2, 40).train, batch_size=32)
    )
    whole = Trainer(config, tmp_path / "whole", progress=False)
    whole.train()
    Trainer(config, tmp_path / "parts", progress=False).train(20)
    resumed = Trainer(config, tmp_path / "parts", progress=False)
    resumed.train()
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    if method == "consistency":
        for a, b in zip(whole.objective.ema.model.parameters(), resumed.objective.ema.model.parameters()):
            assert torch.equal(a, b)


def test_consistency_sampler_counts_its_evaluations_and_refuses_a_score():
    sde = VPSDE()
    exact = ExactConsistency(sde, sde.sampling_t_min)
    for steps in (1, 2, 4):
        result = sample(sde, exact, (2000, 2), "consistency", steps=steps, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert result.nfe == steps
        # the exact map sends the prior's N(0, 1) to... the flow of N(0,1) at T: the data's law at t_min
        std_end = math.sqrt(
            float(sde.alpha(torch.tensor(1e-3)) ** 2) * STD**2 + float(sde.sigma(torch.tensor(1e-3)) ** 2)
        )
        assert abs(float(result.x.std(0).mean()) - std_end) < 0.05
    with pytest.raises(ValueError, match="needs a consistency model"):
        sample(sde, GAUSS.score_fn(sde), (4, 2), "consistency", dtype=torch.float64)
    with pytest.raises(ValueError, match="sample it with sampler 'consistency'"):
        sample(sde, exact, (4, 2), "ddim", dtype=torch.float64)


def test_distill_command_errors_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "student")
    assert main(["distill", "--teacher", str(tmp_path / "missing"), "--method", "consistency", "--out", out]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["distill", "--teacher", "oracle:moons", "--method", "consistency", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "no toy with an exact score is called 'moons'; valid: " in err and "moons" not in err.split("valid: ")[1]
    assert main(["distill", "--teacher", "oracle:gmm", "--method", "progressive", "--student-steps", "2",
                 "--teacher-steps", "6", "--train-steps", "2", "--out", out, "--json"]) == 2  # fmt: skip
    assert "power of two" in capsys.readouterr().err
    assert main(["distill", "--teacher", "oracle:gmm", "--method", "progressive", "--student-steps", "2",
                 "--train-steps", "3", "--out", out, "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["sample", "--checkpoint", out, "--steps", "4", "-n", "10", "--out", str(tmp_path / "s.npz")]) == 2
    assert "distilled for 2 DDIM steps" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", out, "--sampler", "heun", "-n", "10", "--out", str(tmp_path / "s.npz")]) == 2
    assert "samples with --sampler ddim" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", out, "-n", "10", "--out", str(tmp_path / "s.npz"), "--json"]) == 0
    assert '"nfe": 2' in capsys.readouterr().out
    assert noise_to_signal(VPSDE(), torch.tensor([1.0])) > 100  # VP's T is far out in sigma/alpha
    cd = str(tmp_path / "cd")
    assert main(["distill", "--teacher", "oracle:gmm", "--method", "consistency", "--train-steps", "2", "--out", cd,
                 "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["likelihood", "--checkpoint", cd, "-n", "10", "--out", str(tmp_path / "l.json")]) == 2
    assert "consistency model, which has no score" in capsys.readouterr().err


def test_consistency_times_follow_the_rho_spacing_at_any_position():
    """At integer positions the discretisation is the samplers' edm grid (reversed); between them it is monotone."""
    from scoresde.samplers import time_grid

    sde = VPSDE()
    grid = consistency_times(sde, 18, 1e-3)
    torch.testing.assert_close(grid, time_grid(sde, 17, "edm", 1e-3).flip(0), rtol=1e-9, atol=1e-12)
    between = consistency_times(sde, 18, 1e-3, positions=torch.linspace(0, 17, 171, dtype=torch.float64))
    assert bool((between[1:] > between[:-1]).all()) and float(between[0]) == 1e-3 and float(between[-1]) == 1.0


@pytest.mark.parametrize("sde_name", SDES)
def test_a_grid_fitted_to_the_exact_score_beats_the_fixed_grid_on_fresh_draws(sde_name):
    """DPM-Solver++ 3M with 5 NFE on gmm: the grid fitted on 256 calibration draws (measured: 50x and 33x the floor on
    the warped grid, 1.7x and 1.8x fitted, VP and VE) lowers the energy distance of 4,000 fresh samples at least
    threefold; it is a valid grid (decreasing from T to t_min) and its calibration error is below the start's."""
    from scoresde import energy_distance, toy_dataset

    sde, toy = SDES[sde_name](), toy_dataset("gmm")
    score = toy.oracle.score_fn(sde)
    fit = fit_grid(sde, score, "dpm_solver", 5, (1, 2), order=3, n=256, iterations=150,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert len(fit.times) == 6 and bool((fit.times[1:] < fit.times[:-1]).all())
    assert float(fit.times[0]) == sde.T and float(fit.times[-1]) == sde.sampling_t_min
    assert fit.error < fit.start_error
    truth = toy.sample(4000, torch.Generator().manual_seed(1)).double()
    energies = {}
    for label, schedule in (("warped", "log_snr_warped"), ("fitted", fit.times)):
        result = sample(sde, score, (4000, 2), "dpm_solver", steps=5, schedule=schedule, order=3, denoise=False,
                        dtype=torch.float64, generator=torch.Generator().manual_seed(2))  # fmt: skip
        assert result.nfe == 5
        energies[label] = energy_distance(result.x, truth)
    assert energies["fitted"] < energies["warped"] / 3, energies


class PosteriorMeanAsConsistency(torch.nn.Module):
    """A wrong consistency function with a known best grid: Tweedie's denoiser E[x_0 | x_t] of N(0, s^2) data,
    k(t) x with k = alpha s^2 / (alpha^2 s^2 + sigma^2). Two-step consistency sampling with it gives
    Var = k(tau)^2 (alpha^2 Var(x_1) + sigma^2) at the middle time tau; from x_1 = k(T) x_T ~ 0 that is
    s^2 r / (1 + r)^2, r = sigma^2 / (alpha^2 s^2), largest (closest to the data's s^2) at r = 1:
    the best middle time has sigma/alpha = s."""

    spec = ModelSpec(output="consistency")

    def __init__(self, sde, std: float) -> None:
        super().__init__()
        self.sde, self.t_min, self.std = sde, 1e-3, std

    def forward(self, x, t):
        alpha, sigma = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        return alpha * self.std**2 / (alpha**2 * self.std**2 + sigma**2) * x


@pytest.mark.parametrize("sde_name", SDES)
def test_a_consistency_grid_fitted_to_data_finds_the_closed_form_best_time(sde_name):
    sde, std = SDES[sde_name](), 0.8
    model = PosteriorMeanAsConsistency(sde, std)
    data = torch.randn(2048, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * std
    fit = fit_grid(sde, model, "consistency", 2, (1, 1), n=2048, data=data, iterations=60)
    ratio = float(noise_to_signal(sde, fit.times[1:2])) / std
    assert 0.7 < ratio < 1.45 and fit.error < fit.start_error, (ratio, fit.error, fit.start_error)
    with pytest.raises(ValueError, match=r"data must be finite samples shaped \[m, 1\]"):
        fit_grid(sde, model, "consistency", 2, (1, 1), n=16, data=torch.zeros(8, 2))


def test_fit_grid_sample_with_it_and_compare_a_student_from_the_command_line(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--preset", "toy-vp", "--out", run, "--steps", "20", "--json"]) == 0
    capsys.readouterr()
    assert main(["fit-grid", "--checkpoint", run, "--steps", "3", "--option", "order=2", "-n", "64", "--iterations",
                 "30", "--json"]) == 0  # fmt: skip
    grid = tmp_path / "run" / "grids" / "dpm_solver-3.json"
    assert grid.is_file() and grid.with_suffix(".png").is_file()
    capsys.readouterr()
    out = str(tmp_path / "s.npz")
    assert main(["sample", "--checkpoint", run, "--grid", str(grid), "-n", "50", "--out", out, "--json"]) == 0
    text = capsys.readouterr().out
    assert '"nfe": 3' in text and '"schedule": "custom"' in text and '"order": 2' in text
    assert main(["sample", "--checkpoint", run, "--grid", str(grid), "--steps", "7", "-n", "5", "--out",
                 str(tmp_path / "t.npz")]) == 2  # fmt: skip
    assert "has 3 steps" in capsys.readouterr().err
    assert main(["fit-grid", "--checkpoint", run, "--steps", "3", "-n", "64"]) == 2  # the grid exists: --force
    student = str(tmp_path / "student")
    assert main(["distill", "--teacher", run, "--method", "consistency", "--train-steps", "3", "--out", student,
                 "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["fit-grid", "--checkpoint", student, "--steps", "2", "-n", "64", "--iterations", "8", "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["grid"].endswith("consistency-2.json") and len(fitted["times"]) == 3
    assert main(["sample", "--checkpoint", student, "--grid", fitted["grid"], "-n", "20", "--out",
                 str(tmp_path / "c.npz"), "--json"]) == 0  # fmt: skip
    assert '"nfe": 2' in capsys.readouterr().out
    assert main(["fit-grid", "--checkpoint", student, "--sampler", "ddim", "--steps", "2", "--force"]) == 2
    assert "fit the grid of --sampler consistency" in capsys.readouterr().err
    assert main(["compare", "--checkpoint", run, "--quick", "-n", "100", "--student", student, "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [(r["nfe"], r["label"].split(",")[0]) for r in runs[-3:]] == [
        (k, "consistency student (student)") for k in (1, 2, 4)
    ]
