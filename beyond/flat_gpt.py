"""Beyond lesson 04: the baseline the RQ-Transformer is measured against, one flat GPT over all codes.

Paper: D. Lee, C. Kim, S. Kim, M. Cho, W.-S. Han, "Autoregressive Image Generation using Residual
Quantization" (arXiv:2203.01941), Sec. 3.2: the cost of a transformer over the T*D codes unfolded
in raster order (position-major, depth-minor), O(N T^2 D^2) for N layers, against the
RQ-Transformer's O(N_spatial T^2 + N_depth T D^2). (VQ-Diffusion's "VQ-AR" baseline is the same
kind of model.)

Idea. The flat GPT predicts every code from all codes before it in one causal stack: attention
over sequences of T*D tokens, and T*D cached steps of the full stack to draw an image, where the
RQ-Transformer takes T steps of its spatial stack and T*D of its small depth stack. Here it is as
wide as lesson 04's model and spatial + depth layers deep, with the same interface, so lesson 04's
training loop, evaluation and samplers run it unchanged; benchmarks/ar_sampling_speed.py times both.

Run: python beyond/flat_gpt.py                 (CPU, built-in shapes-plain, as lesson 04)
     python benchmarks/ar_sampling_speed.py     (sampling speed against the RQ-Transformer)
Builds on: 04_rq_transformer.py
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lessons and `common`
import common

ar = common.lesson("04_rq_transformer")  # Transformer, guide, sample_logits, unconditional, train


class FlatTransformer(nn.Module):
    """p(S) = prod_i p(s_i | s_<i) over the T*D codes in raster order. codes (B, T, D), c (B,) ->
    logits (B, T, D, K), as lesson 04's RQTransformer."""

    def __init__(self, codebook: torch.Tensor, T: int, D: int, cfg: Config, num_classes: int, text=None):
        super().__init__()
        assert text is None, (
            "the flat baseline is class-conditional only (its Config refuses --condition text)"
        )
        K, d_code = codebook.shape
        self.T, self.D, self.K = T, D, K
        self.register_buffer("codebook", codebook.clone())  # frozen e(k): (K, d_code)
        self.embed = nn.Linear(d_code, cfg.width)
        self.start = nn.Embedding(num_classes + 1, cfg.width)  # one per class + "no class"
        self.null = num_classes
        self.pos = nn.Parameter(torch.zeros(T * D, cfg.width))
        self.gpt = ar.Transformer(cfg.width, cfg.spatial_layers + cfg.depth_layers, cfg.heads, cfg.dropout)
        self.head = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, K))

    def forward(self, codes: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        B, T, D = codes.shape
        seq = codes.reshape(B, T * D)  # (B, T*D): position-major, depth-minor
        x = torch.cat([self.start(c)[:, None], self.embed(self.codebook[seq[:, :-1]])], 1) + self.pos
        return self.head(self.gpt(x)).view(B, T, D, self.K)

    @torch.no_grad()
    def sample(self, c: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, guidance=1.0):
        """T*D cached steps of the whole stack. c: (B,) -> codes (B, T, D), logits (B, T, D, K)."""
        B, dev, L, pair = len(c), c.device, self.T * self.D, 1 + (guidance != 1.0)
        c = torch.cat([c, ar.unconditional(self, c)]) if pair == 2 else c
        seq = torch.zeros(B, L, dtype=torch.long, device=dev)
        logits = torch.zeros(B, L, self.K, device=dev)
        cache = self.gpt.caches(len(c), L, dev)
        x = (self.start(c) + self.pos[0])[:, None]
        for i in range(L):
            logits[:, i] = ar.guide(self.head(self.gpt(x, cache))[:, 0], guidance)
            seq[:, i] = ar.sample_logits(logits[:, i], temperature, top_k, top_p)
            if i + 1 < L:
                x = (self.embed(self.codebook[seq[:, i].repeat(pair)]) + self.pos[i + 1])[:, None]
        return seq.view(B, self.T, self.D), logits.view(B, self.T, self.D, self.K)


@dataclass
class Config(ar.Config):
    out: str = "runs/flat_gpt"  # run folder: ckpt.pt, metrics.jsonl, samples.png

    def __post_init__(self):
        super().__post_init__()
        common.require(
            (self.condition != "text", "the flat baseline is class-conditional only; drop --condition text")
        )


def train(cfg: Config) -> nn.Module:
    """Lesson 04's training loop, evaluation and samples, with the flat GPT as the prior."""
    return ar.train(cfg, FlatTransformer)


if __name__ == "__main__":
    common.main(train, Config)
