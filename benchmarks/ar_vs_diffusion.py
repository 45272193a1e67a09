"""Autoregressive (lesson 04) against discrete diffusion (lesson 05) on the SAME tokenizer.

Trains both priors with their lessons' defaults (or the flags given after `--`, passed to both)
on one frozen tokenizer, then prints one table: validation NLL (04: exact; 05: its variational
bound) in bits per code, class accuracy, confidence and shapes-FD of class-conditional samples
(sample_quality.py), training wall time, and sampling time per image with the number of network
calls: 04 at one setting, 05 at several strides dt (ceil(T / dt) calls) and by MaskGIT's sampler
(beyond/maskgit.py) at a few numbers of calls. 05's bound is summed over all T steps (no estimator
noise from a few t).

Run: python benchmarks/ar_vs_diffusion.py --tokenizer runs/02_rq/ckpt.pt [--strides 1 5 20] [--maskgit 10 25]
         [--out runs/ar_vs_diffusion] [-- --steps 3000]
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sample_sweep import load_prior

import common
import sample_quality
from beyond import maskgit
from common import stage2

ar = common.lesson("04_rq_transformer")
vqd = common.lesson("05_vq_diffusion")


def final_record(run: Path) -> dict:
    return [r for r in common.read_log(run) if r.get("final")][-1]


def judge(name, cfg, model, tok, H, val, sched, n, per_class, stride=None, calls=None):
    c = torch.arange(n).repeat_interleave(per_class)
    torch.manual_seed(0)
    start = time.perf_counter()
    if sched is None:
        codes, _ = model.sample(c, cfg.temperature, cfg.top_k, cfg.top_p, cfg.guidance)
        calls = model.T * (1 + model.D)  # spatial steps + depth steps (layer stacks run)
    elif calls is not None:  # MaskGIT's sampler
        codes = maskgit.sample_maskgit(model, sched, c, calls, 4.5, cfg.truncation, cfg.guidance)
    else:
        codes = vqd.sample(model, sched, c, stride, cfg.truncation, guidance=cfg.guidance)
        calls = math.ceil(sched.T / stride)
    seconds = (time.perf_counter() - start) / len(c)
    q = sample_quality.judge(stage2.decode(tok, codes, H), c, val, cfg.dataset)
    return q, seconds, calls


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", required=True, help="a lesson 02/03 checkpoint both priors use")
    p.add_argument("--out", default="runs/ar_vs_diffusion", help="folder for the two runs")
    p.add_argument("--strides", type=int, nargs="+", default=[1, 5, 20], help="05: dt values")
    p.add_argument("--maskgit", type=int, nargs="+", default=[10, 25], help="05: MaskGIT sampler's calls")
    p.add_argument("--per-class", type=int, default=16, help="judged samples of each class")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    vqd.EVAL_TIMESTEPS = 10**6  # 05's validation bound over every t in 1..T
    rows = []
    for lesson, name in ((ar, "04_rq_transformer"), (vqd, "05_vq_diffusion")):
        run = Path(args.out) / name
        flags = ["--tokenizer", args.tokenizer, "--out", str(run), "--overwrite", *extra]
        cfg = common.parse(lesson.Config, flags)
        start = time.perf_counter()
        lesson.train(cfg)
        train_s = time.perf_counter() - start
        rec = final_record(run)
        bits = rec["val_bits_per_code"] if name.startswith("04") else rec["val_vlb"] / math.log(2)
        prior = load_prior(run)
        for stride in [None] if name.startswith("04") else args.strides:
            q, seconds, calls = judge(*prior[:-1], prior[-1], args.per_class, stride)
            label = "RQ-Transformer (04)" if stride is None else f"VQ-Diffusion (05), dt = {stride}"
            rows.append((label, bits, q, train_s, seconds, calls))
        for calls in [] if name.startswith("04") else args.maskgit:
            q, seconds, calls = judge(*prior[:-1], prior[-1], args.per_class, calls=calls)
            rows.append(("VQ-Diffusion (05), MaskGIT sampler", bits, q, train_s, seconds, calls))
    print(f"\ntokenizer {args.tokenizer}; {args.per_class} samples of each class per row")
    print("| prior | bits per code (05: bound) | class accuracy | confidence | shapes-FD (floor) "
          "| training | s per image | network calls |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for label, bits, q, train_s, seconds, calls in rows:
        print(f"| {label} | {bits:.3f} | {100 * q['class_acc']:.1f} % | {q['confidence']:.2f} | "
              f"{q['shapes_fd']:.2f} ({q['shapes_fd_floor']:.2f}) | {train_s / 60:.1f} min | "
              f"{seconds:.3f} | {calls} |")  # fmt: skip
    (Path(args.out) / "table.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
