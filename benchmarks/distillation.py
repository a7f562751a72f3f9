"""Few-step students against the best solvers at the same NFE, on the gmm oracle with the exact score as teacher.

Students (`scoresde.training.distillation`, trained through `scoresde.training.Trainer`, wall time measured on
--threads CPU
threads): consistency distillation (one student, sampled with 1, 2 and 4 steps), consistency training (no teacher),
and progressive distillation from a --teacher-steps DDIM teacher (default 128; rounds 128 -> 64 -> ... -> 1, the
students of 4, 2 and 1 steps among them, each round a sixth of --train-steps; the teacher's own quality is
reported). The consistency students also sample on times fitted to data (`scoresde.samplers.fit_grid` with ``data``:
16,384 true draws of their own seed) at 2 and 4 NFE.
Solvers with the exact score at the same NFE: DDIM and DPM-Solver++ (2M, 3M) on the warped log-SNR grid, without the
final denoising evaluation, so NFE = steps.

Figures: the energy distance of 10,000 samples to 10,000 fresh true samples over the true-vs-true floor (the mean and
its standard error over 3 evaluations with fresh seeds: a few samples thrown far away move one such figure by the
floor or more), the floor
both in closed form ((1/n + 1/m) E|X - X'| from 10^6 pairs, `scoresde.evaluation.metrics.energy_distance_floor`) and
measured
(the mean over 10 true-vs-true pairs); the samples' mean true NLL under the oracle beside the data's entropy.

    python benchmarks/distillation.py [--out benchmarks/results] [--threads 2] [--sde vp] [--quick]
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from common import benchmark_parser, setup_run, toy_floors, toy_quality, train_student, write_report  # noqa: E402

from scoresde import toy_dataset
from scoresde.samplers import fit_grid
from scoresde.training.distill import student_sampling  # noqa: E402
from scoresde.training.runs import load_score_model  # noqa: E402

N_SAMPLES = 10_000
SEEDS = 3
NFES = (1, 2, 4)
FITTED = (2, 4)
CALIBRATION = 16_384
COLUMNS = (1, 2, 3, 4, 5, 6, 8)
SOLVERS = {
    "ddim": {"sampler": "ddim", "schedule": "log_snr_warped", "denoise": False},
    "dpm_solver 2M": {"sampler": "dpm_solver", "order": 2, "schedule": "log_snr_warped", "denoise": False},
    "dpm_solver 3M": {"sampler": "dpm_solver", "order": 3, "schedule": "log_snr_warped", "denoise": False},
}


def fitted_rows(report: dict, name: str, model, toy, floors: dict, measure=toy_quality, iterations: int = 150) -> None:
    """A consistency student on times fitted to data (`fit_grid` on the energy distance to 16,384 true draws of their
    own seed, prior draws and sampler noise of their own seeds too): 2 and 4 steps."""
    calibration = toy.sample(CALIBRATION, torch.Generator().manual_seed(77)).double()
    for nfe in FITTED:
        start = time.perf_counter()
        fit = fit_grid(model.sde, model, "consistency", nfe, (1, 2), n=CALIBRATION, data=calibration,
                       iterations=iterations, dtype=torch.float32, start=("edm", "log_snr_warped"))  # fmt: skip
        row = {"method": f"{name} (fitted times)", "times": fit.times.tolist(),
               "fit_seconds": time.perf_counter() - start,
               **measure(model.sde, model, toy, "consistency", nfe, floors, schedule=fit.times)}  # fmt: skip
        report["rows"].append(row)
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="30 training steps per student, 400 samples, one seed, the solvers at 2 and 4 NFE (a smoke run)",
    )
    parser.add_argument("--sde", default="vp", choices=("vp", "ve"))
    parser.add_argument("--train-steps", type=int, default=6000, help="consistency students' steps (progressive: / 6)")
    parser.add_argument("--teacher-steps", type=int, default=128, help="the progressive teacher's DDIM steps")
    parser.add_argument("--reuse", action="store_true", help="keep students trained before with the same config")
    args = parser.parse_args()
    out = setup_run(args)
    runs = out / "training_runs" / f"distill-gmm-{args.sde}"
    toy = toy_dataset("gmm")
    train_steps = 30 if args.quick else args.train_steps
    n = 400 if args.quick else N_SAMPLES
    measure = partial(toy_quality, n=n, seeds=1) if args.quick else toy_quality
    floors = toy_floors(toy, n, 2 if args.quick else 10)
    print(json.dumps({"floors": floors}), flush=True)
    report: dict = {"sde": args.sde, "floors": floors, "entropy": toy.perfect_nll(), "rows": [], "students": {}}

    for name, method, extra in (
        ("consistency", "consistency", {}),
        ("consistency_training", "consistency_training", {"distill.distance": "pseudo_huber"}),
        ("progressive", "progressive", {}),
    ):
        steps_each = train_steps // 6 if method == "progressive" else train_steps
        teacher_steps = args.teacher_steps if method == "progressive" else None
        config, seconds = train_student(
            "oracle:gmm", name, method, runs, args.reuse, train_steps=steps_each, teacher_steps=teacher_steps,
            sde=args.sde, **extra
        )  # fmt: skip
        report["students"][name] = {"train_steps": steps_each, "seconds": seconds, "config": config.to_dict()}
        print(json.dumps({"student": name, "seconds": seconds}), flush=True)
        for nfe in NFES:
            folder = runs / name if method != "progressive" or nfe == 1 else runs / name / "rounds" / str(nfe)
            model, student_config, _ = load_score_model(folder / "checkpoint.safetensors")
            plan = student_sampling(student_config, nfe)
            row = {"method": name, **measure(model.sde, model, toy, plan.pop("sampler"), plan.pop("steps"), floors,
                                             **plan)}  # fmt: skip
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
        if method != "progressive":
            fitted_rows(report, name, model, toy, floors, measure, iterations=5 if args.quick else 150)

    sde = config.sde.build()
    score = toy.oracle.score_fn(sde)
    report["teacher"] = {"steps": args.teacher_steps, **measure(sde, score, toy, "ddim", args.teacher_steps, floors,
                         schedule="log_snr", denoise=False, dtype=torch.float64)}  # fmt: skip
    for name, options in SOLVERS.items():
        for nfe in (2, 4) if args.quick else COLUMNS:
            options_left = dict(options)
            row = {"method": name, **measure(sde, score, toy, options_left.pop("sampler"), nfe, floors,
                                             dtype=torch.float64, **options_left)}  # fmt: skip
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
    write_report(out, f"distillation-{args.sde}", report, markdown(report), plot)


def training_cell(student: dict | None, method: str) -> str:
    """A student's wall time (the longest: a progressive chain's last round), or what the row is instead."""
    if student:
        return f"{max(student['seconds'].values()):.0f} s"
    return "the student above" if method.endswith("(fitted times)") else "none"


def markdown(report: dict) -> str:
    floors = report["floors"]
    lines = [
        f"gmm oracle ({report['sde']}), exact-score teacher; energy distance of {N_SAMPLES} samples over the floor "
        f"(closed form {floors['closed_form']:.3g} +- {floors['closed_form_se']:.1g}; measured over 10 true-vs-true "
        f"pairs {floors['measured']:.3g}) / mean true NLL minus the entropy ({report['entropy']:.3f} nats)",
        "",
        f"The progressive teacher, DDIM with the exact score on {report['teacher']['steps']} log-SNR steps: "
        f"{report['teacher']['over_floor']:.2f} ± {report['teacher']['over_floor_se']:.2f}x.",
        "",
        "| method | " + " | ".join(f"NFE {n}" for n in COLUMNS) + " | training |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for method in dict.fromkeys(r["method"] for r in report["rows"]):
        cells = {r["nfe"]: r for r in report["rows"] if r["method"] == method}
        cell = lambda r: f"{r['over_floor']:.2f} ± {r['over_floor_se']:.2f}x / {r['nll_minus_entropy']:+.2f}"  # noqa: E731
        student = report["students"].get(method)
        lines.append(
            f"| {method} | "
            + " | ".join(cell(cells[n]) if n in cells else "-" for n in COLUMNS)
            + f" | {training_cell(student, method)} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in report["rows"]):
        rows = sorted((r for r in report["rows"] if r["method"] == method), key=lambda r: r["nfe"])
        style = "-o" if method in report["students"] else "--s"
        ax.plot([r["nfe"] for r in rows], [r["over_floor"] for r in rows], style, label=method)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(xlabel="NFE", ylabel="energy distance / floor", yscale="log", title=f"gmm oracle ({report['sde']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
