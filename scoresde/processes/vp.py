r"""The variance-preserving family (Song et al. 2021; Ho et al. 2020; Nichol & Dhariwal 2021): `VPSDE` with a
linear $\beta(t)$ or the cosine schedule (``vp-cosine``), its discrete chain `DiscreteVPSDE` (DDPM's betas, or any
scheduler's $\bar\alpha$), and `SubVPSDE`. $\alpha(t) = e^{-\frac12\int_0^t\beta}$, $\sigma^2 = 1 - \alpha^2$
(sub-VP: $\sigma = 1 - \alpha^2$)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_finite, check_positive
from .base import SDE, register_sde

__all__ = ["VPSDE", "DiscreteVPSDE", "SubVPSDE", "COSINE_S", "COSINE_T"]


def _check_betas(beta_min: float, beta_max: float) -> tuple[float, float]:
    beta_min = check_positive("beta_min", beta_min, strict=False)
    beta_max = check_positive("beta_max", beta_max)
    if beta_max <= beta_min:
        raise ValueError(f"beta_max must be > beta_min = {beta_min:g}, got {beta_max:g}")
    return beta_min, beta_max


def _int_beta_linear(t: Tensor, beta_min: float, beta_max: float) -> Tensor:
    r"""$\int_0^t \beta(s) ds = \beta_{min} t + \tfrac12 (\beta_{max} - \beta_{min}) t^2$."""
    return beta_min * t + 0.5 * (beta_max - beta_min) * t**2


def _t_from_int_beta_linear(c: Tensor, beta_min: float, beta_max: float) -> Tensor:
    r"""Positive root of $\tfrac12\Delta t^2 + \beta_{min} t = c$, written without cancellation:
    $t = 2c / (\beta_{min} + \sqrt{\beta_{min}^2 + 2\Delta c})$."""
    delta = beta_max - beta_min
    return 2 * c / (beta_min + torch.sqrt(beta_min**2 + 2 * delta * c))


COSINE_S = 0.008
"""Offset s of the cosine schedule (Nichol & Dhariwal 2021), keeping beta small near t = 0."""


COSINE_T = 0.9946
r"""End time of the cosine schedule, the one DPM-Solver (Lu et al. 2022) uses: the continuous schedule is
singular at t = 1 ($\alpha = 0$, $\beta = \infty$); at 0.9946, $\lambda(T) \approx -9.6$,
near the linear schedule's $-10.05$, with $\beta(T) \approx 370$."""


@register_sde("vp")
class VPSDE(SDE):
    r"""Variance-preserving SDE (DDPM in continuous time): $dx = -\tfrac12\beta(t) x\,dt + \sqrt{\beta(t)}\,dW$.

    Schedules:

    * ``"linear"``: $\beta(t) = \beta_{min} + t(\beta_{max} - \beta_{min})$ on ``[0, 1]``, so
      $\log\alpha(t) = -\tfrac14 t^2(\beta_{max}-\beta_{min}) - \tfrac12 t\beta_{min}$.
    * ``"cosine"`` (Nichol & Dhariwal 2021, s = 0.008): $\alpha(t)^2 = \cos^2\theta(t)/\cos^2\theta(0)$,
      $\theta(t) = \tfrac{\pi}{2}\tfrac{t+s}{1+s}$, so $\beta(t) = \tfrac{\pi}{1+s}\tan\theta(t)$;
      ``beta_min`` / ``beta_max`` are not used and ``T`` = 0.9946 (see `COSINE_T`).

    In both, $\sigma(t)^2 = 1 - \alpha(t)^2$ and the prior is $\mathcal N(0, I)$.
    """

    SCHEDULES = ("linear", "cosine")

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000, schedule: str = "linear") -> None:
        if schedule not in self.SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; valid schedules are: {', '.join(self.SCHEDULES)}")
        self.beta_min, self.beta_max = _check_betas(beta_min, beta_max)
        self.schedule = schedule
        super().__init__(N=N, T=COSINE_T if schedule == "cosine" else 1.0)

    def _theta(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * (t + COSINE_S) / (1 + COSINE_S)

    def _log_alpha(self, t: Tensor) -> Tensor:
        if self.schedule == "cosine":
            # the same torch ops at t and at 0, so that log alpha(0) is exactly 0 (and never > 0)
            log_cos = torch.log(torch.cos(self._theta(torch.stack([t, torch.zeros_like(t)]))))
            return (log_cos[0] - log_cos[1]).clamp(max=0.0)
        return -0.5 * _int_beta_linear(t, self.beta_min, self.beta_max)

    def _log_sigma(self, t: Tensor) -> Tensor:
        # sigma^2 = 1 - alpha^2 = -expm1(2 log alpha): no cancellation near t = 0.
        return 0.5 * torch.log(-torch.expm1(2 * self._log_alpha(t)))

    def _f(self, t: Tensor) -> Tensor:
        if self.schedule == "cosine":
            return -0.5 * math.pi / (1 + COSINE_S) * torch.tan(self._theta(t))
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))

    def _g2(self, t: Tensor) -> Tensor:
        return -2.0 * self._f(t)  # g^2 = beta(t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # -log alpha^2 = log(1 + e^{-lam}) (softplus, written with logaddexp to stay exact for all lam)
        c = torch.logaddexp(torch.zeros_like(lam), -lam)
        if self.schedule == "cosine":
            cos0 = math.cos(0.5 * math.pi * COSINE_S / (1 + COSINE_S))
            return 2 * (1 + COSINE_S) / math.pi * torch.acos(torch.exp(-0.5 * c) * cos0) - COSINE_S
        return _t_from_int_beta_linear(c, self.beta_min, self.beta_max)

    def _repr_fields(self) -> dict:
        if self.schedule == "cosine":
            return {"N": self.N, "schedule": "cosine"}
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "N": self.N, "schedule": self.schedule}


