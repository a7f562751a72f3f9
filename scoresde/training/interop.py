r"""Models from the ecosystem as score functions: a diffusers ``UNet2DModel`` with its DDPM / DDIM scheduler.

A diffusers model predicts $\epsilon$ (or $v$, or $x_0$) at integer timesteps $k = 0..N-1$ of a DDPM chain with
$\bar\alpha_k$ = the scheduler's ``alphas_cumprod`` (any beta schedule). `load_diffusers` turns it into this
toolkit's pair:

- the SDE: `scoresde.processes.vp.DiscreteVPSDE` of those $\bar\alpha_k$, whose continuous time puts step $k$ at
  $t = (k + 1)/N$ (DPM-Solver's discrete schedule);
- the score: the network evaluated at the fractional timestep $\tau = N t - 1$ (the sinusoidal embedding takes any
  real, as DPM-Solver's and k-diffusion's wrappers feed it), converted by `scoresde.models.ScoreModel`:
  $s = -\epsilon/\sigma$, $s = -(\alpha v + \sigma x)/\sigma$ or $s = (\alpha x_0 - x)/\sigma^2$.

So every sampler, `log_likelihood` (exact bits/dim through the PF-ODE), `compare_samplers` and `inpaint` run on a
model trained elsewhere; the CLI takes a diffusers folder wherever it takes a run. diffusers is an optional extra
(``pip install scoresde[diffusers]``); nothing here downloads: a folder on disk is read.

Export the other way is not offered: `scoresde.models.DDPMUNet` and diffusers' ``UNet2DModel`` differ in block
layout, attention placement and parameter names, so a checkpoint cannot be mapped one-to-one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config.schema import DataConfig
from ..models import ScoreModel
from ..models.network import ScoreNetwork
from ..processes.vp import DiscreteVPSDE

__all__ = [
    "DiffusersNet",
    "ImportedModel",
    "SCHEDULERS",
    "PREDICTION_TYPES",
    "WEIGHTS_FILES",
    "is_diffusers_folder",
    "load_diffusers",
    "DiffusersAutoencoder",
    "is_diffusers_autoencoder",
    "load_diffusers_autoencoder",
]

SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
"""Scheduler classes whose betas define the chain (their ``scheduler_config.json`` ``_class_name``)."""
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
"""diffusers' ``prediction_type`` -> this toolkit's parameterisation."""
_DATA_BY_SHAPE = {(1, 8, 8): "digits", (1, 28, 28): "mnist", (3, 32, 32): "cifar10"}


class InteropError(ValueError):
    """A folder that is not a usable diffusers model (the message says what is supported)."""


def _folders(path: Path) -> tuple[Path, Path] | None:
    """The UNet folder and the scheduler config of a diffusers model at ``path``: a pipeline folder (``unet/``,
    ``scheduler/``) or a UNet folder with ``scheduler_config.json`` beside its ``config.json``."""
    if (path / "unet" / "config.json").is_file():
        return path / "unet", path / "scheduler" / "scheduler_config.json"
    if (path / "config.json").is_file() and (path / "scheduler_config.json").is_file():
        return path, path / "scheduler_config.json"
    return None


def is_diffusers_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like a diffusers model folder (a pipeline, or a UNet with its scheduler config)."""
    path = Path(path)
    return path.is_dir() and _folders(path) is not None


class DiffusersNet(ScoreNetwork):
    r"""``net(x, t[, y])``: a diffusers ``UNet2DModel`` at the fractional timestep $\tau = N t - 1$ of ``sde``,
    returning its prediction (the first ``in_channels`` channels when it also predicts a variance)."""

    def __init__(self, unet: nn.Module, sde: DiscreteVPSDE) -> None:
        super().__init__()
        self.unet, self.sde = unet, sde
        config = unet.config
        self.in_channels, self.image_size = int(config.in_channels), int(config.sample_size)
        self.num_classes = int(getattr(config, "num_class_embeds", None) or 0)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        timestep = self.sde.timestep(t).to(x.dtype)
        labels = None if y is None or not self.num_classes else y
        out = self.unet(x, timestep, class_labels=labels, return_dict=False)[0]
        return out[:, : self.in_channels]


@dataclass(frozen=True)
class ImportedModel:
    """What the CLI knows of an imported model: the data it was made for (``data``: inferred from the image shape
    where it matches a known data set, else None) and where it came from."""

    source: str
    scheduler: str
    prediction_type: str
    image_shape: tuple[int, int, int]
    data: DataConfig | None


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InteropError(f"cannot read the {what} {path}: {exc}") from None


WEIGHTS_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin.index.json",
)
"""The weights files diffusers' ``from_pretrained`` reads from a model folder (one file, or a sharded index)."""


def _check_weights_file(folder: Path) -> None:
    """Refuse, in one line naming the missing file, a diffusers model folder with a config but no weights (diffusers
    would print its own line and fail in another, which blamed the config)."""
    if not any((folder / name).is_file() for name in WEIGHTS_FILES):
        raise InteropError(
            f"{folder / WEIGHTS_FILES[0]} is missing (nor is there a .bin or sharded weights file): the folder has a "
            f"config.json but no weights; copy the weights file beside it (save_pretrained writes both)"
        )


