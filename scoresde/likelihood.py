r"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, Appendix D.2).

The PF-ODE $dx/dt = v(x, t) = f(t)x - \tfrac12 g(t)^2 s_\theta(x, t)$ is a continuous normalising
flow, so by the instantaneous change of variables (Chen et al. 2018)

$$\log p_{t_{min}}(x) = \log p_T(z) + \int_{t_{min}}^{T} \nabla_x\!\cdot v(x(t), t)\, dt,
\qquad z = x(T),\ x(t_{min}) = x .$$

We integrate the state and the divergence together with torchdiffeq, in ``t`` or in the log-SNR
$\lambda$ (`scoresde.sde.ProbabilityFlow`; the divergence of $dx/d\lambda$
integrated in $\lambda$ gives the same integral). The divergence is exact (``D`` vector–Jacobian
products, for small ``D``) or Skilling–Hutchinson's $\mathbb E_\epsilon[\epsilon^\top (\partial v/\partial x)\epsilon]$
with probes drawn once and kept for the whole solve.

With the SDE's prior in place of $p_T$ the result differs from $-\log p_{t_{min}}(x)$ by the prior
mismatch; ``prior_logp`` lets a caller pass the exact $\log p_T$ (the oracle's) to isolate the
integrator's error.

The variational bounds live in `scoresde.bounds`, bits per dimension in `scoresde.bpd`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._checks import check_finite, check_in_registry, check_positive, check_positive_int, progress_bar, renamed_t_min
from .metrics import mean_and_standard_error
from .samplers.base import CountingScore
from .samplers.ode import ADAPTIVE_METHODS, FIXED_GRID_METHODS
from .sde import SDE, VARIABLES, ProbabilityFlow, ScoreFn, check_sde

__all__ = [
    "log_likelihood",
    "LikelihoodResult",
    "exact_divergence",
    "divergence_fn",
    "draw_probes",
    "check_data",
    "DIVERGENCES",
    "PROBES",
]

LOGP_ATOL_FACTOR = 1.0
"""The log-density integral is held to ``atol`` absolute, with no relative part (a relative tolerance
would scale with |delta| ~ D nats). A tighter factor (0.1) was tried: more NFE and, on the 10D VP oracle,
no smaller error, so the error there is not set by this budget."""

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
DEFAULT_VARIABLE = "t"
"""Measured on the oracle (2D and 10D mixtures, VP / sub-VP / VE, dopri5): at equal tolerances, t needed
fewer NFE than log-SNR for the same error (10D VP at 1e-5: 98 NFE and 4.6e-5 nats in t; 158 NFE and 2.9e-4
in log-SNR), so t is the default; log-SNR stays available."""


@dataclass
class LikelihoodResult:
    """Output of `log_likelihood`, per sample (``[B]`` tensors, float64 on the CPU).

    Attributes:
        nll: $-\\log p_{t_{min}}(x)$ in nats.
        prior_logp: $\\log p_T(z)$ of the latent.
        delta_logp: $\\int_{t_{min}}^T \\nabla\\cdot v\\,dt$, so that ``-nll = prior_logp + delta_logp``.
        z: the latent $x(T)$ ``[B, ...]``.
        nfe: score evaluations over the whole data set (all batches; all processes under torchrun).
        settings: every argument that moves the number.
    """

    nll: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    z: Tensor
    nfe: int
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        mean, se = mean_and_standard_error(self.nll)
        return {
            "nll_mean": mean,
            "nll_standard_error": se,
            "n": self.nll.numel(),
            "nfe": self.nfe,
            "settings": self.settings,
        }


def exact_divergence(v: Tensor, x: Tensor) -> Tensor:
    r"""$\nabla_x\cdot v(x)$ per sample ``[B]``, for ``v [B, ...]`` built from ``x`` under autograd:
    the Jacobian's trace from ``D`` vector–Jacobian products (samples are independent)."""
    flat_v = v.reshape(v.shape[0], -1)
    total = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    for i in range(flat_v.shape[1]):
        (grad,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=True)
        total = total + grad.reshape(v.shape[0], -1)[:, i]
    return total


def divergence_fn(kind: str, probes: Tensor | None) -> Callable[[Tensor, Tensor], Tensor]:
    """``div(v, x)`` with ``v = v(x)`` built under autograd: exact trace, or the Hutchinson estimate."""

    def hutchinson(v: Tensor, x: Tensor) -> Tensor:
        estimates = []
        for probe in probes:
            (grad,) = torch.autograd.grad((v * probe).sum(), x, retain_graph=True)
            estimates.append((grad * probe).reshape(v.shape[0], -1).sum(1))
        return torch.stack(estimates).mean(0)

    return exact_divergence if kind == "exact" else hutchinson


def draw_probes(kind: str, n: int, x: Tensor, generator) -> Tensor:
    """``n`` probes shaped like ``x``: standard Gaussian, or Rademacher (random signs)."""
    shape = (n,) + tuple(x.shape)
    z = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    return z if kind == "gaussian" else torch.sign(z) + (z == 0).to(x.dtype)


def check_data(x: Tensor) -> Tensor:
    """Data for a likelihood: a finite floating-point tensor ``[B, ...]`` with at least 2 dimensions."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError(
            f"x must be a floating-point tensor of shape [B, ...] with at least 2 dimensions, got "
            f"{type(x).__name__ if not isinstance(x, Tensor) else tuple(x.shape)}"
        )
    return check_finite("x", x)


def _per_sample_norm(state: tuple[Tensor, Tensor]) -> Tensor:
    """Error norm for the adaptive solver: the worst sample's RMS over its state, or its log-density error.

    torchdiffeq's default RMS over the whole batch lets single samples drift while the average is small;
    a likelihood is reported per sample, so every sample must meet the tolerance."""
    x, delta = state
    per_sample = x.reshape(x.shape[0], -1).pow(2).mean(1).sqrt()
    return torch.maximum(per_sample.max(), delta.abs().max())


def _solve_batch(
    flow: ProbabilityFlow, x: Tensor, divergence, span, method, rtol, atol, max_steps, steps, error_control
) -> tuple[Tensor, Tensor]:
    """Integrate ``(x, delta)`` from the data end to ``T``; errors name the last time reached."""
    from torchdiffeq import odeint

    reached = {"u": span[0]}

    def augmented(u: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        reached["u"] = float(u)
        with torch.enable_grad():
            y = state[0].detach().requires_grad_(True)
            v = flow.velocity(u, y)
            div = divergence(v, y)
        return v.detach(), div.detach()

    if method in ADAPTIVE_METHODS:
        us = torch.tensor(span, dtype=x.dtype, device=x.device)
        # the last step must end exactly at T: a step past it would integrate the field's clamped
        # (kinked) extension and interpolate back, an error the step's estimate does not see
        options = {"max_num_steps": max_steps, "step_t": us[-1:]}
        if error_control == "per_sample":
            options["norm"] = _per_sample_norm
    else:  # fixed grid: `steps` equal steps in the chosen time variable
        us = torch.linspace(span[0], span[1], steps + 1, dtype=x.dtype, device=x.device)
        options = None
    delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    try:
        # the log-density integral is controlled absolutely (its rtol would scale with |delta| ~ D nats)
        if error_control == "per_sample":
            rtols, atols = [rtol, 0.0], [atol, LOGP_ATOL_FACTOR * atol]
        else:  # torchdiffeq's default: one RMS over the whole batch, rtol on the log-density too
            rtols, atols = rtol, atol
        xs, deltas = odeint(augmented, (x, delta0), us, method=method, rtol=rtols, atol=atols, options=options)
    except (AssertionError, RuntimeError) as exc:
        t = float(flow.time(torch.tensor(reached["u"], dtype=torch.float64)))
        raise RuntimeError(
            f"the probability-flow ODE did not converge ({exc}); it reached t={t:.6g} "
            f"(in {flow.variable}: {reached['u']:.6g}); loosen rtol/atol, raise max_steps or check the score"
        ) from None
    return xs[-1], deltas[-1]


def log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    divergence: str = "exact",
    probe: str = "rademacher",
    n_probes: int = 1,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float | None = None,
    variable: str = DEFAULT_VARIABLE,
    generator: torch.Generator | None = None,
    progress: bool = False,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    batch_size: int | None = None,
    max_steps: int = 100_000,
    steps: int = 100,
    error_control: str = "per_sample",
    eps: float | None = None,
) -> LikelihoodResult:
    r"""Per-sample negative log-likelihood $-\log p_{t_{min}}(x)$ (nats) through the probability-flow ODE.

    $$-\log p_{t_{min}}(x) = -\log p_T(z) - \int_{t_{min}}^{T} \nabla_x\!\cdot v(x(t), t)\,dt .$$

    Args:
        sde: the forward process of the model.
        score_fn: the model's score ``score_fn(x, t)``.
        x: data ``[B, ...]`` (float32 or float64), at time ``t_min``.
        divergence: ``"exact"`` (full Jacobian trace, ``D`` backward passes per step: small ``D``) or
            ``"hutchinson"`` (``n_probes`` probes of kind ``probe``, fixed for the whole solve).
        method: the torchdiffeq solver (``dopri5``, ``rk4``, ...).
        rtol: relative tolerance (applied to the state and the divergence).
        atol: absolute tolerance.
        t_min: the data end of the integral (default ``sde.sampling_t_min``; ``eps`` is its deprecated name).
        variable: integrate in ``"t"`` (default: fewer NFE for the same accuracy, measured) or ``"log_snr"``.
        generator: randomness of the Hutchinson probes.
        progress: progress bar over batches.
        prior_logp: ``z -> log density`` replacing the SDE's prior at ``T`` (e.g. the exact
            ``marginal(sde, T).log_prob`` of an oracle, to measure the integrator alone).
        batch_size: evaluate in batches of this size (default: all at once).
            Under torchrun (an initialised process group), each process evaluates every world-size-th point
            and the results are all-gathered in data order; every process returns the whole result.
        max_steps: bound on an adaptive solver's steps: a stiff or broken ODE raises, naming the time
            it reached, instead of running forever.
        steps: number of equal steps (in ``variable``) of a fixed-grid method (``rk4``, ``euler``, ...).
        error_control: ``"per_sample"`` (default: every sample meets the tolerance) or ``"batch"``
            (torchdiffeq's RMS over the batch, as the reference implementation's flattened solve).
    """
    t_min = renamed_t_min(t_min, eps, "log_likelihood")
    check_sde(sde)
    check_data(x)
    check_in_registry("divergence", divergence, DIVERGENCES)
    check_in_registry("probe", probe, PROBES)
    check_in_registry("ODE time variable", variable, VARIABLES)
    check_in_registry("torchdiffeq method", method, ADAPTIVE_METHODS + FIXED_GRID_METHODS)
    n_probes, max_steps = check_positive_int("n_probes", n_probes), check_positive_int("max_steps", max_steps)
    steps = check_positive_int("steps", steps)
    check_in_registry("error control", error_control, ("per_sample", "batch"))
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    t_min = sde.check_t_min(t_min)
    batch_size = check_positive_int("batch_size", batch_size) if batch_size is not None else x.shape[0]
    score = CountingScore(score_fn)
    flow = ProbabilityFlow(sde, score, variable)
    span = flow.span(t_min)[::-1]  # from the data end to T
    prior = prior_logp or sde.prior_logp
    shard = _distributed_shard(x.shape[0])
    full_batch = x.shape[0]
    if shard is not None:
        x = x[shard]
    parts = list(x.split(batch_size)) if x.shape[0] else []
    nlls, priors, deltas, zs = [], [], [], []
    for part in progress_bar(parts, "log-likelihood", progress):
        probes = draw_probes(probe, n_probes, part, generator) if divergence == "hutchinson" else None
        z, delta = _solve_batch(
            flow, part, divergence_fn(divergence, probes), span, method, rtol, atol, max_steps, steps, error_control
        )
        prior_part = prior(z).to(torch.float64)
        if tuple(prior_part.shape) != (part.shape[0],):
            raise ValueError(
                f"prior_logp must return one log density per sample, shape [{part.shape[0]}], got "
                f"{tuple(prior_part.shape)}"
            )
        delta = delta.to(torch.float64)
        nlls.append(-(prior_part + delta).cpu())
        priors.append(prior_part.cpu())
        deltas.append(delta.cpu())
        zs.append(z)
    settings = {
        "divergence": divergence,
        "probe": probe if divergence == "hutchinson" else None,
        "n_probes": n_probes if divergence == "hutchinson" else None,
        "method": method,
        "rtol": rtol,
        "atol": atol,
        "t_min": t_min,
        "variable": variable,
        "prior": "custom" if prior_logp else "sde",
        "steps": steps if method in FIXED_GRID_METHODS else None,
        "error_control": error_control,
    }
    empty = torch.zeros(0, dtype=torch.float64)
    local = (
        torch.cat(nlls) if nlls else empty,
        torch.cat(priors) if priors else empty,
        torch.cat(deltas) if deltas else empty,
        torch.cat(zs).cpu() if zs else x.new_zeros((0,) + x.shape[1:]).cpu(),
    )
    nfe = score.calls
    if shard is not None:
        local, nfe = _gather(shard, local, nfe, full_batch)
        settings["processes"] = torch.distributed.get_world_size()
    nll, prior_lp, delta, z = local
    return LikelihoodResult(nll=nll, prior_logp=prior_lp, delta_logp=delta, z=z, nfe=nfe, settings=settings)


def _distributed_shard(batch: int) -> Tensor | None:
    """Under torchrun (an initialised process group of several processes): the indices this rank evaluates."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return torch.arange(batch)[dist.get_rank() :: dist.get_world_size()]


