r"""The end-to-end demo (`run_demo`, ``scoresde demo``): train a score model on a 2D toy with a known density, distil
a student, fit few-step solvers, compare the samplers, measure the likelihood against the truth, draw the teaching
figures and the explorer, and write ``report.md`` and ``metrics.json``."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch

from .._io import json_text
from ..evaluation.comparison import (
    Comparison,
    compare_samplers,
    default_lineup,
    solver_lineup,
    student_lineup,
)
from ..evaluation.held_out import held_out
from .report import COMPARE_FILES, likelihood_summary, write_comparison

__all__ = ["run_demo", "DEMO_FILES", "DEMO_DATA"]


DEMO_FILES = (
    "report.md",
    "metrics.json",
    "likelihood.json",
    "run",
    "student",
    "forward.png",
    "score_field.png",
    "trajectories.png",
    "density.png",
    "reverse.gif",
    "explorer.html",
    *COMPARE_FILES,
)
"""What `run_demo` writes into its folder (``run`` is the training run's folder, ``student`` its consistency
student's)."""

DEMO_DATA = "8gaussians"


def _demo_config(quick: bool, seed: int):
    """The demo's run: the ``toy-vp`` preset on 8 Gaussians; 5000 steps (about 90 s on 2 CPU cores), or
    for ``quick`` a small network for 400 steps (a few seconds: for tests, not for quality)."""
    from ..config.presets import preset
    from ..config.schema import override

    sets = [f"data.name={DEMO_DATA}", f"train.seed={seed}", "train.checkpoint_every=0"]
    if quick:
        sets += [
            "train.steps=400",
            "train.batch_size=256",
            "model.kwargs.width=64",
            "model.kwargs.depth=2",
            "train.warmup=50",
            "train.lr=3e-3",
            "train.ema_decay=0.99",
        ]
    else:
        sets += ["train.steps=5000"]
    return override(preset("toy-vp"), *sets)


def _demo_student(out: Path, quick: bool, *, device, progress: bool) -> tuple[list, object]:
    """The demo model distilled into a consistency model (consistency distillation, Heun teacher steps; 1,500 steps,
    about 50 s on 2 CPU cores, or 150 for ``quick``) in ``out/student``: its comparison points at 1, 2 and 4 NFE and
    the distillation's `TrainResult`."""
    from ..training.distill import distill, distillation_config
    from ..training.runs import load_score_model

    config = distillation_config(str(out / "run"), "consistency", train_steps=150 if quick else 1500)
    (result,) = distill(config, out / "student", device=device, progress=progress, resume=False, overwrite=True)
    student, config, _ = load_score_model(out / "student", device=device)
    return student_lineup(student, config, "student/"), result


DEMO_SOLVER_STEPS = (3, 4, 5)
"""The step counts of the demo's fitted solvers (`_demo_solvers`)."""


def _demo_solvers(out: Path, model, quick: bool, seed: int) -> tuple[list, dict]:
    """The demo model's few-step panel: solvers fitted to it (`scoresde.samplers.fit_solver`, 1,024 calibration
    draws, 300 Adam steps: about 10 s each on 2 CPU cores; ``quick``: 4 steps only, 40 Adam steps) at 3, 4 and 5
    NFE, saved in ``out/run/solvers`` with their pictures. Returns their comparison points and their fits."""
    import matplotlib.pyplot as plt

    from ..samplers.solver_fit import fit_solver
    from .result_figures import plot_solver

    specs, fits = [], {}
    for steps in (4,) if quick else DEMO_SOLVER_STEPS:
        fit = fit_solver(model.sde, model, steps, (1, 2), n=256 if quick else 1024, iterations=40 if quick else 300,
                         generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float32)  # fmt: skip
        path = fit.save(out / "run" / "solvers" / f"fitted-{steps}.json")
        fig = plot_solver(model.sde, fit)
        fig.savefig(path.with_suffix(".png"), dpi=100)
        plt.close(fig)
        specs += solver_lineup(fit, "run/solvers")
        fits[steps] = {"file": str(path.relative_to(out)), "seconds": fit.settings["seconds"],
                       "start_error": fit.start_error, "error": fit.error}  # fmt: skip
    return specs, fits


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str):
    """Adds the wall time of the block to ``timings[name]``."""
    clock = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - clock


def _demo_likelihood(out: Path, sde, model, data, toy, quick: bool, seed: int, progress: bool) -> tuple[dict, Any]:
    """The demo's likelihood against the truth on held-out points (``likelihood.json``) and its density grid."""
    from .figures import model_density_grid

    points = data.x[: 200 if quick else 1000]
    likelihood = likelihood_summary(
        sde, model, points, true_nll=-data.log_prob(points.double()), seed=seed, progress=progress
    )
    (out / "likelihood.json").write_text(json_text(likelihood))
    density = model_density_grid(
        sde, model, extent=toy.extent, grid=24 if quick else 64, true_log_prob=toy.log_prob, progress=progress
    )
    return likelihood, density


