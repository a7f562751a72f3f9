r"""``DDPMUNet``: the U-Net of Ho, Jain & Abbeel 2020 (Appendix B), as in score_sde's ``ddpm`` model.

Residual blocks with GroupNorm and SiLU, the sinusoidal time embedding (through a two-layer MLP) added
inside each block, self-attention at chosen resolutions, strided-conv downsampling, nearest-neighbour
upsampling and skip connections from every encoder block to the decoder. The output convolution
starts at zero. Small presets train on 8x8 and 28x28 images on a CPU; ``ch=128, ch_mult=(1, 2, 2, 2),
num_res_blocks=2, attn_resolutions=(16,), dropout=0.1`` is the published CIFAR-10 model (35.7M parameters).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_positive_int
from .embeddings import (
    LabelEmbedding,
    SinusoidalEmbedding,
    TimeMLP,
    check_conditional,
    check_num_classes,
    second_time,
)
from .network import ScoreNetwork
from .registry import register_model

__all__ = ["DDPMUNet", "ResBlock", "AttnBlock", "upsample"]


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``."""
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    r"""$h = x + \mathrm{conv}(\mathrm{drop}(\mathrm{SiLU}(\mathrm{GN}(\mathrm{conv}(\mathrm{SiLU}(\mathrm{GN}(x)))
    + W e(t)))))$, 1x1 skip when channels change."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch, groups), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm2, self.drop = group_norm(out_ch, groups), nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x))) + self.temb(nn.functional.silu(temb))[:, :, None, None]
        h = self.conv2(self.drop(nn.functional.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    r"""Single-head self-attention over the pixels: $x + W_o\,\mathrm{softmax}(QK^\top/\sqrt C)V$."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_init(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        h = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None]
        )
        return x + self.proj(h[:, 0].transpose(1, 2).reshape(B, C, H, W))