@register_sde("vp-cosine")
def _cosine_vp(N: int = 1000) -> VPSDE:
    """The VP SDE with the cosine schedule (Nichol & Dhariwal 2021)."""
    return VPSDE(N=N, schedule="cosine")


class DiscreteVPSDE(SDE):
    r"""The VP SDE whose discretisation is a given DDPM chain: $\bar\alpha_0 > \dots > \bar\alpha_{N-1}$ (a diffusers
    scheduler's ``alphas_cumprod``, any beta schedule), in continuous time as DPM-Solver's discrete noise schedule.

    $\log\alpha(t)^2$ is piecewise linear through $(0, 0)$ and $(k/N, \log\bar\alpha_{k-1})$, $k = 1..N$, so the
    chain's step $k$ sits at $t = (k + 1)/N$ exactly (`timestep` maps back, fractional in between);
    $\beta(t) = -d\log\alpha^2/dt$ is constant on each interval, $\sigma^2 = 1 - \alpha^2$, prior $N(0, I)$.
    """

    def __init__(self, alphas_cumprod) -> None:
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().flatten()
        check_finite("alphas_cumprod", abar)
        if abar.numel() < 2 or not bool((abar > 0).all() and (abar < 1).all() and (abar[1:] < abar[:-1]).all()):
            raise ValueError("alphas_cumprod must be a strictly decreasing sequence of at least 2 values in (0, 1)")
        super().__init__(N=abar.numel(), T=1.0)
        self._log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(abar)])  # at t = k / N
        self.sampling_t_min = 1.0 / self.N  # the chain's first step, timestep 0

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Index of the interval of each time, its start value and its slope of log alpha^2 in t."""
        y = self._log_abar.to(t)
        k = torch.clamp(torch.floor(t * self.N).long(), 0, self.N - 1)
        return k, y[k], (y[k + 1] - y[k]) * self.N

    def _log_alpha(self, t: Tensor) -> Tensor:
        k, start, slope = self._segment(t)
        return 0.5 * (start + slope * (t - k.to(t) / self.N))

    def _log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2 * self._log_alpha(t)))

    def _f(self, t: Tensor) -> Tensor:
        return 0.5 * self._segment(t)[2]

    def _g2(self, t: Tensor) -> Tensor:
        return -2.0 * self._f(t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        c = -torch.logaddexp(torch.zeros_like(lam), -lam)  # log alpha^2, decreasing in t
        y = self._log_abar.to(lam)
        k = torch.clamp(torch.searchsorted(-y, -c.contiguous()) - 1, 0, self.N - 1)
        return (k.to(lam) + (c - y[k]) / (y[k + 1] - y[k])) / self.N

    def timestep(self, t: Tensor) -> Tensor:
        """The chain's (fractional) timestep $\tau = N t - 1$ of continuous times ``t``: ``k`` at $t = (k + 1)/N$."""
        return t * self.N - 1

    def _repr_fields(self) -> dict:
        return {"N": self.N, "alphas_cumprod[-1]": float(torch.exp(self._log_abar[-1]))}


@register_sde("subvp")
class SubVPSDE(SDE):
    r"""Sub-VP SDE (Song et al. 2021, Eq. 11), whose variance stays below the VP one:

    $$dx = -\tfrac12\beta(t) x\,dt + \sqrt{\beta(t)\big(1 - e^{-2\int_0^t\beta(s)ds}\big)}\,dW,$$

    with the linear $\beta(t)$.  Then $\alpha(t) = e^{-\frac12\int_0^t\beta}$ as for VP, and
    $\sigma(t) = 1 - \alpha(t)^2$.  Prior $\mathcal N(0, I)$.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> None:
        self.beta_min, self.beta_max = _check_betas(beta_min, beta_max)
        super().__init__(N=N, T=1.0)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * _int_beta_linear(t, self.beta_min, self.beta_max)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(-torch.expm1(2 * self._log_alpha(t)))

    def _f(self, t: Tensor) -> Tensor:
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))

    def _g2(self, t: Tensor) -> Tensor:
        # beta(t) (1 - alpha^4)
        return -2.0 * self._f(t) * -torch.expm1(4 * self._log_alpha(t))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # alpha^2 / (1 - alpha^2)^2 = e^lam  <=>  -log alpha^2 = 2 asinh(e^{-lam/2} / 2)
        c = 2 * torch.asinh(0.5 * torch.exp(-0.5 * lam))
        return _t_from_int_beta_linear(c, self.beta_min, self.beta_max)

    def _repr_fields(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "N": self.N}
