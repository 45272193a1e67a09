"""Lesson 04: RQ-Transformer, autoregressive generation of residual codes.

Paper: D. Lee, C. Kim, S. Kim, M. Cho, W.-S. Han, "Autoregressive Image Generation using Residual
Quantization" (arXiv:2203.01941), Sec. 3.2. Equation labels: RQ Eq. 8-15. The authors released the
model but not its training code (their issue #11); this lesson trains it.

Idea. A frozen RQ tokenizer (lesson 02 or 03) turns an image into T = H*W positions of D codes each
(RQ Eq. 8, raster order). A flat GPT over the T*D codes costs O(T^2 D^2) attention. The
RQ-Transformer splits the work: a causal spatial transformer reads one summed embedding per
position and summarises the past in h_t (RQ Eq. 10-11); a small causal depth transformer then
predicts the D codes of position t one after another from h_t and the codes already chosen (RQ
Eq. 12-13). Training is cross-entropy on every code (RQ Eq. 14), optionally against soft labels
Q_tau(. | r) and on codes drawn from Q_tau instead of the argmin (RQ Eq. 15), which smooths the
targets where two codes are almost equally close. Sampling caches keys and values in both stacks,
so an image costs T spatial steps of one position and T*D tiny depth steps.

Text (--condition text, the paper's CC-3M model): the caption's L text tokens are a PREFIX of the
spatial sequence, [text_1..text_L, u_1, ..., u_T]; attention stays causal, so every position reads
the whole caption and no code leaks backwards; the sampler fills its cache with the prompt first.

Notation (T is the sequence length here, as in the RQ paper):
    symbol     code name       shape
    S          codes           (B, T, D)      long in [0, K): the tokenizer's codes in raster order
    c          labels          (B,)           class of each image (0 when unconditional)
               (text)          (B, L)         or the caption's token ids (common/text.py)
    u_t        u               (B, T, W)      spatial input, RQ Eq. 10 (W = --width)
    h_t        h               (B, T, W)      spatial transformer output, RQ Eq. 11
    v_td       v               (B, T, D, W)   depth input, RQ Eq. 12
    p_td       logits          (B, T, D, K)   next-code logits, RQ Eq. 13
    Q_tau      soft_codes      (N, D, K)      soft labels from squared distances, RQ Eq. 15

Run: python 04_rq_transformer.py               (CPU, built-in shapes-plain, about 10 minutes)
     python 04_rq_transformer.py --condition text   (its captions; about 13 minutes)
Beyond it: beyond/code_orders.py and beyond/sliding_window.py (Taming), beyond/flat_gpt.py (the baseline)
Next: 05_vq_diffusion.py
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

rq = common.lesson("02_rq")  # residual_quantize, which soft_codes runs with Q_tau

# --- codes: hard, soft (RQ Eq. 15) and stochastic ---


@torch.no_grad()
def soft_codes(z: torch.Tensor, codebook: torch.Tensor, depth: int, tau: float, stochastic: bool = False):
    """RQ Eq. 15 at every depth: Q_tau(k | r_{d-1}) = softmax_k(-||r_{d-1} - e(k)||^2 / tau).

    z: (N, d), codebook: (K, d) shared (or a list of D, one per depth) -> codes (N, D) long, probs
    (N, D, K). tau acts on SQUARED distances, so its meaning depends on the scale of the features
    (official value 0.5). With stochastic=False k_d is the argmin (RQ Eq. 4, the same codes as
    lesson 02); with True it is drawn from Q_tau, and the residual follows the drawn code.
    """
    probs = []

    def pick(r, codebook):  # r_{d-1}: (N, d) -> k_d (N,), and Q_tau(. | r_{d-1}) kept
        dist = codebook.pow(2).sum(1) - 2 * r @ codebook.t()  # (N, K): ||r - e(k)||^2 less ||r||^2
        q = F.softmax(-dist / tau, dim=-1)  # Q_tau(. | r_{d-1})                     RQ Eq. 15
        probs.append(q)
        return torch.multinomial(q, 1).squeeze(1) if stochastic else dist.argmin(1)

    codes, _ = rq.residual_quantize(z.float(), codebook, depth, pick)  # lesson 02's RQ Eq. 4
    return codes, torch.stack(probs, 1)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf all but the top_k largest logits, then all but the smallest set of codes whose
    probability mass reaches top_p. logits: (B, K) -> same."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:  # keep a code iff the mass of the codes before it (most likely first) is < top_p
        probs, order = logits.float().softmax(-1).sort(-1, descending=True)  # (B, K)
        before = F.pad(probs.cumsum(-1)[..., :-1], (1, 0))  # exclusive: no p - p rounding
        keep = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before < top_p)
        logits = logits.masked_fill(~keep, -math.inf)
    return logits


def sample_logits(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    """One code per row: logits / T -> top-k -> softmax -> top-p -> draw. (B, K) -> (B,) long.

    Draws by inverse CDF (searchsorted on the cumulative sum): several times faster than
    torch.multinomial over large K on a CPU, and the same distribution.
    """
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    cdf = probs.cumsum(-1)  # (B, K)
    u = torch.rand(len(cdf), 1, device=cdf.device) * cdf[:, -1:]  # in [0, total)
    # the first code whose cdf EXCEEDS u (right=True): at u = 0 a code of probability 0 in front
    # of the first allowed one has cdf 0 = u and must not be drawn
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_max(probs.shape[-1] - 1)


def guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans, arXiv:2207.12598): l_u + s (l_c - l_u), from a
    batch whose first half is conditioned on the classes and second half on "no class".
    (2B, ..., K) -> (B, ..., K); scale 1 needs no second half: (B, ..., K) is returned as it is."""
    if scale == 1.0:
        return logits
    l_c, l_u = logits.chunk(2)
    return l_u + scale * (l_c - l_u)


