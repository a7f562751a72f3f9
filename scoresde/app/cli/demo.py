"""``scoresde demo``: the main job, train, compare, measure and report on a 2D toy."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    command,
    prepare_out,
)


def cmd_demo(args: argparse.Namespace) -> dict:
    """Train on a 2D toy with a known density, compare samplers, measure the likelihood, write a report."""
    from ..demo import DEMO_FILES, run_demo

    folder = prepare_out(args.out, args.force, list(DEMO_FILES))
    metrics = run_demo(folder, quick=args.quick, device=args.device, seed=args.seed, progress=not args.json)
    if args.json:
        return metrics
    print(_demo_summary(metrics, folder))
    return {}


def _demo_summary(metrics: dict, folder: Path) -> str:
    """The one-screen summary the demo prints."""
    lik, train, compare = metrics["likelihood"], metrics["train"], metrics["compare"]
    floor = compare["noise_floor"]["energy_distance"]
    lines = [
        f"scoresde demo: {metrics['data']} under {metrics['sde']}" + (" (quick settings)" if metrics["quick"] else ""),
        f"  trained {train['steps']} steps in {train['seconds']:.0f} s ({train['parameters']:,} parameters), final "
        f"loss {train['final_loss']:.4g}",
        f"  exact NLL {lik['nll_nats']:.4f} +- {lik['nll_standard_error']:.4f} nats ({lik['bits_per_dim']:.4f} "
        f"bits/dim, {lik['nfe']} NFE)",
        f"  true NLL  {lik['true_nll_nats']:.4f} nats; gap {lik['nll_gap_nats']:.4f} +- "
        f"{lik['nll_gap_standard_error']:.4f}; "
        f"ELBO {lik['elbo_nats']:.4f} +- {lik['elbo_standard_error']:.4f}",
        f"  samplers ({compare['n']} samples; energy distance, noise floor {floor:.2e}):",
    ]
    for run in compare["runs"]:
        lines.append(
            f"    {run['label']:<46} NFE {run['nfe']:>4}  ED {run['energy_distance']:.2e} "
            f"({run['energy_distance'] / floor:5.1f} x floor)"
            f"  {run['seconds']:5.2f} s"
        )
    lines += [
        f"  report: {folder / 'report.md'}  (figures and metrics.json beside it)",
        f"  total time {metrics['timings_seconds']['total']:.0f} s",
    ]
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``scoresde demo``: its sub-parser and options."""
    demo = command(
        sub,
        "demo",
        cmd_demo,
        "train on a 2D toy with a known density, compare samplers, measure the likelihood and write a report",
        "scoresde demo --out scoresde-out",
    )
    demo.add_argument("--out", default="scoresde-out", help="output folder: report.md, metrics.json, figures, run/")
    demo.add_argument(
        "--quick", action="store_true", help="small model and few points (under 30 s; for tests, not for quality)"
    )
