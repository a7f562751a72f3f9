"""The ``scoresde`` command line. Thin: parse, call the library, write files.

User errors (unknown names, bad values, unwritable paths) print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .._checks import check_in_registry
from ..config.schema import DISTILLATION_METHODS
from ..datasets import toy_dataset, toy_datasets
from ..processes.sde import create_sde, sde_names
from ..processes.seam import spec_of
from .report import json_text

__all__ = ["main"]


class UserError(Exception):
    """An error in what the user asked for: reported in one line, exit status 2."""


def _prepare_out(out: str, force: bool, names: list[str]) -> Path:
    folder = Path(out)
    clash = [name for name in names if (folder / name).exists()]
    if clash and not force:
        raise UserError(f"{folder / clash[0]} already exists; pass --force to overwrite or choose another --out")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"output folder {folder} is a file; choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"output folder {folder} is not writable; choose another --out")
    return folder


def cmd_toys(args: argparse.Namespace) -> dict:
    """Sample the 2D toys and draw the forward process of the ``gmm`` toy; write PNGs and a JSON summary."""
    from .figures import plot_forward_process, plot_toy_datasets

    names = args.names or toy_datasets()
    for name in names:
        toy_dataset(name)  # unknown names fail here, before anything is written
    if args.sde not in sde_names():
        raise UserError(f"unknown sde {args.sde!r}; valid names are: {', '.join(sde_names())}")
    folder = _prepare_out(args.out, args.force, ["toys.png", "forward.png", "toys.json"])
    fig = plot_toy_datasets(names, n=args.n, seed=args.seed)
    fig.savefig(folder / "toys.png", dpi=110)
    sde = create_sde(args.sde)
    fig = plot_forward_process(sde, toy_dataset("gmm").mixture, seed=args.seed)
    fig.savefig(folder / "forward.png", dpi=110)
    summary = {
        "toys": {n: {"entropy_nats": toy_dataset(n).entropy() if toy_dataset(n).has_density else None} for n in names},
        "sde": repr(sde),
        "files": [str(folder / "toys.png"), str(folder / "forward.png")],
    }
    (folder / "toys.json").write_text(json_text(summary))
    return summary


def _note(command: str, message: str) -> None:
    """One line to stderr that tells the user what the command decided for them."""
    print(f"scoresde {command}: {message}", file=sys.stderr)


def _train_config(args: argparse.Namespace, out: Path):
    """The run config: a preset or file, or with ``--resume`` and neither, the run's own (see `_resumed_config`)."""
    from ..config.schema import load_config, override, preset

    if args.config and args.preset:
        raise UserError("pass either --preset or --config, not both")
    if args.config:
        config = load_config(args.config)
    elif args.resume and not args.preset:
        config = _resumed_config(out) or preset("toy-vp")
    else:
        config = preset(args.preset or "toy-vp")
    sets = list(args.set or [])
    if args.data_dir:
        sets.append(f"data.data_dir={args.data_dir}")
    if args.steps is not None:
        sets.append(f"train.steps={args.steps}")
    if args.seed is not None:
        sets.append(f"train.seed={args.seed}")
    return override(config, *sets)


def _resumed_config(out: Path):
    """The config of the run in ``out``: its ``config.yaml``; the config its checkpoint carries when that file is
    missing; ``config.yaml`` alone for a run killed before its first checkpoint (it starts again at step 0); None
    (the preset's, from step 0) where no run wrote anything yet, so that a requeued ``--resume`` always works."""
    from ..config.schema import load_config
    from ..training.checkpoint import CHECKPOINT, load_checkpoint
    from ..training.run_folder import run_files

    checkpoint, saved = out / CHECKPOINT, out / "config.yaml"
    if checkpoint.is_file():
        if saved.is_file():
            return load_config(saved)
        config = load_checkpoint(checkpoint)["config"]
        _note("train", f"{saved} is missing: resuming with the config the checkpoint carries")
        return config
    if saved.is_file():
        config = load_config(saved)
        _note(
            "train",
            f"{out} holds no checkpoint yet (the run stopped before its first): starting at step 0 with its config",
        )
        return config
    if out.is_dir() and run_files(out):
        raise UserError(f"--resume: {out} holds no checkpoint or config.yaml to resume; --force starts afresh")
    _note("train", f"{out} holds no run yet (none started, or it stopped before writing anything): starting at step 0")
    return None


def cmd_train(args: argparse.Namespace) -> dict:
    """Train a preset or config file (with ``--set`` overrides) into ``--out``; ``--resume`` continues a run there.
    Nothing in ``--out`` is replaced without ``--force``, which replaces the run files only."""
    from ..training.run_folder import RUN_FILES, run_files
    from ..training.trainer import Trainer, TrainingDiverged
    from .figures import plot_training_curve

    out = Path(args.out)
    config = _train_config(args, out)
    present = run_files(out) if out.is_dir() else []
    if present and not (args.resume or args.force):
        raise UserError(
            f"{present[0]} already exists; pass --resume to continue the run in {out}, --force to replace its run "
            f"files ({', '.join(RUN_FILES)}; nothing else is touched), or choose another --out"
        )
    created = not out.exists()
    _prepare_out(str(out), True, [])
    try:
        trainer = Trainer(
            config, out, device=args.device, progress=not args.json, resume=args.resume, overwrite=args.force
        )
        try:
            result = trainer.train()
        finally:
            trainer.close()  # under torchrun: leave the process group before exit
    except (FileNotFoundError, TrainingDiverged) as exc:
        _remove_if_empty(out, created)
        raise UserError(str(exc)) from None
    except BaseException:
        _remove_if_empty(out, created)
        raise
    if not trainer.is_main:
        return {}
    summary = {**result.to_dict(), "out": str(out), "config": config.to_dict()}
    if (out / "metrics.csv").is_file():
        fig = plot_training_curve(out / "metrics.csv")
        fig.savefig(out / "loss.png", dpi=100)
        summary["loss_plot"] = str(out / "loss.png")
    if result.interrupted:
        summary["exit_status"] = 130
    return summary


