"""Sampling speed of VAR's next-scale transformer (beyond/var.py) against lesson 04's RQ-Transformer.

Both untrained (speed does not depend on the weights), each at its default on the built-in shapes:
lesson 04 on 8x8x2 codes of K = 16 (3 spatial + 1 depth layers), VAR on the scales 1..8 of an 8x8
latent with K = 64 (4 layers), both 128 wide, both with classifier-free guidance (scale 2, which
doubles the batch) and their key/value caches. Sampling only: decoding the codes to pixels costs
the same for both. Network calls are counted with forward hooks on the transformer stacks.

Run: python benchmarks/var_sampling_speed.py [--batch 16 64] [--repeats 3] [--device cpu]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from timing import paired_seconds, use_device

import common

ar = common.lesson("04_rq_transformer")
from beyond import var  # noqa: E402


def calls(model, stacks, c) -> int:
    """How many times the transformer stacks run while model.sample(c) draws one batch."""
    count = []
    hooks = [s.register_forward_hook(lambda *a: count.append(1)) for s in stacks]
    model.sample(c, guidance=2.0)
    for h in hooks:
        h.remove()
    return len(count)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[16, 64], help="images per sampling call")
    p.add_argument("--repeats", type=int, default=3, help="timed pairs (median)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda when there is one)")
    args = p.parse_args()
    device, _ = use_device(args.device), torch.manual_seed(0)
    rqt = ar.RQTransformer(torch.randn(16, 64), 64, 2, ar.Config(), 8).eval()
    scales = var.default_scales(8)
    nsp = var.NextScaleTransformer(var.MultiScaleQuantizer(64, 64, scales), var.Config(), 8).eval()
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; guidance 2, sampling only"
    )
    print(f"VAR scales {scales}: {nsp.L} codes per image; RQ-Transformer 8x8x2: 128 codes per image\n")
    print("batch | RQ-Transformer img/s | calls | VAR img/s | calls | VAR speed-up")
    for B in args.batch:
        c = torch.arange(B) % 8
        n_rq, n_var = calls(rqt, [rqt.spatial, rqt.depth], c), calls(nsp, [nsp.gpt], c)
        t_rq, t_var, ratio = paired_seconds(lambda: rqt.sample(c, guidance=2.0), lambda: nsp.sample(c, guidance=2.0),
                                            args.repeats)  # fmt: skip
        print(f"{B:5d} | {B / t_rq:20.1f} | {n_rq:5d} | {B / t_var:9.1f} | {n_var:5d} | {1 / ratio:11.1f}x")


if __name__ == "__main__":
    main()
