"""``scoresde likelihood``: exact NLL and bits/dim of data under a run's model."""

from __future__ import annotations

import argparse

from ..._io import json_text
from .common import (
    UserError,
    data_transform,
    load_model,
    load_points,
    out_file,
    require_data,
)


def cmd_likelihood(args: argparse.Namespace) -> dict:
    """Exact NLL (PF-ODE) and bits/dim of held-out data under a checkpoint, with the ELBO beside it; JSON to --out."""
    from ..report import likelihood_summary

    if args.n < 2:
        raise UserError(f"-n must be >= 2 (a standard error needs two points), got {args.n}")
    model, data, step, _ = load_model(args, "--data")
    source = args.data or require_data(data, "--data").name
    x, true_nll = load_points(source, args.n, args.seed, data)
    out = out_file(args.out, ".json", args.force)
    summary = {"checkpoint_step": step, "data": source}
    summary.update(
        likelihood_summary(
            model.sde,
            model,
            x.to(args.device),
            transform=data_transform(data),
            true_nll=true_nll,
            seed=args.seed,
            progress=not args.json,
            t_min=args.t_min,
            rigorous=args.rigorous,
            **{
                k: getattr(args, k) for k in ("method", "rtol", "atol", "error_control") if getattr(args, k) is not None
            },
            **({"n_probes": args.probes} if args.probes is not None else {}),
        )
    )
    out.write_text(json_text(summary))
    return {**summary, "out": str(out)}
