"""The ``scoresde`` command line. Thin: parse, call the library, write files.

User errors (unknown names, bad values, unwritable paths) print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._checks import check_in_registry
from .datasets import toy_dataset, toy_datasets
from .sde import VESDE, VPSDE, SubVPSDE

__all__ = ["main"]

SDES = {"vp": VPSDE, "vp-cosine": lambda: VPSDE(schedule="cosine"), "subvp": SubVPSDE, "ve": VESDE}


class UserError(Exception):
    """An error in what the user asked for: reported in one line, exit status 2."""


def _prepare_out(out: str, force: bool, names: list[str]) -> Path:
    folder = Path(out)
    clash = [name for name in names if (folder / name).exists()]
    if clash and not force:
        raise UserError(f"{folder / clash[0]} already exists; pass --force to overwrite or choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {folder}: {exc.strerror}") from None
    return folder


def cmd_toys(args: argparse.Namespace) -> dict:
    """Sample the 2D toys and draw the forward process of the ``gmm`` toy; write PNGs and a JSON summary."""
    from .viz import plot_forward_process, plot_toy_datasets

    names = args.names or toy_datasets()
    for name in names:
        toy_dataset(name)  # unknown names fail here, before anything is written
    if args.sde not in SDES:
        raise UserError(f"unknown sde {args.sde!r}; valid names are: {', '.join(SDES)}")
    folder = _prepare_out(args.out, args.force, ["toys.png", "forward.png", "toys.json"])
    fig = plot_toy_datasets(names, n=args.n, seed=args.seed)
    fig.savefig(folder / "toys.png", dpi=110)
    sde = SDES[args.sde]()
    fig = plot_forward_process(sde, toy_dataset("gmm").mixture, seed=args.seed)
    fig.savefig(folder / "forward.png", dpi=110)
    summary = {
        "toys": {n: {"entropy_nats": toy_dataset(n).entropy() if toy_dataset(n).has_density else None} for n in names},
        "sde": repr(sde),
        "files": [str(folder / "toys.png"), str(folder / "forward.png")],
    }
    (folder / "toys.json").write_text(json.dumps(summary, indent=2))
    return summary


def cmd_train(args: argparse.Namespace) -> dict:
    """Train a preset or config file (with ``--set`` overrides) into ``--out``; resumes a checkpoint found there."""
    from .config import load_config, override, preset
    from .training import Trainer, TrainingDiverged

    if args.config and args.preset:
        raise UserError("pass either --preset or --config, not both")
    config = load_config(args.config) if args.config else preset(args.preset or "toy-vp")
    sets = list(args.set or [])
    if args.data_dir:
        sets.append(f"data.data_dir={args.data_dir}")
    if args.steps is not None:
        sets.append(f"train.steps={args.steps}")
    config = override(config, *sets)
    try:
        trainer = Trainer(config, args.out, device=args.device, progress=not args.json, resume=not args.no_resume)
        result = trainer.train()
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    except TrainingDiverged as exc:
        raise UserError(str(exc)) from None
    summary = {**result.to_dict(), "out": str(args.out), "config": config.to_dict()}
    if result.interrupted:
        summary["exit_status"] = 130
    return summary


def _parse_options(pairs: list[str] | None) -> dict:
    """``key=value`` sampler options, values read as YAML scalars (``order=3``, ``schedule=log_snr``)."""
    import yaml

    options = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--option {pair!r} must look like name=value (e.g. --option order=3)")
        value = yaml.safe_load(raw)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        options[key.strip()] = value
    return options


def cmd_sample(args: argparse.Namespace) -> dict:
    """Sample a trained checkpoint; write the samples (.npz) and a picture next to them (.png)."""
    import numpy as np
    import torch

    from .samplers import sample, samplers
    from .training import load_score_model
    from .viz import plot_samples

    check_in_registry("sampler", args.sampler, samplers())  # before anything is written
    out = Path(args.out)
    if out.suffix != ".npz":
        raise UserError(f"--out must name a .npz file, got {out}")
    picture = out.with_suffix(".png")
    _prepare_out(str(out.parent), args.force, [out.name, picture.name])
    if args.n < 1:
        raise UserError(f"-n must be >= 1, got {args.n}")
    model, config, step = load_score_model(args.checkpoint, device=args.device)
    net = model.net
    shape = (net.dim,) if hasattr(net, "dim") else (net.in_channels, net.image_size, net.image_size)
    options = _parse_options(args.option)
    with torch.no_grad():
        result = sample(model.sde, model, (args.n, *shape), args.sampler, steps=args.steps, device=args.device,
                        generator=torch.Generator(device=args.device).manual_seed(args.seed), **options)
    x = result.x.cpu()
    transform = config.data.transform()
    levels = transform.levels if transform else None
    arrays = {"x_model": x.numpy(), "x": transform.from_model(x).numpy().astype(np.uint8) if transform else x.numpy()}
    np.savez(out, **arrays)
    extent = getattr(toy_dataset(config.data.name), "extent", None) if config.data.kind == "toy" else None
    fig = plot_samples(torch.as_tensor(arrays["x"]).float(), f"{args.sampler}: {args.n} samples, {result.nfe} NFE (step {step})",
                       levels=levels, extent=extent)
    fig.savefig(picture, dpi=110)
    return {"samples": str(out), "picture": str(picture), "nfe": result.nfe, "sampler": args.sampler, "n": args.n,
            "checkpoint_step": step, "settings": result.settings}


def _load_points(source: str, n: int, seed: int, config) -> tuple:
    """Evaluation data: a ``.npz`` file (array ``x``), an image set's test split, or held-out draws of a toy."""
    import numpy as np
    import torch

    from .datasets import image_dataset

    if source.endswith(".npz"):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"--data file {path} does not exist")
        with np.load(path) as data:
            if "x" not in data:
                raise UserError(f"--data file {path} has no array 'x' (found: {', '.join(data.files)})")
            return torch.as_tensor(data["x"])[:n], None
    if config.data.kind == "image":
        test = image_dataset(source, "test", config.data.data_dir, config.data.split_seed)
        return test.x[:n], None
    toy = toy_dataset(source)
    x = toy.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x, (-toy.log_prob(x) if toy.has_density else None)


