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
``flow_map``               a flow map distilled from a teacher's probability-flow velocity (Lagrangian or Eulerian)
``flow_map_training``      a flow map from data alone: the path's velocity on the diagonal, self-distilled off it
``autoencoder``            a KL-regularised autoencoder: $[-\log p(x\mid z) + \beta\,\mathrm{KL}(q(z\mid x)\,\|\,
                           \mathcal N(0, I))]/D$ with the discretised decoder, optionally feature matching
``super_resolution``       DSM of a cascade's super-resolution stage given its low-resolution condition, with
                           Gaussian conditioning augmentation at a level drawn per row
=========================  ================================================================================

What an objective keeps between steps (the step sampler's history, the EMA target) is its `state_dict`, saved in the
checkpoint's ``extra`` tensors and restored by `load_state_dict`: one mechanism for every objective, so exact resume
holds for each. `build_objective` builds the objective a run's kind names (`scoresde.training.kinds`). The stages'
objectives (``autoencoder``, ``super_resolution``) live in `scoresde.training.stage_objectives`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .._checks import check_in_registry, registering
from ..config.schema import RunConfig
from ..processes.base import SDE
from ..processes.score import ScoreFn
from ..processes.seam import as_score
from .checkpoint import CheckpointError, load_weights, state_under
from .distillation import (
    consistency_curriculum,
    consistency_loss,
    init_from_teacher,
    progressive_grid,
    progressive_loss,
)
from .ema import EMA
from .flow_map import flow_map_loss
from .kinds import run_kind
from .losses import VLBTimeSampler, dsm_loss, hybrid_loss

__all__ = [
    "Batch",
    "Objective",
    "DenoisingScoreMatching",
    "HybridObjective",
    "ProgressiveDistillation",
    "ConsistencyDistillation",
    "ConsistencyTraining",
    "FlowMapObjective",
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
        saved = state_under(state, "time_sampler.")
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
            target = state_under(state, "target.")
            load_weights(self.ema.model, target, path, "consistency target")


class FlowMapObjective(Objective):
    """A flow-map identity (`scoresde.training.flow_map`: Lagrangian or MeanFlow's Eulerian): from data
    (``teacher=None``) or from a teacher's probability-flow velocity. It keeps no state between steps: every draw
    comes from the step's generator, so resume is exact."""

    def __init__(self, sde: SDE, teacher: ScoreFn | None, t_min: float, distill) -> None:
        self.sde, self.teacher, self.t_min = sde, teacher, t_min
        p = distill.flow_adaptive_p if distill.flow_adaptive_p is not None else (0.0 if teacher is None else 1.0)
        self.options = {"ratio": distill.flow_ratio, "sampling": distill.flow_times, "mean": distill.flow_time_mean,
                        "std": distill.flow_time_std, "adaptive_p": p, "identity": distill.flow_identity}  # fmt: skip

    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        return flow_map_loss(
            model, self.sde, batch.x0, generator, teacher=self.teacher, t_min=self.t_min, **self.options
        ).mean()

    def outputs(self, model: nn.Module, batch: Batch, sde: SDE) -> dict[str, Tensor]:
        """The diagonal (its eps) at half the horizon and at ``T``, and the map from ``T`` to ``t_min``."""
        out = super().outputs(model, batch, sde)
        times = torch.full((batch.x0.shape[0],), sde.T, dtype=batch.x0.dtype, device=batch.x0.device)
        out["map"] = model.map(batch.x0, times, torch.full_like(times, self.t_min))
        return out


@register_objective("dsm")
def _dsm(config: RunConfig, sde: SDE, *, teacher: ScoreFn | None, world: int) -> Objective:
    tc = config.train
    return DenoisingScoreMatching(sde, tc.weighting, tc.importance_sampling, tc.t_min, tc.n_steps)


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


@register_objective("flow_map")
def _flow_map(config: RunConfig, sde: SDE, *, teacher: ScoreFn | None, world: int) -> Objective:
    return FlowMapObjective(
        sde, _teacher(sde, teacher, "flow_map"), sde.check_t_min(config.train.t_min), config.distill
    )


@register_objective("flow_map_training")
def _flow_map_training(config: RunConfig, sde: SDE, *, teacher: ScoreFn | None, world: int) -> Objective:
    return FlowMapObjective(sde, None, sde.check_t_min(config.train.t_min), config.distill)


def _teacher(sde: SDE, teacher: ScoreFn | None, name: str) -> ScoreFn:
    """The teacher as a score function: an eps / x0 / v model converted here, a consistency model refused."""
    if teacher is None:
        raise ValueError(f"the {name} objective needs a teacher (a run folder or oracle:<toy>: distill.teacher)")
    return as_score(sde, teacher, f"the {name} objective's teacher", argument="teacher")


def objective_name(config: RunConfig) -> str:
    """The objective of a run: the one its kind declares (`scoresde.training.kinds.RunKind.objective`)."""
    return run_kind(config).objective


def needs_teacher(config: RunConfig) -> bool:
    """Whether the run's objective distils a teacher (its kind declares it: progressive, consistency, flow_map)."""
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
