"""Few-step students against the best solvers at the same NFE, on the gmm oracle with the exact score as teacher.

Students (`scoresde.distillation`, trained through `scoresde.training.Trainer`, wall time measured on --threads CPU
threads): consistency distillation (one student, sampled with 1, 2 and 4 steps), consistency training (no teacher),
and progressive distillation from a 64-step DDIM teacher (1.4x the floor; rounds 64 -> 32 -> ... -> 1, the students of
4, 2 and 1 steps among them, each round a sixth of the budget).
Solvers with the exact score at the same NFE: DDIM and DPM-Solver++ (2M, 3M) on the warped log-SNR grid, without the
final denoising evaluation, so NFE = steps.

Figures: the energy distance of 10,000 samples to 10,000 fresh true samples over the true-vs-true floor, the floor
both in closed form ((1/n + 1/m) E|X - X'| from 10^6 pairs, `scoresde.metrics.energy_distance_floor`) and measured
(the mean over 10 true-vs-true pairs); the samples' mean true NLL under the oracle beside the data's entropy.

    python benchmarks/distillation.py [--out benchmarks/results] [--threads 2] [--sde vp] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from report_files import write_report  # noqa: E402

from scoresde import energy_distance, sample, toy_dataset  # noqa: E402
from scoresde.config import override  # noqa: E402
from scoresde.distillation import distill, distillation_config, student_sampling  # noqa: E402
from scoresde.metrics import energy_distance_floor  # noqa: E402
from scoresde.training import load_score_model  # noqa: E402

N_SAMPLES = 10_000
NFES = (1, 2, 4)
SOLVERS = {
    "ddim": {"sampler": "ddim", "schedule": "log_snr_warped", "denoise": False},
    "dpm_solver 2M": {"sampler": "dpm_solver", "order": 2, "schedule": "log_snr_warped", "denoise": False},
    "dpm_solver 3M": {"sampler": "dpm_solver", "order": 3, "schedule": "log_snr_warped", "denoise": False},
}


def quality(sde, fn, toy, sampler: str, steps: int, floors: dict, **options) -> dict:
    with torch.no_grad():
        result = sample(sde, fn, (N_SAMPLES, 2), sampler, steps=steps, generator=torch.Generator().manual_seed(5),
                        **options)  # fmt: skip
    x = result.x.double()
    reference = toy.sample(N_SAMPLES, torch.Generator().manual_seed(2)).double()
    energy = energy_distance(x, reference)
    return {
        "nfe": result.nfe,
        "energy": energy,
        "over_floor": energy / floors["closed_form"],
        "over_measured_floor": energy / floors["measured"],
        "nll_minus_entropy": float(-toy.nll_log_prob(x).mean()) - toy.perfect_nll(),
    }


def train_student(
    name: str, method: str, sde_name: str, steps: int, train_steps: int, out: Path, reuse: bool, **extra
) -> tuple:
    config = distillation_config("oracle:gmm", method, steps=steps, sde=sde_name, train_steps=train_steps)
    config = override(config, *(f"{k}={v}" for k, v in extra.items()))
    start = time.perf_counter()
    folder, record = out / name, out / name / "seconds.json"
    if reuse and record.is_file() and json.loads(record.read_text())["config"] == config.to_dict():
        return config, json.loads(record.read_text())["seconds"]  # this very student, trained before
    distill(config, folder, teacher_steps=64 if method == "progressive" else None, progress=False,
            overwrite=True, resume=False)  # fmt: skip
    seconds = time.perf_counter() - start
    record.write_text(json.dumps({"seconds": seconds, "config": config.to_dict()}))
    return config, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sde", default="vp", choices=("vp", "ve"))
    parser.add_argument("--train-steps", type=int, default=3000, help="consistency students' steps (progressive: / 6)")
    parser.add_argument("--quick", action="store_true", help="300 training steps per student (a smoke run)")
    parser.add_argument("--reuse", action="store_true", help="keep students trained before with the same config")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    runs = out / "training_runs" / f"distill-gmm-{args.sde}"
    toy = toy_dataset("gmm")
    train_steps = 300 if args.quick else args.train_steps
    closed, closed_se = energy_distance_floor(toy.sample, N_SAMPLES, generator=torch.Generator().manual_seed(0))
    measured = statistics.mean(
        energy_distance(toy.sample(N_SAMPLES, torch.Generator().manual_seed(100 + 2 * k)).double(),
                        toy.sample(N_SAMPLES, torch.Generator().manual_seed(101 + 2 * k)).double())
        for k in range(10)
    )  # fmt: skip
    floors = {"closed_form": closed, "closed_form_se": closed_se, "measured": measured}
    print(json.dumps({"floors": floors}), flush=True)
    report: dict = {"sde": args.sde, "floors": floors, "entropy": toy.perfect_nll(), "rows": [], "students": {}}

    for name, method, extra in (
        ("consistency", "consistency", {}),
        ("consistency_training", "consistency_training", {"distill.distance": "pseudo_huber"}),
        ("progressive", "progressive", {}),
    ):
        steps_each = train_steps // 6 if method == "progressive" else train_steps
        config, seconds = train_student(name, method, args.sde, 1, steps_each, runs, args.reuse, **extra)
        report["students"][name] = {"train_steps": steps_each, "seconds": seconds, "config": config.to_dict()}
        print(json.dumps({"student": name, "seconds": seconds}), flush=True)
        for nfe in NFES:
            folder = runs / name if method != "progressive" or nfe == 1 else runs / name / "rounds" / str(nfe)
            model, student_config, _ = load_score_model(folder / "checkpoint.safetensors")
            plan = student_sampling(student_config, nfe)
            row = {"method": name, **quality(model.sde, model, toy, plan.pop("sampler"), plan.pop("steps"), floors,
                                             **plan)}  # fmt: skip
            report["rows"].append(row)
            print(json.dumps(row), flush=True)

    sde = config.sde.build()
    score = toy.oracle.score_fn(sde)
    for name, options in SOLVERS.items():
        for nfe in (*NFES, 5, 6, 8):
            options_left = dict(options)
            row = {"method": name, **quality(sde, score, toy, options_left.pop("sampler"), nfe, floors,
                                             dtype=torch.float64, **options_left)}  # fmt: skip
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
    write_report(out, f"distillation-{args.sde}", report, markdown(report), plot)


def markdown(report: dict) -> str:
    floors = report["floors"]
    lines = [
        f"gmm oracle ({report['sde']}), exact-score teacher; energy distance of {N_SAMPLES} samples over the floor "
        f"(closed form {floors['closed_form']:.3g} +- {floors['closed_form_se']:.1g}; measured over 10 true-vs-true "
        f"pairs {floors['measured']:.3g}) / mean true NLL minus the entropy ({report['entropy']:.3f} nats)",
        "",
        "| method | " + " | ".join(f"NFE {n}" for n in (*NFES, 5, 6, 8)) + " | training |",
        "|---|" + "---|" * (len(NFES) + 4),
    ]
    for method in dict.fromkeys(r["method"] for r in report["rows"]):
        cells = {r["nfe"]: r for r in report["rows"] if r["method"] == method}
        student = report["students"].get(method)
        lines.append(
            f"| {method} | "
            + " | ".join(
                f"{cells[n]['over_floor']:.2f}x / {cells[n]['nll_minus_entropy']:+.3f}" if n in cells else "-"
                for n in (*NFES, 5, 6, 8)
            )
            + (f" | {student['seconds']:.0f} s |" if student else " | none |")
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
