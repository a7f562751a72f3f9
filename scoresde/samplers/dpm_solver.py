r"""DPM-Solver++ multistep (Lu et al. 2022) with data prediction in $\lambda = \log(\alpha/\sigma)$, and the solver
fitted to a model on top of it: DPM-Solver++ ``order``M plus per-step corrections (`fitted_steps`, fitted by
`scoresde.samplers.solver_fit`); with zero corrections it is `dpm_solver` (``denoise=False``) bit for bit."""

from __future__ import annotations

from torch import Tensor

from .base import Sampling, register_sampler
from .coefficients import expm1, multistep_coefficients, multistep_order

__all__ = ["dpm_solver", "dpmpp_step", "fitted", "fitted_steps", "fitted_step"]


@register_sampler("dpm_solver", steps=20, schedule="log_snr", orders=(1, 2, 3))
def dpm_solver(
    run: Sampling,
    x: Tensor,
    grid: Tensor,
    *,
    order: int = 2,
    denoise: bool = True,
    lower_order_final: bool = True,
) -> Tensor:
    r"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++", Algorithm 2 and its third-order variant)
    with data prediction, in $\lambda = \log(\alpha/\sigma)$ (half the log-SNR),
    $h_i = \lambda_{i+1} - \lambda_i$, $\varphi_1 = e^{-h} - 1$:

    $$x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i - \alpha_{i+1}\varphi_1 D_i,
    \qquad D_i = \hat x_0^{(i)} + \frac{1}{2r}\big(\hat x_0^{(i)} - \hat x_0^{(i-1)}\big),\ r = h_{i-1}/h_i$$

    for ``order = 2`` (2M); ``order = 1`` is DDIM; ``order = 3`` adds the second divided difference
    (3M). The first steps warm up with lower orders; with ``lower_order_final`` the last steps drop to the
    order the remaining steps allow, which keeps few-step runs stable. NFE = ``N + denoise``."""
    alphas, sigmas, lam = multistep_coefficients(run, grid)
    steps, x0s = len(grid) - 1, []

    def step(i: int, x: Tensor, t: Tensor, _: Tensor) -> Tensor:
        nonlocal x0s
        x0s = (x0s + [run.x0_hat(x, t)])[-3:]
        return dpmpp_step(x, x0s, lam, alphas, sigmas, i, multistep_order(order, i, steps, lower_order_final))

    return run.integrate(x, grid, step, f"dpm_solver++ {order}M", denoise)


def dpmpp_step(x: Tensor, x0s: list[Tensor], lam: list, alphas: list, sigmas: list, i: int, k: int) -> Tensor:
    """One DPM-Solver++ ``k``M step from grid point ``i`` to ``i + 1`` with the last ``k`` data predictions ``x0s``
    (see `dpm_solver`). The grid's ``lam``, ``alphas``, ``sigmas`` are floats when sampling, or 0-d tensors when a
    fit differentiates through them (`scoresde.samplers.solver_fit`): the same arithmetic either way."""
    h = lam[i + 1] - lam[i]
    phi1 = expm1(-h)
    x_next = (sigmas[i + 1] / sigmas[i]) * x - alphas[i + 1] * phi1 * x0s[-1]
    if k >= 2:
        r0 = (lam[i] - lam[i - 1]) / h
        d1_0 = (x0s[-1] - x0s[-2]) / r0
        if k == 2:
            x_next = x_next - 0.5 * alphas[i + 1] * phi1 * d1_0
        else:
            r1 = (lam[i - 1] - lam[i - 2]) / h
            d1_1 = (x0s[-2] - x0s[-3]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            x_next = x_next + alphas[i + 1] * phi2 * d1 - alphas[i + 1] * phi3 * d2
    return x_next


def fitted_steps(
    x: Tensor,
    x0_fn,
    lam: list,
    alphas: list,
    sigmas: list,
    corrections,
    order: int,
    lower_order_final: bool = True,
    record=None,
) -> Tensor:
    r"""The fitted solver's steps from ``x`` at grid point 0 to the last one: DPM-Solver++ ``order``M
    (`dpmpp_step`) plus, at step $i$, the correction

    $$\alpha_{i+1}(1 - e^{-h_i})\sum_{j=1}^{\min(i, m)} c_{ij}\,\big(\hat x_0^{(i-j)} - \hat x_0^{(i)}\big),$$

    differences of data predictions, so every correction keeps the first-order consistency condition (a constant
    $\hat x_0$ is still integrated exactly). ``x0_fn(x, i)`` is the data prediction at grid point ``i`` (one NFE);
    ``lam``, ``alphas``, ``sigmas`` and ``corrections`` (``[steps][m]``) are floats when sampling or tensors when a
    fit differentiates through them; a step whose corrections are all zero (floats) is the base step itself.
    ``record(i, x)`` sees each new state."""
    steps = len(lam) - 1
    width = history_width(corrections)
    x0s: list[Tensor] = []
    for i in range(steps):
        x0s = (x0s + [x0_fn(x, i)])[-width:]
        x = fitted_step(
            x, x0s, lam, alphas, sigmas, corrections[i], multistep_order(order, i, steps, lower_order_final), i
        )
        if record is not None:
            record(i + 1, x)
    return x


def history_width(corrections) -> int:
    """How many data predictions the fitted solver keeps: its base's three, or one more than its widest step."""
    return max(3, 1 + max((len(c) for c in corrections), default=0))


def fitted_step(x: Tensor, x0s: list[Tensor], lam: list, alphas: list, sigmas: list, c, k: int, i: int) -> Tensor:
    """One step of `fitted_steps` from grid point ``i``: the ``k``M DPM-Solver++ step plus its corrections ``c``."""
    x_next = dpmpp_step(x, x0s, lam, alphas, sigmas, i, k)
    used = min(i, len(c))
    if used and (isinstance(c, Tensor) or any(c[:used])):
        scale = -alphas[i + 1] * expm1(lam[i] - lam[i + 1])
        x_next = x_next + scale * sum(c[j - 1] * (x0s[-1 - j] - x0s[-1]) for j in range(1, used + 1))
    return x_next


@register_sampler("fitted", steps=5, schedule="log_snr_warped", orders=(1, 2, 3))
def fitted(
    run: Sampling,
    x: Tensor,
    grid: Tensor,
    *,
    order: int = 3,
    corrections: list | None = None,
    lower_order_final: bool = True,
    denoise: bool = False,
) -> Tensor:
    r"""The fitted multistep solver (`fitted_steps`): DPM-Solver++ ``order``M with per-step ``corrections``
    (``[steps][m]`` numbers, as `scoresde.samplers.solver_fit.fit_solver` fits them with the grid; none: the base
    solver). Sample a fit as ``sample(sde, model, shape, fit.recipe())``: its grid and these options.
    NFE = ``N + denoise``."""
    steps = len(grid) - 1
    corrections = [[] for _ in range(steps)] if corrections is None else [list(map(float, c)) for c in corrections]
    if len(corrections) != steps:
        raise ValueError(f"corrections must hold one list per step ({steps}), got {len(corrections)}")
    alphas, sigmas, lam = multistep_coefficients(run, grid)
    width, x0s = history_width(corrections), []

    def step(i: int, x: Tensor, t: Tensor, _: Tensor) -> Tensor:
        nonlocal x0s
        x0s = (x0s + [run.x0_hat(x, t)])[-width:]
        k = multistep_order(order, i, steps, lower_order_final)
        return fitted_step(x, x0s, lam, alphas, sigmas, corrections[i], k, i)

    return run.integrate(x, grid, step, f"fitted {order}M", denoise)
