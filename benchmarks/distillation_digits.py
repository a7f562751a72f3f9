"""digits-ddpm distilled to 1, 2 and 4 NFE: FD-digits, KID, precision and recall against the teacher at 50 and 20 NFE.

The teacher is benchmarks/training.py's ``digits-ddpm`` run (trained on its preset if the folder holds no finished
checkpoint). Students (`scoresde.training.distillation`, through `scoresde.training.Trainer`, wall time from the run's
own
metrics.csv on --threads CPU threads): consistency distillation (Heun teacher steps, squared L2; one student sampled
with 1, 2 and 4 steps) and, with --progressive, progressive distillation from a 64-step DDIM teacher (rounds
64 -> 32 -> ... -> 1; a k-step student's time includes the rounds before it); with --students flow_map, a flow map
distilled from the teacher's probability-flow velocity (the Lagrangian identity; K jumps of its map). Every sampler
starts from the same prior draw of 1,438 samples (the training split's size, so the floor, the training split scored
the same way, is at the same n); features: the shipped digits network (``scoresde.evaluation.features``, FD-digits).

    python benchmarks/distillation_digits.py [--out benchmarks/results] [--threads 2] [--progressive] [--reuse]
        [--students consistency,flow_map]

Writes distillation_digits.json, .md, .png (FD-digits against NFE) and distillation_digits_samples.png (without
consistency among the students: flow_map_digits.*).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import (  # noqa: E402
    QUICK_TRAINING,  # noqa: E402
    benchmark_parser,
    compare_on_digits,
    digits_markdown,
    plot_digits_quality,
    setup_run,
    train_student,
    write_report,
)

from scoresde.app.image_figures import plot_sample_grids  # noqa: E402
from scoresde.config import override  # noqa: E402
from scoresde.config.presets import preset  # noqa: E402
from scoresde.evaluation.comparison import SamplerSpec, student_lineup  # noqa: E402
from scoresde.training.runs import load_score_model  # noqa: E402
from scoresde.training.trainer import Trainer  # noqa: E402

CONSISTENCY = {"train_steps": 1500, "train.lr": 4e-4, "train.ema_decay": 0.995}
PROGRESSIVE = {"train_steps": 300, "train.lr": 3e-4, "train.ema_decay": 0.99}  # per round, 6 rounds
FLOW_MAP = {"train_steps": 1500, "train.lr": 4e-4, "train.ema_decay": 0.995}  # as consistency


def teacher_lineup() -> list[SamplerSpec]:
    """The teacher at 50 and 20 NFE (the references) and the solvers at the students' budgets."""
    return [
        SamplerSpec("teacher: ddim", "ddim", {"steps": 50, "denoise": False}),
        SamplerSpec("teacher: dpm_solver (3M)", "dpm_solver", {"steps": 20, "order": 3, "denoise": False}),
        *(SamplerSpec("teacher: ddim", "ddim", {"steps": k, "denoise": False}) for k in (2, 4)),
        *(SamplerSpec("teacher: dpm_solver (3M)", "dpm_solver", {"steps": k, "order": 3, "denoise": False})
          for k in (2, 4)),
    ]  # fmt: skip


def main() -> None:
    parser = benchmark_parser(__doc__, quick="a 20-step teacher, a 20-step student")
    parser.add_argument("--progressive", action="store_true", help="also progressive distillation (6 rounds)")
    parser.add_argument("--students", default="consistency", help="comma-separated: consistency, flow_map")
    parser.add_argument("--reuse", action="store_true", help="keep students trained before with the same config")
    args = parser.parse_args()
    out = setup_run(args)
    runs = out / "training_runs"
    config = override(preset("digits-ddpm"), *QUICK_TRAINING) if args.quick else preset("digits-ddpm")
    trainer = Trainer(config, runs / ("digits-ddpm-quick" if args.quick else "digits-ddpm"), progress=True)
    trainer.train()
    teacher = os.path.relpath(trainer.out_dir)
    students, lineup = {}, teacher_lineup()
    chosen = args.students.split(",")
    plans = [(name, name, {"consistency": CONSISTENCY, "flow_map": FLOW_MAP}[name], None) for name in chosen]
    if args.progressive:
        plans.append(("progressive", "progressive", PROGRESSIVE, 64))
    for name, method, settings, teacher_steps in plans:
        extra = {k: v for k, v in settings.items() if k != "train_steps"}
        train_steps = 20 if args.quick else settings["train_steps"]
        config, seconds = train_student(
            teacher, name, method, runs / "distill-digits", args.reuse, train_steps=train_steps,
            teacher_steps=teacher_steps, **extra
        )  # fmt: skip
        students[name] = {"train_steps": settings["train_steps"], "seconds": seconds, **extra}
        print(f"{name}: {seconds}", flush=True)
        folder = runs / "distill-digits" / name
        if method == "progressive":
            for steps in (4, 2, 1):
                student, student_config, _ = load_score_model(folder if steps == 1 else folder / "rounds" / str(steps))
                lineup += student_lineup(student, student_config, f"{settings['train_steps']} steps a round")
        else:
            student, student_config, _ = load_score_model(folder)
            lineup += student_lineup(student, student_config, f"{settings['train_steps']} training steps")

    comparison, report = compare_on_digits(trainer, lineup)
    report = {"teacher": teacher, "students": students, **report}
    shown = {run.spec.label: run.x for run in comparison.runs if run.spec.sampler != "dpm_solver"}
    fig = plot_sample_grids(shown)
    report_name = "distillation_digits" if "consistency" in chosen else "flow_map_digits"
    fig.savefig(out / f"{report_name}_samples.png", dpi=100)
    plt.close(fig)
    text = digits_markdown(report).replace("digits-ddpm (step", "digits-ddpm and its students (teacher step", 1)
    times = ", ".join(f"{name} {max(s['seconds'].values()):.0f} s" for name, s in students.items())
    write_report(out, report_name, report, text + f"\nStudents' training (wall, --threads): {times}\n",
                 plot_digits_quality)  # fmt: skip


if __name__ == "__main__":
    main()
