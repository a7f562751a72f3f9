"""The model of a run: built from its config, loaded from its checkpoint (the EMA weights), a distillation's
teacher (a run folder or an oracle), and the stages a run names: a latent model's autoencoder (with its measured
scaling factor, stored in the autoencoder's run as ``latents.json``) and a super-resolution stage's base."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .._io import write_atomic
from ..config.schema import DataConfig, RunConfig
from ..datasets import image_dataset, toy_dataset, toy_datasets
from ..datasets.images import downsample_levels
from ..models import LatentCodec, LatentModel, ScoreModel, create_model
from ..models.consistency import ConsistencyModel
from ..processes.artefacts import belongs_to, mismatch
from ..processes.reverse_variance import ScoreMoments, score_moments
from ..processes.sde import SDE, ScoreFn
from ..processes.seam import SCORE_OUTPUTS, require, spec_of
from .checkpoint import CheckpointError, load_checkpoint, load_weights

__all__ = [
    "build_model",
    "wrap_network",
    "load_score_model",
    "load_teacher",
    "run_score_moments",
    "load_autoencoder",
    "encode_images",
    "scaling_factor",
    "stage_path",
    "run_images",
    "LATENTS_FILE",
]

LATENTS_FILE = "latents.json"
"""The autoencoder run's artefact: the scaling factor measured on its training latents and what it belongs to."""


def load_teacher(config, device: torch.device | str = "cpu") -> ScoreFn:
    """The teacher of a distillation run's ``config.distill.teacher``: ``oracle:<toy>`` (that toy's exact score under
    the run's SDE; the run's data must be that toy) or a run folder whose SDE and data are the run's (its EMA model,
    frozen). Anything else: a one-line ``ValueError``."""
    spec = config.distill.teacher
    if spec.startswith("oracle:"):
        name = spec.removeprefix("oracle:")
        exact = [toy for toy in toy_datasets() if getattr(toy_dataset(toy), "oracle", None) is not None]
        if name not in exact:
            raise ValueError(
                f"teacher {spec!r}: no toy with an exact score is called {name!r}; valid: {', '.join(exact)}"
            )
        if config.data.kind != "toy" or config.data.name != name:
            raise ValueError(
                f"teacher {spec!r} is the exact score of {name}, but the student's data is {config.data.name}"
            )
        return toy_dataset(name).oracle.score_fn(config.sde.build())

    try:
        teacher, teacher_config, _ = load_score_model(Path(spec), device)
    except CheckpointError as exc:
        raise ValueError(f"teacher {spec!r}: {exc}") from None
    require(teacher, f"teacher {spec!r}", output=SCORE_OUTPUTS)  # its declaration, not its config
    if teacher_config.data != config.data:
        raise ValueError(
            f"teacher {spec!r} was trained on {teacher_config.data.name} ({teacher_config.data.kind}), the student's "
            f"data is {config.data.name} ({config.data.kind}): distil on the teacher's data"
        )
    if teacher_config.sde != config.sde:
        raise ValueError(f"teacher {spec!r} has SDE {teacher_config.sde}, the student's config {config.sde}")
    return teacher.requires_grad_(False)


