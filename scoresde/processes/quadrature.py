r"""Integrals of a weight times a Lagrange basis polynomial: the coefficients of every exponential-integrator
multistep method (the likelihood's solver in log-SNR, DEIS's time-based Adams–Bashforth)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["lagrange_integrals"]

_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(16)


def lagrange_integrals(
    nodes: list[float], a: float, b: float, weight: Callable[[np.ndarray], np.ndarray]
) -> list[float]:
    r"""$\int_a^b w(u)\,\ell_j(u)\,du$ for the Lagrange basis $\ell_j$ on ``nodes`` (in the variable $u$ of the
    integral).

    The weight is a closed form; the product is integrated by 16-point Gauss–Legendre (exact for a
    polynomial weight up to degree ``31 - len(nodes)``, to rounding for the smooth weights used here on steps
    of the size the solvers take)."""
    mid, half = 0.5 * (a + b), 0.5 * (b - a)
    u = mid + half * _GAUSS_NODES
    w = weight(u) * _GAUSS_WEIGHTS * half
    out = []
    for j, node_j in enumerate(nodes):
        basis = np.ones_like(u)
        for m, node_m in enumerate(nodes):
            if m != j:
                basis *= (u - node_m) / (node_j - node_m)
        out.append(float((w * basis).sum()))
    return out
