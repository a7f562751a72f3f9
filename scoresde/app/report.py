r"""What the ``compare`` and ``likelihood`` commands compute and write, as plain functions: a Python user gets the
same files and figures as the command line (the demo: `scoresde.app.demo`).

- `likelihood_summary`: exact NLL (probability-flow ODE) with its standard error, bits/dim, NFE and
  the ELBO beside it, and for data with a known density the paired gap to the true NLL.
- `write_comparison`: a `Comparison` as ``compare.json``, ``compare.md``
  and ``compare.png`` (samples side by side and quality against NFE).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import Tensor

from .._io import json_text
from .._stats import mean_and_standard_error
from ..evaluation.comparison import (
    Comparison,
)
from ..processes.base import SDE
from ..processes.score import ScoreFn

__all__ = ["likelihood_summary", "write_comparison", "COMPARE_FILES", "IMAGE_LIKELIHOOD"]


IMAGE_LIKELIHOOD = {"method": "ei", "rtol": 1e-2, "atol": 1e-2, "error_control": "batch"}
"""The solver settings of image bits/dim, chosen by measurement on digits-ddpm (benchmarks/likelihood_images.py,
359 test images, 2 CPU threads): 71 NFE, 25 s, 1.3e-4 bits/dim from a tight solve (standard error 0.014;
estimate 0.004). Per-sample control at 1e-2 needed 322 NFE for the same figure; the previous default (dopri5,
per-sample, 1e-5) 1832 NFE, 598 s; rtol = atol = 3e-2 reaches 17 s at 1.4e-3 bits/dim from the tight solve."""


def likelihood_summary(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    transform=None,
    true_nll: Tensor | None = None,
    seed: int = 0,
    progress: bool = False,
    t_min: float | None = None,
    rigorous: bool = True,
    dequantization: dict | None = None,
    chunk_size: int = 512,
    **solver,
) -> dict:
    r"""NLL and bits/dim of held-out ``x`` with standard errors over points, NFE and the ELBO on the same points.

    Continuous data (``transform`` None): $-\log p_\theta(x)$ in nats through the probability-flow ODE
    (exact divergence, float64), bits/dim $= \mathrm{NLL}/(D\ln 2)$, the continuous ELBO, and with
    ``true_nll`` the paired gap $\overline{\mathrm{NLL}_\theta - \mathrm{NLL}}$ and its standard error.
    Discrete images (a `DataTransform`): `bits_per_dim` (uniform dequantisation, Hutchinson divergence,
    float32 as the reference code) in chunks of ``chunk_size`` images (`sharded_bits_per_dim`: under torchrun the
    processes share the chunks and every one returns the result one process would), its error budget
    (integration error, the standard error by source), the rigorous bound beside it (``rigorous``) and the ELBO
    counterpart; ``dequantization`` (`bits_per_dim`'s ``dequantization``, ``n_dequantizations``,
    ``importance_weighted``) applies to both, and the offset it adds is reported (``offset_bits_per_dim``, derived
    from the levels and range). ``t_min`` defaults to 1e-5; ``solver``
    (method, rtol, atol, error_control, n_probes, probe) overrides `IMAGE_LIKELIHOOD` for images and
    `log_likelihood`'s defaults for continuous data.
    """
    from ..likelihood.bounds import elbo
    from ..likelihood.pf_ode import log_likelihood
    from ..likelihood.sharded import sharded_bits_per_dim

    generator = torch.Generator().manual_seed(seed)
    if transform is not None:
        options = {"divergence": "hutchinson", **IMAGE_LIKELIHOOD, **solver}
        dequantization = dequantization or {}
        chunks = {"chunk_size": chunk_size, "seed": seed}
        exact = sharded_bits_per_dim(
            sde,
            score_fn,
            x.float(),
            transform,
            dtype=torch.float32,
            progress=progress,
            t_min=t_min,
            rigorous=rigorous,
            **chunks,
            **dequantization,
            **options,
        )
        bound = sharded_bits_per_dim(
            sde,
            score_fn,
            x.float(),
            transform,
            estimator="elbo",
            divergence="hutchinson",
            n_times=16,
            dtype=torch.float32,
            t_min=t_min,
            **chunks,
            **dequantization,
        )
        return {
            "n": int(x.shape[0]),
            "bits_per_dim": exact.bpd,
            "bits_per_dim_standard_error": exact.bpd_standard_error,
            "bits_per_dim_integration_error": exact.integration_error,
            "dequantization": exact.settings["dequantization"],
            "importance_weighted": exact.settings["importance_weighted"],
            "importance_bias_bits_per_dim": exact.importance_bias,
            "offset_bits_per_dim": exact.offset,
            "standard_errors": exact.standard_errors,
            "rigorous_bits_per_dim": exact.rigorous_bpd,
            "rigorous_bits_per_dim_standard_error": exact.rigorous_bpd_standard_error,
            "t_min": exact.settings["t_min"],
            "nll_nats": exact.nats_per_sample,
            "nfe": exact.nfe,
            "elbo_bits_per_dim": bound.bpd,
            "elbo_bits_per_dim_standard_error": bound.bpd_standard_error,
            "settings": exact.settings,
        }
    x = x.to(torch.float64)
    model = (
        copy.deepcopy(score_fn).double() if isinstance(score_fn, torch.nn.Module) else score_fn
    )  # the caller's stays float32
    # continuous data: `log_likelihood`'s own defaults (ei, every sample to 1e-5: its NLL is compared with the truth)
    result = log_likelihood(sde, model, x, progress=progress, batch_size=1000, t_min=t_min, **solver)
    bound = elbo(sde, model, x, generator=generator, t_min=t_min)
    dim = x[0].numel()
    nll, nll_se = mean_and_standard_error(result.nll)
    elbo_mean, elbo_se = mean_and_standard_error(bound.bound)
    summary = {
        "n": int(x.shape[0]),
        "nll_nats": nll,
        "nll_standard_error": nll_se,
        "nll_integration_error": result.to_dict()["integration_error"],
        "bits_per_dim": nll / (dim * math.log(2)),
        "t_min": result.settings["t_min"],
        "nfe": result.nfe,
        "elbo_nats": elbo_mean,
        "elbo_standard_error": elbo_se,
        "settings": result.settings,
    }
    if true_nll is not None:
        gap, gap_se = mean_and_standard_error(result.nll - true_nll.double().cpu())
        summary.update(
            {"true_nll_nats": float(true_nll.double().mean()), "nll_gap_nats": gap, "nll_gap_standard_error": gap_se}
        )
    return summary


COMPARE_FILES = ("compare.json", "compare.md", "compare.png")


def write_comparison(
    comparison: Comparison, reference: Tensor, folder: str | Path, *, extent: float | None = None
) -> list[Path]:
    """Write ``compare.json`` (every run's figures), ``compare.md`` (the table) and ``compare.png``
    (`plot_comparison`) into ``folder``; returns the paths."""
    import matplotlib.pyplot as plt

    from .result_figures import plot_comparison

    folder = Path(folder)
    paths = [folder / name for name in COMPARE_FILES]
    paths[0].write_text(json_text(comparison.to_dict()))
    paths[1].write_text(comparison.markdown())
    fig = plot_comparison(comparison, reference, extent=extent)
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths
