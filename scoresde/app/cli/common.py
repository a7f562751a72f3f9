"""What the commands share: the user error, output files and folders, loading a run's model and data, options."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

from ...datasets import toy_dataset
from ...processes.seam import spec_of


class UserError(Exception):
    """An error in what the user asked for: reported in one line, exit status 2."""


def prepare_out(out: str, force: bool, names: list[str]) -> Path:
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


def count(text: str) -> int:
    """An argparse ``type``: an integer >= 1 (a number of steps, samples, iterations), else argparse's one-line
    error naming the option."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def note(command: str, message: str) -> None:
    """One line to stderr that tells the user what the command decided for them."""
    print(f"scoresde {command}: {message}", file=sys.stderr)


def remove_if_empty(folder: Path, created: bool) -> None:
    """Remove the output folder a failed command created, if nothing was written into it."""
    if created and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def parse_options(pairs: list[str] | None) -> dict:
    """``key=value`` sampler options, values read as YAML scalars (``order=3``, ``schedule=log_snr``)."""
    import yaml

    from ...config.schema import yaml_error_line

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


class Loaded(NamedTuple):
    """A loaded ``--checkpoint``: the model, its data set (None: unknown), its step and its run config (None for an
    imported model)."""

    model: Any
    data: Any
    step: int | None
    config: Any


class Outcome(NamedTuple):
    """What a command returns when its exit status is not 0: its summary and the status (130 / 143: stopped by
    SIGINT / SIGTERM)."""

    summary: dict
    status: int


def load_model(args: argparse.Namespace, data_option: str | None = None) -> Loaded:
    """The model of ``--checkpoint`` with its data, step and config: a run folder or checkpoint written by
    ``scoresde train``, or a diffusers model folder (`scoresde.training.interop`; its data set inferred from the
    image shape, None when no known data set has it; no step, no config)."""
    from ...training.interop import InteropError, is_diffusers_folder, load_diffusers
    from ...training.runs import load_score_model

    if is_diffusers_folder(args.checkpoint):
        try:
            model, info = load_diffusers(args.checkpoint, device=args.device)
        except InteropError as exc:
            raise UserError(str(exc)) from None
        if info.data is None and data_option is not None:
            note(args.command, f"image shape {info.image_shape} matches no known data set; {data_option} names one")
        return Loaded(model, info.data, None, None)
    model, config, step = load_score_model(args.checkpoint, device=args.device)
    if spec_of(model).output == "consistency" and args.command not in ("sample", "fit-grid"):
        raise UserError(
            f"{args.checkpoint} is a consistency model, which has no score for {args.command}; sample it with "
            f"scoresde sample --checkpoint {args.checkpoint}, or use its teacher"
        )
    precision = getattr(args, "precision", "fp32")  # commands without --precision run the weights' own
    if precision != "fp32":
        from ...models.parameterization import set_network_dtype
        from ...training.speed import check_precision

        try:
            set_network_dtype(model, check_precision(precision, args.device))
        except ValueError as exc:
            raise UserError(f"--precision {precision}: {exc}") from None
    return Loaded(model, config.data, step, config)


def data_transform(data):
    """The data transform of an image model (256 levels in [-1, 1], diffusers' convention, when its data set is
    unknown); None for toys."""
    from ...datasets import DataTransform

    if data is None:
        return DataTransform(256, -1.0, 1.0)
    return data.transform()


def require_data(data, option: str):
    if data is None:
        raise UserError(f"this model's data set is unknown (an imported model): pass {option} (a .npz of images)")
    return data


def run_image_metric(command: str, args: argparse.Namespace, data, folder: Path):
    """The image metric of an image run (None for toys, with ``--features none``, or when the network is missing:
    then a one-line note says why and the command goes on)."""
    from ...evaluation.features import FeatureNetworkUnavailable, image_metric

    if data is None or data.kind != "image" or args.features == "none":
        return None
    if data.resolution is not None:
        note(command, f"no image metric at resolution {data.resolution} (the feature networks take full-size images)")
        return None
    try:
        return image_metric(data, args.features, device=args.device, cache_dir=folder / "reference_features")
    except (FeatureNetworkUnavailable, FileNotFoundError) as exc:  # the network, or the reference images, missing
        note(command, f"no image metric: {exc}")
        return None


def plot_extent(data) -> float | None:
    """Half-width of the square a toy's plots show (None for images)."""
    return toy_dataset(data.name).extent if data is not None and data.kind == "toy" else None


def origin(step: int | None) -> str:
    return "imported model" if step is None else f"step {step}"


def load_mask(spec: str, shape: tuple[int, ...]):
    """The known mask (True = observed) from a named region to fill in or a .npz file whose array ``mask`` is
    nonzero where the data is missing (one sample's shape, or one per sample)."""
    import torch

    from ...samplers import MASKS, named_mask

    if not spec.endswith(".npz"):
        if spec not in MASKS:
            raise UserError(
                f"unknown mask {spec!r}; valid names are: {', '.join(MASKS)} (or a .npz file with array 'mask')"
            )
        return named_mask(spec, shape)
    return ~torch.as_tensor(read_npz(spec, "mask", "--mask") != 0)


