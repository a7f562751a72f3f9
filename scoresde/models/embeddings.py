r"""Time embeddings for score networks.

Sinusoidal (Vaswani et al. 2017; DDPM): $e(t) = [\sin(\omega_k s t), \cos(\omega_k s t)]$,
$\omega_k = 10000^{-k/(d/2 - 1)}$, with ``s = scale`` (1000 turns continuous t in [0, 1] into
DDPM's step index). Gaussian Fourier features (Tancik et al. 2020; score_sde's NCSN++):
$e(t) = [\sin(2\pi W t), \cos(2\pi W t)]$, $W \sim \mathcal N(0, s^2)$ fixed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_labels

__all__ = ["sinusoidal_embedding", "SinusoidalEmbedding", "GaussianFourierEmbedding", "TimeMLP", "LabelEmbedding"]


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    r"""``[B, dim]`` features $[\sin(\omega_k s t), \cos(\omega_k s t)]$ of times ``t [B]`` (zero-padded to odd
    ``dim``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / max(half - 1, 1))
    args = scale * t[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return nn.functional.pad(emb, (0, dim % 2))


class SinusoidalEmbedding(nn.Module):
    """Module form of `sinusoidal_embedding`."""

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.dim, self.scale = dim, scale

    def forward(self, t: Tensor) -> Tensor:
        return sinusoidal_embedding(t, self.dim, self.scale)


class GaussianFourierEmbedding(nn.Module):
    r"""Random Fourier features $[\sin 2\pi W t, \cos 2\pi W t]$ with fixed $W \sim \mathcal N(0, s^2)$
    (a buffer: saved with the model, never trained)."""

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("W", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, t: Tensor) -> Tensor:
        args = 2 * math.pi * t[:, None] * self.W[None].to(t.dtype)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TimeMLP(nn.Module):
    """Embedding followed by DDPM's two-layer MLP (Linear, SiLU, Linear): ``t [B] -> [B, out_dim]``."""

    def __init__(self, embedding: nn.Module, emb_dim: int, out_dim: int) -> None:
        super().__init__()
        self.embedding = embedding
        self.mlp = nn.Sequential(nn.Linear(emb_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.embedding(t).to(self.mlp[0].weight.dtype))


class LabelEmbedding(nn.Module):
    r"""Class labels ``y [B]`` in ``0 .. num_classes - 1``, or the **null label** ``num_classes`` (no class: the
    unconditional model of classifier-free guidance), to ``[B, dim]`` vectors added to the time embedding.

    The table starts at zero, so a freshly built conditional network equals its unconditional self.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.zeros_(self.table.weight)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """Embeddings of ``y`` (``None``: the null label for the whole batch); labels outside the classes raise."""
        labels = check_labels(self.null_label if y is None else y, batch, self.num_classes, device, allow_null=True)
        return self.table(labels)


def check_num_classes(num_classes: int) -> int:
    """``num_classes`` of a network: a non-negative integer (0: unconditional)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative integer (0: unconditional), got {num_classes!r}")
    return num_classes


def check_conditional(net: nn.Module, y) -> None:
    """Refuse labels for a network without a label embedding (an unconditional model)."""
    if y is not None and not net.num_classes:
        raise ValueError(
            f"{type(net).__name__} was built without classes (num_classes=0): it takes no labels; "
            f"train a class-conditional model (model.kwargs.num_classes) for guidance"
        )


def second_time(net: nn.Module, t: Tensor, s: Tensor | None) -> Tensor | float:
    """A flow map's second time: the embedding of the gap ``t - s`` (``net.gap``) to add to the time embedding of a
    network built with ``two_times``; ``0`` for one without (which refuses an ``s``), and a one-line error when a
    two-time network is called without its ``s``."""
    if net.gap is None:
        if s is not None:
            raise ValueError(
                f"{type(net).__name__} was built with one time input: a flow map's network needs "
                f"model.kwargs.two_times: true"
            )
        return 0.0
    if s is None:
        raise ValueError(f"this {type(net).__name__} is a flow map's network (two_times): call it as net(x, t, s=s)")
    return net.gap(t - s)
