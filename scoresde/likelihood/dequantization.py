r"""Dequantisation: how a discrete datum becomes a point of the model's continuous range, and what that costs.

A continuous model density $p$ gives discrete data $x$ (levels $0..K-1$ per dimension) the probability of its cell,
$P(x) = \int_{\mathrm{cell}(x)} p$. For any density $q(\tilde x \mid x)$ supported in the cell,

$$-\log P(x) \le \mathbb E_{q}\big[-\log p(\tilde x) + \log q(\tilde x \mid x)\big]$$

(Jensen; the gap is $\mathrm{KL}(q \,\|\, p(\cdot \mid x))$, $p(\tilde x \mid x) = p(\tilde x)/P(x)$ on the cell), and
the importance-weighted estimate over $K$ draws,
$-\log \frac1K \sum_k p(\tilde x_k)/q(\tilde x_k \mid x)$, is a bound that tightens as $K$ grows and reaches
$-\log P(x)$ in the limit (Burda, Grosse & Salakhutdinov 2016). Everything is in the model's range: the data
transform's Jacobian sits inside $\log q$ (for uniform dequantisation $\log q = -D\log\frac{b-a}{K}$, the "offset" of
7 bits/dim for 256 levels on [-1, 1]: derived here for any number of levels and range, never hard-coded).

Dequantisers are registered by name (`register_dequantizer`); `bits_per_dim` takes a name or an instance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from .._checks import check_in_registry, check_positive, registering
from ..datasets.scalers import DataTransform
from ..processes.base import SDE

__all__ = [
    "DEQUANTIZERS",
    "Dequantized",
    "Dequantizer",
    "TruncatedNormalDequantizer",
    "UniformDequantizer",
    "dequantizer",
    "register_dequantizer",
]

DEQUANTIZERS: dict[str, type] = {}
"""The registered dequantisers by name (`register_dequantizer`)."""


def register_dequantizer(name: str) -> Callable:
    """Class decorator: register a `Dequantizer` under ``name`` (built with no arguments when named)."""
    return registering("dequantizer", DEQUANTIZERS, name)


@dataclass(frozen=True)
class Dequantized:
    """One draw of a dequantiser: the points ``x [B, ...]`` in the model's range, $\\log q(x \\mid
    \\mathrm{levels})$ per sample ``log_q [B]`` (nats, a density in the model's range), and the settings the draw
    used (recorded in the result's settings, e.g. a truncation)."""

    x: Tensor
    log_q: Tensor
    settings: dict = field(default_factory=dict)


class Dequantizer(Protocol):
    """What `bits_per_dim` needs of a dequantiser: one draw of points inside the data's cells with their log-density.
    A draw's support must lie in the cell, or the bound is not one."""

    name: str

    def draw(
        self, levels: Tensor, transform: DataTransform, sde: SDE, t_min: float, generator: torch.Generator | None
    ) -> Dequantized: ...


@register_dequantizer("uniform")
@dataclass(frozen=True)
class UniformDequantizer:
    r"""$\tilde x = a + (b - a)(x + u)/K$, $u \sim U[0, 1)^D$ (the field's convention, Song et al. 2021):
    $\log q = -D\log\frac{b-a}{K}$, a constant."""

    name: str = "uniform"

    def draw(
        self, levels: Tensor, transform: DataTransform, sde: SDE, t_min: float, generator: torch.Generator | None
    ) -> Dequantized:
        u = torch.rand(levels.shape, generator=generator, dtype=torch.float64, device=levels.device)
        dim = levels[0].numel()
        log_q = torch.full((levels.shape[0],), -dim * transform.log_det_per_dim(), dtype=torch.float64)
        return Dequantized(transform.to_model(levels + u), log_q.to(levels.device))


@register_dequantizer("truncated_normal")
@dataclass(frozen=True)
class TruncatedNormalDequantizer:
    r"""i-DODE's training-free dequantisation (Zheng et al. 2023): the forward process's own noise at $t_{min}$,
    truncated to the cell, $\tilde x = \alpha c + \sigma\varepsilon$ with the cell centre $c$, $\alpha, \sigma$ at
    $t_{min}$ and $\varepsilon \sim \mathcal N(0, I)$ truncated to $[-\tau, \tau]^D$:

    $$\log q = \sum_d \log\varphi(\varepsilon_d) - D\log\sigma - D\log\big(\Phi(\tau) - \Phi(-\tau)\big).$$

    ``tau`` defaults to $\alpha h/\sigma$ with $h$ half a cell's width in the model's range: the support is the
    whole cell (scaled by $\alpha \approx 1$); a larger ``tau`` would leave the cell and is refused. A model trained
    on the noisy data $\alpha x_0 + \sigma z$ puts its density where these draws land, so the bound's gap is small
    where uniform dequantisation's is not."""

    tau: float | None = None
    name: str = "truncated_normal"

    def draw(
        self, levels: Tensor, transform: DataTransform, sde: SDE, t_min: float, generator: torch.Generator | None
    ) -> Dequantized:
        t = torch.tensor(t_min, dtype=torch.float64)
        alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
        largest = alpha * 0.5 * (transform.high - transform.low) / transform.levels / sigma
        tau = largest if self.tau is None else check_positive("tau", self.tau)
        if tau > largest * (1 + 1e-12):
            raise ValueError(
                f"tau {tau:g} leaves the cell: at t_min {t_min:g} the cell's half-width is {largest:.4g} noise "
                f"standard deviations; pass tau <= {largest:.4g} (or None for the whole cell)"
            )
        tau_t = torch.tensor(tau, dtype=torch.float64)
        lower = torch.special.ndtr(-tau_t)
        mass = torch.special.ndtr(tau_t) - lower
        u = torch.rand(levels.shape, generator=generator, dtype=torch.float64, device=levels.device)
        eps = torch.special.ndtri((lower + u * mass).clamp(1e-300, 1.0)).clamp(-tau, tau)
        centres = transform.to_model(levels + 0.5)
        dim = levels[0].numel()
        log_phi = (-0.5 * eps**2 - 0.5 * math.log(2 * math.pi)).reshape(levels.shape[0], -1).sum(1)
        log_q = log_phi - dim * math.log(sigma) - dim * float(torch.log(mass))
        return Dequantized(alpha * centres + sigma * eps, log_q, {"tau": tau})


def dequantizer(spec: str | Dequantizer) -> Dequantizer:
    """A dequantiser from its registered name (`DEQUANTIZERS`) or itself (any object with ``draw``)."""
    if isinstance(spec, str):
        return DEQUANTIZERS[check_in_registry("dequantizer", spec, list(DEQUANTIZERS), "dequantization")]()
    if not callable(getattr(spec, "draw", None)):
        raise TypeError(
            f"dequantization must be one of {', '.join(DEQUANTIZERS)} or an object with a draw(levels, transform, "
            f"sde, t_min, generator) method, got {type(spec).__name__}"
        )
    return spec
