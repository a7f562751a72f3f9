r"""The reverse-time SDE (Anderson 1982) and the probability-flow ODE of a forward SDE (Song et al. 2021), as
drift and diffusion functions of ``(x, t)`` for the solvers; `scoresde.processes.base.SDE.reverse` builds them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._checks import check_in_registry, expand_to
from .score import ScoreFn, evaluate_score

__all__ = ["ReverseSDE", "ProbabilityFlow", "VARIABLES"]

SDE = Any
"""The forward `scoresde.processes.base.SDE` (not imported here: the SDE imports this module to build its reverse)."""


class ReverseSDE:
    r"""Reverse-time process of a forward `SDE`, integrated from ``T`` down to 0 (``dt < 0``).

    $$dx = [f(t) x - g(t)^2 \nabla\log p_t(x)]\,dt
    + g(t)\,d\bar W \quad\text{(Anderson 1982; Song et al. 2021, Eq. 6)}$$

    or, with ``probability_flow=True`` (see `ProbabilityFlow`), the deterministic probability-flow ODE with
    the same marginals

    $$dx = [f(t) x - \tfrac12 g(t)^2 \nabla\log p_t(x)]\,dt \quad\text{(Eq. 13)}.$$

    Built once per run. `drift`, `diffusion` and `step` are the unchecked forms that loops call; `sde` and
    `discretize` (the reverse-diffusion step $x_{i-1} = x_i - f_i + G_i^2 s + G_i z$ of Song et al., Eq. 47)
    check their inputs and the score's output, as the forward SDE's do.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False) -> None:
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}")
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)

    @property
    def T(self) -> float:
        return self.forward.T

    @property
    def N(self) -> int:
        return self.forward.N

    @property
    def score_weight(self) -> float:
        """The weight ``w`` of $g^2 s$ in the drift: 1 for the SDE, 1/2 for the ODE."""
        return 0.5 if self.probability_flow else 1.0

    def _drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        return expand_to(self.forward.f(t), x) * x - expand_to(self.forward.g2(t), x) * score * self.score_weight

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Reverse drift $f(t)x - w\\,g(t)^2 s(x, t)$ for ``x [B, ...]``, ``t [B]`` (unchecked)."""
        return self._drift(x, t, self.score_fn(x, t))

    def diffusion(self, t: Tensor) -> Tensor:
        """$g(t)$ ``[B]`` (zeros for the ODE; unchecked)."""
        g = torch.sqrt(self.forward.g2(t))
        return torch.zeros_like(g) if self.probability_flow else g

    def _step(self, x: Tensor, t: Tensor, dt: float | Tensor | None, score: Tensor) -> tuple[Tensor, Tensor]:
        f, G = self.forward._discretize(x, t, dt)
        rev_f = f - expand_to(G**2, x) * score * self.score_weight
        return rev_f, torch.zeros_like(G) if self.probability_flow else G

    def step(self, x: Tensor, t: Tensor, dt: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`discretize` without checks."""
        return self._step(x, t, dt, self.score_fn(x, t))

    def _checked(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        x = self.forward._check_x("x", x)
        t = self.forward.check_time(t, x)
        return x, t, evaluate_score(self.score_fn, x, t)

    def sde(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Reverse drift $f x - w g^2 s$ (``w`` = 1, or 1/2 for the ODE) and diffusion (``g``, or 0), checked."""
        x, t, score = self._checked(x, t)
        return self._drift(x, t, score), self.diffusion(t)

    def discretize(self, x: Tensor, t: Tensor | float, dt: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Reverse discrete step over ``dt`` (default ``T/N``): ``rev_f = f - w G^2 s`` and ``rev_G = G`` (0 for the
        ODE), checked."""
        x, t, score = self._checked(x, t)
        return self._step(x, t, dt, score)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.forward!r}, probability_flow={self.probability_flow})"


VARIABLES = ("t", "log_snr")
"""Time variables in which the probability-flow ODE can be integrated."""


class ProbabilityFlow(ReverseSDE):
    r"""The probability-flow ODE (Song et al. 2021, Eq. 13), the `ReverseSDE` with ``probability_flow=True``,
    as a vector field in the time ``variable`` ``"t"`` or ``"log_snr"``:

    $$\frac{dx}{dt} = f(t)\,x - \tfrac12 g(t)^2\, s_\theta(x, t), \qquad
    \frac{dx}{d\lambda} = \frac{dt}{d\lambda}\frac{dx}{dt}, \quad \frac{dt}{d\lambda} = -\frac{\sigma(t)^2}{g(t)^2}$$

    (from $d\log\alpha/dt = f$ and $d\sigma^2/dt = 2f\sigma^2 + g^2$); the log-SNR form is far less stiff near
    the data end for VP and sub-VP.

    ``velocity(u, x)`` is $dx/du$ at ``u`` (a time, or a log-SNR value); `span` gives the integration interval
    from the prior end ``T`` to ``t_min`` in that variable; `time` maps ``u`` back to ``t``; `rate` is
    $dt/du$ (1 for ``"t"``), which the likelihood needs to turn a divergence in t into one in u.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, variable: str = "t") -> None:
        super().__init__(forward, score_fn, probability_flow=True)
        self.variable = check_in_registry("ODE time variable", variable, VARIABLES)
        ends = torch.tensor([forward.T, 0.0], dtype=torch.float64)
        self._u_range = (0.0, forward.T) if variable == "t" else tuple(forward.log_snr(ends).tolist())

    def span(self, t_min: float) -> tuple[float, float]:
        """``(u(T), u(t_min))``: the interval from the prior to the data end."""
        if self.variable == "t":
            return self.T, t_min
        lam = self.forward.log_snr(torch.tensor([self.T, t_min], dtype=torch.float64))
        return float(lam[0]), float(lam[1])

    def time(self, u: Tensor) -> Tensor:
        """The time ``t`` at ``u`` (unchecked)."""
        return u if self.variable == "t" else self.forward._t_from_log_snr(u).clamp(0.0, self.T)

    def rate(self, t: Tensor) -> Tensor:
        r"""$dt/du$: 1 in t, $-\sigma(t)^2 / g(t)^2$ in the log-SNR."""
        if self.variable == "t":
            return torch.ones_like(t)
        return -(self.forward.sigma(t) ** 2) / self.forward.g2(t)

    def velocity(self, u: Tensor, x: Tensor) -> Tensor:
        """$dx/du$ for a batch ``x [B, ...]`` at a scalar ``u`` (unchecked).

        ``u`` is clamped to the SDE's range: adaptive solvers probe a trial point past the end of the
        interval when they choose their first step."""
        u = u.reshape(()).to(x.dtype).clamp(*self._u_range)
        t = self.time(u).expand(x.shape[0])
        drift = self.drift(x, t)
        return drift if self.variable == "t" else expand_to(self.rate(t), x) * drift

    def velocity_and_divergence(
        self, u: Tensor, x: Tensor, divergence: Callable[[Tensor, Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        r"""$dx/du$ and ``divergence(v, x)`` of it (exact or Hutchinson, built under autograd), both detached: the
        augmented field of the log-density, $d\log p/du = -\nabla\cdot v$ (unchecked)."""
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            v = self.velocity(u, y)
            div = divergence(v, y)
        return v.detach(), div.detach()

    def __repr__(self) -> str:
        return f"ProbabilityFlow({self.forward!r}, variable={self.variable!r})"


# ---------------------------------------------------------------------- the name registry
