"""Flow maps against consistency students at 1, 2, 4 and 8 NFE on the toys' oracles, at equal training steps and
at equal wall time.

Students (`scoresde distill`, trained through `scoresde.training.Trainer`, wall time measured on --threads CPU
threads), each --train-steps steps from the toy preset's network: a flow map from data alone (``flow_map_training``:
the path's velocity on the diagonal, Lagrangian self-distillation off it), a flow map distilled from the oracle's
exact score (``flow_map``: the Lagrangian identity, Align Your Flow's LMD), consistency distillation
(``consistency``) and consistency training (``consistency_training``, pseudo-Huber). Flow maps sample in K jumps of
their map (EDM's grid), consistency students by multistep consistency sampling. At equal wall time: the consistency
students again, trained for the distilled flow map's wall time (more steps: theirs are cheaper).

Figures: the energy distance of 10,000 samples to 10,000 fresh true samples over the closed-form true-vs-true floor
(the mean and its standard error over 3 evaluations with fresh seeds), the samples' mean true NLL minus the data's
entropy, and the training time per step.

``--section choices`` (gmm only) measures the objective's choices one at a time against the defaults (Lagrangian
identity, uniform times, plain squared error, 25 % of the draws off the diagonal): MeanFlow's own (Eulerian
identity, logit-normal times, adaptive weight p = 1), the Eulerian identity alone, logit-normal times and p = 1; and
from data, MeanFlow's Eulerian identity. Writes flow_map-choices.*.

    python benchmarks/flow_map.py [--out benchmarks/results] [--threads 2] [--sde vp] [--toys gmm,8gaussians]
        [--section choices]
"""

from __future__ import annotations

import json
import re
from functools import partial

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import benchmark_parser, setup_run, toy_floors, toy_quality, train_student, write_report  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from scoresde import toy_dataset  # noqa: E402
from scoresde.training.distill import student_sampling  # noqa: E402
from scoresde.training.runs import load_score_model  # noqa: E402

NFES = (1, 2, 4, 8)
STUDENTS = {  # name: (method, config overrides)
    "flow map (data)": ("flow_map_training", {}),
    "flow map (distilled)": ("flow_map", {}),
    "consistency distillation": ("consistency", {}),
    "consistency training": ("consistency_training", {"distill.distance": "pseudo_huber"}),
}
EQUAL_TIME = ("consistency distillation", "consistency training")
"""Students trained again for the distilled flow map's wall time."""
MEANFLOW = {"distill.flow_identity": "eulerian", "distill.flow_times": "logit_normal", "distill.flow_adaptive_p": 1}
CHOICES = {  # gmm: each choice against the defaults (the main table's flow-map rows)
    "distilled, MeanFlow's choices (Eulerian, logit-normal, p = 1)": ("flow_map", MEANFLOW),
    "distilled, Eulerian identity": ("flow_map", {"distill.flow_identity": "eulerian"}),
    "distilled, logit-normal times": ("flow_map", {"distill.flow_times": "logit_normal"}),
    "distilled, adaptive weight p = 1": ("flow_map", {"distill.flow_adaptive_p": 1}),
    "from data, MeanFlow's Eulerian identity": ("flow_map_training", {"distill.flow_identity": "eulerian"}),
}


def main() -> None:
    parser = benchmark_parser(__doc__, quick="20 training steps, 300 samples, one seed, gmm, 1 and 2 NFE")
    parser.add_argument("--sde", default="vp", choices=("vp", "ve"))
    parser.add_argument("--toys", default="gmm,8gaussians,checkerboard", help="comma-separated toys")
    parser.add_argument("--train-steps", type=int, default=2000, help="every student's training steps")
    parser.add_argument("--section", default="students", choices=("students", "choices"))
    parser.add_argument("--students", default=",".join(STUDENTS), help="comma-separated students of the main table")
    parser.add_argument("--no-equal-time", action="store_true", help="no equal-wall-time students")
    parser.add_argument("--tag", default="", help="appended to the report's name (flow_map-vp-TAG)")
    parser.add_argument("--reuse", action="store_true", help="keep students trained before with the same config")
    args = parser.parse_args()
    out = setup_run(args)
    choices = args.section == "choices"
    toys = ["gmm"] if args.quick or choices else args.toys.split(",")
    train_steps, n, nfes = (20, 300, (1, 2)) if args.quick else (args.train_steps, 10_000, NFES)
    measure = partial(toy_quality, n=n, seeds=1) if args.quick else toy_quality
    report: dict = {"sde": args.sde, "train_steps": train_steps, "n": n, "toys": {}}
    for name in toys:
        toy = toy_dataset(name)
        floors = toy_floors(toy, n, 2 if args.quick else 10)
        runs = out / "training_runs" / f"flow-map-{name}-{args.sde}"
        entry = {"floors": floors, "entropy": toy.perfect_nll(), "rows": [], "students": {}}

        student = partial(train_and_measure, name, toy, floors, runs, entry, args, measure, nfes)
        chosen = CHOICES if choices else {k: v for k, v in STUDENTS.items() if k in args.students.split(",")}
        for label, (method, extra) in chosen.items():
            student(label, method, train_steps, extra)
        if not (choices or args.no_equal_time) and "flow map (distilled)" in chosen:
            budget = entry["students"]["flow map (distilled)"]["seconds"]
            for label in [kind for kind in EQUAL_TIME if kind in chosen]:
                steps = max(1, round(budget / entry["students"][label]["seconds_per_step"]))
                method, extra = STUDENTS[label]
                student(f"{label}, equal time ({steps} steps)", method, steps, extra)
        report["toys"][name] = entry
    name = "flow_map-choices" if choices else f"flow_map-{args.sde}" + (f"-{args.tag}" if args.tag else "")
    write_report(out, name, report, markdown(report), plot)


