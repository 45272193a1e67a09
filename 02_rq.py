"""Lesson 02: RQ-VAE, residual quantization with one shared codebook.

Paper: D. Lee, C. Kim, S. Kim, M. Cho, W.-S. Han, "Autoregressive Image Generation using Residual
Quantization" (arXiv:2203.01941), Sec. 3.1. Equation labels: RQ Eq. 3-7.

Idea. VQ (lesson 01) spends log2(K) bits per position; to halve the code grid at equal quality it
would need K^4 codes. RQ instead quantizes a vector D times with the same codebook: first z, then
what is left of it, r_1 = z - e(k_1), then r_2, and so on (RQ Eq. 4). The code of a position is the
tuple (k_1, ..., k_D) and the quantized vector is the sum of its code vectors, so one codebook of
K vectors covers up to K^D points, coarse to fine: the partial sums Z^(1), ..., Z^(D) approximate
the feature map better and better, and deeper depths use codes of smaller norm. Depth 1 is VQ.

Notation (as lesson 01; RQ-specific below):
    symbol   code name       shape
    D        depth           scalar         quantization steps per position
    k_d      codes[..., d]   (B, H, W, D)   long in [0, K): the code chosen at depth d
    r_d      residual        (N, d)         r_0 = z, r_d = r_{d-1} - e(k_d)
    Z^(d)    partial[:, d]   (N, D, d)      sum_{d' <= d} e(k_d'): the partial sum at depth d
    C        codebook        (K, d)         shared by every depth (or D blocks of K/D: --codebooks separate)

Run: python 02_rq.py --steps=1500
Next: 03_vqgan.py
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from matplotlib.figure import Figure  # figures drawn straight to files: no GUI backend needed

import common

vq = common.lesson("01_vq")  # nearest_code, straight_through, VectorQuantizer, VQVAE, log_codes, finish

# --- residual quantization ---


@torch.no_grad()  # codes and partial sums carry no gradient: the straight-through step and sg[] detach them
def residual_quantize(z: torch.Tensor, codebooks, depth: int, pick=vq.nearest_code):
    """RQ Eq. 3-4: RQ(z; C, D) = (k_1, ..., k_D), with r_0 = z, k_d = Q(r_{d-1}; C), r_d = r_{d-1} - e(k_d).

    z: (..., d); codebooks: one (K, d) tensor shared by every depth, or a list of D tensors
    -> codes (..., D) long, partial sums Z^(1..D): (..., D, d) float (RQ Eq. 5).
    pick(r, codebook) -> k chooses each code: the nearest (Q, RQ Eq. 1) unless lesson 04 draws it.
    """
    books = [codebooks] * depth if torch.is_tensor(codebooks) else list(codebooks)
    assert len(books) == depth, f"{len(books)} codebooks for depth {depth}"
    r, z_hat, codes, partial = z, torch.zeros_like(z), [], []  # r_0 = z, Z^(0) = 0
    for book in books:
        k = pick(r, book)  # k_d = Q(r_{d-1}; C)          RQ Eq. 4
        e = F.embedding(k, book)  # e(k_d)
        r = r - e  # r_d = r_{d-1} - e(k_d)
        z_hat = z_hat + e  # Z^(d) = sum_{d' <= d} e(k_d')      RQ Eq. 5
        codes.append(k), partial.append(z_hat)
    return torch.stack(codes, -1), torch.stack(partial, -2)  # (..., D), (..., D, d)


def rq_commitment_loss(z: torch.Tensor, partial: torch.Tensor) -> torch.Tensor:
    """RQ Eq. 7: L_commit = sum_d ||z - sg[Z^(d)]||^2, here AVERAGED over the D depths.

    z: (N, d), partial: (N, D, d). Every partial sum pulls the encoder, so z must be well
    approximated at every depth, not only at the last. The paper writes a sum; we average, as the
    official code does, so that beta means the same at every depth and depth 1 equals lesson 01's
    commitment loss exactly. A sum is this times D (use beta * D to match the paper's scale).
    """
    return (z[:, None] - partial.detach()).pow(2).mean()  # a mean over N, D and d


class ResidualQuantizer(nn.Module):
    """z_e: (B, d, H, W) -> (z_q: (B, d, H, W) with straight-through gradient, codes: (B, H, W, D), losses).

    shared (default): one codebook of K codes for every depth. separate: D codebooks of K/D codes
    (the Appendix C.3 ablation); codes are then numbered globally, depth d owning [d K/D, (d+1) K/D),
    so `codebook[codes]` works in both modes. Each codebook is a lesson-01 VectorQuantizer, whose
    `update` (EMA step + dead-code restart) receives the residuals of every depth it serves.
    """

    def __init__(
        self, K, d, depth, codebooks="shared", beta=0.25, codebook="ema", decay=0.99, dead_threshold=1.0
    ):
        super().__init__()
        self.K, self.d, self.depth, self.beta = K, d, depth, beta
        self.shared = codebooks == "shared"
        n_books, size = (1, K) if self.shared else (depth, K // depth)
        self.books = nn.ModuleList(
            vq.VectorQuantizer(size, d, beta, codebook, decay, dead_threshold) for _ in range(n_books)
        )
        self.n_dead = 0

    @property
    def codebook(self) -> torch.Tensor:
        """(K, d): all code vectors, indexed by the global code numbers that forward returns."""
        return self.books[0].codebook if self.shared else torch.cat([b.codebook for b in self.books])

    def offsets(self) -> torch.Tensor:
        """(D,): the global number of each depth's first code (all 0 when shared)."""
        size = self.K // self.depth
        return torch.zeros(self.depth, dtype=torch.long) if self.shared else torch.arange(self.depth) * size

    def quantize(self, z: torch.Tensor):
        """z: (N, d) -> global codes (N, D), partial sums (N, D, d). No training step."""
        books = self.books[0].codebook if self.shared else [b.codebook for b in self.books]
        codes, partial = residual_quantize(z, books, self.depth)
        return codes + self.offsets().to(codes.device), partial

    def forward(self, z_e: torch.Tensor):
        B, d, H, W = z_e.shape
        with common.exact_float32(z_e.device.type):  # distances and EMA in true float32
            z = rearrange(z_e.float(), "b d h w -> (b h w) d").contiguous()  # (N, d), as in lesson 01
            codes, partial = self.quantize(z)  # (N, D), (N, D, d)  RQ Eq. 3-5
            commit = rq_commitment_loss(z, partial)  # RQ Eq. 7
            loss = self.beta * commit
            # r_{d-1} = z - Z^(d-1), the vector that depth d quantized: (N, D, d), with Z^(0) = 0
            residuals = z.detach()[:, None] - F.pad(partial[:, :-1], (0, 0, 1, 0))
            if not self.books[0].ema:  # codebook loss at every depth: e(k_d) moves towards r_{d-1}
                loss = loss + vq.codebook_loss(residuals, F.embedding(codes, self.codebook))
            if self.training:
                self.update(residuals, codes)
            # ONE straight-through step on the final sum Z^(D), so dz_q/dz = I at any depth
            z_q = vq.straight_through(z, partial[:, -1])
        z_q = rearrange(z_q, "(b h w) d -> b d h w", b=B, h=H, w=W)
        return z_q, codes.view(B, H, W, self.depth), {"loss": loss, "commit": commit.detach()}

    @torch.no_grad()
    def update(self, residuals: torch.Tensor, codes: torch.Tensor) -> None:
        """EMA + restarts. residuals, codes: (N, D, d), (N, D). A shared codebook learns from the
        residuals of all depths at once; a separate one from its own depth's only."""
        if self.shared:
            self.books[0].update(residuals.flatten(0, 1), codes.flatten())
            self.n_dead = self.books[0].n_dead
            return
        for book, r, k, offset in zip(self.books, residuals.unbind(1), codes.unbind(1), self.offsets()):
            book.update(r, k - offset)
        self.n_dead = sum(b.n_dead for b in self.books)


# --- model ---


def make_quantizer(cfg: Config) -> ResidualQuantizer:
    args = (cfg.codebooks, cfg.beta, cfg.codebook, cfg.decay, cfg.dead_threshold)
    return ResidualQuantizer(cfg.codebook_size, cfg.code_dim, cfg.depth, *args)


def build(cfg: Config) -> nn.Module:
    return vq.VQVAE(cfg, quantizer=make_quantizer(cfg))  # lesson 01's encoder and decoder


@torch.no_grad()
def decode_partial(model: nn.Module, x: torch.Tensor):
    """Fig. 5: x: (B, 3, S, S) -> codes (B, H, W, D), partial sums (B, D, d, H, W), decodes (B, D, 3, S, S)."""
    z_e = model.encoder(x)
    B, d, H, W = z_e.shape
    codes, partial = model.quantizer.quantize(rearrange(z_e.float(), "b d h w -> (b h w) d"))
    partial = rearrange(partial, "(b h w) D d -> b D d h w", b=B, h=H, w=W)
    x_hat = torch.stack([model.decoder(partial[:, i]) for i in range(partial.shape[1])], 1)  # (B, D, 3, S, S)
    return codes.view(B, H, W, -1), partial, x_hat, z_e


# --- evaluation and figures ---


def count_by_depth(codes: torch.Tensor, K: int) -> torch.Tensor:
    """codes (..., D) -> (D, K) how often each code is chosen at each depth: ONE bincount over
    (depth, code) pairs, not D of them (this runs at every training step)."""
    D = codes.shape[-1]
    depth_code = codes.reshape(-1, D) + torch.arange(D, device=codes.device) * K
    return torch.bincount(depth_code.flatten(), minlength=D * K).view(D, K).cpu().float()


@torch.no_grad()
def report(model: nn.Module, val_set, run_dir, device, cfg: Config) -> dict:
    """Table 6 analog (MSE, PSNR, commitment per partial depth), code usage and norms by depth,
    and the two figures coarse_to_fine.png and code_usage_by_depth.png."""
    model.eval()
    D, K = cfg.depth, cfg.codebook_size
    x_all, _ = common.first_images(val_set, cfg.eval_images)
    table, counts = torch.zeros(3, D), torch.zeros(D, K)  # MSE, PSNR, commitment by depth; code counts
    for x in x_all.split(cfg.batch_size):
        x = x.to(device)
        codes, partial, x_hat, z_e = decode_partial(model, x)
        mse = (x_hat.float().clamp(-1, 1) - x[:, None]).pow(2).flatten(2).mean(2)  # (B, D)
        psnr = torch.stack([common.psnr(x, x_hat[:, i]) for i in range(D)], 1)  # (B, D)
        commit = (z_e[:, None].float() - partial).pow(2).mean((2, 3, 4))  # (B, D): ||z - Z^(d)||^2
        table += torch.stack([mse, psnr, commit]).sum(1).cpu() / len(x_all)
        counts += count_by_depth(codes, K)
    norms = model.quantizer.codebook.norm(dim=1).cpu()  # (K,) ||e(k)||
    size = K if model.quantizer.shared else K // D  # the codes a depth may choose from
    offsets = model.quantizer.offsets()
    stats = [common.codebook_stats(c[o : o + size]) for c, o in zip(counts, offsets)]
    mean_norm = (counts * norms).sum(1) / counts.sum(1)  # (D,) the mean ||e(k_d)|| of the codes used
    common.echo("depth d |   MSE    | PSNR dB | commit  | usage | perplexity | mean ||e(k_d)||")
    rows, formats = [], ("7d", ".5f", "7.2f", ".5f", "5.2f", "10.1f", ".3f")
    for i, (mse, psnr, commit) in enumerate(table.T.tolist()):
        usage, perplexity = stats[i]["usage"], stats[i]["perplexity"]
        rows.append(dict(depth=i + 1, mse=mse, psnr=psnr, commit=commit, usage=usage, perplexity=perplexity))
        rows[-1]["mean_code_norm"] = mean_norm[i].item()
        common.echo(" | ".join(f"{v:{f}}" for v, f in zip(rows[-1].values(), formats)))
    x = x_all[:8].to(device)
    columns = torch.cat([x[:, None], decode_partial(model, x)[2]], 1)  # Fig. 5: the original, then Z^(1..D)
    titles = ["original"] + [f"Z^({d})" for d in range(1, D + 1)]
    common.save_titled_grid(columns, titles, run_dir / "coarse_to_fine.png")
    plot_code_usage(counts, norms, run_dir / "code_usage_by_depth.png")
    model.train()
    return {"partial_depth": rows}


def plot_code_usage(counts: torch.Tensor, norms: torch.Tensor, path) -> None:
    """Fig. 6: at each depth, how often codes are used against the norm of their embedding."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    bins = torch.linspace(0, norms.max().item() * 1.02, 40)
    for i, c in enumerate(counts):
        weights = (c / c.sum()).numpy()  # the fraction of depth i's code uses at each norm
        ax.hist(norms.numpy(), bins=bins.numpy(), weights=weights, alpha=0.5, label=f"depth {i + 1}")
    ax.set(
        xlabel="code norm ||e(k)||", ylabel="fraction of code uses", title="Code usage by depth (RQ Fig. 6)"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# --- training ---


def train(cfg: Config) -> nn.Module:
    """Lesson 01's training with the residual quantizer: L = L_recon + beta L_commit over all
    depths (RQ Eq. 6-7), codebook by EMA; the log adds the codes used at each depth, and the end
    the depth report and figures."""
    common.echo(f"preset '{common.preset_name(cfg)}': the defaults of the flags left unset")
    device, rank, world, run, train_set, val_set = common.start(cfg)  # torchrun ranks, seed, run folder, data
    model = build(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start = run.restore(model=model, opt=opt)  # 0 unless --resume
    data = common.batches(train_set, cfg, start * cfg.grad_accum, rank, world)
    ddp = common.compiled(common.wrap(model, device), cfg)  # DDP under torchrun; --compile
    by_depth, restarted = torch.zeros(cfg.depth, cfg.codebook_size), 0  # since the last log line
    for step in run.steps(start):  # a progress bar; Ctrl-C / SIGTERM end it after a checkpoint
        opt.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            x = next(data)[0].to(device, non_blocking=True)
            with common.accumulating(ddp, micro, cfg.grad_accum):  # DDP syncs on the last one
                with common.autocast(device, cfg.precision):  # bf16 on CUDA (see --precision)
                    x_hat, codes, q = ddp(x)  # codes: (B, h, w, D)
                rec = F.mse_loss(x_hat.float(), x)  # RQ Eq. 6
                loss = rec + q["loss"]  # + beta L_commit, every depth's partial sum (RQ Eq. 7)
                (loss / cfg.grad_accum).backward()
            run.check_finite(loss, step + 1)  # stop at a NaN loss, before it is saved
            by_depth += count_by_depth(codes, cfg.codebook_size)  # deeper depths use smaller codes
            restarted += model.quantizer.n_dead
        opt.step()
        if (step + 1) % cfg.log_every == 0:
            vq.log_codes(run, step + 1, rec, q["commit"], by_depth.sum(0), restarted)
            common.echo(f"  codes used at depth 1..{cfg.depth}: {(by_depth > 0).sum(1).tolist()}")
            by_depth, restarted = by_depth.zero_(), 0
        if run.save_due(step + 1):  # after --ckpt-minutes, at the end, on a signal
            run.save(step + 1, model=model.state_dict(), opt=opt.state_dict())
    if common.is_main():  # Table 6 analog, coarse_to_fine.png, code_usage_by_depth.png, recon.png
        vq.finish(model, val_set, cfg, run, device, report(model, val_set, run.dir, device, cfg))
    return model


# --- config and command line ---

# What each dataset implies for the flags left unset. FFHQ and ImageNet follow the paper: 256 px
# images become 8 x 8 x 4 codes (f = 32) with K = 2048 and 16384, code dimension 256.
REAL = dict(ch=64, code_dim=256, steps=100_000, lr=4e-4)  # a GPU run on a real dataset
PRESETS = {
    "shapes": dict(downsample=4, codebook_size=16, ch=16, code_dim=64, steps=1500, lr=1e-3),  # CPU
    "mnist": {**REAL, "downsample": 4, "codebook_size": 256, "steps": 20_000},
    "cifar10": {**REAL, "downsample": 4, "codebook_size": 1024},
    "flowers": {**REAL, "downsample": 8, "codebook_size": 1024},
    "ffhq": {**REAL, "downsample": 32, "codebook_size": 2048},
    "imagenet": {**REAL, "downsample": 32, "codebook_size": 16384, "steps": 500_000},
}
PRESETS["shapes-plain"] = PRESETS["small"] = PRESETS["shapes"]  # small: paths/hub ids <= 64 px
PRESETS["large"] = {**REAL, "downsample": 16, "codebook_size": 2048}  # celebahq, lsun, the rest


@dataclass
class Config(vq.Config):
    PRESETS: ClassVar = PRESETS  # --help lists them
    out: str = "runs/02_rq"  # run folder: ckpt.pt, metrics.jsonl, recon.png, figures
    depth: int = 4  # D: quantization steps per position (1 = lesson 01's VQ)
    codebooks: Literal["shared", "separate"] = "shared"  # one codebook, or D of size K/D (App. C.3)
    downsample: int | None = None  # f (default: shapes 4; ffhq, imagenet 32 as in the paper)
    codebook_size: int | None = None  # K (default: shapes 16, ffhq 2048, imagenet 16384)
    ch: int | None = None  # encoder/decoder width (default: shapes 16, real datasets 64)
    code_dim: int | None = None  # d (default: shapes 64, real datasets 256 as in the paper)
    steps: int | None = None  # optimizer steps (default: shapes 1500, ffhq 100k, imagenet 500k)
    lr: float | None = None  # Adam learning rate (default: shapes 1e-3, real datasets 4e-4)

    def __post_init__(self):
        common.apply_preset(self, PRESETS, PRESETS["large"])  # the flags left unset
        super().__post_init__()
        K, D = self.codebook_size, self.depth
        splits = self.codebooks == "shared" or K % max(D, 1) == 0  # separate: D books of K/D codes
        common.require(
            (D >= 1, f"--depth must be at least 1, got {D}"),
            (splits, f"--codebooks separate: --codebook-size {K} is not divisible by --depth {D}"),
        )


if __name__ == "__main__":
    common.main(train, Config)
