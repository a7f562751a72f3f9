"""The reverse chain's variance against the number of steps: DDPM's bound and the samples' quality.

For each variance choice (``beta``, ``beta_tilde``, ``analytic``; `scoresde.reverse_variance`) and K steps of the
chain (10, 25, 100, 1000 on a uniform grid; the bound's chain from t_min = 1e-5, the sampler's from 1e-3):

- **gmm oracle** (the exact score): the DDPM bound minus the exact NLL of 2,000 points (nats; the exact
  $-\\log p_{t_{min}}$), and the energy distance of 4,000 ``ddpm`` samples over the true-vs-true floor;
- **toy model** (benchmarks/sample_tails.py's edm 8gaussians run, the demo's budget): the same, its bound against
  the true NLL of the data;
- **digits** (benchmarks/training.py's ``digits-ddpm``): the bound in bits/dim of 200 test images (K <= 100) and
  FD-digits of 1,000 samples (K <= 100; the training split's floor beside it).

$\\Gamma_t$ for the analytic variance: 2,000 training points (toys) / images, one noise draw each per grid time.
Prints tables; writes variance.json, variance.md and variance.png.

    python benchmarks/variance.py [--out benchmarks/results] [--threads 2] [--quick]
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
from report_files import write_report  # noqa: E402

from scoresde import VPSDE, ddpm_bound, energy_distance, image_dataset, sample, toy_dataset  # noqa: E402
from scoresde.features import image_metric  # noqa: E402
from scoresde.reverse_variance import VARIANCES, score_moments  # noqa: E402
from scoresde.samplers import time_grid  # noqa: E402
from scoresde.training import load_score_model  # noqa: E402

BOUND_T_MIN = 1e-5


def _moments(sde, score, x0, steps: int, t_min: float | None):
    grid = time_grid(sde, steps, "uniform", t_min)
    with torch.no_grad():
        return score_moments(sde, score, x0, grid, generator=torch.Generator().manual_seed(0))


def toy_rows(sde, score, toy, train_x, steps_list, n_bound: int, n_samples: int, dtype) -> list[dict]:
    """Bound gap against the exact NLL and energy distance over the floor, per K and variance (the score in
    ``dtype``: float64 for the oracle, float32 for a model)."""
    x = toy.sample(n_bound, torch.Generator().manual_seed(1)).to(torch.float64)
    train_x = train_x.to(dtype)
    oracle = toy.oracle
    true_nll = -oracle.marginal_log_prob(sde, x, torch.full((n_bound,), BOUND_T_MIN, dtype=torch.float64))
    reference = toy.sample(n_samples, torch.Generator().manual_seed(2)).double()
    floor = energy_distance(toy.sample(n_samples, torch.Generator().manual_seed(3)).double(), reference)
    rows = []
    for steps in steps_list:
        bound_moments = _moments(sde, score, train_x, steps, BOUND_T_MIN)
        sample_moments = _moments(sde, score, train_x, steps, None)
        for variance in VARIANCES:
            start = time.perf_counter()
            with torch.no_grad():
                bound = ddpm_bound(sde, score, x.to(dtype), n_steps=steps, variance=variance, moments=bound_moments,
                                   generator=torch.Generator().manual_seed(4)).bound  # fmt: skip
                samples = sample(sde, score, (n_samples, 2), "ddpm", steps=steps, variance=variance, dtype=dtype,
                                 moments=sample_moments, generator=torch.Generator().manual_seed(5)).x  # fmt: skip
            gap = bound.double() - true_nll
            rows.append(
                {
                    "steps": steps,
                    "variance": variance,
                    "bound_gap": float(gap.mean()),
                    "bound_gap_se": float(gap.std()) / math.sqrt(n_bound),
                    "energy_over_floor": energy_distance(samples.double(), reference) / floor,
                    "seconds": time.perf_counter() - start,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def digits_rows(run: Path, steps_list, n_bound: int, n_samples: int) -> tuple[list[dict], dict]:
    model, config, _ = load_score_model(run / "checkpoint.safetensors")
    sde, transform = model.sde, config.data.transform()
    train = transform.to_model(image_dataset("digits", "train").x[:2000].float() + 0.5)
    test = image_dataset("digits", "test").x[:n_bound].float()
    metric = image_metric(config.data, cache_dir=run / "reference_features")
    floor = metric(transform.to_model(image_dataset("digits", "train").x[:n_samples].float() + 0.5)).to_dict()
    dim = test[0].numel()
    rows = []
    for steps in steps_list:
        bound_moments = _moments(sde, model, train, steps, BOUND_T_MIN)
        sample_moments = _moments(sde, model, train, steps, None)
        for variance in VARIANCES:
            start = time.perf_counter()
            with torch.no_grad():
                x = transform.dequantize(test, torch.Generator().manual_seed(6))
                options = {"variance": variance, "moments": bound_moments, "data_range": (-1.0, 1.0)}
                generator = torch.Generator().manual_seed(7)
                bound = ddpm_bound(sde, model, x, n_steps=steps, generator=generator, **options).bound
                samples = sample(sde, model, (n_samples, 1, 8, 8), "ddpm", steps=steps, variance=variance,
                                 moments=sample_moments, data_range=(-1.0, 1.0),
                                 generator=torch.Generator().manual_seed(8)).x  # fmt: skip
            bpd = (bound.double() / dim - transform.log_det_per_dim()) / math.log(2)
            quality = metric(transform.to_model(transform.from_model(samples) + 0.5))
            rows.append(
                {
                    "steps": steps,
                    "variance": variance,
                    "bits_per_dim": float(bpd.mean()),
                    "bits_per_dim_se": float(bpd.std()) / math.sqrt(n_bound),
                    "fd_digits": quality.frechet_distance,
                    "seconds": time.perf_counter() - start,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows, floor


def markdown(report: dict) -> str:
    lines = []
    for key, title in (("oracle", "gmm, exact score"), ("toy", "8gaussians, edm model (demo budget)")):
        lines += [f"**{title}**: DDPM bound minus the exact NLL (nats, +- s.e.) / energy distance of the `ddpm` "
                  "sampler's samples over the floor", "", "| K | " + " | ".join(VARIANCES) + " |",
                  "|---:|" + "---|" * len(VARIANCES)]  # fmt: skip
        for steps in sorted({r["steps"] for r in report[key]}):
            cells = {r["variance"]: r for r in report[key] if r["steps"] == steps}
            lines.append(f"| {steps} | " + " | ".join(
                f"{cells[v]['bound_gap']:+.3f} +- {cells[v]['bound_gap_se']:.3f} / {cells[v]['energy_over_floor']:.1f}x"
                for v in VARIANCES) + " |")  # fmt: skip
        lines.append("")
    if report.get("digits"):
        floor = report["digits_floor"]["frechet_distance"]
        lines += [f"**digits-ddpm**: DDPM bound (bits/dim of test images, +- s.e.) / FD-digits of the samples "
                  f"(training split's floor {floor:.2f})", "", "| K | " + " | ".join(VARIANCES) + " |",
                  "|---:|" + "---|" * len(VARIANCES)]  # fmt: skip
        for steps in sorted({r["steps"] for r in report["digits"]}):
            cells = {r["variance"]: r for r in report["digits"] if r["steps"] == steps}
            lines.append(f"| {steps} | " + " | ".join(
                f"{cells[v]['bits_per_dim']:.3f} +- {cells[v]['bits_per_dim_se']:.3f} / {cells[v]['fd_digits']:.2f}"
                for v in VARIANCES) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    panels = [("oracle", "bound_gap", "gmm oracle: bound - NLL (nats)"),
              ("toy", "bound_gap", "8gaussians model: bound - NLL (nats)")]  # fmt: skip
    if report.get("digits"):
        panels.append(("digits", "bits_per_dim", "digits-ddpm: bound (bits/dim)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (key, field, title) in zip(axes, panels):
        for variance in VARIANCES:
            rows = [r for r in report[key] if r["variance"] == variance]
            ax.plot([r["steps"] for r in rows], [r[field] for r in rows], marker="o", label=variance)
        ax.set(xscale="log", xlabel="steps K", title=title)
        if field == "bound_gap":
            ax.set_yscale("symlog", linthresh=0.05)  # the bound may dip below the NLL by its Monte-Carlo error
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="K = 10, 25 and fewer points")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    steps_list = [10, 25] if args.quick else [10, 25, 100, 1000]
    n_bound, n_samples = (500, 1000) if args.quick else (2000, 4000)
    sde, gmm = VPSDE(), toy_dataset("gmm")
    report: dict = {}
    train = gmm.sample(2000, torch.Generator().manual_seed(0)).double()
    oracle = gmm.oracle.score_fn(sde)
    report["oracle"] = toy_rows(sde, oracle, gmm, train, steps_list, n_bound, n_samples, torch.float64)
    runs = out / "training_runs"
    model, config, _ = load_score_model(runs / "edm-8gaussians" / "checkpoint.safetensors")
    toy = toy_dataset("8gaussians")
    train = toy.sample(2000, torch.Generator().manual_seed(0))
    report["toy"] = toy_rows(model.sde, model, toy, train, steps_list, n_bound, n_samples, torch.float32)
    if (runs / "digits-ddpm" / "checkpoint.safetensors").is_file():
        report["digits"], report["digits_floor"] = digits_rows(runs / "digits-ddpm", [10, 25, 100], 200, 1000)
    write_report(out, "variance", report, markdown(report), plot)


if __name__ == "__main__":
    main()
