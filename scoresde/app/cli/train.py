"""``scoresde train``: train a preset or config into a run folder, or resume one."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    Outcome,
    UserError,
    command,
    count,
    note,
    prepare_out,
    remove_if_empty,
)


def _train_config(args: argparse.Namespace, out: Path):
    """The run config: a preset or file, or with ``--resume`` and neither, the run's own (see `_resumed_config`)."""
    from ...config.io import load_config
    from ...config.presets import preset
    from ...config.schema import override

    if args.config and args.preset:
        raise UserError("pass either --preset or --config, not both")
    if args.config:
        config = load_config(args.config)
    elif args.resume and not args.preset:
        config = _resumed_config(out)
    else:
        config = preset(args.preset or "toy-vp")
    if args.resume and (args.config or args.preset) and not _has_run(out):
        named = f"--preset {args.preset}" if args.preset else f"--config {args.config}"
        note("train", f"--resume: {out} holds no run yet: starting the {named} run there at step 0")
    sets = list(args.set or [])
    if args.data_dir:
        sets.append(f"data.data_dir={args.data_dir}")
    if args.steps is not None:
        sets.append(f"train.steps={args.steps}")
    if args.seed is not None:
        sets.append(f"train.seed={args.seed}")
    return override(config, *sets)


def _has_run(out: Path) -> bool:
    """Whether ``out`` holds a run's checkpoint or config (what ``--resume`` continues)."""
    from ...training.checkpoint import CHECKPOINT

    return (out / CHECKPOINT).exists() or (out / "config.yaml").exists()


def _resumed_config(out: Path):
    """The config of the run in ``out``: its ``config.yaml``; the config its checkpoint carries when that file is
    missing; ``config.yaml`` alone for a run killed before its first checkpoint (it starts again at step 0).
    Nothing to resume (a missing or empty folder, or one with only other files) is refused: without ``--preset``
    or ``--config`` there is no run to start, and a mistyped ``--out`` must not start the default one."""
    from ...config.io import load_config
    from ...training.checkpoint import CHECKPOINT, load_checkpoint

    checkpoint, saved = out / CHECKPOINT, out / "config.yaml"
    if checkpoint.exists() and not checkpoint.is_file():
        raise UserError(f"--resume: {checkpoint} is not a file (a folder?); move it away, or --force starts afresh")
    if checkpoint.is_file():
        if saved.is_file():
            return load_config(saved)
        config = load_checkpoint(checkpoint)["config"]
        note("train", f"{saved} is missing: resuming with the config the checkpoint carries")
        return config
    if saved.is_file():
        config = load_config(saved)
        note(
            "train",
            f"{out} holds no checkpoint yet (the run stopped before its first): starting at step 0 with its config",
        )
        return config
    where = "does not exist" if not out.exists() else "is not a folder" if not out.is_dir() else "holds no run"
    raise UserError(
        f"--resume: {out} {where} (looked for {CHECKPOINT} and config.yaml there); check --out, or pass --preset or "
        f"--config to start a run"
    )


def _features(device: str):
    """The feature network of a config's feature-matching term (``train.feature_weight``; None when off): the data
    set's shipped one (`scoresde.evaluation.features.default_feature_network`)."""
    from ...evaluation.features import default_feature_network, feature_network

    return lambda config: (
        feature_network(default_feature_network(config.data.name), device) if config.train.feature_weight else None
    )


def _pictures(summary: dict, folder: Path, device: str) -> dict:
    """After an autoencoder run (its kind measured a scaling factor): its pictures on 500 test images,
    ``reconstructions.png`` and ``latent_space.png`` in the run folder
    (`scoresde.app.image_figures.autoencoder_figures`)."""
    if "scaling_factor" not in summary:
        return summary
    from ...datasets import image_dataset
    from ...training.stages import load_autoencoder, run_images
    from ..image_figures import autoencoder_figures

    codec, config = load_autoencoder(folder, device=device)
    data = config.data
    labels = image_dataset(data.name, "test", data.data_dir, data.split_seed).labels[:500]
    figures = autoencoder_figures(codec, run_images(data, "test")[:500].to(device), labels, data.transform())
    written = {}
    for name, fig in figures.items():
        fig.savefig(folder / f"{name}.png", dpi=100)
        written[name] = str(folder / f"{name}.png")
    return {**summary, "figures": written}


