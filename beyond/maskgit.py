"""Beyond lesson 05: MaskGIT's sampler, which reveals the codes it is surest of, on a cosine schedule.

Paper: H. Chang, H. Zhang, L. Jiang, C. Liu, W. T. Freeman, "MaskGIT: Masked Generative Image
Transformer" (arXiv:2202.04200), Sec. 3.2 (iterative decoding) and 3.3 (the mask schedule).

Idea. Lesson 05's posterior sampler unmasks each [MASK] code independently, a random one at a
time; a code drawn early from an unsure prediction can start a shape the rest cannot finish.
MaskGIT decodes in a fixed number of iterations i = 1..I: every [MASK] code is drawn from
p_theta(x_0 | x_t); each draw gets a confidence, log p_theta(drawn code) plus Gumbel noise scaled
by a temperature that falls linearly to 0 (annealed randomness: early choices vary, late ones are
the surest); the least confident draws are masked again, so that a fraction cos(pi/2 * i/I) of the
codes stays [MASK] (the cosine schedule: few codes first, when the prediction is least informed).
Improved VQ-Diffusion's purity sampler (beyond/purity_sampler.py) is the same kind of step: no
noise, the chain's linear schedule, purity max_k p instead of the drawn code's probability.
Lesson 05's network reads the timestep too: iteration i uses the t whose gammabar_t is closest
to the fraction still masked.

Run: python 05_vq_diffusion.py, then
     python beyond/maskgit.py --calls 10     (maskgit.png in runs/05_vq_diffusion, judged as samples.png)
Builds on: 05_vq_diffusion.py
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lessons and `common`
import common
import sample_quality
import stage1
from common import stage2

vqd = common.lesson("05_vq_diffusion")  # the network, p_theta(x_0 | x_t), the schedule
ar = common.lesson("04_rq_transformer")  # filter_logits, sample_logits, unconditional


def masked_after(i: int, calls: int, n: int) -> int:
    """MaskGIT Sec. 3.3, the cosine schedule: of n codes, floor(n cos(pi/2 * i / calls)) are still
    [MASK] after iteration i of `calls` (n before the first, 0 after the last)."""
    return math.floor(n * math.cos(math.pi / 2 * i / calls) + 1e-9)


def remask_least_confident(x_t, x0, log_x0, n_masked: int, temperature: float) -> torch.Tensor:
    """MaskGIT Sec. 3.2: the draws x0 fill every [MASK] code of x_t; then the n_masked least
    confident of them become [MASK] again. Confidence: log p_theta(x0) + temperature * Gumbel
    noise; codes known in x_t are never masked. x_t, x0 (B, N, D), log_x0 (B, N, D, K) -> x_s."""
    K = log_x0.shape[-1]
    masked = x_t == K
    confidence = log_x0.gather(-1, x0[..., None]).squeeze(-1)  # (B, N, D)
    gumbel = -torch.log(-torch.log(torch.rand_like(confidence).clamp(1e-20, 1 - 1e-7)))
    confidence = (confidence + temperature * gumbel).masked_fill(~masked, math.inf).flatten(1)
    rank = confidence.argsort(1).argsort(1).view_as(x_t)  # 0 = the least confident [MASK] code
    n = masked.flatten(1).sum(1).clamp_max(n_masked).view(-1, 1, 1)  # (B, 1, 1): known codes stay
    return torch.where(rank < n, K, torch.where(masked, x0, x_t))


@torch.no_grad()
def sample_maskgit(model, sched, c, calls=10, temperature=4.5, truncation=1.0, guidance=1.0, hold=None):
    """From all [MASK] to x_0 (B, N, D) in `calls` network calls; the choice temperature falls
    linearly from `temperature` to 0; draws truncated to mass r as in lesson 05. hold(x, s) as in
    lesson 05 (inpainting: vqd.keep(known)), applied after every iteration."""
    if sched.gammabar[-1] <= 0:
        raise common.UserError("MaskGIT reveals [MASK] codes; this prior's noise (--gamma-end 0) has none")
    B, N, D, K = len(c), model.H * model.H, model.D, sched.K
    hold = hold or (lambda x, s: x)
    x = hold(torch.full((B, N, D), K, device=c.device), sched.T)
    c_in = torch.cat([c, ar.unconditional(model, c)]) if guidance != 1.0 else c
    for i in common.progress(range(calls), desc="maskgit sampling", leave=False):
        fraction = (x == K).float().mean().item()  # what the network sees: t with gammabar_t ~ it
        t = max(1, int((sched.gammabar.float() - fraction).abs().argmin()))
        log_x0 = vqd.p_x0(model, x, t, c_in, guidance)  # (B, N, D, K)
        x0 = ar.sample_logits(ar.filter_logits(log_x0, top_p=truncation).reshape(-1, K)).view_as(x)
        x = remask_least_confident(
            x, x0, log_x0, masked_after(i + 1, calls, N * D), temperature * (1 - (i + 1) / calls)
        )
        x = hold(x, t)
    return x


@dataclass
class Config(vqd.Config):
    RESUMABLE: ClassVar = vqd.Config.RESUMABLE | {"calls", "choice_temperature"}
    calls: int = 10  # I: network calls (iterations), each revealing codes by the cosine schedule
    choice_temperature: float = 4.5  # Gumbel noise on the confidences, annealed to 0 (MaskGIT: 4.5)

    def __post_init__(self):
        super().__post_init__()
        common.require(
            (self.calls >= 1, "--calls must be >= 1"),
            (self.choice_temperature >= 0, "--choice-temperature must be >= 0"),
        )


def draw(cfg: Config) -> dict:
    """maskgit.png in --out from the lesson-05 prior trained there, one row per class, judged for
    sample quality as samples.png is (the sampling flags are this command's) -> the metrics."""
    s, model, sched = stage2.load_trained(cfg, vqd.build, vqd.__name__, stage1.tokenizer)
    fn = lambda c: sample_maskgit(
        model, sched, c, cfg.calls, cfg.choice_temperature, cfg.truncation, cfg.guidance
    )
    return sample_quality.samples_png(s, cfg, fn, "maskgit.png")


if __name__ == "__main__":
    common.main(draw, Config)
