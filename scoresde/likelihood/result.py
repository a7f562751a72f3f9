r"""What `scoresde.log_likelihood` returns: per-sample NLLs with their integration error and the Hutchinson probes'
spread, and the error bar of a mean by source."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor

from .._stats import mean_and_standard_error

__all__ = ["LikelihoodResult", "error_budget"]


@dataclass
class LikelihoodResult:
    """Output of `log_likelihood`, per sample (``[B]`` tensors, float64 on the CPU).

    Attributes:
        nll: $-\\log p_{t_{min}}(x)$ in nats (the mean over the Hutchinson probes).
        prior_logp: $\\log p_T(z)$ of the latent.
        delta_logp: $\\int_{t_{min}}^T \\nabla\\cdot v\\,dt$, so that ``-nll = prior_logp + delta_logp``.
        z: the latent $x(T)$ ``[B, ...]``.
        nfe: score evaluations over the whole data set (all batches; all processes under torchrun), including
            those of the error estimate.
        integration_error: per-sample estimate of $|\\text{nll} - \\text{nll}_{exact\\ ODE}|$ (see
            `log_likelihood`'s ``error_estimate``), or None when not estimated.
        probe_nll: ``[P, B]`` the NLL of each Hutchinson probe along the same trajectory (None for the exact
            divergence): their spread is the probes' share of the standard error.
        settings: every argument that moves the number (``t_min`` included).
    """

    nll: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    z: Tensor
    nfe: int
    settings: dict = field(default_factory=dict)
    integration_error: Tensor | None = None
    probe_nll: Tensor | None = None

    def probe_variance(self) -> Tensor | None:
        """Per sample, the variance of ``nll`` that the probes cause, $\\mathrm{Var}_p/P$ (None with fewer than
        two probes: one probe's spread cannot be told from the data's)."""
        if self.probe_nll is None or self.probe_nll.shape[0] < 2:
            return None
        return self.probe_nll.var(0) / self.probe_nll.shape[0]

    def to_dict(self) -> dict:
        mean, se = mean_and_standard_error(self.nll)
        out = {"nll_mean": mean, "nll_standard_error": se, "n": self.nll.numel(), "nfe": self.nfe}
        out.update(error_budget(self.nll, self.integration_error, self.probe_variance()))
        out["settings"] = self.settings
        return out


def error_budget(values: Tensor, integration_error: Tensor | None, probe_variance: Tensor | None) -> dict:
    r"""The error bar of a mean over samples, by source: the standard error over samples (which contains the
    probes' noise), the probes' part of it $\sqrt{\overline{\mathrm{Var}_p}/n}$ and its share of the variance,
    and the integration error estimate (mean and worst per-sample), kept apart from the Monte-Carlo terms."""
    n = values.numel()
    _, se = mean_and_standard_error(values)
    out = {
        "integration_error": float(integration_error.mean()) if integration_error is not None else None,
        "integration_error_max": float(integration_error.max()) if integration_error is not None and n else None,
        "probe_standard_error": None,
        "probe_share_of_variance": None,
    }
    if probe_variance is not None and n > 1:
        probe_se = math.sqrt(float(probe_variance.mean()) / n)
        out["probe_standard_error"] = probe_se
        out["probe_share_of_variance"] = min(1.0, probe_se**2 / se**2) if se > 0 else None
    return out
