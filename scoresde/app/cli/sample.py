"""``scoresde sample``: sample a run (a student as distilled, a fitted grid, guidance); write .npz and .png."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..._checks import check_in_registry
from .common import (
    UserError,
    checkpoint_option,
    command,
    count,
    data_transform,
    features_option,
    load_model,
    origin,
    out_file,
    parse_options,
    plot_extent,
    require_data,
    run_folder_of,
    run_image_metric,
    sample_shape,
)


def _analytic_moments(args: argparse.Namespace, model, data, plan):
    """The run's cached table of score moments at the plan's grid (`scoresde.training.runs.run_score_moments`)."""
    from ...samplers import time_grid
    from ...samplers.base import sampler_options
    from ...training.runs import run_score_moments

    defaults = sampler_options(plan.sampler)
    steps = plan.steps or defaults["steps"]
    schedule, t_min = plan.options.get("schedule", defaults["schedule"]), plan.options.get("t_min")
    grid = time_grid(model.sde, steps, schedule, t_min)
    key = f"{schedule}-{steps}-{float(grid[-1]):.3g}"
    data = require_data(data, "a run of its own (the analytic variance needs the model's training data)")
    return run_score_moments(
        run_folder_of(args.checkpoint), model, model.sde, data, grid, key, seed=args.seed, device=args.device
    )


def cmd_sample(args: argparse.Namespace) -> dict:
    """Sample a trained checkpoint; write the samples (.npz) and a picture next to them (.png)."""
    import numpy as np
    import torch

    from ...samplers import ClassifierFreeGuidance, samplers
    from ...samplers.fitted_solver import FittedSolver
    from ...samplers.grid_fit import GridFit
    from ...samplers.sampling import sample
    from ...training.distill import SamplingPlan, sampling_plan
    from ..figures import plot_samples

    if args.sampler is not None:
        check_in_registry("sampler", args.sampler, samplers())  # before anything is written
    options = parse_options(args.option)
    if args.guidance is not None and args.label is None:
        raise UserError("--guidance needs --label (the class to guide towards)")
    if args.solver is not None:
        clash = [name for name, value in (("--grid", args.grid), ("--sampler", args.sampler), ("--steps", args.steps),
                                          ("--option", args.option)) if value]  # fmt: skip
        if clash:
            raise UserError(f"--solver sets the sampler, its grid and its coefficients; drop {', '.join(clash)}")
    model, data, step, config = load_model(args)
    solver = None if args.solver is None else FittedSolver.load(args.solver, model.sde, model)
    grid = None if args.grid is None else GridFit.load(args.grid, model.sde, model)
    if solver is None:
        plan = sampling_plan(config, sampler=args.sampler, steps=args.steps, options=options, grid=grid)
    else:
        plan = SamplingPlan("fitted", None, None, {})
    sampler, options = plan.sampler, plan.options
    if sampler in ("ddpm", "ddim") and options.get("variance") == "analytic":
        options["moments"] = _analytic_moments(args, model, data, plan)
    score = model if args.label is None else ClassifierFreeGuidance(model, args.label, args.guidance or 0.0)
    out = out_file(args.out, ".npz", args.force, Path(args.out).with_suffix(".png").name)
    picture = out.with_suffix(".png")
    with torch.no_grad():
        result = sample(
            model.sde,
            score,
            (args.n, *sample_shape(model)),
            sampler,
            steps=plan.steps,
            device=args.device,
            generator=torch.Generator(device=args.device).manual_seed(args.seed),
            **({"schedule": plan.schedule} if plan.schedule is not None else {}),
            **({"solver": solver} if solver is not None else {}),
            **options,
        )
    x = result.x.cpu()
    transform = data_transform(data)
    levels = transform.levels if transform else None
    arrays = {"x_model": x.numpy(), "x": transform.from_model(x).numpy().astype(np.uint8) if transform else x.numpy()}
    np.savez(out, **arrays)
    extent = plot_extent(data)
    guided = "" if args.label is None else f", class {args.label}, guidance w = {args.guidance or 0.0:g}"
    fig = plot_samples(
        torch.as_tensor(arrays["x"]).float(),
        f"{sampler}: {args.n} samples, {result.nfe} NFE ({origin(step)}){guided}",
        levels=levels,
        extent=extent,
    )
    fig.savefig(picture, dpi=110)
    from ...evaluation.comparison import measure_images

    quality = measure_images(run_image_metric("sample", args, data, run_folder_of(args.checkpoint)), x)
    if quality is not None and not args.json:
        print(quality.summary())
    return {
        "samples": str(out),
        "picture": str(picture),
        "image_quality": quality.to_dict() if quality is not None else None,
        "nfe": result.nfe,
        "sampler": sampler,
        "n": args.n,
        "checkpoint_step": step,
        "label": args.label,
        "guidance": args.guidance,
        "settings": result.settings,
    }


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``scoresde sample``: its sub-parser and options."""
    smp = command(
        sub,
        "sample",
        cmd_sample,
        "draw samples from a checkpoint's EMA model; writes FILE.npz and FILE.png",
        "scoresde sample --checkpoint runs/toy --sampler dpm_solver --steps 20 -n 2000 --out runs/toy/samples.npz",
    )
    checkpoint_option(smp)
    smp.add_argument(
        "--sampler", help="a sampler name (scoresde list; default dpm_solver, a distilled student's own sampler)"
    )
    smp.add_argument("--steps", type=count, help="steps of the sampler's grid (its own default if omitted)")
    smp.add_argument(
        "--option", action="append", metavar="NAME=VALUE", help="sampler option, e.g. order=3 (repeatable)"
    )
    smp.add_argument("--grid", help="a time grid written by scoresde fit-grid (its sampler and options by default)")
    smp.add_argument(
        "--solver", help="a solver fitted by scoresde fit-solver (its own sampler, times and coefficients; NFE = steps)"
    )
    smp.add_argument("-n", type=count, default=2000, help="number of samples")
    smp.add_argument("--label", type=int, help="class to sample (class-conditional models)")
    smp.add_argument(
        "--guidance",
        type=float,
        help="classifier-free guidance weight w: (1 + w) s(x, t, y) - w s(x, t, null); 0 = the conditional model",
    )
    smp.add_argument("--out", required=True, help="samples file (.npz); the picture goes next to it (.png)")
    features_option(smp)
