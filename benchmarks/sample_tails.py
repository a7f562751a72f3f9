"""Where deterministic samplers of a learned model leave the data, and what brings them back.

For each toy (8gaussians, checkerboard) a model is trained on the demo's budget (toy-vp, 5000 steps) with the plain
``eps`` parameterisation and with the ``edm`` preconditioning (the toy presets' choice, sigma_data 2.0; and 0.5), and
sampled from one prior draw by the adaptive ODE (rtol 1e-5), DDIM (50 steps), DPM-Solver++ 3M (20 steps) and
Euler-Maruyama (500 steps):

- the mean true NLL of the samples minus a perfect sampler's (a perfect sampler's 0) with its standard error, and the
  same for the exact score (the solvers' own bias). The checkerboard's density is 0 off the squares (the true NLL of
  any smooth model's samples is infinite): its samples are scored under the data blurred by sigma = 0.01, the
  samplers' last noise level, against a perfect sampler's mean under it; also the share off the squares and the
  farthest sample;
- both: the exact NLL of held-out data under the model minus its true NLL (the data NLL gap), which the fix must not
  worsen.

Then the diagnosis with the oracle, on the eps model's DDIM samples of 8gaussians: how often a draw lands far from
every mode (true NLL > 10 nats) against the norm of its prior draw, and the learned score against the exact one
along the trajectories of those draws and of the others. Prints tables, writes ``sample_tails.json``,
``sample_tails.md`` and ``sample_tails.png``.

    python benchmarks/sample_tails.py            # trains 6 models (about 3 min each on 2 cores), reuses them after
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from common import benchmark_parser, parse, setup_run, write_report  # noqa: E402

from scoresde import VPSDE, log_likelihood, sample, toy_dataset  # noqa: E402
from scoresde.config.presets import preset  # noqa: E402
from scoresde.config.schema import override  # noqa: E402
from scoresde.training.trainer import Trainer  # noqa: E402

VARIANTS = {
    "eps": ["model.parameterization=eps", "model.sigma_data=0.5"],
    "edm": [],
    "edm-sd05": ["model.sigma_data=0.5"],
}
"""Overrides of the toy-vp preset compared: the plain eps network, the preset's edm preconditioning (sigma_data 2.0,
about both toys' per-coordinate standard deviation) and edm with EDM's image default sigma_data 0.5."""
SAMPLERS = {
    "ode (rtol 1e-5)": ("ode", {"rtol": 1e-5, "atol": 1e-5}),
    "ddim (50)": ("ddim", {"steps": 50}),
    "dpm_solver 3M (20)": ("dpm_solver", {"order": 3, "steps": 20}),
    "euler-maruyama (500)": ("pc", {"predictor": "euler_maruyama", "corrector": "none", "steps": 500}),
}
QUICK_SAMPLERS = {
    "ode (rtol 1e-3)": ("ode", {"rtol": 1e-3, "atol": 1e-3}),
    "ddim (20)": ("ddim", {"steps": 20}),
    "dpm_solver 3M (10)": ("dpm_solver", {"order": 3, "steps": 10}),
    "euler-maruyama (100)": ("pc", {"predictor": "euler_maruyama", "corrector": "none", "steps": 100}),
}
"""A smoke run's samplers (``--quick``: an undertrained model's flow is stiff at tight tolerances)."""
FAR = 10.0
"""True NLL (nats) above which a sample is far from every mode of 8gaussians (the modes' own NLL is about 2.8)."""


def train(out: Path, data: str, variant: str, steps: int = 5000):
    config = override(
        preset("toy-vp"), f"data.name={data}", "train.seed=0", "train.checkpoint_every=0", f"train.steps={steps}"
    )
    trainer = Trainer(override(config, *VARIANTS[variant]), out / f"{variant}-{data}", progress=True)
    trainer.train()
    return trainer


def distance_off_checkerboard(x: torch.Tensor) -> torch.Tensor:
    """Distance of each point to the nearest dark square of the checkerboard (0 on the support)."""
    best = torch.full(x.shape[:1], math.inf, dtype=x.dtype)
    for i in range(-2, 2):
        for j in range(-2, 2):
            if (i + j) % 2 == 0:
                low = torch.tensor([2.0 * i, 2.0 * j], dtype=x.dtype)
                gap = torch.clamp(low - x, min=0) + torch.clamp(x - (low + 2), min=0)
                best = torch.minimum(best, gap.norm(dim=1))
    return best


def sample_figures(toy, data: str, sde, score, x_T: torch.Tensor, samplers: dict = SAMPLERS) -> dict:
    """Per sampler: mean true NLL of the samples minus a perfect sampler's (the entropy; the checkerboard's under its
    blur), its standard error, the share beyond ``FAR`` nats and the worst; the checkerboard's off-support shares."""
    rows = {}
    for label, (name, options) in samplers.items():
        extra = {"generator": torch.Generator().manual_seed(1)} if name == "pc" else {}
        x = sample(sde, score, tuple(x_T.shape), name, x_T=x_T, **options, **extra).x.double()
        nll = -toy.nll_log_prob(x)
        rows[label] = {"gap": float(nll.mean()) - toy.perfect_nll(), "se": float(nll.std()) / math.sqrt(len(nll))}
        rows[label].update(far=float((nll > FAR).double().mean()), max_nll=float(nll.max()))
        if data == "checkerboard":
            d = distance_off_checkerboard(x)
            rows[label].update(off=float((d > 0).double().mean()), farthest=float(d.max()))
    return rows


def data_gap(toy, sde, score, n: int, tolerance: float = 1e-5) -> dict:
    x = toy.sample(n, torch.Generator().manual_seed(7))
    gap = log_likelihood(sde, score, x.float(), rtol=tolerance, atol=tolerance).nll.double() + toy.log_prob(x.double())
    return {"gap": float(gap.mean()), "se": float(gap.std()) / math.sqrt(n)}


def diagnose(toy, trainer, n: int) -> dict:
    """Far-off samples of DDIM against |x_T|, and the learned score against the exact one along trajectories."""
    model, sde = trainer.score_fn, trainer.sde
    exact = toy.mixture.score_fn(sde)
    x_T = sde.prior_sampling((n, 2), torch.Generator().manual_seed(11))
    result = sample(sde, model, (n, 2), "ddim", steps=50, x_T=x_T, return_trajectory=True)
    far = -toy.log_prob(result.x.double()) > FAR
    norm = x_T.norm(dim=1)
    edges = [0.0, 1.0, 2.0, 2.5, 3.0, 3.5, math.inf]
    bins = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (norm >= low) & (norm < high)
        bins.append({"low": low, "high": high, "draws": int(inside.sum()), "far": int((inside & far).sum())})
    paths = {}
    for label, chosen in (("far", far), ("near", ~far)):
        idx = chosen.nonzero().squeeze(1)[:500]
        rows = []
        for k, t in enumerate(result.times[:-1].tolist()):
            x, tt = result.trajectory[k, idx], torch.full((len(idx),), t)
            with torch.no_grad():
                learned, true = model(x, tt).double(), exact(x.double(), tt.double())
            rows.append(
                {
                    "t": t,
                    "ratio": float((learned.norm(dim=1) / true.norm(dim=1)).median()),
                    "relative_error": float(((learned - true).norm(dim=1) / true.norm(dim=1)).median()),
                    "x_norm": float(x.norm(dim=1).median()),
                }
            )
        paths[label] = rows
    return {"n": n, "far_share": float(far.double().mean()), "bins": bins, "paths": paths}


def _rows(cells: dict[str, list], cell) -> list[str]:
    """Markdown table rows: a label, then ``cell(c)`` of each of its cells ("-" stays as it is)."""
    return [
        f"| {label} | " + " | ".join(c if c == "-" else cell(c) for c in row) + " |" for label, row in cells.items()
    ]


def _gap_cell(c: dict) -> str:
    return f"{c['gap']:+.4f} +- {c['se']:.4f}"


def markdown(report: dict) -> str:
    n = report["n"]
    lines = [
        f"Mean true NLL of {n} samples minus a perfect sampler's (nats, +- standard error; the entropy, and for the "
        "checkerboard the cross-entropy under the data blurred by sigma = 0.01), share of samples with true NLL > "
        f"{FAR:g}; checkerboard: share off the squares and the farthest sample's distance; data NLL gap: model NLL of "
        "held-out data minus the true NLL"
    ]
    for data in ("8gaussians", "checkerboard"):
        rep = report[data]
        variants = [v for v in VARIANTS if v in rep]  # a quick run trains one a data set
        head = "| sampler | exact score | " + " | ".join(f"{v} model" for v in variants) + " |"
        lines += ["", f"**{data}**", "", head, "|---|---|" + "---|" * len(variants)]

        def cell(c: dict) -> str:
            text = f"{c['gap']:+.3f} +- {c['se']:.3f} (far {c['far']:.2%})"
            return text + (f", off {c['off']:.1%}, farthest {c['farthest']:.2f}" if "off" in c else "")

        lines += _rows(
            {label: [rep["exact"][label]] + [rep[v]["samplers"][label] for v in variants] for label in rep["exact"]},
            cell,
        )
        lines += _rows({"data NLL gap": ["-"] + [rep[v]["data_gap"] for v in variants]}, _gap_cell)
    diag = report["diagnosis"]
    lines += ["", f"Diagnosis (eps model, DDIM 50, {diag['n']} draws): samples with true NLL > {FAR:g} against |x_T|",
              "", "| abs(x_T) | draws | far from the data |", "|---|---|---|"]  # fmt: skip
    for b in diag["bins"]:
        lines.append(
            f"| [{b['low']:g}, {b['high']:g}) | {b['draws']} | {b['far']} ({b['far'] / max(b['draws'], 1):.1%}) |"
        )
    lines += ["", "|learned score| / |exact score| (median) along the trajectories", "", "| t | far draws | others |",
              "|---|---|---|"]  # fmt: skip
    for far_row, near_row in list(zip(diag["paths"]["far"], diag["paths"]["near"]))[::5]:
        lines.append(f"| {far_row['t']:.2f} | {far_row['ratio']:.2f} (abs(x) {far_row['x_norm']:.1f}) | "
                     f"{near_row['ratio']:.2f} (abs(x) {near_row['x_norm']:.1f}) |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    diag = report["diagnosis"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    bins = diag["bins"]
    labels = [f"[{b['low']:g},{b['high']:g})" for b in bins]
    axes[0].bar(labels, [b["far"] / max(b["draws"], 1) for b in bins], color="tab:red")
    axes[0].set(xlabel="|x_T| of the prior draw", ylabel=f"share landing far (true NLL > {FAR:g})",
                title="eps model, DDIM 50: which draws leave the data")  # fmt: skip
    for label, color in (("far", "tab:red"), ("near", "tab:blue")):
        rows = diag["paths"][label]
        axes[1].plot([r["t"] for r in rows], [r["ratio"] for r in rows], color=color, label=f"{label} draws")
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].set(xlabel="t", ylabel="|learned score| / |exact score|", title="along the trajectories")
    axes[1].invert_xaxis()
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="300 samples, 1,000 diagnosis draws, 60 training steps, one variant a data set (eps, edm), loose "
        "tolerances and few steps (QUICK_SAMPLERS)",
    )
    parser.add_argument("--n", type=int, default=2000, help="samples per sampler (and held-out points)")
    parser.add_argument("--diagnosis-n", type=int, default=20000, help="prior draws of the diagnosis")
    args = parse(parser, n=300, diagnosis_n=1000)
    out = setup_run(args)
    runs = out / "training_runs"
    report: dict = {"n": args.n}
    for data in ("8gaussians", "checkerboard"):
        toy = toy_dataset(data)
        report[data] = {}
        x_T = VPSDE().prior_sampling((args.n, 2), torch.Generator().manual_seed(0))
        sde = VPSDE()
        samplers, tolerance = (QUICK_SAMPLERS, 1e-3) if args.quick else (SAMPLERS, 1e-5)
        report[data]["exact"] = sample_figures(toy, data, sde, toy.oracle.score_fn(sde), x_T, samplers)
        for variant in ({"8gaussians": "eps", "checkerboard": "edm"}[data],) if args.quick else VARIANTS:
            trainer = train(runs, data, variant, 60 if args.quick else 5000)
            report[data][variant] = {
                "samplers": sample_figures(toy, data, trainer.sde, trainer.score_fn, x_T, samplers),
                "data_gap": data_gap(toy, trainer.sde, trainer.score_fn, args.n, tolerance),
            }
            if data == "8gaussians" and variant == "eps":
                report["diagnosis"] = diagnose(toy, trainer, args.diagnosis_n)
            print(data, variant, json.dumps(report[data][variant]), flush=True)
    write_report(out, "sample_tails", report, markdown(report), plot)


if __name__ == "__main__":
    main()
