"""The divergence of a vector field v(x) [B, ...]: exact (one backward pass a dimension) or Hutchinson-Skilling's
unbiased trace estimate with Rademacher or Gaussian probes. Shared by the PF-ODE likelihood, the bounds and the ODE
sampler's density."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["DIVERGENCES", "PROBES", "exact_divergence", "divergence_fn", "probe_divergences", "draw_probes"]


DIVERGENCES = ("exact", "hutchinson")


PROBES = ("rademacher", "gaussian")


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
    """``div(v, x)`` with ``v = v(x)`` built under autograd: exact trace, or the Hutchinson estimate (mean over
    the probes); `probe_divergences` keeps each probe's estimate."""
    per_probe = probe_divergences(kind, probes)
    return lambda v, x: per_probe(v, x).mean(0)


def probe_divergences(kind: str, probes: Tensor | None) -> Callable[[Tensor, Tensor], Tensor]:
    r"""``div(v, x) -> [P, B]``: each probe's Skilling–Hutchinson estimate $\epsilon_p^\top(\partial v/\partial x)
    \epsilon_p$ (``P`` probes), or the exact trace as ``[1, B]``. Kept apart so that a solve with fixed probes
    integrates one log-density per probe along the same trajectory, and their spread gives the probes' share
    of the standard error at no extra cost."""

    def hutchinson(v: Tensor, x: Tensor) -> Tensor:
        estimates = []
        for probe in probes:
            (grad,) = torch.autograd.grad((v * probe).sum(), x, retain_graph=True)
            estimates.append((grad * probe).reshape(v.shape[0], -1).sum(1))
        return torch.stack(estimates)

    def exact(v: Tensor, x: Tensor) -> Tensor:
        return exact_divergence(v, x)[None]

    fn = exact if kind == "exact" else hutchinson
    fn.n_probes = 1 if kind == "exact" else len(probes)
    return fn


def draw_probes(kind: str, n: int, x: Tensor, generator) -> Tensor:
    """``n`` probes shaped like ``x``: standard Gaussian, or Rademacher (random signs)."""
    shape = (n,) + tuple(x.shape)
    z = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    return z if kind == "gaussian" else torch.sign(z) + (z == 0).to(x.dtype)
