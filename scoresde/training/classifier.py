"""Training a noise-conditional classifier for classifier guidance."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_positive_int, progress_bar
from ..datasets import DataTransform
from ..processes.base import SDE
from .losses import classifier_loss

__all__ = ["train_classifier"]


def train_classifier(
    classifier: nn.Module,
    sde: SDE,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    transform: DataTransform | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    r"""Fit a noise-conditional classifier $p_\phi(y \mid x_t, t)$ for classifier guidance: Adam on
    `scoresde.training.losses.classifier_loss` over minibatches of ``(x, y)`` (data in the model's range, or integer
    images
    dequantised by ``transform`` at each draw). Returns the loss of every step; the classifier ends in eval mode."""

    steps, batch_size = check_positive_int("steps", steps), check_positive_int("batch_size", batch_size)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    device = next(classifier.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    classifier.train()
    losses = []
    for _ in progress_bar(range(steps), "classifier", progress, leave=False):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=generator)
        x0 = transform.dequantize(x[idx], generator) if transform is not None else x[idx]
        loss = classifier_loss(classifier, sde, x0.to(device), y[idx].to(device), generator=generator).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
