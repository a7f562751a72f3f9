r"""The model seam: what a model predicts and what it carries, declared once and checked once where it is needed.

Every sampler, likelihood and bound calls one thing, ``model(x [B, ...], t [B]) -> [B, ...]``. What it returns and
what else it offers is its `ModelSpec`, read by `spec_of` from the model's ``spec`` attribute (a plain callable
declares nothing and is a score function, as the oracles' scores are):

==================  ==========================================================================================
``output``          what ``model(x, t)`` returns: ``score`` $\nabla_x\log p_t$, ``eps`` $\hat\epsilon$, ``x0``
                    $\hat x_0$, ``v`` $\alpha\hat\epsilon - \sigma\hat x_0$, or ``consistency`` (the end of the
                    probability-flow trajectory: not a score, and never converted to one)
``variance``        ``model.variance_fraction(x, t[, y])``: the learned reverse variance's fraction (Improved DDPM)
``num_classes``     ``model(x, t, y)`` with labels ``0 .. K-1`` and the null label ``K`` (classifier-free guidance)
``scaled``          ``model.scaled_score(x, t[, y])`` $= \sigma(t)\,s$ without dividing by a small $\sigma$
``decoder``         ``model.decode(z)``: a latent model's decoder to images (its samples are latents)
``condition``       a super-resolution stage that needs its low-resolution condition: ``model.given(low, level)``
                    is the score model for that condition (only the bound model is sampled)
``flow_map``        ``model.map(x, t, s)``: the probability-flow map from ``t`` to ``s <= t`` (a flow map, whose
                    ``model(x, t)`` is its diagonal, a score model of output ``eps``)
==================  ==========================================================================================

The kinds are linked by $x_t = \alpha x_0 + \sigma\epsilon$ and Tweedie's formula
$\alpha\,\mathbb E[x_0 \mid x_t] = x_t + \sigma^2\nabla\log p_t$; `to_sigma_score` is the one converter:

$$\sigma s = -\hat\epsilon\ (\texttt{eps}),\qquad \sigma s = \frac{\alpha\hat x_0 - x}{\sigma}\ (\texttt{x0}),\qquad
\sigma s = -(\alpha v + \sigma x)\ (\texttt{v}, \alpha^2 + \sigma^2 = 1),\qquad \sigma s = \sigma\,\text{out}\
(\texttt{score}),$$

and `x0_from_score` is Tweedie's $\hat x_0 = (x + \sigma^2 s)/\alpha$.

Wrappers (`ModelWrapper`: the counted score, thresholding, guidance, the conversion `AsScore`) are themselves models
and pass the declaration on, like k-diffusion's ``external.py``: a wrapper that does not change the score keeps
``scaled`` and forwards ``scaled_score``, so Tweedie's $\hat x_0 = (x + \sigma\,[\sigma s])/\alpha$ never divides
by $\sigma$ to multiply by $\sigma^2$ again. A boundary (`scoresde.sample`,
`scoresde.log_likelihood`, a bound, an objective) calls `require` once: a missing capability is a one-line
``ValueError`` naming it and how to get it. A new model kind (a latent model with a decoder, a super-resolution
model with a low-resolution condition) adds a field here and a `require` where it is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

from .._checks import check_callable, check_in_registry, expand_to
from .base import SDE
from .score import ScoreFn, evaluate_score

__all__ = [
    "OUTPUTS",
    "SCORE_OUTPUTS",
    "ModelSpec",
    "spec_of",
    "require",
    "to_sigma_score",
    "tweedie",
    "x0_from_score",
    "x0_from_sigma_score",
    "sigma_score",
    "ModelWrapper",
    "CountingScore",
    "AsScore",
    "as_score",
]

OUTPUTS = ("score", "eps", "x0", "v", "consistency")
"""The output kinds a model may declare."""

SCORE_OUTPUTS = ("score", "eps", "x0", "v")
"""The output kinds that are a score, or convert to one (`to_sigma_score`)."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model predicts and carries (module docstring): ``output`` in `OUTPUTS`, ``variance`` (it has
    ``variance_fraction``), ``num_classes`` (it takes labels), ``scaled`` (it has ``scaled_score``), ``decoder`` (it
    has ``decode``), ``condition`` (it needs ``given(low, level)`` before it is a score), ``flow_map`` (it has
    ``map(x, t, s)``)."""

    output: str = "score"
    variance: bool = False
    num_classes: int = 0
    scaled: bool = False
    decoder: bool = False
    condition: bool = False
    flow_map: bool = False

    def __post_init__(self) -> None:
        check_in_registry("model output", self.output, OUTPUTS)
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative integer, got {self.num_classes!r}")


_PLAIN = ModelSpec()


def spec_of(model: Any) -> ModelSpec:
    """The declaration of ``model``: its ``spec`` attribute, or a plain score function's (output ``score``, nothing
    else) for a callable that declares none. The one place the declaration is read."""
    spec = getattr(model, "spec", None)
    if spec is None:
        return _PLAIN
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"{type(model).__name__}.spec must be a scoresde ModelSpec, got {type(spec).__name__}")
    return spec


_HOW = {
    "score": "a score model (output score, eps, x0 or v: a ScoreModel, an oracle's score)",
    "consistency": "a consistency model (scoresde distill --method consistency)",
    "flow_map": "a flow map (scoresde distill --method flow_map, or a flow_map_training run)",
}


def _name(model: Any) -> str:
    """The class name of the model inside any wrappers (what the user passed)."""
    while isinstance(model, ModelWrapper):
        model = model.inner
    return type(model).__name__


def require(
    model: Any,
    where: str,
    *,
    output: str | tuple[str, ...] | None = None,
    variance: bool = False,
    classes: bool = False,
    unconditional: bool = False,
    flow_map: bool = False,
    argument: str = "model",
) -> ModelSpec:
    """Check once, at a boundary named ``where``, that ``model`` declares what it needs: one of the ``output`` kinds,
    a learned ``variance``, ``classes`` (class-conditional), ``unconditional`` (no classes), or a ``flow_map`` (its
    ``map``); a one-line ``ValueError`` names the missing capability and how to get it, a ``TypeError`` a model that
    is not callable, naming it as the caller's signature spells it (``argument``). Returns the declaration."""
    check_callable(argument, model, where)
    spec = spec_of(model)
    name = _name(model)
    wanted = (output,) if isinstance(output, str) else output
    if wanted is not None and spec.output not in wanted:
        hint = _HOW.get(wanted[0], "a model with output " + " or ".join(repr(w) for w in wanted))
        other = " (sample it with sampler 'consistency')" if spec.output == "consistency" else ""
        raise ValueError(f"{where} needs {hint}; this {name} declares output {spec.output!r}{other}")
    if flow_map and not spec.flow_map:
        raise ValueError(f"{where} needs {_HOW['flow_map']}; this {name} has no flow map (output {spec.output!r})")
    if variance and not spec.variance:
        raise ValueError(
            f"{where} needs a learned variance (model.kwargs.learn_variance: true, e.g. preset toy-vp-learned-var); "
            f"this {name} has none"
        )
    if classes and not spec.num_classes:
        raise ValueError(
            f"{where} needs a class-conditional model (num_classes > 0); this {name} is unconditional: train with "
            f"model.kwargs.num_classes and train.label_dropout > 0"
        )
    if spec.condition:
        raise ValueError(
            f"{where} needs a score model; this {name} is a super-resolution stage: bind its low-resolution condition "
            f"first (model.given(low, level)), or sample the whole cascade (scoresde.samplers.sample_cascade)"
        )
    if unconditional and spec.num_classes:
        raise ValueError(f"{where} takes an unconditional model; this {name} is class-conditional (num_classes > 0)")
    return spec


