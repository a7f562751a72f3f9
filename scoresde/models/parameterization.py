r"""One place that turns a network's output into a score (``score_fn(x, t)``).

For $x_t = \alpha(t) x_0 + \sigma(t)\epsilon$ the score of the perturbation kernel is
$-\epsilon/\sigma$, and Tweedie's formula $\alpha\,\mathbb E[x_0|x_t] = x_t + \sigma^2\nabla\log p_t$
links the three targets:

$$s = \text{out}\ (\texttt{score}), \qquad s = -\frac{\text{out}}{\sigma(t)}\ (\texttt{eps}),
\qquad s = \frac{\alpha(t)\,\text{out} - x}{\sigma(t)^2}\ (\texttt{x0}),
\qquad s = -\frac{\alpha(t)\,\text{out} + \sigma(t)\,x}{\sigma(t)}\ (\texttt{v}).$$

``v`` is the velocity $v = \alpha\epsilon - \sigma x_0$ (Salimans & Ho 2022; diffusers' ``v_prediction``), for
variance-preserving SDEs ($\alpha^2 + \sigma^2 = 1$, where $\epsilon = \alpha v + \sigma x$).

``edm`` is EDM's preconditioning (Karras et al. 2022, Table 1) written for any $(\alpha, \sigma)$: with
$v = \sigma^2 + \alpha^2\sigma_d^2$ (the variance of $x_t$ for data of standard deviation $\sigma_d$) the network
sees $c_{in} x = x/\sqrt v$, and

$$\sigma s = -\frac{\sigma}{v}\,x + \frac{\alpha\,\sigma_d}{\sqrt v}\,\text{out}(x/\sqrt v, t),$$

i.e. $x_0$-prediction $D = c_{skip}\,x/\alpha + c_{out}\,\text{out}$ with $c_{skip} = \alpha^2\sigma_d^2/v$,
$c_{out} = \sigma\sigma_d/\sqrt v$. The first term is the exact score of Gaussian data
$N(0, \sigma_d^2 I)$: far from the data, where the network was never trained and its output stays bounded, the
score keeps the linear pull of the prior instead of fading, and the network's input and target stay O(1) at
every t.

`ScoreModel.scaled_score` returns $\sigma(t) s$ without dividing by a small $\sigma$
(the DSM loss uses it).

A network built with ``learn_variance`` outputs twice the data's channels: the first half is the output above, the
second $v$, the learned reverse variance's log-domain interpolation fraction $(v + 1)/2$ between $\beta$ and
$\tilde\beta$ (Improved DDPM; `scoresde.processes.reverse_variance`). `ScoreModel.variance_fraction` returns it; the
last
evaluation's fraction is kept, so asking for it right after the score at the same ``(x, t)`` costs no network
evaluation (the samplers' NFE stays honest).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_in_registry, check_positive, expand_to
from ..processes.base import SDE, check_sde
from ..processes.seam import ModelSpec, ModelWrapper, to_sigma_score
from .network import ScoreNetwork, network_autocast, network_spec

__all__ = ["ScoreModel", "PARAMETERIZATIONS", "set_network_dtype"]

PARAMETERIZATIONS = ("eps", "score", "x0", "v", "edm")


class _Conditioned(ScoreNetwork):
    """A super-resolution network with its condition bound: ``net(x, t[, y], cond=low, level=level)``; it declares
    the network's variance channel and classes, and no condition."""

    def __init__(self, net: nn.Module, low: Tensor, level: Tensor) -> None:
        super().__init__()
        self.net, self.low, self.level = net, low, level
        spec = network_spec(net)
        self.learn_variance, self.num_classes = spec.variance, spec.num_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.shape[0] != self.low.shape[0]:
            raise ValueError(
                f"the model was given {self.low.shape[0]} low-resolution conditions and is called on {x.shape[0]} rows"
            )
        return self.net(x, t, y, cond=self.low, level=self.level)


