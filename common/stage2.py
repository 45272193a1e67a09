"""Stage 2 of lessons 04 and 05: the run, the frozen tokenizer (stage1.py finds and loads it, and
the lesson passes that in), the data and class conditioning, the optimizer and lr schedule both
priors use. (Their samples.png and its judgement: sample_quality.py.)

A student may skip this folder: nothing in it is a concept the lessons teach. It imports no lesson.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoints import load_checkpoint, load_state
from .conditioning import (
    PriorConfig,
    check_prior_flags,
    prompt_classes,
    prompt_colours,
    sample_conditions,
)  # fmt: skip
from .datasets import default_image_size
from .device import echo, get_device, seed_everything
from .dist import distributed
from .errors import UserError
from .loading import load_data
from .runs import Run, lesson_name, resumable
from .samples import centre_square, decode
from .text import text_encoder

__all__ = [  # defined next door, reached through stage2 by the lessons, benchmarks and tests
    "PriorConfig",
    "centre_square",
    "check_prior_flags",
    "decode",
    "prompt_classes",
    "prompt_colours",
    "sample_conditions",
]  # fmt: skip


@dataclass
class Stage2:
    """What a stage-2 lesson (04, 05) needs before it builds its prior: the frozen tokenizer, the
    data and the shape of the code grid."""

    device: torch.device
    rank: int  # this process under torchrun (0 otherwise)
    world: int  # number of processes
    run: Run
    tokenizer_path: Path
    tok: nn.Module  # frozen: .encoder, .quantizer (.codebook (K, d), .depth), .decoder
    train_set: object
    val_set: object
    num_classes: int  # 1 unless conditioned on classes
    H: int  # the code grid is H x H: T = H * H positions of D codes
    size: int  # image side in pixels
    condition: str = "class"  # "class", "text" or "none"
    text: nn.Module | None = None  # --condition text: the text encoder (.tokenize, .width), part of the prior
    classes: tuple | None = None  # the data's class names
    plain: bool = False  # shapes-plain: its 4 colours can be judged

    def condition_of(self, y, captions: list[str], drop: float = 0.0) -> torch.Tensor:
        """What the prior is conditioned on, on the device: labels (B,) (self.labels), or with text
        the captions' token ids (B, L), each one the empty caption "" (no text) with chance `drop`."""
        if self.condition != "text":
            return self.labels(y, drop)
        if drop:  # the empty caption at this rate: what guidance contrasts
            kept = (torch.rand(len(captions)) >= drop).tolist()
            captions = [text if k else "" for k, text in zip(kept, captions)]
        return self.text.tokenize(captions).to(self.device)

    def labels(self, y: torch.Tensor, drop: float = 0.0) -> torch.Tensor:
        """The class each image is conditioned on, on the device: y, or 0 when unconditional; with
        drop > 0 (training for guidance) each one is "no class" (num_classes) with that chance."""
        if self.condition != "class":
            return torch.zeros_like(y, device=self.device)
        c = y.to(self.device)
        if drop == 0:
            return c
        return torch.where(torch.rand(len(c), device=self.device) < drop, self.num_classes, c)


def adopt_trained_flags(cfg, lesson: str | None = None) -> dict | None:
    """--sample-only: the model's flags become those the prior in --out was trained with (the
    sampling flags stay this command's); -> its checkpoint, or None without --sample-only.
    lesson: the lesson whose prior it must be (default: cfg's)."""
    path = Path(cfg.out) / "ckpt.pt"
    if not (cfg.sample_only and path.exists()):
        return None  # (a missing checkpoint is Run's one-line error)
    ckpt, mine = load_checkpoint(path), lesson or lesson_name(cfg)
    if ckpt.get("lesson") != mine or "tokenizer" not in ckpt:
        raise UserError(
            f"--sample-only: {path} was written by {ckpt.get('lesson') or 'another script'}, not by the prior of {mine}; pass its run folder as --out"
        )
    flags = {f.name for f in dataclasses.fields(cfg)}  # a flag that left the lesson is not adopted
    for name in (ckpt["config"].keys() & flags) - resumable(cfg) - {"tokenizer"}:  # (see setup)
        value = ckpt["config"][name]
        setattr(cfg, name, tuple(value) if isinstance(value, list) else value)
    if cfg.prompt and cfg.condition != "text":
        raise UserError(
            f"--prompt: the prior in {cfg.out} is not text-conditional; train one with --condition text"
        )
    return ckpt


def trained_tokenizer(cfg, ckpt: dict) -> Path:
    """--sample-only: the tokenizer the prior was trained on: --tokenizer if given, else the path
    its checkpoint names, else <out>/tokenizer/ckpt.pt (a run folder moved with the tokenizer
    it trained); else a UserError."""
    stored, inside = Path(ckpt["tokenizer"]), Path(cfg.out) / "tokenizer" / "ckpt.pt"
    for path in (Path(cfg.tokenizer) if cfg.tokenizer else None, stored, inside):
        if path is not None and path.exists():
            return path
    raise UserError(
        f"--sample-only: the prior's tokenizer {stored} is not there (a moved or copied run folder?); pass it as --tokenizer FILE"
    )