def _remove_if_empty(folder: Path, created: bool) -> None:
    """Remove the output folder a failed command created, if nothing was written into it."""
    if created and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _parse_options(pairs: list[str] | None) -> dict:
    """``key=value`` sampler options, values read as YAML scalars (``order=3``, ``schedule=log_snr``)."""
    import yaml

    from ..config.schema import yaml_error_line

    options = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--option {pair!r} must look like name=value (e.g. --option order=3)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise UserError(f"--option {pair!r}: the value is not valid YAML ({yaml_error_line(exc)})") from None
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        options[key.strip()] = value
    return options


def _load_model(args: argparse.Namespace, data_option: str | None = None):
    """``(score model, DataConfig or None, step or None)`` of ``--checkpoint``: a run folder or checkpoint written by
    ``scoresde train``, or a diffusers model folder (`scoresde.training.interop`; its data set inferred from the image
    shape,
    None when no known data set has it; no step)."""
    from ..training.interop import InteropError, is_diffusers_folder, load_diffusers
    from ..training.runs import load_score_model

    if is_diffusers_folder(args.checkpoint):
        try:
            model, info = load_diffusers(args.checkpoint, device=args.device)
        except InteropError as exc:
            raise UserError(str(exc)) from None
        if info.data is None and data_option is not None:
            _note(args.command, f"image shape {info.image_shape} matches no known data set; {data_option} names one")
        return model, info.data, None
    model, config, step = load_score_model(args.checkpoint, device=args.device)
    if spec_of(model).output == "consistency" and args.command not in ("sample", "fit-grid"):
        raise UserError(
            f"{args.checkpoint} is a consistency model, which has no score for {args.command}; sample it with "
            f"scoresde sample --checkpoint {args.checkpoint}, or use its teacher"
        )
    args.run_config = config  # a distilled student's sampler comes from its config (cmd_sample)
    return model, config.data, step


def _student_sampling(args: argparse.Namespace, options: dict) -> int | None:
    """A distilled student samples the way it was distilled (`scoresde.training.distillation.student_sampling`): fills
    ``args.sampler`` and ``options`` and returns the steps; any other run keeps ``--sampler`` (default dpm_solver)."""
    from ..training.distill import student_sampling

    config = getattr(args, "run_config", None)
    if config is None or config.distill.method is None:
        args.sampler = args.sampler or "dpm_solver"
        return args.steps
    plan = student_sampling(config, args.steps)
    sampler = plan.pop("sampler")
    if args.sampler not in (None, sampler):
        raise UserError(f"this {config.distill.method} student samples with --sampler {sampler}, not {args.sampler}")
    args.sampler = sampler
    steps = plan.pop("steps")
    options.update({k: v for k, v in plan.items() if k not in options})
    return steps


