"""Typed run configs: frozen dataclasses per concern, composed into `RunConfig`, with named presets.

Every field is validated when a config is built (an invalid value names its field); configs load from
and save to YAML or TOML, and ``override(config, "train.lr=1e-3", ...)`` changes fields one by one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml

from ..models.parameterization import PARAMETERIZATIONS
from ..models.registry import models
from ..processes.base import SDE, create_sde, sde_names
from ..processes.vp import VPSDE
from .fields import ConfigError
from .fields import check_types as _check_types
from .fields import require as _require
from .train import TrainConfig

__all__ = [
    "SDEConfig",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "DistillConfig",
    "StageConfig",
    "RunConfig",
    "override",
    "config_from_dict",
    "ConfigError",
]


def yaml_error_line(exc: yaml.YAMLError) -> str:
    """A YAML syntax error in one line: the problem and where it is (PyYAML's own message spans several)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


@dataclass(frozen=True)
class SDEConfig:
    """The forward SDE: a registered ``name`` (`scoresde.processes.base.sde_names`: ``vp`` with ``schedule`` linear |
    cosine,
    ``vp-cosine``, ``subvp``, ``ve``) and the parameters its constructor takes (the others are not used)."""

    name: str = "vp"
    schedule: str = "linear"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000

    def __post_init__(self) -> None:
        _check_types(self, "sde")
        _require(self.name in sde_names(), "sde.name", f"{self.name!r} is not one of {', '.join(sde_names())}")
        _require(
            self.schedule in VPSDE.SCHEDULES,
            "sde.schedule",
            f"{self.schedule!r} is not one of {', '.join(VPSDE.SCHEDULES)}",
        )
        _require(
            0 < self.beta_min < self.beta_max,
            "sde.beta_min",
            f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}",
        )
        _require(
            0 < self.sigma_min < self.sigma_max,
            "sde.sigma_min",
            f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}",
        )
        _require(isinstance(self.N, int) and self.N > 0, "sde.N", f"must be a positive integer, got {self.N!r}")

    def build(self) -> SDE:
        """The SDE of the one name registry (`scoresde.processes.base.create_sde`), from the fields its constructor
        takes."""
        params = {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}
        return create_sde(self.name, **params)


@dataclass(frozen=True)
class ModelConfig:
    """The score network: a registered ``name`` (mlp, ddpm_unet, ncsn), its ``parameterization`` and constructor
    ``kwargs``."""

    name: str = "mlp"
    parameterization: str = "eps"
    kwargs: dict = field(default_factory=dict)
    sigma_data: float = 0.5
    """Standard deviation of the data in the model's range, for the ``edm`` parameterisation (EDM's 0.5 for images
    in [-1, 1])."""

    def __post_init__(self) -> None:
        _check_types(self, "model")
        _require(self.name in models(), "model.name", f"{self.name!r} is not one of {', '.join(models())}")
        _require(
            self.parameterization in PARAMETERIZATIONS,
            "model.parameterization",
            f"{self.parameterization!r} is not one of {', '.join(PARAMETERIZATIONS)}",
        )
        _require(isinstance(self.kwargs, dict), "model.kwargs", "must be a mapping of constructor arguments")
        _require(self.sigma_data > 0, "model.sigma_data", f"must be > 0, got {self.sigma_data!r}")


@dataclass(frozen=True)
class DataConfig:
    """The data: a 2D toy (``kind="toy"``, an infinite stream) or an image set (``kind="image"``: digits, mnist,
    cifar10)."""

    kind: str = "toy"
    name: str = "8gaussians"
    data_dir: str | None = None
    split_seed: int = 0
    low: float = -1.0
    high: float = 1.0
    dequantize: bool = True
    resolution: int | None = None
    """Image sets: train on the images average-pooled to ``resolution`` x ``resolution`` (rounded to the levels): a
    cascade's base stage (null: full size)."""

    def __post_init__(self) -> None:
        from ..datasets import image_datasets, toy_datasets

        _check_types(self, "data")
        _require(
            self.resolution is None or (self.kind == "image" and self.resolution > 0),
            "data.resolution",
            f"must be null or a positive size of an image set, got {self.resolution!r}",
        )
        _require(self.kind in ("toy", "image"), "data.kind", f"{self.kind!r} is not one of toy, image")
        valid = toy_datasets() if self.kind == "toy" else image_datasets()
        _require(
            self.name in valid, "data.name", f"{self.name!r} is not a {self.kind} data set; valid: {', '.join(valid)}"
        )
        _require(self.high > self.low, "data.low", f"the model range needs high > low, got [{self.low}, {self.high}]")

    def transform(self):
        """The `DataTransform` between an image set's levels and the model range
        (``None`` for toys, which the model sees as they are)."""
        from ..datasets import DataTransform
        from ..datasets.images import LEVELS

        return DataTransform(LEVELS[self.name], self.low, self.high) if self.kind == "image" else None


