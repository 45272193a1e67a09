"""Lesson 05: VQ-Diffusion, a discrete diffusion prior over the tokenizer's codes.

Paper: S. Gu, D. Chen, J. Bao, F. Wen, B. Zhang, D. Chen, L. Yuan, B. Guo, "Vector Quantized
Diffusion Model for Text-to-Image Synthesis" (arXiv:2111.14822), Sec. 3-4. Equations are cited by
what they compute (VQD one step, VQD closed form, VQD posterior, ...: docs/equations.md).

Idea. Lesson 04 writes an image code by code. VQ-Diffusion corrupts ALL codes at once and learns
to undo it: a forward Markov chain q(x_t | x_{t-1}) turns each code into [MASK] with probability
gamma_t or into a uniformly drawn code with probability K*beta_t (mask-and-replace); after T steps
nothing of x_0 is left. A bidirectional transformer sees x_t and predicts x_0 (x0-parameterization);
the exact posterior of the forward chain turns that into p_theta(x_{t-1} | x_t). Sampling runs the
chain backwards from p(x_T), dt steps at a time if asked (fast inference), and can hold some codes
fixed (inpainting). The K codes are states 0..K-1 and [MASK] is state K: every distribution is over
K+1 states, as log-probabilities clamped at LOG_EPS (as the official code, at -70).

CPU defaults (docs/lessons.md says why): a depth-1 VQ tokenizer with K = 128 (the paper's kind);
mask-only noise (the paper's mask-and-replace: --gamma-end 0.9); lambda = 0.01 on L_x0 (official 5e-4);
guidance 3. An RQ tokenizer (D > 1): each of a position's D codes is a diffusion variable of its
own; the position's token is the sum of D depth-specific embeddings, and the network predicts
D x K logits per position. Text (--condition text; VQD Sec. 3.2): every block cross-attends to the
caption's features; the timestep enters through AdaLN.

Where the bits go (docs/lessons.md): under mask-only noise the bound is a 1/t-weighted cross-entropy
on the [MASK] codes (mask_only_weight). On the built-in data it is 1.5x lesson 04's likelihood on
the same codes. About 1.15x is the price of every order against raster order. The rest is
training: after 2500 steps the network predicts the one hidden code of an image no better than a
code of a half-hidden image, because it has not yet learned to read what it is given.

Notation:
    symbol          code name     shape
    x_0             codes         (B, N, D)    long in [0, K): the tokenizer's codes, N = H*W
    x_t             x_t           (B, N, D)    long in [0, K]: K is [MASK]
    v(x)            log one-hot   (..., K+1)
    alphabar_t      sched.alphabar (T+1,)      prob. that x_0 was never touched up to t (t = 0: 1)
                                               (x_t = x_0 has prob. alphabar_t + betabar_t: a
                                               redraw can land on x_0's own code)
    gammabar_t      sched.gammabar (T+1,)      prob. that x_t is [MASK]
    K*betabar_t     sched.replaced (T+1,)      prob. that x_t was redrawn uniformly
    p_theta(x_0|.)  logits        (B, N, D, K)

Run: python 05_vq_diffusion.py                 (CPU, built-in shapes-plain, about 13 minutes)
     python 05_vq_diffusion.py --condition text     (its captions; about 12 minutes)
Beyond it: beyond/purity_sampler.py (improved VQ-Diffusion), beyond/repaint.py (RePaint inpainting),
           beyond/maskgit.py (MaskGIT's confidence-ordered sampler)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

import common
import sample_quality
import stage1
from common import stage2

ar = common.lesson("04_rq_transformer")  # Block, encode, guide, unconditional, filter_logits

LOG_EPS = -70.0  # log-probabilities are clamped to [-70, 0]: exp(-70) ~ 4e-31 stands for zero
LOG_ZERO = -1e4  # log 0 where a zero must stay exactly zero; finite, so no -inf - -inf = NaN
EVAL_TIMESTEPS = 10  # values of t (evenly spread) that estimate the validation bound

# --- the network: a bidirectional transformer with AdaLN ---


class CrossAttention(nn.Module):
    """VQD Sec. 3.2: queries from the code positions x (B, N, W), keys and values from the text
    features (B, L, W), so each position reads the caption of ITS image only. No mask: padding is
    a token of its own (common/text.py)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.q, self.kv = heads, nn.Linear(width, width), nn.Linear(width, 2 * width)
        self.proj, self.drop = nn.Linear(width, width), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        q = rearrange(self.q(x), "b n (h c) -> b h n c", h=self.heads)
        k, v = rearrange(self.kv(text), "b l (two h c) -> two b h l c", two=2, h=self.heads)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, W / heads)
        return self.drop(self.proj(rearrange(a, "b h n c -> b n (h c)")))


