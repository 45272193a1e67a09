"""Beyond lesson 04: images larger than the training grid, drawn with a sliding attention window.

Paper: P. Esser, R. Rombach, B. Ommer, "Taming Transformers for High-Resolution Image Synthesis"
(arXiv:2012.09841), Sec. 3.2 and Fig. 3: a transformer trained on h x w code grids draws a larger
canvas code by code in raster order, each code predicted from the h x w window of codes around it.

Idea. Inside a window, lesson 04's causal attention in the window's raster order reads only codes
of the rows above and of the row's earlier columns, all drawn already, so the prior never sees
more than it was trained on. The window is centred on the code where the canvas allows and pushed
against the border near the edges. It moves with every column, so there is no key/value cache:
every code runs the prior on its window, as taming does. On the training grid this is lesson 04's
own sampler: the same codes from the same seed.

Run: python 04_rq_transformer.py, then
     python beyond/sliding_window.py --canvas 16 16     (canvas.png in runs/04_rq_transformer)
Builds on: 04_rq_transformer.py
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lessons and `common`
import common
import stage1
from common import stage2

ar = common.lesson("04_rq_transformer")  # the prior, guide, sample_logits, unconditional


def window_start(i: int, size: int, n: int) -> int:
    """Where a window of n codes along an axis of `size` codes starts so that it holds position i:
    centred on i where the canvas allows, against the border near the edges (as taming places it)."""
    return min(max(i - n // 2, 0), size - n)


@torch.no_grad()
def sample_window(model, c: torch.Tensor, canvas, temperature=1.0, top_k=0, top_p=1.0, guidance=1.0):
    """A canvas of Hc x Wc positions, larger than the h x w grid the prior was trained on (any
    prior with forward(codes (B, h*w, D), c) -> logits (B, h*w, D, K)). Codes are drawn in raster
    order over the canvas; the one at (i, j, d) from the prior's logits at its place in the h x w
    window around (i, j). c: (B,) or (B, L) -> codes (B, Hc, Wc, D), logits (B, Hc, Wc, D, K)."""
    h = w = math.isqrt(model.T)  # the training grid is square
    (Hc, Wc), B, D, pair = canvas, len(c), model.D, 1 + (guidance != 1.0)
    assert Hc >= h and Wc >= w, f"canvas {Hc}x{Wc} is smaller than the training grid {h}x{w}"
    c = torch.cat([c, ar.unconditional(model, c)]) if pair == 2 else c
    codes = torch.zeros(B, Hc, Wc, D, dtype=torch.long, device=c.device)
    logits = torch.zeros(B, Hc, Wc, D, model.K, device=c.device)
    for i in common.progress(range(Hc), desc="canvas rows", leave=False):
        i0 = window_start(i, Hc, h)
        for j in range(Wc):
            j0 = window_start(j, Wc, w)
            t = (i - i0) * w + (j - j0)  # (i, j) in the window's raster order
            for d in range(D):
                window = codes[:, i0 : i0 + h, j0 : j0 + w].reshape(B, h * w, D)  # (B, T, D)
                logits[:, i, j, d] = ar.guide(model(window.repeat(pair, 1, 1), c)[:, t, d], guidance)
                codes[:, i, j, d] = ar.sample_logits(logits[:, i, j, d], temperature, top_k, top_p)
    return codes, logits


def canvas_png(s: stage2.Stage2, canvas: tuple[int, int], draw, per_row: int = 4) -> None:
    """canvas.png: per_row canvases of H x W codes for each row condition of samples.png, drawn by
    draw(c) -> codes (B, H, W, D)."""
    H, W = canvas
    c, _, _ = stage2.sample_conditions(s)
    codes = draw(c.repeat_interleave(per_row, 0))  # (rows * per_row, H, W, D)
    images = stage2.decode(s.tok, codes.flatten(1, 2), H)
    common.save_grid(list(images.view(len(c), per_row, *images.shape[1:])), s.run.dir / "canvas.png")
    px = images.shape[-2:]
    common.echo(
        f"wrote {s.run.dir / 'canvas.png'}: {len(c)} rows of {per_row} canvases of {H}x{W} codes ({px[0]}x{px[1]} px)"
    )


@dataclass
class Config(ar.Config):
    RESUMABLE: ClassVar = ar.Config.RESUMABLE | {"canvas"}
    canvas: tuple[int, ...] = (16, 16)  # H W: codes per canvas (at least the prior's code grid)

    def __post_init__(self):
        super().__post_init__()
        size = f"--canvas takes two positive numbers of codes, H W (got {' '.join(map(str, self.canvas))})"
        big = f"--canvas {' '.join(map(str, self.canvas))}: at most 256 x 256 codes (a picture of 4096 px at f = 16)"
        common.require(
            (len(self.canvas) == 2 and min(self.canvas) >= 1, size), (max(self.canvas) <= 256, big)
        )


def draw_canvas(cfg: Config) -> None:
    """canvas.png in --out, from the lesson-04 prior trained there (its flags are the checkpoint's;
    the sampling flags are this command's)."""
    s, model = stage2.load_trained(cfg, ar.build, ar.__name__, stage1.tokenizer)
    if min(cfg.canvas) < s.H:
        size = " ".join(map(str, cfg.canvas))
        raise common.UserError(f"--canvas {size} is smaller than the {s.H}x{s.H} code grid of the prior")
    args = (cfg.canvas, cfg.temperature, cfg.top_k, cfg.top_p, cfg.guidance)
    canvas_png(s, cfg.canvas, lambda c: sample_window(model, c, *args)[0])


if __name__ == "__main__":
    common.main(draw_canvas, Config)
