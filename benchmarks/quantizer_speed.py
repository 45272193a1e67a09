"""Forward + backward time of our quantizers against vector-quantize-pytorch and a lower bound.

Ours: lesson 01's VectorQuantizer and lesson 02's ResidualQuantizer (D = 4, one shared codebook),
EMA codebook and dead-code restarts on, in training mode. Theirs: `VectorQuantize` and
`ResidualVQ(shared_codebook=True)` with the same K, d, D, EMA decay 0.99 and dead-code expiry
(`threshold_ema_dead_code=1`). The lower bound is the distance matmuls alone: D products
(N x d) @ (d x K) into a preallocated output. "search" is the part of our RQ step that the bound
models: D calls of lesson 01's `nearest_code` (the distance matmuls and each row's argmin), and
"rest" is everything else in the step (partial sums, commitment loss, EMA over the N x D residuals,
dead-code restarts, backward): the two columns say where the time above the bound goes. Each
ratio to the bound is the median of alternating (bound, ours) pairs, as timing.py explains. The other package is needed only here:
    pip install --no-deps vector-quantize-pytorch einx loguru torch-einops-utils frozendict
(--no-deps: its requirements would replace the CPU torch with a CUDA build.)

Run: python benchmarks/quantizer_speed.py [--N 4096] [--d 64 256] [--K 512 2048] [--repeats 5]
The full grid of the issue: --N 4096 16384 --K 512 2048 16384 (about an hour on 2 cores).
"""

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from timing import median_seconds, paired_seconds, use_device

import common

vq = common.lesson("01_vq")
rq = common.lesson("02_rq")


def ours(quantizer, z):
    """z: (N, d) -> forward + backward through the quantizer, as a training step does."""
    z_e = z.T.reshape(1, z.shape[1], -1, 1).clone().requires_grad_(True)  # (1, d, N, 1)

    def step():
        z_q, _, losses = quantizer(z_e)
        (z_q.square().mean() + losses["loss"]).backward()

    return step


def theirs(quantizer, z):
    x = z[None].clone().requires_grad_(True)  # (1, N, d)

    def step():
        quantized, _, commit = quantizer(x)
        (quantized.square().mean() + commit.sum()).backward()

    return step


def bound(z, K: int, D: int):
    codebook, out = torch.randn(K, z.shape[1]), torch.empty(z.shape[0], K)

    def step():
        for _ in range(D):
            torch.mm(z, codebook.t(), out=out)

    return step


def search(z, K: int, D: int):
    codebook = torch.randn(K, z.shape[1])

    def step():
        for _ in range(D):
            vq.nearest_code(z, codebook)

    return step


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--N", type=int, nargs="+", default=[4096], help="vectors per call")
    p.add_argument("--d", type=int, nargs="+", default=[64, 256], help="code dimensions")
    p.add_argument("--K", type=int, nargs="+", default=[512, 2048], help="codebook sizes")
    p.add_argument("--D", type=int, default=4, help="RQ depth")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per cell (median)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda when there is one)")
    p.add_argument("--theirs", action=argparse.BooleanOptionalAction, default=True,
                   help="also time vector-quantize-pytorch (--no-theirs: ours and the bound only)")  # fmt: skip
    args = p.parse_args()
    device = use_device(args.device)
    ResidualVQ = VectorQuantize = None
    if args.theirs:
        try:
            from vector_quantize_pytorch import ResidualVQ, VectorQuantize
        except ImportError:
            raise SystemExit(
                "needs vector-quantize-pytorch: see the install line at the top of this file (or pass --no-theirs)"
            ) from None
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; forward+backward, median of {args.repeats}, ms"
    )
    print("\n    N |   d |     K || VQ ours | VectorQuantize | speed-up || RQ D=4 ours | ResidualVQ | speed-up || bound | ours/bound | search/bound | rest/bound")  # fmt: skip
    for N in args.N:
        for d in args.d:
            for K in args.K:
                torch.manual_seed(0)
                z = torch.randn(N, d)
                kw = dict(decay=0.99, threshold_ema_dead_code=1)
                t = {
                    "vq": 1000 * median_seconds(ours(vq.VectorQuantizer(K, d).train(), z), args.repeats),
                    "VQ": 1000 * median_seconds(theirs(VectorQuantize(dim=d, codebook_size=K, **kw).train(), z), args.repeats)
                          if args.theirs else math.nan,
                    "RQ": 1000 * median_seconds(theirs(ResidualVQ(dim=d, codebook_size=K, num_quantizers=args.D,
                                                      shared_codebook=True, **kw).train(), z), args.repeats)
                          if args.theirs else math.nan,
                }  # fmt: skip
                # the ratios to the bound from alternating pairs: a slow spell hits both sides alike
                lower = bound(z, K, args.D)
                t["bound"], t["rq"], rq_ratio = paired_seconds(
                    lower, ours(rq.ResidualQuantizer(K, d, args.D).train(), z), args.repeats
                )
                search_ratio = paired_seconds(lower, search(z, K, args.D), args.repeats)[2]
                t["bound"], t["rq"] = 1000 * t["bound"], 1000 * t["rq"]
                print(f"{N:5d} | {d:3d} | {K:5d} || {t['vq']:7.1f} | {t['VQ']:14.1f} | {t['VQ'] / t['vq']:7.1f}x || "
                      f"{t['rq']:11.1f} | {t['RQ']:10.1f} | {t['RQ'] / t['rq']:7.1f}x || {t['bound']:5.1f} | "
                      f"{rq_ratio:9.2f}x | {search_ratio:11.2f}x | {rq_ratio - search_ratio:9.2f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