def unconditional(model, c: torch.Tensor) -> torch.Tensor:
    """What guidance contrasts c with: the "no class" label (B,), or for captions (B, L) the
    empty caption's tokens; the prior learns both from --label-dropout of its training steps."""
    if c.dim() == 2:
        return model.text.tokenize([""]).to(c.device).expand_as(c)
    return torch.full_like(c, model.null)


# --- transformers with a key/value cache ---


class KVCache:
    """Keys and values of one attention layer while sampling, in preallocated buffers written in
    place (growing them with torch.cat would copy the whole cache at every step)."""

    def __init__(self, B: int, heads: int, max_len: int, head_dim: int, device):
        self.k = torch.empty(B, heads, max_len, head_dim, device=device)
        self.v = torch.empty_like(self.k)
        self.len = 0

    def append(self, k: torch.Tensor, v: torch.Tensor):
        """Store the n new positions' keys and values k, v: (B, heads, n, head_dim) after the cached
        ones -> (keys, values) of every position so far: (B, heads, len, head_dim) each."""
        n = k.shape[2]
        self.k[:, :, self.len : self.len + n], self.v[:, :, self.len : self.len + n] = k, v
        self.len += n
        return self.k[:, :, : self.len], self.v[:, :, : self.len]


class Block(nn.Module):
    """Pre-LayerNorm GPT block: x + attn(LN(x)), then x + MLP(LN(x)); causal attention."""

    causal = True  # lesson 05 subclasses this block with full (bidirectional) attention

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )
        self.drop = nn.Dropout(dropout)

    def attention(self, x: torch.Tensor, cache: KVCache | None = None, mask=None) -> torch.Tensor:
        """Multi-head self-attention of the normalised x (B, L, W) -> (B, L, W). mask (L, L) bool,
        True where a position may look, replaces the causal mask (beyond/var.py's is block-causal)."""
        q, k, v = rearrange(self.qkv(x), "b l (three h c) -> three b h l c", three=3, h=self.heads)
        causal = self.causal and mask is None
        if cache is None:  # training: the whole sequence at once
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        else:  # sampling: the new positions (one here, a whole scale in VAR) see the cached ones and each other
            a = F.scaled_dot_product_attention(q, *cache.append(k, v))
        return self.drop(self.proj(rearrange(a, "b h l c -> b l (h c)")))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, mask=None) -> torch.Tensor:
        x = x + self.attention(self.ln1(x), cache, mask)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """A causal stack of Blocks with a final LayerNorm. x: (B, L, W) -> (B, L, W)."""

    def __init__(self, width, layers, heads, dropout):
        super().__init__()
        self.heads = heads
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(width)

    def caches(self, B: int, max_len: int, device) -> list[KVCache]:
        hd = self.blocks[0].qkv.in_features // self.heads
        return [KVCache(B, self.heads, max_len, hd, device) for _ in self.blocks]

    def forward(self, x, caches: list[KVCache] | None = None, mask=None):
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i], mask)
        return self.ln(x)


# --- the RQ-Transformer ---


