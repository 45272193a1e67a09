"""Beyond lessons 02 and 04: VAR, next-scale prediction over a multi-scale residual tokenizer.

Paper: K. Tian, Y. Jiang, Z. Yuan, B. Peng, L. Wang, "Visual Autoregressive Modeling: Scalable
Image Generation via Next-Scale Prediction" (arXiv:2404.02905), Sec. 3 and Algorithms 1-2.

Idea. Lesson 02 quantizes a residual again and again at the SAME resolution. VAR quantizes it at
growing resolutions s_1 < ... < s_K (for a 16 x 16 latent: 1, 2, 3, 4, 5, 6, 8, 10, 13, 16), one
shared codebook for all: the residual, averaged down to s_k x s_k, gets its nearest codes r_k; their
code vectors, upsampled back and passed through a small convolution phi_k, are added to f^ and
subtracted from the residual (Algorithm 1). Scale 1 holds the coarsest summary in one code, the
last scale the detail. The transformer then predicts a whole scale at once, r_k from r_<k (VAR's
next-scale likelihood): its input for scale k is f^ after scales < k resized to s_k x s_k, and a
block-causal mask lets every token see its own scale and the coarser ones. Drawing an image takes
K network calls (lesson 04 takes T spatial and T*D depth steps), each with a key/value cache.

Notation (as lessons 02 and 04; new here):
    symbol   code name        shape
    s_k      scales[k]        int               side of scale k's code grid, s_K = h (the latent's)
    r_k      codes[k]         (B, s_k, s_k)     long in [0, K): the codes of scale k
    f, f^    f, f_hat         (B, d, h, w)      encoder output; the sum of the decoded scales so far
    phi_k    phis[k]          3x3 conv          blended with its input: (1 - b) z + b conv(z)
    L        L                sum_k s_k^2       tokens of an image; tokens in scale order, row by row

Run: python beyond/var.py                     (CPU, built-in shapes-plain; tokenizer included)
     python beyond/var.py tokenizer           (the multi-scale tokenizer alone, --scales to choose)
     python beyond/var.py vqgan --perceptual-weight 0   (the same in lesson 03's adversarial training)
Builds on: 02_rq.py (shared codebook, EMA, restarts, commitment), 03_vqgan.py (its adversarial
loop, for `vqgan`) and 04_rq_transformer.py (block, cache, sampling, guidance)
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lessons and `common`
import common
import sample_quality
from common import stage2
from common.checkpoints import load_checkpoint, load_state

vq = common.lesson("01_vq")  # nearest_code, VectorQuantizer (EMA + restarts), VQVAE, straight_through
rq = common.lesson("02_rq")  # rq_commitment_loss
vqgan = common.lesson("03_vqgan")  # VQGAN and train: the adversarial loop, for `vqgan`
ar = common.lesson("04_rq_transformer")  # Transformer (block + cache), sample_logits, guide

VAR_16 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # the paper's scales for a 16 x 16 latent (ImageNet 256)

# --- the multi-scale residual tokenizer (VAR Algorithm 1) ---


def resize(z: torch.Tensor, side: int, mode: str) -> torch.Tensor:
    """(B, d, h, w) -> (B, d, side, side): "area" averages down, "bicubic" goes up (as VAR)."""
    return z if z.shape[-1] == side else F.interpolate(z, size=(side, side), mode=mode)


class Phi(nn.Conv2d):
    """phi_k: z -> (1 - b) z + b conv3x3(z): a little spatial mixing after upsampling; b = 0 is none."""

    def __init__(self, d: int, blend: float):
        super().__init__(d, d, 3, padding=1)
        self.blend = blend

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (1 - self.blend) * z + self.blend * super().forward(z)


def multiscale_quantize(f: torch.Tensor, codebook: torch.Tensor, scales, phis):
    """VAR Algorithm 1: for k = 1..K, r_k = Q(area(f - f^, s_k); C) and f^ += phi_k(up(e(r_k), h)).

    f: (B, d, h, w), codebook: (K, d) -> codes [r_k (B, s_k, s_k)], partial sums f^ after each scale
    (K, B, d, h, w), and the residual vectors each scale quantized [(B * s_k^2, d)] (the EMA's data).
    The codes carry no gradient; phi_k receives one through f^.
    """
    f_hat, codes, partial, rests = torch.zeros_like(f), [], [], []
    for s, phi in zip(scales, phis):
        rest = rearrange(resize((f - f_hat).detach(), s, "area"), "b d h w -> b h w d")  # the residual at s_k
        r = vq.nearest_code(rest, codebook)  # r_k: (B, s_k, s_k)                 VAR Alg. 1, line 5
        f_hat = f_hat + embed_scale(r, codebook, phi, f.shape[-1])  # f^ += phi_k(up(e(r_k)))  lines 7-9
        codes.append(r), partial.append(f_hat), rests.append(rest.flatten(0, 2))
    return codes, torch.stack(partial), rests


def embed_scale(r: torch.Tensor, codebook: torch.Tensor, phi: nn.Module, h: int) -> torch.Tensor:
    """phi_k(up(e(r_k), h)): codes (B, s, s) -> what scale k adds to f^, (B, d, h, h)."""
    return phi(resize(rearrange(F.embedding(r, codebook), "b h w d -> b d h w"), h, "bicubic"))


class MultiScaleQuantizer(nn.Module):
    """z_e: (B, d, h, w) -> (z_q with straight-through gradient, codes (B, L), losses), as lesson
    02's ResidualQuantizer with scales in place of depths: one lesson-01 codebook (EMA + dead-code
    restarts) learns from the residuals of every scale."""

    shared = True  # one codebook for every scale (stage 2 asks)

    def __init__(self, K: int, d: int, scales, blend=0.5, beta=0.25, decay=0.99, dead_threshold=1.0):
        super().__init__()
        self.scales, self.beta = tuple(scales), beta
        self.book = vq.VectorQuantizer(K, d, beta, "ema", decay, dead_threshold)
        self.phis = nn.ModuleList(Phi(d, blend) for _ in self.scales)
        self.n_dead = 0

    @property
    def codebook(self) -> torch.Tensor:
        return self.book.codebook

    def forward(self, z_e: torch.Tensor):
        with common.exact_float32(z_e.device.type):  # distances and EMA in true float32
            f = z_e.float()
            codes, maps, rests = multiscale_quantize(f, self.codebook, self.scales, self.phis)
            z = rearrange(f, "b d h w -> (b h w) d")
            partial = rearrange(maps, "k b d h w -> (b h w) k d")  # (N, K, d): lesson 02's partial sums
            commit = rq.rq_commitment_loss(z, partial)  # ||f - sg[f^_k]||^2, mean over the scales k
            # ||sg[f] - f^_k||^2, as lesson 01's codebook loss: the EMA moves the codes, this trains phi
            phi_loss = vq.codebook_loss(z[:, None].expand_as(partial), partial)
            if self.training:  # the codebook: an EMA of the residuals of every scale, then restarts
                self.book.update(torch.cat(rests), torch.cat([r.flatten() for r in codes]))
                self.n_dead = self.book.n_dead
            z_q = vq.straight_through(f, maps[-1])  # ONE straight-through step on the final f^
        return z_q, flatten(codes), {"loss": self.beta * commit + phi_loss, "commit": commit.detach()}

    def decode_f(self, seq: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """codes (B, L) -> f^ after the first `upto` scales (all by default): (B, d, h, w)."""
        h, f_hat = self.scales[-1], 0
        for r, phi in list(zip(unflatten(seq, self.scales), self.phis))[:upto]:
            f_hat = f_hat + embed_scale(r, self.codebook, phi, h)
        return f_hat


def flatten(codes: list[torch.Tensor]) -> torch.Tensor:
    """[r_k (B, s_k, s_k)] -> (B, L): the token sequence, scale by scale, each row by row."""
    return torch.cat([r.flatten(1) for r in codes], 1)


def unflatten(seq: torch.Tensor, scales) -> list[torch.Tensor]:
    """(B, L) -> [r_k (B, s_k, s_k)], the inverse of flatten."""
    return [r.view(len(seq), s, s) for r, s in zip(seq.split([s * s for s in scales], 1), scales)]


def make_quantizer(cfg: TokenizerConfig | GanTokenizerConfig) -> MultiScaleQuantizer:
    return MultiScaleQuantizer(cfg.codebook_size, cfg.code_dim, cfg.scales, cfg.phi_blend, cfg.beta, cfg.decay,
                               cfg.dead_threshold)  # fmt: skip


class Tokenizer(vq.VQVAE):
    """Lesson 01's encoder and decoder around the multi-scale quantizer; decode_codes for stage 2."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__(cfg, quantizer=make_quantizer(cfg))

    @torch.no_grad()
    def decode_codes(self, seq: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """codes (B, L) -> images (B, 3, S, S), from the first `upto` scales (all by default)."""
        return self.decoder(self.quantizer.decode_f(seq, upto))


class GanTokenizer(vqgan.VQGAN):
    """Lesson 03's encoder and decoder around the multi-scale quantizer (`python beyond/var.py vqgan`)."""

    def __init__(self, cfg: GanTokenizerConfig):
        super().__init__(cfg)
        self.quantizer = make_quantizer(cfg)

    decode_codes = Tokenizer.decode_codes


@torch.no_grad()
def report(model: Tokenizer, val_set, run_dir, device, cfg: TokenizerConfig) -> dict:
    """Validation PSNR of f^ after each scale, code usage by scale (where collapse shows first),
    and coarse_to_fine.png (the image decoded after scale 1, 2, ..., all: lesson 02's Fig. 5 by scale)."""
    model.eval()
    x_all, _ = common.first_images(val_set, cfg.eval_images)
    n, K = len(cfg.scales), cfg.codebook_size
    psnr, counts = torch.zeros(n), torch.zeros(n, K)
    for x in x_all.split(cfg.batch_size):
        seq = model(x.to(device))[1]
        for k in range(n):
            psnr[k] += common.psnr(x.to(device), model.decode_codes(seq, k + 1)).sum().cpu() / len(x_all)
        counts += torch.stack(
            [torch.bincount(r.flatten().cpu(), minlength=K) for r in unflatten(seq, cfg.scales)]
        )
    rows = []
    common.echo("scale s_k | PSNR dB after it | codes used | perplexity")
    for s, p, c in zip(cfg.scales, psnr.tolist(), counts):
        stats = common.codebook_stats(c)
        rows.append(dict(scale=s, psnr=p, used=K - stats["unused"], perplexity=stats["perplexity"]))
        common.echo(f"{s:9d} | {p:16.2f} | {K - stats['unused']:4d}/{K} | {stats['perplexity']:10.1f}")
    x = x_all[:8].to(device)
    seq = model(x)[1]
    columns = torch.stack([x] + [model.decode_codes(seq, k + 1) for k in range(n)], 1)
    common.save_titled_grid(
        columns, ["original"] + [f"{s}x{s}" for s in cfg.scales], run_dir / "coarse_to_fine.png"
    )
    model.train()
    return {"by_scale": rows}


def train_tokenizer(cfg: TokenizerConfig) -> nn.Module:
    """Lesson 02's training with the multi-scale quantizer: L = L_recon + beta L_commit + L_phi,
    codebook by EMA; the log adds the codes used at each scale, the end the report by scale."""
    device, rank, world, run, train_set, val_set = common.start(cfg)  # torchrun ranks, seed, run folder, data
    model = Tokenizer(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start = run.restore(model=model, opt=opt)  # 0 unless --resume
    data = common.batches(train_set, cfg, start * cfg.grad_accum, rank, world)
    ddp = common.compiled(common.wrap(model, device), cfg)  # DDP under torchrun; --compile
    used, restarted = torch.zeros(len(cfg.scales), cfg.codebook_size), 0  # since the last log line
    for step in run.steps(start):  # a progress bar; Ctrl-C / SIGTERM end it after a checkpoint
        opt.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            x = next(data)[0].to(device, non_blocking=True)
            with common.accumulating(ddp, micro, cfg.grad_accum), common.autocast(device, cfg.precision):
                x_hat, seq, q = ddp(x)  # seq: (B, L)
            rec = F.mse_loss(x_hat.float(), x)
            (loss := rec + q["loss"]).div(cfg.grad_accum).backward()
            run.check_finite(loss, step + 1)  # stop at a NaN loss, before it is saved
            for k, r in enumerate(unflatten(seq, cfg.scales)):
                used[k] += torch.bincount(r.flatten().cpu(), minlength=cfg.codebook_size)
            restarted += model.quantizer.n_dead
        opt.step()
        if (step + 1) % cfg.log_every == 0:
            vq.log_codes(run, step + 1, rec, q["commit"], used.sum(0), restarted)
            common.echo(f"  codes used at scales {list(cfg.scales)}: {(used > 0).sum(1).tolist()}")
            used, restarted = used.zero_(), 0
        if run.save_due(step + 1):  # after --ckpt-minutes, at the end, on a signal
            run.save(step + 1, model=model.state_dict(), opt=opt.state_dict())
    if common.is_main():  # validation, recon.png, and the report by scale
        vq.finish(model, val_set, cfg, run, device, report(model, val_set, run.dir, device, cfg))
    return model


def train_gan_tokenizer(cfg: GanTokenizerConfig) -> nn.Module:
    """Lesson 03's adversarial training, its loop as it is: it builds its model with vqgan.build, which
    for this call is GanTokenizer (VAR trains its tokenizer with VQGAN's losses); then
    the report by scale."""
    with mock.patch.object(vqgan, "build", GanTokenizer):
        model = vqgan.train(cfg)
    if common.is_main():
        report(model, common.load_data(cfg)[1], Path(cfg.out), next(model.parameters()).device, cfg)
    return model


def load_tokenizer(path, device="cpu"):
    """(frozen tokenizer, its config) from a checkpoint that `python beyond/var.py tokenizer` (or vqgan) wrote."""
    ckpt = load_checkpoint(path)
    if ckpt.get("lesson") != "var" or "scales" not in ckpt["config"]:
        raise common.UserError(
            f"{path} is not a VAR tokenizer (written by {ckpt.get('lesson') or 'an unknown script'}); "
            "train one with `python beyond/var.py tokenizer` or leave --tokenizer out"
        )
    gan = "disc_weight" in ckpt["config"]
    Cfg = GanTokenizerConfig if gan else TokenizerConfig
    cfg = Cfg(**common.saved_config(Cfg, ckpt["config"]))
    model = (GanTokenizer if gan else Tokenizer)(cfg)
    load_state(model, ckpt["model"], path)
    return model.to(device).eval().requires_grad_(False), cfg


def tokenizer(cfg: Config, path=None) -> tuple:
    """For stage2.setup: (path, frozen tokenizer, its config): --tokenizer, else <out>/tokenizer if
    it finished, else one trained (or resumed) there with the prior's --codebook-size."""
    out = Path(cfg.out) / "tokenizer"
    path = Path(path or cfg.tokenizer or out / "ckpt.pt")
    finished = path.exists() and any(r.get("final") for r in common.read_log(path.parent))
    if not finished and path.parent == out:
        common.echo(f"tokenizer: none given; training a multi-scale tokenizer in {out}")
        train_tokenizer(TokenizerConfig(
            dataset=cfg.dataset, image_size=cfg.image_size, image_column=cfg.image_column,
            label_column=cfg.label_column, device=cfg.device, seed=cfg.seed, out=str(out),
            codebook_size=cfg.codebook_size, resume=path.exists(), overwrite=not path.exists(),
        ))  # fmt: skip
        common.barrier()  # under torchrun: rank 0 has written it before anyone reads it
    return (path, *load_tokenizer(path))


# --- the next-scale transformer (VAR Sec. 3.2) ---


def scale_of_token(scales) -> torch.Tensor:
    """(L,): the index k of the scale each token belongs to: s_1^2 zeros, then s_2^2 ones, ..."""
    return torch.repeat_interleave(torch.arange(len(scales)), torch.tensor([s * s for s in scales]))


def block_causal_mask(scales) -> torch.Tensor:
    """(L, L) bool, True where token i may attend to token j: j's scale is i's or a coarser one."""
    level = scale_of_token(scales)
    return level[:, None] >= level[None, :]


class NextScaleTransformer(nn.Module):
    """p(r_1, ..., r_K) = prod_k p(r_k | r_<k) (VAR's next-scale likelihood), every code of r_k
    predicted at once. inputs (B, L - 1, d), c (B,) -> logits (B, L, K).

    Token 1 is the class's start token (it predicts r_1); the tokens of scale k > 1 are f^ after
    scales < k resized to s_k x s_k, through a linear map, plus the class embedding again (VAR
    conditions every block on the class, by AdaLN). Positions and scale levels are learned.
    The tokenizer's quantizer (codebook and phi) rides along, frozen, to build those inputs while sampling.
    """

    def __init__(self, quantizer: MultiScaleQuantizer, cfg: Config, num_classes: int):
        super().__init__()
        self.scales, (K, d) = quantizer.scales, quantizer.codebook.shape
        self.L, self.K = sum(s * s for s in self.scales), K
        self.quantizer = quantizer.requires_grad_(False)
        self.embed = nn.Linear(d, cfg.width)  # f^ resized -> the width
        self.start = nn.Embedding(num_classes + 1, cfg.width)  # one per class + "no class" (guidance)
        self.null = num_classes
        self.pos = nn.Parameter(0.02 * torch.randn(self.L, cfg.width))
        self.level = nn.Embedding(len(self.scales), cfg.width)  # which scale a token belongs to
        self.register_buffer("levels", scale_of_token(self.scales), persistent=False)
        self.register_buffer("mask", block_causal_mask(self.scales), persistent=False)
        self.gpt = ar.Transformer(cfg.width, cfg.layers, cfg.heads, cfg.dropout)  # lesson 04's blocks
        self.head = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, K))

    def forward(self, inputs: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        cls = self.start(c)[:, None]  # (B, 1, W): the first token, and added to every other one
        x = torch.cat([cls, self.embed(inputs) + cls], 1)  # (B, L, W)
        return self.head(self.gpt(x + self.pos + self.level(self.levels), mask=self.mask))

    @torch.no_grad()
    def sample(self, c: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, guidance=1.0):
        """K network calls, one per scale, with lesson 04's caches: the tokens of scale k attend to
        each other and to the cached coarser ones. c: (B,) -> codes (B, L), logits (B, L, K)."""
        B, pair, h = len(c), 1 + (guidance != 1.0), self.scales[-1]
        c = torch.cat([c, ar.unconditional(self, c)]) if pair == 2 else c
        caches = self.gpt.caches(len(c), self.L, c.device)
        cls = self.start(c)[:, None]
        x, f_hat, codes, logits, at = cls, 0, [], [], 0
        for k, s in enumerate(self.scales):
            n = s * s
            x = x + self.pos[at : at + n] + self.level.weight[k]
            logits.append(ar.guide(self.head(self.gpt(x, caches)), guidance))  # (B, s_k^2, K)
            r = ar.sample_logits(logits[-1].flatten(0, 1), temperature, top_k, top_p).view(B, s, s)
            codes.append(r)
            f_hat = f_hat + embed_scale(r, self.quantizer.codebook, self.quantizer.phis[k], h)
            at += n
            if k + 1 < len(self.scales):  # the next scale's input: f^ so far, resized to s_{k+1}
                nxt = rearrange(resize(f_hat, self.scales[k + 1], "area"), "b d h w -> b (h w) d")
                x = self.embed(nxt).repeat(pair, 1, 1) + cls
        return flatten(codes), torch.cat(logits, 1)


@torch.no_grad()
def encode(tok: Tokenizer, x: torch.Tensor, scales):
    """Images (B, 3, S, S) -> codes (B, L) and the transformer's inputs (B, L - 1, d): f^ after
    scales < k resized to s_k, for k = 2..K (teacher forcing). In float32, as lesson 04's encode."""
    with common.exact_float32(x.device.type):
        f = tok.encoder(x).float()
        codes, maps, _ = multiscale_quantize(f, tok.quantizer.codebook, scales, tok.quantizer.phis)
        inputs = [rearrange(resize(m, s, "area"), "b d h w -> b (h w) d") for m, s in zip(maps, scales[1:])]
    return flatten(codes), torch.cat(inputs, 1)


def nll(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """-log p(r_1..r_K) / L in nats per code: cross-entropy on every code of every scale."""
    return F.cross_entropy(logits.float().flatten(0, 1), codes.flatten())


def train(cfg: Config) -> nn.Module:
    """Fit the next-scale transformer on the frozen tokenizer's codes; ckpt.pt, metrics.jsonl, samples.png."""
    s = stage2.setup(cfg, tokenizer)  # run folder, frozen tokenizer (found or trained), data
    model = NextScaleTransformer(s.tok.quantizer, cfg, s.num_classes).to(s.device)
    if cfg.sample_only:  # a trained prior draws samples.png again; no training
        finish(stage2.load_prior(s, model), s, cfg)
        return model
    opt = stage2.adamw(model, cfg, betas=(0.9, 0.95), weight_decay=0.05)
    start = s.run.restore(model=model, opt=opt)  # 0 unless --resume
    data = common.batches(s.train_set, cfg, start * cfg.grad_accum, s.rank, s.world)
    ddp = common.compiled(common.wrap(model, s.device), cfg)  # DDP under torchrun; --compile
    for step in s.run.steps(start):  # a progress bar; Ctrl-C / SIGTERM end it after a checkpoint
        stage2.set_lr(opt, cfg, step)  # warm-up, then cosine
        opt.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            x, y, text = next(data)
            c = s.condition_of(y, text, cfg.label_dropout)  # the class; "no class" at times (guidance)
            codes, inputs = encode(s.tok, x.to(s.device), s.tok.quantizer.scales)
            with common.accumulating(ddp, micro, cfg.grad_accum), common.autocast(s.device, cfg.precision):
                logits = ddp(inputs, c)
            loss = nll(logits, codes)
            (loss / cfg.grad_accum).backward()
            s.run.check_finite(loss, step + 1)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % cfg.log_every == 0:
            stage2.log_step(s.run, step + 1, loss=loss, bits_per_code=loss / math.log(2))
        if s.run.save_due(step + 1):
            s.run.save(
                step + 1, model=model.state_dict(), opt=opt.state_dict(), tokenizer=str(s.tokenizer_path)
            )
    model.eval()
    if common.is_main():
        finish(model, s, cfg)
    return model


def finish(model: NextScaleTransformer, s: stage2.Stage2, cfg: Config) -> None:
    """Validation NLL, samples.png (one row per class, judged), the final record of metrics.jsonl."""
    draw = lambda c: model.sample(c, cfg.temperature, cfg.top_k, cfg.top_p, cfg.guidance)[0]
    if cfg.sample_only:
        sample_quality.pictures(s, cfg, draw)
        return
    x_all, y_all = common.first_images(s.val_set, cfg.eval_images)
    total = 0.0
    with torch.no_grad():
        for x, y in zip(x_all.split(cfg.batch_size), y_all.split(cfg.batch_size)):
            codes, inputs = encode(s.tok, x.to(s.device), model.scales)
            total += nll(model(inputs, s.labels(y)), codes).item() * len(x)
    val_nll = total / len(x_all)
    common.echo(f"validation NLL {val_nll:.4f} nats = {val_nll / math.log(2):.3f} bits per code")
    quality = sample_quality.pictures(s, cfg, draw)
    s.run.log({"step": cfg.steps, "final": True, "val_nll": val_nll, "val_bits_per_code": val_nll / math.log(2),
               **quality})  # fmt: skip


# --- config and command line ---


def default_scales(h: int) -> tuple[int, ...]:
    """1, 2, 4, ..., h: sides that double (few network calls on a CPU). The paper's ten for a 16 x 16
    latent are VAR_16; pass them as --scales."""
    return (*(2**i for i in range(h.bit_length()) if 2**i < h), h)


@dataclass
class TokenizerConfig(vq.Config):
    out: str = "runs/var_tokenizer"  # run folder: ckpt.pt, metrics.jsonl, recon.png, coarse_to_fine.png
    dataset: str = "shapes-plain"  # as lesson 01; by default the data the prior draws
    scales: tuple[int, ...] | None = None  # s_1 < ... < s_K, the latent side last (default: 1 2 4 .. side)
    phi_blend: float = 0.5  # b in phi_k(z) = (1 - b) z + b conv(z) (paper's code: 0.5; 0 = no phi)
    codebook_size: int = 32  # K, shared by every scale (paper: 4096)
    code_dim: int = 64  # d (paper: 32)

    def __post_init__(self):
        super().__post_init__()
        check_scales(self)


def check_scales(cfg: TokenizerConfig | GanTokenizerConfig) -> None:
    """--scales (default: doubling up to the latent side) and --phi-blend, for both tokenizers."""
    h = common.default_image_size(cfg) // cfg.downsample
    cfg.scales = tuple(cfg.scales or default_scales(h))
    common.require(
        (list(cfg.scales) == sorted(set(cfg.scales)) and cfg.scales[0] >= 1,
         f"--scales must grow strictly from at least 1, got {' '.join(map(str, cfg.scales))}"),
        (cfg.scales[-1] == h, f"--scales must end at the latent side {h} (image size / --downsample), got {cfg.scales[-1]}"),
        (0 <= cfg.phi_blend <= 1, f"--phi-blend must be in [0, 1], got {cfg.phi_blend}"),
    )  # fmt: skip


@dataclass
class GanTokenizerConfig(vqgan.Config):
    out: str = "runs/var_vqgan"  # run folder: ckpt.pt, metrics.jsonl, recon.png, coarse_to_fine.png
    dataset: str = "shapes-plain"  # as lesson 03; by default the data the prior draws
    scales: tuple[int, ...] | None = None  # s_1 < ... < s_K, the latent side last (default: 1 2 4 .. side)
    phi_blend: float = 0.5  # b in phi_k(z) = (1 - b) z + b conv(z) (paper's code: 0.5; 0 = no phi)
    codebook_size: int = 32  # K, shared by every scale (paper: 4096)
    depth: int = 1  # not used: the scales take the place of lesson 02's depths

    def __post_init__(self):
        super().__post_init__()
        common.require((self.depth == 1, "--depth: VAR's tokenizer has scales, not depths; drop --depth"))
        check_scales(self)


@dataclass
class Config(stage2.PriorConfig):
    RESUMABLE: ClassVar = stage2.PriorConfig.RESUMABLE | {"temperature", "top_k", "top_p", "guidance"}
    dataset: str = "shapes-plain"  # as lesson 04
    out: str = "runs/var"  # run folder: ckpt.pt, metrics.jsonl, samples.png; tokenizer/ if trained here
    tokenizer: str | None = (
        None  # a `beyond/var.py tokenizer` checkpoint (default: <out>/tokenizer, trained once)
    )
    codebook_size: int = 32  # K of the tokenizer trained when there is none
    width: int = 128  # transformer width
    heads: int = 4  # attention heads
    layers: int = 4  # transformer blocks (paper: depth 16 to 30)
    dropout: float = 0.0  # dropout in the residual branches
    temperature: float = 1.0  # sampling temperature
    top_k: int = 0  # sample among the k most likely codes (0 = all; paper: 900 of 4096)
    top_p: float = 1.0  # then among the smallest set of mass >= p (paper: 0.96)
    label_dropout: float = 0.1  # training: "no class" this often, for classifier-free guidance
    guidance: float = 2.0  # sampling: guidance scale s (1 = off)
    samples_per_class: int = 16  # images per row of samples.png
    batch_size: int = 32  # images per step
    steps: int = 2000  # optimizer steps
    lr: float = 2e-3  # peak AdamW lr: 100 warm-up steps, then a cosine decay

    def __post_init__(self):
        super().__post_init__()
        stage2.check_prior_flags(self)
        common.require(
            (self.condition != "text", "VAR here is class-conditional only; drop --condition text"),
            (self.layers >= 1 and self.codebook_size >= 2, "--layers >= 1 and --codebook-size >= 2"),
            (self.temperature > 0, "--temperature must be > 0"),
            (0 < self.top_p <= 1 and self.top_k >= 0, "--top-p must be in (0, 1] and --top-k >= 0"),
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["tokenizer"]:
        common.main(train_tokenizer, TokenizerConfig, sys.argv[2:])
    elif sys.argv[1:2] == ["vqgan"]:
        common.main(train_gan_tokenizer, GanTokenizerConfig, sys.argv[2:])
    else:
        common.main(train, Config)