def setup(cfg, tokenizer, lesson: str | None = None) -> Stage2:
    """Run folder, tokenizer (checked against --image-size), data, and class conditioning.
    tokenizer(cfg, path) -> (path, frozen model, its Config): stage1.tokenizer, which finds one
    (path None: --tokenizer, else a trained one, else lesson 02 trains one) and loads it."""
    rank, world = distributed()  # (0, 1) unless launched by torchrun
    device = get_device(cfg.device)
    trained = adopt_trained_flags(cfg, lesson)  # --sample-only: the checkpoint in --out (else None)
    out = Path(cfg.out)
    if cfg.tokenizer and not cfg.sample_only and Path(cfg.tokenizer).resolve() == (out / "ckpt.pt").resolve():
        raise UserError(
            f"--out {out} holds the tokenizer {cfg.tokenizer}; the prior would replace it: pass another --out"
        )
    if cfg.resume and not (out / "ckpt.pt").exists() and (out / "tokenizer" / "ckpt.pt").exists():
        echo("--resume: the prior had not started; its tokenizer goes on, then the prior trains afresh")
        cfg.resume = False  # stopped while lesson 02 trained its tokenizer (stage1 resumes that)
    run = Run(cfg)
    text = None
    seed_everything(cfg.seed)  # the text encoder's initial weights too
    if cfg.condition == "text":  # before the tokenizer: an unreachable CLIP fails before minutes of training
        text = text_encoder(cfg.text_encoder, cfg.width).to(device)
    path, tok, tok_cfg = tokenizer(cfg, trained and trained_tokenizer(cfg, trained))
    tok = tok.to(device)
    if not tok.quantizer.shared:
        raise UserError(
            f"tokenizer {path} has separate codebooks; stage 2 needs one shared codebook (--codebooks shared)"
        )
    seed_everything(cfg.seed)
    size = default_image_size(tok_cfg)
    if default_image_size(cfg) != size:
        raise UserError(
            f"tokenizer {path} was trained on {size} px images, not --image-size {default_image_size(cfg)}"
        )
    train_set, val_set, classes = load_data(cfg, rank, world)
    condition = cfg.condition or ("class" if classes is not None else "none")
    num_classes = len(classes) if condition == "class" and classes else 1
    if condition == "none" and cfg.guidance != 1:  # no class to contrast "no class" with
        if cfg.guidance != type(cfg).guidance:  # a value the user chose, not the default
            echo(f"--guidance {cfg.guidance}: the prior is unconditional, so it samples without guidance (1)")
        cfg.guidance = 1.0
    H, plain = size // tok_cfg.downsample, cfg.dataset == "shapes-plain"
    return Stage2(
        device, rank, world, run, path, tok, train_set, val_set, num_classes, H, size,
        condition, text, classes, plain,
    )  # fmt: skip


def load_prior(s: Stage2, model: nn.Module, lesson: str | None = None) -> nn.Module:
    """--sample-only (one process): the prior's weights from <out>/ckpt.pt, in eval mode."""
    load_state(model, s.run.load(lesson)["model"], s.run.ckpt_path)
    return model.eval()


def load_trained(cfg, build, lesson: str, tokenizer) -> tuple:
    """For a tool that draws from the prior that `lesson` trained in --out (beyond/): its Stage2,
    with the flags it was trained with (this command's sampling flags), and what the lesson's
    build(cfg, s) makes (the prior, or the prior and more), the prior loaded -> (s, prior, ...)."""
    cfg.sample_only = True
    s = setup(cfg, tokenizer, lesson)
    built = build(cfg, s)
    model, *rest = built if isinstance(built, tuple) else (built,)
    return (s, load_prior(s, model, lesson), *rest)


def adamw(model: nn.Module, cfg, betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
    """AdamW at --lr with weight_decay on the matrices, none on biases, norms and position tables."""
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.dim() >= 2 and "pos" not in n]
    rest = [p for n, p in named if p.dim() < 2 or "pos" in n]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)


def set_lr(opt: torch.optim.Optimizer, cfg, step: int) -> None:
    """lr = --lr x a linear warm-up over the first 100 steps x a cosine decay to 0 at --steps.

    The cosine is kept in the optimizer's state as [first step, its lr, last step]. A run resumed
    with another --steps does not re-stretch it (the lr would jump back up): from the step it
    resumes at, a new cosine falls from the lr reached there to 0 at the new --steps. A finished
    run has reached lr ~0, so extending it trains little; its log line says so."""

    def lr(first, lr0, last, at):  # the cosine, with the warm-up of a fresh run's first 100 steps
        warm = min(1.0, (at + 1) / 100) if first == 0 else 1.0
        return lr0 * warm * 0.5 * (1 + math.cos(math.pi * min(at - first, last - first) / (last - first)))

    for group in opt.param_groups:
        cosine = group.setdefault("cosine", [0, cfg.lr, cfg.steps])
        if cosine[2] != cfg.steps:  # --resume with another --steps: go on from where the lr is
            group["cosine"] = cosine = [step, lr(*cosine, step), cfg.steps]
            if group is opt.param_groups[0]:
                echo(
                    f"--steps {cfg.steps}: the lr goes on from {cosine[1]:.3g} at step {step}, a new cosine to 0"
                )
        group["lr"] = lr(*cosine, step)


def log_step(run: Run, step: int, **values: torch.Tensor) -> None:
    """Print 'step N | name value | ...' and append it to metrics.jsonl (reads the tensors: a
    device sync, so call it every --log-every steps only)."""
    values = {k: v.item() for k, v in values.items()}
    echo(f"step {step} | " + " | ".join(f"{k} {v:.4f}" for k, v in values.items()))
    run.log({"step": step, **values})