class AdaLNBlock(ar.Block):
    """Lesson 04's block with full attention and AdaLN(h, c) = a_c LayerNorm(h) + b_c on both
    branches, (a_c - 1, b_c) linear in the condition embedding (timestep + class). Starts as a
    plain pre-LN block: the AdaLN projection is zero-initialised. cross=True: a cross-attention
    to the text between the two (text-conditional)."""

    causal = False  # every code sees every other code: x_t is given whole

    def __init__(self, width: int, heads: int, dropout: float, cross: bool = False):
        super().__init__(width, heads, dropout)
        self.ln1 = nn.LayerNorm(width, elementwise_affine=False)
        self.ln2 = nn.LayerNorm(width, elementwise_affine=False)
        self.ada = nn.Linear(width, 4 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.cross = CrossAttention(width, heads, dropout) if cross else None
        self.ln_cross = nn.LayerNorm(width) if cross else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        a1, b1, a2, b2 = self.ada(cond)[:, None].chunk(4, dim=-1)  # each (B, 1, W)
        x = x + self.attention((1 + a1) * self.ln1(x) + b1)  # AdaLN before attention
        if self.cross is not None:  # then every position reads the caption
            x = x + self.cross(self.ln_cross(x), text)
        return x + self.mlp((1 + a2) * self.ln2(x) + b2)  # and AdaLN before the MLP


class DiffusionTransformer(nn.Module):
    """p_theta(x_0 | x_t, t, c): x_t (B, N, D) in [0, K], t (B,), c (B,) classes or (B, L) caption
    token ids -> logits (B, N, D, K)."""

    def __init__(self, K: int, H: int, D: int, cfg: Config, num_classes: int, text=None):
        super().__init__()
        self.K, self.H, self.D, W = K, H, D, cfg.width
        self.embed = nn.Embedding(D * (K + 1), W)  # one table per depth: row d*(K+1) + state
        self.register_buffer("offsets", torch.arange(D) * (K + 1), persistent=False)
        self.pos_row, self.pos_col = nn.Parameter(torch.zeros(H, W)), nn.Parameter(torch.zeros(H, W))
        self.time = nn.Embedding(cfg.steps_T + 1, W)
        self.label = nn.Embedding(num_classes + 1, W)  # one per class + "no class" (guidance)
        self.null = num_classes
        self.text = text  # --condition text: the text encoder, token ids (B, L) -> (B, L, text.width)
        self.text_in = None if text is None else nn.Linear(text.width, W)
        cross = text is not None
        self.blocks = nn.ModuleList(AdaLNBlock(W, cfg.heads, cfg.dropout, cross) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(W, elementwise_affine=False)
        self.ada = nn.Linear(W, 2 * W)
        self.head = nn.Linear(W, D * K)  # x0-parameterization: K logits per code, no [MASK]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        pos = rearrange(self.pos_row[:, None] + self.pos_col[None], "h w c -> (h w) c")  # 2D
        h = self.embed(x_t + self.offsets).sum(2) + pos  # (B, N, W): sum over depth
        text = self.text_in(self.text(c)) if c.dim() == 2 else None  # (B, L, W): the caption
        cond = F.silu(self.time(t) + self.label(c if text is None else c.new_zeros(len(c))))  # (B, W)
        for block in self.blocks:
            h = block(h, cond, text)
        a, b = self.ada(cond)[:, None].chunk(2, dim=-1)
        return rearrange(self.head((1 + a) * self.ln(h) + b), "b n (d k) -> b n d k", d=self.D)


# --- the forward process q, its posterior, and the loss ---


@dataclass
class Schedule:
    """Cumulative probabilities of the forward chain at t = 0..T (float64, t = 0 is x_0 itself).

    A code survives to step t with prob. alphabar_t, is [MASK] with prob. gammabar_t and was
    redrawn uniformly over the K codes with prob. replaced_t = K * betabar_t = 1 - alphabar_t -
    gammabar_t (so it lands on each code, its own included, with prob. betabar_t).
    """

    alphabar: torch.Tensor  # (T+1,)
    gammabar: torch.Tensor  # (T+1,)
    K: int

    @property
    def T(self) -> int:
        return len(self.alphabar) - 1

    @property
    def betabar(self) -> torch.Tensor:
        return (1 - self.alphabar - self.gammabar) / self.K


def noise_schedule(T: int, K: int, gamma_end: float, beta_end: float) -> Schedule:
    """gammabar_t rises linearly from 0 to gamma_end and K*betabar_t from 0 to beta_end (VQD
    settings: 0.9 and 0.1, so that alphabar_T = 0 and nothing of x_0 is left at t = T).

    beta_end is the TOTAL replace probability K*betabar_T (a betabar_T of 0.1 per code would not
    be a distribution for K > 10). The official schedule ends at gamma 0.99999 with K*betabar =
    1e-6: in practice mask-only (a known pitfall of the official code); --gamma-end 1 is that
    process exactly.
    """
    frac = torch.arange(T + 1, dtype=torch.float64) / T
    gammabar = gamma_end * frac
    return Schedule(1 - gammabar - beta_end * frac, gammabar, K)


def transition(sched: Schedule, s, t):
    """The coefficients of Qbar_{t|s} = Q_t ... Q_{s+1}, the jump from step s to step t > s:
    a code stays with prob. alpha (plus its share beta of the uniform redraw), becomes any given
    code with prob. beta, becomes [MASK] with prob. gamma; [MASK] stays [MASK] (absorbing).

    s, t: ints or long tensors -> alpha, beta, gamma of their broadcast shape (float64, on CPU).
    alpha = alphabar_t / alphabar_s, 1 - gamma = (1 - gammabar_t) / (1 - gammabar_s) (the
    products of the one-step factors), K*beta = 1 - alpha - gamma. s = t - 1 gives the one-step
    Q_t of VQD, s = 0 the closed form of Qbar_t.
    """
    s, t = (v.cpu() if torch.is_tensor(v) else v for v in (s, t))  # the schedule lives on the CPU
    a_s, a_t = sched.alphabar[s], sched.alphabar[t]
    keep = (1 - sched.gammabar[t]) / (1 - sched.gammabar[s])  # no [MASK] between s and t
    alpha = torch.where(a_s > 0, a_t / a_s.clamp_min(1e-300), torch.zeros_like(a_t))
    return alpha, ((keep - alpha) / sched.K).clamp_min(0), 1 - keep


def _log(p: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """log p clamped at LOG_EPS; exact=True clamps only at LOG_ZERO, so that a probability of
    exactly 0 stays 0 (e^-10000) where the posterior divides by it."""
    return p.clamp_min(0).log().clamp_min(LOG_ZERO) if exact else p.clamp_min(1e-300).log().clamp_min(LOG_EPS)


def log_q_xt_given_x0(log_x0: torch.Tensor, sched: Schedule, t, exact: bool = False):
    """VQD closed form: q(x_t | x_0) = alphabar_t v(x_0) + (gammabar_t - betabar_t) v(MASK) + betabar_t,
    in log space and O(K) instead of the product of t matrices.

    log_x0: (..., K) log-probabilities of x_0 over the K codes (a log one-hot for a known x_0;
    any non-negative weights work: the map is linear); t: int or long (...) -> (..., K+1).
    exact=True: impossible states get LOG_ZERO (exactly 0 after exp) instead of LOG_EPS.
    """
    alpha, beta, gamma = (_log(c, exact).to(log_x0) for c in transition(sched, 0, t))
    if torch.is_tensor(t) and t.dim():
        alpha, beta, gamma = alpha[..., None], beta[..., None], gamma[..., None]
    total = torch.logsumexp(log_x0, -1, keepdim=True)  # log sum_k x0_k (0 for a distribution)
    codes = torch.logaddexp(log_x0 + alpha, beta + total)  # alphabar x0_k + betabar
    out = torch.cat([codes, gamma + total], -1)  # [MASK]: gammabar
    return out if exact else out.clamp_min(LOG_EPS)


def log_q_xt_given_xs(x_t: torch.Tensor, sched: Schedule, s, t, dtype=torch.float32, exact=False):
    """q(x_t | x_s = j) for every state j, i.e. row x_t of Qbar_{t|s}: x_t (...) long -> (..., K+1).

    A code x_t = m comes from j = m (kept, or redrawn as itself: alpha + beta) or from any other code
    (redrawn as m: beta), never from [MASK]; x_t = [MASK] comes from any code (masked: gamma) or
    from [MASK] (absorbing: 1). s, t: ints or long (...). exact=True: LOG_ZERO where x_t cannot
    follow from j (e.g. every code but m under mask-only noise)."""
    alpha, beta, gamma = (c.to(x_t.device, dtype) for c in transition(sched, s, t))
    if torch.is_tensor(t) and t.dim():
        alpha, beta, gamma = alpha[..., None], beta[..., None], gamma[..., None]
    is_mask = (x_t == sched.K)[..., None]  # (..., 1)
    row = torch.where(is_mask, gamma, beta).expand(*x_t.shape, sched.K)  # from another code
    own = torch.where(is_mask, gamma, alpha + beta).expand(*x_t.shape, 1)  # from j = x_t itself
    row = row.scatter(-1, x_t.clamp_max(sched.K - 1)[..., None], own)  # ([MASK]: any column, the same)
    return _log(torch.cat([row, is_mask.to(dtype)], -1), exact)


def log_q_posterior(log_x0: torch.Tensor, x_t: torch.Tensor, sched: Schedule, t, s=None):
    """VQD posterior q(x_s | x_t, x_0) = q(x_t | x_s) q(x_s | x_0) / q(x_t | x_0), s = t - 1 by
    default, or any s < t for fast sampling (stride dt = t - s, exact for the jump Qbar_{t|s}).

    log_x0: (..., K). For a log one-hot x_0 this is the true posterior; for the network's
    log p_theta(x_0 | x_t) it is the x0-parameterization (VQD), summed over x_0 by one map:
        p_theta(x_s | x_t) = sum_{x0} q(x_s | x_t, x0) p_theta(x0 | x_t)
                           ∝ q(x_t | x_s) * [Qbar_s (p_theta(x0 | x_t) / q(x_t | x0))](x_s)
    x_t: (...) long; t, s: ints or long (...) -> (..., K+1) log-probabilities of x_s, normalised.
    """
    s = t - 1 if s is None else s
    log_x0 = log_x0.clamp_min(LOG_EPS)  # every possible x0 keeps some weight
    # 1. the weight of each x_0 given x_t: p_theta(x_0 | x_t) / q(x_t | x_0). An x_0 from which x_t
    #    cannot follow (q = 0: under mask-only noise every x_0 but an unmasked x_t's own code) has
    #    no posterior and drops out (weight 0), so p_theta is renormalised over the others.
    log_q_t0 = log_q_xt_given_xs(x_t, sched, 0, t, log_x0.dtype, exact=True)[..., : sched.K]  # (..., K)
    weight = torch.where(log_q_t0 > LOG_ZERO, log_x0 - log_q_t0, LOG_ZERO)
    # 2. through the forward chain to step s: sum_x0 q(x_s | x_0) weight(x_0), VQD closed form
    log_xs = log_q_xt_given_x0(weight, sched, s, exact=True)  # (..., K+1) over x_s
    # 3. times the likelihood q(x_t | x_s) of what was observed
    log_post = log_xs + log_q_xt_given_xs(x_t, sched, s, t, log_x0.dtype, exact=True)
    # 4. normalised over x_s (an x_t that no x_0 leads to: uniform, not NaN)
    log_post = log_post.clamp_min(100 * LOG_EPS)
    return (log_post - torch.logsumexp(log_post, -1, keepdim=True)).clamp_min(LOG_EPS)


def log_prior(sched: Schedule) -> torch.Tensor:
    """p(x_T) = [betabar_T, ..., betabar_T, gammabar_T]: (K+1,) log-probabilities."""
    K = sched.K
    return _log(torch.cat([sched.betabar[-1].expand(K), sched.gammabar[-1:]]).float())


def stratified_timesteps(B: int, T: int, device=None) -> torch.Tensor:
    """VDM stratified t for a batch (B,) in 1..T: one uniform u shifted by i/B for image i, so each
    t is uniform (the loss stays an unbiased estimate) but the batch covers 1..T evenly, not by
    chance: less variance in the loss (the low-discrepancy timesteps of VDM, arXiv:2107.00630,
    that MDLM trains with; measured, it changes little here: docs/lessons.md)."""
    u = (torch.rand(1) + torch.arange(B) / B) % 1  # (B,) in [0, 1), evenly spaced
    return (u * T).long().add(1).to(device)


def q_sample(x0: torch.Tensor, sched: Schedule, t: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) by the closed form's three cases, without K+1 probabilities per code.
    x0: (B, ...) long in [0, K); t: (B,) long -> x_t (B, ...) long in [0, K]."""
    shape = (-1,) + (1,) * (x0.dim() - 1)
    alphabar = sched.alphabar[t.cpu()].to(x0.device, torch.float32).view(shape)
    gammabar = sched.gammabar[t.cpu()].to(x0.device, torch.float32).view(shape)
    u = torch.rand(x0.shape, device=x0.device)
    redrawn = torch.randint_like(x0, sched.K)  # uniform over the K codes, x_0's own included
    masked = torch.full_like(x0, sched.K)
    return torch.where(u < alphabar, x0, torch.where(u < alphabar + gammabar, masked, redrawn))


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, from log-probabilities. (...) per variable."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def losses(logits: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, sched: Schedule, t):
    """The per-code terms of VQD's objective at step t (nats per code), each (B, N, D):

    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) for t >= 2,
    L_0     = -log p_theta(x_0 | x_1)                              for t = 1,
    L_x0    = -log p_theta(x_0 | x_t)  (the auxiliary loss, weighted by lambda in training).

    logits: (B, N, D, K) of p_theta(x_0 | x_t); x0, x_t: (B, N, D); t: (B,) long in [1, T].
    """
    log_x0_pred = logits.float().log_softmax(-1).clamp_min(LOG_EPS)
    t_ = t.view(-1, 1, 1)
    log_pred = log_q_posterior(log_x0_pred, x_t, sched, t_)
    log_true = log_q_posterior(_log(F.one_hot(x0, sched.K).float()), x_t, sched, t_)
    l_prev = kl(log_true, log_pred)
    l_0 = -log_pred.gather(-1, x0[..., None]).squeeze(-1)  # at t = 1, x_{t-1} is x_0
    l_x0 = -log_x0_pred.gather(-1, x0[..., None]).squeeze(-1)
    return torch.where(t_ == 1, l_0, l_prev), l_x0


def mask_only_weight(sched: Schedule, t) -> torch.Tensor:
    """VQD mask-only weight, where the bits go under mask-only noise (--gamma-end 1; MDLM,
    arXiv:2406.07524):  L_{t-1} = w_t * [x_t = MASK] * -log p_theta(x_0 | x_t),
                        w_t = (gammabar_t - gammabar_{t-1}) / gammabar_t.
    A [MASK] at t was masked exactly at step t with prob. w_t (then x_{t-1} = x_0), else earlier
    (x_{t-1} = [MASK]); p_theta puts its x_0 guess where q puts x_0 and the same 1 - w_t on [MASK],
    so the [MASK] branches cancel in the KL; an unmasked x_t is x_0 itself, and its KL is 0. The
    linear schedule has w_t = 1/t: the bound is a 1/t-weighted masked cross-entropy, while L_x0
    weighs every step alike (MaskGIT's loss). t: int or long (...) -> w_t (...) float64."""
    t = torch.as_tensor(t).cpu()
    return (sched.gammabar[t] - sched.gammabar[t - 1]) / sched.gammabar[t]


def loss_T(x0: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || p(x_T)) per code (B, N, D): no parameters, 0 when alphabar_T = 0."""
    log_qT = log_q_xt_given_x0(_log(F.one_hot(x0, sched.K).float()), sched, sched.T)
    return kl(log_qT, log_prior(sched).to(x0.device))


# --- sampling: one reverse step, and the chain ---


def p_x0(model, x_t: torch.Tensor, t: int, c_in: torch.Tensor, guidance: float = 1.0) -> torch.Tensor:
    """log p_theta(x_0 | x_t): x_t (B, N, D) -> (B, N, D, K). With guidance s != 1, c_in holds the
    B conditions and then B "no class" (ar.unconditional) and this is classifier-free guidance on
    log p_theta(x_0 | x_t) (improved VQ-Diffusion, arXiv:2205.16007): log p_u + s (log p_c - log p_u),
    renormalised; each call is then on 2B."""
    pair = len(c_in) // len(x_t)
    t_in = torch.full((len(c_in),), t, device=x_t.device)
    log_x0 = model(x_t.repeat(pair, 1, 1), t_in, c_in).float().log_softmax(-1)
    return ar.guide(log_x0, guidance).log_softmax(-1)


def p_sample(log_x0: torch.Tensor, x_t: torch.Tensor, sched: Schedule, t: int, s: int, truncation=1.0):
    """One reverse step, x_s ~ p_theta(x_s | x_t) = sum_x0 q(x_s | x_t, x_0) p_theta(x_0 | x_t) (VQD
    posterior), with p_theta(x_0 | x_t) truncated to its smallest top set of mass r (VQD's
    truncation). log_x0 (B, N, D, K), x_t (B, N, D) -> x_s (B, N, D); s < t (fast sampling: s = t - dt)."""
    log_x0 = ar.filter_logits(log_x0, top_p=truncation).log_softmax(-1)
    log_p = log_q_posterior(log_x0, x_t, sched, t, s)  # (B, N, D, K+1)
    if s == 0:
        log_p = log_p[..., : sched.K]  # x_0 is a code; [MASK] has probability exp(-70) here anyway
    return ar.sample_logits(log_p.reshape(-1, log_p.shape[-1])).view_as(x_t)


def keep(known: torch.Tensor):
    """Inpainting: hold(x, s) that keeps the given codes of known (B, N, D) at every step (-1 where
    a code is to be generated)."""
    return lambda x, s: torch.where(known >= 0, known, x)


@torch.no_grad()
def sample(model, sched: Schedule, c, stride=1, truncation=1.0, guidance=1.0, hold=None) -> torch.Tensor:
    """Run the reverse chain from x_T ~ p(x_T) at t = T, T - dt, ..., to x_0 (B, N, D): ceil(T / dt)
    network calls. c: (B,) classes or (B, L) caption token ids. hold(x, s) -> x: what the chain
    holds fixed after each step s (inpainting: keep(known))."""
    B, N, D, K = len(c), model.H * model.H, model.D, sched.K
    hold = hold or (lambda x, s: x)
    x = hold(ar.sample_logits(log_prior(sched).to(c.device).expand(B * N * D, K + 1)).view(B, N, D), sched.T)
    c_in = torch.cat([c, ar.unconditional(model, c)]) if guidance != 1.0 else c
    for t in common.progress(range(sched.T, 0, -stride), desc="sampling", leave=False):
        s = max(t - stride, 0)
        x = hold(p_sample(p_x0(model, x, t, c_in, guidance), x, sched, t, s, truncation), s)
    return x


# --- training ---


def build(cfg: Config, s) -> tuple[DiffusionTransformer, Schedule]:
    q = s.tok.quantizer
    model = DiffusionTransformer(len(q.codebook), s.H, q.depth, cfg, s.num_classes, s.text)
    return model.to(s.device), noise_schedule(cfg.steps_T, len(q.codebook), cfg.gamma_end, 1 - cfg.gamma_end)


def train(cfg: Config) -> nn.Module:
    """Fit the diffusion prior on the frozen tokenizer's codes; write ckpt.pt, metrics.jsonl,
    samples.png (one row per class) and inpaint.png."""
    s = stage2.setup(cfg, stage1.tokenizer)  # run folder, frozen tokenizer (found or trained), data
    model, sched = build(cfg, s)
    if cfg.sample_only:  # a trained prior draws samples.png / prompts.png again; no training
        finish(stage2.load_prior(s, model), sched, s, cfg)
        return model
    opt = stage2.adamw(model, cfg, betas=(0.9, 0.96), weight_decay=4.5e-2)  # the official values
    start = s.run.restore(model=model, opt=opt)  # 0 unless --resume
    data = common.batches(s.train_set, cfg, start * cfg.grad_accum, s.rank, s.world)
    ddp = common.compiled(common.wrap(model, s.device), cfg)  # DDP under torchrun; --compile
    for step in s.run.steps(start):  # a progress bar; Ctrl-C / SIGTERM end it after a checkpoint
        stage2.set_lr(opt, cfg, step)  # warm-up, then cosine
        opt.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):  # gradient accumulation: --grad-accum micro-batches
            x, y, text = next(data)  # images, labels, captions
            c = s.condition_of(y, text, cfg.label_dropout)  # class or caption; "none" at times (CFG)
            x0, _ = ar.encode(s.tok, x.to(s.device))  # the codes, (B, N, D)
            t = stratified_timesteps(len(x0), sched.T, s.device)  # each uniform in 1..T, evenly spread
            x_t = q_sample(x0, sched, t)  # corrupt every code at once (VQD closed form)
            with common.accumulating(ddp, micro, cfg.grad_accum):  # DDP syncs on the last one
                with common.autocast(s.device, cfg.precision):  # bf16 on CUDA (see --precision)
                    logits = ddp(x_t, t, c)  # p_theta(x_0 | x_t)
                l_vlb, l_x0 = losses(logits, x0, x_t, sched, t)
                # L_vlb's unbiased estimate is T * L_{t-1}; the constant T is left out (Adam ignores it)
                loss = l_vlb.mean() + cfg.aux_weight * l_x0.mean()  # VQD aux loss, lambda
                (loss / cfg.grad_accum).backward()
            s.run.check_finite(loss, step + 1)  # stop at a NaN loss, before it is saved
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % cfg.log_every == 0:
            stage2.log_step(s.run, step + 1, loss=loss, **{"L_t-1": l_vlb.mean(), "L_x0": l_x0.mean()})
        if s.run.save_due(step + 1):  # after --ckpt-minutes, at the end, on a signal
            states = dict(model=model.state_dict(), opt=opt.state_dict())
            s.run.save(step + 1, **states, tokenizer=str(s.tokenizer_path))  # the prior names its tokenizer
    model.eval()
    if common.is_main():  # under torchrun, rank 0 evaluates and samples
        finish(model, sched, s, cfg)
    return model


def finish(model, sched: Schedule, s, cfg: Config) -> None:
    """The validation bound, samples.png (one row per class, judged for sample quality), prompts.png
    for --prompt, the final record of metrics.jsonl, and inpaint.png. --sample-only: the pictures
    only, with this command's sampling flags."""
    draw = lambda c: sample(model, sched, c, cfg.stride, cfg.truncation, cfg.guidance)
    if cfg.sample_only:
        sample_quality.pictures(s, cfg, draw)
        return
    val = evaluate(model, sched, s, cfg)
    values = " | ".join(f"{k} {v:.4f}" for k, v in val.items())
    common.echo(f"validation (nats per code): {values} | bound {val['vlb'] / math.log(2):.3f} bits per code")
    quality = sample_quality.pictures(s, cfg, draw)
    s.run.log({"step": cfg.steps, "final": True, **{f"val_{k}": v for k, v in val.items()}, **quality})
    inpaint(model, sched, s, cfg)
    common.echo(f"wrote {s.run.dir / 'samples.png'} and inpaint.png")


@torch.no_grad()
def evaluate(model, sched: Schedule, s, cfg: Config) -> dict:
    """The validation bound in nats per code, L_0 + sum_{t>=2} L_{t-1} + L_T, estimated from
    EVAL_TIMESTEPS values of t spread evenly over 1..T (each standing for T / n steps), on the
    first --eval-images validation images; also L_0, L_T and L_x0 (mean over those t)."""
    x_all, y_all, captions = common.first_images(s.val_set, cfg.eval_images, captions=True)
    times = torch.linspace(1, sched.T, EVAL_TIMESTEPS).round().long().unique()
    total = {"L_0": 0.0, "L_t-1": 0.0, "L_T": 0.0, "L_x0": 0.0}
    torch.manual_seed(cfg.seed)  # the same noise at every evaluation
    B = cfg.batch_size
    for i, (x, y) in enumerate(zip(x_all.split(B), y_all.split(B))):
        x0, _ = ar.encode(s.tok, x.to(s.device))
        c = s.condition_of(y, captions[i * B : (i + 1) * B])
        total["L_T"] += loss_T(x0, sched).mean().item() * len(x)
        for t_val in times.tolist():
            t = torch.full((len(x),), t_val, device=s.device)
            x_t = q_sample(x0, sched, t)
            l_vlb, l_x0 = losses(model(x_t, t, c), x0, x_t, sched, t)
            total["L_t-1"] += l_vlb.mean().item() * len(x) / len(times)
            total["L_x0"] += l_x0.mean().item() * len(x) / len(times)
            if t_val == 1:
                total["L_0"] += l_vlb.mean().item() * len(x)
    val = {k: v / len(x_all) for k, v in total.items()}
    val["vlb"] = sched.T * val["L_t-1"] + val["L_T"]  # stratified estimate of the whole sum
    return val


@torch.no_grad()
def inpaint(model, sched: Schedule, s, cfg: Config, hold=keep, name="inpaint.png", completions=2) -> None:
    """inpaint.png: 8 validation images, the same with the centre half of the code grid hidden,
    then `completions` samples that keep every code outside that square (hold(known): how)."""
    x, y, captions = common.first_images(s.val_set, 8, captions=True)
    x, c = x.to(s.device), s.condition_of(y, captions)
    codes, _ = ar.encode(s.tok, x)
    square = stage2.centre_square(s.H, s.device)  # (H, H) True on the hidden half of the code grid
    known = codes.masked_fill(square.flatten()[None, :, None], -1)  # -1: a code to generate
    hidden = x * (1 - F.interpolate(square[None, None].float(), size=x.shape[-2:]))  # shown as grey
    rows = [x, hidden]
    for _ in range(completions):
        filled = sample(model, sched, c, cfg.stride, cfg.truncation, cfg.guidance, hold(known))
        rows.append(stage2.decode(s.tok, filled, s.H))
    common.save_grid(rows, s.run.dir / name)


# --- config and command line ---


@dataclass
class Config(stage2.PriorConfig):
    RESUMABLE: ClassVar = stage2.PriorConfig.RESUMABLE | {"guidance", "stride", "truncation"}
    TOKENIZER: ClassVar = {"depth": 1, "codebook_size": 128}  # trained without --tokenizer: VQD's VQ model
    dataset: str = "shapes-plain"  # as lesson 01; by default shapes in flat palette colours
    out: str = "runs/05_vq_diffusion"  # run folder: ckpt.pt, metrics.jsonl, samples.png, inpaint.png
    tokenizer: str | None = None  # 02/03 checkpoint or a released tokenizer (default: as lesson 04)
    width: int = 128  # transformer width
    heads: int = 4  # attention heads
    layers: int = 4  # transformer blocks (full attention, AdaLN)
    dropout: float = 0.0  # dropout in the residual branches
    steps_T: int = 100  # T: diffusion steps
    gamma_end: float = (
        1.0  # gammabar_T: masked at t = T, the rest redrawn (1: mask only, 0: uniform, paper 0.9)
    )
    aux_weight: float = 0.01  # lambda on the auxiliary loss L_x0 = -log p_theta(x_0 | x_t) (official 5e-4)
    stride: int = 1  # dt: sampling jumps from t to t - dt (fast inference); 1 = all T steps
    truncation: float = 0.86  # r: sample x_0 only from its smallest top set of mass >= r (1 = off)
    label_dropout: float = 0.1  # training: the class is replaced by "no class" this often (CFG)
    guidance: float = 3.0  # sampling: classifier-free guidance scale s (1 = off, as for unconditional priors)
    samples_per_class: int = 16  # images per row of samples.png (all judged for sample quality)
    batch_size: int = 32  # images per step (per process under torchrun)
    steps: int = 2500  # optimizer steps
    lr: float = 2e-3  # peak AdamW lr: a 100-step warm-up ramp times a cosine decay (paper: 4.5e-4)

    def __post_init__(self):
        super().__post_init__()
        stage2.check_prior_flags(self)
        common.require(
            (0 <= self.gamma_end <= 1, f"--gamma-end must be in [0, 1], got {self.gamma_end}"),
            (
                min(self.layers, self.steps_T, self.stride) >= 1,
                "--layers, --steps-T and --stride must be >= 1",
            ),
            (0 < self.truncation <= 1, f"--truncation must be in (0, 1], got {self.truncation}"),
        )


if __name__ == "__main__":
    common.main(train, Config)
