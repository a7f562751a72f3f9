"""Run kinds: what a run is, declared once.

A run's kind (``config.kind``) says how its model is built and wrapped, which objective trains it, what its data
stream adds (an autoencoder's latents, low-resolution conditions), how it samples by default (its
`scoresde.samplers.Recipe`), which likelihood or bound applies, whether it trains under torchrun / DDP, whether it
learns from a teacher, and what follows training (a measured scaling factor). The Trainer, the run loaders and the
commands ask the kind and never a config field (like EDM's training loop, which is handed a network and a loss and
never asks what they are).

A config written before kinds were declared (``kind: null``) is read as the kind its other sections describe
(`infer_kind`); a declared kind that contradicts them is a one-line ``ValueError``. This module is the one place
that decides on ``model.name``, ``stage.autoencoder``, ``stage.low_resolution``, ``distill.method`` and
``learn_variance``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_in_registry
from ..config.schema import RunConfig
from ..models import LatentModel, ScoreModel
from ..models.consistency import ConsistencyModel
from ..models.flow_map import FlowMapModel
from ..processes.base import SDE
from ..samplers.recipe import Recipe

__all__ = [
    "RunKind",
    "register_run_kind",
    "run_kinds",
    "get_run_kind",
    "run_kind",
    "infer_kind",
]

_RUN_KINDS: dict[str, RunKind] = {}


def register_run_kind(cls: type[RunKind]) -> type[RunKind]:
    """Class decorator: register one instance of the `RunKind` subclass ``cls`` under ``cls.name``."""
    if not cls.name or cls.name in _RUN_KINDS:
        raise ValueError(f"run kind {cls.name!r} is empty or registered twice")
    _RUN_KINDS[cls.name] = cls()
    return cls


def run_kinds() -> list[str]:
    """The registered run kinds' names."""
    return sorted(_RUN_KINDS)


def get_run_kind(name: str) -> RunKind:
    """The run kind called ``name``; an unknown name is a ``ValueError`` listing the valid ones."""
    return _RUN_KINDS[check_in_registry("run kind", name, run_kinds())]


def infer_kind(config: RunConfig) -> str:
    """The kind a config's sections describe (what a config written before ``kind`` existed means): an autoencoder
    network, a latent or super-resolution stage, a distillation method, a learned variance, else a score model."""
    if config.model.name == "kl_autoencoder":
        return "autoencoder"
    if config.stage.autoencoder:
        return "latent"
    if config.stage.low_resolution:
        return "super_resolution"
    if config.distill.method is not None:
        return config.distill.method
    return "learned_variance" if config.model.kwargs.get("learn_variance") else "score"


def run_kind(config: RunConfig) -> RunKind:
    """The `RunKind` of ``config``: its declared ``kind``, checked against what its sections describe, or (``kind:
    null``) the kind they describe."""
    described = infer_kind(config)
    if config.kind is None:
        return _RUN_KINDS[described]
    kind = get_run_kind(config.kind)
    if described != kind.name:
        raise ValueError(
            f"kind: {kind.name} {kind.requires}, but this config's other sections describe a {described} run: set "
            f"kind: {described} (--set kind={described}) or change those sections"
        )
    return kind


