"""The small conv encoder and decoder of lessons 01-02 (VQ-VAE paper, Sec. 4.1), and two metrics.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .errors import UserError


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): the VQ-VAE residual block."""

    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 1))

    def forward(self, x):
        return x + self.net(x)


def _levels(downsample: int) -> int:
    m = round(math.log2(downsample)) if downsample > 0 else -1
    if m < 1 or 2**m != downsample:
        raise UserError(f"--downsample must be a power of two >= 2, got {downsample}")
    return m


def _width(ch: int, level: int) -> int:
    return ch * min(2**level, 4)  # channels double per halving of resolution, up to 4x


class Encoder(nn.Module):
    """x: (B, 3, S, S) -> z_e: (B, d, S/f, S/f). Strided 4x4 convs halve the size log2(f) times."""

    def __init__(self, d: int, ch: int = 64, downsample: int = 4, res_blocks: int = 2):
        super().__init__()
        m = _levels(downsample)
        layers = [nn.Conv2d(3, ch, 3, padding=1)]
        for i in range(m):
            layers += [
                nn.ReLU(),
                nn.Conv2d(_width(ch, i), _width(ch, i + 1), 4, stride=2, padding=1),
            ]
        top = _width(ch, m)
        layers += [ResBlock(top) for _ in range(res_blocks)] + [nn.ReLU(), nn.Conv2d(top, d, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    """z_q: (B, d, S/f, S/f) -> x_hat: (B, 3, S, S). The encoder's mirror with transposed convs."""

    def __init__(self, d: int, ch: int = 64, downsample: int = 4, res_blocks: int = 2):
        super().__init__()
        m = _levels(downsample)
        top = _width(ch, m)
        layers = [nn.Conv2d(d, top, 3, padding=1)] + [ResBlock(top) for _ in range(res_blocks)]
        for i in reversed(range(m)):
            layers += [
                nn.ReLU(),
                nn.ConvTranspose2d(_width(ch, i + 1), _width(ch, i), 4, stride=2, padding=1),
            ]
        layers += [nn.ReLU(), nn.Conv2d(ch, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


# --- metrics ---


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for images in [-1, 1] (peak-to-peak 2)."""
    mse = (x.float() - x_hat.float().clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4 / mse.clamp_min(1e-10))


def codebook_stats(counts: torch.Tensor) -> dict[str, float]:
    """counts: (K,) how often each code was chosen -> usage (fraction used), perplexity, unused."""
    p = counts.double() / counts.sum().clamp_min(1)
    entropy = -(p * p.clamp_min(1e-30).log()).sum()
    return {
        "usage": (counts > 0).double().mean().item(),
        "perplexity": entropy.exp().item(),
        "unused": int((counts == 0).sum()),
    }
