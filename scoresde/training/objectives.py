r"""Training objectives as objects: ``objective(model, batch, generator) -> loss``, each with its weighting and
parameterisation inside (like EDM's ``training/loss.py``), so that the Trainer's loop never asks which one it runs.

=========================  ================================================================================
``dsm``                    denoising score matching, $\mathbb E\,\lambda(t)\,\|\sigma s_\theta(x_t, t) + \epsilon\|^2$
                           with the run's weighting (`scoresde.training.losses.dsm_loss`)
``hybrid``                 Improved DDPM's $L_{simple} + \lambda N L_{vlb}$ for a learned variance, steps
                           importance-sampled by their loss history (`scoresde.training.losses.hybrid_loss`)
``progressive``            progressive distillation: two teacher DDIM steps in one
``consistency``            consistency distillation against an EMA target network
``consistency_training``   consistency training (no teacher), its discretisation on a curriculum
``autoencoder``            a KL-regularised autoencoder: $[-\log p(x\mid z) + \beta\,\mathrm{KL}(q(z\mid x)\,\|\,
                           \mathcal N(0, I))]/D$ with the discretised decoder, optionally feature matching
``super_resolution``       DSM of a cascade's super-resolution stage given its low-resolution condition, with
                           Gaussian conditioning augmentation at a level drawn per row
=========================  ================================================================================

What an objective keeps between steps (the step sampler's history, the EMA target) is its `state_dict`, saved in the
checkpoint's ``extra`` tensors and restored by `load_state_dict`: one mechanism for every objective, so exact resume
holds for each. `build_objective` picks the objective of a run's config, the one place that reads the method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .._checks import check_in_registry, registering
from ..config.schema import RunConfig
from ..datasets.scalers import DataTransform
from ..likelihood.latent import decoder_log_prob
from ..processes.base import SDE, ScoreFn
from ..processes.seam import as_score
from .checkpoint import CheckpointError, load_weights
from .distillation import (
    consistency_curriculum,
    consistency_loss,
    init_from_teacher,
    progressive_grid,
    progressive_loss,
)
from .ema import EMA
from .kinds import run_kind
from .losses import VLBTimeSampler, dsm_loss, hybrid_loss

__all__ = [
    "Batch",
    "Objective",
    "DenoisingScoreMatching",
    "AutoencoderObjective",
    "SuperResolutionDSM",
    "augment_condition",
    "HybridObjective",
    "ProgressiveDistillation",
    "ConsistencyDistillation",
    "ConsistencyTraining",
    "register_objective",
    "objectives",
    "objective_name",
    "build_objective",
    "needs_teacher",
]


@dataclass(frozen=True)
class Batch:
    """One training step's data: ``x0 [B, ...]`` in the model's range, class labels ``y [B]`` (or ``None``), the
    ``step`` it is drawn for (a curriculum reads it) and a super-resolution stage's low-resolution images ``low``
    (model range; else ``None``)."""

    x0: Tensor
    y: Tensor | None
    step: int
    low: Tensor | None = None


class Objective:
    """``objective(model, batch, generator) -> loss`` (a scalar). Hooks with defaults that do nothing: `init_model`
    (before training; e.g. start at a teacher's weights), `after_step` (after each optimiser step; e.g. an EMA
    target), and the state an objective keeps, `state_dict` / `load_state_dict` (tensors, saved with the run)."""

    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def init_model(self, *models: nn.Module) -> None:
        """Prepare the fresh model (and its EMA copy) before the first step."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after every optimiser step with the trained model."""

    def state_dict(self) -> dict[str, Tensor]:
        """The tensors this objective keeps between steps (saved under the checkpoint's ``extra.``)."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor], path: Path) -> None:
        """Restore `state_dict` from the checkpoint at ``path`` (a one-line `CheckpointError` when unusable)."""

    def outputs(self, model: nn.Module, batch: Batch, sde: SDE) -> dict[str, Tensor]:
        """What ``model`` outputs on ``batch`` where this objective reads it (the score under ``sde`` at half the
        horizon and at ``T``): a restored checkpoint is refused when any of it is not finite."""
        model = self.conditioned(model, batch, None)
        out = {}
        for t in (0.5 * sde.T, sde.T):
            times = torch.full((batch.x0.shape[0],), t, dtype=batch.x0.dtype, device=batch.x0.device)
            out[f"t={t:g}"] = model(batch.x0, times) if batch.y is None else model(batch.x0, times, batch.y)
        return out

    def conditioned(self, model: nn.Module, batch: Batch, generator: torch.Generator | None) -> nn.Module:
        """The model this objective evaluates on ``batch`` (a super-resolution stage binds its condition)."""
        return model


_OBJECTIVES: dict[str, Callable[..., Objective]] = {}


def register_objective(name: str) -> Callable:
    """Decorator adding a builder ``fn(config, sde, *, teacher, world) -> Objective`` to the registry."""
    return registering("objective", _OBJECTIVES, name)


def objectives() -> list[str]:
    """Names of the registered objectives, sorted."""
    return sorted(_OBJECTIVES)


class DenoisingScoreMatching(Objective):
    r"""DSM with the run's weighting (``sigma2``, ``likelihood`` with optional importance sampling, ``eps``)."""

    def __init__(self, sde: SDE, weighting: str, importance_sampling: bool, t_min: float, n_steps: int | None):
        self.sde, self.weighting, self.importance_sampling = sde, weighting, importance_sampling
        self.t_min, self.n_steps = t_min, n_steps

    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        return dsm_loss(
            model,
            self.sde,
            batch.x0,
            weighting=self.weighting,
            importance_sampling=self.importance_sampling,
            t_min=self.t_min,
            n_steps=self.n_steps,
            generator=generator,
            y=batch.y,
        ).mean()