def _gather(shard: Tensor, local: tuple[Tensor, ...], nfe: int, batch: int) -> tuple[tuple[Tensor, ...], int]:
    """All-gather every rank's share (CPU tensors, one collective after all solves, so ranks whose adaptive
    solvers took different numbers of steps never wait on each other mid-solve) and restore the data order."""
    import torch.distributed as dist

    shares: list = [None] * dist.get_world_size()
    dist.all_gather_object(shares, (shard, local, nfe))
    out = [torch.zeros((batch,) + t.shape[1:], dtype=t.dtype) for t in local]
    for idx, tensors, _ in shares:
        for target, part in zip(out, tensors):
            target[idx] = part
    return tuple(out), sum(share[2] for share in shares)


_MOVED = {
    "elbo": "bounds",
    "ddpm_bound": "bounds",
    "ELBOResult": "bounds",
    "TIME_SAMPLINGS": "bounds",
    "bits_per_dim": "bpd",
    "BitsPerDimResult": "bpd",
    "ESTIMATORS": "bpd",
}


def __getattr__(name: str):
    """The bounds and bits/dim moved to `scoresde.bounds` and `scoresde.bpd`; old imports from here keep working."""
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"scoresde.{_MOVED[name]}"), name)
    raise AttributeError(f"module 'scoresde.likelihood' has no attribute {name!r}")
