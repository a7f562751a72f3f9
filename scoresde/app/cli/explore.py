"""``scoresde explore``: one self-contained interactive HTML page of a 2D run (or of a toy's exact score)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    UserError,
    command,
    count,
    load_model,
    note,
    out_file,
    remove_if_empty,
    run_folder_of,
    solver_specs,
    student_specs,
)

SDE_PRESETS = {"vp": "toy-vp", "ve": "toy-ve"}
"""``--sde`` of ``--toy``: the SDE of the toy presets."""


def _toy_with_oracle(name: str):
    """The toy ``name`` if its score is known in closed form, else a one-line error naming those that are."""
    from ...datasets import toy_dataset, toy_datasets

    exact = [toy for toy in toy_datasets() if toy_dataset(toy).oracle is not None]
    if name not in toy_datasets():
        raise UserError(f"unknown toy {name!r}; valid names are: {', '.join(toy_datasets())}")
    if name not in exact:
        raise UserError(f"toy {name!r} has no closed-form score; --toy takes one of: {', '.join(exact)}")
    return toy_dataset(name)


def _lineup(args: argparse.Namespace, model, data_config) -> list:
    """The samplers of the samplers' panel: the comparison's default line-up, the fitted solvers in the run's
    ``solvers/`` folder and those given by ``--solver``, and ``--student`` runs."""
    from ...evaluation.comparison import default_lineup

    lineup = default_lineup(args.quick)
    if args.checkpoint is not None:
        found = sorted(str(p) for p in (run_folder_of(args.checkpoint) / "solvers").glob("*.json"))
        solvers = [*found, *[s for s in args.solver or [] if s not in found]]
        lineup += student_specs(args.student or [], model, data_config, args.device) + solver_specs(solvers, model)
    return lineup


def cmd_explore(args: argparse.Namespace) -> dict:
    """Compute the explorer's data (`scoresde.app.explorer_data.explorer_data`) and write its page."""
    from ...config.presets import preset
    from ...config.schema import DataConfig
    from ...datasets import toy_dataset
    from ...evaluation.comparison import compare_samplers
    from ...evaluation.held_out import held_out
    from ..explorer import write_explorer
    from ..explorer_data import explorer_data

    if (args.checkpoint is None) == (args.toy is None):
        raise UserError("pass --checkpoint RUN (a trained 2D run) or --toy NAME (the exact score alone), not both")
    if args.toy is not None and (args.student or args.solver):
        raise UserError("--student and --solver belong to a run's model; pass them with --checkpoint")
    if args.checkpoint is not None:
        if args.sde is not None:
            raise UserError("--sde goes with --toy; a run's SDE is its own")
        model, data_config, step, _ = load_model(args)
        if data_config is None or data_config.kind != "toy":
            what = "an imported image model" if data_config is None else f"an image run ({data_config.name})"
            raise UserError(
                f"{args.checkpoint} is {what}; the explorer is for 2D toy runs (scoresde sample / compare take images)"
            )
        toy, sde, score_fn = toy_dataset(data_config.name), model.sde, model
        name = f"{Path(run_folder_of(args.checkpoint)).name} (step {step}, {toy.name})"
        default_out = run_folder_of(args.checkpoint) / "explorer.html"
    else:
        toy = _toy_with_oracle(args.toy)
        sde = preset(SDE_PRESETS[args.sde or "vp"]).sde.build()
        data_config, score_fn, name = DataConfig(kind="toy", name=toy.name), None, ""
        default_out = Path(f"explorer-{toy.name}-{args.sde or 'vp'}.html")
    lineup = _lineup(args, score_fn, data_config)
    created = not Path(args.out or default_out).parent.exists()
    out = out_file(str(args.out or default_out), ".html", args.force)
    model_fn = score_fn if score_fn is not None else toy.oracle.score_fn(sde)
    try:
        data = held_out(data_config, args.n, args.seed)
        comparison = compare_samplers(
            sde, model_fn, data.x, lineup=lineup, n=len(data.x), floor_reference=data.floor,
            true_log_prob=data.sample_log_prob, entropy=data.entropy, seed=args.seed, device=args.device,
            progress=not args.json,
        )  # fmt: skip
        page = explorer_data(
            sde,
            score_fn,
            toy.sample,
            oracle=toy.oracle,
            extent=toy.extent,
            model_name=name,
            frames=args.frames,
            comparison=comparison,
            held_out=data.x,
            likelihood_grid=args.likelihood_grid,
            seed=args.seed,
        )
        write_explorer(page, out)
        for line in page.notes:
            note("explore", line)
    except BaseException:
        remove_if_empty(out.parent, created)
        raise
    return {"explorer": str(out), "megabytes": round(out.stat().st_size / 1e6, 2), "samplers": len(lineup)}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``scoresde explore``: its sub-parser and options."""
    explore = command(
        sub,
        "explore",
        cmd_explore,
        "write an interactive HTML page of a 2D run (forward process, score, paths, samplers, likelihood)",
        "scoresde explore --checkpoint runs/toy\n  scoresde explore --toy 8gaussians --sde ve --out ve.html",
    )
    explore.add_argument("--checkpoint", help="a 2D toy run folder (or checkpoint file) written by scoresde train")
    explore.add_argument("--toy", help="a toy with a closed-form score (8gaussians, gmm, checkerboard): no model")
    explore.add_argument("--sde", choices=tuple(SDE_PRESETS), help="with --toy: the SDE (default vp)")
    explore.add_argument("--out", help="the page (.html; default RUN/explorer.html, or explorer-TOY-SDE.html)")
    explore.add_argument("-n", type=count, default=1000, help="samples a sampler (and held-out points)")
    explore.add_argument("--quick", action="store_true", help="fewer samplers and step counts")
    explore.add_argument("--frames", type=count, default=41, help="positions of the time slider")
    explore.add_argument(
        "--likelihood-grid", type=count, default=32, help="cells a side of the likelihood panel (one PF-ODE solve)"
    )
    explore.add_argument(
        "--student", action="append", metavar="RUN", help="a distilled student (scoresde distill) to add (repeatable)"
    )
    explore.add_argument(
        "--solver", action="append", metavar="FILE", help="a fitted solver (scoresde fit-solver) to add (repeatable)"
    )