class HybridObjective(Objective):
    r"""$L_{simple} + \lambda N L_{vlb}$ for a learned variance; with ``time_sampler`` the chain's steps are drawn
    by importance, its history updated from every rank's drawn terms and kept as state."""

    def __init__(self, sde: SDE, n_steps: int, vlb_weight: float, t_min: float, importance: bool, world: int = 1):
        self.sde, self.n_steps, self.vlb_weight, self.t_min, self.world = sde, n_steps, vlb_weight, t_min, world
        self.time_sampler = VLBTimeSampler(n_steps) if importance else None

    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        parts = hybrid_loss(
            model,
            self.sde,
            batch.x0,
            n_steps=self.n_steps,
            vlb_weight=self.vlb_weight,
            t_min=self.t_min,
            generator=generator,
            y=batch.y,
            time_sampler=self.time_sampler,
        )
        if self.time_sampler is not None:
            self.time_sampler.update(*_gathered(parts.index, parts.vlb, self.world))
        return parts.loss.mean()

    def state_dict(self) -> dict[str, Tensor]:
        if self.time_sampler is None:
            return {}
        return {f"time_sampler.{k}": v for k, v in self.time_sampler.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor], path: Path) -> None:
        if self.time_sampler is None:
            return
        saved = {k.removeprefix("time_sampler."): v for k, v in state.items() if k.startswith("time_sampler.")}
        try:
            self.time_sampler.load_state_dict(saved)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{path} holds no usable step history for the importance-sampled hybrid loss ({exc}), so a resume "
                f"would not be exact; start afresh (scoresde train --force)"
            ) from None


class ProgressiveDistillation(Objective):
    """Two teacher DDIM steps in one on the student's ``steps``-step log-SNR grid; the student starts at its
    teacher's weights."""

    def __init__(self, sde: SDE, teacher: ScoreFn, steps: int):
        self.sde, self.teacher, self.grid = sde, teacher, progressive_grid(sde, steps)

    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        return progressive_loss(model, self.teacher, self.sde, batch.x0, self.grid, generator=generator).mean()

    def init_model(self, *models: nn.Module) -> None:
        for model in models:
            init_from_teacher(model, self.teacher)


class ConsistencyTraining(Objective):
    """Consistency training (no teacher): pseudo-Huber on the curriculum's discretisation of this step, the target
    the model itself under a stop-gradient."""

    def __init__(self, sde: SDE, total_steps: int, distance: str):
        self.sde, self.total_steps, self.distance = sde, total_steps, distance
        self.teacher_fn: ScoreFn | None = None  # consistency training: the pair's earlier point is the same noise's
        self.solver = "heun"

    def n_times(self, step: int) -> int:
        return consistency_curriculum(step, self.total_steps)

    def target(self, model: nn.Module) -> nn.Module:
        return model

    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        return consistency_loss(
            model,
            self.target(model),
            self.sde,
            batch.x0,
            self.n_times(batch.step),
            teacher=self.teacher_fn,
            solver=self.solver,
            distance=self.distance,
            generator=generator,
        ).mean()


