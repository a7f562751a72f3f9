r"""One place that turns a network's output into a score (``score_fn(x, t)``).

For $x_t = \alpha(t) x_0 + \sigma(t)\epsilon$ the score of the perturbation kernel is
$-\epsilon/\sigma$, and Tweedie's formula $\alpha\,\mathbb E[x_0|x_t] = x_t + \sigma^2\nabla\log p_t$
links the three targets:

$$s = \text{out}\ (\texttt{score}), \qquad s = -\frac{\text{out}}{\sigma(t)}\ (\texttt{eps}), \qquad s = \frac{\alpha(t)\,\text{out} - x}{\sigma(t)^2}\ (\texttt{x0}).$$

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

    def scaled_score(self, x: Tensor, t: Tensor) -> Tensor:
        r"""$\sigma(t)\,s_\theta(x, t)$, i.e. $-\hat\epsilon$."""
        out = self.net(x, t)
        if self.parameterization == "eps":
            return -out
        sigma = expand_to(self.sde.sigma(t), x)
        if self.parameterization == "score":
            return sigma * out
        return (expand_to(self.sde.alpha(t), x) * out - x) / sigma

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The score $s_\\theta(x, t)$."""
        return self.scaled_score(x, t) / expand_to(self.sde.sigma(t), x)
