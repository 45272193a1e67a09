"""Lesson 01: VQ-VAE, an autoencoder whose bottleneck is a grid of integers.

Paper: A. van den Oord, O. Vinyals, K. Kavukcuoglu, "Neural Discrete Representation Learning"
(arXiv:1711.00937). Equation labels follow the RQ-VAE paper (arXiv:2203.01941), which restates
VQ as RQ Eq. 1-2, and the VQGAN paper's form of the VQ loss; docs/equations.md lists every label.

Idea. An encoder maps an image to a grid of vectors z_e. Each vector is replaced by the nearest
of K code vectors (RQ Eq. 1), so the image becomes a grid of integers, its codes; the decoder sees
only the chosen code vectors z_q (RQ Eq. 2). The argmin has no gradient, so the straight-through
estimator hands the decoder's gradient for z_q to z_e unchanged. The codebook learns either from
a loss that pulls each code towards the vectors assigned to it, or (the default) as an exponential
moving average of those vectors; codes that nobody uses are restarted on encoder outputs, so that
the whole codebook stays in use.

Notation (the VQ-VAE paper writes D for the code dimension d):
    symbol   code name       shape
    x        x               (B, 3, S, S)   images in [-1, 1]
    z_e      z_e, z          (B, d, H, W)   encoder output, H = W = S / f (f = --downsample)
    e(k)     codebook[k]     (K, d)         code vectors
    k        codes, idx      (B, H, W)      long in [0, K)
    z_q      z_q             (B, d, H, W)   e(k) at every position
    N_k      cluster_size    (K,)           EMA count of vectors assigned to code k
    m_k      embed_sum       (K, d)         EMA sum of those vectors
    beta     beta            scalar         commitment weight

Run: python 01_vq.py --steps=1500
Next: 02_rq.py
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

import common

# --- vector quantization ---


@torch.no_grad()
def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """RQ Eq. 1: Q(z; C) = argmin_k ||z - e(k)||^2.   z: (..., d), codebook: (K, d) -> idx: (...) long

    ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2, and ||z||^2 is the same for every k, so the search
    needs only ||e||^2 - 2 z.e: one matmul.
    """
    dist = codebook.pow(2).sum(1) - 2 * z.to(codebook.dtype) @ codebook.t()  # (..., K)
    return dist.argmin(-1)


def codebook_loss(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """||sg[z_e] - z_q||^2: moves the codes towards the encoder outputs. z_e, z_q: same shape."""
    return F.mse_loss(z_q, z_e.detach())


def commitment_loss(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """||z_e - sg[z_q]||^2: keeps the encoder's outputs close to their codes."""
    return F.mse_loss(z_e, z_q.detach())


def vq_loss(z_e: torch.Tensor, z_q: torch.Tensor, beta: float = 0.25) -> torch.Tensor:
    """The codebook and commitment terms of the VQ loss, with beta on the commitment term.

    A mean over elements rather than a sum: the same minimiser, and a scale that does not grow
    with d or the number of positions.
    """
    # VQ loss: L_VQ = ||x - x^|| + ||sg[E(x)] - z_q||^2 + beta ||sg[z_q] - E(x)||^2 (first term in train)
    # deviation of two peers: taming's default (legacy=True) puts beta on the codebook term instead.
    return codebook_loss(z_e, z_q) + beta * commitment_loss(z_e, z_q)


