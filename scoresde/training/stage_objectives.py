r"""The objectives of the runs that are stages of a larger model (`scoresde.training.objectives` for the others):

- ``autoencoder``: a KL-regularised autoencoder, $[-\log P(x\mid z) + \beta\,\mathrm{KL}(q(z\mid x)\,\|\,
  \mathcal N(0, I))]/D$ with the discretised decoder, optionally feature matching (`AutoencoderObjective`);
- ``super_resolution``: DSM of a cascade's super-resolution stage given its low-resolution condition, with Gaussian
  conditioning augmentation at a level drawn per row (`SuperResolutionDSM`, `augment_condition`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config.schema import RunConfig
from ..datasets.scalers import DataTransform
from ..likelihood.latent import decoder_log_prob
from ..processes.base import SDE
from ..processes.score import ScoreFn
from .objectives import Batch, DenoisingScoreMatching, Objective, register_objective

__all__ = ["AutoencoderObjective", "SuperResolutionDSM", "augment_condition"]


class AutoencoderObjective(Objective):
    r"""A KL-regularised autoencoder's loss per data dimension (Rombach et al. 2022 with a likelihood decoder):

    $$\mathcal L = \frac1D\Big[-\log P(x\mid z) + \beta\,\mathrm{KL}\big(q(z\mid x)\,\|\,\mathcal N(0, I)\big)\Big]
    + w\,\frac1F\|\phi(\hat x) - \phi(x)\|^2,\qquad z \sim q(z\mid x),$$

    $P(x\mid z)$ the decoder's Gaussian discretised over the data's levels (`decoder_log_prob`; $\beta = 1$: the
    negative ELBO), $\mathrm{KL} = \tfrac12\sum(\mu^2 + s^2 - 1 - \log s^2)$, and with ``features`` $\phi$ (the data
    set's shipped feature network, images in [0, 1]) a feature-matching term of weight $w$."""

    def __init__(
        self,
        transform: DataTransform,
        kl_weight: float,
        feature_weight: float = 0.0,
        features: nn.Module | None = None,
    ) -> None:
        if feature_weight and features is None:
            raise ValueError("train.feature_weight > 0 needs the data set's feature network (features=...)")
        self.transform, self.kl_weight, self.feature_weight, self.features = (
            transform, kl_weight, feature_weight, features
        )  # fmt: skip

    def terms(self, model: nn.Module, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        r"""Per-row ``reconstruction`` ($-\log P(x|z)$, nats), ``kl`` (nats) and ``features`` for model-range
        ``x``."""
        mean, std = model.posterior(x)
        z = mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        x_hat, scale = model.decoder_distribution(z)
        levels = self.transform.from_model(x)
        terms = {
            "reconstruction": -decoder_log_prob(levels, x_hat, scale, self.transform),
            "kl": 0.5 * (mean**2 + std**2 - 1 - 2 * torch.log(std)).flatten(1).sum(1).double(),
        }
        if self.feature_weight:
            unit = self.transform.low, self.transform.high - self.transform.low
            phi_hat = self.features(((x_hat - unit[0]) / unit[1]).clamp(0, 1))
            phi = self.features(((x - unit[0]) / unit[1]).clamp(0, 1)).detach()
            terms["features"] = ((phi_hat - phi) ** 2).mean(1).double()
        return terms

    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        terms = self.terms(model, batch.x0, generator)
        dim = batch.x0[0].numel()
        loss = (terms["reconstruction"] + self.kl_weight * terms["kl"]) / dim
        if self.feature_weight:
            loss = loss + self.feature_weight * terms["features"]
        return loss.mean().to(batch.x0.dtype)

    def outputs(self, model: nn.Module, batch: Batch, sde: SDE) -> dict[str, Tensor]:
        return {"reconstruction": model(batch.x0)}


def augment_condition(low: Tensor, level: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
    r"""Gaussian conditioning augmentation (Ho et al. 2021): $\tilde x_{low} = x_{low} + s\,\epsilon$ at noise level
    ``level`` $= s$ (``[B]`` or one number)."""
    level = torch.as_tensor(level, dtype=low.dtype, device=low.device)
    noise = torch.randn(low.shape, generator=generator, dtype=low.dtype).to(low.device)
    return low + level.reshape(-1, *[1] * (low.ndim - 1)) * noise if level.ndim else low + level * noise


class SuperResolutionDSM(DenoisingScoreMatching):
    r"""DSM of a super-resolution stage $s_\theta(x_t, t \mid \tilde x_{low}, s)$: each row's augmentation level
    $s \sim U[0, s_{max}]$ is drawn, its low-resolution image augmented (`augment_condition`) and bound to the
    model (``model.given``); the level is an input of the network, chosen at sampling time."""

    def __init__(self, sde: SDE, weighting: str, importance_sampling: bool, t_min, n_steps, max_augmentation: float):
        super().__init__(sde, weighting, importance_sampling, t_min, n_steps)
        self.max_augmentation = max_augmentation

    def conditioned(self, model: nn.Module, batch: Batch, generator: torch.Generator | None) -> nn.Module:
        if batch.low is None:
            raise ValueError("a super-resolution stage trains on batches with their low-resolution images")
        if generator is None:  # the restored-checkpoint check: the condition as it is
            return model.given(batch.low, 0.0)
        level = self.max_augmentation * torch.rand(batch.low.shape[0], generator=generator, dtype=batch.low.dtype)
        level = level.to(batch.low.device)
        return model.given(augment_condition(batch.low, level, generator), level)

    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        return super().__call__(self.conditioned(model, batch, generator), batch, generator)


@register_objective("super_resolution")
def _super_resolution(config: RunConfig, sde: SDE, *, teacher: ScoreFn | None, world: int) -> Objective:
    tc = config.train
    return SuperResolutionDSM(
        sde, tc.weighting, tc.importance_sampling, tc.t_min, tc.n_steps, config.stage.max_augmentation
    )


@register_objective("autoencoder")
def _autoencoder(config: RunConfig, sde: SDE, *, teacher: ScoreFn | None, world: int, features=None) -> Objective:
    if world > 1:
        raise ValueError("an autoencoder trains on one process (run it without torchrun)")
    tc = config.train
    return AutoencoderObjective(config.data.transform(), tc.kl_weight, tc.feature_weight, features)
