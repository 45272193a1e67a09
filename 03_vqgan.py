"""Lesson 03: VQGAN, a tokenizer trained with a patch discriminator and a perceptual loss.

Paper: P. Esser, R. Rombach, B. Ommer, "Taming Transformers for High-Resolution Image Synthesis"
(arXiv:2012.09841), Sec. 3.2; RQ-VAE (arXiv:2203.01941) trains its RQ tokenizer the same way.

Idea. An autoencoder trained on pixel error alone (lessons 01-02) averages what it cannot encode
and comes out blurry. VQGAN adds two critics: LPIPS, a distance between deep VGG16 features that
tracks perceived similarity, and a patch discriminator D that labels every patch of an image as
real or reconstructed; the decoder learns to fool it, so fine texture comes back. The adversarial
term is scaled by an adaptive weight lambda that balances its gradient against the reconstruction
gradient at the decoder's last layer. The bottleneck is lesson 02's residual quantizer (depth 1
is plain VQ), inside a bigger encoder/decoder with GroupNorm, Swish and self-attention.

Notation (as lessons 01-02; new here):
    symbol     code name        shape
    D(x)       disc(x)          (B, 1, h', w')   one logit per image patch
    L_rec      rec              scalar           L1 (or L2) pixel loss + perceptual weight * LPIPS
    L_GAN      g_loss           scalar           -mean D(x^): the generator's adversarial loss
    lambda     lam              scalar           adaptive weight, detached
    G_L        last_layer       weight tensor    the decoder's last conv

Run: python 03_vqgan.py --perceptual-weight 0      (on a CPU with no LPIPS weights cached)
Next: 04_rq_transformer.py
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common.lpips import LPIPS
from common.vqgan_nets import Decoder, Encoder, Norm

vq = common.lesson("01_vq")  # VQVAE, finish (validation, recon.png): lesson 01
rq = common.lesson("02_rq")  # ResidualQuantizer, report (coarse-to-fine figure): lesson 02

# --- losses ---


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: 1/2 (E[relu(1 - D(x))] + E[relu(1 + D(x^))]); 0 beyond the margins."""
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss for D: 1/2 (E[-log sigmoid D(x)] + E[-log(1 - sigmoid D(x^))])."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """L_GAN for the generator: -E[D(x^)] (taming and RQ-VAE use this with either D loss)."""
    return -logits_fake.mean()


def adaptive_weight(
    rec_loss, gan_loss, last_layer: torch.Tensor, delta: float = 1e-6, max_lambda: float = 1e4
):
    """lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + delta), clamped to [0, max] and detached.

    With this weight the adversarial gradient at the decoder's last layer G_L is as large as the
    reconstruction gradient, whatever the two losses' scales.
    deviation: the paper's delta is 1e-6; taming and RQ-VAE code use 1e-4 (and the same clamp 1e4).
    """
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    lam = g_rec.norm() / (g_gan.norm() + delta)
    return lam.clamp(0, max_lambda).detach()


# --- the model: taming's encoder and decoder (common/vqgan_nets.py), LPIPS (common/lpips.py) ---


class VQGAN(vq.VQVAE):
    """Encoder -> lesson 02's ResidualQuantizer (depth 1 = VQ) -> decoder; forward as lesson 01's."""

    def __init__(self, cfg: Config):
        nn.Module.__init__(self)
        size = common.default_image_size(cfg)
        net = (cfg.code_dim, cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions, size)
        self.encoder, self.decoder = Encoder(*net, cfg.z_channels), Decoder(*net, cfg.z_channels)
        self.quantizer = rq.make_quantizer(cfg)


build = VQGAN


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix): x: (B, 3, S, S) -> logits (B, 1, h', w'), one per overlapping patch."""

    def __init__(self, layers: int = 2, ch: int = 64, norm: str = "batch"):
        super().__init__()
        Nrm = nn.BatchNorm2d if norm == "batch" else Norm
        seq = [nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, layers + 1):  # layers-1 strided blocks, then one with stride 1
            prev, mult = mult, min(2**n, 8)
            seq += [
                nn.Conv2d(ch * prev, ch * mult, 4, 2 if n < layers else 1, 1, bias=False),
                Nrm(ch * mult),
                nn.LeakyReLU(0.2),
            ]
        seq.append(nn.Conv2d(ch * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)
        for m in self.modules():  # N(0, 0.02) init, norm scales N(1, 0.02)
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


# --- stage-1 tokenizers for lessons 04 and 05 ---


# --- training ---


def reconstruction_loss(x_hat, x, lpips, cfg: Config):
    """L_rec = pixel error (--rec-loss l1 or l2) + --perceptual-weight x LPIPS -> (L_rec, pixel, LPIPS)."""
    pixel = (x_hat - x).abs().mean() if cfg.rec_loss == "l1" else (x_hat - x).pow(2).mean()
    perceptual = lpips(x_hat, x).mean() if lpips is not None else torch.zeros((), device=x.device)
    return pixel + cfg.perceptual_weight * perceptual, pixel, perceptual


def discriminator_step(d_ddp, opt_d, x, x_hat, d_loss_fn, run, step: int, precision="auto") -> dict:
    """One step of D on real images and DETACHED reconstructions: none of its loss reaches G."""
    with common.autocast(x.device, precision):
        logits_real, logits_fake = d_ddp(x).float(), d_ddp(x_hat.detach()).float()
        d_loss = d_loss_fn(logits_real, logits_fake)
    run.check_finite(d_loss, step, "--lr")
    opt_d.zero_grad(set_to_none=True)  # also drops the grads G's step left on D
    d_loss.backward()
    opt_d.step()
    return {"d_loss": d_loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}


def train(cfg: Config) -> nn.Module:
    """Two players: the tokenizer (G) minimises L_rec + L_VQ + w lambda L_GAN, the patch
    discriminator (D) minimises its GAN loss on real images and DETACHED reconstructions."""
    common.echo(f"preset '{common.preset_name(cfg)}': the defaults of the flags left unset")
    device, rank, world, run, train_set, val_set = common.start(cfg)  # torchrun ranks, seed, run folder, data
    model = build(cfg).to(device)
    disc = PatchDiscriminator(cfg.disc_layers, cfg.disc_ch, cfg.disc_norm).to(device)
    lpips = LPIPS(pretrained=True).to(device) if cfg.perceptual_weight > 0 else None
    opt, opt_d = (torch.optim.Adam(m.parameters(), lr=cfg.lr, betas=(0.5, 0.9)) for m in (model, disc))
    d_loss_fn = hinge_d_loss if cfg.gan_loss == "hinge" else vanilla_d_loss
    start = run.restore(model=model, disc=disc, opt=opt, opt_d=opt_d)  # 0 unless --resume
    data = common.batches(train_set, cfg, start, rank, world)
    # under torchrun both players are DDP; G's adversarial term goes through the plain D
    g_ddp, d_ddp = common.compiled(common.wrap(model, device), cfg), common.wrap(disc, device)
    d_log = {}
    for step in run.steps(start):  # a progress bar; Ctrl-C / SIGTERM end it after a checkpoint
        x = next(data)[0].to(device, non_blocking=True)
        # before --disc-start a plain autoencoder; then D trains; --disc-warmup steps later its
        # loss also reaches G, so that G is never pushed by an untrained D (taming issue #44)
        d_on, g_on = step >= cfg.disc_start, step >= cfg.disc_start + cfg.disc_warmup
        with common.autocast(device, cfg.precision):  # bf16 on CUDA (see --precision)
            x_hat, codes, q = g_ddp(x)
            rec, pixel, perceptual = reconstruction_loss(x_hat.float(), x, lpips, cfg)  # L_rec
            loss = rec + q["loss"]  # + L_VQ (commitment; codebook by EMA)
            lam = torch.zeros((), device=device)
            if g_on:  # G also fools D, weighted by the adaptive lambda
                g_loss = generator_loss(disc(x_hat.float()).float())  # L_GAN
                lam = adaptive_weight(rec, g_loss, model.decoder.last_layer, max_lambda=cfg.max_lambda)
                loss = loss + cfg.disc_weight * lam * g_loss
        run.check_finite(loss, step + 1, "--lr or --disc-weight")  # before a NaN reaches a save
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if d_on:
            d_log = discriminator_step(d_ddp, opt_d, x, x_hat, d_loss_fn, run, step + 1, cfg.precision)
        if (step + 1) % cfg.log_every == 0:
            g_log = {"pixel": pixel, "perceptual": perceptual, "commit": q["commit"], "lam": lam}
            log = {"step": step + 1, **{k: v.item() for k, v in {**d_log, **g_log}.items()}}
            common.echo(f"step {step + 1} | " + " | ".join(f"{k} {v:.4g}" for k, v in list(log.items())[1:]))
            run.log(log)
        if run.save_due(step + 1):  # after --ckpt-minutes, at the end, on a signal
            states = dict(model=model, disc=disc, opt=opt, opt_d=opt_d)
            run.save(step + 1, **{k: v.state_dict() for k, v in states.items()})
    if common.is_main():  # metrics, recon.png, and for RQ (depth > 1) the coarse-to-fine figure
        depth = rq.report(model, val_set, run.dir, device, cfg) if cfg.depth > 1 else {}
        vq.finish(model, val_set, cfg, run, device, depth)
    return model


# --- config and command line ---

# Architecture each dataset implies for the flags left unset (RQ-VAE's FFHQ/ImageNet configs:
# ch 128, ch_mult 1,1,2,2,4,4 so 256 px -> 8 x 8, attention at 8; adversarial weight 0.75, lr 4e-5).
PAPER = dict(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(8,))
GPU = dict(disc_ch=64, batch_size=32, lr=4e-5)
NET = {
    "shapes": dict(ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(8,)),  # CPU
    "ffhq": {**PAPER, **GPU},
    "imagenet": {**PAPER, **GPU},
}
NET["shapes"].update(disc_ch=32, batch_size=32, lr=4e-4, steps=1500)
NET["shapes-plain"] = NET["small"] = NET["shapes"]  # small: paths and hub ids of <= 64 px
NET_OTHER = {**PAPER, "ch_mult": (1, 1, 2, 2, 4), "attn_resolutions": (16,), **GPU}  # f = 16
# all that --dataset sets, lesson 02's presets included (f follows from --ch-mult here)
without_f = lambda preset: {k: v for k, v in preset.items() if k != "downsample"}
PRESETS = {name: {**without_f(preset), **NET.get(name, NET_OTHER)} for name, preset in rq.PRESETS.items()}


@dataclass
class Config(rq.Config):
    PRESETS: ClassVar = PRESETS  # --help lists them
    out: str = "runs/03_vqgan"  # run folder: ckpt.pt, metrics.jsonl, recon.png, figures
    downsample: int | None = None  # f, implied by --ch-mult: 2^(levels - 1) (shapes 4, ffhq 32)
    ch: int | None = None  # base width (default: shapes 16, real datasets 128 as in the paper)
    lr: float | None = None  # Adam lr of both players (default: shapes 4e-4, real datasets 4e-5)
    ch_mult: tuple[int, ...] | None = None  # width per level; f = 2^(levels - 1) (shapes: 1 2 4)
    num_res_blocks: int | None = None  # ResBlocks per level (shapes 1, real datasets 2)
    attn_resolutions: tuple[int, ...] | None = None  # feature-map sizes with attention (shapes 8)
    z_channels: int | None = None  # released nets: encoder width, then 1x1 convs to --code-dim and back
    rec_loss: Literal["l1", "l2"] = "l1"  # pixel reconstruction loss
    perceptual_weight: float = 1.0  # LPIPS weight (0 = off: no VGG16 download needed)
    disc_weight: float = 0.75  # weight of lambda * L_GAN in the generator loss (RQ-VAE: 0.75)
    gan_loss: Literal["hinge", "vanilla"] = "hinge"  # discriminator loss
    disc_layers: int = 2  # PatchGAN strided layers (RQ-VAE 2, taming 3)
    disc_ch: int | None = None  # PatchGAN width of the first layer (shapes 32, real datasets 64)
    batch_size: int | None = None  # images per step (shapes 32, real datasets 32 per GPU)
    disc_norm: Literal["batch", "group"] = "batch"  # normalisation in the discriminator
    disc_start: int = 500  # step at which the discriminator starts to train
    disc_warmup: int = 200  # steps D trains alone before its loss reaches the generator
    max_lambda: float = 1e4  # clamp of the adaptive weight

    def __post_init__(self):
        accum = "--grad-accum is not supported by the two-player loop of lesson 03; raise --batch-size or use more processes"
        common.require((self.grad_accum == 1, accum))
        common.apply_preset(self, NET, NET_OTHER)  # the flags left unset
        implied, mult = 2 ** (len(self.ch_mult) - 1), " ".join(map(str, self.ch_mult))  # f from --ch-mult
        f = f"--downsample {self.downsample} contradicts --ch-mult {mult} (f = {implied})"
        common.require((self.downsample in (None, implied), f))
        self.downsample = implied
        super().__post_init__()
        common.require(
            (min(self.disc_start, self.disc_warmup, self.perceptual_weight, self.disc_weight) >= 0,
             "--disc-start, --disc-warmup, --perceptual-weight and --disc-weight must be >= 0"),
            (min(self.disc_layers, self.num_res_blocks, *self.ch_mult) >= 1,
             "--disc-layers, --num-res-blocks and --ch-mult values must be >= 1"),
        )  # fmt: skip


if __name__ == "__main__":
    common.main(train, Config)
