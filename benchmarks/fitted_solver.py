"""Five NFE without a student: the fitted multistep solver against the best training-free solvers, on three toys with
their exact scores (VP and VE) and on digits-ddpm.

Line-up at 3, 4, 5, 6 and 8 NFE, all without a final denoising evaluation (NFE = steps): DPM-Solver++ 3M on the
log-SNR grid and on the warped log-SNR grid, UniPC-3 (warped), iPNDM-4 and DEIS-tAB3 (EDM's grid, as diff-sampler runs
them), DPM-Solver++ 3M on a grid fitted to the model (`scoresde.samplers.fit_grid`), and the fitted solver
(`scoresde.samplers.fit_solver`: DPM-Solver++ 3M with per-step corrections and times fitted to a tight solve's end
points on 1,024 calibration draws of their own seed, from the fitted grid as `fit_solver`'s default does; its fitting
time includes the grid's). Toys (gmm, 8gaussians, checkerboard): the energy distance of
10,000 samples to 10,000 fresh true samples over the closed-form true-vs-true floor (mean and standard error over 3
evaluation seeds, fresh prior draws), and the samples' mean true NLL minus the entropy. The energy distance is the
sliced estimator on 512 fixed directions (`scoresde._stats.sliced_energy_distance`: unbiased over the directions,
so the closed-form floor (1/n + 1/m) E|X - X'| is its floor too), 0.05 s a figure where the pairwise form takes 4 s
(210 figures of 3 seeds each). digits-ddpm (trained by
``benchmarks/digits_quality.py``, or here): FD-digits and KID of 1,438 samples at 4, 5, 6 and 8 NFE with each fit's
wall time. Also measured: which objective fits best at 5 NFE on the gmm oracle (trajectory, distribution, mix).

    python benchmarks/fitted_solver.py [--out benchmarks/results] [--threads 2] [--quick] [--skip-digits|--digits-only]
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
from common import (  # noqa: E402
    QUICK_TRAINING,
    benchmark_parser,
    compare_on_digits,
    parse,
    setup_run,
    toy_floors,
    toy_quality,
    write_report,
)

from scoresde import create_sde, preset, toy_dataset  # noqa: E402
from scoresde._stats import sliced_energy_distance  # noqa: E402
from scoresde.config import override  # noqa: E402
from scoresde.evaluation.comparison import SamplerSpec, solver_lineup  # noqa: E402
from scoresde.samplers import fit_grid, fit_solver  # noqa: E402
from scoresde.training import Trainer  # noqa: E402

TOYS = ("gmm", "8gaussians", "checkerboard")
NFES = (3, 4, 5, 6, 8)
DIGITS_NFES = (4, 5, 6, 8)
BASELINES = {
    "DPM-Solver++ 3M": {"sampler": "dpm_solver", "order": 3, "schedule": "log_snr"},
    "DPM-Solver++ 3M (warped)": {"sampler": "dpm_solver", "order": 3, "schedule": "log_snr_warped"},
    "UniPC-3 (warped)": {"sampler": "unipc", "order": 3, "schedule": "log_snr_warped"},
    "iPNDM-4 (EDM grid)": {"sampler": "ipndm", "order": 4, "schedule": "edm"},
    "DEIS-tAB3 (EDM grid)": {"sampler": "deis", "order": 3, "schedule": "edm"},
}
FITTED_GRID, FITTED = "DPM-Solver++ 3M, fitted grid", "fitted solver"
METHODS = (*BASELINES, FITTED_GRID, FITTED)


def _fits(sde, score, steps: int, shape: tuple, iterations: int, n: int, dtype=torch.float64, objective="trajectory"):
    """The fitted grid and the fitted solver of ``steps`` steps, with their wall times."""
    start = time.perf_counter()
    grid = fit_grid(sde, score, "dpm_solver", steps, shape, order=3, n=n, iterations=iterations, dtype=dtype)
    grid_seconds = time.perf_counter() - start
    start = time.perf_counter()
    solver = fit_solver(
        sde,
        score,
        steps,
        shape,
        n=n,
        iterations=iterations,
        objective=objective,
        dtype=dtype,
        start=(grid.times, "log_snr_warped"),
    )  # fit_solver's default starts, its fitted grid reused
    return grid, grid_seconds, solver, grid_seconds + time.perf_counter() - start


def toy_rows(toy_name: str, sde_name: str, args, floors: dict, measure, methods=METHODS) -> list[dict]:
    toy, sde = toy_dataset(toy_name), create_sde(sde_name)
    score = toy.oracle.score_fn(sde)
    rows = []
    for nfe in args.nfes:
        grid, grid_seconds, solver, solver_seconds = _fits(sde, score, nfe, (1, 2), args.iterations, args.n_fit)
        settings = {name: dict(options) for name, options in BASELINES.items()}
        settings[FITTED_GRID] = {"sampler": "dpm_solver", "order": 3, "schedule": grid.times}
        settings[FITTED] = {"sampler": None, "solver": solver}
        for method, options in settings.items():
            if method not in methods:
                continue
            options = dict(options)
            sampler = options.pop("sampler")
            steps = None if sampler is None else nfe
            extra = {} if sampler is None else {"denoise": False}
            row = {"toy": toy_name, "sde": sde_name, "method": method, "steps": nfe,
                   **measure(sde, score, toy, sampler, steps, floors, **options, **extra)}  # fmt: skip
            row["fit_seconds"] = {FITTED_GRID: grid_seconds, FITTED: solver_seconds}.get(method)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "energies"}), flush=True)
    return rows


def objective_rows(args, floors: dict, measure) -> list[dict]:
    """Which objective fits best: the gmm oracle (VP) at 5 NFE, each objective's solver on fresh draws."""
    toy, sde = toy_dataset("gmm"), create_sde("vp")
    score = toy.oracle.score_fn(sde)
    rows = []
    for objective in ("trajectory", "distribution", "mix"):
        start = time.perf_counter()
        solver = fit_solver(sde, score, 5, (1, 2), n=args.n_fit, iterations=args.iterations, objective=objective)
        seconds = time.perf_counter() - start
        row = {
            "objective": objective,
            "fit_seconds": seconds,
            **measure(sde, score, toy, None, None, floors, solver=solver),
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "energies"}), flush=True)
    return rows


