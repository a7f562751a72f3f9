"""Time grids fitted to the score (`scoresde.samplers.fit_grid`) against the fixed warped log-SNR grid, at 4-8 NFE.

For each SDE (VP, VE), mixture (gmm, the one the samplers' defaults were tuned on, and 8gaussians, which nothing was
tuned on; NFE 6 only) and NFE (4, 6, 8), DPM-Solver++ 3M without the final denoising step (NFE = steps): the grid is
fitted on 1,024 calibration draws (their own generator), then 3 seeds of 10,000 fresh samples are scored by their
energy distance to 10,000 fresh true samples, over the closed-form true-vs-true floor (and over the floor measured
as the mean of 3 true-vs-true pairs). Prints a table; writes grid_fit.json, grid_fit.md, grid_fit.png.

    python benchmarks/grid_fit.py [--out benchmarks/results] [--threads 2] [--quick]
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from common import benchmark_parser, setup_run, write_report  # noqa: E402

from scoresde import VESDE, VPSDE, energy_distance, sample, toy_dataset  # noqa: E402
from scoresde.evaluation.metrics import energy_distance_floor  # noqa: E402
from scoresde.samplers import fit_grid  # noqa: E402

N, SEEDS = 10_000, 3
SDES = {"vp": VPSDE, "ve": lambda: VESDE(sigma_min=0.01, sigma_max=10.0)}


def ratio(sde, score, toy, schedule, steps: int, order: int, floor: float, n: int = N, seeds: int = SEEDS) -> list:
    out = []
    for seed in range(seeds):
        truth = toy.sample(n, torch.Generator().manual_seed(1000 + seed)).double()
        x = sample(sde, score, (n, 2), "dpm_solver", steps=steps, schedule=schedule, order=order, denoise=False,
                   dtype=torch.float64, generator=torch.Generator().manual_seed(2000 + seed)).x  # fmt: skip
        out.append(energy_distance(x, truth) / floor)
    return out


def main() -> None:
    parser = benchmark_parser(__doc__, quick="gmm, VP, NFE 6 only, 2,000 samples, 2 seeds")
    args = parser.parse_args()
    out = setup_run(args)
    n, seeds = (2000, 2) if args.quick else (N, SEEDS)
    rows, floors = [], {}
    for toy_name in ("gmm",) if args.quick else ("gmm", "8gaussians"):
        toy = toy_dataset(toy_name)
        closed = energy_distance_floor(toy.sample, n, generator=torch.Generator().manual_seed(0))[0]
        measured = statistics.mean(
            energy_distance(toy.sample(n, torch.Generator().manual_seed(3000 + 2 * k)).double(),
                            toy.sample(n, torch.Generator().manual_seed(3001 + 2 * k)).double())
            for k in range(seeds)
        )  # fmt: skip
        floors[toy_name] = {"closed_form": closed, "measured": measured}
        for sde_name in ("vp",) if args.quick else SDES:
            sde = SDES[sde_name]()
            score = toy.oracle.score_fn(sde)
            for order in (3,):
                for steps in (6,) if args.quick or toy_name != "gmm" else (4, 6, 8):
                    start = time.perf_counter()
                    fit = fit_grid(sde, score, "dpm_solver", steps, (1, 2), order=order,
                                   iterations=20 if args.quick else 400,
                                   generator=torch.Generator().manual_seed(7))  # fmt: skip
                    seconds = time.perf_counter() - start
                    warped = ratio(sde, score, toy, "log_snr_warped", steps, order, closed, n, seeds)
                    fitted = ratio(sde, score, toy, fit.times, steps, order, closed, n, seeds)
                    rows.append({
                        "toy": toy_name, "sde": sde_name, "order": order, "nfe": steps,
                        "warped": statistics.mean(warped), "fitted": statistics.mean(fitted),
                        "fitted_seeds": fitted,
                        "fitted_over_measured_floor": statistics.mean(fitted) * closed / measured,
                        "fit_seconds": seconds, "fit": fit.to_dict(),
                    })  # fmt: skip
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "fit"}), flush=True)
    report = {"floors": floors, "rows": rows, "samples": n, "seeds": seeds}
    write_report(out, "grid_fit", report, markdown(report), plot)


def markdown(report: dict) -> str:
    lines = [
        f"Energy distance of {report['samples']} samples over the closed-form true-vs-true floor, mean of "
        f"{report['seeds']} seeds: warped log-SNR grid -> fitted grid (fitted over the measured floor in brackets); "
        "DPM-Solver++ without the final denoising step (NFE = steps), exact score.",
        "",
        "| mixture | SDE | solver | NFE 4 | NFE 6 | NFE 8 | fit (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((r["toy"], r["sde"], r["order"]) for r in report["rows"])
    for toy, sde, order in keys:
        cells = {r["nfe"]: r for r in report["rows"] if (r["toy"], r["sde"], r["order"]) == (toy, sde, order)}
        seconds = max(r["fit_seconds"] for r in cells.values())
        lines.append(
            f"| {toy} | {sde} | {order}M | "
            + " | ".join(
                f"{cells[n]['warped']:.1f} -> **{cells[n]['fitted']:.2f}** "
                f"({cells[n]['fitted_over_measured_floor']:.2f})"
                if n in cells else "-"
                for n in (4, 6, 8)
            )
            + f" | {seconds:.0f} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    keys = dict.fromkeys((r["toy"], r["sde"], r["order"]) for r in report["rows"])
    for toy, sde, order in keys:
        rows = sorted((r for r in report["rows"] if (r["toy"], r["sde"], r["order"]) == (toy, sde, order)),
                      key=lambda r: r["nfe"])  # fmt: skip
        line = ax.plot([r["nfe"] for r in rows], [r["fitted"] for r in rows], "-o", label=f"{toy} {sde} {order}M")
        ax.plot([r["nfe"] for r in rows], [r["warped"] for r in rows], ":", color=line[0].get_color())
    ax.axhline(1.5, color="k", ls="--", lw=0.8)
    ax.set(xlabel="NFE", ylabel="energy distance / floor", yscale="log",
           title="fitted grid (solid) vs warped log-SNR (dotted)")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
