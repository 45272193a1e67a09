"""Beyond lesson 04: the order in which an autoregressive prior reads the code grid.

Paper: P. Esser, R. Rombach, B. Ommer, "Taming Transformers for High-Resolution Image Synthesis"
(arXiv:2012.09841), App. F and Fig. 47: six orders of the positions, compared by validation NLL
on ImageNet; row-major comes out lowest.

Idea. Attention does not care in which order the positions come; next-code prediction does: the
prior factorises p(S) along the order, so each code is predicted from the codes before it in that
order. A prior in another order is lesson 04's RQ-Transformer applied to the permuted sequence:
permute the positions into the order, run the RQ-Transformer (its position embeddings now number
the steps of the order), and permute the logits back. The permutation is a buffer, so the
checkpoint holds it; codes and logits outside the prior stay in raster order.

Run: python beyond/code_orders.py --order z-curve      (CPU, built-in shapes-plain, as lesson 04)
     python benchmarks/code_order.py --tokenizer runs/04_rq_transformer/tokenizer/ckpt.pt   (all six)
Builds on: 04_rq_transformer.py
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lessons and `common`
import common

ar = common.lesson("04_rq_transformer")  # the RQ-Transformer and its training loop

ORDERS = ("row-major", "spiral-out", "spiral-in", "z-curve", "subsample", "alternate")


def code_order(name: str, T: int) -> torch.Tensor:
    """The order in which a prior visits the T = H x H positions: (T,) long, the raster index of
    each step (taming's permuters).
        row-major   row by row, left to right (RQ Eq. 8)
        alternate   row by row, every second row right to left
        spiral-in   the border first: from the bottom-right corner up, then anticlockwise ring by
                    ring to the centre
        spiral-out  the spiral-in path backwards: from the centre out
        z-curve     the Morton curve: row and column bits interleaved, 2 x 2 blocks inside 4 x 4 ...
        subsample   the Morton key read from its lowest bits: every second row and column first
                    (a 2x-subsampled image), then the other three phases, recursively
    """
    H = math.isqrt(T)
    grid = torch.arange(T).view(H, H) if H * H == T else None
    assert name == "row-major" or grid is not None, f"--order {name} needs a square code grid, not T = {T}"
    if name == "row-major":
        return torch.arange(T)
    if name == "alternate":
        grid[1::2] = grid[1::2].flip(1)
        return grid.flatten()
    if name in ("spiral-in", "spiral-out"):
        # mirrored across the anti-diagonal, the right column read upwards is the top row; peel
        # the top row, then turn what is left a quarter to the left: anticlockwise in the grid
        path, ring = [], grid.flip(0, 1).t()
        while ring.numel():
            path.append(ring[0])
            ring = ring[1:].rot90(1)
        path = torch.cat(path)
        return path if name == "spiral-in" else path.flip(0)
    bits = max(H - 1, 1).bit_length()
    i, j = (g.flatten() for g in torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij"))
    if name == "subsample":  # reverse the bits of i and j: the lowest bit decides first
        i, j = (sum(((x >> b) & 1) << (bits - 1 - b) for b in range(bits)) for x in (i, j))
    morton = sum((((i >> b) & 1) << (2 * b + 1)) | (((j >> b) & 1) << (2 * b)) for b in range(bits))
    return grid.flatten()[morton.argsort()]


class OrderedRQTransformer(ar.RQTransformer):
    """Lesson 04's prior reading the positions in cfg.order. codes (B, T, D) and logits (B, T, D, K)
    are in raster order outside it, as for lesson 04's model."""

    def __init__(self, codebook: torch.Tensor, T: int, D: int, cfg: Config, num_classes: int, text=None):
        super().__init__(codebook, T, D, cfg, num_classes, text)
        self.register_buffer("order", code_order(cfg.order, T))  # (T,) raster index of each step

    def forward(self, codes: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return super().forward(codes[:, self.order], c)[:, self.order.argsort()]

    @torch.no_grad()
    def sample(self, c: torch.Tensor, *args, **kw):
        """Drawn step by step in the order (lesson 04's cached sampler), returned in raster order."""
        codes, logits = super().sample(c, *args, **kw)
        back = self.order.argsort()
        return codes[:, back], logits[:, back]


@dataclass
class Config(ar.Config):
    out: str = "runs/code_orders"  # run folder: ckpt.pt (with the order), metrics.jsonl, samples.png
    order: Literal[ORDERS] = "z-curve"  # the order the prior visits the code grid in (Taming Fig. 47)


def train(cfg: Config) -> torch.nn.Module:
    """Lesson 04's training loop, evaluation and samples, with the prior in cfg.order."""
    return ar.train(cfg, OrderedRQTransformer)


if __name__ == "__main__":
    common.main(train, Config)
