"""The one protocol between models, samplers and likelihoods, ``score_fn(x [B, ...], t [B]) -> [B, ...]``, and the
check of its output at a boundary."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["ScoreFn", "evaluate_score"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""The one protocol between models, samplers and likelihoods: ``score_fn(x [B, ...], t [B]) -> [B, ...]``."""


def evaluate_score(score_fn: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    """Call ``score_fn(x, t)`` and check that it returned a finite tensor shaped like ``x``.

    The error names the time at which the score went wrong, so a user can tell an unstable model from
    an unstable sampler.
    """
    score = score_fn(x, t)
    when = f"t={float(t.reshape(-1)[0]):.6g}" if t.numel() else "t=?"
    if not isinstance(score, Tensor):
        raise TypeError(f"score_fn must return a torch.Tensor, got {type(score).__name__} at {when}")
    if score.shape != x.shape:
        raise ValueError(
            f"score_fn returned shape {tuple(score.shape)} at {when}, expected the shape of x {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(score).all()):
        raise ValueError(f"score_fn returned non-finite values (NaN or inf) at {when}")
    return score