def _load_unet(diffusers, unet_dir: Path, dtype: torch.dtype):
    """``UNet2DModel.from_pretrained`` offline and quietly (diffusers' warnings, e.g. that ``accelerate`` is not
    installed, are about loading speed, not the model); weights that do not fit the folder's ``config.json`` are
    a one-line `InteropError` naming the first tensor that does not fit."""
    from diffusers.utils import logging as diffusers_logging

    _check_weights_file(unet_dir)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return diffusers.UNet2DModel.from_pretrained(
            unet_dir, local_files_only=True, low_cpu_mem_usage=False, torch_dtype=dtype
        )
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = next((line for line in lines if line.startswith(("size mismatch", "Missing key", "Unexpected"))), None)
        reason = first or (lines[0] if lines else type(exc).__name__)
        raise InteropError(
            f"{unet_dir}: the weights do not fit its config.json ({reason[:200]}); the config was edited or belongs "
            f"to another model"
        ) from None
    finally:
        diffusers_logging.set_verbosity(verbosity)


def load_diffusers(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[ScoreModel, ImportedModel]:
    """A diffusers model folder as ``(score model, ImportedModel)``; the score model's ``sde`` is the
    `DiscreteVPSDE` of its scheduler (module docstring). Raises a one-line `InteropError` for a folder that is not
    a diffusers ``UNet2DModel`` with a DDPM / DDIM scheduler and an epsilon / v / sample prediction."""
    path = Path(path)
    folders = _folders(path) if path.is_dir() else None
    if folders is None:
        raise InteropError(
            f"{path} is not a diffusers model folder: expected unet/config.json with scheduler/scheduler_config.json "
            "(a saved pipeline), or config.json with scheduler_config.json"
        )
    unet_dir, scheduler_file = folders
    if not scheduler_file.is_file():
        raise InteropError(f"{path} has no scheduler config ({scheduler_file}); supported: {', '.join(SCHEDULERS)}")
    scheduler_config = _read_json(scheduler_file, "scheduler config")
    unet_config = _read_json(unet_dir / "config.json", "UNet config")
    kind, model_kind = scheduler_config.get("_class_name"), unet_config.get("_class_name")
    prediction = scheduler_config.get("prediction_type", "epsilon")
    for what, value, supported, where in (
        ("scheduler", kind, SCHEDULERS, scheduler_file),
        ("model", model_kind, ("UNet2DModel",), unet_dir),
        ("prediction_type", prediction, tuple(PREDICTION_TYPES), scheduler_file),
    ):
        if value not in supported:
            raise InteropError(f"{what} {value!r} in {where} is not supported; supported: {', '.join(supported)}")
    try:
        import diffusers
    except ImportError:
        raise InteropError("diffusers models need the diffusers package: pip install 'scoresde[diffusers]'") from None
    scheduler = getattr(diffusers, kind).from_config(scheduler_config)
    unet = _load_unet(diffusers, unet_dir, dtype).to(device=device)
    sde = DiscreteVPSDE(scheduler.alphas_cumprod)
    model = ScoreModel(DiffusersNet(unet.eval(), sde), sde, parameterization=PREDICTION_TYPES[prediction]).eval()
    shape = (int(unet_config["in_channels"]), int(unet_config["sample_size"]), int(unet_config["sample_size"]))
    name = _DATA_BY_SHAPE.get(shape)
    info = ImportedModel(str(path), kind, prediction, shape, DataConfig(kind="image", name=name) if name else None)
    return model, info


def is_diffusers_autoencoder(path: str | Path) -> bool:
    """Whether ``path`` is a diffusers ``AutoencoderKL`` folder (its ``config.json`` names that class)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "AutoencoderKL"
    except (OSError, ValueError, AttributeError):
        return False


class DiffusersAutoencoder(nn.Module):
    r"""diffusers' ``AutoencoderKL`` as this toolkit's autoencoder: ``posterior(x)`` is ``encode(x).latent_dist``'s
    $(\mu, s)$, ``decode(z)`` is ``decode(z).sample``. diffusers' decoder has no likelihood of its own: the bound's
    Gaussian decoder takes the fixed scale ``decoder_scale`` $\tau$ (model range [-1, 1])."""

    def __init__(self, vae: nn.Module, decoder_scale: float = 0.05) -> None:
        super().__init__()
        self.vae, self.decoder_scale = vae, float(decoder_scale)
        config = vae.config
        factor = 2 ** (len(config.block_out_channels) - 1)
        self.latent_shape = (int(config.latent_channels), int(config.sample_size) // factor,
                             int(config.sample_size) // factor)  # fmt: skip
        self.image_shape = (int(config.in_channels), int(config.sample_size), int(config.sample_size))

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dist = self.vae.encode(x).latent_dist
        return dist.mean, dist.std

    def decode(self, z: Tensor) -> Tensor:
        return self.vae.decode(z).sample

    def decoder_distribution(self, z: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.decode(z)
        return mean, torch.full_like(mean, self.decoder_scale)


def load_diffusers_autoencoder(path: str | Path, device: torch.device | str = "cpu") -> Any:
    """A diffusers ``AutoencoderKL`` folder as a `scoresde.models.LatentCodec` with the folder's
    ``config.scaling_factor`` (read offline; a one-line `InteropError` when it cannot be)."""
    from ..models import LatentCodec

    try:
        import diffusers
        from diffusers.utils import logging as diffusers_logging
    except ImportError:
        raise InteropError(
            "diffusers autoencoders need the diffusers package: pip install 'scoresde[diffusers]'"
        ) from None
    _check_weights_file(Path(path))
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        vae = diffusers.AutoencoderKL.from_pretrained(Path(path), local_files_only=True, low_cpu_mem_usage=False)
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise InteropError(f"{path}: not a loadable AutoencoderKL ({str(exc).splitlines()[0][:200]})") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    vae = vae.to(device).eval().requires_grad_(False)
    return LatentCodec(DiffusersAutoencoder(vae), float(vae.config.scaling_factor))