TEACHER_SOLVERS = ("heun", "ddim")
"""Consistency distillation's teacher ODE steps (`scoresde.training.distillation.teacher_step`)."""
CONSISTENCY_DISTANCES = ("l2", "pseudo_huber")
"""Consistency losses' distances (`scoresde.training.distillation.consistency_loss`)."""
FLOW_TIMES = ("logit_normal", "uniform")  # scoresde.training.flow_map.TIME_SAMPLINGS
FLOW_IDENTITIES = ("eulerian", "lagrangian")  # scoresde.training.flow_map.IDENTITIES
DISTILLATION_METHODS = (  # scoresde.training.distillation's and .flow_map's
    "progressive",
    "consistency",
    "consistency_training",
    "flow_map",
    "flow_map_training",
)


@dataclass(frozen=True)
class DistillConfig:
    """A distillation run (`scoresde.training.distillation`): the student (``model``) learns from ``teacher`` by
    ``method``;
    ``method: null`` (the default) is ordinary training."""

    method: str | None = None
    """``progressive``, ``consistency``, ``flow_map`` (distillation) or ``consistency_training``,
    ``flow_map_training`` (no teacher)."""
    teacher: str | None = None
    """The teacher: a run folder, or ``oracle:<toy>`` (that toy's exact score under this run's SDE)."""
    steps: int = 1
    """The student's steps: progressive, its DDIM steps (the teacher takes twice as many); consistency, the
    sampler's default."""
    n_times: int = 18
    """Consistency distillation: the discretisation's number of times N (training follows the curriculum)."""
    solver: str = "heun"
    """Consistency distillation: the teacher's ODE step, ``heun`` or ``ddim``."""
    distance: str = "l2"
    """Consistency: ``l2`` or ``pseudo_huber``."""
    target_ema: float = 0.95
    """Consistency distillation: decay of the target network's EMA (0: the student itself, stop-gradient)."""
    flow_ratio: float = 0.25
    """Flow maps: the fraction of draws with r < t (the others train the diagonal, r = t; MeanFlow's 25 %)."""
    flow_times: str = "uniform"
    """Flow maps: how (t, r) are drawn in rectified-flow time: ``uniform`` or MeanFlow's ``logit_normal`` (which rarely
    pairs a noisy start with a clean end: the distilled gmm map at 1 NFE 7.1x the floor against 1.5x)."""
    flow_time_mean: float = -0.4
    """Flow maps, ``logit_normal``: the mean of logit(tau) = log(sigma/alpha)."""
    flow_time_std: float = 1.0
    """Flow maps, ``logit_normal``: the standard deviation of logit(tau)."""
    flow_identity: str = "lagrangian"
    """Flow maps: the identity regressed, ``lagrangian`` (the map's end point moves with the velocity there: from a
    teacher, Align Your Flow's LMD; from data, the map's own diagonal as teacher, Boffi et al.'s Lagrangian
    self-distillation) or ``eulerian`` (MeanFlow's: the map is constant along its start's trajectory; the distilled
    gmm map at 1 / 2 NFE 3.5x / 2.9x the floor against 1.5x / 1.3x; `benchmarks/flow_map.py --section choices`)."""
    flow_adaptive_p: float | None = 0.0
    """Flow maps: MeanFlow's adaptive loss weight's power p, (|delta|^2 + 1e-3)^-p (0: the plain squared error; null:
    0 from data, 1 from a teacher). Measured: from data a weight that falls with the residual biases the regression
    on the noisy conditional target (gmm at 1 / 8 NFE 149x / 274x the floor with p = 1, 14x / 8.6x with p = 0);
    from a teacher it slows the far pairs' bootstrapping (MeanFlow's identity and times: 340x against 31x at 1 NFE)."""

    def __post_init__(self) -> None:
        _check_types(self, "distill")
        _require(
            self.method is None or self.method in DISTILLATION_METHODS,
            "distill.method",
            f"{self.method!r} is not one of {', '.join(DISTILLATION_METHODS)} (or null: no distillation)",
        )
        _require(
            self.method in (None, "consistency_training", "flow_map_training") or bool(self.teacher),
            "distill.teacher",
            f"method {self.method!r} needs a teacher: a run folder or oracle:<toy>",
        )
        _require(self.steps >= 1, "distill.steps", f"must be a positive integer, got {self.steps!r}")
        _require(self.n_times >= 2, "distill.n_times", f"must be an integer >= 2, got {self.n_times!r}")
        _require(
            self.solver in TEACHER_SOLVERS,
            "distill.solver",
            f"{self.solver!r} is not one of {', '.join(TEACHER_SOLVERS)}",
        )
        _require(
            self.distance in CONSISTENCY_DISTANCES,
            "distill.distance",
            f"{self.distance!r} is not one of {', '.join(CONSISTENCY_DISTANCES)}",
        )
        _require(0 <= self.target_ema < 1, "distill.target_ema", f"must lie in [0, 1), got {self.target_ema!r}")
        _require(0 <= self.flow_ratio <= 1, "distill.flow_ratio", f"must lie in [0, 1], got {self.flow_ratio!r}")
        _require(
            self.flow_times in FLOW_TIMES,
            "distill.flow_times",
            f"{self.flow_times!r} is not one of {', '.join(FLOW_TIMES)}",
        )
        _require(
            self.flow_identity in FLOW_IDENTITIES,
            "distill.flow_identity",
            f"{self.flow_identity!r} is not one of {', '.join(FLOW_IDENTITIES)}",
        )
        _require(self.flow_time_std > 0, "distill.flow_time_std", f"must be positive, got {self.flow_time_std!r}")
        _require(
            self.flow_adaptive_p is None or self.flow_adaptive_p >= 0,
            "distill.flow_adaptive_p",
            f"must be >= 0 (or null: 0 from data, 1 from a teacher), got {self.flow_adaptive_p!r}",
        )


