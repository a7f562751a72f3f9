"""Guidance and inpainting on the 8x8 digits.

1. ``digits-ddpm-cond``: the digits U-Net with a label embedding, trained with 10% label dropout (its preset's
   4500 steps; resumed if the run folder holds a checkpoint).
2. An independent digits classifier (scikit-learn SVC on the clean training split; its test accuracy is reported),
   and the shipped FD-digits feature network (``scoresde.evaluation.features``) for the image quality of every sample
   set:
   FD-digits and KID against the test split, beside the training split's own (the floor).
3. Classifier-free guidance: for each weight w, 50 samples of every class (DPM-Solver++ 3M, 20 steps), quantised to
   the 17 levels; accuracy = the share the classifier assigns to the requested class. Plot: accuracy against w.
4. Classifier guidance: a noise-conditional classifier trained on perturbed digits guides the unconditional
   ``digits-ddpm`` model (benchmarks/training.py's run), accuracy against its scale.
5. Inpainting: test digits with the left half missing, completed by the unconditional model (PC, 500 steps);
   a grid (original, masked, completed) and the share of completions the classifier still reads as the original digit.

Usage: python benchmarks/guidance.py [--out benchmarks/results] [--quick] [--threads 2]
Writes guidance.json, guidance.md, guidance_accuracy.png, guidance_samples.png, inpainting.png. Guidance trades
diversity for class fidelity: accuracy rises with the weight while FD-digits and recall show what it costs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import benchmark_parser, setup_run  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

from scoresde import image_dataset, sample  # noqa: E402
from scoresde.app.image_figures import plot_inpainting, plot_samples  # noqa: E402
from scoresde.app.result_figures import plot_accuracy_vs_guidance  # noqa: E402
from scoresde.config.presets import preset  # noqa: E402
from scoresde.config.schema import override  # noqa: E402
from scoresde.evaluation.features import feature_network, image_features, image_quality, reference_features  # noqa: E402
from scoresde.models import NoiseConditionalClassifier  # noqa: E402
from scoresde.samplers import ClassifierFreeGuidance, ClassifierGuidance, inpaint, named_mask  # noqa: E402
from scoresde.training.classifier import train_classifier  # noqa: E402
from scoresde.training.runs import load_score_model  # noqa: E402
from scoresde.training.trainer import Trainer  # noqa: E402

CFG_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)
CG_SCALES = (0.0, 1.0, 2.0, 4.0, 8.0)


def train_conditional(out: Path, quick: bool) -> tuple:
    config = override(preset("digits-ddpm-cond"), *(["train.steps=60"] if quick else []))
    trainer = Trainer(config, out / "training_runs" / ("digits-ddpm-cond" + ("-quick" if quick else "")), progress=True)
    start = time.perf_counter()
    result = trainer.train()
    if result.interrupted:
        raise SystemExit("interrupted: the last checkpoint is saved")
    return trainer, {"steps": result.step, "seconds": time.perf_counter() - start}


def digits_classifier() -> tuple[SVC, float]:
    train, test = image_dataset("digits", "train"), image_dataset("digits", "test")
    clf = SVC(gamma=0.001, C=10.0).fit(train.x.reshape(len(train), -1).numpy(), train.labels.numpy())
    return clf, float((clf.predict(test.x.reshape(len(test), -1).numpy()) == test.labels.numpy()).mean())


class Quality:
    """FD-digits, KID, precision and recall of digit images (integer levels) against the test split."""

    def __init__(self) -> None:
        self.network = feature_network("digits")
        self.reference = reference_features(self.network, "digits", "test")

    def __call__(self, levels: torch.Tensor) -> dict:
        features = image_features(self.network, levels.float() / 16)
        return image_quality(features, self.reference, self.network).to_dict()


def guided_accuracy(sde, score_for, clf, transform, per_class: int, seed: int) -> tuple[float, torch.Tensor]:
    """Share of samples the classifier reads as their requested class; the samples (levels) in class order."""
    labels = torch.arange(10).repeat_interleave(per_class)
    with torch.no_grad():
        x = sample(
            sde,
            score_for(labels),
            (len(labels), 1, 8, 8),
            "dpm_solver",
            steps=20,
            order=3,
            generator=torch.Generator().manual_seed(seed),
        ).x
    levels = transform.from_model(x)
    predicted = clf.predict(levels.reshape(len(levels), -1).numpy())
    return float((predicted == labels.numpy()).mean()), levels


def main() -> None:
    parser = benchmark_parser(__doc__, quick="a few training steps, few samples: a smoke run")
    args = parser.parse_args()
    out = setup_run(args)
    per_class = 5 if args.quick else 50
    report: dict = {"quick": args.quick}

    clf, clf_accuracy = digits_classifier()
    report["classifier_test_accuracy"] = clf_accuracy
    print(f"digits classifier (SVC) test accuracy: {clf_accuracy:.3f}")

    quality = Quality()
    report["quality_floor"] = quality(image_dataset("digits", "train").x)
    trainer, report["conditional_training"] = train_conditional(out, args.quick)
    model, sde, transform = trainer.score_fn, trainer.sde, trainer.config.data.transform()
    cfg, cfg_quality = {}, {}
    grids = {}
    for w in CFG_WEIGHTS:
        accuracy, levels = guided_accuracy(
            sde, lambda y, w=w: ClassifierFreeGuidance(model, y, w), clf, transform, per_class, seed=1
        )
        cfg[w] = accuracy
        grids[w] = levels
        cfg_quality[w] = quality(levels)
        print(f"classifier-free guidance w = {w:g}: {accuracy:.3f} recognised as the requested class, "
              f"FD-digits {cfg_quality[w]['frechet_distance']:.2f}")  # fmt: skip
    best = max(cfg, key=cfg.get)
    report["classifier_free"] = {
        "weights": list(CFG_WEIGHTS),
        "accuracy": [cfg[w] for w in CFG_WEIGHTS],
        "quality": [cfg_quality[w] for w in CFG_WEIGHTS],
        "best_w": best,
        "best_accuracy": cfg[best],
        "samples_per_class": per_class,
        "sampler": "dpm_solver 3M, 20 steps",
    }

    # classifier guidance of the unconditional model, if benchmarks/training.py trained it
    run = out / "training_runs" / "digits-ddpm"
    if (run / "checkpoint.safetensors").is_file():
        unconditional, config, _ = load_score_model(run)
        train = image_dataset("digits", "train")
        noisy = NoiseConditionalClassifier((1, 8, 8), 10, width=32, depth=2, groups=8)
        losses = train_classifier(
            noisy,
            unconditional.sde,
            train.x,
            train.labels,
            steps=60 if args.quick else 3000,
            batch_size=128,
            transform=config.data.transform(),
            progress=True,
        )
        cg, cg_quality = {}, {}
        for scale in CG_SCALES:
            cg[scale], levels = guided_accuracy(
                unconditional.sde,
                lambda y, s=scale: ClassifierGuidance(unconditional, noisy, y, s),
                clf,
                config.data.transform(),
                per_class,
                seed=2,
            )
            cg_quality[scale] = quality(levels)
            print(f"classifier guidance scale = {scale:g}: {cg[scale]:.3f}")
        report["classifier_guidance"] = {
            "scales": list(CG_SCALES),
            "accuracy": [cg[s] for s in CG_SCALES],
            "quality": [cg_quality[s] for s in CG_SCALES],
            "noisy_classifier_final_loss": float(np.mean(losses[-100:])),
        }
        # inpainting with the unconditional model: the left half missing
        test = image_dataset("digits", "test")
        n = 10 if args.quick else 40
        x = config.data.transform().to_model(test.x[:n].float() + 0.5)
        known = named_mask("left-half", (1, 8, 8))
        result = inpaint(
            unconditional.sde,
            unconditional,
            x,
            known,
            method="pc",
            steps=50 if args.quick else 500,
            generator=torch.Generator().manual_seed(3),
            progress=True,
        )
        completed = config.data.transform().from_model(result.x)
        kept = float((clf.predict(completed.reshape(n, -1).numpy()) == test.labels[:n].numpy()).mean())
        report["inpainting"] = {
            "n": n,
            "mask": "left-half",
            "method": "pc",
            "steps": result.settings["steps"],
            "nfe": result.nfe,
            "classifier_reads_original_digit": kept,
        }
        fig = plot_inpainting(
            test.x[:n].float(),
            known,
            completed,
            levels=17,
            n=20,
            title=f"Digits with the left half missing, completed (PC, {result.nfe} NFE); "
            f"{100 * kept:.0f}% read as the original digit",
        )
        fig.savefig(out / "inpainting.png", dpi=120)
        plt.close(fig)

    fig = plot_accuracy_vs_guidance(
        CFG_WEIGHTS,
        [cfg[w] for w in CFG_WEIGHTS],
        chance=0.1,
        title=f"Guidance on the digits ({per_class} samples per class)",
    )
    if "classifier_guidance" in report:
        fig.axes[0].plot(
            CG_SCALES,
            [100 * a for a in report["classifier_guidance"]["accuracy"]],
            marker="s",
            label="classifier guidance (scale)",
        )
        fig.axes[0].lines[0].set_label("classifier-free guidance (w)")
        fig.axes[0].legend(fontsize=8)
        fig.axes[0].set_xlabel("guidance weight w / classifier scale")
    fig.savefig(out / "guidance_accuracy.png", dpi=120)
    plt.close(fig)
    order = torch.cat([torch.arange(c * per_class, c * per_class + min(per_class, 10)) for c in range(10)])
    fig = plot_samples(
        grids[best][order].float(), f"classifier-free guidance w = {best:g}: one row per class", levels=17
    )
    fig.savefig(out / "guidance_samples.png", dpi=120)
    plt.close(fig)

    (out / "guidance.json").write_text(json.dumps(report, indent=2))

    def quality_cells(q: dict) -> str:
        return f"{q['frechet_distance']:.2f} | {q['kid']:.3f} ± {q['kid_standard_error']:.3f} | {q['recall']:.3f}"

    head = "| accuracy (requested class recognised) | FD-digits | KID | recall |"
    lines = [f"| w {head}", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {w:g} | {100 * cfg[w]:.1f} % | {quality_cells(cfg_quality[w])} |" for w in CFG_WEIGHTS]
    if "classifier_guidance" in report:
        lines += ["", f"| classifier scale {head}", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {s:g} | {100 * cg[s]:.1f} % | {quality_cells(cg_quality[s])} |" for s in CG_SCALES]
    lines += ["", f"Training split against the test split (the floor): {quality_cells(report['quality_floor'])}."]
    if "inpainting" in report:
        lines += [
            "",
            f"Inpainting (left half missing, PC, {report['inpainting']['nfe']} NFE): "
            f"{100 * report['inpainting']['classifier_reads_original_digit']:.0f} % of {report['inpainting']['n']} "
            "completions "
            f"read as the original digit.",
        ]
    lines += ["", f"Digits classifier (SVC) test accuracy: {100 * clf_accuracy:.1f} %."]
    (out / "guidance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
