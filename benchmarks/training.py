"""Training benchmark: NLL gap of the toy presets against the true density, digits-ddpm samples and test
bits/dim, and training throughput of every preset on this machine.

1. ``toy-vp`` on ``8gaussians`` and on ``checkerboard``: the EMA model's exact NLL (PF-ODE, exact
   divergence, dopri5 at 1e-5, float64) of 2,000 held-out points minus their true NLL, paired on the
   same points, evaluated along training; the curve (gap against training wall time, evaluation time
   excluded) is plotted. Targets: 0.02 nats (8gaussians), 0.15 nats (checkerboard) within 3 minutes.
2. ``digits-ddpm``: trained for its preset steps (target: at most 15 minutes); a 10x10 grid of samples
   (DPM-Solver++ 3M, 50 NFE) saved as PNG; test-split bits/dim (17 levels, uniform dequantisation,
   Hutchinson, 2 draws) next to the continuous ELBO's.
3. Throughput: training steps per second of every preset (MNIST / CIFAR-10 on random files in their
   formats, which cost the same per step as the real ones).

Usage: python benchmarks/training.py [--out benchmarks/results] [--quick] [--parts toys,digits,throughput] [--threads 2]
Writes training.json, training.md, training_toys.png and digits_samples.png.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import QUICK_TRAINING, benchmark_parser, fake_image_files, setup_run  # noqa: E402

from scoresde import bits_per_dim, image_dataset, log_likelihood, sample, toy_dataset  # noqa: E402
from scoresde.app.report import IMAGE_LIKELIHOOD  # noqa: E402
from scoresde.config.presets import preset, preset_stages, presets  # noqa: E402
from scoresde.config.schema import override  # noqa: E402
from scoresde.training.trainer import Trainer  # noqa: E402


def stop_if_interrupted(result) -> None:
    """The trainer turns SIGINT / SIGTERM into a checkpoint and a return; the benchmark then stops too."""
    if result.interrupted:
        raise SystemExit("interrupted: the last checkpoint is saved")


def nll_gap(trainer: Trainer, x: torch.Tensor, true_nll: torch.Tensor) -> dict:
    """Paired mean of (model NLL - true NLL) on held-out points, with its standard error."""
    model = trainer.ema.model.double()
    try:
        result = log_likelihood(trainer.sde, model, x, rtol=1e-5, atol=1e-5)
    finally:
        trainer.ema.model.float()
    gap = result.nll - true_nll
    return {"gap_nats": float(gap.mean()), "standard_error": float(gap.std()) / math.sqrt(len(x)), "nfe": result.nfe}


def toy_run(name: str, budget_s: float, evals: int, out: Path, quick: bool) -> dict:
    cfg = override(preset("toy-vp"), f"data.name={name}", "train.checkpoint_every=0")
    if quick:
        cfg = override(cfg, "train.steps=60")
    toy = toy_dataset(name)
    x = toy.sample(200 if quick else 2000, torch.Generator().manual_seed(123), dtype=torch.float64)
    true_nll = -toy.log_prob(x)
    trainer = Trainer(cfg, out / f"toy-vp-{name}", progress=False, resume=False, overwrite=True)
    marks = np.linspace(cfg.train.steps / evals, cfg.train.steps, evals).round().astype(int)
    curve, train_s = [], 0.0
    for mark in marks:
        result = trainer.train(int(mark))
        stop_if_interrupted(result)
        train_s += result.seconds
        point = {"step": trainer.step, "train_seconds": train_s, **nll_gap(trainer, x, true_nll)}
        curve.append(point)
        print(
            f"toy-vp {name:12s} step {trainer.step:5d}  {train_s:6.1f} s  gap {point['gap_nats']:+.4f} +- "
            f"{point['standard_error']:.4f} nats",
            flush=True,
        )
    return {"curve": curve, "final": curve[-1], "budget_seconds": budget_s, "steps": cfg.train.steps}


def digits_run(out: Path, quick: bool) -> dict:
    cfg = override(preset("digits-ddpm"), "train.checkpoint_every=0", "train.log_every=100")
    if quick:
        cfg = override(cfg, *QUICK_TRAINING)
    run = out / "training_runs" / ("digits-ddpm-quick" if quick else "digits-ddpm")
    trainer = Trainer(
        cfg, run, progress=True, resume=not quick, overwrite=quick
    )  # a finished run of the same config is evaluated again, not retrained
    trainer.train()
    log = (run / "metrics.csv").read_text().splitlines()
    last = dict(zip(log[0].split(","), map(float, log[-1].split(","))))
    result = argparse.Namespace(step=trainer.step, seconds=last["seconds"], loss=last["loss"])
    print(
        f"digits-ddpm: {result.step} steps in {result.seconds / 60:.1f} min, final loss {result.loss:.4f}", flush=True
    )
    model = trainer.score_fn
    test = image_dataset("digits", "test", seed=cfg.data.split_seed)
    transform = test.transform(cfg.data.low, cfg.data.high)
    with torch.no_grad():
        samples = sample(
            trainer.sde,
            model,
            (100, 1, 8, 8),
            "dpm_solver",
            steps=50,
            order=3,
            generator=torch.Generator().manual_seed(0),
        )
    levels = transform.from_model(samples.x)
    fig, axes = plt.subplots(10, 10, figsize=(6, 6))
    for ax, img in zip(axes.flat, levels[:, 0]):
        ax.imshow(img.numpy(), cmap="gray_r", vmin=0, vmax=16)
        ax.axis("off")
    fig.suptitle(f"digits-ddpm samples ({result.step} steps, DPM-Solver++ 3M, {samples.nfe} NFE)")
    fig.savefig(out / "digits_samples.png", dpi=100)
    plt.close(fig)
    n_test = 8 if quick else len(test)
    x_test = test.x[:n_test]
    start = time.perf_counter()  # float32 as the reference implementation; Hutchinson with one Rademacher probe
    bpd = bits_per_dim(
        trainer.sde,
        model,
        x_test,
        transform,
        n_dequantizations=1 if quick else 2,
        divergence="hutchinson",
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float32,
        progress=True,
        **IMAGE_LIKELIHOOD,  # the command's settings for images (benchmarks/likelihood_images.py)
    )
    bpd_s = time.perf_counter() - start
    print(
        f"digits-ddpm test bits/dim {bpd.bpd:.4f} +- {bpd.bpd_standard_error:.4f} ({bpd.nfe} NFE, {bpd_s:.0f} s)",
        flush=True,
    )
    bound = bits_per_dim(
        trainer.sde,
        model,
        x_test,
        transform,
        estimator="elbo",
        n_times=32,
        divergence="hutchinson",
        generator=torch.Generator().manual_seed(2),
        dtype=torch.float32,
    )
    print(
        f"digits-ddpm test bits/dim {bpd.bpd:.4f} +- {bpd.bpd_standard_error:.4f} (ELBO {bound.bpd:.4f} +- "
        f"{bound.bpd_standard_error:.4f})",
        flush=True,
    )
    return {
        "steps": result.step,
        "train_minutes": result.seconds / 60,
        "final_loss": result.loss,
        "test_bits_per_dim": bpd.to_dict(),
        "test_elbo_bits_per_dim": bound.to_dict(),
        "bpd_seconds": bpd_s,
        "n_test": n_test,
        "sample_nfe": samples.nfe,
        "samples_png": str(out / "digits_samples.png"),
    }


def throughput(out: Path, steps: int, quick: bool = False) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        fake_image_files(Path(tmp))
        for name in presets():
            data = preset(name).data
            if quick and (data.kind != "toy" and data.name != "digits" or preset_stages(name)):  # the small ones
                continue
            cfg = override(preset(name), f"train.steps={steps + 2}", "train.checkpoint_every=0", "train.log_every=0")
            if cfg.data.kind == "image" and cfg.data.name != "digits":
                cfg = override(cfg, f"data.data_dir={tmp}")
            for field, stage in preset_stages(name).items():  # the run a stage names (an autoencoder, a base): 1 step
                quick_stage = override(preset(stage), "train.steps=1", "train.checkpoint_every=0", "train.log_every=0")
                Trainer(quick_stage, Path(tmp) / name / getattr(cfg.stage, field), progress=False).train()
            trainer = Trainer(cfg, Path(tmp) / name, progress=False, resume=False)
            params = sum(p.numel() for p in trainer.model.parameters())
            if quick and params >= 5e6:  # the CIFAR-10 models take tens of seconds a step on a CPU
                continue
            timed = steps if params < 5e6 else 2
            trainer.train(1)  # warm-up
            result = trainer.train(1 + timed)
            stop_if_interrupted(result)
            rows[name] = {
                "steps_per_second": result.steps_per_second,
                "batch_size": cfg.train.batch_size,
                "parameters": params,
                "samples_per_second": result.steps_per_second * cfg.train.batch_size,
            }
            print(
                f"throughput {name:22s} {result.steps_per_second:8.2f} steps/s  batch {cfg.train.batch_size:5d}  "
                f"{params / 1e6:6.2f}M params",
                flush=True,
            )
    return rows


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="60 toy steps, a 20-step small digits model, 1 throughput step of the toy and digits presets",
    )
    parser.add_argument(
        "--parts", default="toys,digits,throughput", help="comma-separated subset of toys, digits, throughput"
    )
    parser.add_argument("--evals", type=int, default=6)
    args = parser.parse_args()
    out = setup_run(args)
    runs = out / "training_runs"
    parts = set(args.parts.split(","))
    report_path = out / "training.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}  # parts not rerun keep their figures
    report.update({"threads": args.threads, "quick": args.quick})
    targets = {"8gaussians": 0.02, "checkerboard": 0.15}
    if "toys" in parts:
        report["toys"] = {}
        for name in targets:
            report["toys"][name] = toy_run(name, 180.0, 2 if args.quick else args.evals, runs, args.quick)
            report["toys"][name]["target_nats"] = targets[name]
        report_path.write_text(json.dumps(report, indent=2))
    if "digits" in parts:
        report["digits"] = digits_run(out, args.quick)
        report_path.write_text(json.dumps(report, indent=2))
    if "throughput" in parts:
        report["throughput"] = throughput(out, 1 if args.quick else 20, args.quick)
        report_path.write_text(json.dumps(report, indent=2))
    write_report(report, targets, out)


def write_report(report: dict, targets: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in report.get("toys", {}).items():
        curve = run["curve"]
        ax.errorbar(
            [p["train_seconds"] for p in curve],
            [p["gap_nats"] for p in curve],
            yerr=[2 * p["standard_error"] for p in curve],
            marker="o",
            capsize=3,
            label=f"{name} (target {targets[name]})",
        )
        ax.axhline(targets[name], ls=":", color=ax.lines[-1].get_color())
    ax.set_xlabel("training wall time (s, 2 CPU threads; evaluation excluded)")
    ax.set_ylabel("NLL gap to the true density (nats)")
    ax.set_yscale("log")
    ax.axvline(180, color="k", lw=0.8, ls="--")
    ax.legend()
    ax.set_title("toy-vp: exact NLL of 2,000 held-out points minus the truth")
    fig.tight_layout()
    fig.savefig(out / "training_toys.png", dpi=110)
    lines = [
        "| toy (toy-vp) | steps | training time (s) | NLL gap (nats) | standard error | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in report.get("toys", {}).items():
        f = run["final"]
        lines.append(
            f"| {name} | {f['step']} | {f['train_seconds']:.0f} | {f['gap_nats']:+.4f} | {f['standard_error']:.4f} | "
            f"{targets[name]} |"
        )
    if "digits" in report:
        d = report["digits"]
        lines += [
            "",
            "| digits-ddpm | value |",
            "|---|---|",
            f"| steps | {d['steps']} |",
            f"| training time (min) | {d['train_minutes']:.1f} |",
            f"| test bits/dim (PF-ODE, Hutchinson, {d['n_test']} images) | {d['test_bits_per_dim']['bpd']:.4f} +- "
            f"{d['test_bits_per_dim']['bpd_standard_error']:.4f} |",
            f"| test bits/dim (continuous ELBO) | {d['test_elbo_bits_per_dim']['bpd']:.4f} +- "
            f"{d['test_elbo_bits_per_dim']['bpd_standard_error']:.4f} |",
        ]
    lines += ["", "| preset | steps/s | batch | samples/s | parameters |", "|---|---|---|---|---|"]
    lines += [
        f"| {k} | {r['steps_per_second']:.2f} | {r['batch_size']} | {r['samples_per_second']:.0f} | "
        f"{r['parameters'] / 1e6:.2f}M |"
        for k, r in report.get("throughput", {}).items()
    ]
    (out / "training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