@dataclass(frozen=True)
class StageConfig:
    """A run that is one stage of a larger model: a latent score model (its ``autoencoder``) or a cascade's
    super-resolution stage (its ``low_resolution`` condition and the ``base`` run that draws it). Run folders given
    as relative paths are looked up in the run's own folder first (a preset's stages live inside it)."""

    autoencoder: str | None = None
    """A latent score model: the autoencoder run (or diffusers ``AutoencoderKL`` folder) whose scaled latents it
    models and which decodes its samples."""
    low_resolution: int | None = None
    """A super-resolution stage: the size of the low-resolution image it is conditioned on (upsampled)."""
    base: str | None = None
    """A super-resolution stage: the run that draws its low-resolution images (``scoresde sample`` runs both)."""
    max_augmentation: float = 0.5
    """Conditioning augmentation: training draws the noise level uniformly in ``[0, max_augmentation]``."""
    augmentation: float = 0.0
    """Conditioning augmentation: the level at sampling time. Chosen by measurement (benchmarks/latent_cascade.py,
    MNIST, 5 min a stage on 2 CPU threads): FD-mnist 277 at 0 against 294 and 292 at 0.1 and 0.25; ``scoresde sample
    --augmentation`` picks another."""

    def __post_init__(self) -> None:
        _check_types(self, "stage")
        _require(
            self.low_resolution is None or self.low_resolution > 0,
            "stage.low_resolution",
            f"must be null or a positive size, got {self.low_resolution!r}",
        )
        _require(self.max_augmentation >= 0, "stage.max_augmentation", f"must be >= 0, got {self.max_augmentation!r}")
        _require(
            0 <= self.augmentation <= self.max_augmentation,
            "stage.augmentation",
            f"must lie in [0, max_augmentation = {self.max_augmentation:g}], got {self.augmentation!r}",
        )
        _require(
            self.base is None or self.low_resolution is not None,
            "stage.base",
            "names the base of a super-resolution stage: set stage.low_resolution too",
        )
        _require(
            not (self.autoencoder and self.low_resolution),
            "stage.autoencoder",
            "a run is a latent model or a super-resolution stage, not both",
        )


