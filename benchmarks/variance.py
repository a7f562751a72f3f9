"""The reverse chain's variance against the number of steps: DDPM's bound and the samples' quality.

For each variance choice (``beta``, ``beta_tilde``, ``analytic``, and ``learned`` for the models trained with a
variance channel; `scoresde.processes.reverse_variance`) and K steps of the chain (10, 25, 100, 1000 on a uniform grid;
the
bound's chain from t_min = 1e-5, the sampler's from 1e-3):

- **gmm oracle** (the exact score): the DDPM bound minus the exact NLL of 2,000 points (nats; the exact
  $-\\log p_{t_{min}}$), and the energy distance of 4,000 ``ddpm`` samples over the true-vs-true floor;
  Two more oracle rows show what a learned variance can reach with no error in the mean: ``learned``, a variance
  network (the toy MLP's variance channel) trained by the hybrid loss's L_vlb on the oracle's exact mean, on the
  K-step chain itself; ``per_x_optimum``, the exact per-point, per-dimension optimum
  beta_tilde + a^2 Var(x0 | x_t) from the oracle's Hessian (Cov(x0 | x_t) = sigma^2/alpha^2 (I + sigma^2 H),
  H the Hessian of log p_t), the floor of every diagonal
  Gaussian reverse kernel on that chain (both bound only: the sampler's chain ends at 1e-3 with a Tweedie step, where
  the bound's chain has its decoder);
- **toy model** (benchmarks/sample_tails.py's edm 8gaussians run, the demo's budget): the same, its bound against
  the true NLL of the data;
- **toy, learned variance** (``toy-vp-learned-var``, the same network and budget with a variance channel and the
  hybrid loss, trained into training_runs/learned-8gaussians): all four choices on its mean;
- **digits** (benchmarks/training.py's ``digits-ddpm``, and ``digits-ddpm-learned-var`` in
  training_runs/digits-ddpm-learned-var): the bound in bits/dim of 200 test images (K <= 100) and FD-digits of 1,000
  samples (K <= 100; the training split's floor beside it).

$\\Gamma_t$ for the analytic variance: 2,000 training points (toys) / images, one noise draw each per grid time.
Prints tables; writes variance.json, variance.md and variance.png.

    python benchmarks/variance.py [--out benchmarks/results] [--threads 2] [--quick]
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from common import benchmark_parser, setup_run, write_report  # noqa: E402

from scoresde import VPSDE, ddpm_bound, energy_distance, image_dataset, sample, toy_dataset  # noqa: E402
from scoresde.config import override, preset  # noqa: E402
from scoresde.evaluation.features import image_metric  # noqa: E402
from scoresde.models import (  # noqa: E402
    ModelSpec,
    create_model,  # noqa: E402
    spec_of,
)
from scoresde.processes.reverse_variance import VARIANCES, chain_step, score_moments  # noqa: E402
from scoresde.samplers import time_grid  # noqa: E402
from scoresde.training import Trainer  # noqa: E402
from scoresde.training.losses import hybrid_loss  # noqa: E402
from scoresde.training.runs import load_score_model  # noqa: E402

BOUND_T_MIN = 1e-5
SECTIONS = {  # report key: title
    "oracle": "gmm, exact score",
    "toy": "8gaussians, edm model (demo budget)",
    "toy_learned": "8gaussians, toy-vp-learned-var (hybrid loss, same budget)",
}
DIGITS = {"digits": "digits-ddpm", "digits_learned": "digits-ddpm-learned-var"}


COLUMNS = (*VARIANCES, "per_x_optimum")


class OracleMeanLearnedVariance(torch.nn.Module):
    """The exact score as the mean and a toy MLP's variance channel as the learned variance (float64 in and out)."""

    spec = ModelSpec(variance=True, scaled=True)  # the seam's declaration: a score with a variance channel

    def __init__(self, sde, score) -> None:
        super().__init__()
        self.sde, self.score = sde, score
        self.net = create_model("mlp", dim=2, width=64, depth=3, learn_variance=True)

    def scaled_score_and_variance(self, x, t, y=None):
        v = self.net(x.float(), t.float())[:, 2:].to(x.dtype)
        return self.sde.sigma(t)[:, None] * self.score(x, t), (v + 1) / 2

    def variance_fraction(self, x, t):
        return self.scaled_score_and_variance(x, t)[1]

    def forward(self, x, t):
        return self.score(x, t)


def train_oracle_variance(sde, toy, steps: int, iterations: int = 2000) -> OracleMeanLearnedVariance:
    """L_vlb alone (the mean is exact) on the K-step chain whose times are the bound's (t_i = 1e-5 + i (T - 1e-5)/K)."""
    model = OracleMeanLearnedVariance(sde, toy.oracle.score_fn(sde))
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(10)
    first = BOUND_T_MIN + (sde.T - BOUND_T_MIN) / steps
    for k in range(iterations):
        optimiser.param_groups[0]["lr"] = 1e-3 * (1 + math.cos(math.pi * k / iterations))
        x0 = toy.sample(1024, generator).double()
        loss = hybrid_loss(model, sde, x0, n_steps=steps, vlb_weight=1.0, t_min=first, generator=generator).loss
        optimiser.zero_grad()
        loss.mean().backward()
        optimiser.step()
    return model


class PosteriorVariance:
    """The exact score with the per-point optimal variance of each step of the bound's uniform K-step chain,
    beta_tilde + a^2 diag Cov(x0 | x_t) from the oracle's Hessian, given to `ddpm_bound` as a 'learned' fraction."""

    spec = ModelSpec(variance=True)  # the seam's declaration: a score with a variance

    def __init__(self, sde, score, steps: int) -> None:
        self.sde, self.score, self.h = sde, score, (sde.T - BOUND_T_MIN) / steps

    def __call__(self, x, t):
        return self.score(x, t)

    def variance_fraction(self, x, t):
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            s = self.score(xr, t)
            hess = [torch.autograd.grad(s[:, k].sum(), xr, retain_graph=True)[0][:, k] for k in range(x.shape[1])]
        alpha, sigma = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        cov = (sigma**2 / alpha**2 * (1 + sigma**2 * torch.stack(hess, 1))).clamp(min=1e-300)
        t0 = torch.full_like(t, BOUND_T_MIN)
        decoder = (t - self.h <= BOUND_T_MIN + 1e-9)[:, None]
        step = chain_step(self.sde, t, (t - self.h).clamp(min=BOUND_T_MIN), t0)
        beta, beta_tilde = step.beta[:, None], step.beta_tilde[:, None]
        clipped = torch.where(decoder, chain_step(self.sde, t + self.h, t, t0).beta_tilde[:, None], beta_tilde)
        var = torch.where(decoder, 0 * beta_tilde, beta_tilde) + step.a[:, None] ** 2 * cov
        return (var.log() - clipped.log()) / (beta.log() - clipped.log())


def oracle_variance_rows(sde, toy, steps_list, n_bound: int, iterations: int = 2000) -> list[dict]:
    """The ``learned`` (variance network on the exact mean) and ``per_x_optimum`` rows of the oracle."""
    x = toy.sample(n_bound, torch.Generator().manual_seed(1)).to(torch.float64)
    true_nll = -toy.oracle.marginal_log_prob(sde, x, torch.full((n_bound,), BOUND_T_MIN, dtype=torch.float64))
    rows = []
    for steps in steps_list:
        start = time.perf_counter()
        learned = train_oracle_variance(sde, toy, steps, iterations)
        for name, score in (
            ("learned", learned),
            ("per_x_optimum", PosteriorVariance(sde, toy.oracle.score_fn(sde), steps)),
        ):
            with torch.no_grad():
                bound = ddpm_bound(sde, score, x, n_steps=steps, variance="learned",
                                   generator=torch.Generator().manual_seed(4)).bound  # fmt: skip
                energy = float("nan")  # bound only: trained on the bound's chain, whose last step is the decoder
            gap = bound - true_nll
            rows.append({"steps": steps, "variance": name, "bound_gap": float(gap.mean()),
                         "bound_gap_se": float(gap.std()) / math.sqrt(n_bound), "energy_over_floor": energy,
                         "seconds": time.perf_counter() - start})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def variances_of(score) -> list[str]:
    """The choices a score function has: ``learned`` only with a variance channel."""
    return [v for v in VARIANCES if v != "learned" or spec_of(score).variance]


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
        for variance in variances_of(score):
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
        for variance in variances_of(model):
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


def _table(rows: list[dict], cell) -> list[str]:
    """A K-by-variance Markdown table of ``cell(row)``, with the variances these rows have."""
    variances = [v for v in COLUMNS if any(r["variance"] == v for r in rows)]
    lines = ["| K | " + " | ".join(variances) + " |", "|---:|" + "---|" * len(variances)]
    for steps in sorted({r["steps"] for r in rows}):
        cells = {r["variance"]: r for r in rows if r["steps"] == steps}
        lines.append(f"| {steps} | " + " | ".join(cell(cells[v]) if v in cells else "-" for v in variances) + " |")
    return lines + [""]


