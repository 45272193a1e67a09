"""Beyond lesson 05: the purity sampler of improved VQ-Diffusion, which reveals the surest codes first.

Paper: Z. Tang, S. Gu, J. Bao, D. Chen, F. Wen, "Improved Vector Quantized Diffusion Models"
(arXiv:2205.16007), its high-quality inference strategy against the joint-distribution issue:
which [MASK] codes to reveal at each step is decided by the network's confidence (the purity)
instead of independent draws.

Idea. Lesson 05's reverse step unmasks each [MASK] code independently; with few steps left, two
codes that only make sense together can be drawn at once and disagree. Here the NUMBER of codes
still masked after the step is what the forward chain gives, round(n_masked * gammabar_s /
gammabar_t) (0 at s = 0), but WHICH codes are revealed is decided by their purity
max_k p_theta(x_0 = k | x_t): the purest first, each taking a draw from p_theta(x_0 | x_t)
(truncated as in lesson 05). The chain starts from all [MASK], as the official sampler does: it
only ever reveals [MASK] codes, so the uniform codes of a mask-and-replace p(x_T) would stay.

Run: python 05_vq_diffusion.py, then
     python beyond/purity_sampler.py            (purity.png in runs/05_vq_diffusion, judged as samples.png)
Builds on: 05_vq_diffusion.py
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lessons and `common`
import common
import sample_quality
import stage1
from common import stage2

vqd = common.lesson("05_vq_diffusion")  # the network, p_theta(x_0 | x_t), the schedule
ar = common.lesson("04_rq_transformer")  # filter_logits, sample_logits, unconditional


def reveal_purest(x_t, x0, logits, sched, t: int, s: int) -> torch.Tensor:
    """One step of the purity sampler: reveal the purest [MASK] codes of x_t, as many as the forward
    chain unmasks from t to s; codes that are not [MASK] are kept. Purity is read from the
    untruncated logits (truncated to mass r, every code whose top probability is >= r has purity 1).
    x_t, x0: (B, N, D); logits (B, N, D, K) of p_theta(x_0 | x_t) -> x_s (B, N, D)."""
    masked = (x_t == sched.K).flatten(1)  # (B, N*D)
    n_masked = masked.sum(1)
    stay = (n_masked * (sched.gammabar[s] / sched.gammabar[t]).item()).round().long()
    n_reveal = n_masked - stay if s > 0 else n_masked  # (B,)
    purity = logits.float().softmax(-1).amax(-1).flatten(1).masked_fill(~masked, -1.0)
    rank = purity.argsort(1, descending=True).argsort(1)  # 0 = the purest masked code
    reveal = (rank < n_reveal[:, None]).view_as(x_t)
    return torch.where(reveal, x0, x_t)


@torch.no_grad()
def sample_purest(model, sched, c, stride=1, truncation=1.0, guidance=1.0, hold=None) -> torch.Tensor:
    """Lesson 05's `sample` with the purity step: from all [MASK] at t = T to x_0 (B, N, D) in
    ceil(T / dt) network calls; hold(x, s) as in lesson 05 (inpainting: vqd.keep(known))."""
    if sched.gammabar[-1] <= 0:
        raise common.UserError(
            "the purity sampler reveals [MASK] codes; this prior's noise (--gamma-end 0) has none"
        )
    B, N, D, K = len(c), model.H * model.H, model.D, sched.K
    hold = hold or (lambda x, s: x)
    x = hold(torch.full((B, N, D), K, device=c.device), sched.T)
    c_in = torch.cat([c, ar.unconditional(model, c)]) if guidance != 1.0 else c
    for t in common.progress(range(sched.T, 0, -stride), desc="purity sampling", leave=False):
        s = max(t - stride, 0)
        log_x0 = vqd.p_x0(model, x, t, c_in, guidance)  # (B, N, D, K), untruncated
        x0 = ar.sample_logits(ar.filter_logits(log_x0, top_p=truncation).reshape(-1, K)).view_as(x)
        x = hold(reveal_purest(x, x0, log_x0, sched, t, s), s)
    return x


@dataclass
class Config(vqd.Config):
    pass


def draw(cfg: Config) -> dict:
    """purity.png in --out from the lesson-05 prior trained there, one row per class, judged for
    sample quality as samples.png is (the sampling flags are this command's) -> the metrics."""
    s, model, sched = stage2.load_trained(cfg, vqd.build, vqd.__name__, stage1.tokenizer)
    purest = lambda c: sample_purest(model, sched, c, cfg.stride, cfg.truncation, cfg.guidance)
    return sample_quality.samples_png(s, cfg, purest, "purity.png")


if __name__ == "__main__":
    common.main(draw, Config)
