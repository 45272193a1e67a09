"""What the priors of lessons 04 and 05 are conditioned on (a class, a caption, or nothing): the
flags they share, and the conditions of samples.png and prompts.png.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from .cli import TrainConfig, require
from .loading import first_images
from .shapes import BUILTIN, PLAIN_COLOUR_NAMES, SHAPE_CLASSES, class_prompts


@dataclass
class PriorConfig(TrainConfig):
    """Flags lessons 04 and 05 share. Their Configs subclass this."""

    RESUMABLE: ClassVar = frozenset({"sample_only", "prompt", "reject_keep", "samples_per_class"})  # sampling

    condition: Literal["class", "text", "none"] | None = None  # condition on (default: class when labelled)
    text_encoder: str = "small"  # --condition text: small (trained with the prior) or a CLIP hub id / folder
    prompt: tuple[str, ...] = ()  # a caption to draw after training, repeatable: a row of prompts.png each
    sample_only: bool = False  # load the trained prior in --out; draw prompts.png (or samples.png) only
    reject_keep: float = 1.0  # rejection sampling: draw 1/f images per image, keep the best-scored f


def check_prior_flags(cfg) -> None:
    """The flag checks lessons 04 and 05 share (width, guidance, dropout, samples, text)."""
    width = f"--width {cfg.width} must be a positive multiple of --heads {cfg.heads}"
    text = cfg.condition == "text" or (cfg.prompt and cfg.condition is None)
    captions = cfg.dataset in BUILTIN or cfg.caption_column or not text
    require(
        (cfg.heads >= 1 and cfg.width % max(cfg.heads, 1) == 0, width),
        (0 <= cfg.label_dropout < 1, f"--label-dropout must be in [0, 1) (got {cfg.label_dropout})"),
        (0 <= cfg.guidance < float("inf"), f"--guidance must be a finite number >= 0 (got {cfg.guidance})"),
        (0 <= cfg.dropout < 1, f"--dropout must be in [0, 1) (got {cfg.dropout})"),
        (cfg.samples_per_class >= 1, f"--samples-per-class >= 1 (got {cfg.samples_per_class})"),
        (0 < cfg.reject_keep <= 1, f"--reject-keep must be in (0, 1] (got {cfg.reject_keep})"),
        (
            cfg.samples_per_class / max(cfg.reject_keep, 1e-300) <= 1024,
            f"--reject-keep {cfg.reject_keep} draws {cfg.samples_per_class / max(cfg.reject_keep, 1e-300):.3g} images per row of samples.png; at most 1024",
        ),
        (
            captions,
            "--condition text needs captions: pass --caption-column (for a folder: a metadata.jsonl field)",
        ),
        (not cfg.prompt or text, "--prompt needs a text-conditional prior (--condition text)"),
        (
            cfg.reject_keep == 1 or cfg.dataset in BUILTIN,
            "--reject-keep < 1 ranks samples by the shapes classifier: built-in data only",
        ),
        (
            cfg.reject_keep == 1 or cfg.condition != "none",
            "--reject-keep < 1 ranks samples by their class: not with --condition none",
        ),
    )
    if cfg.condition is None and cfg.prompt:  # --prompt alone implies text
        cfg.condition = "text"


def sample_conditions(s) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None]:
    """The row conditions of samples.png: one row per class (at most 8) or, unconditional, 4 rows.
    Text: each class row is drawn from a caption naming its class ("a pink star"), so that the
    class-accuracy evaluator judges text-conditional samples too; data without classes take the
    first 4 validation captions. -> (c for the prior (rows,) or (rows, L), the row classes or None,
    the row prompts or None)."""
    if s.condition == "text":
        if s.classes:
            prompts = class_prompts(s.classes[:8], s.plain)
            labels = torch.arange(len(prompts), device=s.device)
        else:  # a validation caption per row
            prompts, labels = list(first_images(s.val_set, 4, captions=True)[2]), None
        return s.condition_of(None, prompts), labels, prompts
    if s.condition == "none":
        return torch.zeros(4, dtype=torch.long, device=s.device), None, None
    labels = torch.arange(min(s.num_classes, 8), device=s.device)
    return labels, labels, None


def _named(prompts, names) -> torch.Tensor | None:
    """The index of the name (a whole word or phrase) each prompt contains, the last one if several;
    None unless every prompt names one."""
    found = [[i for i, name in enumerate(names) if f" {name} " in f" {p.lower()} "] for p in prompts]
    return torch.tensor([f[-1] for f in found]) if all(found) else None


def prompt_classes(prompts) -> torch.Tensor | None:
    """The index in SHAPE_CLASSES of the class each prompt names (None unless each names one)."""
    return _named(prompts, [c.replace("-", " ") for c in SHAPE_CLASSES])


def prompt_colours(prompts) -> torch.Tensor | None:
    """The index in PLAIN_COLOURS of the colour each prompt names (None unless each names one)."""
    return _named(prompts, PLAIN_COLOUR_NAMES)
