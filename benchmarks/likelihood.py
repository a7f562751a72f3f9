"""Accuracy of the PF-ODE log-likelihood against the exact -log p_eps of the oracle, against NFE.

Configurations: adaptive dopri5 in t and in log-SNR at several tolerances (per-sample error control),
the reference implementation's setting (RK45 = dopri5 in t, rtol = atol = 1e-5, one error norm over the
whole batch), fixed-step RK4 in t and in log-SNR, each point solved on its own (its own adaptive steps;
NFE = mean score evaluations per point), and Hutchinson (1 probe) next to the exact divergence; then the
variational bounds (continuous ELBO, uniform and log-SNR importance sampling of t; DDPM chain bound).
Oracles: the 2D `gmm` toy and a random 10D mixture; SDEs: VP and VE. The exact p_T is the prior, so the
error is the integrator's own; the prior mismatch of the standard prior is reported beside it.

Usage: python benchmarks/likelihood.py [--n 1000] [--out benchmarks/results] [--quick]
Writes likelihood.json, likelihood.md and likelihood.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scoresde import VESDE, VPSDE, GaussianMixture, ddpm_bound, elbo, log_likelihood, toy_dataset  # noqa: E402


def mixture_10d(seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(4, 10, 10, generator=g, dtype=torch.float64) / math.sqrt(10)
    covs = 0.3 * A @ A.transpose(-1, -2) + 0.02 * torch.eye(10, dtype=torch.float64)
    w = torch.rand(4, generator=g, dtype=torch.float64) + 0.2
    return GaussianMixture(w / w.sum(), torch.randn(4, 10, generator=g, dtype=torch.float64), covs)


def configs(quick: bool) -> dict[str, dict]:
    tols = (1e-3, 1e-5) if quick else (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
    out = {}
    for var in ("t", "log_snr"):
        for tol in tols:
            out[f"dopri5 {var} tol={tol:g}"] = {"variable": var, "rtol": tol, "atol": tol}
        for steps in (10, 40) if quick else (10, 20, 40, 80):
            out[f"rk4 {var} steps={steps}"] = {"variable": var, "method": "rk4", "steps": steps}
    out["reference: RK45 in t, 1e-5, batch norm"] = {
        "variable": "t",
        "rtol": 1e-5,
        "atol": 1e-5,
        "error_control": "batch",
    }
    for tol in (1e-4, 1e-5):  # each point its own adaptive steps: NFE is then the mean per point
        out[f"dopri5 t tol={tol:g}, one point per solve"] = {"variable": "t", "rtol": tol, "atol": tol, "batch_size": 1}
    out["hutchinson (1 probe) dopri5 t tol=1e-5"] = {
        "variable": "t",
        "rtol": 1e-5,
        "atol": 1e-5,
        "divergence": "hutchinson",
    }
    return out


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 100 if args.quick else args.n
    report, lines = {"n": n, "threads": torch.get_num_threads(), "cases": {}}, []
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    cases = [
        (f"{d} {name}", mix, sde)
        for d, mix in (("2D", toy_dataset("gmm").mixture), ("10D", mixture_10d()))
        for name, sde in (("VP", VPSDE()), ("VE", VESDE()))
    ]
    for ax, (case, mix, sde) in zip(axes, cases):
        x = mix.sample(n, torch.Generator().manual_seed(0), dtype=torch.float64)
        truth = -mix.marginal_log_prob(sde, x, torch.full((n,), sde.sampling_t_min, dtype=torch.float64))
        prior = mix.marginal(sde, sde.T).log_prob
        rows = {}
        for label, options in configs(args.quick).items():
            start = time.perf_counter()
            result = log_likelihood(
                sde, mix.score_fn(sde), x, prior_logp=prior, generator=torch.Generator().manual_seed(1), **options
            )
            seconds = time.perf_counter() - start
            err = (result.nll - truth).abs()
            nfe = result.nfe * min(options.get("batch_size", n), n) / n  # score evaluations per point
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
        report["cases"][case] = {"rows": rows, "prior_mismatch_nats": mismatch, "bounds": bounds}
        for var, marker in (("t", "o-"), ("log_snr", "s-")):
            for kind in ("dopri5", "rk4"):
                pts = sorted((r["nfe"], r["mean_abs_error"]) for k, r in rows.items() if k.startswith(f"{kind} {var} "))
                ax.loglog(*zip(*pts), marker, label=f"{kind} in {var}")
        ref = rows["reference: RK45 in t, 1e-5, batch norm"]
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
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "likelihood.png", dpi=110)
    (out / "likelihood.json").write_text(json.dumps(report, indent=2))
    (out / "likelihood.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