def digits_rows(args, out: Path) -> dict:
    """The same line-up on digits-ddpm (FD-digits, KID), each fit's wall time."""
    config = override(preset("digits-ddpm"), *QUICK_TRAINING) if args.quick else preset("digits-ddpm")
    folder = out / "training_runs" / ("digits-ddpm-quick" if args.quick else "digits-ddpm")
    trainer = Trainer(config, folder, progress=True)
    trainer.train()
    model = trainer.score_fn
    specs, fit_seconds = [], {}
    for nfe in args.digits_nfes:
        specs += [SamplerSpec(name, o["sampler"], {**{k: v for k, v in o.items() if k != "sampler"}, "steps": nfe,
                                                    "denoise": False}) for name, o in BASELINES.items()]  # fmt: skip
        grid, grid_seconds, solver, solver_seconds = _fits(
            model.sde, model, nfe, (1, 1, 8, 8), args.digits_iterations, args.digits_n_fit, torch.float32
        )
        specs.append(SamplerSpec(FITTED_GRID, "dpm_solver", {"order": 3, "schedule": grid.times.tolist(),
                                                               "steps": nfe, "denoise": False}))  # fmt: skip
        specs += [SamplerSpec(FITTED, s.sampler, s.options) for s in solver_lineup(solver, "fitted")]
        fit_seconds[nfe] = {FITTED_GRID: grid_seconds, FITTED: solver_seconds}
    _, report = compare_on_digits(trainer, specs)
    report["fit_seconds"] = fit_seconds
    return report


def markdown(report: dict) -> str:
    lines = []
    for toy in report["toys"]:
        for sde in report["sdes"]:
            rows = [r for r in report["rows"] if r["toy"] == toy and r["sde"] == sde]
            floor = report["floors"][toy]["closed_form"]
            lines += [
                f"{toy} ({sde.upper()}, exact score): energy distance of {report['n']} samples over the closed-form "
                f"floor {floor:.2e} (mean ± se of {report['seeds']} seeds); true NLL - entropy in brackets",
                "",
                "| method | " + " | ".join(f"{k} NFE" for k in report["nfes"]) + " |",
                "|---|" + "---:|" * len(report["nfes"]),
            ]
            for method in METHODS:
                cells = [
                    f"{r['over_floor']:.2f} ± {r['over_floor_se']:.2f} ({r['nll_minus_entropy']:+.3f})"
                    for k in report["nfes"]
                    for r in rows
                    if r["method"] == method and r["steps"] == k
                ]
                bold = "**" if method == FITTED else ""
                lines.append(f"| {bold}{method}{bold} | " + " | ".join(cells) + " |")
            fits = [r["fit_seconds"] for r in rows if r["method"] == FITTED]
            lines += ["", f"fitted solver: {min(fits):.0f}-{max(fits):.0f} s of fitting a step count", ""]
    if report.get("objectives"):
        lines += ["objective of the fit (gmm, VP, 5 NFE): energy distance over the floor", "",
                  "| objective | over floor | fit (s) |", "|---|---:|---:|"]  # fmt: skip
        lines += [
            f"| {r['objective']} | {r['over_floor']:.2f} ± {r['over_floor_se']:.2f} | {r['fit_seconds']:.0f} |"
            for r in report["objectives"]
        ]
        lines.append("")
    digits = report.get("digits")
    if digits:
        floor = digits["floor"]
        lines += [
            f"digits-ddpm (step {digits['step']}): FD-digits / KID of {digits['n']} samples against the test split "
            f"(training split: FD {floor['frechet_distance']:.2f}, KID {floor['kid']:.4f})",
            "",
            "| method | " + " | ".join(f"{k} NFE" for k in report["digits_nfes"]) + " |",
            "|---|" + "---:|" * len(report["digits_nfes"]),
        ]
        for method in METHODS:
            cells = [
                f"{r['image_quality']['frechet_distance']:.2f} / {r['image_quality']['kid']:.4f}"
                for k in report["digits_nfes"]
                for r in digits["runs"]
                if r["family"] == method and r["nfe"] == k
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        seconds = [v[FITTED] for v in digits["fit_seconds"].values()]
        lines += ["", f"fitted solver on digits-ddpm: {min(seconds):.0f}-{max(seconds):.0f} s of fitting", ""]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    fig, axes = plt.subplots(len(report["sdes"]), len(report["toys"]), figsize=(4.2 * len(report["toys"]),
                             3.6 * len(report["sdes"])), squeeze=False)  # fmt: skip
    for i, sde in enumerate(report["sdes"]):
        for j, toy in enumerate(report["toys"]):
            ax = axes[i][j]
            for method in METHODS:
                rows = [r for r in report["rows"] if r["toy"] == toy and r["sde"] == sde and r["method"] == method]
                ax.errorbar([r["steps"] for r in rows], [r["over_floor"] for r in rows],
                            yerr=[r["over_floor_se"] for r in rows], marker="o", capsize=2, label=method,
                            lw=2.5 if method == FITTED else 1)  # fmt: skip
            ax.axhline(1.0, color="grey", ls="--")
            ax.set(yscale="log", xlabel="NFE", ylabel="energy distance / floor", title=f"{toy} ({sde.upper()})")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = benchmark_parser(
        __doc__, quick="gmm (VP) at 5 NFE, 2,000 samples, one seed, short fits, a 20-step digits model"
    )
    parser.add_argument("--skip-digits", action="store_true", help="the toys only")
    parser.add_argument(
        "--digits-only", action="store_true", help="keep the toys' rows of --out/fitted_solver.json; run digits-ddpm"
    )
    parser.add_argument(
        "--refit", action="store_true", help="measure the fitted solver's toy rows of --out/fitted_solver.json again"
    )
    args = parse(parser)
    args.nfes, args.digits_nfes = ((5,), (5,)) if args.quick else (NFES, DIGITS_NFES)
    args.iterations, args.n_fit = (20, 256) if args.quick else (300, 1024)
    args.digits_iterations, args.digits_n_fit = (5, 32) if args.quick else (150, 256)
    toys, sdes = (("gmm",), ("vp",)) if args.quick else (TOYS, ("vp", "ve"))
    n, seeds = (2000, 1) if args.quick else (10_000, 3)
    out = setup_run(args)
    measure = partial(toy_quality, n=n, seeds=seeds, distance=partial(sliced_energy_distance, n_projections=512))
    if args.digits_only or args.refit:
        report = json.loads((out / "fitted_solver.json").read_text())
    if args.refit:  # the other rows are deterministic (fixed seeds): only the fitted solver's are measured again
        floors = report["floors"]
        rows = [r for r in report["rows"] if r["method"] != FITTED]
        for toy in report["toys"]:
            for sde in report["sdes"]:
                rows += toy_rows(toy, sde, args, floors[toy], measure, methods=(FITTED,))
        report["rows"] = rows
        report["objectives"] = objective_rows(args, floors["gmm"], measure)
    elif not args.digits_only:
        floors = {toy: toy_floors(toy_dataset(toy), n, 2) for toy in toys}
        report = {"toys": toys, "sdes": sdes, "nfes": args.nfes, "digits_nfes": args.digits_nfes, "n": n,
                  "seeds": seeds, "floors": floors, "rows": []}  # fmt: skip
        for toy in toys:
            for sde in sdes:
                report["rows"] += toy_rows(toy, sde, args, floors[toy], measure)
        report["objectives"] = objective_rows(args, floors["gmm"], measure)
    if not (args.skip_digits or args.refit):
        report["digits"] = digits_rows(args, out)
    write_report(out, "fitted_solver", report, markdown(report), plot)


if __name__ == "__main__":
    main()
