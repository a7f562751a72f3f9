r"""Guided scores: wrappers with the ``score_fn(x, t)`` protocol, so every sampler of the registry samples
with guidance unchanged (the design's rule: conditioning is closed over, the signature stays).

- **Classifier-free guidance** (Ho & Salimans 2022): with a class-conditional model trained with label dropout,

  $$\tilde s(x, t) = (1 + w)\,s_\theta(x, t, y) - w\,s_\theta(x, t, \varnothing),$$

  the score of $p_t(x \mid y)^{1+w}\,p_t(x)^{-w}$ (for $w = 0$ the plain conditional model).
- **Classifier guidance** (Dhariwal & Nichol 2021; Song et al. 2021, controllable generation): with a
  noise-conditional classifier $p_\phi(y \mid x_t, t)$,

  $$\tilde s(x, t) = s_\theta(x, t) + w\,\nabla_x \log p_\phi(y \mid x_t, t),$$

  for $w = 1$ exactly the conditional score $\nabla_x \log p_t(x \mid y)$ by Bayes' rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from .._checks import check_labels
from ..processes.score import ScoreFn
from ..processes.seam import ModelSpec, ModelWrapper, require

__all__ = ["ClassifierFreeGuidance", "ClassifierGuidance"]


def _check_weight(w: float) -> float:
    w = float(w)
    if not math.isfinite(w):
        raise ValueError(f"the guidance weight must be a finite number, got {w}")
    return w


class ClassifierFreeGuidance(ModelWrapper):
    r"""``score_fn(x, t)`` $= (1 + w)\,s(x, t, y) - w\,s(x, t, \varnothing)$ from a class-conditional ``model(x, t, y)``
    whose null label is its declared ``num_classes``. One batched model call per evaluation (conditional and null
    rows together); for ``w = 0`` only the conditional rows. A learned variance is the conditional model's.

    Args:
        model: class-conditional score ``model(x, t, y) -> like x`` with ``num_classes``.
        y: one class or one per sample.
        w: the guidance weight ($w = 0$: the conditional model; larger: sharper, less diverse classes).
    """

    def __init__(self, model: Callable, y: Tensor | int, w: float = 0.0) -> None:
        self.num_classes = require(model, "classifier-free guidance", output="score", classes=True).num_classes
        super().__init__(model)
        self.w = _check_weight(w)
        self.y = torch.as_tensor(y)
        check_labels(self.y, self.y.numel() if self.y.ndim else 1, self.num_classes, torch.device("cpu"))  # fail early

    @property
    def model(self) -> Callable:
        """The class-conditional model."""
        return self.inner

    def wrap_spec(self, spec: ModelSpec) -> ModelSpec:
        return ModelSpec(output="score", variance=spec.variance, decoder=spec.decoder)  # the labels are closed over

    def variance_fraction(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The conditional model's learned-variance fraction at this wrapper's labels."""
        return self.model.variance_fraction(x, t, check_labels(self.y, x.shape[0], self.num_classes, x.device))

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        y = check_labels(self.y, x.shape[0], self.num_classes, x.device)
        if self.w == 0.0:
            return self.model(x, t, y)
        null = torch.full_like(y, self.num_classes)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        conditional, unconditional = both.chunk(2)
        return (1 + self.w) * conditional - self.w * unconditional


class ClassifierGuidance(ModelWrapper):
    r"""``score_fn(x, t)`` $= s(x, t) + w\,\nabla_x \log p_\phi(y \mid x, t)$ from an unconditional ``score_fn`` and a
    noise-conditional ``classifier(x, t) -> logits [B, C]``. The gradient is taken with autograd (also inside the
    samplers' ``no_grad``); one classifier forward and backward per evaluation.

    Args:
        score_fn: the unconditional score.
        classifier: logits of $p_\phi(y \mid x_t, t)$ (``num_classes`` is read from their width).
        y: one class or one per sample.
        w: the guidance scale ($w = 1$ with exact models: the conditional score).
    """

    def __init__(
        self, score_fn: ScoreFn, classifier: Callable[[Tensor, Tensor], Tensor], y: Tensor | int, w: float = 1.0
    ) -> None:
        require(
            score_fn,
            "classifier guidance (use ClassifierFreeGuidance for a class-conditional model)",
            output="score",
            unconditional=True,
        )
        super().__init__(score_fn)
        self.classifier, self.y, self.w = classifier, torch.as_tensor(y), _check_weight(w)

    def wrap_spec(self, spec: ModelSpec) -> ModelSpec:
        return replace(spec, scaled=False)  # it changes the score: no scaled score of its own

    @property
    def score_fn(self) -> ScoreFn:
        """The unconditional score."""
        return self.inner

    def class_log_prob_grad(self, x: Tensor, t: Tensor) -> Tensor:
        r"""$\nabla_x \log p_\phi(y \mid x, t)$, shaped like ``x``."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = self.classifier(x_in, t)
            y = check_labels(self.y, x.shape[0], logits.shape[1], x.device)
            log_p = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).sum()
            return torch.autograd.grad(log_p, x_in)[0].detach()

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        score = self.score_fn(x, t)
        return score if self.w == 0.0 else score + self.w * self.class_log_prob_grad(x, t)