class RQTransformer(nn.Module):
    """p(S) = prod_t prod_d p(S_td | S_<t, S_t,<d) (RQ Eq. 9). codes (B, T, D), c (B,) -> logits (B, T, D, K).

    Code embeddings are the tokenizer's frozen code vectors e(k) (a buffer) through learned linear
    maps, one for each stack. One classifier head is shared by every depth.
    """

    def __init__(self, codebook: torch.Tensor, T: int, D: int, cfg: Config, num_classes: int, text=None):
        super().__init__()
        K, d_code = codebook.shape
        self.T, self.D, self.K = T, D, K
        self.register_buffer("codebook", codebook.clone())  # frozen e(k): (K, d_code)
        self.text = text  # --condition text: the text encoder, token ids (B, L) -> (B, L, text.width)
        if text is not None:  # its features become L prefix positions of the spatial transformer
            self.text_in = nn.Linear(text.width, cfg.width)
            self.pos_text = nn.Parameter(torch.zeros(text.length, cfg.width))
        self.embed_spatial = nn.Linear(d_code, cfg.width)  # e(k) -> the spatial stack's width
        self.embed_depth = nn.Linear(d_code, cfg.width)  # and the depth stack's
        self.start = nn.Embedding(num_classes + 1, cfg.width)  # u_1's start, one per class + none
        self.null = num_classes  # "no class": trained with --label-dropout, for guidance
        self.pos_t = nn.Parameter(torch.zeros(T, cfg.width))  # PE_T
        self.pos_d = nn.Parameter(torch.zeros(D, cfg.width))  # PE_D
        self.spatial = Transformer(cfg.width, cfg.spatial_layers, cfg.heads, cfg.dropout)
        self.depth = Transformer(cfg.width, cfg.depth_layers, cfg.heads, cfg.dropout)
        self.head = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, K))  # shared over d

    def prefix(self, c: torch.Tensor) -> torch.Tensor | None:
        """The caption's positions (B, L, W) before u_1, or None when c holds class labels (B,)."""
        return self.text_in(self.text(c)) + self.pos_text if c.dim() == 2 else None

    def forward(self, codes: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        B, T, D = codes.shape
        e = self.codebook[codes]  # (B, T, D, d_code)
        prefix, label = self.prefix(c), c if c.dim() == 1 else c.new_zeros(B)  # text: one start token
        # RQ Eq. 10: u_1 = PE_T(1) + start(c), u_t = PE_T(t) + sum_d e(S_{t-1,d}) for t > 1
        u = torch.cat([self.start(label)[:, None], self.embed_spatial(e[:, :-1].sum(2))], 1) + self.pos_t
        if prefix is None:
            h = self.spatial(u)  # RQ Eq. 11: h_t = SpatialTransformer(u_1..u_t)
        else:  # the caption first; causal attention: u_t reads the whole caption and u_1..u_t
            h = self.spatial(torch.cat([prefix, u], 1))[:, prefix.shape[1] :]  # (B, T, W)
        # RQ Eq. 12: v_t1 = PE_D(1) + h_t, v_td = PE_D(d) + sum_{d' < d} e(S_td')
        v = (
            torch.cat([h[:, :, None], self.embed_depth(e[:, :, :-1]).cumsum(2)], 2) + self.pos_d
        )  # (B, T, D, W)
        out = self.depth(rearrange(v, "b t d w -> (b t) d w"))  # RQ Eq. 13, causal over depth
        return rearrange(self.head(out), "(b t) d k -> b t d k", b=B)

    @torch.no_grad()
    def sample(self, c: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, guidance=1.0):
        """Raster order with both caches: T spatial steps, each followed by D depth steps. With
        guidance s != 1 a second half of the batch runs without the class and draws from guide().
        c: (B,) -> codes (B, T, D), logits (B, T, D, K) (the ones the codes were drawn from)."""
        B, dev, pair = len(c), c.device, 1 + (guidance != 1.0)
        c = torch.cat([c, unconditional(self, c)]) if pair == 2 else c  # (pair * B, ...)
        codes = torch.zeros(B, self.T, self.D, dtype=torch.long, device=dev)
        logits = torch.zeros(B, self.T, self.D, self.K, device=dev)
        prefix = self.prefix(c)  # (pair * B, L, W) for a caption, else None
        L = 0 if prefix is None else prefix.shape[1]
        spatial_cache = self.spatial.caches(len(c), L + self.T, dev)
        for i in range(L):  # the prompt fills the cache first, one position at a time
            self.spatial(prefix[:, i : i + 1], spatial_cache)
        label = c if prefix is None else c.new_zeros(len(c))
        u = (self.start(label) + self.pos_t[0])[:, None]  # (pair * B, 1, W)
        for t in range(self.T):
            h = self.spatial(u, spatial_cache)  # (pair * B, 1, W)
            depth_cache, v, acc = self.depth.caches(len(c), self.D, dev), h + self.pos_d[0], 0
            for d in range(self.D):
                logits[:, t, d] = guide(self.head(self.depth(v, depth_cache))[:, 0], guidance)
                codes[:, t, d] = sample_logits(logits[:, t, d], temperature, top_k, top_p)
                if d + 1 < self.D:  # both halves go on from the code drawn
                    acc = acc + self.embed_depth(self.codebook[codes[:, t, d].repeat(pair)])
                    v = (acc + self.pos_d[d + 1])[:, None]
            if t + 1 < self.T:
                e_sum = self.codebook[codes[:, t]].sum(1).repeat(pair, 1)  # sum_d e(S_td)
                u = (self.embed_spatial(e_sum) + self.pos_t[t + 1])[:, None]
        return codes, logits


def nll(logits: torch.Tensor, codes: torch.Tensor, soft: torch.Tensor | None = None) -> torch.Tensor:
    """RQ Eq. 14: mean over (b, t, d) of -log p(S_td | ...) in nats; against soft labels
    (N = B*T, D, K) the cross-entropy -sum_k Q_tau(k) log p(k). logits (B, T, D, K), codes (B, T, D)."""
    logp = logits.float().log_softmax(-1)
    if soft is None:
        return -logp.gather(-1, codes[..., None]).mean()
    return -(soft.view_as(logp) * logp).sum(-1).mean()


# --- tokenizer, codes and images ---


@torch.no_grad()
def encode(tok, x: torch.Tensor, tau: float = 0.5, stochastic: bool = False):
    """Images (B, 3, S, S) -> codes (B, T, D) in raster order (RQ Eq. 8), Q_tau (B*T, D, K).
    Always in float32 (no bf16 autocast, distances without TF32): the codes are the data, and
    training and validation must see the same codes for the same image."""
    with common.exact_float32(x.device.type):
        z = rearrange(tok.encoder(x).float(), "b d h w -> (b h w) d")  # raster order: row by row
        books = getattr(tok.quantizer, "codebooks", tok.quantizer.codebook)  # one per depth: beyond/fsq.py
        codes, probs = soft_codes(z, books, tok.quantizer.depth, tau, stochastic)
    return codes.view(len(x), -1, tok.quantizer.depth), probs


# --- training ---


def build(cfg: Config, s: stage2.Stage2, Model=None) -> nn.Module:
    """The prior (RQTransformer, or another class with its interface: beyond/) on the tokenizer's codes."""
    q = s.tok.quantizer
    return (Model or RQTransformer)(q.codebook, s.H * s.H, q.depth, cfg, s.num_classes, s.text).to(s.device)


def train(cfg: Config, Model=None) -> nn.Module:
    """Fit the prior on the frozen tokenizer's codes; write ckpt.pt, metrics.jsonl and samples.png."""
    s = stage2.setup(cfg, stage1.tokenizer)  # run folder, frozen tokenizer (found or trained), data
    model = build(cfg, s, Model)
    if cfg.sample_only:  # a trained prior draws samples.png / prompts.png again; no training
        finish(stage2.load_prior(s, model), s, cfg)
        return model
    opt = stage2.adamw(model, cfg, betas=(0.9, 0.95), weight_decay=1e-4)
    start = s.run.restore(model=model, opt=opt)  # 0 unless --resume
    data = common.batches(s.train_set, cfg, start * cfg.grad_accum, s.rank, s.world)
    ddp = common.compiled(common.wrap(model, s.device), cfg)  # DDP under torchrun; --compile
    for step in s.run.steps(start):  # a progress bar; Ctrl-C / SIGTERM end it after a checkpoint
        stage2.set_lr(opt, cfg, step)  # warm-up, then cosine
        opt.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):  # gradient accumulation: --grad-accum micro-batches
            x, y, text = next(data)  # images, labels, captions
            c = s.condition_of(y, text, cfg.label_dropout)  # class or caption; "none" at times (CFG)
            codes, probs = encode(s.tok, x.to(s.device), cfg.tau, cfg.stochastic_codes)
            with common.accumulating(ddp, micro, cfg.grad_accum):  # DDP syncs on the last one
                with common.autocast(s.device, cfg.precision):  # bf16 on CUDA (see --precision)
                    logits = ddp(codes, c)
                loss = nll(logits, codes, probs if cfg.soft_labels else None)  # RQ Eq. 14
                (loss / cfg.grad_accum).backward()
            s.run.check_finite(loss, step + 1)  # stop at a NaN loss, before it is saved
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % cfg.log_every == 0:  # bits per code against the argmin codes, as evaluate()
            hard = nll(logits.detach(), codes) if cfg.soft_labels else loss  # soft: loss is CE to Q_tau
            stage2.log_step(s.run, step + 1, loss=loss, bits_per_code=hard / math.log(2))
        if s.run.save_due(step + 1):  # after --ckpt-minutes, at the end, on a signal
            states = dict(model=model.state_dict(), opt=opt.state_dict())
            s.run.save(step + 1, **states, tokenizer=str(s.tokenizer_path))  # the prior names its tokenizer
    model.eval()
    if common.is_main():  # under torchrun, rank 0 evaluates and samples
        finish(model, s, cfg)
    return model


