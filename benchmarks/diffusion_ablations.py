"""Where lesson 05's bits go: its training choices one at a time, on one tokenizer, same steps.

Each variant trains lesson 05 (the flags after `--` go to every run) and is judged the same way:
the validation bound over ALL T steps (no estimator noise from a few t), in bits per code; the
class accuracy and shapes-FD of one row per class drawn by the lesson's posterior sampler
(T calls, and T/4 or T/10 calls with --stride) and by MaskGIT's sampler (beyond/maskgit.py) at
10 and 25 calls; training steps per second and minutes. Variants (a variant is the lesson with
one thing changed; "default" is the lesson as it is):
  uniform-t      t drawn uniformly per image, as VQD (the lesson draws stratified t)
  lambda-1       L_x0 weighted 1 against L_{t-1}, the lesson's weight before this ablation (now 0.01)
  bound-only     lambda 0: the bound alone, a 1/t-weighted masked cross-entropy (MDLM's loss)
  no-t           the network does not see t (MDLM: under mask-only noise the mask count says it)
  cosine         gammabar_t = sin(pi/2 t/T): MaskGIT's cosine schedule (most steps mostly masked)
  importance-t   the official code's t: p(t) proportional to the root of a running mean of L_{t-1}^2
                 (uniform until each t was drawn 10 times), each image's loss times 1 / (T p(t))
  ln-mlp         the official block's norms: AdaLN before attention only, a plain LayerNorm before
                 the MLP (the lesson: AdaLN before both)
  wide           capacity: width 192 (6 heads) instead of 128, for half the steps (about equal time)

Run: python benchmarks/diffusion_ablations.py --tokenizer runs/05_vq_diffusion/tokenizer/ckpt.pt \
         [--variants default uniform-t ...] [--out runs/diffusion_ablations] [-- --steps 1500]
     python benchmarks/diffusion_ablations.py --profile runs/05_vq_diffusion
         (a trained prior's cross-entropy on the hidden codes at several t: where its bound goes)
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
import stage1
from beyond import maskgit
from common import stage2

vqd = common.lesson("05_vq_diffusion")
ar = common.lesson("04_rq_transformer")
LESSON = {
    name: getattr(vqd, name)
    for name in ("stratified_timesteps", "noise_schedule", "build", "finish", "losses")
}


def uniform_timesteps(B, T, device=None):
    return torch.randint(1, T + 1, (B,), device=device)


def cosine_schedule(T, K, gamma_end, beta_end):  # mask-only, on MaskGIT's curve
    gammabar = torch.sin(math.pi / 2 * torch.arange(T + 1, dtype=torch.float64) / T)
    return vqd.Schedule(1 - gammabar, gammabar, K)


def build_without_t(cfg, s):
    model, sched = LESSON["build"](cfg, s)
    model.time.weight.data.zero_()  # every t embeds as 0: the network cannot tell t
    model.time.weight.requires_grad_(False)
    return model, sched


def build_ln_mlp(cfg, s):
    model, sched = LESSON["build"](cfg, s)
    W = cfg.width
    for block in model.blocks:  # rows 2W..4W of ada are (a2, b2), the MLP's AdaLN: kept at 0
        block.ada.weight.register_hook(lambda g: torch.cat([g[: 2 * W], torch.zeros_like(g[2 * W :])]))
        block.ada.bias.register_hook(lambda g: torch.cat([g[: 2 * W], torch.zeros_like(g[2 * W :])]))
    return model, sched


class ImportanceT:
    """VQ-Diffusion's official sample_time('importance'): t drawn with p(t) proportional to
    sqrt(EMA_0.9 of the per-image L_{t-1}^2) + 1e-4 once every t was drawn more than 10 times
    (uniformly before), and both losses of an image divided by T p(t), so that their mean stays an
    unbiased estimate of the uniform-t loss."""

    def __init__(self):
        self.history, self.count, self.p = None, None, None

    def timesteps(self, B, T, device=None):
        if self.history is None:
            self.history, self.count = torch.zeros(T + 1, dtype=torch.float64), torch.zeros(T + 1)
        self.p = torch.full((T + 1,), 1.0 / T, dtype=torch.float64)
        self.p[0] = 0
        if (self.count[1:] > 10).all():
            root = self.history.sqrt() + 1e-4
            root[0] = 0
            self.p = root / root.sum()
        return torch.multinomial(self.p, B, replacement=True).to(device)

    def losses(self, logits, x0, x_t, sched, t):
        l_vlb, l_x0 = LESSON["losses"](logits, x0, x_t, sched, t)
        if not torch.is_grad_enabled():  # validation: the lesson's losses
            return l_vlb, l_x0
        per_image = l_vlb.detach().flatten(1).sum(1).double().cpu() ** 2
        t_cpu = t.cpu()
        self.history[t_cpu] = 0.9 * self.history[t_cpu] + 0.1 * per_image
        self.count[t_cpu] += 1
        w = (1 / (sched.T * self.p[t_cpu])).float().to(l_vlb.device).view(-1, 1, 1)
        return l_vlb * w, l_x0 * w


def importance_patches():
    sampler = ImportanceT()
    return {"stratified_timesteps": sampler.timesteps, "losses": sampler.losses}


PATCHES = {
    "default": {},
    "uniform-t": {"stratified_timesteps": uniform_timesteps},
    "lambda-1": {},
    "bound-only": {},
    "no-t": {"build": build_without_t},
    "cosine": {"noise_schedule": cosine_schedule},
    "importance-t": importance_patches,
    "ln-mlp": {"build": build_ln_mlp},
    "wide": {},
}
FLAGS = {
    "lambda-1": ["--aux-weight", "1"],
    "bound-only": ["--aux-weight", "0"],
    "wide": ["--width", "192", "--heads", "6"],
}
STEP_SHARE = {"wide": 0.5}  # a step of width 192 costs about twice one of width 128 (W^2 weights)


def run_variant(name, tokenizer, out, extra, calls_list):
    patches = PATCHES[name]() if callable(PATCHES[name]) else PATCHES[name]
    for attr, fn in {**LESSON, **patches}.items():
        setattr(vqd, attr, fn)
    vqd.EVAL_TIMESTEPS = 10**6  # every t in 1..T: the bound without estimator noise
    flags = ["--tokenizer", tokenizer, "--out", str(out / name), "--overwrite", *extra, *FLAGS.get(name, [])]
    cfg = common.parse(vqd.Config, flags)
    if name in STEP_SHARE:
        cfg.steps = round(cfg.steps * STEP_SHARE[name])
    marks = {}

    def timed_finish(*a, **k):  # the training loop ends where finish starts
        marks["trained"] = time.perf_counter()
        return LESSON["finish"](*a, **k)

    vqd.finish = timed_finish
    start = time.perf_counter()
    vqd.train(cfg)
    seconds = marks["trained"] - start
    rec = [r for r in common.read_log(out / name) if r.get("final")][-1]
    row = {"variant": name, "bound_bits": rec["val_vlb"] / math.log(2), "steps_per_s": cfg.steps / seconds,
           "train_min": seconds / 60, "posterior_T": (rec["sample_class_acc"], rec["sample_shapes_fd"])}  # fmt: skip
    cfg_s = common.parse(
        vqd.Config, ["--tokenizer", tokenizer, "--out", str(out / name), *extra, *FLAGS.get(name, [])]
    )
    s, model, sched = stage2.load_trained(cfg_s, vqd.build, vqd.__name__, stage1.tokenizer)
    for calls in calls_list:
        torch.manual_seed(0)
        stride = math.ceil(sched.T / calls)
        post = lambda c: vqd.sample(model, sched, c, stride, cfg.truncation, cfg.guidance)
        q = sample_quality.samples_png(s, cfg, post, f"posterior_{calls}.png")
        row[f"posterior_{calls}"] = (q["sample_class_acc"], q["sample_shapes_fd"])
        torch.manual_seed(0)
        mg = lambda c: maskgit.sample_maskgit(model, sched, c, calls, 4.5, cfg.truncation, cfg.guidance)
        q = sample_quality.samples_png(s, cfg, mg, f"maskgit_{calls}.png")
        row[f"maskgit_{calls}"] = (q["sample_class_acc"], q["sample_shapes_fd"])
    for attr, fn in LESSON.items():
        setattr(vqd, attr, fn)
    return row


@torch.no_grad()
def hidden_code_ce(run: Path, images: int = 256, times=(1, 2, 5, 10, 25, 50, 75, 90, 100)) -> list:
    """-log p_theta(x_0 | x_t) per hidden code of a trained class-conditional or unconditional
    prior at each t (t = 1: exactly one hidden code per image, all others given), on the first
    validation images; the bound is the 1/t-weighted sum of these (VQD mask-only weight).
    -> [(t, hidden fraction, nats per hidden code)]."""
    _, cfg, model, tok, H, val, sched, n = load_prior(run)
    x, y = common.first_images(val, images)
    torch.manual_seed(0)
    x0, _ = ar.encode(tok, x)
    c = y if n > 1 and cfg.condition != "none" else torch.zeros(len(y), dtype=torch.long)  # class or none
    rows = []
    for t_val in [t for t in times if t <= sched.T]:
        t = torch.full((len(x0),), t_val)
        x_t = vqd.q_sample(x0, sched, t)
        if t_val == 1:
            x_t = x0.clone()
            x_t[torch.arange(len(x0)), torch.randint(x0.shape[1], (len(x0),))] = sched.K
        ce = -model(x_t, t, c).log_softmax(-1).gather(-1, x0[..., None]).squeeze(-1)
        hidden = x_t == sched.K
        rows.append((t_val, hidden.float().mean().item(), ce[hidden].mean().item()))
    return rows


def profile(run: Path):
    print(f"{run}: cross-entropy on the hidden codes (256 validation images)")
    print("| t | hidden fraction | nats per hidden code | bits per hidden code |\n|---|---|---|---|")
    for t_val, fraction, nats in hidden_code_ce(run):
        print(f"| {t_val} | {fraction:.3f} | {nats:.3f} | {nats / math.log(2):.3f} |")


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", help="a lesson 02/03 checkpoint every run uses")
    p.add_argument(
        "--profile", type=Path, help="only print this trained 05 run's hidden-code cross-entropy by t"
    )
    p.add_argument(
        "--variants", nargs="+", default=list(PATCHES), choices=list(PATCHES), help="what to train"
    )
    p.add_argument(
        "--calls", type=int, nargs="+", default=[10, 25], help="network calls of the fast samplers"
    )
    p.add_argument("--out", default="runs/diffusion_ablations", help="folder for the runs and table.json")
    args = p.parse_args(argv)
    if args.profile:
        return profile(args.profile)
    if not args.tokenizer:
        p.error("--tokenizer is required (or --profile RUN)")
    out = Path(args.out)
    table = out / "table.json"  # rows of earlier invocations stay, unless their variant runs again
    rows = [
        r
        for r in (json.loads(table.read_text()) if table.exists() else [])
        if r["variant"] not in args.variants
    ]
    for name in args.variants:
        rows.append(run_variant(name, args.tokenizer, out, extra, args.calls))
        table.write_text(json.dumps(rows, indent=1))  # after each: a long run keeps what it has
    cols = ["posterior_T"] + [f"{k}_{c}" for c in args.calls for k in ("posterior", "maskgit")]
    print(f"\ntokenizer {args.tokenizer}; class accuracy / shapes-FD of samples drawn by each sampler")
    print("| variant | bound (bits per code) | " + " | ".join(cols) + " | steps/s | training |")
    print("|---" * (len(cols) + 4) + "|")
    for r in rows:
        cells = " | ".join(f"{100 * r[c][0]:.1f} % / {r[c][1]:.1f}" for c in cols)
        print(
            f"| {r['variant']} | {r['bound_bits']:.3f} | {cells} | {r['steps_per_s']:.2f} | {r['train_min']:.1f} min |"
        )


if __name__ == "__main__":
    main()
