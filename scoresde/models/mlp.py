r"""``ScoreMLP``: a residual MLP on flat data with a time embedding, for low-dimensional (toy) data.

$$h_0 = W_{in} x, \qquad h_{k+1} = h_k + W_2\,\mathrm{SiLU}\big(W_1\,\mathrm{SiLU}(\mathrm{LN}(h_k)) + e_k(t)\big),
\qquad \mathrm{out} = W_{out}\,\mathrm{SiLU}(\mathrm{LN}(h_K)),$$

with $e_k(t)$ a per-block projection of the time embedding; the output layer starts at zero.
"""

from __future__ import annotations

from torch import Tensor, nn

from .._checks import check_in_registry, check_positive, check_positive_int
from .embeddings import (
    GaussianFourierEmbedding,
    LabelEmbedding,
    SinusoidalEmbedding,
    TimeMLP,
    check_conditional,
    check_num_classes,
    second_time,
)
from .network import ScoreNetwork
from .registry import register_model

__all__ = ["ScoreMLP", "EMBEDDINGS"]

EMBEDDINGS = ("fourier", "sinusoidal")


def time_embedding(kind: str, dim: int, scale: float | None) -> nn.Module:
    """``"fourier"`` (Gaussian random features, default scale 16) or ``"sinusoidal"`` (default scale 1000)."""
    check_in_registry("time embedding", kind, EMBEDDINGS)
    if kind == "fourier":
        return GaussianFourierEmbedding(dim, 16.0 if scale is None else scale)
    return SinusoidalEmbedding(dim, 1000.0 if scale is None else scale)


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, temb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.temb = nn.Linear(temb_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        return h + self.fc2(self.act(self.fc1(self.act(self.norm(h))) + self.temb(temb)))


@register_model("mlp")
class ScoreMLP(ScoreNetwork):
    """Residual MLP ``(x [B, dim], t [B]) -> [B, dim]`` (``[B, 2 dim]`` with ``learn_variance``).

    Args:
        dim: data dimension. width: hidden width. depth: number of residual blocks.
        embedding: ``"fourier"`` or ``"sinusoidal"`` time features of size ``emb_dim`` (``emb_scale``).
        num_classes: with ``K > 0``, a class-conditional network ``(x, t, y)``: a label embedding (``K`` classes
            and the null label ``K``) is added to the time embedding.
        learn_variance: output a second ``dim`` channels ``v``, the reverse chain's learned variance
            (Improved DDPM; `scoresde.processes.reverse_variance`): the network then maps to ``[B, 2 dim]``.
        two_times: a flow map's network ``(x, t, s=s)``: the gap ``t - s`` gets a time embedding of its own, added
            to the time's (MeanFlow's ``(t, t - r)`` conditioning; `scoresde.models.FlowMapModel`).
    """

    def __init__(
        self,
        dim: int = 2,
        width: int = 256,
        depth: int = 4,
        embedding: str = "fourier",
        emb_dim: int = 64,
        emb_scale: float | None = None,
        num_classes: int = 0,
        learn_variance: bool = False,
        two_times: bool = False,
    ) -> None:
        super().__init__()
        dim, width, depth = (
            check_positive_int("dim", dim),
            check_positive_int("width", width),
            check_positive_int("depth", depth),
        )
        emb_dim = check_positive_int("emb_dim", emb_dim)
        if emb_scale is not None:
            check_positive("emb_scale", emb_scale)
        self.dim, self.learn_variance = dim, bool(learn_variance)
        self.time = TimeMLP(time_embedding(embedding, emb_dim, emb_scale), emb_dim, width)
        self.two_times = bool(two_times)
        self.gap = TimeMLP(time_embedding(embedding, emb_dim, emb_scale), emb_dim, width) if two_times else None
        self.num_classes = check_num_classes(num_classes)
        self.label = LabelEmbedding(num_classes, width) if num_classes else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_ResidualBlock(width, width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim * (2 if learn_variance else 1))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one input: ``(dim,)``."""
        return (self.dim,)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, *, s: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ScoreMLP expects x of shape [B, {self.dim}], got {tuple(x.shape)}")
        check_conditional(self, y)
        temb = self.time(t) + second_time(self, t, s)
        if self.label is not None:
            temb = temb + self.label(y, x.shape[0], x.device)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(nn.functional.silu(self.out_norm(h)))