def finish(model, s: stage2.Stage2, cfg: Config) -> None:
    """The validation NLL, samples.png (one row per class, judged for sample quality), prompts.png
    for --prompt, and the final record of metrics.jsonl. --sample-only: the pictures only, with this
    command's sampling flags."""
    draw = lambda c: model.sample(c, cfg.temperature, cfg.top_k, cfg.top_p, cfg.guidance)[0]
    if cfg.sample_only:
        sample_quality.pictures(s, cfg, draw)
        return
    val_nll = evaluate(model, s, cfg)
    common.echo(f"validation NLL {val_nll:.4f} nats = {val_nll / math.log(2):.3f} bits per code")
    quality = sample_quality.pictures(s, cfg, draw)
    record = {"val_nll": val_nll, "val_bits_per_code": val_nll / math.log(2), **quality}
    s.run.log({"step": cfg.steps, "final": True, **record})


@torch.no_grad()
def evaluate(model, s: stage2.Stage2, cfg: Config) -> float:
    """Validation NLL in nats per code against the argmin codes (hard labels), whatever the training."""
    x_all, y_all, text = common.first_images(s.val_set, cfg.eval_images, captions=True)
    total, B = 0.0, cfg.batch_size
    for i, (x, y) in enumerate(zip(x_all.split(B), y_all.split(B))):
        codes, _ = encode(s.tok, x.to(s.device))  # argmin codes
        c = s.condition_of(y, text[i * B : (i + 1) * B])
        total += nll(model(codes, c), codes).item() * len(x)
    return total / len(x_all)


