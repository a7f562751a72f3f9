r"""``NCSN``: a noise-conditional RefineNet score network in the NCSN / NCSNv2 tradition (Song & Ermon 2019, 2020).

A residual encoder (full resolution, one strided downsampling, then dilated blocks) feeds a cascade of
RefineNet blocks (Lin et al. 2017): residual conv units on every input, multi-resolution fusion
(convolve, upsample to the finest input, sum) and chained residual pooling. Noise conditioning enters
every residual block as a bias from the time embedding. As in NCSNv2, the network's output is the score
times the noise level: use it with the ``"eps"`` parameterisation, $s = -\mathrm{out}/\sigma(t)$
(NCSNv2's ``output / sigma``; the sign is the network's to learn).
"""

from __future__ import annotations

from torch import Tensor, nn

from .._checks import check_positive_int
from .embeddings import SinusoidalEmbedding, TimeMLP
from .network import ScoreNetwork
from .registry import register_model
from .unet import group_norm

__all__ = ["NCSN"]


class _CondResidual(nn.Module):
    """ELU residual block with GroupNorm, a time-embedding bias, optional stride-2 downsampling or dilation."""

    def __init__(
        self, in_ch: int, out_ch: int, temb_dim: int, groups: int, downsample: bool = False, dilation: int = 1
    ) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, stride=stride) if (in_ch != out_ch or downsample) else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.elu(self.norm1(x))) + self.temb(temb)[:, :, None, None]
        return self.skip(x) + self.conv2(nn.functional.elu(self.norm2(h)))


class _RCU(nn.Module):
    """Residual conv unit: x + conv(ELU(conv(ELU(x))))."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ELU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ELU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class _RefineBlock(nn.Module):
    """RefineNet block: RCUs per input, multi-resolution fusion, chained residual pooling, output RCU."""

    def __init__(self, in_chs: list[int], out_ch: int, n_out_rcu: int = 1) -> None:
        super().__init__()
        self.adapt = nn.ModuleList(nn.Sequential(_RCU(c), _RCU(c)) for c in in_chs)
        self.fuse = nn.ModuleList(nn.Conv2d(c, out_ch, 3, padding=1) for c in in_chs)
        self.pool_convs = nn.ModuleList(nn.Conv2d(out_ch, out_ch, 3, padding=1) for _ in range(2))
        self.out = nn.Sequential(*[_RCU(out_ch) for _ in range(n_out_rcu)])

    def forward(self, xs: list[Tensor]) -> Tensor:
        size = max((x.shape[-2:] for x in xs), key=lambda s: s[0] * s[1])
        h = 0
        for x, adapt, fuse in zip(xs, self.adapt, self.fuse):
            y = fuse(adapt(x))
            h = h + (
                nn.functional.interpolate(y, size=size, mode="bilinear", align_corners=False)
                if y.shape[-2:] != size
                else y
            )
        h = nn.functional.elu(h)
        path = h
        for conv in self.pool_convs:
            path = conv(nn.functional.max_pool2d(path, 5, stride=1, padding=2))
            h = h + path
        return self.out(h)


@register_model("ncsn")
class NCSN(ScoreNetwork):
    """Noise-conditional RefineNet ``(x [B, C, H, W], t [B]) -> [B, C, H, W]`` (sigma times the score).

    Args:
        in_channels: channels of the data.
        image_size: height = width of the data (must be even).
        ch: base channels.
        groups: GroupNorm groups.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, ch: int = 64, groups: int = 32) -> None:
        super().__init__()
        in_channels, image_size, ch = (
            check_positive_int(n, v) for n, v in (("in_channels", in_channels), ("image_size", image_size), ("ch", ch))
        )
        if image_size % 2:
            raise ValueError(f"NCSN needs an even image_size (one 2x downsampling), got {image_size}")
        self.in_channels, self.image_size = in_channels, image_size
        temb_dim = 4 * ch
        self.time = TimeMLP(SinusoidalEmbedding(ch), ch, temb_dim)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        c2 = 2 * ch
        self.stages = nn.ModuleList(
            [
                nn.ModuleList([_CondResidual(ch, ch, temb_dim, groups), _CondResidual(ch, ch, temb_dim, groups)]),
                nn.ModuleList(
                    [_CondResidual(ch, c2, temb_dim, groups, downsample=True), _CondResidual(c2, c2, temb_dim, groups)]
                ),
                nn.ModuleList(
                    [
                        _CondResidual(c2, c2, temb_dim, groups, dilation=2),
                        _CondResidual(c2, c2, temb_dim, groups, dilation=2),
                    ]
                ),
                nn.ModuleList(
                    [
                        _CondResidual(c2, c2, temb_dim, groups, dilation=4),
                        _CondResidual(c2, c2, temb_dim, groups, dilation=4),
                    ]
                ),
            ]
        )
        self.refine = nn.ModuleList(
            [
                _RefineBlock([c2], c2),
                _RefineBlock([c2, c2], c2),
                _RefineBlock([c2, c2], ch),
                _RefineBlock([ch, ch], ch, n_out_rcu=3),
            ]
        )
        self.out = nn.Sequential(group_norm(ch, groups), nn.ELU(), nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"NCSN expects x of shape [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        temb = self.time(t)
        h = self.conv_in(x)
        features = []
        for stage in self.stages:
            for block in stage:
                h = block(h, temb)
            features.append(h)
        h = self.refine[0]([features[3]])
        for refine, skip in zip(self.refine[1:], reversed(features[:3])):
            h = refine([skip, h])
        return self.out(h)
