r"""`sample_cascade`: a cascade's two stages (Ho et al. 2021), each with any sampler.

The base stage draws low-resolution images $x_{low}$; conditioning augmentation adds noise at the level $s$ chosen
for sampling, $\tilde x_{low} = x_{low} + s\,\epsilon$; the super-resolution stage, a model declaring ``condition``
(`scoresde.processes.seam.ModelSpec`), is bound to $(\tilde x_{low}, s)$ by ``given`` and sampled like any score
model. Each stage's NFE is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._io import json_safe
from ..processes.base import SDE
from ..processes.seam import spec_of
from .sampling import sample

__all__ = ["sample_cascade", "CascadeResult", "augment"]


def augment(low: Tensor, level: float, generator: torch.Generator | None = None) -> Tensor:
    r"""Gaussian conditioning augmentation $\tilde x_{low} = x_{low} + s\,\epsilon$ at level $s$ = ``level``."""
    noise = torch.randn(low.shape, generator=generator, dtype=low.dtype, device=low.device)
    return low + level * noise


@dataclass
class CascadeResult:
    """Output of `sample_cascade`: the images ``x``, the base stage's ``low``, the ``nfe`` of each stage
    (``base``, ``super_resolution``), the augmentation ``level`` and each stage's sampler settings."""

    x: Tensor
    low: Tensor
    nfe: dict
    level: float
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        shapes = {"shape": list(self.x.shape), "low_shape": list(self.low.shape)}
        totals = {"nfe": self.nfe, "nfe_total": sum(self.nfe.values()), "level": self.level}
        return json_safe({**totals, **shapes, "settings": self.settings})


def sample_cascade(
    base_sde: SDE,
    base: Any,
    sde: SDE,
    super_resolution: Any,
    n: int,
    low_shape: Sequence[int],
    shape: Sequence[int],
    *,
    level: float = 0.0,
    max_level: float | None = None,
    base_sampler: str | None = None,
    sampler: str | None = None,
    base_options: dict | None = None,
    options: dict | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> CascadeResult:
    r"""Draw ``n`` images of ``shape`` through a cascade: ``base`` (under ``base_sde``) draws ``low_shape`` images,
    they are augmented at ``level`` (`augment`), and ``super_resolution`` (under ``sde``) draws the images given them.

    Args:
        base_sde: the base stage's forward process.
        base: the base stage's score model.
        sde: the super-resolution stage's forward process.
        super_resolution: a model declaring ``condition`` (``given(low, level)`` binds it).
        n: number of images.
        low_shape: one low-resolution image ``(C, h, h)``.
        shape: one image ``(C, H, H)``; ``h`` must divide ``H`` and the channels agree.
        level: the conditioning-augmentation level $s \ge 0$.
        max_level: the top of the level range the stage trained on (None: no top).
        base_sampler: the base stage's sampler (`scoresde.sample`'s names; its default when None).
        sampler: the super-resolution stage's sampler.
        base_options: `scoresde.sample` keyword arguments for the base stage (``steps``, ``solver``, its options).
        options: the same for the super-resolution stage.
        generator: the only source of randomness.
        device: of the images.
        dtype: of the images.
    """
    if not spec_of(super_resolution).condition:  # the declaration promises given(low, level)
        raise ValueError(
            f"the super-resolution stage must be a model conditioned on a low-resolution image (a run trained with "
            f"stage.low_resolution); this {type(super_resolution).__name__} declares no condition"
        )
    low_shape, shape = tuple(int(s) for s in low_shape), tuple(int(s) for s in shape)
    if len(low_shape) != 3 or len(shape) != 3 or low_shape[0] != shape[0] or shape[-1] % low_shape[-1]:
        raise ValueError(
            f"mismatched cascade stages: the base draws {low_shape} images, the super-resolution stage makes {shape} "
            f"(the channels must agree and the low resolution divide the high)"
        )
    top = float("inf") if max_level is None else max_level
    if not 0 <= level <= top:
        raise ValueError(f"the conditioning-augmentation level must lie in [0, {top:g}] (its training range), "
                         f"got {level!r}")  # fmt: skip
    common = {"generator": generator, "device": device, "dtype": dtype}
    low = sample(base_sde, base, (n, *low_shape), base_sampler, **common, **(base_options or {}))
    condition = augment(low.x, level, generator)
    bound = super_resolution.given(condition, level)
    high = sample(sde, bound, (n, *shape), sampler, **common, **(options or {}))
    return CascadeResult(
        x=high.x,
        low=low.x,
        nfe={"base": low.nfe, "super_resolution": high.nfe},
        level=float(level),
        settings={
            "base": {"sampler": low.sampler, **low.settings},
            "super_resolution": {"sampler": high.sampler, **high.settings},
        },
    )