# --- config and command line ---


@dataclass
class Config(stage2.PriorConfig):
    RESUMABLE: ClassVar = stage2.PriorConfig.RESUMABLE | {"temperature", "top_k", "top_p", "guidance"}
    TOKENIZER: ClassVar = {"depth": 2}  # the lesson-02 RQ-VAE trained when there is no --tokenizer
    dataset: str = "shapes-plain"  # as lesson 01; by default shapes in flat palette colours
    out: str = "runs/04_rq_transformer"  # run folder: ckpt.pt, metrics.jsonl, samples.png
    tokenizer: str | None = None  # 02/03 checkpoint or a released one (default: runs/02_rq/ckpt.pt, or train)
    width: int = 128  # W: transformer width
    heads: int = 4  # attention heads
    spatial_layers: int = 3  # layers of the spatial transformer
    depth_layers: int = 1  # layers of the depth transformer
    dropout: float = 0.0  # dropout in the residual branches (paper: 0.1, at scale)
    soft_labels: bool = False  # train on Q_tau(. | r_{t,d-1}) instead of one-hot codes
    stochastic_codes: bool = False  # draw training codes from Q_tau instead of the argmin
    tau: float = 0.5  # temperature of Q_tau, on SQUARED distances (official value 0.5)
    temperature: float = 1.0  # sampling temperature
    top_k: int = 0  # sample among the k most likely codes (0 = all)
    top_p: float = 1.0  # then among the smallest set of mass >= p (1 = all)
    label_dropout: float = 0.1  # training: the class is replaced by "no class" this often (CFG)
    guidance: float = 2.0  # sampling: classifier-free guidance scale s (1 = off, as for unconditional priors)
    samples_per_class: int = 16  # images per row of samples.png (all judged for sample quality)
    batch_size: int = 32  # images per step (per process under torchrun)
    steps: int = 3000  # optimizer steps
    lr: float = 2e-3  # peak AdamW lr: a 100-step warm-up ramp times a cosine decay (paper: 5e-4)

    def __post_init__(self):
        super().__post_init__()
        stage2.check_prior_flags(self)
        common.require(
            (min(self.spatial_layers, self.depth_layers) >= 1, "--spatial-layers, --depth-layers >= 1"),
            (min(self.tau, self.temperature) > 0, "--tau and --temperature must be > 0"),
            (0 < self.top_p <= 1 and self.top_k >= 0, "--top-p must be in (0, 1] and --top-k >= 0"),
        )


if __name__ == "__main__":
    common.main(train, Config)
