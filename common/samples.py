"""The pictures lessons 04 and 05 draw from their priors: codes decoded to images, samples.png
(judged for sample quality), prompts.png, rejection sampling, and the inpainting square.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import torch
from einops import rearrange

import sample_quality

from .conditioning import candidates, prompt_classes, prompt_colours, reject, sample_conditions
from .device import echo
from .images import save_grid


@torch.no_grad()
def decode(tok, codes: torch.Tensor, H: int) -> torch.Tensor:
    """codes (B, T, D) -> images (B, 3, S, S) through the tokenizer: z^ = sum_d e(S_td)."""
    z_q = rearrange(tok.quantizer.codebook[codes].sum(2), "b (h w) d -> b d h w", h=H)
    return tok.decoder(z_q)


def draw_rows(s, cfg, draw, c: torch.Tensor, labels: torch.Tensor | None, per_row: int):
    """per_row images for each row's condition c (rows,) or (rows, L), drawn by draw(c) -> codes
    (B, T, D). With --reject-keep f < 1, rejection sampling: 1/f candidates per row are drawn and
    the per_row that the shapes classifier finds most surely of the row's class `labels` (rows,)
    are kept, best first. -> (rows * per_row, 3, S, S)."""
    n = candidates(per_row, cfg.reject_keep)
    images = decode(s.tok, draw(c.repeat_interleave(n, 0)), s.H)
    if n == per_row:
        return images
    if labels is None:
        echo("rejection sampling: these prompts name no class to score; keeping the first draws")
        return images.view(len(c), n, *images.shape[1:])[:, :per_row].flatten(0, 1)
    return images[reject(sample_quality.class_scores(images, labels.repeat_interleave(n)), per_row, n).cpu()]


def samples_png(s, cfg, draw, name: str = "samples.png") -> dict:
    """samples.png (or `name`): a row of --samples-per-class images per class (text: from a caption
    naming the class) drawn by draw(c) -> codes, judged for sample quality (printed). -> the
    metrics, with "sample_" before each name."""
    per_row = cfg.samples_per_class
    c, labels, prompts = sample_conditions(s)
    images = draw_rows(s, cfg, draw, c, labels, per_row)
    save_grid(list(images.view(-1, per_row, *images.shape[1:])), s.run.dir / name)
    colours = prompt_colours(prompts) if prompts else None
    labels, colours = (None if v is None else v.repeat_interleave(per_row) for v in (labels, colours))
    dataset = cfg.dataset if cfg.hf_id is None else cfg.hf_id
    quality = sample_quality.judge(images, labels, s.val_set, dataset, colours)
    echo(f"{name} ({len(images)} images): {sample_quality.summary(quality)}")
    return {f"sample_{k}": v for k, v in quality.items()}


def prompts_png(s, cfg, draw) -> None:
    """prompts.png: a row of --samples-per-class images for each --prompt."""
    labels = prompt_classes(cfg.prompt)
    images = draw_rows(s, cfg, draw, s.condition_of(None, list(cfg.prompt)), labels, cfg.samples_per_class)
    save_grid(list(images.view(-1, cfg.samples_per_class, *images.shape[1:])), s.run.dir / "prompts.png")
    echo(
        f"wrote {s.run.dir / 'prompts.png'}: "
        + " | ".join(f"row {i + 1}: {p}" for i, p in enumerate(cfg.prompt))
    )


def centre_square(H: int, device=None) -> torch.Tensor:
    """(H, H) bool, True on the centre half of an H x H code grid: what the inpainting figures hide."""
    lo, hi = H // 4, H - H // 4
    square = torch.zeros(H, H, dtype=torch.bool, device=device)
    square[lo:hi, lo:hi] = True
    return square
