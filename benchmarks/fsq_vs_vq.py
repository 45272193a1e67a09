"""Do you need a codebook? VQ (lesson 02 at depth 1: lesson 01's quantizer with EMA and restarts),
RQ (lesson 02), FSQ and residual FSQ (beyond/fsq.py) on the same autoencoder, at equal bits per
position, on the built-in shapes-plain data; then lesson 04's prior on each tokenizer.

Run: python benchmarks/fsq_vs_vq.py [--bits 8 12] [--steps 1500] [--prior-steps 1000] [--out runs/fsq_vs_vq]
Prints one table (and writes it to <out>/table.json) and <out>/recon.png: the same validation
images through every tokenizer. --prior-steps 0 skips the priors.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common
import stage1
from beyond import fsq

rq = common.lesson("02_rq")
ar = common.lesson("04_rq_transformer")

TOKENIZERS = {  # bits per position: {name: (train, Config, flags)}, every row prod(K) = 2^bits
    8: {
        "VQ K=256": (rq.train, rq.Config, dict(depth=1, codebook_size=256)),
        "RQ K=16 D=2": (rq.train, rq.Config, dict(depth=2, codebook_size=16)),
        "FSQ 4 4 4 4": (fsq.train, fsq.Config, dict(levels=(4, 4, 4, 4))),
        "RFSQ 4 4 D=2": (fsq.train, fsq.Config, dict(levels=(4, 4), depth=2)),
    },
    12: {
        "VQ K=4096": (rq.train, rq.Config, dict(depth=1, codebook_size=4096)),
        "RQ K=64 D=2": (rq.train, rq.Config, dict(depth=2, codebook_size=64)),
        "FSQ 8 8 8 8": (fsq.train, fsq.Config, dict(levels=(8, 8, 8, 8))),
        "RFSQ 8 8 D=2": (fsq.train, fsq.Config, dict(levels=(8, 8), depth=2)),
    },
}


def compare(bits=(8, 12), steps=1500, prior_steps=1000, out="runs/fsq_vs_vq", only=None) -> list[dict]:
    """Train every tokenizer of each budget (and lesson 04's prior on it); one row each."""
    rows = []
    for b in bits:
        for name, (train, Config, flags) in TOKENIZERS[b].items():
            if only and name not in only:
                continue
            folder = Path(out) / name.replace(" ", "_").replace("=", "")
            every = min(100, steps)  # a log record with the seconds of training alone
            cfg = Config(dataset="shapes-plain", steps=steps, log_every=every, out=str(folder / "tokenizer"),
                         overwrite=True, **flags)  # fmt: skip
            train(cfg)
            log = common.read_log(folder / "tokenizer")
            final, last = log[-1], [r for r in log if not r.get("final")][-1]
            K, D = cfg.codebook_size, cfg.depth
            row = dict(bits=b, name=name, K=K, D=D, psnr=final["val_psnr"], used=round(final["val_usage"] * K),
                       perplexity=final["val_perplexity"], s_per_step=last["seconds"] / last["step"])  # fmt: skip
            if prior_steps:
                prior = ar.Config(tokenizer=str(folder / "tokenizer" / "ckpt.pt"), steps=prior_steps,
                                  out=str(folder / "prior"), overwrite=True)  # fmt: skip
                ar.train(prior)
                p = common.read_log(folder / "prior")[-1]
                row.update(prior_bits_per_position=p["val_bits_per_code"] * D, class_acc=p["sample_class_acc"],
                           shapes_fd=p["sample_shapes_fd"])  # fmt: skip
            rows.append(row)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "table.json").write_text(json.dumps(rows, indent=1))
    recon_figure(rows, out)
    return rows


@torch.no_grad()
def recon_figure(rows: list[dict], out) -> None:
    """<out>/recon.png: 8 validation images (first column), then each tokenizer's reconstruction."""
    columns, titles = None, ["original"]
    for row in rows:
        tok, cfg = stage1.load_tokenizer(
            Path(out) / row["name"].replace(" ", "_").replace("=", "") / "tokenizer" / "ckpt.pt"
        )
        if columns is None:
            x = common.first_images(common.load_data(cfg)[1], 8)[0]
            columns = [x]
        columns.append(tok(x)[0].clamp(-1, 1))
        titles.append(row["name"])
    common.save_titled_grid(torch.stack(columns, 1), titles, Path(out) / "recon.png")


def table(rows: list[dict]) -> str:
    head = "| bits | tokenizer | val PSNR dB | codes used / available | perplexity | s/step | prior bits/position | class acc. | shapes-FD |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        prior = (f"{r['prior_bits_per_position']:.2f} | {100 * r['class_acc']:.1f} % | {r['shapes_fd']:.1f}"
                 if "class_acc" in r else "- | - | -")  # fmt: skip
        lines.append(f"| {r['bits']} | {r['name']} | {r['psnr']:.2f} | {r['used']} / {r['K']}{' (all depths)' if r['D'] > 1 else ''} | "
                     f"{r['perplexity']:.1f} | {r['s_per_step']:.3f} | {prior} |")  # fmt: skip
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bits", type=int, nargs="+", default=[8, 12], choices=sorted(TOKENIZERS), help="budgets")
    p.add_argument("--steps", type=int, default=1500, help="tokenizer steps (lesson 02's default on shapes)")
    p.add_argument(
        "--prior-steps", type=int, default=1000, help="lesson 04 steps per prior (its default: 3000)"
    )
    p.add_argument("--out", default="runs/fsq_vs_vq", help="parent folder of the run folders")
    p.add_argument("--only", nargs="*", default=None, help="names of tokenizers to do (default: all)")
    args = p.parse_args()
    start = time.time()
    rows = compare(args.bits, args.steps, args.prior_steps, args.out, args.only)
    print(table(rows))
    print(
        f"total {math.ceil((time.time() - start) / 60)} min; table in {args.out}/table.json, figure {args.out}/recon.png"
    )


if __name__ == "__main__":
    main()