def build_model(config: RunConfig, sde: SDE, device: torch.device | str = "cpu") -> ScoreModel | ConsistencyModel:
    """The model of ``config`` (network initialised from ``train.seed``), on ``device``: a `ScoreModel`, or a
    `scoresde.training.distillation.ConsistencyModel` for a consistency run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        net = create_model(config.model.name, **config.model.kwargs)
    return wrap_network(config, sde, net.to(device))


def wrap_network(config: RunConfig, sde: SDE, net: nn.Module) -> ScoreModel | ConsistencyModel:
    """``net`` as the run's model: a consistency function for the consistency methods, the network itself for an
    autoencoder, else a score model."""
    if config.is_autoencoder:
        return net
    if config.distill.method in ("consistency", "consistency_training"):
        return ConsistencyModel(net, sde, sde.sampling_t_min, config.model.sigma_data)
    return ScoreModel(net, sde, config.model.parameterization, config.model.sigma_data)


def load_score_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[ScoreModel, RunConfig, int]:
    """The EMA model of a checkpoint (eval mode; a `ConsistencyModel` for a consistency run, a `LatentModel` carrying
    its autoencoder for a latent run, the `scoresde.models.KLAutoencoder` of an autoencoder run), its config and
    step. A latent run whose autoencoder is missing is a one-line `CheckpointError`."""
    state = load_checkpoint(path, device)
    config = state["config"]
    model = build_model(config, config.sde.build(), device)
    load_weights(model, state["ema"], path, "ema")
    model = model.eval()
    if config.stage.autoencoder:
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        try:
            codec, _ = load_autoencoder(config.stage.autoencoder, config.data, device, folder)
        except ValueError as exc:
            raise CheckpointError(f"{path} is a latent model that decodes with its autoencoder, and {exc}") from None
        model = LatentModel(model, codec)
    return model, config, state["step"]


def stage_path(spec: str | Path, folder: str | Path | None) -> Path:
    """The run folder ``spec`` that a run names (its autoencoder, its base): a relative path is looked up in the
    run's ``folder`` first (a preset's stages live inside it), then from the working directory."""
    path = Path(spec)
    if not path.is_absolute() and folder is not None and (Path(folder) / path).exists():
        return Path(folder) / path
    return path


def run_images(data: DataConfig, split: str) -> Tensor:
    """A run's integer images of ``split`` at the run's resolution (``data.resolution``)."""
    images = image_dataset(data.name, split, data.data_dir, data.split_seed).x
    return images if data.resolution is None else downsample_levels(images, data.resolution)


def encode_images(
    codec: LatentCodec, x: Tensor, device: torch.device | str, batch_size: int = 500
) -> tuple[Tensor, Tensor]:
    """The posteriors ``(mean, std)`` over scaled latents of model-range images ``x``, in batches, without grad."""
    means, stds = [], []
    dtype = next(iter(codec.autoencoder.parameters())).dtype if isinstance(codec.autoencoder, nn.Module) else x.dtype
    with torch.no_grad():
        for chunk in x.split(batch_size):
            mean, std = codec.posterior(chunk.to(device=device, dtype=dtype))
            means.append(mean)
            stds.append(std)
    return torch.cat(means), torch.cat(stds)


def scaling_factor(
    autoencoder: nn.Module, x: Tensor, device: torch.device | str, generator: torch.Generator | None = None
) -> float:
    r"""$c = 1/\mathrm{std}(z)$ over one posterior draw of each model-range image of ``x`` (Latent Diffusion's
    ``scale_factor``): the scaled latents $c\,z$ have unit variance overall."""
    mean, std = encode_images(LatentCodec(autoencoder), x, device)
    z = mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
    return float(1.0 / z.double().std())


def load_autoencoder(
    spec: str | Path,
    data: DataConfig | None = None,
    device: torch.device | str = "cpu",
    folder: str | Path | None = None,
) -> tuple[LatentCodec, RunConfig | None]:
    """The autoencoder run (or diffusers ``AutoencoderKL`` folder) ``spec`` as a `LatentCodec` with its scaling factor,
    and its config (None for a diffusers folder). The factor is read from the run's ``latents.json``, or measured on
    its training images (`scaling_factor`) and stored there (atomically; kept in memory where the folder is
    read-only). With ``data`` (the latent run's), an autoencoder trained on other data or another image size is a
    one-line ``ValueError``; so is one that does not exist or is not an autoencoder."""
    from .interop import is_diffusers_autoencoder, load_diffusers_autoencoder

    path = stage_path(spec, folder)
    if is_diffusers_autoencoder(path):
        return load_diffusers_autoencoder(path, device), None
    if not (path / "checkpoint.safetensors").is_file() and not path.is_file():
        raise ValueError(f"the autoencoder run {spec} does not exist (no checkpoint at {path}); train it first")
    try:
        state = load_checkpoint(path, device)
    except CheckpointError as exc:
        raise ValueError(f"the autoencoder {spec}: {exc}") from None
    config = state["config"]
    if not config.is_autoencoder:
        raise ValueError(f"{spec} is not an autoencoder run (its model is {config.model.name}); train one first")
    if data is not None:
        ours, theirs = (data.name, data.resolution, data.split_seed), (
            config.data.name, config.data.resolution, config.data.split_seed)  # fmt: skip
        if ours != theirs:
            raise ValueError(
                f"the autoencoder {spec} was trained on {config.data.name} (resolution {config.data.resolution}, "
                f"split seed {config.data.split_seed}), this run's data is {data.name} (resolution {data.resolution}, "
                f"split seed {data.split_seed}): train an autoencoder on this data"
            )
    net = create_model(config.model.name, **config.model.kwargs).to(device)
    load_weights(net, state["ema"], path, "ema")
    net = net.eval().requires_grad_(False)
    run = path if path.is_dir() else path.parent
    factor = _stored_scaling_factor(run / LATENTS_FILE, state["step"])
    if factor is None:
        images = run_images(config.data, "train")
        x = config.data.transform().to_model(images + 0.5)
        factor = scaling_factor(net, x, device, torch.Generator().manual_seed(0))
        record = {"scaling_factor": factor, "step": state["step"], "data": config.data.name,
                  "latent_shape": list(net.latent_shape), "images": len(images)}  # fmt: skip
        try:
            write_atomic(run / LATENTS_FILE, (json.dumps(record, indent=1) + "\n").encode())
        except OSError:  # a read-only run: measured again next time
            pass
    return LatentCodec(net, factor), config


def _stored_scaling_factor(path: Path, step: int) -> float | None:
    """The scaling factor in ``latents.json`` when it was measured at this checkpoint's ``step``, else None."""
    try:
        record = json.loads(path.read_text())
        if int(record["step"]) == step and float(record["scaling_factor"]) > 0:
            return float(record["scaling_factor"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def run_score_moments(
    folder: str | Path,
    model: ScoreFn,
    sde: SDE,
    data: DataConfig | None,
    grid: Tensor,
    key: str,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ScoreMoments:
    r"""The table of $\Gamma_t = E|s|^2/d$ at the ``grid`` times that the analytic reverse variance needs, from 2,000
    training points of the run's ``data`` (drawn with ``seed``) perturbed to each time, cached in the run
    ``folder`` as ``score_moments-<key>.safetensors`` with what it belongs to (recomputed and replaced when it was
    computed for another SDE, data set or model, e.g. before the run trained on; recomputed every time when the
    folder is read-only). A one-line
    ``ValueError`` when the data set is unknown (an imported model)."""
    cache = Path(folder) / f"score_moments-{key}.safetensors"
    record = belongs_to(sde, model, None if data is None else data.name)
    if cache.is_file():
        try:
            cached = ScoreMoments.load(cache)
        except ValueError:
            cached = None  # a damaged cache is recomputed
        if cached is not None and isinstance(cached.belongs_to, dict) and mismatch(cached.belongs_to, record) is None:
            return cached
    if data is None:
        raise ValueError("the analytic variance needs the model's training data, and this model's data set is unknown")
    if data.kind == "toy":
        x0 = toy_dataset(data.name).sample(2000, torch.Generator().manual_seed(seed))
    else:
        x0 = data.transform().to_model(run_images(data, "train")[:2000].float() + 0.5)
        if spec_of(model).decoder:  # a latent model's data are its latents
            with torch.no_grad():
                x0 = model.codec.encode(x0.to(device), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        moments = score_moments(sde, model, x0.to(device), grid, generator=torch.Generator().manual_seed(0))
    moments.belongs_to = record
    try:
        moments.save(cache)
    except OSError:  # a read-only run folder: the table is recomputed next time
        pass
    return moments
