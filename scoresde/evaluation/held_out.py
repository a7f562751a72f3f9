"""Held-out data of a run's data set, in the model's range: what a comparison scores samples against, with an
independent set of the same law for the noise floor, and for toys with a density the exact log-density."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_positive_int

__all__ = ["HeldOut", "held_out", "HELD_OUT_SEED"]


@dataclass
class HeldOut:
    """Held-out data of a run's data set in the model's range: ``x`` to score against, an independent ``floor``
    set of the same law, and for toys with a density the exact ``log_prob`` (the data's true NLL), the
    ``sample_log_prob`` that samples are scored under and ``entropy``, the mean a perfect sampler scores under it
    (`ToyDataset.nll_log_prob`, `ToyDataset.perfect_nll`: for the checkerboard the data blurred by 0.01)."""

    x: Tensor
    floor: Tensor | None
    log_prob: Callable[[Tensor], Tensor] | None = None
    entropy: float | None = None
    sample_log_prob: Callable[[Tensor], Tensor] | None = None


HELD_OUT_SEED = 1_000_003
"""Offset of the seed of held-out toy draws: training draws come from other generators (per-step seeds)."""


def held_out(data, n: int, seed: int = 0) -> HeldOut:
    """Held-out data for a `DataConfig`: fresh draws of a toy (``x`` and ``floor``
    from two generators), or an image set's test split (``x``, first ``n``) with the first ``n`` training
    images as ``floor``, both at the centres of their quantisation bins in the model's range."""
    from ..datasets import image_dataset, toy_dataset
    from ..datasets.images import downsample_levels

    n = check_positive_int("n", n)
    if data.kind == "toy":
        toy = toy_dataset(data.name)
        draw = lambda k: toy.sample(n, torch.Generator().manual_seed(HELD_OUT_SEED + 2 * seed + k))  # noqa: E731
        if toy.has_density:
            return HeldOut(draw(0), draw(1), toy.log_prob, toy.perfect_nll(), toy.nll_log_prob)
        return HeldOut(draw(0), draw(1))
    transform = data.transform()
    test, train = (image_dataset(data.name, split, data.data_dir, data.split_seed).x[:n] for split in ("test", "train"))
    if data.resolution is not None:
        test, train = downsample_levels(test, data.resolution), downsample_levels(train, data.resolution)
    return HeldOut(transform.to_model(test.float() + 0.5), transform.to_model(train.float() + 0.5))
