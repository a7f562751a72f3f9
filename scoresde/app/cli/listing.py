"""``scoresde list`` and ``scoresde toys``: the registries, and the toys with their forward process."""

from __future__ import annotations

import argparse

from ..._io import json_text
from ...datasets import toy_dataset, toy_datasets
from ...processes.base import create_sde, sde_names
from .common import (
    UserError,
    command,
    count,
    prepare_out,
)


def cmd_toys(args: argparse.Namespace) -> dict:
    """Sample the 2D toys and draw the forward process of the ``gmm`` toy; write PNGs and a JSON summary."""
    from ..figures import plot_forward_process, plot_toy_datasets

    names = args.names or toy_datasets()
    for name in names:
        toy_dataset(name)  # unknown names fail here, before anything is written
    if args.sde not in sde_names():
        raise UserError(f"unknown sde {args.sde!r}; valid names are: {', '.join(sde_names())}")
    folder = prepare_out(args.out, args.force, ["toys.png", "forward.png", "toys.json"])
    fig = plot_toy_datasets(names, n=args.n, seed=args.seed)
    fig.savefig(folder / "toys.png", dpi=110)
    sde = create_sde(args.sde)
    fig = plot_forward_process(sde, toy_dataset("gmm").mixture, seed=args.seed)
    fig.savefig(folder / "forward.png", dpi=110)
    summary = {
        "toys": {n: {"entropy_nats": toy_dataset(n).entropy() if toy_dataset(n).has_density else None} for n in names},
        "sde": repr(sde),
        "files": [str(folder / "toys.png"), str(folder / "forward.png")],
    }
    (folder / "toys.json").write_text(json_text(summary))
    return summary


def cmd_list(args: argparse.Namespace) -> dict:
    """List the registered names."""
    from ...config.presets import presets
    from ...datasets import image_datasets
    from ...models import models
    from ...samplers import GRIDS, correctors, predictors, samplers
    from ...training.kinds import run_kinds
    from ...training.objectives import objectives

    return {
        "sdes": sde_names(),
        "samplers": samplers(),
        "predictors": predictors(),
        "correctors": correctors(),
        "time_grids": list(GRIDS),
        "toy_datasets": toy_datasets(),
        "image_datasets": image_datasets(),
        "models": models(),
        "presets": presets(),
        "run_kinds": run_kinds(),
        "objectives": objectives(),
    }


def add_toys_parser(sub: argparse._SubParsersAction) -> None:
    """``scoresde toys``: its sub-parser and options."""
    toys = command(
        sub,
        "toys",
        cmd_toys,
        "sample the 2D toy data sets and draw the forward process of the gmm toy",
        "scoresde toys moons 8gaussians --out out/ --sde ve",
    )
    toys.add_argument("names", nargs="*", help="toy data sets to draw (default: all)")
    toys.add_argument("--out", default="scoresde-out", help="output folder")
    toys.add_argument("-n", type=count, default=2000, help="samples per data set")
    toys.add_argument("--sde", default="vp", help=f"forward SDE: {', '.join(sde_names())}")


def add_list_parser(sub: argparse._SubParsersAction) -> None:
    """``scoresde list``: its sub-parser and options."""
    command(
        sub,
        "list",
        cmd_list,
        "list the SDEs, samplers (predictors, correctors, solvers), data sets, models and presets",
        "scoresde list --json",
        force=False,
    )