def _fitted_grid(args: argparse.Namespace, options: dict):
    """``--grid FILE`` (written by ``scoresde fit-grid``): its times, and its sampler and options unless given."""
    import json

    if args.grid is None:
        return None
    try:
        fit = json.loads(Path(args.grid).read_text())
        times = [float(t) for t in fit["times"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--grid {args.grid} is not a grid written by scoresde fit-grid ({exc})") from None
    args.sampler = args.sampler or fit.get("sampler")
    for key in ("order", "denoise"):
        if key in fit and key not in options and args.sampler == fit.get("sampler"):
            options[key] = fit[key]
    if args.steps not in (None, len(times) - 1):
        raise UserError(f"--grid {args.grid} has {len(times) - 1} steps; drop --steps or pass --steps {len(times) - 1}")
    args.steps = len(times) - 1
    return times


def cmd_fit_grid(args: argparse.Namespace) -> dict:
    """Fit a sampler's time grid to a run's score (`scoresde.samplers.fit_grid`) and store it with the run."""
    import json

    import torch

    from ..evaluation.comparison import held_out
    from ..samplers import fit_grid, samplers, time_grid
    from .figures import plot_grid

    options = _parse_options(args.option)
    model, data_config, step = _load_model(args)
    consistency = spec_of(model).output == "consistency"
    args.sampler = args.sampler or ("consistency" if consistency else "dpm_solver")
    check_in_registry("sampler", args.sampler, samplers())
    if consistency and args.sampler != "consistency":
        raise UserError(f"{args.checkpoint} is a consistency model: fit the grid of --sampler consistency")
    data, start = None, ("edm", "log_snr_warped") if args.sampler == "consistency" else ("log_snr_warped",)
    if args.to_data or args.sampler == "consistency":
        if data_config is None:
            raise UserError(f"--to-data needs the run's data set, and {args.checkpoint} names none")
        data = held_out(data_config, args.n, seed=args.seed + 1).floor.to(args.device)
    out = Path(args.out) if args.out else _run_folder(args.checkpoint) / "grids" / f"{args.sampler}-{args.steps}.json"
    out = _out_file(str(out), ".json", args.force, out.with_suffix(".png").name)
    fit = fit_grid(model.sde, model, args.sampler, args.steps, (1, *_sample_shape(model)), n=args.n,
                   iterations=args.iterations, generator=torch.Generator().manual_seed(args.seed),
                   dtype=torch.float32, data=data, start=start, **options)  # fmt: skip
    out.write_text(json.dumps(fit.to_dict(), indent=2))
    fig = plot_grid(
        model.sde, {**{name: time_grid(model.sde, args.steps, name) for name in start}, "fitted": fit.times}
    )
    fig.savefig(out.with_suffix(".png"), dpi=100)
    return {
        "grid": str(out),
        "picture": str(out.with_suffix(".png")),
        "times": fit.times.tolist(),
        "start_error": fit.start_error,
        "error": fit.error,
        "evaluations": fit.evaluations,
        "checkpoint_step": step,
        "use": f"scoresde sample --checkpoint {args.checkpoint} --grid {out}",
    }


def cmd_distill(args: argparse.Namespace) -> dict:
    """Distil a teacher (a run, or oracle:<toy>) into a few-step student in ``--out`` (progressive rounds in
    ``--out/rounds``); nothing in ``--out`` is replaced without ``--force``."""
    from ..config.schema import override
    from ..training.distill import distill, distillation_config, student_sampling
    from ..training.run_folder import RUN_FILES, run_files

    out = Path(args.out)
    config = override(
        distillation_config(args.teacher, args.method, steps=args.student_steps, sde=args.sde,
                            train_steps=args.train_steps),
        *(args.set or []),
    )  # fmt: skip
    present = run_files(out) if out.is_dir() else []
    if present and not (args.resume or args.force):
        raise UserError(
            f"{present[0]} already exists; pass --resume to continue the distillation in {out}, --force to replace its "
            f"run files ({', '.join(RUN_FILES)}), or choose another --out"
        )
    results = distill(config, out, teacher_steps=args.teacher_steps, device=args.device, progress=not args.json,
                      resume=args.resume, overwrite=args.force)  # fmt: skip
    summary = {
        "out": str(out),
        "method": args.method,
        "rounds": [r.to_dict() for r in results],
        "sampling": student_sampling(config),
        "config": config.to_dict(),
    }
    if results and results[-1].interrupted:
        summary["exit_status"] = 130
    return summary


def _run_moments(args: argparse.Namespace, model, data, options: dict):
    r"""The table of $\Gamma_t = E|s|^2/d$ at the ddpm / ddim sampler's grid times, from 2,000 training points of the
    run's data perturbed to each time, cached in the run folder (``score_moments-<grid>.safetensors``)."""
    import torch

    from ..datasets import image_dataset
    from ..processes.reverse_variance import ScoreMoments, score_moments
    from ..samplers import time_grid
    from ..samplers.base import sampler_options

    defaults = sampler_options(args.sampler)
    steps = args.steps or defaults["steps"]
    schedule, t_min = options.get("schedule", defaults["schedule"]), options.get("t_min")
    grid = time_grid(model.sde, steps, schedule, t_min)
    cache = _run_folder(args.checkpoint) / f"score_moments-{schedule}-{steps}-{float(grid[-1]):.3g}.safetensors"
    if cache.is_file():
        return ScoreMoments.load(cache)
    data = _require_data(data, "a run of its own (the analytic variance needs the model's training data)")
    if data.kind == "toy":
        x0 = toy_dataset(data.name).sample(2000, torch.Generator().manual_seed(args.seed))
    else:
        images = image_dataset(data.name, "train", data.data_dir, data.split_seed).x[:2000]
        x0 = data.transform().to_model(images.float() + 0.5)
    with torch.no_grad():
        moments = score_moments(model.sde, model, x0.to(args.device), grid, generator=torch.Generator().manual_seed(0))
    try:
        moments.save(cache)
    except OSError:  # a read-only run folder: the table is recomputed next time
        pass
    return moments


def _transform(data):
    """The data transform of an image model (256 levels in [-1, 1], diffusers' convention, when its data set is
    unknown); None for toys."""
    from ..datasets import DataTransform

    if data is None:
        return DataTransform(256, -1.0, 1.0)
    return data.transform()


def _require_data(data, option: str):
    if data is None:
        raise UserError(f"this model's data set is unknown (an imported model): pass {option} (a .npz of images)")
    return data


def cmd_sample(args: argparse.Namespace) -> dict:
    """Sample a trained checkpoint; write the samples (.npz) and a picture next to them (.png)."""
    import numpy as np
    import torch

    from ..samplers import ClassifierFreeGuidance, samplers
    from ..samplers.sampling import sample
    from .figures import plot_samples

    if args.sampler is not None:
        check_in_registry("sampler", args.sampler, samplers())  # before anything is written
    options = _parse_options(args.option)
    if args.guidance is not None and args.label is None:
        raise UserError("--guidance needs --label (the class to guide towards)")
    model, data, step = _load_model(args)
    schedule = _fitted_grid(args, options)
    steps = _student_sampling(args, options)
    if args.sampler in ("ddpm", "ddim") and options.get("variance") == "analytic":
        options["moments"] = _run_moments(args, model, data, options)
    score = model if args.label is None else ClassifierFreeGuidance(model, args.label, args.guidance or 0.0)
    out = _out_file(args.out, ".npz", args.force, Path(args.out).with_suffix(".png").name)
    picture = out.with_suffix(".png")
    with torch.no_grad():
        result = sample(
            model.sde,
            score,
            (args.n, *_sample_shape(model)),
            args.sampler,
            steps=steps,
            device=args.device,
            generator=torch.Generator(device=args.device).manual_seed(args.seed),
            **({"schedule": schedule} if schedule is not None else {}),
            **options,
        )
    x = result.x.cpu()
    transform = _transform(data)
    levels = transform.levels if transform else None
    arrays = {"x_model": x.numpy(), "x": transform.from_model(x).numpy().astype(np.uint8) if transform else x.numpy()}
    np.savez(out, **arrays)
    extent = _plot_extent(data)
    guided = "" if args.label is None else f", class {args.label}, guidance w = {args.guidance or 0.0:g}"
    fig = plot_samples(
        torch.as_tensor(arrays["x"]).float(),
        f"{args.sampler}: {args.n} samples, {result.nfe} NFE ({_origin(step)}){guided}",
        levels=levels,
        extent=extent,
    )
    fig.savefig(picture, dpi=110)
    from ..evaluation.comparison import measure_images

    quality = measure_images(_image_metric("sample", args, data, _run_folder(args.checkpoint)), x)
    if quality is not None and not args.json:
        print(quality.summary())
    return {
        "samples": str(out),
        "picture": str(picture),
        "image_quality": quality.to_dict() if quality is not None else None,
        "nfe": result.nfe,
        "sampler": args.sampler,
        "n": args.n,
        "checkpoint_step": step,
        "label": args.label,
        "guidance": args.guidance,
        "settings": result.settings,
    }


def _image_metric(command: str, args: argparse.Namespace, data, folder: Path):
    """The image metric of an image run (None for toys, with ``--features none``, or when the network is missing:
    then a one-line note says why and the command goes on)."""
    from ..evaluation.features import FeatureNetworkUnavailable, image_metric

    if data is None or data.kind != "image" or args.features == "none":
        return None
    try:
        return image_metric(data, args.features, device=args.device, cache_dir=folder / "reference_features")
    except (FeatureNetworkUnavailable, FileNotFoundError) as exc:  # the network, or the reference images, missing
        _note(command, f"no image metric: {exc}")
        return None


def _plot_extent(data) -> float | None:
    """Half-width of the square a toy's plots show (None for images)."""
    return toy_dataset(data.name).extent if data is not None and data.kind == "toy" else None


def _origin(step: int | None) -> str:
    return "imported model" if step is None else f"step {step}"


def _sample_shape(model) -> tuple[int, ...]:
    net = model.net
    return (net.dim,) if hasattr(net, "dim") else (net.in_channels, net.image_size, net.image_size)


def _load_mask(spec: str, shape: tuple[int, ...]):
    """The known mask (True = observed) from a named region to fill in or a .npz file whose array ``mask`` is
    nonzero where the data is missing (one sample's shape, or one per sample)."""
    import torch

    from ..samplers import MASKS, named_mask

    if not spec.endswith(".npz"):
        if spec not in MASKS:
            raise UserError(
                f"unknown mask {spec!r}; valid names are: {', '.join(MASKS)} (or a .npz file with array 'mask')"
            )
        return named_mask(spec, shape)
    return ~torch.as_tensor(_read_npz(spec, "mask", "--mask") != 0)


def _read_npz(file: str, key: str, option: str):
    """Array ``key`` of the ``.npz`` file given to ``option`` (no pickles): a non-empty numeric array with one row
    per sample, or a one-line error."""
    import zipfile

    import numpy as np

    path = Path(file)
    if not path.is_file():
        raise UserError(f"{option} file {path} does not exist")
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile)
    try:
        data = np.load(path, allow_pickle=False)
    except unreadable as exc:
        raise UserError(f"{option} file {path} is not a readable .npz file ({exc or type(exc).__name__})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UserError(f"{option} file {path} holds a bare array, not an .npz archive; save it with np.savez(x=...)")
    with data:
        if key not in data.files:
            raise UserError(f"{option} file {path} has no array '{key}' (found: {', '.join(data.files)})")
        try:
            array = data[key]
        except unreadable as exc:
            raise UserError(
                f"{option} file {path}: array '{key}' cannot be read ({exc or type(exc).__name__})"
            ) from None
    if array.ndim == 0 or array.shape[0] == 0:
        raise UserError(
            f"{option} file {path}: array '{key}' must hold at least one row (one per sample), got shape {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise UserError(f"{option} file {path}: array '{key}' must be numeric, got dtype {array.dtype}")
    return array


def cmd_inpaint(args: argparse.Namespace) -> dict:
    """Complete the missing part of data (images or 2D points) under a checkpoint; write .npz and a picture."""
    import numpy as np
    import torch

    from ..evaluation.comparison import held_out
    from ..samplers import inpaint
    from .figures import plot_inpainting

    model, data, step = _load_model(args, "--image")
    shape = _sample_shape(model)
    transform = _transform(data)
    if args.image == "test":
        x = held_out(_require_data(data, "--image"), args.n, args.seed).x
    else:
        x, _ = _load_points(args.image, args.n, args.seed, data, "--image")
        x = transform.to_model(x.float() + 0.5) if transform is not None else x.float()
    if tuple(x.shape[1:]) != shape:
        raise UserError(f"--image holds data of shape {tuple(x.shape[1:])}; the model's data has shape {shape}")
    known = _load_mask(args.mask, shape)  # its shape is checked by inpaint()
    out = _out_file(args.out, ".npz", args.force, Path(args.out).with_suffix(".png").name)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    result = inpaint(
        model.sde,
        model,
        x.to(args.device),
        known.to(args.device),
        method=args.method,
        steps=args.steps,
        generator=generator,
        progress=not args.json,
    )
    original, completed = x.cpu(), result.x.cpu()
    if transform is not None:
        original, completed = transform.from_model(original), transform.from_model(completed)
    np.savez(out, x=completed.numpy(), original=original.numpy(), known=known.cpu().numpy())
    fig = plot_inpainting(
        original,
        known.cpu(),
        completed,
        levels=transform.levels if transform else None,
        extent=_plot_extent(data),
        title=f"inpainting ({args.method}, {result.nfe} NFE, {_origin(step)})",
    )
    fig.savefig(out.with_suffix(".png"), dpi=110)
    return {
        "samples": str(out),
        "picture": str(out.with_suffix(".png")),
        "nfe": result.nfe,
        "n": int(x.shape[0]),
        "checkpoint_step": step,
        "settings": result.settings,
    }


def _load_points(source: str, n: int, seed: int, data, option: str = "--data") -> tuple:
    """Evaluation data: a ``.npz`` file (array ``x``), an image set's test split (integer levels), or held-out
    draws of a toy (with their true NLL where the toy has a density)."""
    import torch

    from ..config.schema import DataConfig
    from ..datasets import image_dataset
    from ..evaluation.comparison import held_out

    if source.endswith(".npz"):
        return torch.as_tensor(_read_npz(source, "x", option))[:n], None
    if data is None or data.kind == "image":
        data_dir, split_seed = (data.data_dir, data.split_seed) if data is not None else (None, 0)
        return image_dataset(source, "test", data_dir, split_seed).x[:n], None
    points = held_out(DataConfig(kind="toy", name=source), n, seed)
    return points.x, (-points.log_prob(points.x.double()) if points.log_prob is not None else None)


def _out_file(path: str, suffix: str, force: bool, *also: str) -> Path:
    """``--out`` naming a ``suffix`` file, its folder creatable and writable, nothing overwritten without
    ``--force``."""
    out = Path(path)
    if out.suffix != suffix:
        raise UserError(f"--out must name a {suffix} file, got {out}")
    _prepare_out(str(out.parent), force, [out.name, *also])
    return out


def cmd_likelihood(args: argparse.Namespace) -> dict:
    """Exact NLL (PF-ODE) and bits/dim of held-out data under a checkpoint, with the ELBO beside it; JSON to --out."""
    from .report import likelihood_summary

    if args.n < 2:
        raise UserError(f"-n must be >= 2 (a standard error needs two points), got {args.n}")
    model, data, step = _load_model(args, "--data")
    source = args.data or _require_data(data, "--data").name
    x, true_nll = _load_points(source, args.n, args.seed, data)
    out = _out_file(args.out, ".json", args.force)
    summary = {"checkpoint_step": step, "data": source}
    summary.update(
        likelihood_summary(
            model.sde,
            model,
            x.to(args.device),
            transform=_transform(data),
            true_nll=true_nll,
            seed=args.seed,
            progress=not args.json,
            t_min=args.t_min,
            rigorous=args.rigorous,
            **{
                k: getattr(args, k) for k in ("method", "rtol", "atol", "error_control") if getattr(args, k) is not None
            },
            **({"n_probes": args.probes} if args.probes is not None else {}),
        )
    )
    out.write_text(json_text(summary))
    return {**summary, "out": str(out)}


def cmd_compare(args: argparse.Namespace) -> dict:
    """PC against ODE against the few-step solvers on one checkpoint: a table, a JSON and one figure."""
    from ..evaluation.comparison import compare_samplers, default_lineup, held_out
    from .report import COMPARE_FILES, write_comparison

    if args.n < 2:
        raise UserError(f"-n must be >= 2 (distances and standard errors need two samples), got {args.n}")
    model, data_config, step = _load_model(args)
    if data_config is None:
        raise UserError("compare needs held-out data of the model's data set, unknown for this imported model's shape")
    folder = _prepare_out(args.out or str(_run_folder(args.checkpoint)), args.force, list(COMPARE_FILES))
    data = held_out(data_config, args.n, args.seed)
    transform = data_config.transform()
    quantise = (lambda x: transform.to_model(transform.from_model(x) + 0.5)) if transform is not None else None
    comparison = compare_samplers(
        model.sde,
        model,
        data.x,
        lineup=default_lineup(args.quick) + _student_lineup(args, model, data_config),
        n=len(data.x),
        floor_reference=data.floor,
        true_log_prob=data.sample_log_prob,
        entropy=data.entropy,
        postprocess=quantise,
        image_metric=_image_metric("compare", args, data_config, _run_folder(args.checkpoint)),
        seed=args.seed,
        device=args.device,
        progress=not args.json,
    )
    paths = write_comparison(comparison, data.x, folder, extent=_plot_extent(data_config))
    if not args.json:
        print(comparison.markdown())
    best = comparison.best()
    return {
        "checkpoint_step": step,
        "n": comparison.n,
        "best": best.spec.label,
        "best_nfe": best.nfe,
        "noise_floor": comparison.floor,
        "files": [str(p) for p in paths],
        **({"runs": comparison.to_dict()["runs"]} if args.json else {}),
    }


def _student_lineup(args: argparse.Namespace, teacher, data_config) -> list:
    """``--student RUN`` (repeatable): each distilled student at the step counts it samples with (consistency: 1, 2
    and 4 steps; progressive: its own), next to the teacher's solvers; a student of another SDE or data is refused."""
    from ..evaluation.comparison import student_lineup
    from ..training.runs import load_score_model

    specs = []
    for folder in args.student or []:
        student, config, _ = load_score_model(folder, device=args.device)
        if config.distill.method is None:
            raise UserError(f"--student {folder} is not a distilled student (scoresde distill writes one)")
        if repr(config.sde.build()) != repr(teacher.sde) or config.data != data_config:
            raise UserError(
                f"--student {folder} was distilled for {config.sde.build()!r} on {config.data.name}; the checkpoint is "
                f"{teacher.sde!r} on {data_config.name}: compare a student with its own teacher"
            )
        specs += student_lineup(student, config, Path(folder).name)
    return specs


def _run_folder(checkpoint: str) -> Path:
    path = Path(checkpoint)
    return path.parent if path.suffix == ".safetensors" else path


def cmd_demo(args: argparse.Namespace) -> dict:
    """Train on a 2D toy with a known density, compare samplers, measure the likelihood, write a report."""
    from .report import DEMO_FILES, run_demo

    folder = _prepare_out(args.out, args.force, list(DEMO_FILES))
    metrics = run_demo(folder, quick=args.quick, device=args.device, seed=args.seed, progress=not args.json)
    if args.json:
        return metrics
    print(_demo_summary(metrics, folder))
    return {}


def _demo_summary(metrics: dict, folder: Path) -> str:
    """The one-screen summary the demo prints."""
    lik, train, compare = metrics["likelihood"], metrics["train"], metrics["compare"]
    floor = compare["noise_floor"]["energy_distance"]
    lines = [
        f"scoresde demo: {metrics['data']} under {metrics['sde']}" + (" (quick settings)" if metrics["quick"] else ""),
        f"  trained {train['steps']} steps in {train['seconds']:.0f} s ({train['parameters']:,} parameters), final "
        f"loss {train['final_loss']:.4g}",
        f"  exact NLL {lik['nll_nats']:.4f} +- {lik['nll_standard_error']:.4f} nats ({lik['bits_per_dim']:.4f} "
        f"bits/dim, {lik['nfe']} NFE)",
        f"  true NLL  {lik['true_nll_nats']:.4f} nats; gap {lik['nll_gap_nats']:.4f} +- "
        f"{lik['nll_gap_standard_error']:.4f}; "
        f"ELBO {lik['elbo_nats']:.4f} +- {lik['elbo_standard_error']:.4f}",
        f"  samplers ({compare['n']} samples; energy distance, noise floor {floor:.2e}):",
    ]
    for run in compare["runs"]:
        lines.append(
            f"    {run['label']:<46} NFE {run['nfe']:>4}  ED {run['energy_distance']:.2e} "
            f"({run['energy_distance'] / floor:5.1f} x floor)"
            f"  {run['seconds']:5.2f} s"
        )
    lines += [
        f"  report: {folder / 'report.md'}  (figures and metrics.json beside it)",
        f"  total time {metrics['timings_seconds']['total']:.0f} s",
    ]
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> dict:
    """List the registered names."""
    from ..config.schema import presets
    from ..datasets import image_datasets
    from ..models import models
    from ..samplers import GRIDS, correctors, predictors, samplers

    return {
        "sdes": sde_names(),
        "samplers": samplers(),
        "predictors": predictors(),
        "correctors": correctors(),
        "time_grids": list(GRIDS),
        "toy_datasets": toy_datasets(),
        "image_datasets": image_datasets(),
        "models": models(),
        "presets": presets(),
    }


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line errors of the rest of the command line (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default in its help (where it has one), and the description's example kept on its own lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        shown = not (action.default is None or action.default is False or action.default == argparse.SUPPRESS)
        if shown and action.option_strings and "%(default)" not in help:
            help += " (default: %(default)s)"
        return help


def _command(
    sub, name: str, run, help: str, example: str, *, seed: int | None = 0, force: bool = True
) -> argparse.ArgumentParser:
    """A sub-command with the options every command takes: --device, --seed, --json (and --force where it writes)."""
    parser = sub.add_parser(
        name,
        help=help,
        description=f"{help[0].upper()}{help[1:]}.\n\nexample:\n  {example}",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--seed",
        type=int,
        default=seed,
        help="random seed" + (" (default: the config's train.seed)" if seed is None else ""),
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout (no progress bars)")
    if force:
        parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command (``scoresde COMMAND --help`` prints one)."""
    parser = _Parser(
        prog="scoresde",
        description="Score-based generative modelling with SDEs.\n\nexample:\n  scoresde demo --out scoresde-out",
        formatter_class=_HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = _command(
        sub,
        "demo",
        cmd_demo,
        "train on a 2D toy with a known density, compare samplers, measure the likelihood and write a report",
        "scoresde demo --out scoresde-out",
    )
    demo.add_argument("--out", default="scoresde-out", help="output folder: report.md, metrics.json, figures, run/")
    demo.add_argument(
        "--quick", action="store_true", help="small model and few points (under 30 s; for tests, not for quality)"
    )
    toys = _command(
        sub,
        "toys",
        cmd_toys,
        "sample the 2D toy data sets and draw the forward process of the gmm toy",
        "scoresde toys moons 8gaussians --out out/ --sde ve",
    )
    toys.add_argument("names", nargs="*", help="toy data sets to draw (default: all)")
    toys.add_argument("--out", default="scoresde-out", help="output folder")
    toys.add_argument("-n", type=int, default=2000, help="samples per data set")
    toys.add_argument("--sde", default="vp", help=f"forward SDE: {', '.join(sde_names())}")
    train = _command(
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
    train.add_argument("--steps", type=int, help="train.steps (the total, counted from step 0)")
    train.add_argument("--data-dir", help="folder with MNIST / CIFAR-10 files (data.data_dir)")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out (its config.yaml unless --preset/--config)"
    )
    dst = _command(
        sub,
        "distill",
        cmd_distill,
        "distil a teacher into a 1-4 step student: progressive distillation or a consistency model",
        "scoresde distill --teacher runs/toy --method consistency --out runs/toy-cd\n"
        "  scoresde distill --teacher oracle:gmm --method progressive --student-steps 2 --out runs/gmm-pd\n"
        "  scoresde sample --checkpoint runs/toy-cd --steps 2 --out runs/toy-cd/samples.npz",
    )
    dst.add_argument("--teacher", required=True, help="the teacher's run folder, or oracle:<toy> (its exact score)")
    dst.add_argument("--method", required=True, choices=DISTILLATION_METHODS, help="how the student learns")
    dst.add_argument("--out", required=True, help="the student's run folder")
    dst.add_argument("--student-steps", type=int, default=1, help="the student's steps (progressive: DDIM steps)")
    dst.add_argument(
        "--teacher-steps", type=int, help="progressive: the teacher's steps (a power-of-two multiple; default 4x)"
    )
    dst.add_argument("--train-steps", type=int, help="training steps per round (default 2000)")
    dst.add_argument("--sde", default="vp", help="oracle teachers: the forward SDE (vp or ve)")
    dst.add_argument(
        "--set", action="append", metavar="SECTION.FIELD=VALUE", help="override one config field (repeatable)"
    )
    dst.add_argument("--resume", action="store_true", help="continue the distillation in --out")
    fit = _command(
        sub,
        "fit-grid",
        cmd_fit_grid,
        "fit a sampler's time grid to a run's score: a few-step solve matched to a tight one, or to the data",
        "scoresde fit-grid --checkpoint runs/toy --sampler dpm_solver --steps 6 --option order=3\n"
        "  scoresde sample --checkpoint runs/toy --grid runs/toy/grids/dpm_solver-6.json --out runs/toy/s6.npz\n"
        "  scoresde fit-grid --checkpoint runs/toy-cd --steps 2   # a consistency student's times, fitted to the data",
    )
    _checkpoint_option(fit)
    fit.add_argument(
        "--sampler", help="a sampler name (scoresde list; default dpm_solver, consistency for a consistency model)"
    )
    fit.add_argument("--steps", type=int, default=6, help="steps of the grid (NFE = steps for ddim, dpm_solver)")
    fit.add_argument(
        "--option", action="append", metavar="NAME=VALUE", help="sampler option, e.g. order=3 (repeatable)"
    )
    fit.add_argument("-n", type=int, default=1024, help="calibration draws (never the evaluation draws)")
    fit.add_argument("--iterations", type=int, default=400, help="objective evaluations of the Nelder-Mead search")
    fit.add_argument(
        "--to-data",
        action="store_true",
        help="fit to the energy distance against n draws of the run's data (toys: fresh draws; images: the training "
        "split) instead of a tight solve (always for the consistency sampler)",
    )
    fit.add_argument("--out", help="grid file (.json; default RUN/grids/SAMPLER-STEPS.json), picture beside it")
    smp = _command(
        sub,
        "sample",
        cmd_sample,
        "draw samples from a checkpoint's EMA model; writes FILE.npz and FILE.png",
        "scoresde sample --checkpoint runs/toy --sampler dpm_solver --steps 20 -n 2000 --out runs/toy/samples.npz",
    )
    _checkpoint_option(smp)
    smp.add_argument(
        "--sampler", help="a sampler name (scoresde list; default dpm_solver, a distilled student's own sampler)"
    )
    smp.add_argument("--steps", type=int, help="steps of the sampler's grid (its own default if omitted)")
    smp.add_argument(
        "--option", action="append", metavar="NAME=VALUE", help="sampler option, e.g. order=3 (repeatable)"
    )
    smp.add_argument("--grid", help="a time grid written by scoresde fit-grid (its sampler and options by default)")
    smp.add_argument("-n", type=int, default=2000, help="number of samples")
    smp.add_argument("--label", type=int, help="class to sample (class-conditional models)")
    smp.add_argument(
        "--guidance",
        type=float,
        help="classifier-free guidance weight w: (1 + w) s(x, t, y) - w s(x, t, null); 0 = the conditional model",
    )
    smp.add_argument("--out", required=True, help="samples file (.npz); the picture goes next to it (.png)")
    _features_option(smp)
    lik = _command(
        sub,
        "likelihood",
        cmd_likelihood,
        "exact NLL and bits/dim of held-out data through the probability-flow ODE, with the ELBO beside it",
        "scoresde likelihood --checkpoint runs/toy -n 2000 --out runs/toy/likelihood.json",
    )
    _checkpoint_option(lik)
    lik.add_argument(
        "--data",
        help="data set name or .npz file with array x (default: the run's data set; toys: fresh draws "
        "with their true NLL; images: the test split)",
    )
    lik.add_argument("-n", type=int, default=1000, help="number of points (images: the first n of the test split)")
    lik.add_argument(
        "--t-min",
        type=float,
        default=1e-5,
        help="data end of the likelihood integral (default 1e-5, the convention of published bits/dim)",
    )
    lik.add_argument("--method", help="likelihood solver: ei (default), ei_fixed or a torchdiffeq method (dopri5, ...)")
    lik.add_argument("--rtol", type=float, help="relative tolerance (default: images 1e-2, toys 1e-5)")
    lik.add_argument("--atol", type=float, help="absolute tolerance (default: images 1e-2, toys 1e-5)")
    lik.add_argument("--error-control", choices=("per_sample", "batch"), help="default: images batch, toys per_sample")
    lik.add_argument("--probes", type=int, help="Hutchinson probes per image (default 1)")
    lik.add_argument(
        "--no-rigorous",
        dest="rigorous",
        action="store_false",
        help="images: skip the rigorous bound reported beside the conventional bits/dim (halves the cost)",
    )
    lik.add_argument("--out", required=True, help="result file (.json)")
    cmp = _command(
        sub,
        "compare",
        cmd_compare,
        "compare predictor-corrector, ODE and few-step samplers on one checkpoint "
        "(NFE, wall time, distance to held-out data)",
        "scoresde compare --checkpoint runs/toy --quick",
    )
    _checkpoint_option(cmp)
    cmp.add_argument(
        "-n", type=int, default=2000, help="samples per sampler (and held-out points; images: at most the test split)"
    )
    cmp.add_argument("--quick", action="store_true", help="fewer samplers and step counts")
    cmp.add_argument(
        "--student", action="append", metavar="RUN", help="a distilled student (scoresde distill) to add (repeatable)"
    )
    cmp.add_argument(
        "--out", help="output folder for compare.json, compare.md, compare.png (default: the checkpoint's folder)"
    )
    _features_option(cmp)
    inp = _command(
        sub,
        "inpaint",
        cmd_inpaint,
        "complete the missing part of images or 2D points (inpainting / imputation)",
        "scoresde inpaint --checkpoint runs/digits --image test --mask left-half -n 16 --out runs/digits/inpaint.npz",
    )
    _checkpoint_option(inp)
    inp.add_argument(
        "--image",
        default="test",
        help="'test' (held-out data of the run's data set) or a .npz file with array x "
        "(data levels for images, points for toys)",
    )
    inp.add_argument(
        "--mask",
        required=True,
        help="region to fill in: left-half, right-half, top-half, bottom-half, center "
        "(images), x1 or x2 (2D points), or a .npz file whose array 'mask' is nonzero where data is missing",
    )
    inp.add_argument(
        "--method",
        default="pc",
        help="replacement, pc (Song et al. 2021, App. I) or smc (SMCDiff; the batch is "
        "the particle population of one observation)",
    )
    inp.add_argument("--steps", type=int, default=500, help="predictor steps")
    inp.add_argument("-n", type=int, default=16, help="number of data to complete (the first n)")
    inp.add_argument(
        "--out", required=True, help="result file (.npz: x, original, known); the picture goes next to it (.png)"
    )
    _command(
        sub,
        "list",
        cmd_list,
        "list the SDEs, samplers (predictors, correctors, solvers), data sets, models and presets",
        "scoresde list --json",
        force=False,
    )
    return parser


def _features_option(parser: argparse.ArgumentParser) -> None:
    from ..evaluation.features import feature_networks

    parser.add_argument(
        "--features",
        choices=[*feature_networks(), "none"],
        help=f"image runs: the feature network of the Fréchet distance / KID ({', '.join(feature_networks())}, or "
        "none); default: the data set's own (digits: FD-digits, mnist: FD-mnist, others: Inception's FID)",
    )


def _checkpoint_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="run folder (or checkpoint file) written by scoresde train, or a diffusers model folder (UNet2DModel with "
        "a DDPM / DDIM scheduler; pip install 'scoresde[diffusers]')",
    )


def _check_device(name: str) -> None:
    """A device torch knows, that holds data and that this machine has (a tensor is made and read back there),
    else a one-line error."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a torch device; use e.g. cpu, cuda or cuda:1") from None
    if device.type == "meta":
        raise UserError(f"--device {name}: meta tensors hold no data; use --device cpu or an accelerator")
    if device.type == "cpu":
        return
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(
            f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible); use --device cpu"
        )
    try:
        (torch.ones(1, device=device) + 1).cpu()
    except Exception as exc:  # noqa: BLE001 - each backend fails in its own way (RuntimeError, AssertionError, ...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"--device {name}: not usable here ({reason}); use --device cpu") from None


def main(argv: list[str] | None = None) -> int:
    """Run the ``scoresde`` command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status
    (0; 2 for a user error, with its one-line message on stderr; 130 for an interrupted command)."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "n", 1) < 1:
            raise UserError(f"-n must be >= 1, got {args.n}")
        if getattr(args, "out", None) is not None and not args.out.strip():  # Path("") would be the current folder
            raise UserError("--out is empty; name a folder or file (e.g. --out runs/toy)")
        _check_device(args.device)
        result = args.run(args)
    except (UserError, ValueError, TypeError) as exc:  # CheckpointError, ConfigError, RunFolderError included
        print(f"scoresde {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written: say which and why
        where = f" {exc.filename}" if exc.filename else ""
        print(f"scoresde {args.command}: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scoresde {args.command}: interrupted", file=sys.stderr)
        return 130
    if args.json and result:
        print(json_text(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return int(result.get("exit_status", 0))
