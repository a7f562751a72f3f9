"""``scoresde distill``: distil a teacher (a run or oracle:<toy>) into a few-step student."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...config.schema import DISTILLATION_METHODS
from .common import (
    Outcome,
    UserError,
    command,
    count,
    note,
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
    if args.resume and not (present or (out / "rounds").is_dir()):
        note("distill", f"--resume: {out} holds no distillation yet: starting this one there at step 0")
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
    return Outcome(summary, results[-1].exit_status) if results and results[-1].interrupted else summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``scoresde distill``: its sub-parser and options."""
    dst = command(
        sub,
        "distill",
        cmd_distill,
        "distil a teacher into a 1-4 step student: progressive distillation, a consistency model or a flow map",
        "scoresde distill --teacher runs/toy --method consistency --out runs/toy-cd\n"
        "  scoresde distill --teacher oracle:gmm --method flow_map --out runs/gmm-fm\n"
        "  scoresde distill --teacher oracle:gmm --method progressive --student-steps 2 --out runs/gmm-pd\n"
        "  scoresde sample --checkpoint runs/toy-cd --steps 2 --out runs/toy-cd/samples.npz",
    )
    dst.add_argument("--teacher", required=True, help="the teacher's run folder, or oracle:<toy> (its exact score)")
    dst.add_argument("--method", required=True, choices=DISTILLATION_METHODS, help="how the student learns")
    dst.add_argument("--out", required=True, help="the student's run folder")
    dst.add_argument("--student-steps", type=count, default=1, help="the student's steps (progressive: DDIM steps)")
    dst.add_argument(
        "--teacher-steps", type=count, help="progressive: the teacher's steps (a power-of-two multiple; default 4x)"
    )
    dst.add_argument("--train-steps", type=count, help="training steps per round (default 2000)")
    dst.add_argument("--sde", default="vp", help="oracle teachers: the forward SDE (vp or ve)")
    dst.add_argument(
        "--set", action="append", metavar="SECTION.FIELD=VALUE", help="override one config field (repeatable)"
    )
    dst.add_argument("--resume", action="store_true", help="continue the distillation in --out")
