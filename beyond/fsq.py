"""Beyond lessons 01-02: FSQ, a bottleneck with no codebook to learn, and residual FSQ.

Paper: F. Mentzer, D. Minnen, E. Agustsson, M. Tschannen, "Finite Scalar Quantization: VQ-VAE Made
Simple" (arXiv:2309.15505), Sec. 3.

Idea. Lesson 01's codebook is learned, so it needs a commitment loss, an EMA and restarts of dead
codes to stay in use. FSQ drops it: the encoder ends in d = len(levels) channels, each channel is
bounded by f (a scaled tanh) and rounded to one of L_i evenly spaced values. The codebook is
implicit, the grid C of prod_i L_i points; the index of a point is its digits read in a mixed radix.
Nothing is learned in the bottleneck, the straight-through step passes the gradient, and every
grid point can be reached. Residual FSQ quantizes what is left, as lesson 02 does, with the grid
shrunk at each depth so that it spans the cell of the depth before.

Notation (as lessons 01-02; new here):
    symbol   code name        shape
    L_i      levels[i]        int              values of channel i; d = len(levels) channels
    f(z)     bound(z)         (..., d)         z squashed so that rounding gives L_i values
    C        grid(levels)     (prod L_i, d)    the implicit codebook, in [-1, 1] per channel
    s_d      scale(levels, d) (d,)             depth d's grid is s_d C: s_d = (L_i - 1)^-(d-1)

Run: python beyond/fsq.py                          (FSQ, levels 8 5 5 5 = 1000 codes; CPU minutes)
     python beyond/fsq.py --levels 4 4 --depth 2   (residual FSQ)
     python beyond/fsq.py vqgan --perceptual-weight 0   (in lesson 03's adversarial training)
Builds on: 01_vq.py (autoencoder, straight-through) and 02_rq.py (residual quantization, the
training loop and report, which run unchanged); lessons 04 and 05 train on its checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.nn as nn
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lessons and `common`
import common
from common.checkpoints import load_state

vq = common.lesson("01_vq")  # VQVAE (encoder, decoder), straight_through
rq = common.lesson("02_rq")  # Config, and train: lesson 02's loop and report
vqgan = common.lesson("03_vqgan")  # VQGAN, Config and train (the adversarial loop)

# --- finite scalar quantization (FSQ Sec. 3) ---


def bound(z: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """f(z): (..., d) -> (..., d), channel i in the range whose rounding gives L_i values, divided
    by floor(L_i / 2) so that the grid spans [-1, 1]. f(z) = floor(L/2) tanh(z) for odd L; an even
    L has no level at 0 on a symmetric range, so tanh is shifted and offset by half a step (FSQ
    Sec. 3 and its code): the values are -L/2, ..., L/2 - 1 and f(0) = 0."""
    half_l = (levels - 1) * (1 + 1e-3) / 2  # tanh reaches +-half_l (a hair more: the end levels are reached)
    offset = (levels % 2 == 0) * 0.5  # the half step of an even L
    shift = torch.atanh(offset / half_l)  # so that f(0) = 0
    return (torch.tanh(z + shift) * half_l - offset) / (levels // 2)


def snap(z: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The nearest point of the grid C to z, channel by channel: round(z floor(L/2)), kept among
    the L values, over floor(L/2). (..., d) -> (..., d). For a product grid this IS the nearest
    code of lesson 01 (RQ Eq. 1), without a search over prod L_i points."""
    half = levels // 2
    return torch.minimum(torch.maximum(torch.round(z * half), -half), levels - 1 - half) / half


def fsq(z: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """FSQ's quantizer on a bounded z = f(.): round to the grid, with lesson 01's straight-through gradient."""
    return vq.straight_through(z, snap(z, levels))


def place_values(levels: torch.Tensor) -> torch.Tensor:
    """(d,): 1, L_1, L_1 L_2, ...: the mixed radix in which a grid point's digits are read."""
    return torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), 0)