class RunKind:
    """One kind of run. Subclasses set the class attributes and override the hooks they need; the defaults are a
    score model trained by denoising score matching on the run's data, sampled by DPM-Solver, evaluated by the
    PF-ODE likelihood."""

    name: str = ""
    objective: str = "dsm"
    """The registered objective that trains it (`scoresde.training.objectives`)."""
    requires: str = "is a score model: no stage, distillation or learned variance"
    """What a config of this kind sets (the one-line error when a declared kind contradicts its sections)."""
    distributed: bool = True
    """Whether it trains under torchrun (DDP)."""
    teacher: bool = False
    """Whether its objective learns from a teacher (``distill.teacher``)."""
    student: bool = False
    """Whether it is a few-step student that samples its own way (its `recipe`: fixed for a distilled consistency or
    progressive student; a flow map's other samplers take its diagonal)."""
    bound: str | None = None
    """The bits/dim bound its likelihood is (``latent``, ``cascade``), or None: the exact PF-ODE likelihood."""
    measures: tuple[str, ...] = ("likelihood", "samples")
    """What evaluation while training measures on its EMA model (`evaluates`)."""

    def evaluates(self, config: RunConfig) -> tuple[str, ...]:
        """What evaluation while training measures on this run's EMA model (`scoresde.evaluation.during_training`):
        its ``likelihood`` (bits/dim, or the toy's NLL) and the quality of its ``samples`` (images at a reduced
        ``data.resolution``, a cascade's base, have no shipped feature network: their samples are not measured)."""
        if config.data.resolution is not None:
            return tuple(m for m in self.measures if m != "samples")
        return self.measures

    def wrap(self, config: RunConfig, sde: SDE, net: nn.Module) -> Any:
        """``net`` as the run's model (what the objective trains and the samplers call)."""
        return ScoreModel(net, sde, config.model.parameterization, config.model.sigma_data)

    def loaded(self, model: Any, config: RunConfig, folder: Path, device: torch.device | str) -> Any:
        """The loaded run's model, with what it carries from other runs (a latent model's decoder)."""
        return model

    def network(self, model: Any) -> nn.Module:
        """The network inside the run's model (`wrap` inverted): what DDP and compilation wrap."""
        return model.net

    def prepare_data(self, stream: Any, config: RunConfig, device: torch.device | str, folder: Path | None) -> None:
        """What the data stream adds to an image run's batches (latents, low-resolution images); nothing by default."""

    def recipe(self, config: RunConfig, steps: int | None = None) -> Recipe | None:
        """How the run samples by default (`scoresde.samplers.Recipe`; a student's is ``fixed``), given the user's
        ``steps``; None: any sampler, the user's choice (`scoresde.samplers.choose_recipe` picks DPM-Solver)."""
        return None

    def student_steps(self, config: RunConfig, counts: tuple[int, ...]) -> tuple[int, ...]:
        """The step counts a comparison samples a student at."""
        return counts

    def student_network(self, model: dict) -> dict:
        """A teacher's network arguments (``model``: its config's ``model`` section) as this student's: without a
        learned-variance channel."""
        return {k: v for k, v in model["kwargs"].items() if k != "learn_variance"}

    def after_training(self, folder: Path, device: torch.device | str) -> dict:
        """What follows training, written into the run folder; returns its summary."""
        return {}

    def __repr__(self) -> str:
        return f"RunKind({self.name!r})"


@register_run_kind
class Score(RunKind):
    name = "score"


@register_run_kind
class LearnedVariance(RunKind):
    name = "learned_variance"
    objective = "hybrid"
    requires = "learns the reverse variance: set model.kwargs.learn_variance: true"


@register_run_kind
class Autoencoder(RunKind):
    name = "autoencoder"
    objective = "autoencoder"
    measures = ()
    requires = "trains a KL autoencoder: set model.name: kl_autoencoder"
    distributed = False

    def wrap(self, config: RunConfig, sde: SDE, net: nn.Module) -> Any:
        return net

    def network(self, model: Any) -> nn.Module:
        return model

    def after_training(self, folder: Path, device: torch.device | str) -> dict:
        """The scaling factor, measured on the training latents and stored in the run (`load_autoencoder`)."""
        from .stages import load_autoencoder

        codec, _ = load_autoencoder(folder, device=device)
        return {"scaling_factor": codec.scaling_factor}


@register_run_kind
class Latent(RunKind):
    name = "latent"
    requires = "models an autoencoder's latents: set stage.autoencoder"
    bound = "latent"

    def loaded(self, model: Any, config: RunConfig, folder: Path, device: torch.device | str) -> Any:
        from .checkpoint import CheckpointError
        from .stages import load_autoencoder

        try:
            codec, _ = load_autoencoder(config.stage.autoencoder, config.data, device, folder)
        except ValueError as exc:
            raise CheckpointError(f"{folder} is a latent model that decodes with its autoencoder, and {exc}") from None
        return LatentModel(model, codec)

    def prepare_data(self, stream: Any, config: RunConfig, device: torch.device | str, folder: Path | None) -> None:
        """Posteriors of the training images, computed once: every batch draws fresh latents from them."""
        from .stages import encode_images, load_autoencoder

        codec, _ = load_autoencoder(config.stage.autoencoder, config.data, device, folder)
        stream.posterior = encode_images(codec, stream.transform.to_model(stream.images + 0.5), device)
        stream.shape = codec.latent_shape


