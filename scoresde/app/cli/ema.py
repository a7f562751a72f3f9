"""``scoresde ema``: reconstruct a run's EMA of any length from its post-hoc EMA snapshots, or sweep lengths."""

from __future__ import annotations

import argparse

from .common import UserError, checkpoint_option, command, count, out_file, run_folder_of


def _lengths(args: argparse.Namespace, tracked: list[float]) -> list[float]:
    """``--sigma-rel`` values, or with ``--sweep K`` K lengths evenly spread over the tracked range."""
    if args.sweep:
        if args.sweep < 2:
            raise UserError(f"--sweep needs at least 2 lengths, got {args.sweep}")
        lo, hi = tracked[0], tracked[-1]
        return [lo + (hi - lo) * i / (args.sweep - 1) for i in range(args.sweep)]
    if not args.sigma_rel:
        raise UserError(
            f"pass --sigma-rel (between {tracked[0]:g} and {tracked[-1]:g}, the tracked lengths) or --sweep K"
        )
    return args.sigma_rel


def cmd_ema(args: argparse.Namespace) -> dict:
    """One EMA length: its checkpoint file (``--out``, default RUN/ema-SIGMA.safetensors), samplable like the run.
    ``--sweep K``: quality against EMA length (``ema-sweep.json`` and ``.png`` in the run folder)."""
    from ..._io import json_text
    from ...training.posthoc_ema import check_ema_target, read_snapshots, reconstruct_ema, save_reconstruction

    folder = run_folder_of(args.checkpoint)
    try:
        snapshots = read_snapshots(folder)
        tracked = sorted({s.sigma_rel for s in snapshots})
        lengths = _lengths(args, tracked)
        for s in lengths:  # every length and the step checked before anything is written or sampled
            check_ema_target(snapshots, s, args.step, folder)
        if not args.sweep and len(lengths) == 1:
            rec = reconstruct_ema(folder, lengths[0], args.step)
            name = f"ema-{lengths[0]:.4f}.safetensors"
            out = out_file(args.out or str(folder / name), ".safetensors", args.force)
            save_reconstruction(folder, rec, out)
            return {**rec.to_dict(), "out": str(out), "use": f"scoresde sample --checkpoint {out}"}
        from ...evaluation.during_training import ema_sweep
        from ..result_figures import plot_ema_sweep

        out = out_file(args.out or str(folder / "ema-sweep.json"), ".json", args.force, "ema-sweep.png")
        rows = ema_sweep(folder, lengths, t=args.step, samples=args.n, nfe=args.steps, likelihood=args.likelihood,
                         device=args.device, progress=not args.json)  # fmt: skip
    except ValueError as exc:
        raise UserError(str(exc)) from None
    summary = {"tracked": tracked, "rows": rows}
    out.write_text(json_text(summary))
    plot_ema_sweep(rows, tracked).savefig(out.with_suffix(".png"), dpi=110)
    return {**summary, "out": str(out), "picture": str(out.with_suffix(".png"))}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``scoresde ema``: its sub-parser and options."""
    ema = command(
        sub,
        "ema",
        cmd_ema,
        "reconstruct a run's EMA of any length afterwards from its post-hoc EMA snapshots (train.ema_profiles)",
        "scoresde ema --checkpoint runs/digits --sigma-rel 0.07\n"
        "  scoresde sample --checkpoint runs/digits/ema-0.0700.safetensors --out s.npz\n"
        "  scoresde ema --checkpoint runs/digits --sweep 6   # quality against EMA length, a figure",
    )
    checkpoint_option(ema, precision=False)
    ema.add_argument(
        "--sigma-rel",
        type=float,
        action="append",
        help="relative standard deviation of the EMA profile (EDM2; between the tracked train.ema_profiles; "
        "repeatable: a sweep of those lengths)",
    )
    ema.add_argument("--sweep", type=count, help="K lengths evenly spread over the tracked range, each measured")
    ema.add_argument("--step", type=count, help="the EMA at this step (default: the last snapshot's)")
    ema.add_argument("-n", type=count, help="a sweep's samples per length (default: the run's train.eval_samples)")
    ema.add_argument("--steps", type=count, help="a sweep's sampler steps (default: the run's train.eval_nfe)")
    ema.add_argument("--likelihood", action="store_true", help="a sweep also measures held-out bits/dim (or NLL)")
    ema.add_argument("--out", help="the checkpoint file (.safetensors), or a sweep's JSON (.json; picture beside)")