class ConsistencyDistillation(ConsistencyTraining):
    """Consistency distillation: the teacher's ODE step between neighbouring times of the ``n_times``
    discretisation, against an EMA target network (decay ``target_ema``; 0: the model itself) kept as state."""

    def __init__(self, sde: SDE, teacher: ScoreFn, n_times: int, solver: str, distance: str, target_ema: float):
        super().__init__(sde, 0, distance)
        self.teacher_fn, self.solver, self.fixed_n, self.target_ema = teacher, solver, n_times, target_ema
        self.ema: EMA | None = None

    def n_times(self, step: int) -> int:
        return self.fixed_n

    def target(self, model: nn.Module) -> nn.Module:
        return model if self.ema is None else self.ema.model

    def init_model(self, model: nn.Module, *others: nn.Module) -> None:
        self.ema = EMA(model, self.target_ema) if self.target_ema else None

    def after_step(self, model: nn.Module, step: int) -> None:
        if self.ema is not None:
            self.ema.update(model, step)

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.ema is None else {f"target.{k}": v for k, v in self.ema.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor], path: Path) -> None:
        if self.ema is not None:
            target = {k.removeprefix("target."): v for k, v in state.items() if k.startswith("target.")}
            load_weights(self.ema.model, target, path, "consistency target")


