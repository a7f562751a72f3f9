"""Bits/dim at image scale: solvers, error control, probes, t_min, the rigorous bound and the cost against dimension.

On the digits-ddpm model (benchmarks/training.py's run, trained here if missing; 359 test images of 8x8,
17 levels), float32 and Hutchinson divergence as the reference implementation, one dequantisation, the same
dequantisation and probes in every configuration (one generator seed), so that differences between rows are
the integrators' own:

1. Solvers side by side: NFE, wall time, bits/dim, its standard error and integration error estimate, and the
   distance to a tight adaptive solve (exponential integrator, batch control, 1e-4; per-sample control at tight
   tolerances takes many times longer on this float32 model for a figure that agrees to 1e-4 bits/dim).
2. Per-sample against batch error control (NFE, time, accuracy).
3. Hutchinson probes: Gaussian against Rademacher, 1 / 2 / 4 probes per point, the probes' share of the
   standard error.
4. How the figure moves with t_min (1e-5, 1e-4, 1e-3), and the rigorous bound beside the conventional figure.
5. Cost against dimension: NFE and wall time per 100 points for D = 2 and 10 (oracle mixtures), 64 (digits)
   and 784 (the mnist-ddpm U-Net with random weights), exact against Hutchinson divergence. The exact
   divergence of the 784-D model is timed on one evaluation and multiplied by the Hutchinson run's NFE (a full
   exact solve there takes hours on a CPU), which the table marks.

With ``--section dequantization`` (issue 42) instead: the same model's bits/dim under each dequantisation (uniform,
truncated-normal; averaged and importance-weighted over K draws), each with its offset, NFE and wall time, beside
the reference implementation's setting (score_sde's ``likelihood_fn``: RK45 in t, rtol = atol = 1e-5, one error norm
over the batch, uniform dequantisation), and cheaper solves against the tight solve's figure (the issue's goal: the
reference's accuracy at a tenth of its NFE). Writes likelihood_dequantization.json, .md and .png.

Usage: python benchmarks/likelihood_images.py [--out benchmarks/results] [--quick] [--section dequantization]
Writes likelihood_images.json, likelihood_images.md and likelihood_cost.png.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from common import QUICK_TRAINING, benchmark_parser, setup_run  # noqa: E402

from scoresde import VPSDE, bits_per_dim, image_dataset, log_likelihood, toy_dataset  # noqa: E402
from scoresde.app.report import IMAGE_LIKELIHOOD  # noqa: E402
from scoresde.config.presets import preset  # noqa: E402
from scoresde.config.schema import override  # noqa: E402
from scoresde.training.runs import build_model  # noqa: E402
from scoresde.training.trainer import Trainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from scoresde.oracles import random_mixture  # noqa: E402

SEED = 1
TIGHT = "tight: ei, batch, 1e-4"


def digits_model(out: Path, quick: bool):
    """The digits-ddpm run of benchmarks/training.py (resumed or trained), its SDE, score and test split."""
    cfg = override(preset("digits-ddpm"), "train.checkpoint_every=500", "train.log_every=100")
    if quick:
        cfg = override(cfg, *QUICK_TRAINING)
    run = out / "training_runs" / ("digits-ddpm" + ("-quick" if quick else ""))
    trainer = Trainer(cfg, run, progress=True, resume=True)
    trainer.train()
    test = image_dataset("digits", "test", seed=cfg.data.split_seed)
    return trainer.sde, trainer.score_fn, test.x, test.transform(cfg.data.low, cfg.data.high)


def timed_bpd(sde, model, x, transform, **options) -> dict:
    start = time.perf_counter()
    result = bits_per_dim(
        sde,
        model,
        x,
        transform,
        generator=torch.Generator().manual_seed(SEED),
        dtype=torch.float32,
        divergence=options.pop("divergence", "hutchinson"),
        **options,
    )
    seconds = time.perf_counter() - start
    row = {"seconds": seconds, **result.to_dict()}
    print(
        f"  {json.dumps({k: v for k, v in options.items()})[:70]:70s} NFE {result.nfe:5d} {seconds:6.1f} s  "
        f"bpd {result.bpd:.4f} +- {result.bpd_standard_error:.4f}  integ {result.integration_error or 0:.2e}",
        flush=True,
    )
    return row


def rows_against_tight(sde, model, x, transform, configs: dict) -> dict:
    """`timed_bpd` of each configuration (one of them `TIGHT`), each row with its distance to the tight solve."""
    rows = {}
    for label, options in configs.items():
        print(label, flush=True)
        rows[label] = timed_bpd(sde, model, x, transform, **options)
    tight = rows[TIGHT]["bpd"]
    for row in rows.values():
        row["distance_to_tight"] = abs(row["bpd"] - tight)
    return rows


def solver_rows(sde, model, x, transform, quick: bool) -> dict:
    configs = {
        TIGHT: {"method": "ei", "rtol": 1e-4, "atol": 1e-4, "error_control": "batch"},
        "reference: dopri5 in t, batch, 1e-5": {
            "method": "dopri5",
            "rtol": 1e-5,
            "atol": 1e-5,
            "error_control": "batch",
            "error_estimate": False,
        },
        "dopri5 in t, per-sample, 1e-5 (the previous default)": {"method": "dopri5", "error_estimate": False},
        "dopri5 in t, batch, 1e-3": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3, "error_control": "batch"},
        "ei, per-sample, 1e-2": {"method": "ei", "rtol": 1e-2, "atol": 1e-2},
        "ei, batch, 1e-3": {"method": "ei", "rtol": 1e-3, "atol": 1e-3, "error_control": "batch"},
        "ei, batch, 1e-2 (the command's default)": {**IMAGE_LIKELIHOOD},
        "ei, batch, 3e-2": {"method": "ei", "rtol": 3e-2, "atol": 3e-2, "error_control": "batch"},
        "ei_fixed, 20 steps": {"method": "ei_fixed", "steps": 20},
        "ei_fixed, 40 steps": {"method": "ei_fixed", "steps": 40},
        "ei_fixed, 60 steps": {"method": "ei_fixed", "steps": 60},
    }
    if quick:
        configs = {k: v for k, v in configs.items() if k == TIGHT or "default" in k or "20 steps" in k}
    return rows_against_tight(sde, model, x, transform, configs)


def probe_rows(sde, model, x, transform, solver: dict, quick: bool) -> dict:
    rows = {}
    for probe in ("rademacher", "gaussian"):
        for n in (1, 2) if quick else (1, 2, 4):
            label = f"{probe}, {n} probe{'s' if n > 1 else ''}"
            print(label, flush=True)
            rows[label] = timed_bpd(sde, model, x, transform, probe=probe, n_probes=n, **solver)
    return rows


def t_min_rows(sde, model, x, transform, solver: dict) -> dict:
    rows = {}
    for t_min in (1e-5, 1e-4, 1e-3):
        print(f"t_min {t_min:g} (with the rigorous bound)", flush=True)
        rows[f"{t_min:g}"] = timed_bpd(sde, model, x, transform, t_min=t_min, rigorous=True, **solver)
    return rows


SOLVER = IMAGE_LIKELIHOOD


def cost_rows(digits, quick: bool) -> dict:
    """NFE and seconds per 100 points against D, exact against Hutchinson (ei, batch control, 1e-2)."""
    n = 8 if quick else 100
    cases = []
    for name, mix in (("2", toy_dataset("gmm").mixture), ("10", random_mixture(10, 4, seed=0))):
        sde = VPSDE()
        cases.append((int(name), sde, mix.score_fn(sde), mix.sample(n, torch.Generator().manual_seed(0)).float()))
    sde, model, x, transform = digits
    cases.append((64, sde, model, transform.dequantize(x[:n], torch.Generator().manual_seed(0)).float()))
    cfg = preset("mnist-ddpm")
    torch.manual_seed(0)
    mnist = build_model(cfg, cfg.sde.build()).eval()
    cases.append((784, cfg.sde.build(), mnist, torch.rand(n, 1, 28, 28) * 2 - 1))
    rows = {}
    for dim, sde, score, points in cases:
        for divergence in ("hutchinson", "exact"):
            start = time.perf_counter()
            if dim == 784 and divergence == "exact":
                row = _extrapolated_exact(sde, score, points, rows[f"{dim} hutchinson"]["nfe"])
            else:
                result = log_likelihood(
                    sde, score, points, divergence=divergence, generator=torch.Generator().manual_seed(SEED), **SOLVER
                )
                row = {"nfe": result.nfe, "seconds_per_100": (time.perf_counter() - start) * 100 / n}
            rows[f"{dim} {divergence}"] = {"dim": dim, "divergence": divergence, **row}
            print(
                f"  D={dim:4d} {divergence:10s} NFE {row['nfe']:5d} {row['seconds_per_100']:9.1f} s / 100", flush=True
            )
    return rows


def _extrapolated_exact(sde, score, points, nfe: int, products: int = 16) -> dict:
    """The exact divergence's cost at D = 784: one forward pass and ``products`` of its 784 vector-Jacobian
    products timed, scaled to all 784 and times the Hutchinson solve's NFE (same solver, same steps)."""
    t = torch.full((points.shape[0],), 0.5)
    dim = points[0].numel()
    with torch.enable_grad():
        y = points.detach().requires_grad_(True)
        start = time.perf_counter()
        v = score(y, t).reshape(points.shape[0], -1)
        forward = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(products):
            torch.autograd.grad(v[:, i].sum(), y, retain_graph=True)
        per_product = (time.perf_counter() - start) / products
    per_eval = forward + dim * per_product
    return {"nfe": nfe, "seconds_per_100": per_eval * nfe * 100 / points.shape[0], "extrapolated": True}


