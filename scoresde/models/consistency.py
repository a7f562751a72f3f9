r"""Consistency models (Song, Dhariwal, Chen & Sutskever 2023): $f_\theta(x, t)$, the end at $t_{min}$ of the
probability-flow trajectory through $x$ at $t$, with EDM-style $c_{skip}$, $c_{out}$, $c_{in}$ in the scaled variable
$y = x/\alpha$ so that $f_\theta(x, t_{min}) = x$ by construction (see `scoresde.training.distillation` for the
equations and the losses). Declared with output kind ``consistency``: it is not a score function."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_positive, expand_to
from ..processes.base import SDE, check_sde
from ..processes.seam import ModelSpec

__all__ = ["ConsistencyModel", "noise_to_signal"]


def noise_to_signal(sde: SDE, t: Tensor) -> Tensor:
    r"""$\tilde\sigma(t) = \sigma(t)/\alpha(t)$ (EDM's $\sigma$ of the scaled variable $y = x/\alpha$)."""
    return sde.sigma(t) / sde.alpha(t)


class ConsistencyModel(nn.Module):
    r"""$f_\theta(x, t)$ of a network ``net(x, t)`` (module docstring): the end at ``t_min`` of the probability-flow
    trajectory through ``x`` at ``t``, exactly ``x`` at ``t = t_min``. ``sigma_data``: the data's standard deviation
    in the model's range (EDM's 0.5 for images in [-1, 1])."""

    spec = ModelSpec(output="consistency")

    def __init__(self, net: nn.Module, sde: SDE, t_min: float, sigma_data: float = 0.5) -> None:
        super().__init__()
        check_sde(sde)
        self.net, self.sde = net, sde
        self.t_min = sde.check_t_min(t_min)
        self.sigma_data = check_positive("sigma_data", sigma_data)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """$f_\\theta(x, t)$, shaped like ``x``."""
        sd = self.sigma_data
        t_min = torch.full_like(t, self.t_min)
        st, s0 = noise_to_signal(self.sde, t), noise_to_signal(self.sde, t_min)
        y = x / expand_to(self.sde.alpha(t), x)
        c_skip = sd**2 / ((st - s0) ** 2 + sd**2)
        c_out = sd * (st - s0) / torch.sqrt(sd**2 + st**2)
        c_in = torch.rsqrt(st**2 + sd**2)
        out = self.net(expand_to(c_in, x) * y, t)
        return expand_to(self.sde.alpha(t_min), x) * (expand_to(c_skip, x) * y + expand_to(c_out, x) * out)