def _stage_configs(args: argparse.Namespace) -> dict:
    """The other stages a preset's run names (`scoresde.config.presets.preset_stages`: a latent model's autoencoder,
    a super-resolution stage's base) as ``{field: config}``, with ``--steps``, ``--seed`` and ``--data-dir``."""
    from ...config.presets import preset, preset_stages
    from ...config.schema import override

    sets = [f"data.data_dir={args.data_dir}"] if args.data_dir else []
    sets += [f"train.steps={args.steps}"] if args.steps is not None else []
    sets += [f"train.seed={args.seed}"] if args.seed is not None else []
    stages = preset_stages(args.preset) if args.preset else {}
    for field, name in stages.items():
        note("train", f"stage {field}: preset {name} (trained first, inside --out)")
    return {field: override(preset(name), *sets) for field, name in stages.items()}


def cmd_train(args: argparse.Namespace) -> dict:
    """Train a preset or config file (with ``--set`` overrides) into ``--out``; ``--resume`` continues a run there.
    Nothing in ``--out`` is replaced without ``--force``, which replaces the run files only."""
    from ...evaluation.during_training import TrainingEvaluator
    from ...training.run_folder import RUN_FILES, run_files
    from ...training.trainer import TrainingDiverged
    from ...training.workflows import train_run
    from ..result_figures import plot_training_curve

    out = Path(args.out)
    config = _train_config(args, out)
    present = run_files(out) if out.is_dir() else []
    if present and not (args.resume or args.force):
        raise UserError(
            f"{present[0]} already exists; pass --resume to continue the run in {out}, --force to replace its run "
            f"files ({', '.join(RUN_FILES)}; nothing else is touched), or choose another --out"
        )
    created = not out.exists()
    prepare_out(str(out), True, [])
    try:
        run = train_run(config, out, stages=_stage_configs(args), features=_features(args.device),
                        evaluator=TrainingEvaluator, device=args.device, progress=not args.json, resume=args.resume,
                        overwrite=args.force)  # fmt: skip
    except (FileNotFoundError, TrainingDiverged) as exc:
        remove_if_empty(out, created)
        raise UserError(str(exc)) from None
    except BaseException:
        remove_if_empty(out, created)
        raise
    if not run.is_main:
        return {}
    from ...config.presets import preset_stages

    named = preset_stages(args.preset) if args.preset else {}
    stages = {
        f: {**_pictures(done, Path(done["out"]), args.device), "preset": named[f]} for f, done in run.stages.items()
    }
    summary = {**run.result.to_dict(), "out": str(out), "config": config.to_dict(), "stages": stages}
    summary.update(_pictures(run.after, out, args.device))
    if (out / "metrics.csv").is_file():
        fig = plot_training_curve(out / "metrics.csv")
        fig.savefig(out / "loss.png", dpi=100)
        summary["loss_plot"] = str(out / "loss.png")
    return Outcome(summary, run.result.exit_status) if run.result.interrupted else summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``scoresde train``: its sub-parser and options."""
    train = command(
        sub,
        "train",
        cmd_train,
        "train a score model from a preset or config file",
        "scoresde train --preset toy-vp --out runs/toy --set train.steps=2000\n"
        "  scoresde train --out runs/toy --resume --steps 4000\n"
        "  torchrun --nproc_per_node=2 -m scoresde train --preset digits-ddpm --out runs/digits",
        seed=None,
    )
    train.add_argument("--preset", help="named preset (scoresde list shows them; default toy-vp)")
    train.add_argument("--config", help="YAML or TOML config file")
    train.add_argument(
        "--set", action="append", metavar="SECTION.FIELD=VALUE", help="override one config field (repeatable)"
    )
    train.add_argument(
        "--out", required=True, help="run folder: checkpoint.safetensors, config.yaml, metrics.csv, loss.png"
    )
    train.add_argument("--steps", type=count, help="train.steps (the total, counted from step 0)")
    train.add_argument("--data-dir", help="folder with MNIST / CIFAR-10 files (data.data_dir)")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out (its config.yaml unless --preset/--config)"
    )
