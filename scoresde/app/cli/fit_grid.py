"""``scoresde fit-grid``: fit a sampler's time grid to a run's score and store it with the run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...models.network import sample_shape
from ...processes.seam import spec_of
from .common import (
    UserError,
    checkpoint_option,
    command,
    count,
    load_model,
    out_file,
    parse_options,
    run_folder_of,
)


def cmd_fit_grid(args: argparse.Namespace) -> dict:
    """Fit a sampler's time grid to a run's score (`scoresde.samplers.fit_grid`) and store it with the run."""

    import torch

    from ...evaluation.held_out import held_out
    from ...samplers import fit_grid, time_grid
    from ...samplers.grid_fit import check_grid_sampler
    from ..result_figures import plot_grid

    options = parse_options(args.option)
    model, data_config, step, _ = load_model(args)
    consistency = spec_of(model).output == "consistency"
    sampler = check_grid_sampler(args.sampler or ("consistency" if consistency else "dpm_solver"))
    if consistency and sampler != "consistency":
        raise UserError(f"{args.checkpoint} is a consistency model: fit the grid of --sampler consistency")
    data, start = None, ("edm", "log_snr_warped") if sampler == "consistency" else ("log_snr_warped",)
    if args.to_data or sampler == "consistency":
        if data_config is None:
            raise UserError(f"--to-data needs the run's data set, and {args.checkpoint} names none")
        data = held_out(data_config, args.n, seed=args.seed + 1).floor.to(args.device)
    out = Path(args.out) if args.out else run_folder_of(args.checkpoint) / "grids" / f"{sampler}-{args.steps}.json"
    out = out_file(str(out), ".json", args.force, out.with_suffix(".png").name)
    fit = fit_grid(model.sde, model, sampler, args.steps, (1, *sample_shape(model)), n=args.n,
                   iterations=args.iterations, generator=torch.Generator().manual_seed(args.seed),
                   dtype=torch.float32, data=data, start=start, **options)  # fmt: skip
    fit.save(out)
    fig = plot_grid(
        model.sde, {**{name: time_grid(model.sde, args.steps, name) for name in start}, "fitted": fit.times}
    )
    fig.savefig(out.with_suffix(".png"), dpi=100)
    return {
        "grid": str(out),
        "picture": str(out.with_suffix(".png")),
        "times": fit.times.tolist(),
        "start_error": fit.start_error,
        "error": fit.error,
        "evaluations": fit.evaluations,
        "checkpoint_step": step,
        "use": f"scoresde sample --checkpoint {args.checkpoint} --grid {out}",
    }


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``scoresde fit-grid``: its sub-parser and options."""
    fit = command(
        sub,
        "fit-grid",
        cmd_fit_grid,
        "fit a sampler's time grid to a run's score: a few-step solve matched to a tight one, or to the data",
        "scoresde fit-grid --checkpoint runs/toy --sampler dpm_solver --steps 6 --option order=3\n"
        "  scoresde sample --checkpoint runs/toy --grid runs/toy/grids/dpm_solver-6.json --out runs/toy/s6.npz\n"
        "  scoresde fit-grid --checkpoint runs/toy-cd --steps 2   # a consistency student's times, fitted to the data",
    )
    checkpoint_option(fit)
    fit.add_argument(
        "--sampler", help="a sampler name (scoresde list; default dpm_solver, consistency for a consistency model)"
    )
    fit.add_argument("--steps", type=count, default=6, help="steps of the grid (NFE = steps for ddim, dpm_solver)")
    fit.add_argument(
        "--option", action="append", metavar="NAME=VALUE", help="sampler option, e.g. order=3 (repeatable)"
    )
    fit.add_argument("-n", type=count, default=1024, help="calibration draws (never the evaluation draws)")
    fit.add_argument("--iterations", type=count, default=400, help="objective evaluations of the Nelder-Mead search")
    fit.add_argument(
        "--to-data",
        action="store_true",
        help="fit to the energy distance against n draws of the run's data (toys: fresh draws; images: the training "
        "split) instead of a tight solve (always for the consistency sampler)",
    )
    fit.add_argument("--out", help="grid file (.json; default RUN/grids/SAMPLER-STEPS.json), picture beside it")
