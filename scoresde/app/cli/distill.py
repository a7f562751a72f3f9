"""``scoresde distill``: distil a teacher (a run or oracle:<toy>) into a few-step student."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    Outcome,
    UserError,
)


def cmd_distill(args: argparse.Namespace) -> dict:
    """Distil a teacher (a run, or oracle:<toy>) into a few-step student in ``--out`` (progressive rounds in
    ``--out/rounds``); nothing in ``--out`` is replaced without ``--force``."""
    from ...config.schema import override
    from ...training.distill import distill, distillation_config, student_sampling
    from ...training.run_folder import RUN_FILES, run_files

    out = Path(args.out)
    config = override(
        distillation_config(args.teacher, args.method, steps=args.student_steps, sde=args.sde,
                            train_steps=args.train_steps),
        *(args.set or []),
    )  # fmt: skip
    present = run_files(out) if out.is_dir() else []
    if present and not (args.resume or args.force):
        raise UserError(
            f"{present[0]} already exists; pass --resume to continue the distillation in {out}, --force to replace its "
            f"run files ({', '.join(RUN_FILES)}), or choose another --out"
        )
    results = distill(config, out, teacher_steps=args.teacher_steps, device=args.device, progress=not args.json,
                      resume=args.resume, overwrite=args.force)  # fmt: skip
    summary = {
        "out": str(out),
        "method": args.method,
        "rounds": [r.to_dict() for r in results],
        "sampling": student_sampling(config),
        "config": config.to_dict(),
    }
    return Outcome(summary, 130) if results and results[-1].interrupted else summary
