r"""The autoencoder of a latent score model: a small convolutional KL-regularised autoencoder (Rombach et al. 2022's
``AutoencoderKL``, at MNIST's scale), and `LatentCodec`, the one view of an autoencoder that the latent model, its
sampler and its likelihood bound use.

The encoder gives a diagonal Gaussian posterior $q(z\mid x) = \mathcal N(\mu(x), \mathrm{diag}\,s(x)^2)$ over
latents ``[C_z, H/f, W/f]`` (``f`` the downsampling factor: MNIST 28x28x1 -> 7x7xC_z at ``f = 4``); the decoder a
Gaussian $p(x\mid z) = \mathcal N(\hat x(z), \mathrm{diag}\,\tau^2)$ with one learned scale $\tau_c$ per image
channel, so that its reconstruction term is a likelihood (discretised over the data's levels for images:
`scoresde.likelihood.latent.decoder_log_prob`). The latents a score model sees are scaled by the **scaling factor**
$c = 1/\mathrm{std}(z)$ measured on the training latents (diffusers' ``config.scaling_factor``): $z_s = c\,z$.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_positive, check_positive_int
from ..processes.seam import ModelSpec, ModelWrapper
from .registry import register_model
from .unet import group_norm, zero_init

__all__ = ["KLAutoencoder", "LatentCodec", "LatentModel", "LOGVAR_RANGE"]

LOGVAR_RANGE = (-30.0, 20.0)
"""The posterior log-variance is clamped to this range (as in Latent Diffusion's ``DiagonalGaussianDistribution``)."""


class _Res(nn.Module):
    r"""$x + \mathrm{conv}(\mathrm{SiLU}(\mathrm{GN}(\mathrm{conv}(\mathrm{SiLU}(\mathrm{GN}(x))))))$ (1x1 skip when
    the channels change): the U-Net's residual block without a time embedding."""

    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            group_norm(in_ch, groups),
            nn.SiLU(),
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            group_norm(out_ch, groups),
            nn.SiLU(),
            zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1)),
        )
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


