r"""What every sampler shares: the result type, the counted score, the sampler registry (with each sampler's
grid defaults) and the helpers for noise, trajectories, progress and the final denoising step.

Symbols: ``x`` state ``[B, ...]``, ``t`` time ``[B]``, ``score`` $\nabla_x\log p_t(x)$,
``x0_hat`` the denoised estimate $\hat x_0 = (x + \sigma(t)^2\,\text{score})/\alpha(t)$ (Tweedie),
``grid`` the decreasing times $T = t_0 > \dots > t_N = t_{min}$ a sampler runs on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._checks import check_in_registry, progress_bar, registering, standard_normal_like
from ..processes.base import SDE
from ..processes.grids import grid_options
from ..processes.seam import CountingScore, spec_of, x0_from_score, x0_from_sigma_score

__all__ = [
    "SampleResult",
    "Sampling",
    "GridDefaults",
    "register_sampler",
    "samplers",
    "get_sampler",
    "sampler_options",
    "grid_defaults",
    "honours_constraint",
    "check_order",
    "standard_normal_like",
]


@dataclass
class SampleResult:
    r"""Output of `scoresde.sample`.

    Attributes:
        x: the samples ``[B, ...]``.
        nfe: number of score evaluations, every one counted (rejected adaptive steps, corrector steps and
            the final denoising step included).
        trajectory: the states on the time grid ``[K, B, ...]`` (first the prior draw at ``T``, last the
            returned samples), when ``return_trajectory=True``; else ``None``.
        times: the times ``[K]`` of ``trajectory`` (the final denoised state is reported at ``t = 0``).
        sampler: the sampler's registered name.
        settings: every option that produced the samples (defaults and the time grid filled in), JSON-safe.
        log_density: ``[B]`` each sample's model log-density $\log p_{t_{min}}(x)$ (nats, float64), accumulated
            along the same probability-flow solve, when the sampler was asked for it (``ode`` with
            ``log_density=True``); else ``None``.
        decoded: a latent model's samples decoded to images (model range; ``x`` holds the latents), when the model
            declares a decoder (``spec.decoder``); else ``None``.
    """

    x: Tensor
    nfe: int
    trajectory: Tensor | None = None
    times: Tensor | None = None
    sampler: str = ""
    settings: dict = field(default_factory=dict)
    log_density: Tensor | None = None
    decoded: Tensor | None = None

    @property
    def images(self) -> Tensor:
        """The samples in data space: ``decoded`` for a latent model, else ``x``."""
        return self.x if self.decoded is None else self.decoded

    def to_dict(self) -> dict:
        """JSON-safe summary (no tensors): sampler, nfe, shape and settings."""
        return {"sampler": self.sampler, "nfe": self.nfe, "shape": list(self.x.shape), "settings": self.settings}


class Sampling:
    """The context a sampler runs in: the SDE, the counted score, randomness, progress, the trajectory and
    an optional constraint.

    A sampler is a function ``fn(run: Sampling, x: Tensor, grid: Tensor, **options) -> Tensor`` taking the
    prior draw ``x`` at ``grid[0] = T`` and returning the samples at ``grid[-1]`` (denoised when it asks);
    ``grid`` is float64 on the CPU (for the step coefficients), and `times` gives it in ``x``'s dtype and
    device (for the ``t [B]`` the score sees). It reports states with `record`.
    """

    def __init__(
        self,
        sde: SDE,
        score: CountingScore,
        generator: torch.Generator | None,
        progress: bool,
        record: bool,
        constraint: Callable[[Tensor, float], Tensor] | None = None,
    ):
        self.sde = sde
        self.constraint = constraint
        self.score = score
        self.scaled = spec_of(score).scaled
        self.generator = generator
        self.progress = progress
        self._times: list[float] | None = [] if record else None
        self._states: list[Tensor] = []
        self.log_density: Tensor | None = None  # set by a sampler that integrates the density along its path

    @staticmethod
    def times(grid: Tensor, x: Tensor) -> Tensor:
        """The grid in the dtype and on the device of ``x`` (built once; ``times[i].expand(B)`` is the step's ``t``)."""
        return grid.to(dtype=x.dtype, device=x.device)

    def batch_time(self, t: float | Tensor, x: Tensor) -> Tensor:
        """``t`` as a ``[B]`` tensor in the dtype and on the device of ``x``."""
        return torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(()).expand(x.shape[0])

    def noise_like(self, x: Tensor) -> Tensor:
        r"""$z \sim \mathcal N(0, I)$ shaped like ``x``, from the run's generator."""
        return standard_normal_like(x, self.generator)

    def x0_hat(self, x: Tensor, t: Tensor) -> Tensor:
        r"""Tweedie's denoised estimate $\hat x_0 = (x + \sigma(t)^2\,s_\theta(x, t)) / \alpha(t)$ (one NFE), from
        the model's scaled score $\sigma s$ when it declares one ($\hat x_0 = (x + \sigma\,[\sigma s])/\alpha$)."""
        if self.scaled:
            return x0_from_sigma_score(self.sde, x, t, self.score.scaled_score(x, t))
        return x0_from_score(self.sde, x, t, self.score(x, t))

    def steps(self, n: int, desc: str) -> Iterable[int]:
        """``range(n)``, with a tqdm progress bar when the run asked for one (and the output is a terminal)."""
        return progress_bar(range(n), desc, self.progress, leave=False)

    def constrain(self, x: Tensor, t: float) -> Tensor:
        """``x`` after the run's constraint at time ``t`` (inpainting: the known part replaced by data noised to ``t``);
        ``x`` itself when the run has none."""
        return x if self.constraint is None else self.constraint(x, t)

    def record(self, t: float, x: Tensor) -> None:
        """Keep the state ``x`` at time ``t`` for the trajectory (a no-op unless it was asked for)."""
        if self._times is not None:
            self._times.append(float(t))
            self._states.append(x.detach().clone())

    def integrate(
        self,
        x: Tensor,
        grid: Tensor,
        step: Callable[[int, Tensor, Tensor, Tensor], Tensor],
        desc: str,
        denoise: bool = True,
    ) -> Tensor:
        r"""The loop every grid sampler shares, written once (like torchdiffeq's ``FixedGridODESolver.integrate``):
        from the prior draw ``x`` at ``grid[0]``, ``x = step(i, x, t_i, t_{i+1})`` for each interval (``t`` as
        ``[B]`` tensors in ``x``'s dtype and device), the run's constraint applied and the state recorded after
        each, then `finish` (Tweedie's $\hat x_0$ with ``denoise``). A sampler is its ``step``."""
        times, t_values = self.times(grid, x), grid.tolist()
        x = self.constrain(x, t_values[0])
        self.record(t_values[0], x)
        batch = x.shape[0]
        for i in self.steps(len(t_values) - 1, desc):
            x = step(i, x, times[i].expand(batch), times[i + 1].expand(batch))
            x = self.constrain(x, t_values[i + 1])
            self.record(t_values[i + 1], x)
        return self.finish(x, t_values[-1], denoise)

    def finish(self, x: Tensor, t_end: float, denoise: bool) -> Tensor:
        r"""The last step: with ``denoise``, Tweedie's $\hat x_0$ at ``t_end`` (one NFE), recorded at t = 0."""
        if denoise:
            x = self.x0_hat(x, self.batch_time(t_end, x))
            self.record(0.0, x)
        return x

    def trajectory(self) -> tuple[Tensor | None, Tensor | None]:
        if self._times is None or not self._states:
            return None, None
        return torch.stack(self._states), torch.tensor(self._times, dtype=torch.float64)


@dataclass(frozen=True)
class GridDefaults:
    """The time grid a sampler runs on unless told otherwise: ``steps`` (an int, or a function of the sampler's
    resolved options, e.g. the ODE's 1 interval when adaptive and 100 steps when fixed-grid) and ``schedule``
    (a name from `scoresde.samplers.GRIDS`)."""

    steps: int | Callable[[dict], int]
    schedule: str = "uniform"

    def resolve_steps(self, options: dict) -> int:
        return self.steps(options) if callable(self.steps) else self.steps


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., Tensor]
    grid: GridDefaults
    constraint: bool
    model: str
    orders: tuple[int, ...] = ()


_SAMPLERS: dict[str, _Entry] = {}


def register_sampler(
    name: str,
    *,
    steps: int | Callable[[dict], int],
    schedule: str = "uniform",
    constraint: bool = False,
    model: str = "score",
    orders: tuple[int, ...] = (),
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator adding a sampler ``fn(run: Sampling, x, grid, *, ...options) -> Tensor`` to the registry.

    Its keyword-only parameters (with defaults) are the options `scoresde.sample` accepts for it; ``steps`` and
    ``schedule`` are the defaults of the grid `scoresde.sample` builds for it; ``constraint`` says that the
    sampler applies `Sampling.constrain` after every step (only those accept a constraint); ``model`` is the output
    kind it needs (`scoresde.processes.seam.OUTPUTS`: ``score``, or ``consistency`` for a consistency model; or
    ``flow_map``: a model declaring a flow map), checked once by `scoresde.sample`; ``orders``: the values its
    ``order`` option takes (checked as numbers by `check_order`)."""

    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        entry = _Entry(fn, GridDefaults(steps, schedule), constraint, model, tuple(orders))
        registering("sampler", _SAMPLERS, name)(entry)
        return fn

    return register


def samplers() -> list[str]:
    """Names of the registered samplers, sorted."""
    return sorted(_SAMPLERS)


def _entry(name: str) -> _Entry:
    return _SAMPLERS[check_in_registry("sampler", name, list(_SAMPLERS))]


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler registered as ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    return _entry(name).fn


def grid_defaults(name: str) -> GridDefaults:
    """The default time grid (steps, schedule) of a sampler."""
    return _entry(name).grid


def honours_constraint(name: str) -> bool:
    """Whether the sampler applies a constraint (e.g. inpainting's replacement) after every step."""
    return _entry(name).constraint


def model_kind(name: str) -> str:
    """The output kind the sampler needs from its model (``score`` or ``consistency``), or ``flow_map``."""
    return _entry(name).model


def check_order(name: str, order: Any) -> None:
    """A one-line ``ValueError`` when ``order`` is not one of the orders the sampler declared at registration (an
    integer; ``True`` is not an order)."""
    orders = _entry(name).orders
    if orders and (isinstance(order, bool) or not isinstance(order, int) or order not in orders):
        raise ValueError(f"unknown {name} order {str(order)!r}; valid orders are: {', '.join(map(str, orders))}")


def algorithm_options(name: str) -> dict[str, Any]:
    """The sampler's own options (its algorithm's knobs) and their defaults, without the grid's."""
    params = inspect.signature(get_sampler(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def sampler_options(name: str) -> dict[str, Any]:
    """Every option `scoresde.sample` takes for this sampler, with its default: the grid's (``steps``,
    ``schedule``, ``t_min``, ``rho``, ``warp``) and the algorithm's own."""
    options = algorithm_options(name)
    grid = grid_defaults(name)
    return {**grid_options(grid.resolve_steps(options), grid.schedule), **options}
