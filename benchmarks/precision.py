"""What reduced precision costs: bf16 training of a toy against fp32 (gap to the true density, several seeds), and
the error a bf16 network adds to a likelihood (toy NLL and digits bits/dim, paired on the same points, probes and
dequantisation).

1. ``toy-vp`` on ``8gaussians``, ``--steps`` steps, seeds 0..``--seeds``-1, fp32 and bf16: the EMA model's NLL on
   2,000 held-out points (exact divergence, the exponential integrator at 1e-5) minus their true NLL. Target: the
   bf16 mean gap within the run-to-run spread (the larger standard deviation over seeds) of the fp32 one.
2. The same trained fp32 toy model's NLL with its network run in bf16 (`ScoreModel.network_dtype`): the mean paired
   difference and its standard error.
3. ``digits-ddpm`` trained ``--digits-steps`` steps: bits/dim of ``--n-bpd`` test images with the network in fp32 and
   in bf16 (Hutchinson, 1 probe, the same probe and dequantisation draws, ei at 1e-4), paired difference.

Usage: python benchmarks/precision.py [--steps 2000] [--seeds 3] [--digits-steps 1500] [--n-bpd 128] [--quick]
Writes precision.json, precision.md and precision.png.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import benchmark_parser, parse, setup_run, write_report

from scoresde import bits_per_dim, image_dataset, log_likelihood, toy_dataset
from scoresde._stats import mean_and_standard_error
from scoresde.config import override, preset
from scoresde.training.trainer import Trainer


def toy_gap(precision: str, seed: int, steps: int, folder: Path, x: torch.Tensor, true_nll: torch.Tensor,
            tol: float) -> dict:  # fmt: skip
    """Train the toy at ``precision`` with ``seed``; the EMA model's NLL gap on ``x`` (fp32 network, tight solve)."""
    cfg = override(preset("toy-vp"), "data.name=8gaussians", f"train.steps={steps}", f"train.seed={seed}",
                   f"train.precision={precision}", "train.checkpoint_every=0", "train.log_every=0")  # fmt: skip
    trainer = Trainer(cfg, folder, progress=False)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    nll = log_likelihood(cfg.sde.build(), trainer.score_fn, x, rtol=tol, atol=tol).nll
    return {"precision": precision, "seed": seed, "gap": float((nll - true_nll).mean()), "train_seconds": seconds,
            "model": trainer.score_fn, "sde": cfg.sde.build()}  # fmt: skip


