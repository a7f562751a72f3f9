r"""2D toy distributions with FFJORD's definitions (Grathwohl et al. 2019, ``lib/toy_data.py``).

Each toy is an infinite stream: ``sample(n, generator)`` draws i.i.d. points from the distribution that
FFJORD's finite generator approximates (a random angle where FFJORD lays points on a ``linspace``).
Three have a tractable density, with an exact ``log_prob`` and ``entropy`` (the lowest expected NLL any
model can reach): ``8gaussians`` and ``gmm`` (Gaussian mixtures, built on
`GaussianMixture`) and ``checkerboard`` (uniform on 8 squares).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_in_registry, check_positive_int
from ..oracles.gaussian_mixture import GaussianMixture
from ..oracles.uniform_boxes import UniformBoxes

__all__ = ["ToyDataset", "register_toy", "toy_dataset", "toy_datasets", "gmm_mixture", "eight_gaussians_mixture"]

_TOYS: dict[str, type[ToyDataset]] = {}


def register_toy(name: str) -> Callable[[type[ToyDataset]], type[ToyDataset]]:
    """Class decorator adding a `ToyDataset` subclass to the registry under ``name``."""

    def add(cls: type[ToyDataset]) -> type[ToyDataset]:
        if name in _TOYS:
            raise ValueError(f"a toy data set named {name!r} is already registered ({_TOYS[name].__name__})")
        cls.name = name
        _TOYS[name] = cls
        return cls

    return add


def toy_datasets() -> list[str]:
    """Names of the registered 2D toy data sets, sorted."""
    return sorted(_TOYS)


def toy_dataset(name: str) -> ToyDataset:
    """The toy data set registered as ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    check_in_registry("toy data set", name, list(_TOYS))
    return _TOYS[name]()