def cmd_likelihood(args: argparse.Namespace) -> dict:
    """Exact NLL (PF-ODE) and bits/dim of held-out data under a checkpoint, with the ELBO beside it; JSON to --out."""
    import math

    import torch

    from .likelihood import bits_per_dim, elbo, log_likelihood
    from .training import load_score_model

    out = Path(args.out)
    if out.suffix != ".json":
        raise UserError(f"--out must name a .json file, got {out}")
    _prepare_out(str(out.parent), args.force, [out.name])
    if args.n < 2:
        raise UserError(f"-n must be >= 2 (a standard error needs two points), got {args.n}")
    model, config, step = load_score_model(args.checkpoint, device=args.device)
    x, true_nll = _load_points(args.data or config.data.name, args.n, args.seed, config)
    generator = torch.Generator().manual_seed(args.seed)
    summary = {"checkpoint_step": step, "n": int(x.shape[0]), "data": args.data or config.data.name}
    transform = config.data.transform()
    if transform is not None:
        exact = bits_per_dim(model.sde, model, x.float(), transform, divergence="hutchinson", generator=generator, dtype=torch.float32,
                             batch_size=128, progress=not args.json)
        bound = bits_per_dim(model.sde, model, x.float(), transform, estimator="elbo", divergence="hutchinson", n_times=16,
                             generator=generator, dtype=torch.float32)
        summary.update({"bits_per_dim": exact.bpd, "bits_per_dim_standard_error": exact.bpd_standard_error,
                        "nll_nats": exact.nats_per_sample, "nfe": exact.nfe, "elbo_bits_per_dim": bound.bpd,
                        "elbo_bits_per_dim_standard_error": bound.bpd_standard_error, "settings": exact.settings})
    else:
        model = model.double()
        x = x.to(torch.float64)
        result = log_likelihood(model.sde, model, x, progress=not args.json, batch_size=1000)
        bound = elbo(model.sde, model, x, generator=generator)
        dim, n = x[0].numel(), x.shape[0]
        summary.update({"nll_nats": float(result.nll.mean()), "nll_standard_error": float(result.nll.std()) / math.sqrt(n),
                        "bits_per_dim": float(result.nll.mean()) / (dim * math.log(2)), "nfe": result.nfe,
                        "elbo_nats": float(bound.bound.mean()), "elbo_standard_error": float(bound.bound.std()) / math.sqrt(n),
                        "settings": result.settings})
        if true_nll is not None:
            gap = result.nll - true_nll
            summary.update({"true_nll_nats": float(true_nll.mean()), "nll_gap_nats": float(gap.mean()),
                            "nll_gap_standard_error": float(gap.std()) / math.sqrt(n)})
    out.write_text(json.dumps(summary, indent=2))
    return {**summary, "out": str(out)}


