"""The smaller defects of the architecture review, each with a check that fails on the old code."""

from __future__ import annotations

import math

import torch

from scoresde import VPSDE, GaussianMixture
from scoresde.likelihood.exponential_integrator import per_sample_norm, solve_exponential
from scoresde.processes import ProbabilityFlow
from scoresde.processes.divergence import exact_divergence
from scoresde.processes.reverse_variance import ScoreMoments
from scoresde.training.checkpoint import checkpoint_step

GAUSS = GaussianMixture([1.0], torch.zeros(1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)[None])


def test_the_flow_docstring_keeps_its_nabla():
    doc = ProbabilityFlow.velocity_and_divergence.__doc__
    assert r"-\nabla\cdot v$" in doc and "\n        abla" not in doc


def test_the_exponential_integrator_has_a_default_error_norm():
    """Adaptive without an error norm: the per-sample norm, the same solution as passing it explicitly."""
    sde, x = VPSDE(), torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    score = GAUSS.score_fn(sde)
    default = solve_exponential(sde, score, exact_divergence, x, 1e-3, rtol=1e-4, atol=1e-4)
    explicit = solve_exponential(
        sde, score, exact_divergence, x, 1e-3, rtol=1e-4, atol=1e-4, error_norm=per_sample_norm
    )
    assert torch.equal(default.z, explicit.z) and default.steps == explicit.steps
    # unit Gaussian data under VP stays N(0, I): the prior end is x times 1 and the divergence integral is 0
    torch.testing.assert_close(default.z, x, rtol=0, atol=1e-4)


def test_checkpoint_step_reads_only_the_header(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "checkpoint.safetensors"
    save_file({"model.w": torch.zeros(3)}, str(path), metadata={"step": "41"})  # no config: not loadable as a run
    assert checkpoint_step(path) == "41"
    path.write_bytes(b"not a checkpoint")
    assert checkpoint_step(path) == "?"


def test_score_moments_interpolate_on_the_time_device_and_dtype():
    sde = VPSDE()
    times = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    table = ScoreMoments(times, torch.tensor([9.0, 3.0, 1.0], dtype=torch.float64), torch.zeros(3), 10)
    t = torch.tensor([0.1, 0.3, 1.0, 2.0], dtype=torch.float32)
    gamma = table.at(sde, t)
    assert gamma.dtype == torch.float32 and gamma.shape == (4,)
    lam = sde.log_snr(torch.tensor([0.1, 0.3, 0.5], dtype=torch.float64))
    w = float((lam[1] - lam[0]) / (lam[2] - lam[0]))
    expected = [9.0, 9.0 + w * (3.0 - 9.0), 1.0, 1.0]  # linear in the log-SNR, clamped to the table
    assert all(math.isclose(float(g), e, rel_tol=1e-5) for g, e in zip(gamma, expected))
