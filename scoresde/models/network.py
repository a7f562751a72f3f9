"""What a score network carries, declared as fields at construction: a learned-variance channel, classes, a
low-resolution condition's channels. `ScoreNetwork` is the base of the package's networks; `network_spec` reads the
declaration once, for `scoresde.models.ScoreModel`, through a DDP wrapper."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..processes.seam import ModelSpec, spec_of

__all__ = ["ScoreNetwork", "network_spec", "unwrapped", "sample_shape", "network_autocast"]


class ScoreNetwork(nn.Module):
    """A network ``net(x, t[, y][, cond=, level=][, s=])`` that declares what it carries: ``learn_variance`` (a
    second half of output channels, the reverse variance's fraction), ``num_classes`` (labels ``0 .. K-1``, the null
    label ``K``), ``cond_channels`` (a super-resolution stage's low-resolution condition), ``two_times`` (a flow
    map's second time ``s``, embedded as ``t - s`` and added to the time embedding) and the shape of its input
    (`sample_shape`). A plain ``nn.Module`` declares none of them."""

    learn_variance: bool = False
    num_classes: int = 0
    cond_channels: int = 0
    two_times: bool = False
    in_channels: int = 0
    image_size: int = 0

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one input (what a sampler draws): ``(C, H, W)`` of an image network."""
        return (self.in_channels, self.image_size, self.image_size)


def unwrapped(net: nn.Module) -> nn.Module:
    """The network inside a `DistributedDataParallel` wrapper (the network itself otherwise)."""
    return net.module if isinstance(net, DistributedDataParallel) else net


def network_spec(net: nn.Module) -> ModelSpec:
    """The declaration of the score model around ``net``: a scaled score (`ScoreModel.scaled_score`) with the
    network's variance channel, classes and condition."""
    inner = unwrapped(net)
    if not isinstance(inner, ScoreNetwork):
        return ModelSpec(output="score", scaled=True)
    return ModelSpec(output="score", variance=bool(inner.learn_variance), num_classes=int(inner.num_classes),
                     scaled=True, condition=bool(inner.cond_channels))  # fmt: skip


def sample_shape(model) -> tuple[int, ...]:
    """The shape of one sample the samplers draw from a loaded run's ``model``: a latent for a latent model (its
    declared decoder), else its network's input."""
    if spec_of(model).decoder:
        return tuple(model.latent_shape)
    return tuple(unwrapped(model.net).sample_shape)


@contextlib.contextmanager
def network_autocast(dtype: torch.dtype | None, device: torch.device | str) -> Iterator[None]:
    """``torch.autocast(device, dtype)`` around a network call; nothing when ``dtype`` is ``None`` (fp32)."""
    if dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield
