r"""Time grids for reverse-time samplers: ``steps + 1`` decreasing times from ``T`` down to ``eps``.

* ``"uniform"``: uniform in t (Song et al. 2021; DDIM's "time uniform").
* ``"log_snr"``: uniform in the log signal-to-noise ratio $\lambda = \log(\alpha^2/\sigma^2)$
  (DPM-Solver's "logSNR" grid).
* ``"log_snr_warped"``: $\lambda_i = \lambda_T + (\lambda_{eps} - \lambda_T)(i/N)^{w}$, ``w = 0.6``:
  large steps at high noise, where the score of any data set is nearly that of a Gaussian and the
  flow is nearly linear, and small ones near the data. Measured on the oracle (``benchmarks/samplers.py``)
  it is what brings multistep solvers within 1.5x of the sampling floor at 10 NFE.
* ``"edm"``: Karras et al. (2022), Eq. 5, in the noise-to-signal ratio $\tilde\sigma = \sigma/\alpha$:
  $\tilde\sigma_i = \big(\tilde\sigma_{\max}^{1/\rho} + \tfrac{i}{N}(\tilde\sigma_{\min}^{1/\rho}
  - \tilde\sigma_{\max}^{1/\rho})\big)^\rho$, ``rho = 7``.

Every grid is built in float64 through the SDE's ``log_snr`` / ``t_from_log_snr``, so it means the same
for VP, sub-VP and VE.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_in_registry, check_positive, check_positive_int
from ..sde import SDE

__all__ = ["time_grid", "check_eps", "log_snr_times", "GRIDS"]

GRIDS = ("uniform", "log_snr", "log_snr_warped", "edm")
LOG_SNR_WARP = 0.6
"""Exponent ``w`` of the ``log_snr_warped`` grid (0.5-0.6 measured best at 10 NFE on the gmm oracle; 1 = log_snr)."""


def check_eps(sde: SDE, eps: float | None) -> float:
    """The smallest time of a sampler: ``sde.sampling_eps`` by default, else a number in (0, T)."""
    if eps is None:
        return sde.sampling_eps
    eps = check_positive("eps", eps)
    if eps >= sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T:g}), got {eps!r}")
    return eps


def log_snr_times(sde: SDE, eps: float, u: Tensor, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
    r"""Times uniform in the log-SNR on ``[eps, T]`` from uniforms ``u`` in ``[0, 1)``, with $1/p(t)$.

    $\lambda = \lambda(T) + u\,\Lambda$, $\Lambda = \lambda(eps) - \lambda(T)$, so
    $p(t) = |d\lambda/dt|/\Lambda = g(t)^2/(\sigma(t)^2\Lambda)$: the density proportional to the
    likelihood weighting $g^2/\sigma^2$ (Song, Durkan, Murray & Ermon 2021), used to importance-sample
    t in the ELBO and the likelihood-weighted DSM loss."""
    lam_T, lam_eps = (float(v) for v in sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64)))
    span = lam_eps - lam_T
    t = sde.t_from_log_snr(lam_T + span * u.to(torch.float64)).clamp(eps, sde.T).to(dtype=dtype, device=device)
    g2 = sde.sde(torch.ones(t.shape[0], 1, dtype=dtype, device=device), t)[1] ** 2
    return t, span * sde.sigma(t) ** 2 / g2


def custom_grid(sde: SDE, times) -> Tensor:
    """A user's grid: a strictly decreasing 1-D sequence of at least two times in ``(0, T]``, as float64."""
    grid = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    if grid.ndim != 1 or grid.numel() < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"a custom time grid must be a strictly decreasing 1-D sequence of >= 2 times, got {times!r}")
    if float(grid[-1]) <= 0 or float(grid[0]) > sde.T:
        raise ValueError(f"a custom time grid must lie in (0, T] = (0, {sde.T:g}], got [{float(grid[-1]):.6g}, {float(grid[0]):.6g}]")
    return grid


def time_grid(
    sde: SDE, steps: int, schedule="uniform", eps: float | None = None, rho: float = 7.0, warp: float = LOG_SNR_WARP
) -> Tensor:
    r"""``steps + 1`` times ``[T = t_0 > t_1 > ... > t_steps = eps]`` (float64) on the named grid.

    ``schedule`` may also be a decreasing sequence of times (a custom grid): it is returned as is, and
    ``steps`` and ``eps`` are then ignored.
    """
    if not isinstance(schedule, str):
        return custom_grid(sde, schedule)
    steps = check_positive_int("steps", steps)
    check_in_registry("time grid", schedule, GRIDS)
    eps = check_eps(sde, eps)
    ends = torch.tensor([sde.T, eps], dtype=torch.float64)
    if schedule == "uniform":
        return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)
    lam_T, lam_eps = sde.log_snr(ends).tolist()
    ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if schedule in ("log_snr", "log_snr_warped"):
        power = 1.0 if schedule == "log_snr" else check_positive("warp", warp)
        lam = lam_T + (lam_eps - lam_T) * ramp**power
    else:
        rho = check_positive("rho", rho)
        # sigma_tilde = sigma / alpha = exp(-lambda / 2)
        s_max, s_min = torch.exp(-0.5 * torch.tensor([lam_T, lam_eps], dtype=torch.float64)) ** (1.0 / rho)
        lam = -2.0 * rho * torch.log(s_max + ramp * (s_min - s_max))
    t = sde.t_from_log_snr(lam)
    t[0], t[-1] = sde.T, eps  # exact end points despite the round trip
    return t
