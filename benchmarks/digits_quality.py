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

import matplotlib

matplotlib.use("Agg")
from common import (  # noqa: E402
    QUICK_TRAINING,
    benchmark_parser,
    compare_on_digits,
    digits_markdown,
    plot_digits_quality,
    setup_run,
    write_report,
)

from scoresde.config import override  # noqa: E402
from scoresde.config.presets import preset  # noqa: E402
from scoresde.evaluation.comparison import SamplerSpec  # noqa: E402
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


def main() -> None:
    parser = benchmark_parser(__doc__, quick="a 20-step model, two samplers")
    args = parser.parse_args()
    out = setup_run(args)
    config = override(preset("digits-ddpm"), *QUICK_TRAINING) if args.quick else preset("digits-ddpm")
    folder = out / "training_runs" / ("digits-ddpm-quick" if args.quick else "digits-ddpm")
    trainer = Trainer(config, folder, progress=True)
    trainer.train()
    _, report = compare_on_digits(trainer, lineup()[:: 7 if args.quick else 1])
    write_report(out, "digits_quality", report, digits_markdown(report), plot_digits_quality)


if __name__ == "__main__":
    main()