class ScoreModel(nn.Module):
    """``net(x, t)`` predicting ``eps``, ``score``, ``x0`` or ``v`` (or EDM-preconditioned, ``edm``, for data of
    standard deviation ``sigma_data``), seen as a score function ``score_fn(x, t)`` of ``sde``."""

    def __init__(self, net: nn.Module, sde: SDE, parameterization: str = "eps", sigma_data: float = 0.5) -> None:
        super().__init__()
        check_sde(sde)
        self.net, self.sde = net, sde
        self.parameterization = check_in_registry("parameterization", parameterization, PARAMETERIZATIONS)
        self.sigma_data = check_positive("sigma_data", sigma_data)
        if self.parameterization == "v":
            t = torch.tensor([0.5 * sde.T], dtype=torch.float64)
            if abs(float(sde.alpha(t) ** 2 + sde.sigma(t) ** 2) - 1) > 1e-9:
                raise ValueError(f"the 'v' parameterisation needs a variance-preserving SDE (VP), got {sde!r}")
        self.network_dtype: torch.dtype | None = None
        """Run the network under autocast at this dtype (``torch.bfloat16`` / ``torch.float16``; ``None``: the
        weights' own) in sampling and likelihood: its output is returned in the input's dtype, so ODE states,
        divergences and log-densities stay in float32 / float64 (`scoresde.training.speed.autocast_dtype`)."""
        self.spec: ModelSpec = network_spec(net)
        """The declaration (`scoresde.processes.seam`), set once from the network's (`network_spec`): a score with
        ``scaled_score``, its variance channel, classes and condition."""

    def given(self, low: Tensor, level: Tensor | float) -> ScoreModel:
        r"""A super-resolution stage's score model for the low-resolution condition ``low [B, C, h, w]`` (already
        augmented) at conditioning-augmentation noise level ``level`` (``[B]`` or one number): the same network
        (gradients flow into it), with the condition bound."""
        if not self.spec.condition:
            raise ValueError("given(low, level) binds the condition of a super-resolution stage; this model has none")
        if not isinstance(level, Tensor):
            level = torch.tensor(float(level))
        level = level.to(low.dtype).to(low.device).expand(low.shape[0]) if level.ndim == 0 else level
        model = ScoreModel(_Conditioned(self.net, low, level), self.sde, self.parameterization, self.sigma_data)
        model.network_dtype = self.network_dtype
        return model

    @property
    def learns_variance(self) -> bool:
        """Whether the network outputs the reverse chain's learned variance (a second half of channels)."""
        return self.spec.variance

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional network (0: unconditional); its null label is ``num_classes``."""
        return self.spec.num_classes

    def scaled_score(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        r"""$\sigma(t)\,s_\theta(x, t[, y])$, i.e. $-\hat\epsilon$ (``y``: class labels of a conditional network)."""
        scaled, fraction = self.scaled_score_and_variance(x, t, y)
        if fraction is not None:
            self._last_fraction = (x, t, fraction.detach())
        return scaled

    def scaled_score_and_variance(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        r"""$(\sigma s_\theta,\ (v + 1)/2)$ from one network evaluation: the scaled score and the learned variance's
        interpolation fraction (``None`` for a network without ``learn_variance``)."""
        if self.parameterization == "edm":
            alpha, sigma = expand_to(self.sde.alpha(t), x), expand_to(self.sde.sigma(t), x)
            v = sigma**2 + (alpha * self.sigma_data) ** 2
            out, fraction = self._network(v.rsqrt() * x, t, y)
            return -sigma / v * x + alpha * self.sigma_data * v.rsqrt() * out, fraction
        out, fraction = self._network(x, t, y)
        return self._from_output(out, x, t), fraction

    def variance_fraction(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        r"""The learned variance's interpolation fraction $(v(x, t) + 1)/2$ shaped like ``x``: taken from the last
        evaluation when it was at this very ``x`` and ``t`` (no network call), else evaluated."""
        if not self.learns_variance:
            raise ValueError(
                "this model has no learned variance: train one with model.kwargs.learn_variance: true "
                "(preset toy-vp-learned-var or digits-ddpm-learned-var), or choose variance=beta, beta_tilde, analytic"
            )
        last = getattr(self, "_last_fraction", None)
        if last is not None and last[0] is x and last[1].shape == t.shape and bool((last[1] == t).all()):
            return last[2]
        fraction = self.scaled_score_and_variance(x, t, y)[1]
        return fraction.detach()

    def _network(self, x: Tensor, t: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The network's output, in ``x``'s dtype (under autocast it may come in bf16 / fp16), split into (mean
        output, variance fraction or ``None``)."""
        with network_autocast(self.network_dtype, x.device):
            out = self.net(x, t) if y is None else self.net(x, t, y)
        out = out.to(x.dtype)
        if not self.learns_variance:
            return out, None
        out, v = out.chunk(2, dim=1)
        return out, (v + 1) / 2

    def _from_output(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        r"""$\sigma s$ from the network's mean output in this parameterisation (module docstring)."""
        return to_sigma_score(self.sde, self.parameterization, out, x, t)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The score $s_\\theta(x, t)$, or the class-conditional $s_\\theta(x, t, y)$ (``y = num_classes``:
        unconditional)."""
        return self.scaled_score(x, t, y) / expand_to(self.sde.sigma(t), x)


def set_network_dtype(model: Any, dtype: torch.dtype | None) -> None:
    """Run the network of ``model`` (a `ScoreModel`, or one inside wrappers such as a latent model) under autocast at
    ``dtype`` in sampling and likelihood (`ScoreModel.network_dtype`; ``None``: its weights' precision). Another model
    (a consistency model, an imported one) raises one ``ValueError``."""
    inner = model
    while isinstance(inner, ModelWrapper):
        inner = inner.inner
    if not isinstance(inner, ScoreModel):
        raise ValueError(f"a reduced network precision applies to score models, not to {type(inner).__name__}")
    inner.network_dtype = dtype
