"""Sample quality of trained priors (lessons 04 and 05) against the sampling knobs, no retraining.

For each run folder given, draws --per-class samples of every class at each setting and judges
them with sample_quality.py (class accuracy, confidence, shapes-FD and its real-image floor):
  - 04: --guidance scales x --temperatures,
  - 05: --guidance scales x --truncations (VQD's r; the paper finds 0.86 best on CUB-200) at --stride.
Prints one markdown table per run, and the seconds per image of each setting.

Run: python benchmarks/sample_sweep.py runs/04_rq_transformer runs/05_vq_diffusion \
         [--guidance 1 2 3] [--temperatures 1.0] [--truncations 0.86] [--per-class 16]
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common
import sample_quality
import stage1
from common import stage2

ar = common.lesson("04_rq_transformer")
vqd = common.lesson("05_vq_diffusion")


def load_prior(run: Path):
    """(lesson name, cfg, model, tokenizer, H, val_set, sched or None) of a trained 04/05 run."""
    ckpt = common.load_checkpoint(run / "ckpt.pt")
    name = ckpt.get("lesson")
    if name not in ("04_rq_transformer", "05_vq_diffusion"):
        raise common.UserError(f"{run}/ckpt.pt was written by {name}, not by lesson 04 or 05")
    lesson = ar if name == "04_rq_transformer" else vqd
    known = {f.name for f in dataclasses.fields(lesson.Config)}  # flags that moved to beyond/ are dropped
    flags = {k: v for k, v in ckpt["config"].items() if k in known and k not in ("resume", "overwrite")}
    cfg = lesson.Config(**flags)
    tok, tok_cfg = stage1.load_tokenizer(ckpt["tokenizer"])
    q, H = tok.quantizer, common.default_image_size(tok_cfg) // tok_cfg.downsample
    _, val, classes = common.load_data(cfg)
    n = len(classes) if classes else 1
    if lesson is ar:
        model, sched = ar.RQTransformer(q.codebook, H * H, q.depth, cfg, n), None
    else:
        model = vqd.DiffusionTransformer(len(q.codebook), H, q.depth, cfg, n)
        sched = vqd.noise_schedule(cfg.steps_T, len(q.codebook), cfg.gamma_end, 1 - cfg.gamma_end)
    common.load_state(model, ckpt["model"], run / "ckpt.pt")
    return name, cfg, model.eval(), tok, H, val, sched, n


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders of 04_rq_transformer.py / 05_vq_diffusion.py")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0], help="CFG scales")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0], help="04: temperatures")
    p.add_argument("--truncations", type=float, nargs="+", default=[0.86], help="05: truncation r")
    p.add_argument("--stride", type=int, default=1, help="05: dt of the reverse chain")
    p.add_argument("--per-class", type=int, default=16, help="samples of each class per setting")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the same for every setting)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for run in map(Path, args.runs):
        name, cfg, model, tok, H, val, sched, n = load_prior(run)
        c = torch.arange(n).repeat_interleave(args.per_class)
        second = args.temperatures if sched is None else args.truncations
        print(f"\n{run} ({name}), {len(c)} samples per setting")
        print(f"| guidance | {'temperature' if sched is None else 'truncation r'} | class accuracy "
              "| confidence | shapes-FD (real floor) | s per image |\n|---|---|---|---|---|---|")  # fmt: skip
        for g in args.guidance:
            for v in second:
                torch.manual_seed(args.seed)
                start = time.perf_counter()
                if sched is None:
                    codes, _ = model.sample(c, v, cfg.top_k, cfg.top_p, g)
                else:
                    codes = vqd.sample(model, sched, c, args.stride, v, guidance=g)
                seconds = (time.perf_counter() - start) / len(c)
                images = stage2.decode(tok, codes, H)
                q = sample_quality.judge(images, c if n > 1 else None, val, cfg.dataset)
                print(f"| {g:g} | {v:g} | {100 * q.get('class_acc', float('nan')):.1f} % | "
                      f"{q['confidence']:.3f} | {q['shapes_fd']:.2f} ({q['shapes_fd_floor']:.2f}) | {seconds:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
