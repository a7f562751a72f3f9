r"""One place that turns a network's output into a score (``score_fn(x, t)``).

For $x_t = \alpha(t) x_0 + \sigma(t)\epsilon$ the score of the perturbation kernel is
$-\epsilon/\sigma$, and Tweedie's formula $\alpha\,\mathbb E[x_0|x_t] = x_t + \sigma^2\nabla\log p_t$
links the three targets:

$$s = \text{out}\ (\texttt{score}), \qquad s = -\frac{\text{out}}{\sigma(t)}\ (\texttt{eps}),
\qquad s = \frac{\alpha(t)\,\text{out} - x}{\sigma(t)^2}\ (\texttt{x0}).$$

`ScoreModel.scaled_score` returns $\sigma(t) s$ without dividing by a small $\sigma$
(the DSM loss uses it).
"""

from __future__ import annotations

from torch import Tensor, nn

from .._checks import check_in_registry, expand_to
from ..sde import SDE, check_sde

__all__ = ["ScoreModel", "PARAMETERIZATIONS"]

PARAMETERIZATIONS = ("eps", "score", "x0")


class ScoreModel(nn.Module):
    """``net(x, t)`` predicting ``eps``, ``score`` or ``x0``, seen as a score function ``score_fn(x, t)`` of ``sde``."""

    def __init__(self, net: nn.Module, sde: SDE, parameterization: str = "eps") -> None:
        super().__init__()
        check_sde(sde)
        self.net, self.sde = net, sde
        self.parameterization = check_in_registry("parameterization", parameterization, PARAMETERIZATIONS)

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional network (0: unconditional); its null label is ``num_classes``."""
        return getattr(self.net, "num_classes", 0)

    def scaled_score(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        r"""$\sigma(t)\,s_\theta(x, t[, y])$, i.e. $-\hat\epsilon$ (``y``: class labels of a conditional network)."""
        out = self.net(x, t) if y is None else self.net(x, t, y)
        if self.parameterization == "eps":
            return -out
        sigma = expand_to(self.sde.sigma(t), x)
        if self.parameterization == "score":
            return sigma * out
        return (expand_to(self.sde.alpha(t), x) * out - x) / sigma

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The score $s_\\theta(x, t)$, or the class-conditional $s_\\theta(x, t, y)$ (``y = num_classes``:
        unconditional)."""
        return self.scaled_score(x, t, y) / expand_to(self.sde.sigma(t), x)
