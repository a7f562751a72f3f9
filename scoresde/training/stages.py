"""The other runs a run names (its stages): a latent model's autoencoder, with the scaling factor measured on its
training latents (stored in the autoencoder's run as ``latents.json``), and the folders a stage is looked up in."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .._io import write_atomic
from ..config.schema import DataConfig, RunConfig
from ..datasets import image_dataset
from ..datasets.images import downsample_levels
from ..models import KLAutoencoder, LatentCodec, create_model
from .checkpoint import CheckpointError, check_checkpoint, load_checkpoint

__all__ = ["load_autoencoder", "encode_images", "scaling_factor", "stage_path", "run_images", "LATENTS_FILE"]

LATENTS_FILE = "latents.json"
"""The autoencoder run's artefact: the scaling factor measured on its training latents and what it belongs to."""


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
    net = create_model(config.model.name, **config.model.kwargs).to(device)
    if not isinstance(net, KLAutoencoder):
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
    check_checkpoint(state, net, path)
    net.load_state_dict(state["ema"])
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
