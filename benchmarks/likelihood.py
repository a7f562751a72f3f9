"""Accuracy of the PF-ODE log-likelihood against the exact -log p_eps of the oracle, against NFE.

At the reference convention t_min = 1e-5. Configurations: the reference implementation's setting (RK45 =
dopri5 in t, rtol = atol = 1e-5, one error norm over the whole batch); the exponential integrator (``ei``,
adaptive, batch and per-sample control; ``ei_fixed`` on equal log-SNR steps); dopri5 in t (batch and
per-sample) and in log-SNR; fixed-step RK4 in log-SNR; Hutchinson (1 probe) next to the exact divergence; then
the variational bounds (continuous ELBO, uniform and log-SNR importance sampling of t; DDPM chain bound).
Oracles: the 2D `gmm` toy and a random 10D mixture; SDEs: VP, sub-VP and VE. The exact p_T is the prior, so
the error is the integrator's own; the prior mismatch of the standard prior is reported beside it. The head
table gives, per solver family, the NFE it needs for the reference's mean error (log-log interpolation
between its tolerances) and its ratio to the reference's NFE.

Usage: python benchmarks/likelihood.py [--n 1000] [--out benchmarks/results] [--quick]
Writes likelihood.json, likelihood.md and likelihood.png.
"""

from __future__ import annotations

import json
import math
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from common import benchmark_parser, setup_run  # noqa: E402

from scoresde import VESDE, VPSDE, SubVPSDE, ddpm_bound, elbo, log_likelihood, toy_dataset  # noqa: E402
from scoresde.likelihood.pf_ode import LIKELIHOOD_T_MIN  # noqa: E402
from scoresde.oracles import random_mixture  # noqa: E402

REFERENCE = "reference: RK45 in t, 1e-5, batch norm"


def configs(quick: bool) -> dict[str, dict]:
    """Every configuration, by family: ``family tol=...`` / ``family steps=...`` labels; NFE per point."""
    out = {REFERENCE: {"method": "dopri5", "variable": "t", "rtol": 1e-5, "atol": 1e-5, "error_control": "batch"}}
    families = {
        "ei batch": ({"method": "ei", "error_control": "batch"}, (1e-2, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)),
        "ei per-sample": ({"method": "ei"}, (1e-3, 1e-4, 1e-5, 1e-6)),
        "dopri5 t batch": ({"method": "dopri5", "error_control": "batch"}, (1e-3, 1e-4, 1e-6)),
        "dopri5 t per-sample": ({"method": "dopri5"}, (1e-3, 1e-4, 1e-5, 1e-6)),
        "dopri5 log_snr per-sample": ({"method": "dopri5", "variable": "log_snr"}, (1e-4, 1e-6)),
    }
    for family, (options, tols) in families.items():
        for tol in tols[:1] if quick else tols:
            out[f"{family} tol={tol:g}"] = {**options, "rtol": tol, "atol": tol}
    for steps in (20, 80) if quick else (20, 40, 80, 160, 320):
        out[f"ei_fixed steps={steps}"] = {"method": "ei_fixed", "steps": steps}
    for steps in (20, 80) if quick else (20, 40, 80, 160):
        out[f"rk4 log_snr steps={steps}"] = {"method": "rk4", "variable": "log_snr", "steps": steps}
    out["hutchinson (1 probe) ei per-sample tol=1e-5"] = {"method": "ei", "divergence": "hutchinson"}
    for options in out.values():
        options.setdefault("error_estimate", False)  # NFE of the solve alone (ei's estimate is free anyway)
    return out


def nfe_at(rows: dict, family: str, error: float) -> float | None:
    """The NFE a family needs for ``error`` (mean abs, nats), by log-log interpolation between its points."""
    pts = sorted((r["nfe"], r["mean_abs_error"]) for k, r in rows.items() if k.startswith(family + " "))
    for (n1, e1), (n2, e2) in zip(pts, pts[1:]):
        if e1 >= error >= e2 and e1 > e2:
            f = (math.log(e1) - math.log(error)) / (math.log(e1) - math.log(e2))
            return n1 + f * (n2 - n1)
    return None


def variational_bounds(mix, sde, x, truth, prior) -> dict[str, dict]:
    """Continuous ELBO (uniform and log-SNR importance sampling of t) and the DDPM chain bound, as gaps to
    the exact NLL on the same points, in nats and bits/dim."""
    n, dim = x.shape
    out = {}
    runs = {
        "ELBO, 64 t, uniform": lambda: elbo(
            sde, mix.score_fn(sde), x, n_times=64, prior_logp=prior, generator=torch.Generator().manual_seed(2)
        ),
        "ELBO, 64 t, log-SNR importance": lambda: elbo(
            sde,
            mix.score_fn(sde),
            x,
            n_times=64,
            time_sampling="log_snr",
            prior_logp=prior,
            generator=torch.Generator().manual_seed(2),
        ),
    }
    for steps in (100, 1000):
        runs[f"DDPM bound, N = {steps}"] = lambda steps=steps: ddpm_bound(
            sde, mix.score_fn(sde), x, n_steps=steps, prior_logp=prior, generator=torch.Generator().manual_seed(2)
        )
    for label, run in runs.items():
        result = run()
        gap = result.bound - truth
        se = float(gap.std()) / math.sqrt(n)
        out[label] = {
            "nfe": result.nfe,
            "gap_nats": float(gap.mean()),
            "standard_error": se,
            "gap_bits_per_dim": float(gap.mean()) / (dim * math.log(2)),
            "per_sample_mc_standard_error": float(result.standard_error.pow(2).mean().sqrt()),
        }
        print(f"{label:34s} gap {float(gap.mean()):+.4f} +- {se:.4f} nats", flush=True)
    return out


