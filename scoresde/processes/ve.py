r"""The variance-exploding SDE (Song & Ermon; Song et al. 2021): $\alpha = 1$, $\sigma(t) = \sigma_{min}
(\sigma_{max}/\sigma_{min})^t$."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_positive
from .base import SDE, register_sde

__all__ = ["VESDE"]


@register_sde("ve")
class VESDE(SDE):
    r"""Variance-exploding SDE (SMLD in continuous time), Song et al. (2021) Eq. 9:

    $$dx = \sigma(t)\sqrt{2\log(\sigma_{max}/\sigma_{min})}\,dW,
    \qquad \sigma(t) = \sigma_{min}(\sigma_{max}/\sigma_{min})^t,$$

    with $\alpha = 1$.  As in Song et al., the marginal std is $\sigma(t)$ itself, i.e. the
    process starts from $x(0) = x_0 + \sigma_{min} z$.  Prior $\mathcal N(0, \sigma_{max}^2 I)$.
    """

    sampling_t_min = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000) -> None:
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must be > sigma_min = {self.sigma_min:g}, got {self.sigma_max:g}")
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        super().__init__(N=N, T=1.0)

    @property
    def prior_std(self) -> float:  # type: ignore[override]
        return self.sigma_max

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return math.log(self.sigma_min) + t * self._log_ratio

    def _f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _g2(self, t: Tensor) -> Tensor:
        return 2 * self._log_ratio * torch.exp(2 * self._log_sigma(t))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (-0.5 * lam - math.log(self.sigma_min)) / self._log_ratio

    def _repr_fields(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "N": self.N}