@register_model("kl_autoencoder")
class KLAutoencoder(nn.Module):
    r"""A KL-regularised convolutional autoencoder ``x [B, C, H, W] -> z [B, C_z, H/f, W/f] -> x``.

    Args:
        in_channels: channels of the images.
        image_size: height = width of the images (divisible by ``downsample``).
        latent_channels: $C_z$, channels of the latents.
        downsample: $f$, a power of two (each halving is a stride-2 convolution; the decoder upsamples by nearest
            neighbours and a convolution).
        ch: base channels (doubled at each halving, at most four times).
        num_res_blocks: residual blocks per resolution.
        groups: GroupNorm groups.
        decoder_scale: the decoder's initial standard deviation $\tau$ in the model's range (learned per channel).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        latent_channels: int = 4,
        downsample: int = 4,
        ch: int = 32,
        num_res_blocks: int = 1,
        groups: int = 8,
        decoder_scale: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("image_size", image_size), ("ch", ch)):
            check_positive_int(name, value)
        check_positive_int("latent_channels", latent_channels)
        check_positive_int("num_res_blocks", num_res_blocks)
        check_positive("decoder_scale", decoder_scale)
        levels = int(round(math.log2(downsample))) if downsample >= 1 else -1
        if levels < 0 or 2**levels != downsample:
            raise ValueError(f"downsample must be a power of two (1, 2, 4, 8), got {downsample!r}")
        if image_size % downsample:
            raise ValueError(f"image_size {image_size} must be divisible by downsample {downsample}")
        self.in_channels, self.image_size, self.latent_channels = in_channels, image_size, latent_channels
        self.downsample = downsample
        widths = [ch * min(2**i, 4) for i in range(levels + 1)]
        enc: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for i, width in enumerate(widths):
            cur = widths[max(i - 1, 0)]
            for _ in range(num_res_blocks):
                enc.append(_Res(cur, width, groups))
                cur = width
            if i < levels:
                enc.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        enc += [_Res(widths[-1], widths[-1], groups), group_norm(widths[-1], groups), nn.SiLU()]
        enc.append(nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1)]
        dec.append(_Res(widths[-1], widths[-1], groups))
        cur = widths[-1]
        for i, width in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks):
                dec.append(_Res(cur, width, groups))
                cur = width
            if i > 0:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)]
        dec += [group_norm(widths[0], groups), nn.SiLU(), nn.Conv2d(widths[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.decoder_log_scale = nn.Parameter(torch.full((in_channels,), math.log(decoder_scale)))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C_z, H/f, W/f)``."""
        size = self.image_size // self.downsample
        return (self.latent_channels, size, size)

    def _check(self, x: Tensor, shape: tuple[int, ...], what: str) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"the autoencoder's {what} must have shape [B, {', '.join(map(str, shape))}], got "
                             f"{tuple(x.shape)}")  # fmt: skip

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""$(\mu(x), s(x))$ of the encoder's Gaussian $q(z\mid x)$, each ``[B, C_z, H/f, W/f]`` (images ``x`` in the
        model's range)."""
        self._check(x, (self.in_channels, self.image_size, self.image_size), "images")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))

    def decode(self, z: Tensor) -> Tensor:
        r"""The decoder's mean $\hat x(z)$ ``[B, C, H, W]`` (model range)."""
        self._check(z, self.latent_shape, "latents")
        return self.decoder(z)

    def decoder_distribution(self, z: Tensor) -> tuple[Tensor, Tensor]:
        r"""$(\hat x(z), \tau)$ of the Gaussian decoder $p(x\mid z)$: the mean ``[B, C, H, W]`` and the scale broadcast
        to it."""
        mean = self.decode(z)
        return mean, self.decoder_log_scale.exp().to(mean.dtype)[None, :, None, None].expand_as(mean)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x`` through the posterior mean."""
        return self.decode(self.posterior(x)[0])


class LatentCodec:
    r"""An autoencoder seen in the scaled latent space $z_s = c\,z$ that a latent score model lives in.

    ``posterior(x)`` is $q(z_s\mid x) = \mathcal N(c\mu, c^2 s^2)$, ``decoder_distribution(z_s)`` the decoder's
    Gaussian at $z = z_s/c$, ``decode`` its mean. Any object with ``posterior``, ``decoder_distribution`` and
    ``latent_shape`` fits (a `KLAutoencoder`, diffusers' ``AutoencoderKL`` through
    `scoresde.training.interop.DiffusersAutoencoder`, the linear-Gaussian oracle)."""

    def __init__(self, autoencoder: Any, scaling_factor: float = 1.0) -> None:
        for method in ("posterior", "decoder_distribution"):
            if not callable(getattr(autoencoder, method, None)):
                raise TypeError(f"an autoencoder needs a {method} method, {type(autoencoder).__name__} has none")
        self.autoencoder = autoencoder
        self.scaling_factor = float(check_positive("scaling_factor", scaling_factor))

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one latent."""
        return tuple(self.autoencoder.latent_shape)

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype the autoencoder computes in: its parameters' (a network), None for one without (any dtype)."""
        if not isinstance(self.autoencoder, nn.Module):
            return None
        first = next(iter(self.autoencoder.parameters()), None)
        return None if first is None else first.dtype

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""$(c\mu(x), c\,s(x))$: the posterior over scaled latents."""
        mean, std = self.autoencoder.posterior(x)
        return self.scaling_factor * mean, self.scaling_factor * std

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r"""A draw $z_s = c(\mu + s\,\epsilon)$ of the posterior."""
        mean, std = self.posterior(x)
        return mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)

    def decoder_distribution(self, z: Tensor) -> tuple[Tensor, Tensor]:
        r"""The decoder's Gaussian $(\hat x, \tau)$ at the scaled latents ``z``."""
        return self.autoencoder.decoder_distribution(z / self.scaling_factor)

    def decode(self, z: Tensor) -> Tensor:
        r"""The decoder's mean image $\hat x(z_s/c)$ (model range)."""
        return self.decoder_distribution(z)[0]


class LatentModel(ModelWrapper):
    r"""A score model of scaled latents that carries its decoder (``spec.decoder``): ``model(z, t[, y])`` is the latent
    score, ``model.decode(z)`` the decoded images (`LatentCodec.decode`), ``model.codec`` the autoencoder (for the
    likelihood bound). Every sampler runs on it unchanged, in latent space."""

    def __init__(self, inner: Any, codec: LatentCodec) -> None:
        super().__init__(inner)
        if not isinstance(codec, LatentCodec):
            raise TypeError(f"codec must be a LatentCodec, got {type(codec).__name__}")
        self.codec = codec

    def wrap_spec(self, spec: ModelSpec) -> ModelSpec:
        return replace(spec, decoder=True)

    @property
    def sde(self) -> Any:
        """The latent score model's forward process."""
        return self.inner.sde

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one latent (what the samplers draw)."""
        return self.codec.latent_shape

    def scaled_score(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The latent model's own scaled score (declared by ``spec.scaled``)."""
        return self.inner.scaled_score(x, t) if y is None else self.inner.scaled_score(x, t, y)

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.inner(x, t) if y is None else self.inner(x, t, y)

    def decode(self, z: Tensor) -> Tensor:
        """Images (model range) from scaled latents."""
        with torch.no_grad():
            return self.codec.decode(z)
