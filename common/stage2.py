"""Stage 2 of lessons 04 and 05: the frozen tokenizer (loaded from a lesson 02/03 checkpoint, or
trained once with lesson 02), the data and class conditioning, the optimizer and lr schedule both
priors use. (Their samples.png and its judgement: sample_quality.py.)

A student may skip this folder: nothing in it is a concept the lessons teach. Helpers import no
lesson when they are imported; a tokenizer checkpoint is rebuilt by the lesson named inside it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from . import official
from .checkpoints import lessons_checkpoint, load_checkpoint, load_state, read_checkpoint
from .cli import lesson
from .conditioning import (
    PriorConfig,
    check_prior_flags,
    prompt_classes,
    prompt_colours,
    sample_conditions,
)  # fmt: skip
from .datasets import default_image_size
from .device import echo, get_device, seed_everything
from .dist import barrier, distributed
from .errors import UserError
from .loading import load_data
from .released import RELEASED
from .runs import Run, read_log, resumable
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


def load_tokenizer(path, device="cpu", config=None):
    """(model, cfg) rebuilt from a checkpoint of 02_rq.py or 03_vqgan.py alone, or from a released
    official one (common/official.py: a file with its config, or a name); frozen, eval mode.

    model.encoder, model.quantizer (with .codebook (K, d) and .quantize) and model.decoder are
    the pieces stage 2 needs; cfg is the Config the checkpoint was trained with.
    """
    if str(path) in RELEASED:  # a released tokenizer by name
        model, cfg = official.load_released(str(path), config)
        return model.to(device), cfg
    ckpt = read_checkpoint(path)
    if official.kind_of(ckpt):  # the authors' own file format
        model, cfg = official.load_official(Path(path), ckpt, config)
        return model.to(device), cfg
    name = lessons_checkpoint(ckpt, path).get("lesson")
    if name not in ("02_rq", "03_vqgan"):
        raise UserError(
            f"checkpoint {path} was written by {name or 'an unknown script'}, not by 02_rq.py or 03_vqgan.py: it holds no RQ tokenizer"
        )
    maker = lesson(name)  # the lesson that wrote it rebuilds it
    cfg = maker.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()})
    model = maker.build(cfg)
    load_state(model, ckpt["model"], path)
    return model.to(device).eval().requires_grad_(False), cfg


def tokenizer_path(cfg) -> Path:
    """--tokenizer, else the first of runs/02_rq/ckpt.pt (lesson 02's default run),
    runs/04_rq_transformer/tokenizer/ckpt.pt (the one lesson 04 trains) and
    <out>/tokenizer/ckpt.pt that was trained on this dataset with --tokenizer-depth and
    --tokenizer-codebook-size, else a lesson-02 RQ-VAE of that shape trained (once) into
    <out>/tokenizer."""
    if cfg.tokenizer:
        return Path(cfg.tokenizer)
    shape = {"depth": cfg.tokenizer_depth, "codebook_size": cfg.tokenizer_codebook_size}
    shape = {k: v for k, v in shape.items() if v is not None}  # None: lesson 02's preset
    same = lambda ckpt_cfg: (
        (ckpt_cfg["dataset"], ckpt_cfg["hf_id"], ckpt_cfg["image_size"])
        == (cfg.dataset, cfg.hf_id, cfg.image_size)
        and all(ckpt_cfg.get(k) == v for k, v in shape.items())
    )
    folders = ("runs/02_rq", "runs/04_rq_transformer/tokenizer", f"{cfg.out}/tokenizer")
    for path in (Path(folder) / "ckpt.pt" for folder in folders):
        if path.exists() and same((ckpt := load_checkpoint(path))["config"]):
            final = [r for r in read_log(path.parent) if r.get("final")]
            psnr = f"validation PSNR {final[-1]['val_psnr']:.2f} dB" if final else "no validation yet"
            echo(
                f"tokenizer: reusing {path} ({ckpt['step']} steps, {psnr}); pass --tokenizer, or "
                f"train a fresh one with `python 02_rq.py --dataset {cfg.dataset} --overwrite`"
            )
            return path
    out = Path(cfg.out) / "tokenizer"
    echo(f"tokenizer: none given; training a lesson-02 RQ-VAE into {out}")
    flags = dict(
        dataset=cfg.dataset,
        hf_id=cfg.hf_id,
        image_size=cfg.image_size,
        image_column=cfg.image_column,
    )
    rq = lesson("02_rq")  # imported here, when a tokenizer must be trained
    rq.train(
        rq.Config(
            **flags,
            label_column=cfg.label_column,
            device=cfg.device,
            seed=cfg.seed,
            out=str(out),
            overwrite=True,
            **shape,
        )
    )
    barrier()  # under torchrun: rank 0 has written the checkpoint before anyone reads it
    return out / "ckpt.pt"


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


def adopt_trained_flags(cfg) -> dict | None:
    """--sample-only: the model's flags become those the prior in --out was trained with (the
    sampling flags stay this command's); -> its checkpoint, or None without --sample-only."""
    path = Path(cfg.out) / "ckpt.pt"
    if not (cfg.sample_only and path.exists()):
        return None  # (a missing checkpoint is Run's one-line error)
    ckpt = load_checkpoint(path)
    flags = {f.name for f in dataclasses.fields(cfg)}  # a flag that left the lesson is not adopted
    for name in (ckpt["config"].keys() & flags) - resumable(cfg):
        value = ckpt["config"][name]
        setattr(cfg, name, tuple(value) if isinstance(value, list) else value)
    if cfg.prompt and cfg.condition != "text":
        raise UserError(
            f"--prompt: the prior in {cfg.out} is not text-conditional; train one with --condition text"
        )
    return ckpt


def setup(cfg) -> Stage2:
    """Run folder, tokenizer (checked against --image-size), data, and class conditioning."""
    rank, world = distributed()  # (0, 1) unless launched by torchrun
    device = get_device(cfg.device)
    trained = adopt_trained_flags(cfg)  # --sample-only: the checkpoint in --out (else None)
    run = Run(cfg)
    text = None
    seed_everything(cfg.seed)  # the text encoder's initial weights too
    if cfg.condition == "text":  # before the tokenizer: an unreachable CLIP fails before minutes of training
        text = text_encoder(cfg.text_encoder, cfg.width, cfg.text_length).to(device)
    path = (
        Path(trained["tokenizer"]) if trained else tokenizer_path(cfg)
    )  # the prior's own, for --sample-only
    tok, tok_cfg = load_tokenizer(path, device, cfg.tokenizer_config)
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
    H, plain = size // tok_cfg.downsample, cfg.dataset == "shapes-plain" and cfg.hf_id is None
    return Stage2(
        device, rank, world, run, path, tok, train_set, val_set, num_classes, H, size,
        condition, text, classes, plain,
    )  # fmt: skip


def load_prior(s: Stage2, model: nn.Module, lesson: str | None = None) -> nn.Module:
    """--sample-only (one process): the prior's weights from <out>/ckpt.pt, in eval mode."""
    load_state(model, s.run.load(lesson)["model"], s.run.ckpt_path)
    return model.eval()


def load_trained(cfg, build, lesson: str) -> tuple:
    """For a tool that draws from the prior that `lesson` trained in --out (beyond/): its Stage2,
    with the flags it was trained with (this command's sampling flags), and what the lesson's
    build(cfg, s) makes (the prior, or the prior and more), the prior loaded -> (s, prior, ...)."""
    cfg.sample_only = True
    s = setup(cfg)
    built = build(cfg, s)
    model, *rest = built if isinstance(built, tuple) else (built,)
    return (s, load_prior(s, model, lesson), *rest)


def adamw(model: nn.Module, cfg, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with --weight-decay on the matrices, none on biases, norms and position tables."""
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.dim() >= 2 and "pos" not in n]
    rest = [p for n, p in named if p.dim() < 2 or "pos" in n]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
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
