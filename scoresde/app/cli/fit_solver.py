"""``scoresde fit-solver``: fit a multistep solver's coefficients and times to a run's model; store it in the run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...models.network import sample_shape
from ...samplers.solver_fit import OBJECTIVES
from .common import (
    UserError,
    checkpoint_option,
    command,
    count,
    load_model,
    out_file,
    run_folder_of,
)


def cmd_fit_solver(args: argparse.Namespace) -> dict:
    """Fit the solver (`scoresde.samplers.solver_fit.fit_solver`) and store it with its picture in the run."""
    import torch
    from torch import nn

    from ...samplers.solver_fit import fit_solver
    from ..result_figures import plot_solver

    if args.steps < args.order:
        raise UserError(
            f"--steps {args.steps} is below the base solver's order {args.order}; pass --steps >= {args.order}"
        )
    if args.objective not in OBJECTIVES:  # argparse's choices say it first; kept for a library-made namespace
        raise UserError(f"unknown --objective {args.objective!r}; valid: {', '.join(OBJECTIVES)}")
    model, _, step, _ = load_model(args)
    out = Path(args.out) if args.out else run_folder_of(args.checkpoint) / "solvers" / f"fitted-{args.steps}.json"
    out = out_file(str(out), ".json", args.force, out.with_suffix(".png").name)
    dtype = next((p.dtype for p in model.parameters()), torch.float32) if isinstance(model, nn.Module) else None
    fit = fit_solver(model.sde, model, args.steps, (1, *sample_shape(model)), order=args.order, n=args.n,
                     iterations=args.iterations, objective=args.objective, batch_size=args.batch_size,
                     generator=torch.Generator().manual_seed(args.seed), dtype=dtype or torch.float32,
                     progress=not args.json)  # fmt: skip
    fit.save(out)
    plot_solver(model.sde, fit).savefig(out.with_suffix(".png"), dpi=100)
    return {
        "solver": str(out),
        "picture": str(out.with_suffix(".png")),
        "steps": fit.steps,
        "times": fit.times.tolist(),
        "start_error": fit.start_error,
        "error": fit.error,
        "seconds": fit.settings["seconds"],
        "checkpoint_step": step,
        "use": f"scoresde sample --checkpoint {args.checkpoint} --solver {out} --out SAMPLES.npz",
    }


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``scoresde fit-solver``: its sub-parser and options."""
    fit = command(
        sub,
        "fit-solver",
        cmd_fit_solver,
        "fit a few-step solver's coefficients and times to a run's model: DPM-Solver++ with fitted corrections",
        "scoresde fit-solver --checkpoint runs/toy --steps 5\n"
        "  scoresde sample --checkpoint runs/toy --solver runs/toy/solvers/fitted-5.json --out runs/toy/s5.npz\n"
        "  scoresde compare --checkpoint runs/toy --solver runs/toy/solvers/fitted-5.json --quick",
    )
    checkpoint_option(fit)
    fit.add_argument("--steps", type=count, default=5, help="steps of the solver (NFE: no final denoising)")
    fit.add_argument("--order", type=int, choices=(1, 2, 3), default=3, help="the base DPM-Solver++ order")
    fit.add_argument("-n", type=count, default=1024, help="calibration draws of the prior (never the evaluation draws)")
    fit.add_argument("--iterations", type=count, default=300, help="Adam steps")
    fit.add_argument("--batch-size", type=count, help="calibration draws a step (default all)")
    fit.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="trajectory",
        help="the tight solve's end points, the energy distance to its samples, or both",
    )
    fit.add_argument("--out", help="solver file (.json; default RUN/solvers/fitted-STEPS.json), picture beside it")
