"""Flow maps against consistency students at 1, 2, 4 and 8 NFE on the toys' oracles, at equal training steps.

Students (`scoresde distill`, trained through `scoresde.training.Trainer`, wall time measured on --threads CPU
threads), each --train-steps steps from the toy preset's network: a flow map from data alone (``flow_map_training``,
the MeanFlow identity with the Gaussian path's velocity), a flow map distilled from the oracle's exact score
(``flow_map``), consistency distillation (``consistency``) and consistency training (``consistency_training``,
pseudo-Huber). Flow maps sample in K jumps of their map (EDM's grid), consistency students by multistep consistency
sampling.

Figures: the energy distance of 10,000 samples to 10,000 fresh true samples over the closed-form true-vs-true floor
(the mean and its standard error over 3 evaluations with fresh seeds), the samples' mean true NLL minus the data's
entropy, and the training time per step. Equal wall time is read off the same table (seconds per step); digits are
not measured here yet.

    python benchmarks/flow_map.py [--out benchmarks/results] [--threads 2] [--sde vp] [--toys gmm,8gaussians]
"""

from __future__ import annotations

import json
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


def main() -> None:
    parser = benchmark_parser(__doc__, quick="20 training steps, 300 samples, one seed, gmm, 1 and 2 NFE")
    parser.add_argument("--sde", default="vp", choices=("vp", "ve"))
    parser.add_argument("--toys", default="gmm,8gaussians,checkerboard", help="comma-separated toys")
    parser.add_argument("--train-steps", type=int, default=3000, help="every student's training steps")
    parser.add_argument("--reuse", action="store_true", help="keep students trained before with the same config")
    args = parser.parse_args()
    out = setup_run(args)
    toys = ["gmm"] if args.quick else args.toys.split(",")
    train_steps, n, nfes = (20, 300, (1, 2)) if args.quick else (args.train_steps, 10_000, NFES)
    measure = partial(toy_quality, n=n, seeds=1) if args.quick else toy_quality
    report: dict = {"sde": args.sde, "train_steps": train_steps, "n": n, "toys": {}}
    for name in toys:
        toy = toy_dataset(name)
        floors = toy_floors(toy, n, 2 if args.quick else 10)
        runs = out / "training_runs" / f"flow-map-{name}-{args.sde}"
        entry = {"floors": floors, "entropy": toy.perfect_nll(), "rows": [], "students": {}}
        for label, (method, extra) in STUDENTS.items():
            config, seconds = train_student(f"oracle:{name}", method, method, runs, args.reuse,
                                            train_steps=train_steps, sde=args.sde, **extra)  # fmt: skip
            entry["students"][label] = {"seconds": seconds["any"], "seconds_per_step": seconds["any"] / train_steps}
            model, student_config, _ = load_score_model(runs / method / "checkpoint.safetensors")
            for nfe in nfes:
                plan = student_sampling(student_config, nfe)
                sampler, steps = plan.pop("sampler"), plan.pop("steps")
                row = {"toy": name, "method": label, **measure(model.sde, model, toy, sampler, steps, floors, **plan)}
                entry["rows"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "energies"}), flush=True)
        report["toys"][name] = entry
    write_report(out, f"flow_map-{args.sde}", report, markdown(report), plot)


def markdown(report: dict) -> str:
    lines = [f"{report['sde']}; {report['train_steps']} training steps a student; energy distance of {report['n']} "
             f"samples over the closed-form floor (± its standard error over 3 seeds) / mean true NLL minus the "
             f"entropy (nats)", ""]  # fmt: skip
    for name, entry in report["toys"].items():
        nfes = sorted({row["nfe"] for row in entry["rows"]})
        lines += [f"**{name}**", "", "| method | s / step | " + " | ".join(f"{k} NFE" for k in nfes) + " |",
                  "|---|---|" + "---|" * len(nfes)]  # fmt: skip
        for label, student in entry["students"].items():
            cells = {row["nfe"]: row for row in entry["rows"] if row["method"] == label}
            figures = [f"{cells[k]['over_floor']:.2f}x ± {cells[k]['over_floor_se']:.2f} / "
                       f"{cells[k]['nll_minus_entropy']:+.3f}" if k in cells else "" for k in nfes]  # fmt: skip
            lines.append(f"| {label} | {student['seconds_per_step']:.3f} | " + " | ".join(figures) + " |")
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
