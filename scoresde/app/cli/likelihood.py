"""``scoresde likelihood``: exact NLL and bits/dim of data under a run's model."""

from __future__ import annotations

import argparse

from ..._io import json_text
from ...processes.seam import spec_of
from .common import (
    UserError,
    checkpoint_option,
    command,
    count,
    data_transform,
    load_model,
    load_points,
    out_file,
    require_data,
)


def cmd_likelihood(args: argparse.Namespace) -> dict:
    """Exact NLL (PF-ODE) and bits/dim of held-out data under a checkpoint, with the ELBO beside it; JSON to --out.
    Under torchrun the processes share the images (chunks of --chunk-size, `sharded_bits_per_dim`) and rank 0
    writes the result, equal to one process's."""
    from ...training.steps import init_distributed
    from ..report import likelihood_summary

    if args.n < 2:
        raise UserError(f"-n must be >= 2 (a standard error needs two points), got {args.n}")
    rank, world = init_distributed(args.device)
    if -(-args.n // args.chunk_size) % world:  # the number of chunks, ceil(n / chunk size), per process
        raise UserError(
            f"-n {args.n} in chunks of --chunk-size {args.chunk_size} does not split evenly over {world} processes; "
            f"pass -n a multiple of {world * args.chunk_size} or a --chunk-size that splits it"
        )
    model, data, step, config = load_model(args, "--data")
    source = args.data or require_data(data, "--data").name
    x, true_nll = load_points(source, args.n, args.seed, data)
    stage = spec_of(model).decoder or spec_of(model).condition
    out = out_file(args.out, ".json", args.force)
    summary = {"checkpoint_step": step, "data": source}
    if stage:
        summary.update(_stage_bound(args, model, x, config))
        out.write_text(json_text(summary))
        return {**summary, "out": str(out)}
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
            dequantization=_dequantization(args, data),
            chunk_size=args.chunk_size,
            **{
                k: getattr(args, k) for k in ("method", "rtol", "atol", "error_control") if getattr(args, k) is not None
            },
            **({"n_probes": args.probes} if args.probes is not None else {}),
        )
    )
    if rank:
        return {}  # rank 0 writes and reports the result every rank holds
    out.write_text(json_text(summary))
    return {**summary, "out": str(out)}


def _dequantization(args: argparse.Namespace, data) -> dict:
    """`bits_per_dim`'s dequantisation options from the command line (refused for continuous data)."""
    chosen = {"dequantization": args.dequantization, "n_dequantizations": args.dequantizations,
              "importance_weighted": args.importance_weighted}  # fmt: skip
    if data is not None and data.kind == "toy" and (args.dequantization != "uniform" or args.dequantizations != 1
                                                     or args.importance_weighted):  # fmt: skip
        raise UserError("--dequantization, --dequantizations and --importance-weighted are for discrete data (images)")
    if args.importance_weighted and args.dequantizations < 2:
        raise UserError("--importance-weighted needs --dequantizations K >= 2 draws to weigh (e.g. 16)")
    return chosen


def _stage_bound(args: argparse.Namespace, model, x, config) -> dict:
    """A latent run's or a cascade's bits/dim: the upper bound with its terms apart (`scoresde.training.workflows.
    run_bound`: `scoresde.likelihood.latent_bits_per_dim`, `scoresde.likelihood.cascade_bits_per_dim`)."""
    import torch

    from ...training.workflows import cascade_base, run_bound
    from .common import run_folder_of

    folder = run_folder_of(args.checkpoint)
    options = {k: getattr(args, k) for k in ("method", "rtol", "atol", "error_control") if getattr(args, k) is not None}
    options.setdefault("rtol", 1e-3)
    options.setdefault("atol", 1e-3)
    common = {"divergence": "hutchinson", "n_probes": args.probes or 1, "dtype": torch.float32,
              "generator": torch.Generator().manual_seed(args.seed), **options}  # fmt: skip
    try:
        base = None
        if spec_of(model).condition:
            base = cascade_base(config, folder, level=args.augmentation, device=args.device, positive=True)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    result = run_bound(model, config, folder, x.to(args.device), base=base, t_min=args.t_min, **common)
    key = "cascade_bound" if base is not None else "latent_bound"
    if not args.json:
        terms = ", ".join(f"{k} {v:.3f}" for k, v in result.terms.items())
        print(f"{key.replace('_', ' ')}: {result.bpd:.3f} ± {result.bpd_standard_error:.3f} bits/dim ({terms})")
    return {key: result.to_dict()}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``scoresde likelihood``: its sub-parser and options."""
    lik = command(
        sub,
        "likelihood",
        cmd_likelihood,
        "exact NLL and bits/dim of held-out data through the probability-flow ODE, with the ELBO beside it",
        "scoresde likelihood --checkpoint runs/toy -n 2000 --out runs/toy/likelihood.json",
    )
    checkpoint_option(lik)
    lik.add_argument(
        "--data",
        help="data set name or .npz file with array x (default: the run's data set; toys: fresh draws "
        "with their true NLL; images: the test split)",
    )
    lik.add_argument("-n", type=count, default=1000, help="number of points (images: the first n of the test split)")
    lik.add_argument(
        "--t-min",
        type=float,
        default=1e-5,
        help="data end of the likelihood integral (default 1e-5, the convention of published bits/dim)",
    )
    lik.add_argument("--method", help="likelihood solver: ei (default), ei_fixed or a torchdiffeq method (dopri5, ...)")
    lik.add_argument("--rtol", type=float, help="relative tolerance (default: images 1e-2, toys 1e-5)")
    lik.add_argument("--atol", type=float, help="absolute tolerance (default: images 1e-2, toys 1e-5)")
    lik.add_argument("--error-control", choices=("per_sample", "batch"), help="default: images batch, toys per_sample")
    lik.add_argument("--probes", type=count, help="Hutchinson probes per image (default 1)")
    lik.add_argument(
        "--no-rigorous",
        dest="rigorous",
        action="store_false",
        help="images: skip the rigorous bound reported beside the conventional bits/dim (halves the cost)",
    )
    lik.add_argument(
        "--dequantization",
        choices=("uniform", "truncated_normal"),
        default="uniform",
        help="images: how a pixel becomes a point of its cell: uniform (the field's convention) or truncated_normal "
        "(i-DODE: the forward noise at t_min, truncated to the cell); the offset it adds is derived and reported",
    )
    lik.add_argument("--dequantizations", type=count, default=1, help="images: dequantisation draws per image (K)")
    lik.add_argument(
        "--importance-weighted",
        action="store_true",
        help="images: combine the K draws as -log mean p/q (tighter, toward -log P(x)) instead of averaging bounds",
    )
    lik.add_argument(
        "--chunk-size",
        type=count,
        default=512,
        help="images: solved together, each chunk with its own seed (under torchrun the processes share the chunks; "
        "the figure does not depend on how many processes)",
    )
    lik.add_argument("--out", required=True, help="result file (.json)")
    lik.add_argument(
        "--augmentation",
        type=float,
        help="a cascade's bound: the conditioning-augmentation level it integrates over (default stage.augmentation)",
    )