class ToyDataset(abc.ABC):
    """A 2D distribution to sample from; subclasses with a tractable density set ``has_density``."""

    name: str = ""
    has_density: bool = False
    extent: float = 4.5
    """Half-width of a square around the origin that holds (nearly) all the mass: the range of plots."""

    @abc.abstractmethod
    def _sample(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """``n`` float64 samples ``[n, 2]`` on ``device``."""

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``n`` i.i.d. points ``[n, 2]``; randomness only from ``generator`` (float64 on its device, then
        cast)."""
        n = check_positive_int("n", n)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        x = self._sample(n, generator, gen_device)
        return x.to(device=device or gen_device, dtype=dtype or torch.get_default_dtype())

    num_classes: int = 0
    """Classes of the toy (mixture toys: one per component), for class-conditional models; 0: unlabelled."""
    oracle = None
    """The exact oracle of the toy's SDE marginals (``marginal_score``, ``marginal_log_prob``, ``score_fn(sde)``):
    a `GaussianMixture` or `UniformBoxes`; None when the toy has no closed form."""

    def nll_log_prob(self, x: Tensor) -> Tensor:
        r"""The log-density under which samples' true NLL is measured: $\log p$ (the checkerboard: $p$ blurred)."""
        return self.log_prob(x)

    def perfect_nll(self) -> float:
        r"""The mean true NLL (under `nll_log_prob`) a perfect sampler scores: the entropy for a smooth density."""
        return self.entropy()

    def sample_labelled(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``n`` points ``[n, 2]`` with their class labels ``[n]`` (toys with ``num_classes > 0`` only)."""
        raise ValueError(
            f"toy data set {self.name!r} has no classes; labelled toys: "
            f"{', '.join(k for k in toy_datasets() if _TOYS[k]().num_classes)}"
        )

    def _no_density(self) -> ValueError:
        with_density = [k for k in toy_datasets() if _TOYS[k].has_density]
        return ValueError(
            f"toy data set {self.name!r} has no tractable density; those with one are: {', '.join(with_density)}"
        )

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density ``[B]`` of points ``x [B, 2]`` (only for toys with ``has_density``)."""
        raise self._no_density()

    def entropy(self) -> float:
        """Differential entropy in nats (only for toys with ``has_density``)."""
        raise self._no_density()

    def __repr__(self) -> str:
        return f"toy_dataset({self.name!r})"


def _uniform(n: int, generator, device, low: float = 0.0, high: float = 1.0) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def _normal(shape, generator, device, std: float = 1.0) -> Tensor:
    return std * torch.randn(shape, generator=generator, device=device, dtype=torch.float64)


def _coin(n: int, generator, device, p: float = 0.5) -> Tensor:
    """Boolean ``[n]``, True with probability ``p``."""
    return _uniform(n, generator, device) < p


def _on_circle(radius: Tensor, angle: Tensor) -> Tensor:
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)


# ---------------------------------------------------------------------- sample-only toys
@register_toy("swissroll")
class SwissRoll(ToyDataset):
    r"""scikit-learn's swiss roll (noise 1) seen from the side, / 5: $s = \tfrac{3\pi}{2}(1 + 2u)$,
    $x = (s\cos s,\ s\sin s)/5 + \mathcal N(0, 0.2^2 I)$."""

    def _sample(self, n, generator, device):
        s = 1.5 * math.pi * (1 + 2 * _uniform(n, generator, device))
        return (_on_circle(s, s) + _normal((n, 2), generator, device)) / 5


@register_toy("circles")
class Circles(ToyDataset):
    """scikit-learn's two circles (radii 1 and 0.5, equal mass, noise 0.08), scaled by 3."""

    def _sample(self, n, generator, device):
        radius = torch.where(_coin(n, generator, device), 1.0, 0.5).to(torch.float64)
        angle = _uniform(n, generator, device, 0.0, 2 * math.pi)
        return 3 * (_on_circle(radius, angle) + _normal((n, 2), generator, device, 0.08))


@register_toy("rings")
class Rings(ToyDataset):
    """Four concentric rings of radii 3, 2.25, 1.5, 0.75 with equal mass, plus N(0, 0.08²) noise."""

    def _sample(self, n, generator, device):
        ring = torch.randint(0, 4, (n,), generator=generator, device=device)
        radius = 3.0 * (1.0 - 0.25 * ring.to(torch.float64))
        angle = _uniform(n, generator, device, 0.0, 2 * math.pi)
        return _on_circle(radius, angle) + _normal((n, 2), generator, device, 0.08)


@register_toy("moons")
class Moons(ToyDataset):
    """scikit-learn's two interleaving half circles (noise 0.1), mapped by ``x * 2 + (-1, -0.2)``."""

    def _sample(self, n, generator, device):
        upper = _coin(n, generator, device)
        angle = _uniform(n, generator, device, 0.0, math.pi)
        outer = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        inner = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
        x = torch.where(upper[:, None], outer, inner) + _normal((n, 2), generator, device, 0.1)
        return 2 * x + torch.tensor([-1.0, -0.2], dtype=torch.float64, device=device)


@register_toy("pinwheel")
class Pinwheel(ToyDataset):
    r"""Five curved arms: $r \sim \mathcal N(1, 0.3^2)$, $v \sim \mathcal N(0, 0.1^2)$, arm $c$,
    rotated by $\phi = 2\pi c/5 + 0.25 e^{r}$, scaled by 2."""

    def _sample(self, n, generator, device):
        features = _normal((n, 2), generator, device) * torch.tensor([0.3, 0.1], dtype=torch.float64, device=device)
        features[:, 0] += 1.0
        arm = torch.randint(0, 5, (n,), generator=generator, device=device).to(torch.float64)
        phi = 2 * math.pi * arm / 5 + 0.25 * torch.exp(features[:, 0])
        c, s = torch.cos(phi), torch.sin(phi)
        return 2 * torch.stack(
            [features[:, 0] * c + features[:, 1] * s, -features[:, 0] * s + features[:, 1] * c], dim=1
        )


@register_toy("2spirals")
class TwoSpirals(ToyDataset):
    r"""Two interleaved spirals: $s = \sqrt{u}\cdot 3\pi$, $(-s\cos s, s\sin s) + U[0, 0.5]^2$,
    mirrored for the second arm, / 3, plus N(0, 0.1²) noise."""

    def _sample(self, n, generator, device):
        s = torch.sqrt(_uniform(n, generator, device)) * 540 * (2 * math.pi) / 360
        arm = torch.stack([-torch.cos(s) * s, torch.sin(s) * s], dim=1) + 0.5 * torch.rand(
            n, 2, generator=generator, device=device, dtype=torch.float64
        )
        sign = torch.where(_coin(n, generator, device), 1.0, -1.0).to(torch.float64)
        return sign[:, None] * arm / 3 + _normal((n, 2), generator, device, 0.1)


# ---------------------------------------------------------------------- toys with a density
class MixtureToy(ToyDataset):
    """A toy that is a `GaussianMixture`: exact ``log_prob`` and ``entropy`` come from the oracle."""

    has_density = True

    def __init__(self, mixture: GaussianMixture) -> None:
        self.mixture = self.oracle = mixture
        self.num_classes = mixture.K
        self._entropy: float | None = None

    def sample_labelled(self, n, generator=None, *, device=None, dtype=None):
        """``n`` points with their component as class label (the same draws as :meth:`sample`)."""
        n = check_positive_int("n", n)
        x, k = self.mixture.sample(n, generator, dtype=torch.float64, return_components=True)
        return x.to(device=device or x.device, dtype=dtype or torch.get_default_dtype()), k.to(device or x.device)

    def _sample(self, n, generator, device):
        return self.mixture.sample(n, generator, dtype=torch.float64)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.mixture.log_prob(x)

    def entropy(self) -> float:
        if self._entropy is None:
            self._entropy = self.mixture.entropy()
        return self._entropy


_FFJORD_SCALE = 1.414
"""FFJORD divides the 8-Gaussians data by 1.414 (not exactly sqrt 2); kept for comparability."""


def eight_gaussians_mixture() -> GaussianMixture:
    """FFJORD's 8 Gaussians: std 0.5 around 8 points of a radius-4 circle, all divided by 1.414."""
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    means = 4.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) / _FFJORD_SCALE
    std = 0.5 / _FFJORD_SCALE
    return GaussianMixture(torch.full((8,), 1 / 8, dtype=torch.float64), means, torch.full((8, 2), std**2))


