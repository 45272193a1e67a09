"""The encoder and decoder of taming-transformers (VQGAN, arXiv:2012.09841, Sec. 3.1, after DDPM):
residual blocks with GroupNorm and Swish, self-attention at chosen resolutions. Lesson 03 puts its
quantizer between them.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def Norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch, eps=1e-6)  # 32 groups where the width allows


class ResBlock(nn.Module):
    """GroupNorm -> Swish -> conv3x3, twice, plus a (1x1 when widths differ) shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.net = nn.Sequential(
            Norm(c_in),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            Norm(c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.net(x)


class Attention(nn.Module):
    """Non-local block: single-head self-attention over the h*w positions, residual."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm, self.qkv, self.proj = Norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # 3 x (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj(out.transpose(1, 2).reshape(B, C, H, W))


class Encoder(nn.Module):
    """x: (B, 3, S, S) -> z_e: (B, d, S/f, S/f); conv -> levels of ResBlocks (+attention) and
    downsampling -> ResBlock, attention, ResBlock -> GroupNorm, Swish, conv."""

    def __init__(self, d, ch, ch_mult, num_res_blocks, attn_resolutions, size, z_channels=None):
        super().__init__()
        widths = [ch * m for m in (1, *ch_mult)]
        layers = [nn.Conv2d(3, ch, 3, padding=1)]
        for i in range(len(ch_mult)):
            for j in range(num_res_blocks):
                layers.append(ResBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1]))
                if size in attn_resolutions:
                    layers.append(Attention(widths[i + 1]))
            if i < len(ch_mult) - 1:  # asymmetric pad + stride-2 conv halves the size
                layers += [
                    nn.ZeroPad2d((0, 1, 0, 1)),
                    nn.Conv2d(widths[i + 1], widths[i + 1], 3, stride=2),
                ]
                size //= 2
        top = widths[-1]
        layers += [
            ResBlock(top, top),
            Attention(top),
            ResBlock(top, top),
            Norm(top),
            nn.SiLU(),
            nn.Conv2d(top, z_channels or d, 3, padding=1),
        ]
        self.net = nn.Sequential(*layers)
        # the released taming / Kakao nets end in z_channels and a 1x1 conv to d (their quant_conv)
        self.quant_conv = nn.Conv2d(z_channels, d, 1) if z_channels else nn.Identity()

    def forward(self, x):
        return self.quant_conv(self.net(x))


class Decoder(nn.Module):
    """z_q: (B, d, S/f, S/f) -> x_hat: (B, 3, S, S); the encoder's mirror (num_res_blocks + 1 per level)."""

    def __init__(self, d, ch, ch_mult, num_res_blocks, attn_resolutions, size, z_channels=None):
        super().__init__()
        widths = [ch * m for m in (1, *ch_mult)]
        size //= 2 ** (len(ch_mult) - 1)
        top = widths[-1]
        self.post_quant_conv = nn.Conv2d(d, z_channels, 1) if z_channels else nn.Identity()
        layers = [
            nn.Conv2d(z_channels or d, top, 3, padding=1),
            ResBlock(top, top),
            Attention(top),
            ResBlock(top, top),
        ]
        c = top
        for i in reversed(range(len(ch_mult))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResBlock(c, widths[i + 1]))
                c = widths[i + 1]
                if size in attn_resolutions:
                    layers.append(Attention(c))
            if i > 0:
                layers += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c, c, 3, padding=1),
                ]
                size *= 2
        layers += [Norm(c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.net[-1].weight  # G_L, where lambda compares the two gradients

    def forward(self, z):
        return self.net(self.post_quant_conv(z))