def read_npz(file: str, key: str, option: str):
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
    if np.issubdtype(array.dtype, np.complexfloating) or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == bool
    ):
        raise UserError(f"{option} file {path}: array '{key}' must be real numbers, got dtype {array.dtype}")
    return array


def load_points(source: str, n: int, seed: int, data, option: str = "--data") -> tuple:
    """Evaluation data: a ``.npz`` file (array ``x``), an image set's test split (integer levels), or held-out
    draws of a toy (with their true NLL where the toy has a density)."""
    import torch

    from ...config.schema import DataConfig
    from ...datasets import image_dataset
    from ...evaluation.held_out import held_out

    if source.endswith(".npz"):
        return torch.as_tensor(read_npz(source, "x", option))[:n], None
    if data is None or data.kind == "image":
        data_dir, split_seed = (data.data_dir, data.split_seed) if data is not None else (None, 0)
        return image_dataset(source, "test", data_dir, split_seed).x[:n], None
    points = held_out(DataConfig(kind="toy", name=source), n, seed)
    return points.x, (-points.log_prob(points.x.double()) if points.log_prob is not None else None)


def out_file(path: str, suffix: str, force: bool, *also: str) -> Path:
    """``--out`` naming a ``suffix`` file, its folder creatable and writable, nothing overwritten without
    ``--force``."""
    out = Path(path)
    if out.suffix != suffix:
        raise UserError(f"--out must name a {suffix} file, got {out}")
    prepare_out(str(out.parent), force, [out.name, *also])
    return out


def run_folder_of(checkpoint: str) -> Path:
    path = Path(checkpoint)
    return path.parent if path.suffix == ".safetensors" else path


def check_device(name: str) -> None:
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default in its help (where it has one), and the description's example kept on its own lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        shown = not (action.default is None or action.default is False or action.default == argparse.SUPPRESS)
        if shown and action.option_strings and "%(default)" not in help:
            help += " (default: %(default)s)"
        return help


def command(
    sub, name: str, run, help: str, example: str, *, seed: int | None = 0, force: bool = True
) -> argparse.ArgumentParser:
    """A sub-command with the options every command takes: --device, --seed, --json (and --force where it writes)."""
    parser = sub.add_parser(
        name,
        help=help,
        description=f"{help[0].upper()}{help[1:]}.\n\nexample:\n  {example}",
        formatter_class=HelpFormatter,
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


def features_option(parser: argparse.ArgumentParser) -> None:
    from ...evaluation.features import feature_networks

    parser.add_argument(
        "--features",
        choices=[*feature_networks(), "none"],
        help=f"image runs: the feature network of the Fréchet distance / KID ({', '.join(feature_networks())}, or "
        "none); default: the data set's own (digits: FD-digits, mnist: FD-mnist, others: Inception's FID)",
    )


def checkpoint_option(parser: argparse.ArgumentParser, precision: bool = True) -> None:
    """``--checkpoint`` and (for commands that evaluate the network) ``--precision``."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="run folder (or checkpoint file) written by scoresde train, or a diffusers model folder (UNet2DModel with "
        "a DDPM / DDIM scheduler; pip install 'scoresde[diffusers]')",
    )
    if not precision:
        return
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="the network's arithmetic (autocast); states, divergences and densities stay float32 / float64",
    )


def student_specs(folders: list[str], teacher, data_config, device: str) -> list:
    """``--student RUN`` (repeatable): each distilled student at the step counts it samples with (consistency: 1, 2
    and 4 steps; progressive: its own), next to the teacher's solvers; a student of another SDE or data is refused."""
    from ...evaluation.comparison import student_lineup
    from ...training.kinds import run_kind
    from ...training.runs import load_score_model

    specs = []
    for folder in folders:
        student, config, _ = load_score_model(folder, device=device)
        if not run_kind(config).student:
            raise UserError(f"--student {folder} is not a distilled student (scoresde distill writes one)")
        if repr(config.sde.build()) != repr(teacher.sde) or config.data != data_config:
            raise UserError(
                f"--student {folder} was distilled for {config.sde.build()!r} on {config.data.name}; the checkpoint is "
                f"{teacher.sde!r} on {data_config.name}: compare a student with its own teacher"
            )
        specs += student_lineup(student, config, Path(folder).name)
    return specs


def solver_specs(files: list[str], model) -> list:
    """``--solver FILE`` (repeatable): each fitted solver, checked to belong to the checkpoint's model."""
    from ...evaluation.comparison import solver_lineup
    from ...samplers.fitted_solver import FittedSolver

    return [
        spec for file in files for spec in solver_lineup(FittedSolver.load(file, model.sde, model), Path(file).stem)
    ]
