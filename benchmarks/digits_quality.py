"""Image quality of the digits-ddpm model's samples against NFE: FD-digits, KID, precision and recall.

The model is benchmarks/training.py's ``digits-ddpm`` run (trained here on its preset if the folder holds no
finished checkpoint: about 9 minutes on 2 cores). Every sampler starts from the same prior draw of as many samples as
the training split has images (1,438), so the floor, the training split itself scored the same way, is measured at
the same n (the Fréchet distance is biased upwards at small n). Features: the shipped digits network
(``scoresde.evaluation.features``, FD-digits: not comparable with an Inception FID). Reference: the test split (359
images).

    python benchmarks/digits_quality.py [--out benchmarks/results] [--threads 2]

Writes digits_quality.json, digits_quality.md and digits_quality.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from report_files import write_report  # noqa: E402

from scoresde import image_dataset  # noqa: E402
from scoresde.config.schema import preset  # noqa: E402
from scoresde.evaluation.comparison import SamplerSpec, compare_samplers  # noqa: E402
from scoresde.evaluation.features import image_metric  # noqa: E402
from scoresde.training.trainer import Trainer  # noqa: E402

FAMILIES = {
    "ddim": ("ddim", {}, [5, 10, 20, 50]),
    "dpm_solver (3M)": ("dpm_solver", {"order": 3}, [5, 10, 20]),
    "heun (EDM)": ("heun", {}, [5, 10, 20]),
    "pc (Euler–Maruyama)": ("pc", {"predictor": "euler_maruyama", "corrector": "none"}, [100, 500]),
}


def lineup() -> list[SamplerSpec]:
    specs = [
        SamplerSpec(family, sampler, {**options, "steps": steps})
        for family, (sampler, options, budgets) in FAMILIES.items()
        for steps in budgets
    ]
    return specs + [SamplerSpec("ode (dopri5, adaptive)", "ode", {"rtol": 1e-3, "atol": 1e-3})]


def markdown(report: dict) -> str:
    floor = report["floor"]
    lines = [
        f"digits-ddpm (step {report['step']}): {report['n']} samples per sampler from one prior draw against the "
        f"test split ({floor['n_reference']} images); FD-digits = Fréchet distance on the shipped digits network",
        "",
        "| sampler | NFE | FD-digits | KID | precision | recall | wall time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in report["runs"]:
        q = run["image_quality"]
        lines.append(
            f"| {run['label']} | {run['nfe']} | {q['frechet_distance']:.3f} | {q['kid']:.4f} ± "
            f"{q['kid_standard_error']:.4f} | {q['precision']:.3f} | {q['recall']:.3f} | {run['seconds']:.1f} |"
        )
    lines.append(
        f"| training split (the floor) | - | {floor['frechet_distance']:.3f} | {floor['kid']:.4f} ± "
        f"{floor['kid_standard_error']:.4f} | {floor['precision']:.3f} | {floor['recall']:.3f} | - |"
    )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for family in dict.fromkeys(run["family"] for run in report["runs"]):
        runs = [r for r in report["runs"] if r["family"] == family]
        nfe = [r["nfe"] for r in runs]
        for ax, key in zip(axes, ("frechet_distance", "kid")):
            ax.plot(nfe, [r["image_quality"][key] for r in runs], marker="o", label=family)
    for ax, key, name in zip(axes, ("frechet_distance", "kid"), ("FD-digits", "KID")):
        ax.axhline(report["floor"][key], color="grey", ls="--", label="training split (floor)")
        ax.set(xscale="log", xlabel="NFE", ylabel=name, title=f"digits-ddpm: {name} against NFE")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    trainer = Trainer(preset("digits-ddpm"), out / "training_runs" / "digits-ddpm", progress=True)
    trainer.train()
    _, report = compare_on_digits(trainer, lineup())
    write_report(out, "digits_quality", report, markdown(report), plot)


def compare_on_digits(trainer: Trainer, specs: list[SamplerSpec]) -> tuple:
    """``specs`` on the trained digits model from one prior draw of as many samples as the training split has
    images, scored against the test split with the shipped digits network. Returns the `Comparison` and its report
    (JSON-safe: the floor, one row per run)."""
    config = trainer.config
    transform = config.data.transform()
    test, train = (image_dataset("digits", split) for split in ("test", "train"))
    metric = image_metric(config.data, cache_dir=trainer.out_dir / "reference_features")
    with torch.no_grad():
        comparison = compare_samplers(
            trainer.sde,
            trainer.score_fn,
            transform.to_model(test.x.float() + 0.5),
            lineup=specs,
            n=len(train),
            floor_reference=transform.to_model(train.x.float() + 0.5),
            postprocess=lambda x: transform.to_model(transform.from_model(x) + 0.5),
            image_metric=metric,
            progress=True,
        )
    report = {
        "step": trainer.step,
        "n": comparison.n,
        "feature_network": {"name": metric.network.name, "label": metric.label, **metric.network.metadata},
        "floor": comparison.image_floor.to_dict(),
        "runs": [run.to_dict() for run in comparison.runs],
    }
    return comparison, report


if __name__ == "__main__":
    main()