class AutoencoderObjective(Objective):
    r"""A KL-regularised autoencoder's loss per data dimension (Rombach et al. 2022 with a likelihood decoder):

    $$\mathcal L = \frac1D\Big[-\log P(x\mid z) + \beta\,\mathrm{KL}\big(q(z\mid x)\,\|\,\mathcal N(0, I)\big)\Big]
    + w\,\frac1F\|\phi(\hat x) - \phi(x)\|^2,\qquad z \sim q(z\mid x),$$

    $P(x\mid z)$ the decoder's Gaussian discretised over the data's levels (`decoder_log_prob`; $\beta = 1$: the
    negative ELBO), $\mathrm{KL} = \tfrac12\sum(\mu^2 + s^2 - 1 - \log s^2)$, and with ``features`` $\phi$ (the data
    set's shipped feature network, images in [0, 1]) a feature-matching term of weight $w$."""

    def __init__(
        self,
        transform: DataTransform,
        kl_weight: float,
        feature_weight: float = 0.0,
        features: nn.Module | None = None,
    ) -> None:
        if feature_weight and features is None:
            raise ValueError("train.feature_weight > 0 needs the data set's feature network (features=...)")
        self.transform, self.kl_weight, self.feature_weight, self.features = (
            transform, kl_weight, feature_weight, features
        )  # fmt: skip

    def terms(self, model: nn.Module, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        r"""Per-row ``reconstruction`` ($-\log P(x|z)$, nats), ``kl`` (nats) and ``features`` for model-range
        ``x``."""
        mean, std = model.posterior(x)
        z = mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        x_hat, scale = model.decoder_distribution(z)
        levels = self.transform.from_model(x)
        terms = {
            "reconstruction": -decoder_log_prob(levels, x_hat, scale, self.transform),
            "kl": 0.5 * (mean**2 + std**2 - 1 - 2 * torch.log(std)).flatten(1).sum(1).double(),
        }
        if self.feature_weight:
            unit = self.transform.low, self.transform.high - self.transform.low
            phi_hat = self.features(((x_hat - unit[0]) / unit[1]).clamp(0, 1))
            phi = self.features(((x - unit[0]) / unit[1]).clamp(0, 1)).detach()
            terms["features"] = ((phi_hat - phi) ** 2).mean(1).double()
        return terms

    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        terms = self.terms(model, batch.x0, generator)
        dim = batch.x0[0].numel()
        loss = (terms["reconstruction"] + self.kl_weight * terms["kl"]) / dim
        if self.feature_weight:
            loss = loss + self.feature_weight * terms["features"]
        return loss.mean().to(batch.x0.dtype)

    def outputs(self, model: nn.Module, batch: Batch, sde: SDE) -> dict[str, Tensor]:
        return {"reconstruction": model(batch.x0)}


def augment_condition(low: Tensor, level: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
    r"""Gaussian conditioning augmentation (Ho et al. 2021): $\tilde x_{low} = x_{low} + s\,\epsilon$ at noise level
    ``level`` $= s$ (``[B]`` or one number)."""
    level = torch.as_tensor(level, dtype=low.dtype, device=low.device)
    noise = torch.randn(low.shape, generator=generator, dtype=low.dtype).to(low.device)
    return low + level.reshape(-1, *[1] * (low.ndim - 1)) * noise if level.ndim else low + level * noise


class SuperResolutionDSM(DenoisingScoreMatching):
    r"""DSM of a super-resolution stage $s_\theta(x_t, t \mid \tilde x_{low}, s)$: each row's augmentation level
    $s \sim U[0, s_{max}]$ is drawn, its low-resolution image augmented (`augment_condition`) and bound to the
    model (``model.given``); the level is an input of the network, chosen at sampling time."""

    def __init__(self, sde: SDE, weighting: str, importance_sampling: bool, t_min, n_steps, max_augmentation: float):
        super().__init__(sde, weighting, importance_sampling, t_min, n_steps)
        self.max_augmentation = max_augmentation

    def conditioned(self, model: nn.Module, batch: Batch, generator: torch.Generator | None) -> nn.Module:
        if batch.low is None:
            raise ValueError("a super-resolution stage trains on batches with their low-resolution images")
        if generator is None:  # the restored-checkpoint check: the condition as it is
            return model.given(batch.low, 0.0)
        level = self.max_augmentation * torch.rand(batch.low.shape[0], generator=generator, dtype=batch.low.dtype)
        level = level.to(batch.low.device)
        return model.given(augment_condition(batch.low, level, generator), level)

    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        return super().__call__(self.conditioned(model, batch, generator), batch, generator)


@register_objective("dsm")
def _dsm(config: RunConfig, sde: SDE, *, teacher: ScoreFn | None, world: int) -> Objective:
    tc = config.train
    return DenoisingScoreMatching(sde, tc.weighting, tc.importance_sampling, tc.t_min, tc.n_steps)


@register_objective("super_resolution")
def _super_resolution(config: RunConfig, sde: SDE, *, teacher: ScoreFn | None, world: int) -> Objective:
    tc = config.train
    return SuperResolutionDSM(
        sde, tc.weighting, tc.importance_sampling, tc.t_min, tc.n_steps, config.stage.max_augmentation
    )


@register_objective("autoencoder")
def _autoencoder(config: RunConfig, sde: SDE, *, teacher: ScoreFn | None, world: int, features=None) -> Objective:
    if world > 1:
        raise ValueError("an autoencoder trains on one process (run it without torchrun)")
    tc = config.train
    return AutoencoderObjective(config.data.transform(), tc.kl_weight, tc.feature_weight, features)


@register_objective("hybrid")
def _hybrid(config: RunConfig, sde: SDE, *, teacher: ScoreFn | None, world: int) -> Objective:
    tc = config.train
    return HybridObjective(sde, tc.n_steps, tc.vlb_weight, tc.t_min, tc.vlb_importance_sampling, world)


@register_objective("progressive")
def _progressive(config: RunConfig, sde: SDE, *, teacher: ScoreFn | None, world: int) -> Objective:
    return ProgressiveDistillation(sde, _teacher(sde, teacher, "progressive"), config.distill.steps)


@register_objective("consistency")
def _consistency(config: RunConfig, sde: SDE, *, teacher: ScoreFn | None, world: int) -> Objective:
    d = config.distill
    return ConsistencyDistillation(
        sde, _teacher(sde, teacher, "consistency"), d.n_times, d.solver, d.distance, d.target_ema
    )


@register_objective("consistency_training")
def _consistency_training(config: RunConfig, sde: SDE, *, teacher: ScoreFn | None, world: int) -> Objective:
    return ConsistencyTraining(sde, config.train.steps, config.distill.distance)


def _teacher(sde: SDE, teacher: ScoreFn | None, name: str) -> ScoreFn:
    """The teacher as a score function: an eps / x0 / v model converted here, a consistency model refused."""
    if teacher is None:
        raise ValueError(f"the {name} objective needs a teacher (a run folder or oracle:<toy>: distill.teacher)")
    return as_score(sde, teacher, f"the {name} objective's teacher")


def objective_name(config: RunConfig) -> str:
    """The objective of a run: the one its kind declares (`scoresde.training.kinds.RunKind.objective`)."""
    return run_kind(config).objective


def needs_teacher(config: RunConfig) -> bool:
    """Whether the run's objective distils a teacher (its kind declares it: progressive and consistency)."""
    return run_kind(config).teacher


def build_objective(
    config: RunConfig,
    sde: SDE,
    *,
    teacher: ScoreFn | None = None,
    world: int = 1,
    features: nn.Module | None = None,
) -> Objective:
    """The objective of ``config`` (`objective_name`) under ``sde``; ``teacher``: the score a distillation learns
    from (the caller loads it: `scoresde.training.runs.load_teacher`); ``world``: the number of processes;
    ``features``: an autoencoder's feature network for ``train.feature_weight`` (the caller loads it)."""
    name = check_in_registry("objective", objective_name(config), objectives())
    extra = {"features": features} if name == "autoencoder" else {}
    return _OBJECTIVES[name](config, sde, teacher=teacher, world=world, **extra)


def _gathered(index: Tensor, values: Tensor, world: int) -> tuple[Tensor, Tensor]:
    """``(index, values)`` of every rank, concatenated in rank order (the tensors themselves on one process)."""
    if world == 1:
        return index, values
    import torch.distributed as dist

    parts = [torch.empty_like(index) for _ in range(world)], [torch.empty_like(values) for _ in range(world)]
    dist.all_gather(parts[0], index)
    dist.all_gather(parts[1], values)
    return torch.cat(parts[0]), torch.cat(parts[1])
