"""The exponential moving average of a model's weights (the model a run evaluates, and a consistency target)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    r"""Exponential moving average of parameters and buffers, $\bar\theta \leftarrow d\,\bar\theta + (1 - d)\theta$,
    with the warm-up $d_k = \min(d, (1 + k)/(10 + k))$ so early averages are not dominated by the initialisation."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for ema, p in zip(self.model.parameters(), model.parameters()):
            ema.lerp_(p.detach(), 1 - d)
        for ema, b in zip(self.model.buffers(), model.buffers()):
            ema.copy_(b)