def paired(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean of ``b - a`` and its standard error (paired on the same points)."""
    mean, se = mean_and_standard_error((b - a).double())
    return {"mean_difference": mean, "standard_error": se, "max_abs_difference": float((b - a).abs().max())}


def main() -> None:
    parser = benchmark_parser(__doc__, quick="100 toy steps, 2 seeds, 200 points, 20 digits steps, 4 images")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--digits-steps", type=int, default=1500)
    parser.add_argument("--n-bpd", type=int, default=128)
    parser.add_argument("--n-toy", type=int, default=2000, help="held-out toy points")
    parser.add_argument("--tol", type=float, default=1e-5, help="rtol = atol of the toy NLL (bits/dim: 10x looser)")
    args = parse(parser, steps=100, seeds=2, digits_steps=20, n_bpd=4, n_toy=100, tol=1e-2)
    out = setup_run(args)
    toy = toy_dataset("8gaussians")
    x = toy.sample(args.n_toy, torch.Generator().manual_seed(12345))
    true_nll = -toy.log_prob(x.double())
    report = {"settings": {"steps": args.steps, "seeds": args.seeds, "digits_steps": args.digits_steps, "tol": args.tol,
                           "n_bpd": args.n_bpd, "n_toy": args.n_toy, "threads": args.threads}, "toy": []}  # fmt: skip
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            for seed in range(args.seeds):
                row = toy_gap(precision, seed, args.steps, Path(tmp) / f"{precision}-{seed}", x, true_nll, args.tol)
                models[(precision, seed)] = (row.pop("model"), row.pop("sde"))
                report["toy"].append(row)
                print(f"toy {precision} seed {seed}: gap {row['gap']:.4f} nats ({row['train_seconds']:.0f} s)")
        gaps = {p: [r["gap"] for r in report["toy"] if r["precision"] == p] for p in ("fp32", "bf16")}
        spread = max(statistics.stdev(g) for g in gaps.values())
        report["toy_summary"] = {
            **{f"{p}_mean_gap": statistics.mean(g) for p, g in gaps.items()},
            **{f"{p}_std_gap": statistics.stdev(g) for p, g in gaps.items()},
            "spread": spread,
            "within_spread": abs(statistics.mean(gaps["bf16"]) - statistics.mean(gaps["fp32"])) <= spread,
        }
        model, sde = models[("fp32", 0)]
        full = log_likelihood(sde, model, x, rtol=args.tol, atol=args.tol).nll
        model.network_dtype = torch.bfloat16
        half = log_likelihood(sde, model, x, rtol=args.tol, atol=args.tol).nll
        model.network_dtype = None
        report["toy_network_bf16"] = paired(full, half)
        print("toy NLL, bf16 network - fp32 network:", report["toy_network_bf16"])

        cfg = override(preset("digits-ddpm"), f"train.steps={args.digits_steps}", "train.checkpoint_every=0",
                       "train.log_every=0", "train.precision=bf16")  # fmt: skip
        trainer = Trainer(cfg, Path(tmp) / "digits", progress=False)
        start = time.perf_counter()
        trainer.train()
        digits_seconds = time.perf_counter() - start
        test = image_dataset("digits", "test").x[: args.n_bpd]
        model, transform = trainer.score_fn, cfg.data.transform()
        tol = 10 * args.tol
        solve = {"divergence": "hutchinson", "rtol": tol, "atol": tol, "method": "ei", "dtype": torch.float32}
        results = {}
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            model.network_dtype = dtype
            start = time.perf_counter()
            res = bits_per_dim(cfg.sde.build(), model, test, transform, generator=torch.Generator().manual_seed(0),
                               **solve)  # fmt: skip
            results[name] = {"bpd": res.bpd, "bpd_standard_error": res.bpd_standard_error, "nfe": res.nfe,
                             "seconds": time.perf_counter() - start, "per_sample": res.per_sample}  # fmt: skip
            print(f"digits bits/dim, {name} network: {res.bpd:.4f} +- {res.bpd_standard_error:.4f} ({res.nfe} NFE)")
        model.network_dtype = None
        report["digits"] = {
            "train_seconds": digits_seconds,
            "train_precision": "bf16",
            **{n: {k: v for k, v in r.items() if k != "per_sample"} for n, r in results.items()},
            "bf16_minus_fp32": paired(results["fp32"]["per_sample"], results["bf16"]["per_sample"]),
        }
    write_report(out, "precision", report, markdown(report), plot)


def markdown(report: dict) -> str:
    s, t, d = report["settings"], report["toy_summary"], report["digits"]
    lines = [
        f"# Reduced precision ({s['threads']} CPU threads)",
        "",
        f"1. toy-vp on 8gaussians, {s['steps']} steps, {s['seeds']} seeds: NLL gap to the true density (nats, "
        f"{s['n_toy']} held-out points)",
        "",
        "| precision | mean gap | std over seeds | seeds' gaps |",
        "|---|---|---|---|",
    ]
    for p in ("fp32", "bf16"):
        gaps = ", ".join(f"{r['gap']:.4f}" for r in report["toy"] if r["precision"] == p)
        lines.append(f"| {p} | {t[f'{p}_mean_gap']:.4f} | {t[f'{p}_std_gap']:.4f} | {gaps} |")
    verdict = "within" if t["within_spread"] else "OUTSIDE"
    lines += [
        "",
        f"bf16 - fp32 mean gap: {t['bf16_mean_gap'] - t['fp32_mean_gap']:+.4f} nats, {verdict} the run-to-run spread "
        f"{t['spread']:.4f}.",
        "",
        "2. The same fp32 toy model's NLL with the network in bf16, paired: "
        f"{report['toy_network_bf16']['mean_difference']:+.2e} +- {report['toy_network_bf16']['standard_error']:.1e} "
        f"nats (largest {report['toy_network_bf16']['max_abs_difference']:.1e}).",
        "",
        f"3. digits-ddpm trained {s['digits_steps']} steps in bf16 ({d['train_seconds']:.0f} s); bits/dim of "
        f"{s['n_bpd']} test images: fp32 network {d['fp32']['bpd']:.4f} +- {d['fp32']['bpd_standard_error']:.4f} "
        f"({d['fp32']['nfe']} NFE), bf16 network {d['bf16']['bpd']:.4f} +- {d['bf16']['bpd_standard_error']:.4f} "
        f"({d['bf16']['nfe']} NFE); paired difference {d['bf16_minus_fp32']['mean_difference']:+.2e} +- "
        f"{d['bf16_minus_fp32']['standard_error']:.1e} bits/dim.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for k, p in enumerate(("fp32", "bf16")):
        gaps = [r["gap"] for r in report["toy"] if r["precision"] == p]
        ax.scatter([k] * len(gaps), gaps, color=f"C{k}", label=f"{p}: seeds")
        ax.errorbar([k + 0.15], [statistics.mean(gaps)], yerr=[statistics.stdev(gaps)], fmt="s", color=f"C{k}",
                    capsize=4, label=f"{p}: mean +- std")  # fmt: skip
    ax.set_xticks([0, 1], ["fp32", "bf16"])
    ax.set_ylabel("NLL gap to the true density (nats)")
    ax.set_title("toy-vp on 8gaussians: training precision")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
