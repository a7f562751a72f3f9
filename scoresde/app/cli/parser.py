"""The ``scoresde`` argument parser: one sub-parser a command, typed options with their defaults shown."""

from __future__ import annotations

import argparse

from ...config.schema import DISTILLATION_METHODS
from ...processes.sde import sde_names
from .compare import cmd_compare
from .demo import cmd_demo
from .distill import cmd_distill
from .fit_grid import cmd_fit_grid
from .inpaint import cmd_inpaint
from .likelihood import cmd_likelihood
from .listing import cmd_list, cmd_toys
from .sample import cmd_sample
from .train import cmd_train


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
    from ...evaluation.features import feature_networks

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
