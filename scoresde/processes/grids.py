r"""Time grids for reverse-time samplers: ``steps + 1`` decreasing times from ``T`` down to ``t_min``.

* ``"uniform"``: uniform in t (Song et al. 2021; DDIM's "time uniform").
* ``"log_snr"``: uniform in the log signal-to-noise ratio $\lambda = \log(\alpha^2/\sigma^2)$
  (DPM-Solver's "logSNR" grid).
* ``"log_snr_warped"``: $\lambda_i = \lambda_T + (\lambda_{t_{min}} - \lambda_T)(i/N)^{w}$, ``w = 0.6``:
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

from .._checks import check_in_registry, check_positive, check_positive_int, renamed_t_min
from .base import SDE

__all__ = ["time_grid", "grid_options", "GRIDS", "LOG_SNR_WARP"]

GRIDS = ("uniform", "log_snr", "log_snr_warped", "edm")
LOG_SNR_WARP = 0.6
"""Exponent ``w`` of the ``log_snr_warped`` grid (0.5-0.6 measured best at 10 NFE on the gmm oracle; 1 = log_snr)."""
EDM_RHO = 7.0
"""Exponent ``rho`` of the ``edm`` grid (Karras et al. 2022)."""


def grid_options(steps: int | None, schedule: str) -> dict:
    """The options of `time_grid` that `scoresde.sample` accepts for every sampler, with a sampler's defaults."""
    return {"steps": steps, "schedule": schedule, "t_min": None, "rho": EDM_RHO, "warp": LOG_SNR_WARP}


def grid_settings(grid: Tensor, schedule, rho: float, warp: float) -> dict:
    """What a result records of its grid: steps, schedule (``"custom"`` for a user's times), t_min, and the
    exponent of the schedule when it has one."""
    named = isinstance(schedule, str)
    settings = {"steps": len(grid) - 1, "schedule": schedule if named else "custom", "t_min": float(grid[-1])}
    if named and schedule == "edm":
        settings["rho"] = rho
    if named and schedule == "log_snr_warped":
        settings["warp"] = warp
    return settings


def custom_grid(sde: SDE, times) -> Tensor:
    """A user's grid: a strictly decreasing 1-D sequence of at least two times in ``(0, T]``, as float64."""
    grid = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    if grid.ndim != 1 or grid.numel() < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"a custom time grid must be a strictly decreasing 1-D sequence of >= 2 times, got {times!r}")
    if float(grid[-1]) <= 0 or float(grid[0]) > sde.T:
        raise ValueError(
            f"a custom time grid must lie in (0, T] = (0, {sde.T:g}], got [{float(grid[-1]):.6g}, {float(grid[0]):.6g}]"
        )
    return grid


def time_grid(
    sde: SDE,
    steps: int,
    schedule="uniform",
    t_min: float | None = None,
    rho: float = EDM_RHO,
    warp: float = LOG_SNR_WARP,
    *,
    eps: float | None = None,
) -> Tensor:
    r"""``steps + 1`` times ``[T = t_0 > t_1 > ... > t_steps = t_min]`` (float64, CPU) on the named grid
    (``t_min`` defaults to ``sde.sampling_t_min``; ``eps`` is its deprecated name).

    ``schedule`` may also be a decreasing sequence of times (a custom grid): it is returned as is, and
    ``steps`` and ``t_min`` are then ignored.
    """
    t_min = renamed_t_min(t_min, eps, "time_grid")
    if not isinstance(schedule, str):
        return custom_grid(sde, schedule)
    steps = check_positive_int("steps", steps)
    check_in_registry("time grid", schedule, GRIDS, "schedule")
    t_min = sde.check_t_min(t_min)
    ends = torch.tensor([sde.T, t_min], dtype=torch.float64)
    if schedule == "uniform":
        return torch.linspace(sde.T, t_min, steps + 1, dtype=torch.float64)
    lam_T, lam_min = sde.log_snr(ends).tolist()
    ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if schedule in ("log_snr", "log_snr_warped"):
        power = 1.0 if schedule == "log_snr" else check_positive("warp", warp)
        lam = lam_T + (lam_min - lam_T) * ramp**power
    else:
        rho = check_positive("rho", rho)
        # sigma_tilde = sigma / alpha = exp(-lambda / 2)
        s_max, s_min = torch.exp(-0.5 * torch.tensor([lam_T, lam_min], dtype=torch.float64)) ** (1.0 / rho)
        lam = -2.0 * rho * torch.log(s_max + ramp * (s_min - s_max))
    t = sde.t_from_log_snr(lam)
    t[0], t[-1] = sde.T, t_min  # exact end points despite the round trip
    return t
