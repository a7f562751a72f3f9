r"""Forward noising processes (Song et al. 2021): the base class, the reverse SDE, the probability flow, the registry.

Every process here is a *linear* Itô SDE

$$dx = f(t)\, x\, dt + g(t)\, dW, \qquad t \in [0, T],$$

whose perturbation kernel is Gaussian, $x_t = \alpha(t) x_0 + \sigma(t)\,\epsilon$,
$\epsilon \sim \mathcal N(0, I)$.  Each class owns its closed forms for
$\log\alpha(t)$, $\log\sigma(t)$, $f(t)$, $g(t)^2$ and the inverse of the log
signal-to-noise ratio $\lambda(t) = 2\log(\alpha/\sigma)$; everything derived from them (marginals,
the discrete forward step, the reverse SDE and the probability-flow ODE) lives once in `SDE`.

Symbols: ``t`` time, ``alpha`` mean coefficient, ``sigma`` noise std, ``beta`` VP rate
$\beta(t) = -2 f(t)$, ``g2`` $g(t)^2$, ``score`` $\nabla_x \log p_t(x)$.
"""

from __future__ import annotations

import abc
import inspect
import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._checks import check_finite, check_in_registry, check_positive, check_positive_int, expand_to, registering
from .._deprecated import ScoresdeDeprecationWarning
from .reverse import ProbabilityFlow, ReverseSDE
from .score import ScoreFn

__all__ = [
    "SDE",
    "check_sde",
    "log_snr_times",
    "register_sde",
    "sde_names",
    "create_sde",
]

_T_SLACK = 1e-6
"""Relative slack when checking ``t <= T``, so that a grid ending at ``T`` in float32 is accepted."""