def _demo_animation(out: Path, sde, model, extent, quick: bool, seed: int, device) -> str:
    """The reverse SDE's walk (Euler–Maruyama, 100 steps) as ``reverse.gif``."""
    import matplotlib.pyplot as plt

    from ..samplers.sampling import sample
    from .figures import animate_reverse_process

    walk = sample(sde, model, (300 if quick else 1000, 2), "pc", steps=100, predictor="euler_maruyama",
                  corrector="none", generator=torch.Generator(device=device).manual_seed(seed), device=device,
                  return_trajectory=True)  # fmt: skip
    animation = animate_reverse_process(
        walk.trajectory, walk.times, extent=extent, frames=15 if quick else 40, title="reverse SDE"
    )
    animation.save(out / "reverse.gif", writer="pillow", dpi=60 if quick else 80)
    plt.close(animation.figure)
    return "reverse.gif"


def run_demo(
    out: str | Path, *, quick: bool = False, device: torch.device | str = "cpu", seed: int = 0, progress: bool = True
) -> dict:
    """The end-to-end demo on a 2D toy whose density is known (8 Gaussians, VP SDE): train, compare the
    samplers, measure the likelihood against the truth, draw the teaching figures, and write
    ``out/report.md``, ``out/metrics.json`` and the figures (`DEMO_FILES`). Returns the metrics.

    ``quick``: small model, short training, few points (18 s on 2 CPU cores, measured; for tests). The full demo
    takes about 5 minutes on 2 CPU cores (305-314 s measured from a fresh clone, as the README says).
    """
    import matplotlib.pyplot as plt

    from ..datasets import toy_dataset
    from ..training.trainer import Trainer
    from .explorer import write_explorer
    from .explorer_data import explorer_data
    from .figures import plot_forward_process, plot_model_density, plot_score_field, plot_trajectories
    from .result_figures import plot_training_curve

    start, out, timings = time.perf_counter(), Path(out), {}
    out.mkdir(parents=True, exist_ok=True)
    config = _demo_config(quick, seed)
    toy = toy_dataset(config.data.name)

    def save(fig, name: str) -> str:
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        return name

    with _timed(timings, "train"):
        trainer = Trainer(config, out / "run", device=device, progress=progress, resume=False, overwrite=True)
        trained = trainer.train()
        save(plot_training_curve(trained.history), "run/loss.png")
    model, sde = trainer.score_fn, trainer.sde

    with _timed(timings, "distil"):
        student, distilled = _demo_student(out, quick, device=device, progress=progress)

    with _timed(timings, "fit solvers"):
        solvers, fitted = _demo_solvers(out, model, quick, seed)

    with _timed(timings, "figures"):
        figures = [
            save(plot_forward_process(sde, toy.mixture, seed=seed), "forward.png"),
            save(plot_score_field(sde, model, mixture=toy.mixture, extent=toy.extent), "score_field.png"),
        ]
        data = held_out(config.data, 400 if quick else 2000, seed)
        figures.append(
            save(plot_trajectories(sde, model, seed=seed, extent=toy.extent, data=data.x), "trajectories.png")
        )

    with _timed(timings, "compare"):
        comparison = compare_samplers(
            sde,
            model,
            data.x,
            lineup=default_lineup(quick) + student + solvers,
            n=len(data.x),
            floor_reference=data.floor,
            true_log_prob=data.sample_log_prob,
            entropy=data.entropy,
            seed=seed,
            device=device,
            progress=progress,
        )
        figures += [p.name for p in write_comparison(comparison, data.x, out, extent=toy.extent)]

    with _timed(timings, "likelihood"):
        likelihood, density = _demo_likelihood(out, sde, model, data, toy, quick, seed, progress)
        figures.append(save(plot_model_density(sde, model, density=density), "density.png"))

    with _timed(timings, "explorer"):
        page = explorer_data(
            sde, model, toy.sample, oracle=toy.oracle, extent=toy.extent, title=f"scoresde demo: {toy.name}",
            model_name=f"the demo's model (step {trained.step})", frames=21 if quick else 41,
            n=300 if quick else 500, comparison=comparison, held_out=data.x, likelihood=density, seed=seed,
        )  # fmt: skip
        figures.append(write_explorer(page, out / "explorer.html").name)

    with _timed(timings, "animation"):
        figures.append(_demo_animation(out, sde, model, toy.extent, quick, seed, device))
    timings["total"] = time.perf_counter() - start

    metrics = {"data": config.data.name, "sde": repr(sde), "quick": quick, "seed": seed, "device": str(device),
               "train": {"steps": trained.step, "seconds": trained.seconds, "final_loss": trained.loss,
                         "parameters": sum(p.numel() for p in model.parameters())},
               "student": {"method": "consistency", "steps": distilled.step, "seconds": distilled.seconds},
               "fitted_solvers": fitted, "likelihood": likelihood, "compare": comparison.to_dict(),
               "best_sampler": comparison.best().spec.label, "entropy_nats": toy.entropy(),
               "timings_seconds": timings,
               "files": figures + ["report.md", "metrics.json", "likelihood.json"]}  # fmt: skip
    (out / "metrics.json").write_text(json_text(metrics))
    (out / "report.md").write_text(_demo_report(metrics, comparison))
    return metrics


def _fit_seconds(metrics: dict) -> str:
    """The fitted solvers' fitting times, in words."""
    seconds = [fit["seconds"] for fit in metrics["fitted_solvers"].values()]
    return f"{min(seconds):.0f}-{max(seconds):.0f} s a solver" if len(seconds) > 1 else f"{seconds[0]:.0f} s"


def _demo_report(metrics: dict, comparison: Comparison) -> str:
    lik, train = metrics["likelihood"], metrics["train"]
    return f"""# scoresde demo: a score model of `{metrics["data"]}`, checked against its exact density

Forward process: `{metrics["sde"]}`. Seed {metrics["seed"]}, device
`{metrics["device"]}`{", **quick settings** (not for quality)" if metrics["quick"] else ""}.

## 1. The forward process
Samples of p_t next to the closed-form density of the same marginal (the data is a Gaussian mixture, so
every p_t is one too).

![forward process](forward.png)

## 2. Training (denoising score matching)
{train["steps"]} steps in {train["seconds"]:.1f} s, {train["parameters"]:,} parameters,
final loss {train["final_loss"]:.4g}
(`run/` holds the checkpoint, config.yaml, metrics.csv and the loss curve).

![training curve](run/loss.png)

The learned score field against the exact one, sigma(t) x score, over the true p_t:

![score field](score_field.png)

## 3. Sampling: predictor-corrector against ODE against few-step solvers
All samplers start from the same prior draw. Quality: energy distance and sliced Wasserstein-2 to held-out
data, and the mean true NLL of the samples (a perfect sampler scores the entropy, {metrics["entropy_nats"]:.3f} nats).

{comparison.markdown()}
Read the last two columns too: a sampler that throws a few draws far from the data is hardly seen by the energy
distance, but the samples' true NLL and the sliced distance see it. With a plain `eps` network the deterministic
samplers (ODE, DDIM, Heun, DPM-Solver) did exactly that to the prior's tail draws (|x_T| > 3.5), where the
network's output saturates and the score stops pulling inward; this model is EDM-preconditioned
(`model.parameterization=edm`), whose score keeps the prior's linear pull there (docs/concepts/sampling.md).

The `consistency student` rows are the trained model distilled into a consistency model (`student/`, consistency
distillation with the model itself as teacher, {metrics["student"]["steps"]} steps in
{metrics["student"]["seconds"]:.0f} s): one to four network evaluations, next to the solvers at five and more. A
student this short is still blurred between the modes; `benchmarks/distillation.py` trains 6,000 steps (about 3
minutes) and reaches 1.5-3x the noise floor at 1-4 NFE on the gmm oracle (docs/concepts/distillation.md).

The `fitted solver` rows are what 3-5 NFE do at their best without a student: DPM-Solver++ 3M whose times and
per-step coefficients were fitted to this very model ({_fit_seconds(metrics)} of fitting; `run/solvers/` holds each
solver and a picture of its times and corrections; `scoresde fit-solver` makes one, `scoresde sample --solver`
uses it; docs/concepts/sampling.md).

![comparison](compare.png)

Reverse SDE against probability-flow ODE from the same starting noise:

![trajectories](trajectories.png)

An animation of the reverse SDE: `reverse.gif`.

![reverse process](reverse.gif)

## 4. Likelihood
On {lik["n"]} held-out points: exact NLL through the probability-flow ODE
**{lik["nll_nats"]:.4f} ± {lik["nll_standard_error"]:.4f} nats**
({lik["bits_per_dim"]:.4f} bits/dim, {lik["nfe"]} NFE); true NLL {lik["true_nll_nats"]:.4f}, paired gap
**{lik["nll_gap_nats"]:.4f} ± {lik["nll_gap_standard_error"]:.4f} nats**;
ELBO {lik["elbo_nats"]:.4f} ± {lik["elbo_standard_error"]:.4f} nats
(a bound on the NLL of the reverse-SDE model, which is a different model from the ODE's once the score is not
exact: it may fall below the ODE's NLL).

![model density against the true density](density.png)

## Explore it

[explorer.html](explorer.html) is one self-contained page (it works offline): a slider over t moves the forward
process, the learned score against the exact one and the reverse SDE's and ODE's paths; a menu switches between the
samplers above; the likelihood panel repeats the density figure interactively.

Timings (s): {", ".join(f"{k} {v:.1f}" for k, v in metrics["timings_seconds"].items())}.
"""