@dataclass(frozen=True)
class RunConfig:
    """One training run: its kind, SDE, model, data and optimisation (and, for a distilled student, its teacher)."""

    kind: str | None = None
    """What the run is (`scoresde.training.kinds`: ``score``, ``learned_variance``, ``autoencoder``, ``latent``,
    ``super_resolution``, ``progressive``, ``consistency``, ``consistency_training``): how its model is built, trained,
    sampled and evaluated. ``null`` (configs written before kinds were declared): read from the other sections."""
    sde: SDEConfig = field(default_factory=SDEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    stage: StageConfig = field(default_factory=StageConfig)

    def __post_init__(self) -> None:
        _require(
            self.kind is None or (isinstance(self.kind, str) and bool(self.kind)),
            "kind",
            f"must be a run kind's name (scoresde list shows them) or null, got {self.kind!r}",
        )
        if self.stage.autoencoder or self.stage.low_resolution:
            _require(self.data.kind == "image", "data.kind", "latent and super-resolution stages model image sets")
        if self.stage.low_resolution:
            _require(
                self.model.kwargs.get("cond_channels") == self.model.kwargs.get("in_channels", 1),
                "model.kwargs.cond_channels",
                "a super-resolution stage's network takes the low-resolution image as extra input channels: set "
                "model.kwargs.cond_channels to model.kwargs.in_channels",
            )
        if self.model.kwargs.get("learn_variance"):
            _require(
                self.train.n_steps is not None and self.train.weighting == "eps",
                "model.kwargs.learn_variance",
                "a learned variance trains with the hybrid loss on a discrete chain: set train.weighting: eps and "
                f"train.n_steps (e.g. 1000), got weighting {self.train.weighting!r}, n_steps {self.train.n_steps!r}",
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {f.name: f for f in dataclasses.fields(RunConfig) if f.name != "kind"}
_SCALARS = ("kind",)
"""Top-level fields that are values, not sections."""


_RENAMED_FIELDS = {("train", "eps"): "t_min"}
"""Fields renamed since configs were first written: old run folders (and their checkpoints) still load."""


def config_from_dict(data: dict) -> RunConfig:
    """Build a `RunConfig` from nested mappings; an unknown section or field is an error naming it."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections ({', '.join(_SECTIONS)}), got {type(data).__name__}")
    parts = {}
    for section, values in data.items():
        if section in _SCALARS:
            parts[section] = values
            continue
        _require(
            section in _SECTIONS, section, f"unknown section; valid sections are {', '.join((*_SCALARS, *_SECTIONS))}"
        )
        cls = _SECTION_TYPES[section]
        names = {f.name for f in dataclasses.fields(cls)}
        _require(isinstance(values, dict), section, "must be a mapping of fields")
        values = {_RENAMED_FIELDS.get((section, key), key): value for key, value in values.items()}
        for key in values:
            _require(key in names, f"{section}.{key}", f"unknown field; valid fields are {', '.join(sorted(names))}")
        try:
            parts[section] = cls(**_coerce_floats(cls, values))
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid config section {section!r}: {exc}") from None
    return RunConfig(**parts)


def _coerce_floats(cls: type, values: dict) -> dict:
    """YAML 1.1 reads ``1e-3`` as a string: turn numeric strings into floats for float fields."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    out = dict(values)
    for key, value in values.items():
        if isinstance(value, str) and "float" in kinds[key]:
            try:
                out[key] = float(value)
            except ValueError:
                raise ConfigError(
                    f"invalid config field '{cls.__name__.removesuffix('Config').lower()}.{key}': "
                    f"{value!r} is not a number"
                ) from None
    return out


_SECTION_TYPES = {
    "sde": SDEConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "distill": DistillConfig,
    "stage": StageConfig,
}


def override(config: RunConfig, *assignments: str) -> RunConfig:
    """A copy of ``config`` with ``"section.field=value"`` assignments applied (values parsed as YAML scalars;
    ``model.kwargs.width=128`` sets one constructor argument)."""
    data = config.to_dict()
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        path = key.strip().split(".")
        if not sep or (len(path) < 2 and path[0] not in _SCALARS):
            raise ConfigError(f"override {assignment!r} must look like section.field=value (e.g. train.lr=1e-3)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"override {assignment!r}: the value is not valid YAML ({yaml_error_line(exc)})"
            ) from None
        target = data
        for part in path[:-1]:
            _require(isinstance(target, dict) and part in target, key, f"unknown section or field {part!r}")
            target = target[part]
        _require(path[0] == "model" and path[1] == "kwargs" or path[-1] in target, key, "unknown field")
        target[path[-1]] = value
    return config_from_dict(data)