def to_sigma_score(sde: SDE, kind: str, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
    r"""$\sigma(t)\,s$ from a model output ``out`` of ``kind`` (``score``, ``eps``, ``x0``, ``v``) at ``(x, t)``
    (module docstring): the one converter between output kinds."""
    if kind == "eps":
        return -out
    sigma = expand_to(sde.sigma(t), x)
    if kind == "score":
        return sigma * out
    if kind == "v":
        return -(expand_to(sde.alpha(t), x) * out + sigma * x)
    if kind == "x0":
        return (expand_to(sde.alpha(t), x) * out - x) / sigma
    raise ValueError(f"no score from a model output of kind {kind!r}; convertible kinds: {', '.join(SCORE_OUTPUTS)}")


def tweedie(x: Tensor, score: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    r"""Tweedie's formula for $x = \alpha x_0 + \sigma\epsilon$ with coefficients ``[B]``:
    $\mathbb E[x_0 \mid x] = (x + \sigma^2\,\nabla\log p(x))/\alpha$."""
    return (x + expand_to(sigma**2, x) * score) / expand_to(alpha, x)


def x0_from_score(sde: SDE, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
    r"""Tweedie's denoised estimate $\hat x_0 = (x + \sigma(t)^2\,s)/\alpha(t)$ (`tweedie` at ``sde``'s time ``t``)."""
    return tweedie(x, score, sde.alpha(t), sde.sigma(t))


def x0_from_sigma_score(sde: SDE, x: Tensor, t: Tensor, scaled: Tensor) -> Tensor:
    r"""Tweedie's $\hat x_0 = (x + \sigma(t)\,[\sigma s])/\alpha(t)$ from the scaled score $\sigma s$ (no division by
    a small $\sigma$ anywhere)."""
    return (x + expand_to(sde.sigma(t), x) * scaled) / expand_to(sde.alpha(t), x)


def sigma_score(sde: SDE, model: Any, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
    r"""$\sigma(t)\,s(x, t[, y])$ of a score model: its own ``scaled_score`` when it declares one (no division by a
    small $\sigma$), else $\sigma$ times its score."""
    if spec_of(model).scaled:
        return model.scaled_score(x, t) if y is None else model.scaled_score(x, t, y)
    score = model(x, t) if y is None else model(x, t, y)
    return expand_to(sde.sigma(t), x) * score


class ModelWrapper:
    """A model around ``inner`` that keeps its declaration (``spec``, less what the wrapper changes in `wrap_spec`)
    and forwards ``variance_fraction`` to it, so that a capability is never dropped by wrapping."""

    def __init__(self, inner: Any) -> None:
        check_callable("model", inner)
        self.inner = inner
        self.spec = self.wrap_spec(spec_of(inner))

    def wrap_spec(self, spec: ModelSpec) -> ModelSpec:
        """The wrapper's declaration from its model's (default: the same, ``scaled`` included, which `scaled_score`
        forwards; a wrapper that changes the score overrides both or drops ``scaled``)."""
        return spec

    def scaled_score(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        r"""The wrapped model's scaled score $\sigma s$ (declared by ``spec.scaled``)."""
        return self.inner.scaled_score(x, t) if y is None else self.inner.scaled_score(x, t, y)

    def variance_fraction(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The wrapped model's learned-variance fraction (declared by ``spec.variance``)."""
        return self.inner.variance_fraction(x, t) if y is None else self.inner.variance_fraction(x, t, y)

    def decode(self, z: Tensor) -> Tensor:
        """The wrapped latent model's decoder (declared by ``spec.decoder``)."""
        return self.inner.decode(z)

    def map(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """The wrapped flow map from ``t`` to ``s`` (declared by ``spec.flow_map``)."""
        return self.inner.map(x, t, s)


class CountingScore(ModelWrapper):
    """Wraps a model: counts every call and checks the first output (type, shape, finiteness, with the time).

    The boundary (`scoresde.sample`, the likelihoods) validates once; later calls are not checked again, so a
    loop costs no host synchronisation per step (a sampler checks its result at the end instead). The learned
    variance is read from the same evaluation (no call counted)."""

    def __init__(self, score_fn: ScoreFn) -> None:
        super().__init__(score_fn)
        self.calls = 0

    @property
    def score_fn(self) -> ScoreFn:
        """The counted model."""
        return self.inner

    def _counted(self, fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor, check: bool = True) -> Tensor:
        """``fn(x, t)``, one evaluation counted; the first one's output checked (`evaluate_score`) when ``check``."""
        self.calls += 1
        return evaluate_score(fn, x, t) if check and self.calls == 1 else fn(x, t)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self._counted(self.inner, x, t)

    def scaled_score(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The wrapped model's scaled score, counted (and its first output checked) like a score evaluation."""
        return self._counted(lambda x, t: super(CountingScore, self).scaled_score(x, t, y), x, t, check=y is None)

    def map(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """The wrapped flow map, counted (and its first output checked) like a score evaluation."""
        return self._counted(lambda x, t: super(CountingScore, self).map(x, t, s), x, t)


class AsScore(ModelWrapper):
    """A model declaring output ``eps``, ``x0`` or ``v`` seen as a score function, through `to_sigma_score`."""

    def __init__(self, sde: SDE, model: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__(model)
        self.sde, self.kind = sde, spec_of(model).output

    def wrap_spec(self, spec: ModelSpec) -> ModelSpec:
        return replace(spec, output="score", scaled=True)

    def scaled_score(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        out = self.inner(x, t) if y is None else self.inner(x, t, y)
        return to_sigma_score(self.sde, self.kind, out, x, t)

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.scaled_score(x, t, y) / expand_to(self.sde.sigma(t), x)


def as_score(sde: SDE, model: Any, where: str, argument: str = "score_fn") -> Any:
    """``model`` as a score function at the boundary ``where``: itself when it declares output ``score``, converted
    (`AsScore`) for ``eps`` / ``x0`` / ``v``, refused in one line for a consistency model (or, not callable, in one
    line naming it as the caller's ``argument``)."""
    spec = require(model, where, output=SCORE_OUTPUTS, argument=argument)
    return model if spec.output == "score" else AsScore(sde, model)
