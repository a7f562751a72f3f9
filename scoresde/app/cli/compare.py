"""``scoresde compare``: samplers (and distilled students) side by side on held-out data."""

from __future__ import annotations

import argparse

from .common import (
    UserError,
    checkpoint_option,
    command,
    count,
    features_option,
    load_model,
    plot_extent,
    prepare_out,
    run_folder_of,
    run_image_metric,
    solver_specs,
    student_specs,
)


def cmd_compare(args: argparse.Namespace) -> dict:
    """PC against ODE against the few-step solvers on one checkpoint: a table, a JSON and one figure."""
    from ...evaluation.comparison import compare_samplers, default_lineup
    from ...evaluation.held_out import held_out
    from ..report import COMPARE_FILES, write_comparison

    if args.n < 2:
        raise UserError(f"-n must be >= 2 (distances and standard errors need two samples), got {args.n}")
    model, data_config, step, _ = load_model(args)
    if data_config is None:
        raise UserError("compare needs held-out data of the model's data set, unknown for this imported model's shape")
    folder = prepare_out(args.out or str(run_folder_of(args.checkpoint)), args.force, list(COMPARE_FILES))
    data = held_out(data_config, args.n, args.seed)
    transform = data_config.transform()
    quantise = (lambda x: transform.to_model(transform.from_model(x) + 0.5)) if transform is not None else None
    comparison = compare_samplers(
        model.sde,
        model,
        data.x,
        lineup=default_lineup(args.quick)
        + student_specs(args.student or [], model, data_config, args.device)
        + solver_specs(args.solver or [], model),
        n=len(data.x),
        floor_reference=data.floor,
        true_log_prob=data.sample_log_prob,
        entropy=data.entropy,
        postprocess=quantise,
        image_metric=run_image_metric("compare", args, data_config, run_folder_of(args.checkpoint)),
        seed=args.seed,
        device=args.device,
        progress=not args.json,
    )
    paths = write_comparison(comparison, data.x, folder, extent=plot_extent(data_config))
    if not args.json:
        print(comparison.markdown())
    best = comparison.best()
    return {
        "checkpoint_step": step,
        "n": comparison.n,
        "best": best.spec.label,
        "best_nfe": best.nfe,
        "noise_floor": comparison.floor,
        "files": [str(p) for p in paths],
        **({"runs": comparison.to_dict()["runs"]} if args.json else {}),
    }


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``scoresde compare``: its sub-parser and options."""
    cmp = command(
        sub,
        "compare",
        cmd_compare,
        "compare predictor-corrector, ODE and few-step samplers on one checkpoint "
        "(NFE, wall time, distance to held-out data)",
        "scoresde compare --checkpoint runs/toy --quick",
    )
    checkpoint_option(cmp)
    cmp.add_argument(
        "-n", type=count, default=2000, help="samples per sampler (and held-out points; images: at most the test split)"
    )
    cmp.add_argument("--quick", action="store_true", help="fewer samplers and step counts")
    cmp.add_argument(
        "--student", action="append", metavar="RUN", help="a distilled student (scoresde distill) to add (repeatable)"
    )
    cmp.add_argument(
        "--solver", action="append", metavar="FILE", help="a fitted solver (scoresde fit-solver) to add (repeatable)"
    )
    cmp.add_argument(
        "--out", help="output folder for compare.json, compare.md, compare.png (default: the checkpoint's folder)"
    )
    features_option(cmp)
