"""The model of a run: built from its config as its kind declares, loaded from its checkpoint (the EMA weights), a
distillation's teacher (a run folder or an oracle), and the score moments the analytic variance reads."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..config.schema import DataConfig, RunConfig
from ..datasets import toy_dataset, toy_datasets
from ..models import ScoreModel, create_model
from ..models.consistency import ConsistencyModel
from ..processes.artefacts import belongs_to, mismatch
from ..processes.base import SDE
from ..processes.reverse_variance import ScoreMoments, score_moments
from ..processes.score import ScoreFn
from ..processes.seam import SCORE_OUTPUTS, require, spec_of
from .checkpoint import CheckpointError, check_checkpoint, load_checkpoint
from .kinds import run_kind
from .stages import run_images

__all__ = ["build_model", "wrap_network", "load_score_model", "load_teacher", "run_score_moments"]


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
    """The model of ``config`` (network initialised from ``train.seed``), on ``device``, as its run kind wraps it
    (`scoresde.training.kinds.RunKind.wrap`): a `ScoreModel`, a `ConsistencyModel`, an autoencoder's network."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        net = create_model(config.model.name, **config.model.kwargs)
    return wrap_network(config, sde, net.to(device))


def wrap_network(config: RunConfig, sde: SDE, net: nn.Module) -> ScoreModel | ConsistencyModel:
    """``net`` as the run's model, as its kind declares (`scoresde.training.kinds.RunKind.wrap`): a consistency
    function for the consistency methods, the network itself for an autoencoder, else a score model."""
    return run_kind(config).wrap(config, sde, net)


def load_score_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[ScoreModel, RunConfig, int]:
    """The EMA model of a checkpoint (eval mode; a `ConsistencyModel` for a consistency run, a `LatentModel` carrying
    its autoencoder for a latent run, the `scoresde.models.KLAutoencoder` of an autoencoder run), its config and
    step. A latent run whose autoencoder is missing is a one-line `CheckpointError`."""
    state = load_checkpoint(path, device)
    config = state["config"]
    model = build_model(config, config.sde.build(), device)
    check_checkpoint(state, model, path)  # the whole file, as a resume checks it, though only the EMA is read
    model.load_state_dict(state["ema"])
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    return run_kind(config).loaded(model.eval(), config, folder, device), config, state["step"]


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
