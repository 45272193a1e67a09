"""Validation NLL and sample quality of lesson 04's prior against its order (beyond/code_orders.py).

One prior per order, all on the same frozen tokenizer with the same seed, data and flags; each is
trained by beyond/code_orders.py (lesson 04's loop) into <--out>/<order> and judged as lesson 04 judges every run: the
validation NLL against the argmin codes (bits per code) and samples.png by sample_quality.py
(class accuracy of the shapes classifier, shapes-FD against held-out images and its real-image
floor). Taming Fig. 47 reports the validation NLL of such orders on ImageNet, row-major lowest.
Finished orders are read back from their metrics.jsonl, so an interrupted sweep resumes.

Run: python benchmarks/code_order.py --tokenizer runs/04_rq_transformer/tokenizer/ckpt.pt \
         [--steps 1000] [--orders row-major z-curve ...] [--out runs/code_order]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common
from beyond import code_orders


def final_record(run: Path) -> dict | None:
    """The final record of a finished run's metrics.jsonl, or None."""
    return next((r for r in common.read_log(run) if r.get("final")), None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", required=True, help="the lesson 02/03 checkpoint every prior reads")
    p.add_argument(
        "--orders",
        nargs="+",
        default=list(code_orders.ORDERS),
        choices=code_orders.ORDERS,
        help="orders to train",
    )
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps of each prior")
    p.add_argument("--out", default="runs/code_order", help="one run folder per order in here")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    args, rest = p.parse_known_args(argv)  # anything else goes to lesson 04 (e.g. --width 256)
    if not Path(args.tokenizer).is_file():
        raise SystemExit(f"error: --tokenizer {args.tokenizer} is not a file")
    rows = []
    for order in args.orders:
        run = Path(args.out) / order
        if final_record(run) is None:
            flags = ["--tokenizer", args.tokenizer, "--order", order, "--steps", str(args.steps)]
            flags += ["--out", str(run), "--device", args.device, "--overwrite", *rest]
            code_orders.train(common.parse(code_orders.Config, flags))
        rows.append((order, final_record(run)))
    print(f"\n{args.steps} steps each, tokenizer {args.tokenizer}\n")
    print("| order | val NLL (bits per code) | class accuracy | shapes-FD (floor) |")
    print("|---|---|---|---|")
    for order, r in rows:
        fd = f"{r['sample_shapes_fd']:.1f} ({r['sample_shapes_fd_floor']:.1f})"
        print(f"| {order} | {r['val_bits_per_code']:.4f} | {r['sample_class_acc']:.1%} | {fd} |")


if __name__ == "__main__":
    try:
        main()
    except common.UserError as e:
        raise SystemExit(f"error: {e}") from None