def gmm_mixture() -> GaussianMixture:
    r"""The package's anisotropic test mixture: 8 components on a radius-1.5 circle, unequal weights,
    each elongated (std 0.3 by 0.08) alternately along the tangent and the radius."""
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    means = 1.5 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    weights = torch.tensor([0.2, 0.05, 0.15, 0.1, 0.2, 0.05, 0.15, 0.1], dtype=torch.float64)
    rot = torch.stack(
        [torch.stack([torch.cos(angle), -torch.sin(angle)], -1), torch.stack([torch.sin(angle), torch.cos(angle)], -1)],
        -2,
    )
    radial, tangential = torch.full((8,), 0.08, dtype=torch.float64), torch.full((8,), 0.3, dtype=torch.float64)
    odd = torch.arange(8) % 2 == 1
    stds = torch.stack([torch.where(odd, tangential, radial), torch.where(odd, radial, tangential)], dim=1)
    covs = rot @ torch.diag_embed(stds**2) @ rot.transpose(-1, -2)
    return GaussianMixture(weights, means, 0.5 * (covs + covs.transpose(-1, -2)))


@register_toy("8gaussians")
class EightGaussians(MixtureToy):
    __doc__ = eight_gaussians_mixture.__doc__

    def __init__(self) -> None:
        super().__init__(eight_gaussians_mixture())


@register_toy("gmm")
class AnisotropicGMM(MixtureToy):
    __doc__ = gmm_mixture.__doc__
    extent = 3.0

    def __init__(self) -> None:
        super().__init__(gmm_mixture())


def checkerboard_boxes() -> UniformBoxes:
    """The 8 dark squares of side 2 of a 4 x 4 checkerboard on [-4, 4]^2 (cells with an even index sum), weight 1/8."""
    cells = torch.tensor([(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0], dtype=torch.float64)
    return UniformBoxes(torch.full((8,), 1 / 8, dtype=torch.float64), 2 * cells, 2 * cells + 2)


CHECKERBOARD_BLUR = 0.01
"""Standard deviation of the Gaussian blur under which checkerboard samples are scored: the noise level where the
samplers stop (VP sigma(1e-3) = 0.0105, VE sigma_min = 0.01). Off the squares p = 0, so the true NLL of any smooth
model's samples would be infinite; a point 0.05 off an edge costs about 13 nats more than one inside."""


@register_toy("checkerboard")
class Checkerboard(ToyDataset):
    r"""Uniform on the 8 dark squares of a 4 x 4 checkerboard on $[-4, 4]^2$ (squares of side 2):
    $p(x) = 1/32$ where $\lfloor x_1/2\rfloor + \lfloor x_2/2\rfloor$ is even, else 0;
    entropy $\log 32$. Its exact marginals and score under any SDE come from `UniformBoxes` (``oracle``)."""

    has_density = True

    def __init__(self) -> None:
        self.oracle = checkerboard_boxes()
        self._perfect_nll: float | None = None

    def _sample(self, n, generator, device):
        x1 = _uniform(n, generator, device, -2.0, 2.0)
        x2 = _uniform(n, generator, device) - 2.0 * _coin(n, generator, device).to(torch.float64)
        x2 = x2 + torch.remainder(torch.floor(x1), 2)
        return 2 * torch.stack([x1, x2], dim=1)

    def log_prob(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"x must have shape [B, 2], got {tuple(x.shape)}")
        return self.oracle.log_prob(x)

    def entropy(self) -> float:
        return self.oracle.entropy()

    def nll_log_prob(self, x: Tensor) -> Tensor:
        r"""$\log (p * \mathcal N(0, \sigma_b^2 I))(x)$ with $\sigma_b$ = `CHECKERBOARD_BLUR`: finite everywhere."""
        return self.oracle.blurred_log_prob(x, CHECKERBOARD_BLUR)

    def perfect_nll(self, n: int = 1 << 22) -> float:
        r"""$E_{x \sim p}[-\log (p * \mathcal N(0, \sigma_b^2 I))(x)]$ by Monte Carlo over ``n`` draws (standard error
        about 4e-5 nats at the default; fixed seed, computed once): $\log 32$ plus the blur's edge cost."""
        if self._perfect_nll is None:
            x = self.oracle.sample(n, torch.Generator().manual_seed(0), dtype=torch.float64)
            self._perfect_nll = float(-torch.cat([self.nll_log_prob(part) for part in x.split(1 << 18)]).mean())
        return self._perfect_nll