def plot_cost(rows: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for divergence, marker in (("exact", "o-"), ("hutchinson", "s-")):
        pts = sorted((r["dim"], r["nfe"], r["seconds_per_100"]) for r in rows.values() if r["divergence"] == divergence)
        dims, nfes, secs = zip(*pts)
        axes[0].plot(dims, nfes, marker, label=divergence)
        axes[1].loglog(dims, secs, marker, label=divergence)
    axes[0].set_xscale("log")
    axes[0].set_ylabel("NFE (ei, batch control, 1e-2)")
    axes[1].set_ylabel("seconds per 100 points (2 CPU threads)")
    for ax in axes:
        ax.set_xlabel("dimension D")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("Likelihood cost against dimension (D=784 exact: one evaluation timed x NFE)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(title: str, rows: dict, keys: tuple[str, ...]) -> list[str]:
    lines = [f"\n{title}\n", "| configuration | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for label, row in rows.items():
        cells = []
        for k in keys:
            v = row.get(k) if not k.startswith("se_") else row["standard_errors"].get(k[3:])
            cells.append("-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def dequantization_rows(sde, model, x, transform, draws: int) -> dict:
    """Bits/dim of one model under each dequantisation (ei, batch control, 1e-2: the command's solver), and the
    reference implementation's setting on uniform dequantisation."""
    configs = {
        "uniform, K = 1 (the command's default)": {},
        f"uniform, K = {draws}, averaged": {"n_dequantizations": draws},
        f"uniform, K = {draws}, importance-weighted": {"n_dequantizations": draws, "importance_weighted": True},
        "truncated normal, K = 1": {"dequantization": "truncated_normal"},
        f"truncated normal, K = {draws}, importance-weighted": {
            "dequantization": "truncated_normal", "n_dequantizations": draws, "importance_weighted": True},
    }  # fmt: skip
    rows = {}
    for label, options in configs.items():
        print(label, flush=True)
        rows[label] = timed_bpd(sde, model, x, transform, **IMAGE_LIKELIHOOD, **options)
    print("reference setting", flush=True)
    rows["score_sde's setting: dopri5 in t, batch, 1e-5, uniform K = 1"] = timed_bpd(
        sde, model, x, transform, method="dopri5", rtol=1e-5, atol=1e-5, error_control="batch", error_estimate=False
    )
    return rows


def cheap_solve_rows(sde, model, x, transform, quick: bool) -> dict:
    """Solves with fewer network evaluations than the command's default, against the tight solve: fixed log-SNR
    and EDM-spaced grids, higher and lower predictor orders, looser batch tolerances."""
    from scoresde import time_grid

    def edm(steps: int) -> list[float]:
        grid = time_grid(sde, steps, "edm", t_min=1e-5).tolist()
        return sorted(set(grid + [sde.T]), reverse=True)

    configs = {
        TIGHT: {"method": "ei", "rtol": 1e-4, "atol": 1e-4, "error_control": "batch"},
        "ei, batch, 1e-2, order 4": {**IMAGE_LIKELIHOOD, "order": 4},
        "ei, batch, 3e-2, order 4": {**IMAGE_LIKELIHOOD, "rtol": 3e-2, "atol": 3e-2, "order": 4},
        "ei, batch, 1e-1": {**IMAGE_LIKELIHOOD, "rtol": 1e-1, "atol": 1e-1},
        "ei_fixed, 30 log-SNR steps, order 4": {"method": "ei_fixed", "steps": 30, "order": 4},
        "ei_fixed, 30 EDM steps": {"method": "ei_fixed", "grid": edm(30)},
        "ei_fixed, 34 EDM steps, order 4": {"method": "ei_fixed", "grid": edm(34), "order": 4},
    }
    if quick:
        configs = dict(list(configs.items())[:2])
    return rows_against_tight(sde, model, x, transform, configs)


def plot_dequantization(report: dict, path: Path) -> None:
    """Bits/dim of each dequantisation (error bars: standard errors) and the cheap solves' distance against NFE."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": (1, 1.1)})
    rows = report["dequantization"]
    labels = list(rows)
    left.barh(range(len(labels)), [rows[k]["bpd"] for k in labels],
              xerr=[rows[k]["bpd_standard_error"] for k in labels], color="tab:blue")  # fmt: skip
    left.set_yticks(range(len(labels)), [textwrap.fill(label, 36) for label in labels], fontsize=7)
    left.set_xlabel("bits/dim (digits test set)")
    left.set_title("one model under each dequantisation (error bars: standard errors)", fontsize=9)
    left.invert_yaxis()
    cheap = {k: v for k, v in report["cheap_solves"].items() if k != TIGHT}  # the tight solve is the zero
    reference = rows["score_sde's setting: dopri5 in t, batch, 1e-5, uniform K = 1"]
    for label, row in cheap.items():
        right.scatter(row["nfe"], row["distance_to_tight"], label=label, s=20)
    right.scatter(reference["nfe"], reference["distance_to_tight"], marker="*", s=120, color="k",
                  label="score_sde's setting (the reference)")  # fmt: skip
    right.axvline(reference["nfe"] / 10, color="k", ls=":", label="goal: a tenth of the reference's NFE")
    right.axhline(reference["distance_to_tight"], color="grey", ls="--", lw=0.8, label="the reference's accuracy")
    right.set_title("cheaper solves: distance to a tight solve (ei, batch, 1e-4)", fontsize=9)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("NFE")
    right.set_ylabel("|bpd - tight solve's| (bits/dim)")
    right.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dequantization_section(out: Path, args) -> None:
    sde, model, x, transform = digits_model(out, args.quick)
    x = x[:6] if args.quick else x
    report = {"n_images": x.shape[0], "threads": torch.get_num_threads(), "draws": 2 if args.quick else 8}
    print(f"digits test set: {x.shape[0]} images, {report['threads']} threads", flush=True)
    report["dequantization"] = dequantization_rows(sde, model, x, transform, report["draws"])
    reference = report["dequantization"]["score_sde's setting: dopri5 in t, batch, 1e-5, uniform K = 1"]
    report["cheap_solves"] = cheap_solve_rows(sde, model, x, transform, args.quick)
    tight = report["cheap_solves"][TIGHT]["bpd"]
    reference["distance_to_tight"] = abs(reference["bpd"] - tight)
    for row in report["cheap_solves"].values():
        row["nfe_over_reference"] = row["nfe"] / reference["nfe"]
    lines = [f"# Bits/dim under each dequantisation: digits-ddpm, {x.shape[0]} test images, {report['threads']} "
             f"threads, Hutchinson (1 Rademacher probe), float32, t_min = 1e-5"]  # fmt: skip
    lines += table(
        "Dequantisations (ei, batch control, 1e-2) and the reference implementation's setting",
        report["dequantization"],
        ("bpd", "bpd_standard_error", "offset", "importance_bias", "nfe", "seconds", "integration_error"),
    )
    lines += table(
        f"Cheaper solves (reference: {reference['nfe']} NFE, {reference['distance_to_tight']:.2g} bits/dim from the "
        f"tight solve; goal: its accuracy at {reference['nfe'] / 10:.0f} NFE)",
        report["cheap_solves"],
        ("nfe", "nfe_over_reference", "seconds", "bpd", "integration_error", "distance_to_tight"),
    )
    (out / "likelihood_dequantization.md").write_text("\n".join(lines) + "\n")
    (out / "likelihood_dequantization.json").write_text(json.dumps(report, indent=2))
    plot_dequantization(report, out / "likelihood_dequantization.png")
    print("\n".join(lines))


def main() -> None:
    parser = benchmark_parser(__doc__, quick="a 20-step small model, 6 test images")
    parser.add_argument("--section", choices=("all", "dequantization"), default="all",
                        help="dequantization: the dequantisation table and the cheaper solves alone")  # fmt: skip
    args = parser.parse_args()
    out = setup_run(args)
    if args.section == "dequantization":
        dequantization_section(out, args)
        return
    digits = digits_model(out, args.quick)
    sde, model, x, transform = digits
    x = x[:6] if args.quick else x
    report = {"n_images": x.shape[0], "threads": torch.get_num_threads()}
    print(f"digits test set: {x.shape[0]} images, {torch.get_num_threads()} threads", flush=True)
    report["solvers"] = solver_rows(sde, model, x, transform, args.quick)
    default = dict(IMAGE_LIKELIHOOD)
    report["probes"] = probe_rows(sde, model, x, transform, default, args.quick)
    report["t_min"] = t_min_rows(sde, model, x, transform, default)
    report["cost"] = cost_rows(digits, args.quick)
    plot_cost(report["cost"], out / "likelihood_cost.png")
    keys = ("nfe", "seconds", "bpd", "bpd_standard_error", "integration_error", "distance_to_tight")
    lines = [f"# Bits/dim at image scale: digits-ddpm, {x.shape[0]} test images, {report['threads']} threads"]
    lines += table("Solvers (Hutchinson, 1 Rademacher probe, float32, t_min = 1e-5)", report["solvers"], keys)
    lines += table(
        "Probes (ei, batch control, 1e-2)",
        report["probes"],
        ("nfe", "seconds", "bpd", "bpd_standard_error", "se_probes", "se_data"),
    )
    lines += table(
        "t_min (ei, batch control, 1e-2): conventional figure and rigorous bound",
        report["t_min"],
        ("nfe", "seconds", "bpd", "bpd_standard_error", "rigorous_bpd", "rigorous_bpd_standard_error"),
    )
    lines += table(
        "Cost against dimension (per 100 points)", report["cost"], ("dim", "divergence", "nfe", "seconds_per_100")
    )
    (out / "likelihood_images.md").write_text("\n".join(lines) + "\n")
    (out / "likelihood_images.json").write_text(json.dumps(report, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
