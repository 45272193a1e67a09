"""Sampling speed of the RQ-Transformer against a flattened GPT over the same codes (beyond/flat_gpt.py).

Both models are lesson 04's, untrained (speed does not depend on the weights), at equal width and
equal total layers: spatial + depth layers for the RQ-Transformer, as many for the flat GPT, which
reads the T*D codes of an image one at a time. Both use their KV caches and the same sampler.
Codes per image are equal (T*D); the paper's shapes, 8x8x4 against VQ-GAN's 16x16x1, give the
flat GPT the same 256-token sequence as 8x8x4 unfolded, so one table covers both comparisons.

Run: python benchmarks/ar_sampling_speed.py [--K 1024 2048] [--batch 16 64 128] [--repeats 3] [--threads 1]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from timing import median_seconds, paired_seconds, use_device

import common

ar = common.lesson("04_rq_transformer")
from beyond.flat_gpt import FlatTransformer  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--K", type=int, nargs="+", default=[1024, 2048], help="codebook sizes")
    p.add_argument("--batch", type=int, nargs="+", default=[16, 64, 128], help="images per sampling call")
    p.add_argument("--T", type=int, default=64, help="positions per image (8x8)")
    p.add_argument("--D", type=int, default=4, help="codes per position")
    p.add_argument("--width", type=int, default=256, help="transformer width")
    p.add_argument("--spatial-layers", type=int, default=6, help="RQ spatial layers")
    p.add_argument("--depth-layers", type=int, default=2, help="RQ depth layers (flat GPT: spatial + depth)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda when there is one)")
    args = p.parse_args()
    device = use_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ar.Config(
        width=args.width,
        heads=8,
        spatial_layers=args.spatial_layers,
        depth_layers=args.depth_layers,
        dropout=0.0,
    )
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; T={args.T} D={args.D} width {args.width}, "
        f"RQ {args.spatial_layers}+{args.depth_layers} layers vs flat {args.spatial_layers + args.depth_layers}"
    )
    print("\n   K | batch | RQ img/s | flat img/s | ratio || train step ms (batch 64): RQ | flat")
    for K in args.K:
        codebook = torch.randn(K, 64)
        rqt = ar.RQTransformer(codebook, args.T, args.D, cfg, 1).eval()
        flat = FlatTransformer(codebook, args.T, args.D, cfg, 1).eval()
        train_ms = []
        for m in (rqt, flat):
            m.train()
            codes, c = torch.randint(K, (64, args.T, args.D)), torch.zeros(64, dtype=torch.long)
            train_ms.append(
                1000 * median_seconds(lambda m=m: ar.nll(m(codes, c), codes).backward(), args.repeats)
            )
            m.eval()
        for B in args.batch:
            c = torch.zeros(B, dtype=torch.long)
            t_rq, t_flat, ratio = paired_seconds(lambda: rqt.sample(c), lambda: flat.sample(c), args.repeats)
            print(
                f"{K:5d} | {B:5d} | {B / t_rq:8.1f} | {B / t_flat:10.1f} | {ratio:4.1f}x || {train_ms[0]:.0f} | {train_ms[1]:.0f}"
            )
        where_time_goes(rqt, flat, K, 64, args)


@torch.no_grad()
def where_time_goes(rqt, flat, K: int, B: int, args) -> None:
    """Each component timed on its own for one image batch: how the sampling time splits."""
    W, T, D, n = args.width, args.T, args.D, args.repeats
    x = torch.randn(B, 1, W)

    def spatial():
        caches = rqt.spatial.caches(B, T, x.device)
        for _ in range(T):
            rqt.spatial(x, caches)

    def depth():
        for _ in range(T):
            caches = rqt.depth.caches(B, D, x.device)
            for _ in range(D):
                rqt.depth(x, caches)

    def flat_gpt():
        caches = flat.gpt.caches(B, T * D, x.device)
        for _ in range(T * D):
            flat.gpt(x, caches)

    def head_and_draw():  # one K-way head and draw per code, the same in both models
        for _ in range(T * D):
            ar.sample_logits(rqt.head(x[:, 0]))

    parts = {name: median_seconds(fn, n) for name, fn in
             [("spatial stack", spatial), ("depth stack", depth), ("flat stack", flat_gpt), ("head + draw", head_and_draw)]}  # fmt: skip
    rq_total = parts["spatial stack"] + parts["depth stack"] + parts["head + draw"]
    flat_total = parts["flat stack"] + parts["head + draw"]
    print(f"      where the time goes at K={K}, batch {B} (components timed alone, seconds per batch):")
    print(
        f"        RQ:   spatial {parts['spatial stack']:.3f} ({T} steps) + depth {parts['depth stack']:.3f} ({T * D} steps of {D}-long caches)"
        f" + head/draw {parts['head + draw']:.3f} ({T * D} x {K}-way) = {rq_total:.3f}"
    )
    print(
        f"        flat: stack {parts['flat stack']:.3f} ({T * D} steps, caches up to {T * D}) + head/draw {parts['head + draw']:.3f} = {flat_total:.3f}"
    )
    # One layer-step = one block applied to one new position of every image. The two models do
    # the same work per layer-step except attention, whose cost grows with the cache length.
    steps = {"spatial stack": T * args.spatial_layers, "depth stack": T * D * args.depth_layers,
             "flat stack": T * D * (args.spatial_layers + args.depth_layers)}  # fmt: skip
    per_step = {k: 1000 * parts[k] / count for k, count in steps.items()}
    rq_steps = steps["spatial stack"] + steps["depth stack"]
    print(
        f"        layer-steps: RQ {rq_steps} against flat {steps['flat stack']} ({steps['flat stack'] / rq_steps:.2f}x fewer);"
        f" ms per layer-step: spatial {per_step['spatial stack']:.2f}, depth {per_step['depth stack']:.2f},"
        f" flat {per_step['flat stack']:.2f} (the flat GPT's longer caches cost it in attention)"
    )
    bound = {"RQ": matmul_bound(rqt, [(rqt.spatial, T), (rqt.depth, T * D)], B, T * D, n),
             "flat": matmul_bound(flat, [(flat.gpt, T * D)], B, T * D, n)}  # fmt: skip
    print(
        f"        matmul bound (each layer-step's four weight products and each code's head, nothing else):"
        f" RQ {bound['RQ']:.3f} s (its time is {rq_total / bound['RQ']:.2f}x that), flat {bound['flat']:.3f} s"
        f" ({flat_total / bound['flat']:.2f}x); ratio of the bounds {bound['flat'] / bound['RQ']:.2f}x"
    )


def matmul_bound(model, stacks, B: int, codes: int, repeats: int) -> float:
    """Seconds of the matrix products a sampling call cannot avoid: for each layer-step of each
    stack (stack, steps), the block's qkv, proj and two MLP products of B rows with the model's own
    weights, plus one head product per code, into preallocated outputs (no attention, no
    LayerNorm, GELU, draw or Python around them)."""
    weights = [[b.qkv.weight.t(), b.proj.weight.t(), b.mlp[0].weight.t(), b.mlp[2].weight.t()]
               for stack, _ in stacks for b in stack.blocks]  # fmt: skip
    ins = {w.shape[0]: torch.randn(B, w.shape[0]) for ws in weights for w in ws}
    outs = {w.shape[1]: torch.empty(B, w.shape[1]) for ws in weights for w in ws}
    head = model.head[1].weight.t()
    x_head, out_head = torch.randn(B, head.shape[0]), torch.empty(B, head.shape[1])

    def run():
        i = 0
        for stack, steps in stacks:
            for _ in range(steps):
                for ws in weights[i : i + len(stack.blocks)]:
                    for w in ws:
                        torch.mm(ins[w.shape[0]], w, out=outs[w.shape[1]])
            i += len(stack.blocks)
        for _ in range(codes):
            torch.mm(x_head, head, out=out_head)

    return median_seconds(run, repeats)


if __name__ == "__main__":
    main()