@register_run_kind
class SuperResolution(RunKind):
    name = "super_resolution"
    objective = "super_resolution"
    measures = ("likelihood",)

    def evaluates(self, config: RunConfig) -> tuple[str, ...]:
        """Its bits/dim bound, which needs the base run (``stage.base``) that draws its condition."""
        return self.measures if config.stage.base else ()

    requires = "is a cascade's super-resolution stage: set stage.low_resolution"
    bound = "cascade"

    def prepare_data(self, stream: Any, config: RunConfig, device: torch.device | str, folder: Path | None) -> None:
        """Each image's low-resolution version, dequantised on its own, in ``batch.low``."""
        from ..datasets.images import downsample_levels

        stream.low = downsample_levels(stream.images, config.stage.low_resolution)


class _Distilled(RunKind):
    student = True
    measures = ("samples",)

    @property
    def requires(self) -> str:  # type: ignore[override]
        return f"is a distilled student: set distill.method: {self.name}"


@register_run_kind
class Progressive(_Distilled):
    name = objective = "progressive"
    teacher = True

    def recipe(self, config: RunConfig, steps: int | None = None) -> Recipe:
        """DDIM on its log-SNR grid, exactly its steps, without the final denoising evaluation (NFE = steps)."""
        own = config.distill.steps
        if steps is not None and steps != own:
            raise ValueError(
                f"this progressive student was distilled for {own} DDIM steps, not {steps}: sample it with "
                f"--steps {own} (or distil another round)"
            )
        return Recipe("ddim", own, "log_snr", options={"denoise": False}, fixed=True)

    def student_steps(self, config: RunConfig, counts: tuple[int, ...]) -> tuple[int, ...]:
        return (config.distill.steps,)


class _Consistency(_Distilled):
    def wrap(self, config: RunConfig, sde: SDE, net: nn.Module) -> Any:
        return ConsistencyModel(net, sde, sde.sampling_t_min, config.model.sigma_data)

    def recipe(self, config: RunConfig, steps: int | None = None) -> Recipe:
        """Multistep consistency sampling, at most ``n_times - 1`` steps."""
        limit = config.distill.n_times - 1
        if steps is not None and steps > limit:
            raise ValueError(
                f"this consistency model was distilled on {config.distill.n_times} times: at most {limit} steps, got "
                f"{steps}"
            )
        return Recipe("consistency", steps or config.distill.steps, fixed=True)


@register_run_kind
class Consistency(_Consistency):
    name = objective = "consistency"
    teacher = True


@register_run_kind
class ConsistencyTraining(_Consistency):
    name = objective = "consistency_training"


class _FlowMap(RunKind):
    """A flow map (`scoresde.models.FlowMapModel`): sampled by its own map in K jumps by default, and, through its
    diagonal (a score), by every other sampler and the exact likelihood."""

    measures = ("likelihood", "samples")
    student = True

    @property
    def requires(self) -> str:  # type: ignore[override]
        return f"is a flow map: set distill.method: {self.name} and model.kwargs.two_times: true"

    def wrap(self, config: RunConfig, sde: SDE, net: nn.Module) -> Any:
        return FlowMapModel(net, sde, config.model.sigma_data)

    def student_network(self, model: dict) -> dict:
        """The teacher's network with a second time input (the map's target time); an MLP's time features at scale
        1 (the objective's JVP differentiates them: at 16, the toys' default, a 2D Gaussian's map to t_min stayed
        3-10x further off)."""
        kwargs = {**super().student_network(model), "two_times": True}
        return {**kwargs, "emb_scale": 1.0} if model["name"] == "mlp" else kwargs

    def recipe(self, config: RunConfig, steps: int | None = None) -> Recipe:
        """``steps`` jumps of the map (the run's ``distill.steps`` by default) on EDM's grid."""
        if steps is not None and steps < 1:
            raise ValueError(f"a flow map samples in K >= 1 steps, got {steps}")
        return Recipe("flow_map", steps or config.distill.steps)


@register_run_kind
class FlowMap(_FlowMap):
    name = objective = "flow_map"
    teacher = True


@register_run_kind
class FlowMapTraining(_FlowMap):
    name = objective = "flow_map_training"