def markdown(report: dict) -> str:
    lines = []
    for key, title in SECTIONS.items():
        if report.get(key):
            lines += [f"**{title}**: DDPM bound minus the exact NLL (nats, +- s.e.) / energy distance of the `ddpm` "
                      "sampler's samples over the floor", ""]  # fmt: skip
            lines += _table(
                report[key],
                lambda r: (
                    f"{r['bound_gap']:+.3f} +- {r['bound_gap_se']:.3f} / "
                    + (
                        f"{r['energy_over_floor']:.1f}x"
                        if r["energy_over_floor"] == r["energy_over_floor"]
                        else "bound only"
                    )
                ),
            )
    for key, run in DIGITS.items():
        if report.get(key):
            floor = report["digits_floor"]["frechet_distance"]
            lines += [f"**{run}**: DDPM bound (bits/dim of test images, +- s.e.) / FD-digits of the samples "
                      f"(training split's floor {floor:.2f})", ""]  # fmt: skip
            lines += _table(report[key], lambda r: f"{r['bits_per_dim']:.3f} +- {r['bits_per_dim_se']:.3f} / "
                            f"{r['fd_digits']:.2f}")  # fmt: skip
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    panels = [(key, "bound_gap", f"{title}: bound - NLL (nats)") for key, title in SECTIONS.items() if report.get(key)]
    panels += [(key, "bits_per_dim", f"{run}: bound (bits/dim)") for key, run in DIGITS.items() if report.get(key)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4))
    for ax, (key, field, title) in zip(axes, panels):
        for variance in COLUMNS:
            rows = [r for r in report[key] if r["variance"] == variance]
            if not rows:
                continue
            ax.plot([r["steps"] for r in rows], [r[field] for r in rows], marker="o", label=variance)
        ax.set(xscale="log", xlabel="steps K")
        ax.set_title(title, fontsize=8)
        if field == "bound_gap":
            ax.set_yscale("symlog", linthresh=0.05)  # the bound may dip below the NLL by its Monte-Carlo error
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = benchmark_parser(__doc__, quick="K = 10, 25 and fewer points")
    args = parser.parse_args()
    out = setup_run(args)
    steps_list = [10, 25] if args.quick else [10, 25, 100, 1000]
    n_bound, n_samples = (500, 1000) if args.quick else (2000, 4000)
    sde, gmm = VPSDE(), toy_dataset("gmm")
    report: dict = {}
    train = gmm.sample(2000, torch.Generator().manual_seed(0)).double()
    oracle = gmm.oracle.score_fn(sde)
    report["oracle"] = toy_rows(sde, oracle, gmm, train, steps_list, n_bound, n_samples, torch.float64)
    report["oracle"] += oracle_variance_rows(
        sde, gmm, [k for k in steps_list if k <= 100], n_bound, 100 if args.quick else 2000
    )
    runs = out / "training_runs"
    if not (runs / "edm-8gaussians" / "checkpoint.safetensors").is_file():  # sample_tails.py's run, trained here
        steps = 60 if args.quick else 5000
        config = override(preset("toy-vp"), "data.name=8gaussians", "train.seed=0", "train.checkpoint_every=0",
                          f"train.steps={steps}")  # fmt: skip
        Trainer(config, runs / "edm-8gaussians", progress=not args.quick).train()
    model, config, _ = load_score_model(runs / "edm-8gaussians" / "checkpoint.safetensors")
    toy = toy_dataset("8gaussians")
    train = toy.sample(2000, torch.Generator().manual_seed(0))
    report["toy"] = toy_rows(model.sde, model, toy, train, steps_list, n_bound, n_samples, torch.float32)
    if (runs / "learned-8gaussians" / "checkpoint.safetensors").is_file():
        model = load_score_model(runs / "learned-8gaussians" / "checkpoint.safetensors")[0]
        report["toy_learned"] = toy_rows(model.sde, model, toy, train, steps_list, n_bound, n_samples, torch.float32)
    for key, run in DIGITS.items():
        if (runs / run / "checkpoint.safetensors").is_file():
            report[key], report["digits_floor"] = digits_rows(runs / run, [10, 25, 100], 200, 1000)
    write_report(out, "variance", report, markdown(report), plot)


if __name__ == "__main__":
    main()
