"""Inpainting with lesson 05: known codes held clean at every step, or re-noised (beyond/repaint.py).

Loads a trained `05_vq_diffusion.py` run, hides the centre square (half the side) of the code
grid of validation images, completes it with both variants and reports, over the hidden codes:
how many equal the original's (the built-in shapes are mostly background, so a good completion
recovers many), and the PSNR of the hidden pixels against the original image. A completion may
differ from the original and still be right; both numbers reward agreeing with the image around it.

Run: python benchmarks/inpaint_renoise.py --run runs/05_vq_diffusion [--images 128] [--stride 1]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sample_sweep import load_prior

import common
from common import stage2

ar = common.lesson("04_rq_transformer")
vqd = common.lesson("05_vq_diffusion")
from beyond.repaint import renoised  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/05_vq_diffusion", help="a 05_vq_diffusion.py run folder")
    p.add_argument("--images", type=int, default=128, help="validation images to complete")
    p.add_argument("--stride", type=int, default=1, help="dt of the reverse chain")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    args = p.parse_args()
    torch.set_num_threads(2)
    name, cfg, model, tok, H, val, sched, _ = load_prior(Path(args.run))
    if name != "05_vq_diffusion":
        raise SystemExit(f"{args.run} is a run of {name}; inpainting needs a 05_vq_diffusion.py run")
    x, y = common.first_images(val, args.images)
    codes, _ = ar.encode(tok, x)
    lo, hi = H // 4, H - H // 4
    hidden = stage2.centre_square(H).flatten()[None, :, None].expand_as(codes)
    px = x.shape[-1] // H
    print(f"{args.images} images, {int(hidden[0].sum())} hidden codes each, stride {args.stride}")
    print("| known codes | hidden codes equal to the original | PSNR of hidden pixels (dB) |")
    print("|---|---|---|")
    for renoise, hold in ((False, vqd.keep), (True, renoised(sched))):
        torch.manual_seed(args.seed)
        filled = torch.cat([
            vqd.sample(model, sched, yb, args.stride, cfg.truncation, hold=hold(cb.masked_fill(hidden[: len(cb)], -1)))
            for cb, yb in zip(codes.split(32), y.split(32))
        ])  # fmt: skip
        agree = (filled == codes)[hidden].float().mean().item()
        images = stage2.decode(tok, filled, H)
        crop = lambda im: im[:, :, lo * px : hi * px, lo * px : hi * px]
        psnr = common.psnr(crop(x), crop(images)).mean().item()
        name = "re-noised (RePaint)" if renoise else "clean at every step"
        print(f"| {name} | {agree:.1%} | {psnr:.2f} |")


if __name__ == "__main__":
    main()