def check_sde(sde: object) -> SDE:
    """Return ``sde`` if it is one of the package's SDEs, else raise ``TypeError`` naming what was passed."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an scoresde SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}")
    return sde


class SDE(abc.ABC):
    r"""Abstract linear forward SDE $dx = f(t) x\,dt + g(t)\,dW$ on $[0, T]$.

    Subclasses implement the closed forms ``_log_alpha``, ``_log_sigma``, ``_f``, ``_g2`` and
    ``_t_from_log_snr`` on plain time tensors, and set ``prior_std`` (the prior is
    $\mathcal N(0, \text{prior\_std}^2 I)$).

    Two kinds of methods, as in torchsde (``check_contract`` once, then the raw drift and diffusion):

    * the **closed forms** `alpha`, `sigma`, `log_snr`, `f`, `g2`, `beta`, `transition`, `perturb` compute
      without checking anything (no host synchronisation): they are what sampler and solver loops call.
      Their times must lie in ``[0, T]``; validate them once at a boundary with `check_time`;
    * the **checked** methods `sde`, `marginal_prob`, `discretize`, `t_from_log_snr`, `prior_sampling`,
      `prior_logp` validate their inputs (one-line errors) and suit interactive use.

    All work in the dtype and on the device of their input.

    Attributes:
        T: end time of the process.
        N: number of steps of the discrete chain (DDPM / SMLD) that `discretize` takes.
        sampling_t_min: default smallest time of the samplers (Song et al. 2021 use 1e-3 for VP / sub-VP and
            1e-5 for VE); `check_t_min` fills it in.
    """

    prior_std: float = 1.0
    sampling_t_min: float = 1e-3

    def __init__(self, N: int, T: float = 1.0) -> None:
        self._N = check_positive_int("N", N)
        self._T = check_positive("T", T)

    # ------------------------------------------------------------------ closed forms (per class)
    @abc.abstractmethod
    def _log_alpha(self, t: Tensor) -> Tensor:
        """$\\log\\alpha(t)$."""

    @abc.abstractmethod
    def _log_sigma(self, t: Tensor) -> Tensor:
        """$\\log\\sigma(t)$."""

    @abc.abstractmethod
    def _f(self, t: Tensor) -> Tensor:
        """Drift coefficient $f(t) = d\\log\\alpha/dt$."""

    @abc.abstractmethod
    def _g2(self, t: Tensor) -> Tensor:
        """Squared diffusion $g(t)^2 = d\\sigma^2/dt - 2 f(t)\\sigma^2$."""

    @abc.abstractmethod
    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Closed-form inverse of $\\lambda(t)$."""

    # ------------------------------------------------------------------ attributes
    @property
    def T(self) -> float:
        """End time of the forward process."""
        return self._T

    @property
    def N(self) -> int:
        """Number of discrete steps of the DDPM / SMLD chain."""
        return self._N

    @property
    def sampling_eps(self) -> float:
        """Deprecated name of `sampling_t_min` (``eps`` names the noise in this package)."""
        warnings.warn(
            "SDE.sampling_eps is deprecated; use SDE.sampling_t_min", ScoresdeDeprecationWarning, stacklevel=2
        )
        return self.sampling_t_min

    # ------------------------------------------------------------------ validation
    def check_time(self, t: Tensor | float, like: Tensor | None = None, name: str = "t") -> Tensor:
        """Return ``t`` as a tensor (on ``like``'s device and dtype), checked to be finite and in ``[0, T]``.

        With ``like`` (a batch ``x [B, ...]``) a 0-d ``t`` is broadcast to ``[B]`` and a 1-d ``t`` must have
        length ``B``.
        """
        if like is not None:
            t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
        t = _as_time(t)
        check_finite(name, t)
        lo, hi = (float(v) for v in t.detach().aminmax()) if t.numel() else (0.0, 0.0)
        if lo < 0.0 or hi > self.T * (1 + _T_SLACK):
            raise ValueError(f"{name} must lie in [0, T] = [0, {self.T:g}], got values in [{lo:.6g}, {hi:.6g}]")
        if like is not None:
            if like.ndim == 0:
                raise ValueError("x must have a batch dimension: shape [B, ...], got a 0-d tensor")
            batch = like.shape[0]
            if t.ndim == 0:
                t = t.expand(batch)
            elif t.shape != (batch,):
                raise ValueError(f"{name} must have shape [B] = [{batch}] to match x, got {tuple(t.shape)}")
        return t

    def check_t_min(self, t_min: float | None, name: str = "t_min") -> float:
        """The smallest time of a sampler or an integral: `sampling_t_min` when ``None``, else a number in
        ``(0, T)``."""
        if t_min is None:
            return self.sampling_t_min
        t_min = check_positive(name, t_min)
        if t_min >= self.T:
            raise ValueError(f"{name} must lie in (0, T) = (0, {self.T:g}), got {t_min!r}")
        return t_min

    def _check_x(self, name: str, x: Tensor) -> Tensor:
        check_finite(name, x)
        if x.ndim < 1:
            raise ValueError(f"{name} must have a batch dimension: shape [B, ...], got a 0-d tensor")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        return x

    # ------------------------------------------------------------------ closed forms, unchecked
    def alpha(self, t: Tensor | float) -> Tensor:
        r"""Mean coefficient $\alpha(t)$ of $x_t = \alpha(t) x_0 + \sigma(t)\epsilon$ (unchecked)."""
        return torch.exp(self._log_alpha(_as_time(t)))

    def sigma(self, t: Tensor | float) -> Tensor:
        r"""Noise standard deviation $\sigma(t)$ of $x_t = \alpha(t) x_0 + \sigma(t)\epsilon$ (unchecked)."""
        return torch.exp(self._log_sigma(_as_time(t)))

    def log_snr(self, t: Tensor | float) -> Tensor:
        r"""Log signal-to-noise ratio $\lambda(t) = \log(\alpha(t)^2 / \sigma(t)^2)$, decreasing in t (unchecked)."""
        t = _as_time(t)
        return 2.0 * (self._log_alpha(t) - self._log_sigma(t))

    def f(self, t: Tensor | float) -> Tensor:
        r"""Drift coefficient $f(t) = d\log\alpha/dt$ of $dx = f(t)x\,dt + g(t)\,dW$ (unchecked)."""
        return self._f(_as_time(t))

    def g2(self, t: Tensor | float) -> Tensor:
        r"""Squared diffusion $g(t)^2 = d\sigma^2/dt - 2 f(t)\sigma^2$ (unchecked)."""
        return self._g2(_as_time(t))

    def beta(self, t: Tensor | float) -> Tensor:
        r"""$\beta(t) = -2 f(t)$, the rate of the VP family (zero for VE; unchecked)."""
        return -2.0 * self.f(t)

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        r"""The forward perturbation $x_t = \alpha(t)\,x_0 + \sigma(t)\,\epsilon$ for ``x0, noise [B, ...]`` and
        ``t [B]`` (unchecked)."""
        return expand_to(self.alpha(t), x0) * x0 + expand_to(self.sigma(t), x0) * noise

    def transition(self, t: Tensor | float, s: Tensor | float) -> tuple[Tensor, Tensor]:
        r"""The exact forward transition from ``s`` to ``t >= s`` (unchecked):
        $x_t \mid x_s \sim \mathcal N(\alpha_{t|s} x_s, \sigma_{t|s}^2 I)$ with
        $\alpha_{t|s} = \alpha(t)/\alpha(s)$ and $\sigma_{t|s}^2 = \sigma(t)^2 - \alpha_{t|s}^2\sigma(s)^2$.

        Returns ``(alpha_ts, sigma_ts)`` shaped like the broadcast of ``t`` and ``s``.
        """
        log_ratio, var = self._log_transition(_as_time(t), _as_time(s))
        return torch.exp(log_ratio), torch.sqrt(var)

    def _log_transition(self, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        r"""$\log\alpha_{t|s}$ and $\sigma_{t|s}^2$ for times ``s <= t``."""
        log_ratio = self._log_alpha(t) - self._log_alpha(s)
        var = torch.exp(2 * self._log_sigma(t)) - torch.exp(2 * (log_ratio + self._log_sigma(s)))
        return log_ratio, var.clamp(min=0.0)

    def _discretize(self, x: Tensor, t: Tensor, dt: float | Tensor | None) -> tuple[Tensor, Tensor]:
        """`discretize` without checks."""
        s = (t - (self.T / self.N if dt is None else dt)).clamp(min=0.0)
        log_ratio, var = self._log_transition(t, s)
        return expand_to(torch.expm1(log_ratio), x) * x, torch.sqrt(var)

    # ------------------------------------------------------------------ checked interface
    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        r"""Inverse of `log_snr`: the time $t \in [0, T]$ with $\lambda(t) = \text{lam}$."""
        lam = _as_time(lam)
        check_finite("lam", lam)
        t = self._t_from_log_snr(lam)
        slack = _T_SLACK * self.T
        if t.numel() and not (
            bool(torch.isfinite(t).all())
            and float(t.detach().min()) >= -slack
            and float(t.detach().max()) <= self.T + slack
        ):
            ends = self.log_snr(torch.tensor([self.T, 0.0], dtype=torch.float64))
            raise ValueError(
                f"lam must lie in this SDE's log-SNR range [lambda(T), lambda(0)] = [{float(ends[0]):.6g}, "
                f"{float(ends[1]):.6g}],"
                f" got values in [{float(lam.min()):.6g}, {float(lam.max()):.6g}]"
            )
        return t.clamp(0.0, self.T)

    def sde(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        r"""Drift and diffusion of the forward SDE: $(f(t)\,x,\ g(t))$, inputs checked.

        Args:
            x: states ``[B, ...]``.
            t: times ``[B]`` (or a scalar, broadcast).
        Returns:
            ``drift [B, ...]`` and ``diffusion [B]``.
        """
        x = self._check_x("x", x)
        t = self.check_time(t, x)
        return expand_to(self._f(t), x) * x, torch.sqrt(self._g2(t))

    def marginal_prob(self, x0: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        r"""Mean and std of the perturbation kernel $p_{0t}(x_t|x_0) = \mathcal N(\alpha(t) x_0, \sigma(t)^2 I)$.

        Returns ``mean [B, ...]`` and ``std [B]``.
        """
        x0 = self._check_x("x0", x0)
        t = self.check_time(t, x0)
        return expand_to(torch.exp(self._log_alpha(t)), x0) * x0, torch.exp(self._log_sigma(t))

    def prior_sampling(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        r"""Draw $z \sim \mathcal N(0, \text{prior\_std}^2 I)$ of the given ``shape`` ``[B, ...]``."""
        shape = tuple(int(s) for s in shape)
        if len(shape) < 1 or any(s < 1 for s in shape):
            raise ValueError(f"shape must be a non-empty tuple of positive sizes [B, ...], got {shape}")
        if device is None and generator is not None:
            device = generator.device
        return self.prior_std * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z: Tensor) -> Tensor:
        r"""Log density of the prior, summed over all but the batch axis:
        $\log \mathcal N(z; 0, s^2 I) = -\tfrac{D}{2}\log(2\pi s^2) - \|z\|^2 / (2 s^2)$, ``[B]``."""
        z = self._check_x("z", z)
        dim = z[0].numel()
        sq = z.reshape(z.shape[0], -1).pow(2).sum(dim=1)
        return -0.5 * dim * math.log(2 * math.pi * self.prior_std**2) - 0.5 * sq / self.prior_std**2

    def discretize(self, x: Tensor, t: Tensor | float, dt: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""One step of the discrete forward chain, $x_{i} = x_{i-1} + f_i + G_i z$, over
        $\Delta t$ (default ``T/N``; a float or per-sample ``[B]`` tensor) ending at ``t``.

        The step is the exact Gaussian transition from $s = \max(t - \Delta t, 0)$ to ``t``:

        $$f = \Big(\frac{\alpha(t)}{\alpha(s)} - 1\Big) x,
        \qquad G = \sqrt{\sigma(t)^2 - \frac{\alpha(t)^2}{\alpha(s)^2}\sigma(s)^2}.$$

        For VP this is DDPM's step with $\beta_i = 1 - \bar\alpha_i / \bar\alpha_{i-1}$
        ($f = (\sqrt{1-\beta_i} - 1) x$, $G = \sqrt{\beta_i}$); for VE it is SMLD's
        $f = 0$, $G = \sqrt{\sigma_i^2 - \sigma_{i-1}^2}$.  To first order in $1/N$,
        $f \approx f(t) x \Delta t$ and $G \approx g(t)\sqrt{\Delta t}$.

        Returns ``f [B, ...]`` and ``G [B]``.
        """
        x = self._check_x("x", x)
        return self._discretize(x, self.check_time(t, x), dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        r"""The reverse-time SDE or, with ``probability_flow=True``, the probability-flow ODE (a `ProbabilityFlow`
        in t) driven by ``score_fn``."""
        return ProbabilityFlow(self, score_fn) if probability_flow else ReverseSDE(self, score_fn)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())
        return f"{type(self).__name__}({fields})"

    def _repr_fields(self) -> dict:
        return {"N": self.N}


def _as_time(t: Tensor | float) -> Tensor:
    """``t`` as a floating-point tensor, nothing checked (Python numbers in torch's default dtype)."""
    if not isinstance(t, Tensor):
        return torch.as_tensor(t, dtype=torch.get_default_dtype())
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def log_snr_times(sde: SDE, t_min: float, u: Tensor, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
    r"""Times uniform in the log-SNR on ``[t_min, T]`` from uniforms ``u`` in ``[0, 1)``, with $1/p(t)$.

    $\lambda = \lambda(T) + u\,\Lambda$, $\Lambda = \lambda(t_{min}) - \lambda(T)$, so
    $p(t) = |d\lambda/dt|/\Lambda = g(t)^2/(\sigma(t)^2\Lambda)$: the density proportional to the
    likelihood weighting $g^2/\sigma^2$ (Song, Durkan, Murray & Ermon 2021), used to importance-sample
    t in the ELBO and the likelihood-weighted DSM loss."""
    lam_T, lam_min = sde.log_snr(torch.tensor([sde.T, t_min], dtype=torch.float64)).tolist()
    span = lam_min - lam_T
    t = sde._t_from_log_snr(lam_T + span * u.to(torch.float64)).clamp(t_min, sde.T).to(dtype=dtype, device=device)
    return t, span * sde.sigma(t) ** 2 / sde.g2(t)


_SDES: dict[str, Callable[..., SDE]] = {}


def register_sde(name: str) -> Callable[[Callable[..., SDE]], Callable[..., SDE]]:
    """Decorator adding an SDE class or factory ``fn(**params) -> SDE`` to the one name registry that the CLI,
    the configs and the tests share."""
    return registering("SDE", _SDES, name)


def sde_names() -> list[str]:
    """Names of the registered SDEs (``vp``, ``vp-cosine``, ``subvp``, ``ve``, ...)."""
    return list(_SDES)


def create_sde(name: str, **params) -> SDE:
    """The SDE registered as ``name``, built from the ``params`` its constructor accepts (others are ignored, so one
    config can carry the fields of every SDE); an unknown name raises ``ValueError`` listing the valid ones."""
    factory = _SDES[check_in_registry("SDE", name, list(_SDES))]
    accepted = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in params.items() if k in accepted})


# ---------------------------------------------------------------------- the VP family