def train_and_measure(name, toy, floors, runs, entry, args, measure, nfes, label: str, method: str, steps: int,
                      extra: dict) -> None:  # fmt: skip
    """Distil ``method`` from the toy's oracle for ``steps`` steps into ``runs`` and add its training time and its
    rows at every NFE to ``entry``."""
    folder = re.sub(r"[^0-9A-Za-z]+", "-", label).strip("-")  # one folder a student: "flow-map-distilled"
    config, seconds = train_student(f"oracle:{name}", folder, method, runs, args.reuse, train_steps=steps,
                                    sde=args.sde, **extra)  # fmt: skip
    entry["students"][label] = {"steps": steps, "seconds": seconds["any"], "seconds_per_step": seconds["any"] / steps}
    model, student_config, _ = load_score_model(runs / folder / "checkpoint.safetensors")
    for nfe in nfes:
        plan = student_sampling(student_config, nfe)
        sampler, k = plan.pop("sampler"), plan.pop("steps")
        row = {"toy": name, "method": label, **measure(model.sde, model, toy, sampler, k, floors, **plan)}
        entry["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "energies"}), flush=True)


def markdown(report: dict) -> str:
    lines = [f"{report['sde']}; {report['train_steps']} training steps a student (or the steps named); energy distance "
             f"of {report['n']} samples over the closed-form floor (± its standard error over 3 seeds) / mean true NLL "
             f"minus the entropy (nats)", ""]  # fmt: skip
    for name, entry in report["toys"].items():
        nfes = sorted({row["nfe"] for row in entry["rows"]})
        lines += [f"**{name}**", "", "| method | steps | s / step | " + " | ".join(f"{k} NFE" for k in nfes) + " |",
                  "|---|---|---|" + "---|" * len(nfes)]  # fmt: skip
        for label, student in entry["students"].items():
            cells = {row["nfe"]: row for row in entry["rows"] if row["method"] == label}
            figures = [f"{cells[k]['over_floor']:.2f}x ± {cells[k]['over_floor_se']:.2f} / "
                       f"{cells[k]['nll_minus_entropy']:+.3f}" if k in cells else "" for k in nfes]  # fmt: skip
            lines.append(f"| {label} | {student['steps']} | {student['seconds_per_step']:.3f} | " + " | ".join(figures)
                         + " |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    toys = list(report["toys"])
    fig, axes = plt.subplots(1, len(toys), figsize=(4.5 * len(toys), 3.6), squeeze=False)
    for ax, name in zip(axes[0], toys):
        entry = report["toys"][name]
        for label in entry["students"]:
            rows = [row for row in entry["rows"] if row["method"] == label]
            ax.errorbar([r["nfe"] for r in rows], [r["over_floor"] for r in rows],
                        yerr=[r["over_floor_se"] for r in rows], marker="o", label=label, capsize=3)  # fmt: skip
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set(xscale="log", yscale="log", xlabel="NFE", title=f"{name} ({report['sde']})",
               ylabel="energy distance / closed-form floor")  # fmt: skip
        nfes = sorted({r["nfe"] for r in entry["rows"]})
        ax.set_xticks(nfes, labels=nfes)
        ax.xaxis.set_minor_formatter(NullFormatter())  # the log axis's minor labels (3x10^0, ...) off
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
