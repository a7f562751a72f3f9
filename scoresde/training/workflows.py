"""What the commands do to a run folder, as library calls: train a run and the stages it names, with what its kind
does after training (`train_run`), sample it the way its kind samples (`sample_run`), and compute its bits/dim bound
when its kind has one (`run_bound`). ``scoresde train``, ``sample`` and ``likelihood`` parse their options, call
these and write files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config.schema import DataConfig, RunConfig
from ..samplers.recipe import Recipe
from .kinds import run_kind
from .stages import stage_path
from .trainer import Trainer, TrainResult

__all__ = ["RunTraining", "train_run", "CascadeBase", "cascade_base", "run_bound", "sample_run", "sample_cascade_run"]

FeatureNetwork = Callable[[RunConfig], "nn.Module | None"]
"""The feature network of a config's feature-matching term, or None (the caller's: they live above training)."""
Evaluator = Callable[[RunConfig, Path, "torch.device | str"], Callable]
"""Builds a run's evaluation while training, ``evaluator(config, folder, device) -> eval_fn`` with ``eval_fn.names``
(the caller's: `scoresde.evaluation.TrainingEvaluator` lives above training)."""


@dataclass
class RunTraining:
    """What `train_run` did: the run's `TrainResult`, each stage's summary, what its kind did after training, and
    whether this process is the one that writes (rank 0 under torchrun)."""

    result: TrainResult
    stages: dict[str, dict] = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    is_main: bool = True


def _train_one(
    config: RunConfig, out: Path, features: FeatureNetwork | None, evaluator: Evaluator | None, **options: Any
) -> tuple[TrainResult, dict, bool]:
    if evaluator is not None and config.train.eval_every:
        evaluate = evaluator(config, out, options.get("device", "cpu"))
        options.update(eval_fn=evaluate, eval_names=evaluate.names)
    trainer = Trainer(config, out, features=None if features is None else features(config), **options)
    try:
        result = trainer.train()
    finally:
        trainer.close()  # under torchrun: the ranks meet before the next stage or the exit
    after = run_kind(config).after_training(out, trainer.device) if trainer.is_main else {}
    return result, after, trainer.is_main


def train_run(
    config: RunConfig,
    out: str | Path,
    *,
    stages: dict[str, RunConfig] | None = None,
    features: FeatureNetwork | None = None,
    evaluator: Evaluator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
) -> RunTraining:
    """Train the run of ``config`` into ``out`` (`scoresde.training.Trainer`), first the ``stages`` it names
    (``{stage field: its config}``, e.g. ``{"autoencoder": ...}`` for a latent run: each trained into the folder
    ``config.stage.<field>`` names, relative to ``out``, and resumed when already there), each followed by what its
    kind does after training (`scoresde.training.kinds.RunKind.after_training`: an autoencoder's scaling factor).
    ``features``: the feature network of a config's feature-matching term (``train.feature_weight``);
    ``evaluator``: ``evaluator(config, folder, device)`` builds the evaluation while training of a run with
    ``train.eval_every`` (`scoresde.evaluation.TrainingEvaluator`, which declares its figures' ``names``)."""
    out = Path(out)
    done = {}
    for name, stage in (stages or {}).items():
        spec = Path(getattr(config.stage, name))
        folder = spec if spec.is_absolute() else out / spec
        result, after, _ = _train_one(stage, folder, features, evaluator, device=device, progress=progress,
                                      resume=True)  # fmt: skip
        done[name] = {**result.to_dict(), **after, "out": str(folder)}
    result, after, is_main = _train_one(
        config, out, features, evaluator, device=device, progress=progress, resume=resume, overwrite=overwrite
    )
    return RunTraining(result, done, after, is_main)


@dataclass(frozen=True)
class CascadeBase:
    """A super-resolution stage's base run (its model and config), the conditioning-augmentation level and the
    highest level the stage trained on."""

    model: Any
    config: RunConfig
    level: float
    max_level: float


def cascade_base(
    config: RunConfig,
    folder: str | Path,
    *,
    base: str | Path | None = None,
    level: float | None = None,
    device: torch.device | str = "cpu",
    positive: bool = False,
) -> CascadeBase:
    """The base run of the super-resolution run in ``folder`` (``base``, default its ``stage.base``), checked to draw
    the run's data at its low resolution, and the augmentation ``level`` (default ``stage.augmentation``), checked to
    lie in the range the run trained on (``positive``: in (0, max] as a bound needs). One-line ``ValueError`` s."""
    from .runs import load_score_model

    stage = config.stage
    spec = base or stage.base
    if spec is None:
        raise ValueError(f"{folder} is a super-resolution stage that names no base run (stage.base): pass --base RUN")
    level = stage.augmentation if level is None else float(level)
    top = stage.max_augmentation
    if positive and not 0 < level <= top:
        raise ValueError(
            f"the cascade's bound integrates over a conditioning augmentation in (0, {top:g}] (the range the run "
            f"trained on), got {level:g}: pass --augmentation (e.g. 0.1)"
        )
    if not 0 <= level <= top:
        raise ValueError(f"--augmentation {level:g} lies outside the level range the run trained on, [0, {top:g}]")
    path = stage_path(spec, folder)
    if not path.exists():
        raise ValueError(f"the cascade's base run {spec} does not exist (looked at {path}); train it first")
    model, base_config, _ = load_score_model(path, device=device)
    size = base_config.data.resolution or model.net.image_size
    if base_config.data.name != config.data.name or size != stage.low_resolution:
        raise ValueError(
            f"the base run {spec} draws {base_config.data.name} at {size}x{size}, this stage is conditioned on "
            f"{config.data.name} at {stage.low_resolution}x{stage.low_resolution}"
        )
    return CascadeBase(model, base_config, level, top)


def run_bound(
    model: Any,
    config: RunConfig,
    folder: str | Path,
    x: Tensor,
    *,
    base: CascadeBase | None = None,
    t_min: float = 1e-5,
    **options: Any,
) -> Any:
    """The bits/dim bound of the run's kind on integer images ``x``, or None when the kind's
    likelihood is the exact PF-ODE one (`scoresde.likelihood.bits_per_dim`): a latent run's
    (`scoresde.likelihood.latent_bits_per_dim`), a super-resolution stage's with its base
    (`scoresde.likelihood.cascade_bits_per_dim`; ``base`` default `cascade_base` at the run's level). ``options``:
    the solver's (``method``, ``rtol``, ``atol``, ``divergence``, ``n_probes``, ``generator``, ``dtype`` ...)."""
    from ..likelihood import cascade_bits_per_dim, latent_bits_per_dim

    kind = run_kind(config)
    transform = config.data.transform()
    if kind.bound == "latent":
        return latent_bits_per_dim(model.sde, model, model.codec, x, transform, t_min=t_min, **options)
    if kind.bound == "cascade":
        base = base or cascade_base(config, folder, positive=True, device=x.device)
        low = config.stage.low_resolution
        return cascade_bits_per_dim(base.model.sde, base.model, model.sde, model, x, base.level, low, transform,
                                    **options)  # fmt: skip
    return None


def _analytic_moments(model: Any, data: DataConfig | None, folder: Path, recipe: Recipe, seed: int, device) -> Any:
    """The run's cached table of score moments at the recipe's grid (`scoresde.training.runs.run_score_moments`)."""
    from ..processes.grids import time_grid
    from ..samplers.base import sampler_options
    from .runs import run_score_moments

    defaults = sampler_options(recipe.sampler)
    steps = recipe.steps or defaults["steps"]
    schedule = recipe.options.get("schedule", recipe.schedule or defaults["schedule"])
    grid = time_grid(model.sde, steps, schedule, recipe.options.get("t_min"))
    key = f"{schedule}-{steps}-{float(grid[-1]):.3g}"
    return run_score_moments(folder, model, model.sde, data, grid, key, seed=seed, device=device)


def sample_run(
    model: Any,
    data: DataConfig | None,
    folder: str | Path,
    shape: tuple[int, ...],
    recipe: Recipe,
    *,
    label: int | None = None,
    guidance: float = 0.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Any:
    """What ``scoresde sample`` draws from a loaded run: ``shape`` samples by ``recipe`` (`scoresde.samplers.
    choose_recipe`; DDPM's or DDIM's analytic variance gets the run's score moments, measured on its training
    ``data`` and cached in ``folder``), guided to class ``label`` with weight ``guidance`` (classifier-free), from a
    generator seeded with ``seed`` on ``device``. Returns the `scoresde.samplers.SampleResult` (a latent run's images
    in ``decoded``)."""
    from dataclasses import replace

    from ..samplers import ClassifierFreeGuidance
    from ..samplers.sampling import sample

    if recipe.sampler in ("ddpm", "ddim") and recipe.options.get("variance") == "analytic":
        if data is None:
            raise ValueError(
                "the analytic variance needs the model's training data, and this model's data set is unknown (an "
                "imported model): sample a run of its own, or choose variance beta, beta_tilde or learned"
            )
        moments = _analytic_moments(model, data, Path(folder), recipe, seed, device)
        recipe = replace(recipe, options={**recipe.options, "moments": moments})
    score = model if label is None else ClassifierFreeGuidance(model, label, guidance)
    with torch.no_grad():
        return sample(model.sde, score, shape, recipe, device=device,
                      generator=torch.Generator(device=device).manual_seed(seed))  # fmt: skip


def sample_cascade_run(
    model: Any,
    base: CascadeBase,
    n: int,
    shapes: tuple[tuple[int, ...], tuple[int, ...]],
    *,
    sampler: str | None = None,
    options: dict | None = None,
    base_sampler: str | None = None,
    base_options: dict | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Any:
    """What ``scoresde sample`` draws from a cascade's super-resolution run: ``n`` low-resolution images from its
    ``base`` (`cascade_base`) by ``base_sampler``, augmented at the base's level, then the images given them by
    ``sampler``; ``shapes``: one low-resolution and one full image's shape. Returns the
    `scoresde.samplers.CascadeResult` (each stage's NFE)."""
    from ..samplers import sample_cascade

    low_shape, shape = shapes
    with torch.no_grad():
        return sample_cascade(
            base.model.sde, base.model, model.sde, model, n, low_shape, shape, level=base.level,
            max_level=base.max_level, base_sampler=base_sampler,
            sampler=sampler, base_options=base_options or {}, options=options or {},
            generator=torch.Generator(device=device).manual_seed(seed), device=device,
        )  # fmt: skip
