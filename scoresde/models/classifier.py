r"""A noise-conditional classifier $p_\phi(y \mid x_t, t)$ for classifier guidance (Dhariwal & Nichol 2021;
Song et al. 2021, controllable generation), trained on perturbed data by `scoresde.training.losses.classifier_loss`:

$$\mathcal L(\phi) = \mathbb E_{t, x_0, y, \epsilon}\big[-\log p_\phi(y \mid \alpha(t)x_0
+ \sigma(t)\epsilon, t)\big].$$

Vectors ``[B, D]``: residual MLP blocks with a time embedding (as `ScoreMLP`). Images ``[B, C, H, W]``: the
DDPM U-Net's residual blocks on a downsampling path (the U-Net's encoder), global average pooling, a linear head.
"""

from __future__ import annotations

from torch import Tensor, nn

from .._checks import check_positive_int
from .embeddings import GaussianFourierEmbedding, SinusoidalEmbedding, TimeMLP
from .mlp import _ResidualBlock
from .unet import ResBlock, group_norm

__all__ = ["NoiseConditionalClassifier"]


class NoiseConditionalClassifier(nn.Module):
    """``(x, t) -> logits [B, num_classes]`` of $p_\\phi(y \\mid x_t, t)$.

    Args:
        shape: one sample's shape: ``(D,)`` for vectors, ``(C, H, W)`` for images.
        num_classes: number of classes.
        width: hidden width (vectors) or base channels (images).
        depth: residual blocks (vectors) or resolution levels, each halving H and W (images).
        groups: GroupNorm groups (images).
    """

    def __init__(
        self, shape: tuple[int, ...], num_classes: int, width: int = 128, depth: int = 2, groups: int = 8
    ) -> None:
        super().__init__()
        self.shape = tuple(check_positive_int("shape entries", s) for s in shape)
        self.num_classes = check_positive_int("num_classes", num_classes)
        width, depth = check_positive_int("width", width), check_positive_int("depth", depth)
        if len(self.shape) == 1:
            self.time = TimeMLP(GaussianFourierEmbedding(64), 64, width)
            self.inp = nn.Linear(self.shape[0], width)
            self.blocks = nn.ModuleList(_ResidualBlock(width, width) for _ in range(depth))
            self.head = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, num_classes))
        elif len(self.shape) == 3:
            temb = 4 * width
            self.time = TimeMLP(SinusoidalEmbedding(width), width, temb)
            self.inp = nn.Conv2d(self.shape[0], width, 3, padding=1)
            self.blocks = nn.ModuleList()
            ch = width
            for level in range(depth):
                self.blocks.append(ResBlock(ch, width * 2**level, temb, 0.0, groups))
                ch = width * 2**level
                if level < depth - 1:
                    self.blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            self.head = nn.Sequential(
                group_norm(ch, groups), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes)
            )
        else:
            raise ValueError(f"shape must be (D,) for vectors or (C, H, W) for images, got {shape}")

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"the classifier expects x of shape [B, {', '.join(map(str, self.shape))}], got {tuple(x.shape)}"
            )
        temb = self.time(t)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, temb) if isinstance(block, (ResBlock, _ResidualBlock)) else block(h)
        return self.head(h)
