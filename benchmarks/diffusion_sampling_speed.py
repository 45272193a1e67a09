"""Sampling speed of VQ-Diffusion against stride dt, and against lesson 04's autoregressive samplers.

All models untrained (speed does not depend on the weights), at the same width and total layers,
on the same code grid (an 8x8 grid of D codes from a K-code tokenizer):
  - VQ-Diffusion (lesson 05): T = 100 steps, ceil(T / dt) calls of a bidirectional transformer
    over all 64 positions, truncation r = 0.86;
  - RQ-Transformer (lesson 04): 64 spatial steps + 64*D depth steps, with KV caches;
  - flattened GPT (beyond/flat_gpt.py, "VQ-AR" in the paper): 64*D steps, with a KV cache.
The paper reports VQ-Diffusion with fast inference 15x faster than a VQ-AR model of the same size.

Run: python benchmarks/diffusion_sampling_speed.py [--strides 1 2 5 10 20] [--batch 16] [--K 1024]
"""

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from timing import median_seconds, use_device

import common

ar = common.lesson("04_rq_transformer")
from beyond.flat_gpt import FlatTransformer  # noqa: E402

vqd = common.lesson("05_vq_diffusion")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strides", type=int, nargs="+", default=[1, 2, 5, 10, 20], help="dt values")
    p.add_argument("--batch", type=int, default=16, help="images per sampling call")
    p.add_argument("--K", type=int, default=1024, help="codebook size")
    p.add_argument("--D", type=int, default=4, help="codes per position (tokenizer depth)")
    p.add_argument("--H", type=int, default=8, help="code grid side (H x H positions)")
    p.add_argument("--width", type=int, default=256, help="width of every transformer")
    p.add_argument("--layers", type=int, default=8, help="layers: diffusion and flat; RQ: layers-2 + 2")
    p.add_argument("--steps-T", type=int, default=100, help="diffusion steps T")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats per cell (median)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda when there is one)")
    return p.parse_args()


def main():
    args = parse_args()
    device = use_device(args.device)
    torch.manual_seed(0)
    B, K, D, H = args.batch, args.K, args.D, args.H
    c = torch.zeros(B, dtype=torch.long)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; batch {B}, {H}x{H}x{D} codes, K={K}, "
          f"width {args.width}, {args.layers} layers (RQ: {args.layers - 2}+2), T={args.steps_T}")  # fmt: skip

    dcfg = vqd.Config(width=args.width, heads=8, layers=args.layers, steps_T=args.steps_T)
    diffusion = vqd.DiffusionTransformer(K, H, D, dcfg, 1).eval()
    sched = vqd.noise_schedule(args.steps_T, K, dcfg.gamma_end, 1 - dcfg.gamma_end)
    acfg = ar.Config(width=args.width, heads=8, spatial_layers=args.layers - 2, depth_layers=2)
    codebook = torch.randn(K, 64)
    rqt = ar.RQTransformer(codebook, H * H, D, acfg, 1).eval()
    flat = FlatTransformer(codebook, H * H, D, acfg, 1).eval()

    timings = {}
    with torch.no_grad():
        x_t, t = torch.randint(K + 1, (B, H * H, D)), torch.full((B,), 50)
        call = median_seconds(lambda: diffusion(x_t, t, c), 3)
        logits = diffusion(x_t, t, c).float().log_softmax(-1)
        parts = {}
        # an untrained network's p(x_0 | x_t) is nearly flat (r = 0.86 keeps hundreds of codes);
        # a trained one's is peaked: the same logits x 20 keep a few, as late in sampling
        for kind, lg in [("untrained", logits), ("peaked", (20 * logits).log_softmax(-1))]:
            kept = ar.filter_logits(lg, top_p=0.86)
            post = vqd.log_q_posterior(kept.log_softmax(-1), x_t, sched, 50, 49)
            parts[kind] = (
                median_seconds(lambda lg=lg: ar.filter_logits(lg, top_p=0.86), 3),
                median_seconds(lambda k=kept: vqd.log_q_posterior(k.log_softmax(-1), x_t, sched, 50, 49), 3),
                median_seconds(lambda p=post: ar.sample_logits(p.reshape(-1, K + 1)), 3),
                torch.isfinite(kept).sum(-1).float().mean().item(),
            )
    for name, fn in [
        ("RQ-Transformer", lambda: rqt.sample(c)),
        ("flat GPT (VQ-AR)", lambda: flat.sample(c)),
    ]:
        timings[name] = median_seconds(fn, args.repeats)
    print("\nsampler                      | network calls | s per batch | images/s | vs RQ-AR | vs flat AR")
    for dt in args.strides:
        seconds = median_seconds(
            lambda dt=dt: vqd.sample(diffusion, sched, c, stride=dt, truncation=0.86), args.repeats
        )
        calls = math.ceil(args.steps_T / dt)
        print(f"VQ-Diffusion dt={dt:<3d}           | {calls:13d} | {seconds:11.2f} | {B / seconds:8.1f} | "
              f"{timings['RQ-Transformer'] / seconds:7.2f}x | {timings['flat GPT (VQ-AR)'] / seconds:9.2f}x")  # fmt: skip
    for name, seconds in timings.items():
        calls = H * H * (D + 1) if name.startswith("RQ") else H * H * D
        print(f"{name:28s} | {calls:13d} | {seconds:11.2f} | {B / seconds:8.1f} |")
    print(
        f"\nwhere a diffusion step goes (over {B}x{H * H}x{D} codes x {K + 1} states): network {call:.3f} s, and"
    )
    for kind, (trunc, post, draw, kept) in parts.items():
        print(
            f"  {kind:9s} p(x_0 | x_t), {kept:6.1f} codes kept: truncation {trunc:.3f} + posterior {post:.3f}"
            f" + draw {draw:.3f} = {trunc + post + draw:.3f} s outside the network"
        )


if __name__ == "__main__":
    main()