def main() -> None:
    parser = benchmark_parser(__doc__, quick="12 points, the loosest tolerance and two step counts a family")
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    out = setup_run(args)
    n = 12 if args.quick else args.n
    report, lines = {"n": n, "threads": torch.get_num_threads(), "cases": {}}, []
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    cases = [
        (f"{d} {name}", mix, sde)
        for d, mix in (("2D", toy_dataset("gmm").mixture), ("10D", random_mixture(10, 4, seed=0)))
        for name, sde in (("VP", VPSDE()), ("sub-VP", SubVPSDE()), ("VE", VESDE()))
    ]
    summary = []
    for ax, (case, mix, sde) in zip(axes.flat, cases):
        x = mix.sample(n, torch.Generator().manual_seed(0), dtype=torch.float64)
        truth = -mix.marginal_log_prob(sde, x, torch.full((n,), LIKELIHOOD_T_MIN, dtype=torch.float64))
        prior = mix.marginal(sde, sde.T).log_prob
        rows = {}
        for label, options in configs(args.quick).items():
            start = time.perf_counter()
            result = log_likelihood(
                sde, mix.score_fn(sde), x, prior_logp=prior, generator=torch.Generator().manual_seed(1), **options
            )
            seconds = time.perf_counter() - start
            err = (result.nll - truth).abs()
            nfe = result.nfe
            rows[label] = {
                "nfe": nfe,
                "mean_abs_error": float(err.mean()),
                "max_abs_error": float(err.max()),
                "seconds_per_1000": seconds * 1000 / n,
            }
            print(
                f"{case} {label:42s} NFE {nfe:6.1f}  mean |err| {float(err.mean()):.2e}  {seconds * 1000 / n:.2f} s/1k",
                flush=True,
            )
        standard = log_likelihood(sde, mix.score_fn(sde), x)
        mismatch = float((standard.nll - truth).mean())
        bounds = variational_bounds(mix, sde, x[: min(n, 1000)], truth[: min(n, 1000)], prior)
        ref = rows[REFERENCE]
        at_reference = {
            family: nfe_at(rows, family, ref["mean_abs_error"])
            for family in ("ei batch", "ei per-sample", "dopri5 t batch", "dopri5 t per-sample", "ei_fixed")
        }
        ratios = {k: (v / ref["nfe"] if v else None) for k, v in at_reference.items()}
        summary.append((case, ref, at_reference, ratios))
        report["cases"][case] = {
            "rows": rows,
            "prior_mismatch_nats": mismatch,
            "bounds": bounds,
            "nfe_at_reference_accuracy": at_reference,
            "nfe_ratio_to_reference": ratios,
        }
        for family, marker in (
            ("ei batch", "o-"),
            ("ei per-sample", "o--"),
            ("ei_fixed", "^-"),
            ("dopri5 t batch", "s-"),
            ("dopri5 t per-sample", "s--"),
            ("rk4 log_snr", "x-"),
        ):
            pts = sorted((r["nfe"], r["mean_abs_error"]) for k, r in rows.items() if k.startswith(family + " "))
            ax.loglog(*zip(*pts), marker, label=family)
        ax.loglog([ref["nfe"]], [ref["mean_abs_error"]], "k*", ms=12, label="reference setting")
        ax.set_xlabel("NFE")
        ax.set_ylabel("mean |NLL error| (nats)")
        ax.set_title(case)
        lines += [
            f"\n{case}, n = {n} (prior mismatch of the standard prior: {mismatch:+.2e} nats)\n",
            "| configuration | NFE | mean abs error (nats) | max abs error | s / 1000 points |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {r['nfe']:.0f} | {r['mean_abs_error']:.2e} | {r['max_abs_error']:.2e} | "
            f"{r['seconds_per_1000']:.2f} |"
            for k, r in rows.items()
        ]
        lines += [
            "",
            "| bound (same points, exact score, exact p_T) | NFE | mean gap to exact NLL (nats) | standard error | "
            "gap (bits/dim) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {b['nfe']} | {b['gap_nats']:+.4f} | {b['standard_error']:.4f} | {b['gap_bits_per_dim']:+.5f} |"
            for k, b in bounds.items()
        ]
    axes.flat[-1].legend(fontsize=7)
    head = [
        "# PF-ODE likelihood against the oracle: NFE at the reference's accuracy (t_min = 1e-5, exact p_T)\n",
        "| case | reference NFE | reference mean error (nats) | ei batch | ei per-sample | dopri5 t batch | "
        "dopri5 t per-sample | ei_fixed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, ref, at_reference, ratios in summary:
        cells = [
            "-" if at_reference[f] is None else f"{at_reference[f]:.0f} ({ratios[f]:.2f}x)"
            for f in ("ei batch", "ei per-sample", "dopri5 t batch", "dopri5 t per-sample", "ei_fixed")
        ]
        head.append(f"| {case} | {ref['nfe']} | {ref['mean_abs_error']:.2e} | " + " | ".join(cells) + " |")
    lines = head + lines
    fig.tight_layout()
    fig.savefig(out / "likelihood.png", dpi=110)
    (out / "likelihood.json").write_text(json.dumps(report, indent=2))
    (out / "likelihood.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