@register_model("ddpm_unet")
class DDPMUNet(ScoreNetwork):
    """DDPM U-Net ``(x [B, C, H, W], t [B]) -> [B, C, H, W]``.

    Args:
        in_channels: channels of the data.
        image_size: height = width of the data (fixes which resolutions get attention).
        ch: base channels.
        ch_mult: channel multiplier per resolution level (each level but the last halves the resolution).
        num_res_blocks: residual blocks per level.
        attn_resolutions: the resolutions with self-attention.
        dropout: dropout probability in the residual blocks.
        groups: GroupNorm groups (32 in DDPM).
        num_classes: with ``K > 0``, class-conditional ``(x, t, y)``: a label embedding (``K`` classes and the null
            label ``K``) is added to the time embedding (as in guided-diffusion and classifier-free guidance).
        learn_variance: output ``2 in_channels`` channels, the second half ``v`` the reverse chain's learned variance
            (Improved DDPM, Nichol & Dhariwal 2021; `scoresde.processes.reverse_variance`).
        cond_channels: with ``C > 0``, a super-resolution stage ``(x, t, cond=low, level=s)`` (Cascaded Diffusion
            Models, Ho et al. 2021): the low-resolution image ``low [B, C, h, w]`` is upsampled (nearest) to
            ``image_size`` and concatenated to ``x``; its conditioning-augmentation noise level ``s [B]`` is embedded
            like the time and added to the time embedding.
        two_times: a flow map's network ``(x, t, s=s)``: the gap ``t - s`` embedded like the time and added to the
            time embedding (`scoresde.models.FlowMapModel`).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        ch: int = 64,
        ch_mult: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (4,),
        dropout: float = 0.1,
        groups: int = 32,
        num_classes: int = 0,
        learn_variance: bool = False,
        cond_channels: int = 0,
        two_times: bool = False,
    ) -> None:
        super().__init__()
        in_channels, image_size, ch = (
            check_positive_int(n, v) for n, v in (("in_channels", in_channels), ("image_size", image_size), ("ch", ch))
        )
        num_res_blocks = check_positive_int("num_res_blocks", num_res_blocks)
        ch_mult = tuple(check_positive_int("ch_mult entries", m) for m in ch_mult)
        if not ch_mult:
            raise ValueError("ch_mult must have at least one level")
        if image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(
                f"image_size {image_size} must be divisible by 2^(len(ch_mult) - 1) = {2 ** (len(ch_mult) - 1)}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.in_channels, self.image_size, self.learn_variance = in_channels, image_size, bool(learn_variance)
        temb_dim = 4 * ch
        self.time = TimeMLP(SinusoidalEmbedding(ch), ch, temb_dim)
        self.num_classes = check_num_classes(num_classes)
        self.label = LabelEmbedding(num_classes, temb_dim) if num_classes else None
        if isinstance(cond_channels, bool) or not isinstance(cond_channels, int) or cond_channels < 0:
            raise ValueError(f"cond_channels must be a non-negative integer, got {cond_channels!r}")
        self.cond_channels = cond_channels
        self.level = TimeMLP(SinusoidalEmbedding(ch), ch, temb_dim) if cond_channels else None
        self.two_times = bool(two_times)
        self.gap = TimeMLP(SinusoidalEmbedding(ch), ch, temb_dim) if two_times else None
        self.conv_in = nn.Conv2d(in_channels + cond_channels, ch, 3, padding=1)
        self.down, skips, res, cur = nn.ModuleList(), [ch], image_size, ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                block = nn.ModuleList([ResBlock(cur, ch * mult, temb_dim, dropout, groups)])
                cur = ch * mult
                if res in attn_resolutions:
                    block.append(AttnBlock(cur, groups))
                self.down.append(block)
                skips.append(cur)
            if level != len(ch_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(cur, cur, 3, stride=2, padding=1)]))
                skips.append(cur)
                res //= 2
        self.mid = nn.ModuleList(
            [
                ResBlock(cur, cur, temb_dim, dropout, groups),
                AttnBlock(cur, groups),
                ResBlock(cur, cur, temb_dim, dropout, groups),
            ]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(cur + skips.pop(), ch * mult, temb_dim, dropout, groups)])
                cur = ch * mult
                if res in attn_resolutions:
                    block.append(AttnBlock(cur, groups))
                self.up.append(block)
            if level != 0:
                self.up.append(
                    nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cur, cur, 3, padding=1)])
                )
                res *= 2
        self.out = nn.Sequential(
            group_norm(cur, groups),
            nn.SiLU(),
            zero_init(nn.Conv2d(cur, in_channels * (2 if learn_variance else 1), 3, padding=1)),
        )

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        *,
        cond: Tensor | None = None,
        level: Tensor | None = None,
        s: Tensor | None = None,
    ) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"DDPMUNet expects x of shape [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        check_conditional(self, y)
        temb = self.time(t) + second_time(self, t, s)
        if self.label is not None:
            temb = temb + self.label(y, x.shape[0], x.device)
        if self.cond_channels:
            if cond is None or level is None:
                raise ValueError(
                    "this super-resolution U-Net needs its low-resolution condition: model.given(low, level)"
                )
            x = torch.cat([x, upsample(cond, self.image_size)], dim=1)
            temb = temb + self.level(level)
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = _apply(block, h, temb)
            hs.append(h)
        h = _apply(self.mid, h, temb)
        for block in self.up:
            if isinstance(block[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = _apply(block, h, temb)
        return self.out(h)


def upsample(low: Tensor, size: int) -> Tensor:
    """Low-resolution images ``[B, C, h, w]`` upsampled to ``size`` x ``size`` by repeating pixels (nearest
    neighbour; ``h`` divides ``size``): the condition of a super-resolution stage."""
    if low.ndim != 4 or low.shape[-1] != low.shape[-2] or size % low.shape[-1]:
        raise ValueError(
            f"the low-resolution condition must be square images [B, C, h, h] with h dividing {size}, got "
            f"{tuple(low.shape)}"
        )
    factor = size // low.shape[-1]
    return low.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1) if factor > 1 else low


def _apply(layers: nn.ModuleList, h: Tensor, temb: Tensor) -> Tensor:
    """Run a block's layers; residual blocks also take the time embedding."""
    for layer in layers:
        h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
    return h