def codes_to_index(q: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """A grid point (..., d) -> its index (...,) in [0, prod L_i): digit i = q_i floor(L_i/2) + floor(L_i/2)."""
    half = levels // 2
    return (((q * half).round().long() + half) * place_values(levels)).sum(-1)


def index_to_codes(k: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The inverse: indices (...,) -> grid points (..., d)."""
    half = levels // 2
    return ((k[..., None] // place_values(levels)) % levels - half) / half


def grid(levels: torch.Tensor) -> torch.Tensor:
    """C: (prod L_i, d), every grid point, row k the point of index k: the implicit codebook."""
    return index_to_codes(torch.arange(int(levels.prod())), levels)


def scale(levels: torch.Tensor, depth: int) -> torch.Tensor:
    """s_d (d,): the grid of depth d (from 0) is s_d C. A residual is at most half a step of the grid
    before, s_{d-1} / (L - 1) for odd L, which s_d C spans exactly; for even L its top level falls
    short of that, so the largest positive residuals are clipped to it."""
    return (levels - 1.0) ** -depth


@torch.no_grad()  # the codes carry no gradient; straight-through handles the rest
def residual_fsq(z: torch.Tensor, levels: torch.Tensor, depth: int):
    """Residual FSQ: lesson 02's RQ Eq. 3-5 with a fixed grid per depth, r_0 = z,
    q_d = s_d snap(r_{d-1} / s_d), r_d = r_{d-1} - q_d. z: (N, d) bounded -> codes (N, D) (indices of
    C, the same at every depth), partial sums (N, D, d). Depth 1 is FSQ."""
    r, z_hat, codes, partial = z, torch.zeros_like(z), [], []
    for d in range(depth):
        s = scale(levels, d)
        q = snap(r / s, levels)  # the nearest point of s_d C, in units of s_d
        codes.append(codes_to_index(q, levels))
        z_hat, r = z_hat + s * q, r - s * q
        partial.append(z_hat)
    return torch.stack(codes, -1), torch.stack(partial, -2)


class FSQuantizer(nn.Module):
    """Lesson 02's ResidualQuantizer with FSQ's grid: z_e (B, d, H, W), already bounded (the
    encoder's last step is f) -> z_q with straight-through gradient, codes (B, H, W, D), losses.
    No codebook loss, no EMA, no restart: "loss" is 0 and no code is ever dead."""

    shared, n_dead = True, 0  # one index space at every depth (stage 2 asks); nothing to restart

    def __init__(self, levels, depth: int = 1):
        super().__init__()
        self.depth = depth
        self.register_buffer("levels", torch.tensor(levels), persistent=False)
        self.register_buffer("codebook", grid(self.levels), persistent=False)  # C: (prod L_i, d)

    @property
    def codebooks(self) -> list[torch.Tensor]:
        """[s_d C]: depth d's grid, explicit. Lesson 04 encodes with them (nearest code at each depth)."""
        return [self.codebook * scale(self.levels, d) for d in range(self.depth)]

    def offsets(self) -> torch.Tensor:
        return torch.zeros(self.depth, dtype=torch.long)  # lesson 02's report asks

    def quantize(self, z: torch.Tensor):
        """z: (N, d) -> codes (N, D), partial sums (N, D, d), as lesson 02's."""
        return residual_fsq(z.float(), self.levels, self.depth)

    def forward(self, z_e: torch.Tensor):
        B, d, H, W = z_e.shape
        z = rearrange(z_e.float(), "b d h w -> (b h w) d")
        codes, partial = self.quantize(z)
        z_q = vq.straight_through(z, partial[:, -1])  # depth 1: fsq(z, levels)
        commit = (z - partial[:, -1]).pow(2).mean().detach()  # logged only: ||z - z_q||^2
        z_q = rearrange(z_q, "(b h w) d -> b d h w", b=B, h=H, w=W)
        return z_q, codes.view(B, H, W, self.depth), {"loss": z.new_zeros(()), "commit": commit}


class Bound(nn.Module):
    """f as the encoder's last layer, so that the bottleneck is rounding alone: the nearest code of
    lesson 04's encoder, over the explicit grid, then finds FSQ's codes."""

    def __init__(self, levels):
        super().__init__()
        self.register_buffer("levels", torch.tensor(levels).view(-1, 1, 1), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, d, H, W)
        return bound(z.float(), self.levels)


def use_fsq(model: nn.Module, cfg) -> None:
    """FSQ in place of the autoencoder's quantizer; the encoder, whose last conv has d = len(levels)
    channels (--code-dim), ends in f."""
    model.quantizer = FSQuantizer(cfg.levels, cfg.depth)
    model.encoder = nn.Sequential(model.encoder, Bound(cfg.levels))


@torch.no_grad()
def decode_codes(model: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """codes (B, T, D) -> images (B, 3, S, S): z_q = sum_d s_d C[k_d] (what lessons 04-05 draw)."""
    z_q = sum(book[k] for book, k in zip(model.quantizer.codebooks, codes.unbind(-1)))  # (B, T, d)
    return model.decoder(rearrange(z_q, "b (h w) d -> b d h w", h=math.isqrt(codes.shape[1])))


class Tokenizer(vq.VQVAE):
    """Lesson 01's encoder and decoder around FSQ (build for lesson 02's loop)."""

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        use_fsq(self, cfg)

    decode_codes = decode_codes


class GanTokenizer(vqgan.VQGAN):
    """Lesson 03's encoder and decoder around FSQ (build for lesson 03's loop)."""

    def __init__(self, cfg: GanConfig):
        super().__init__(cfg)
        use_fsq(self, cfg)

    decode_codes = decode_codes


# --- training: the lessons' own loops ---


def train(cfg: Config) -> nn.Module:
    """Lesson 02's training, its loop and report run as they are: it builds its model with rq.build,
    which for this call is this file's Tokenizer. L = L_recon alone (q["loss"] is 0)."""
    with mock.patch.object(rq, "build", Tokenizer):
        return rq.train(cfg)


def train_gan(cfg: GanConfig) -> nn.Module:
    """Lesson 03's adversarial training, with this file's model in place of its VQGAN."""
    with mock.patch.object(vqgan, "build", GanTokenizer):
        return vqgan.train(cfg)


def load_tokenizer(ckpt: dict, path, device="cpu"):
    """(frozen model, its config) from a checkpoint this file wrote; stage1 (lessons 04-05) calls it."""
    gan = "disc_weight" in ckpt["config"]
    Cfg = GanConfig if gan else Config
    cfg = Cfg(**common.saved_config(Cfg, ckpt["config"]))
    model = (GanTokenizer if gan else Tokenizer)(cfg)
    load_state(model, ckpt["model"], path)
    return model.to(device).eval().requires_grad_(False), cfg


# --- config and command line ---


def fsq_flags(cfg) -> None:
    """What both configs check: d = len(levels) is the code dimension, K = prod L_i the codebook size."""
    n = math.prod(cfg.levels)
    fields = {f.name: f.default for f in dataclasses.fields(cfg)}
    moot = [
        f"--{k.replace('_', '-')}"
        for k in ("beta", "codebook", "decay", "dead_threshold")
        if getattr(cfg, k) != fields[k]
    ]
    common.require(
        (not moot, f"FSQ learns no codebook: {' '.join(moot)} does not apply"),
        (len(cfg.levels) >= 1 and min(cfg.levels) >= 2, f"--levels must be numbers >= 2, got {cfg.levels}"),
        (cfg.code_dim in (None, len(cfg.levels)), f"--code-dim is len(--levels) = {len(cfg.levels)} for FSQ"),
        (cfg.codebook_size in (None, n), f"--codebook-size is prod(--levels) = {n} for FSQ"),
        (cfg.codebooks == "shared", "FSQ has one grid for every depth: drop --codebooks"),
    )  # fmt: skip
    cfg.code_dim, cfg.codebook_size, cfg.levels = len(cfg.levels), n, tuple(cfg.levels)


@dataclass
class Config(rq.Config):
    out: str = "runs/fsq"  # run folder: ckpt.pt, metrics.jsonl, recon.png, figures
    levels: tuple[int, ...] = (8, 5, 5, 5)  # L_i per channel: prod L_i codes (8 5 5 5: 1000 = 2^10)
    depth: int = 1  # D: 1 is FSQ, > 1 residual FSQ
    code_dim: int | None = None  # d = len(--levels), implied
    codebook_size: int | None = None  # K = prod(--levels), implied

    def __post_init__(self):
        fsq_flags(self)
        super().__post_init__()


@dataclass
class GanConfig(vqgan.Config):
    out: str = "runs/fsq_vqgan"  # run folder: ckpt.pt, metrics.jsonl, recon.png, figures
    levels: tuple[int, ...] = (8, 5, 5, 5)  # L_i per channel: prod L_i codes (8 5 5 5: 1000 = 2^10)
    code_dim: int | None = None  # d = len(--levels), implied
    codebook_size: int | None = None  # K = prod(--levels), implied
    depth: int = 1  # D: 1 is FSQ, > 1 residual FSQ

    def __post_init__(self):
        fsq_flags(self)
        super().__post_init__()


if __name__ == "__main__":
    if sys.argv[1:2] == ["vqgan"]:
        common.main(train_gan, GanConfig, sys.argv[2:])
    else:
        common.main(train, Config)
