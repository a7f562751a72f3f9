"""``scoresde sample``: sample a run (a student as distilled, a fitted grid, guidance); write .npz and .png."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..._checks import check_in_registry
from ...models.network import sample_shape
from ...processes.seam import spec_of
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
    run_folder_of,
    run_image_metric,
)


def cmd_sample(args: argparse.Namespace) -> dict:
    """Sample a trained checkpoint; write the samples (.npz) and a picture next to them (.png)."""
    import numpy as np
    import torch

    from ...samplers import choose_recipe, samplers
    from ...samplers.fitted_solver import FittedSolver
    from ...samplers.grid_fit import GridFit
    from ...training.kinds import run_kind
    from ...training.workflows import sample_run
    from ..image_figures import plot_samples

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
    if spec_of(model).condition:  # a cascade's super-resolution stage: its base draws the condition
        return _sample_cascade(args, model, config, step)
    if args.base is not None or args.augmentation is not None:
        raise UserError("--base and --augmentation are for a cascade's super-resolution run (stage.low_resolution)")
    artefact = None if args.solver is None else FittedSolver.load(args.solver, model.sde, model).recipe()
    if args.grid is not None:
        artefact = GridFit.load(args.grid, model.sde, model).recipe()
    own = None if config is None else run_kind(config).recipe(config, args.steps)
    recipe = choose_recipe(own, sampler=args.sampler, steps=args.steps, options=options, artefact=artefact)
    sampler = recipe.sampler
    out = out_file(args.out, ".npz", args.force, Path(args.out).with_suffix(".png").name)
    picture = out.with_suffix(".png")
    result = sample_run(
        model, data, run_folder_of(args.checkpoint), (args.n, *sample_shape(model)), recipe, label=args.label,
        guidance=args.guidance or 0.0, seed=args.seed, device=args.device,
    )  # fmt: skip
    x = result.images.cpu()  # a latent model's samples decoded to images
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
        "latent": result.decoded is not None,
        "nfe": result.nfe,
        "sampler": sampler,
        "n": args.n,
        "checkpoint_step": step,
        "label": args.label,
        "guidance": args.guidance,
        "settings": result.settings,
    }


def _sample_cascade(args: argparse.Namespace, model, config, step) -> dict:
    """A cascade's super-resolution run: its base run (``stage.base`` or ``--base``) draws the low-resolution images
    with ``--base-sampler`` / ``--base-steps``, augmented at ``--augmentation`` (default ``stage.augmentation``), and
    this run draws the images given them; both stages' pictures side by side, each stage's NFE."""
    import numpy as np

    from ...training.workflows import cascade_base, sample_cascade_run
    from ..image_figures import plot_sample_grids

    if args.label is not None or args.solver or args.grid:
        raise UserError(
            "a cascade is sampled with --sampler / --steps per stage; --label, --solver, --grid do not apply"
        )
    try:
        found = cascade_base(config, run_folder_of(args.checkpoint), base=args.base, level=args.augmentation,
                             device=args.device)  # fmt: skip
    except ValueError as exc:
        raise UserError(str(exc)) from None
    base, level = found.model, found.level
    out = out_file(args.out, ".npz", args.force, Path(args.out).with_suffix(".png").name)
    shape, low_shape = sample_shape(model), sample_shape(base)
    result = sample_cascade_run(model, found, args.n, (low_shape, shape), sampler=args.sampler,
                                options={**parse_options(args.option), **({"steps": args.steps} if args.steps else {})},
                                base_sampler=args.base_sampler,
                                base_options={"steps": args.base_steps} if args.base_steps else {}, seed=args.seed,
                                device=args.device)  # fmt: skip
    transform = config.data.transform()
    x, low = result.x.cpu(), result.low.cpu()
    np.savez(out, x_model=x.numpy(), x=transform.from_model(x).numpy().astype(np.uint8), low_model=low.numpy(),
             low=transform.from_model(low).numpy().astype(np.uint8))  # fmt: skip
    picture = out.with_suffix(".png")
    fig = plot_sample_grids(
        {f"base {low_shape[-1]}x{low_shape[-1]} ({result.nfe['base']} NFE)": low.clamp(-1, 1),
         f"super-resolution {shape[-1]}x{shape[-1]}, s = {level:g} ({result.nfe['super_resolution']} NFE)":
         x.clamp(-1, 1)}, n=min(args.n, 40))  # fmt: skip
    fig.savefig(picture, dpi=110)
    from ...evaluation.comparison import measure_images

    quality = measure_images(run_image_metric("sample", args, config.data, run_folder_of(args.checkpoint)), x)
    if quality is not None and not args.json:
        print(quality.summary())
    return {"samples": str(out), "picture": str(picture), "cascade": result.to_dict(), "n": args.n,
            "checkpoint_step": step, "image_quality": quality.to_dict() if quality is not None else None}  # fmt: skip


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
    smp.add_argument("--base", help="a cascade's base run (default: the super-resolution run's stage.base)")
    smp.add_argument("--base-sampler", help="a cascade's base stage's sampler (default dpm_solver)")
    smp.add_argument("--base-steps", type=count, help="steps of the base stage's sampler")
    smp.add_argument(
        "--augmentation", type=float, help="a cascade's conditioning-augmentation level (default: stage.augmentation)"
    )
    features_option(smp)