def straight_through(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Forward: z_q. Backward: the gradient w.r.t. the output reaches z_e unchanged (dz_q/dz_e = I)."""
    return z_e + (z_q - z_e).detach()  # z_e + sg[z_q - z_e]


@torch.no_grad()
def ema_update(cluster_size, embed_sum, z, idx, decay: float = 0.99, eps: float = 1e-5):
    """One EMA step of the codebook (VQ-VAE appendix A.1), with Laplace smoothing of the counts.

    cluster_size: (K,) N_k, embed_sum: (K, d) m_k, z: (N, d) vectors, idx: (N,) their codes
    -> (cluster_size (K,), embed_sum (K, d), codebook (K, d)), new tensors.
    """
    K = cluster_size.shape[0]
    n_k = torch.bincount(idx, minlength=K).to(cluster_size.dtype)  # (K,) vectors assigned to k
    s_k = torch.zeros_like(embed_sum).index_add_(0, idx, z.to(embed_sum.dtype))  # (K, d) their sum
    common.all_reduce_sum(n_k, s_k)  # under torchrun: statistics of the global batch
    cluster_size = decay * cluster_size + (1 - decay) * n_k  # N_k <- g N_k + (1 - g) n_k
    embed_sum = decay * embed_sum + (1 - decay) * s_k  # m_k <- g m_k + (1 - g) sum_{i: k_i = k} z_i
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) / (n + K * eps) * n  # Laplace: never 0, same total n
    return cluster_size, embed_sum, embed_sum / smoothed[:, None]  # e(k) = m_k / N_k


@torch.no_grad()
def restart_dead_codes(codebook, cluster_size, embed_sum, z, threshold: float = 1.0):
    """Codes whose EMA count N_k < threshold become random vectors of the batch (Jukebox).

    codebook (K, d), cluster_size (K,), embed_sum (K, d), z: (N, d) encoder outputs
    -> (codebook, cluster_size, embed_sum, n_dead), new tensors. A restarted code k starts as a
    cluster of weight `threshold` around one batch vector z_i: e(k) = z_i, N_k = threshold,
    m_k = threshold * z_i, so it survives the next step if at least `threshold` vectors pick it.
    RQ-VAE restarts codes with N_k < 1 at every step, as the default here does.
    """
    dead = cluster_size < threshold  # (K,) bool
    n_dead = int(dead.sum())
    if n_dead == 0:
        return codebook, cluster_size, embed_sum, 0
    N = z.shape[0]  # distinct batch vectors where possible:
    pick = (
        torch.randperm(N, device=z.device)[:n_dead]
        if N >= n_dead
        else torch.randint(N, (n_dead,), device=z.device)
    )
    new = z[pick].to(codebook.dtype)  # (n_dead, d)
    # under torchrun: every rank takes rank 0's vectors, so all hold the same codebook
    common.broadcast_from_main(new)
    codebook, cluster_size, embed_sum = codebook.clone(), cluster_size.clone(), embed_sum.clone()
    codebook[dead], cluster_size[dead], embed_sum[dead] = new, threshold, threshold * new
    return codebook, cluster_size, embed_sum, n_dead


class VectorQuantizer(nn.Module):
    """z_e: (B, d, H, W) -> (z_q: (B, d, H, W) with straight-through gradient, codes: (B, H, W), losses).

    losses: {"loss": what to add to the training loss, "commit": ||z_e - sg[z_q]||^2}. With
    codebook="ema" the code vectors are a buffer updated by `ema_update`; with "loss" they are a
    parameter trained by the codebook loss. Either way, dead codes are restarted while training.
    """

    def __init__(self, K: int, d: int, beta=0.25, codebook="ema", decay=0.99, dead_threshold=1.0):
        super().__init__()
        self.K, self.d, self.beta = K, d, beta
        self.decay, self.dead_threshold = decay, dead_threshold
        self.ema = codebook == "ema"
        init = torch.randn(K, d)
        if self.ema:
            self.register_buffer("codebook", init)
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("cluster_size", torch.ones(K))  # N_k: also drives restarts in "loss" mode
        self.register_buffer("embed_sum", init.clone())  # m_k = N_k e(k)
        self.n_dead = 0  # codes restarted at the last training step

    def forward(self, z_e: torch.Tensor):
        B, d, H, W = z_e.shape
        assert d == self.d, f"expected {self.d} channels, got {d}"
        with common.exact_float32(z_e.device.type):  # distances and EMA in true float32
            # (N, d), contiguous: as a view of z_e its d axis is strided, which slows every op below
            z = rearrange(z_e.float(), "b d h w -> (b h w) d").contiguous()
            idx = nearest_code(z, self.codebook)  # (N,)  RQ Eq. 1
            z_q = F.embedding(idx, self.codebook)  # (N, d)  RQ Eq. 2: Z^_hw = e(M_hw)
            commit = commitment_loss(z, z_q)
            loss = vq_loss(z, z_q, self.beta) if not self.ema else self.beta * commit
            if self.training:
                self.update(z.detach(), idx)
            z_q = straight_through(z, z_q)
        z_q = rearrange(z_q, "(b h w) d -> b d h w", b=B, h=H, w=W)
        return z_q, idx.view(B, H, W), {"loss": loss, "commit": commit.detach()}

    @torch.no_grad()
    def update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        """The codebook's training step on this batch: EMA (in "ema" mode), then restarts."""
        N, m, e = ema_update(self.cluster_size, self.embed_sum, z, idx, self.decay)
        if self.ema:
            self.codebook.copy_(e)
        e, N, m, self.n_dead = restart_dead_codes(self.codebook, N, m, z, self.dead_threshold)
        self.codebook.copy_(e), self.cluster_size.copy_(N), self.embed_sum.copy_(m)


# --- model ---


class VQVAE(nn.Module):
    """Encoder -> quantizer -> decoder. x: (B, 3, S, S) -> (x_hat, codes, losses).

    Lesson 02 passes its residual quantizer; anything with VectorQuantizer's interface works.
    """

    def __init__(self, cfg: Config, quantizer: nn.Module | None = None):
        super().__init__()
        self.encoder = common.Encoder(cfg.code_dim, cfg.ch, cfg.downsample)
        if quantizer is None:  # lesson 01's own: one codebook of K vectors
            quantizer = VectorQuantizer(
                cfg.codebook_size, cfg.code_dim, cfg.beta, cfg.codebook, cfg.decay, cfg.dead_threshold
            )
        self.quantizer = quantizer
        self.decoder = common.Decoder(cfg.code_dim, cfg.ch, cfg.downsample)

    def forward(self, x: torch.Tensor):
        z_q, codes, losses = self.quantizer(self.encoder(x))
        return self.decoder(z_q), codes, losses


# --- training ---


@torch.no_grad()
def evaluate(model: nn.Module, val_set, cfg: Config, device) -> dict:
    """Validation MSE, PSNR and code statistics on the first cfg.eval_images images."""
    model.eval()
    x_all, _ = common.first_images(val_set, cfg.eval_images)
    mse, psnr, counts = [], [], torch.zeros(cfg.codebook_size)
    for x in x_all.split(cfg.batch_size):
        x = x.to(device)
        x_hat, codes, _ = model(x)
        mse.append((x_hat.float().clamp(-1, 1) - x).pow(2).flatten(1).mean(1).cpu())
        psnr.append(common.psnr(x, x_hat).cpu())
        counts += torch.bincount(codes.flatten().cpu(), minlength=cfg.codebook_size)
    model.train()
    stats = common.codebook_stats(counts)
    mse, psnr = torch.cat(mse).mean().item(), torch.cat(psnr).mean().item()
    return {
        "val_mse": mse,
        "val_psnr": psnr,
        "val_usage": stats["usage"],
        "val_perplexity": stats["perplexity"],
    }


def finish(model: nn.Module, val_set, cfg: Config, run, device, extra: dict | None = None) -> dict:
    """After training: validation metrics, recon.png (originals over reconstructions), and the
    final record of metrics.jsonl (with a later lesson's `extra` metrics)."""
    metrics = evaluate(model, val_set, cfg, device)
    x = common.first_images(val_set, 8)[0].to(device)
    with torch.no_grad():
        model.eval()
        common.save_grid([x, model(x)[0]], run.dir / "recon.png")
        model.train()
    common.echo(" | ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    run.log({"step": cfg.steps, "final": True, **metrics, **(extra or {})})
    return metrics


def log_codes(run, step: int, rec, commit, counts: torch.Tensor, restarted: int) -> None:
    """Print and log the losses and the codebook's health since the last log line."""
    stats, rec, commit = common.codebook_stats(counts), rec.item(), commit.item()
    used = f"{len(counts) - stats['unused']}/{len(counts)}"
    common.echo(
        f"step {step} | rec {rec:.4f} | commit {commit:.4f} | codes used {used} | "
        f"perplexity {stats['perplexity']:.0f} | restarted {restarted}"
    )
    run.log({"step": step, "rec": rec, "commit": commit, **stats, "restarted": restarted})


def train(cfg: Config) -> nn.Module:
    """Train a VQ-VAE to reconstruct images; write ckpt.pt, metrics.jsonl and recon.png to cfg.out."""
    device, rank, world, run, train_set, val_set = common.start(cfg)  # torchrun ranks, seed, run folder, data
    model = VQVAE(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start = run.restore(model=model, opt=opt)  # 0 unless --resume
    data = common.batches(train_set, cfg, start * cfg.grad_accum, rank, world)
    ddp = common.compiled(common.wrap(model, device), cfg)  # DDP under torchrun; --compile
    counts, restarted = torch.zeros(cfg.codebook_size), 0  # code usage since the last log line
    for step in run.steps(start):  # a progress bar; Ctrl-C / SIGTERM end it after a checkpoint
        opt.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):  # the EMA codebook takes one step per micro-batch
            x = next(data)[0].to(device, non_blocking=True)
            with common.accumulating(ddp, micro, cfg.grad_accum):  # DDP syncs on the last one
                with common.autocast(device, cfg.precision):  # bf16 on CUDA (see --precision)
                    x_hat, codes, q = ddp(x)
                rec = F.mse_loss(x_hat.float(), x)  # RQ Eq. 6: ||x - x^||^2
                loss = rec + q["loss"]  # + the VQ loss (beta x commitment; codebook by EMA)
                (loss / cfg.grad_accum).backward()
            run.check_finite(loss, step + 1)  # stop at a NaN loss, before it is saved
            counts += torch.bincount(codes.flatten().cpu(), minlength=cfg.codebook_size)
            restarted += model.quantizer.n_dead
        opt.step()
        if (step + 1) % cfg.log_every == 0:
            log_codes(run, step + 1, rec, q["commit"], counts, restarted)
            counts, restarted = counts.zero_(), 0
        if run.save_due(step + 1):  # after --ckpt-minutes, at the end, on a signal
            run.save(step + 1, model=model.state_dict(), opt=opt.state_dict())
    if common.is_main():
        finish(model, val_set, cfg, run, device)
    return model


# --- config and command line ---


@dataclass
class Config(common.TrainConfig):
    out: str = "runs/01_vq"  # run folder: ckpt.pt, metrics.jsonl, recon.png
    downsample: int = 4  # f: S x S images become (S/f) x (S/f) grids of codes
    ch: int = 16  # channels of the encoder/decoder's first level (doubling per level, up to 4x)
    codebook_size: int = 512  # K: number of code vectors
    code_dim: int = 64  # d: dimension of a code vector
    beta: float = 0.25  # commitment weight on ||z_e - sg[z_q]||^2
    codebook: Literal["ema", "loss"] = "ema"  # learn codes as an EMA of their vectors, or by loss
    decay: float = 0.99  # gamma: EMA decay of code counts and sums
    dead_threshold: float = 1.0  # restart codes whose EMA count falls below this (0 = never)

    def __post_init__(self):
        super().__post_init__()
        size = common.default_image_size(self)
        f = self.downsample
        common.require(
            *[
                (getattr(self, n) >= 1, f"--{n.replace('_', '-')} must be at least 1")
                for n in ("codebook_size", "code_dim", "ch")
            ],
            (f >= 2 and not f & (f - 1), f"--downsample must be a power of two >= 2, got {f}"),
            (f >= 1 and size % f == 0, f"--image-size {size} is not divisible by --downsample {f}"),
            (0 < self.decay < 1, f"--decay must lie in (0, 1), got {self.decay}"),
            (min(self.beta, self.dead_threshold) >= 0, "--beta and --dead-threshold must be >= 0"),
        )


if __name__ == "__main__":
    common.main(train, Config)