def cmd_list(args: argparse.Namespace) -> dict:
    """List the registered names."""
    from .config import presets
    from .datasets import image_datasets
    from .models import models
    from .samplers import GRIDS, correctors, predictors, samplers

    return {
        "sdes": list(SDES),
        "samplers": samplers(),
        "predictors": predictors(),
        "correctors": correctors(),
        "time_grids": list(GRIDS),
        "toy_datasets": toy_datasets(),
        "image_datasets": image_datasets(),
        "models": models(),
        "presets": presets(),
    }


def _checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """The options every command on a trained checkpoint takes."""
    parser.add_argument("--checkpoint", required=True, help="run folder (or checkpoint file) written by scoresde train")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoresde", description="Score-based generative modelling with SDEs.")
    sub = parser.add_subparsers(dest="command", required=True)
    toys = sub.add_parser(
        "toys",
        help="sample the 2D toy data sets and draw the forward process",
        description="Sample the 2D toys, draw the forward SDE on the gmm toy. Example: scoresde toys --out out/",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    toys.add_argument("names", nargs="*", help="toy data sets to draw (default: all)")
    toys.add_argument("--out", default="scoresde-out", help="output folder")
    toys.add_argument("-n", type=int, default=2000, help="samples per data set")
    toys.add_argument("--sde", default="vp", help=f"forward SDE: {', '.join(SDES)}")
    toys.add_argument("--seed", type=int, default=0, help="random seed")
    toys.add_argument("--force", action="store_true", help="overwrite existing files")
    toys.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    toys.set_defaults(run=cmd_toys)
    train = sub.add_parser(
        "train",
        help="train a score model from a preset or config file",
        description="Train a score model; an existing checkpoint in --out is resumed. "
        "Example: scoresde train --preset toy-vp --out runs/toy --set train.steps=2000. "
        "Several processes: torchrun --nproc_per_node=2 -m scoresde train ...",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument("--preset", help="named preset (scoresde list shows them; default toy-vp)")
    train.add_argument("--config", help="YAML or TOML config file")
    train.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override one config field (repeatable)")
    train.add_argument("--out", required=True, help="run folder: checkpoint.safetensors, config.yaml, metrics.csv")
    train.add_argument("--steps", type=int, help="train.steps")
    train.add_argument("--data-dir", help="folder with MNIST / CIFAR-10 files (data.data_dir)")
    train.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    train.add_argument("--no-resume", action="store_true", help="start afresh even if --out holds a checkpoint")
    train.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (no progress bar)")
    train.set_defaults(run=cmd_train)
    smp = sub.add_parser(
        "sample",
        help="sample a trained checkpoint",
        description="Draw samples from a checkpoint's EMA model; writes FILE.npz and FILE.png. "
        "Example: scoresde sample --checkpoint runs/toy --sampler dpm_solver --steps 20 -n 2000 --out runs/toy/samples.npz",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _checkpoint_options(smp)
    smp.add_argument("--sampler", default="dpm_solver", help="a sampler name (scoresde list)")
    smp.add_argument("--steps", type=int, help="steps of the sampler's grid (its own default if omitted)")
    smp.add_argument("--option", action="append", metavar="NAME=VALUE", help="sampler option, e.g. order=3 (repeatable)")
    smp.add_argument("-n", type=int, default=2000, help="number of samples")
    smp.add_argument("--out", required=True, help="samples file (.npz); the picture goes next to it (.png)")
    smp.set_defaults(run=cmd_sample)
    lik = sub.add_parser(
        "likelihood",
        help="NLL and bits/dim of held-out data under a checkpoint, with the ELBO beside it",
        description="Exact NLL through the probability-flow ODE (and the ELBO) of held-out data: a toy's fresh draws "
        "(with the true NLL where the toy has a density), an image set's test split, or an .npz file with array x. "
        "Example: scoresde likelihood --checkpoint runs/toy -n 2000 --out runs/toy/likelihood.json",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _checkpoint_options(lik)
    lik.add_argument("--data", help="data set name or .npz file (default: the run's data set)")
    lik.add_argument("-n", type=int, default=1000, help="number of points (images: the first n of the test split)")
    lik.add_argument("--out", required=True, help="result file (.json)")
    lik.set_defaults(run=cmd_likelihood)
    lst = sub.add_parser("list", help="list SDEs, samplers and data sets", description="Example: scoresde list --json")
    lst.add_argument("--json", action="store_true", help="print as JSON")
    lst.set_defaults(run=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "n", 1) < 1:
            raise UserError(f"-n must be >= 1, got {args.n}")
        result = args.run(args)
    except (UserError, ValueError, TypeError) as exc:
        print(f"scoresde {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return int(result.get("exit_status", 0))
