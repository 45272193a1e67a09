"""RQ paper Table 4 and 6 in miniature: validation PSNR against depth at a fixed K, VQ with a larger
K, and shared against separate codebooks, all at equal steps on the built-in shapes dataset.

Run: python benchmarks/rq_depth_sweep.py [--steps 1500] [--out runs/sweep]
Prints a table and writes runs/sweep/<name>/ (one 02_rq.py run folder each).
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common

rq = common.lesson("02_rq")

RUNS = {  # name: flags of 02_rq.Config
    "D=1 K=16": dict(depth=1),
    "D=2 K=16": dict(depth=2),
    "D=4 K=16": dict(depth=4),
    "D=8 K=16": dict(depth=8),
    "D=1 K=256": dict(depth=1, codebook_size=256),
    "D=4 K=16 separate": dict(depth=4, codebooks="separate"),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1500, help="training steps per run")
    p.add_argument("--out", default="runs/sweep", help="parent folder of the run folders")
    p.add_argument("--only", nargs="*", default=None, help="names of runs to do (default: all)")
    args = p.parse_args()
    rows = []
    for name, flags in RUNS.items():
        if args.only and name not in args.only:
            continue
        out = Path(args.out) / name.replace(" ", "_").replace("=", "")
        start = time.time()
        rq.train(rq.Config(steps=args.steps, out=str(out), overwrite=True, **flags))
        final = [json.loads(line) for line in open(out / "metrics.jsonl")][-1]
        rows.append((name, time.time() - start, final))
    print(
        "\nrun               | wall s | val PSNR | PSNR of each partial depth d = 1..D | usage by depth | mean code norm by depth"
    )
    for name, secs, f in rows:
        per_depth = {
            key: " ".join(f"{r[key]:.2f}" for r in f["partial_depth"])
            for key in ("psnr", "usage", "mean_code_norm")
        }
        print(
            f"{name:17s} | {secs:6.0f} | {f['val_psnr']:8.2f} | {per_depth['psnr']} | {per_depth['usage']} | {per_depth['mean_code_norm']}"
        )


if __name__ == "__main__":
    main()
