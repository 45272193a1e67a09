"""Beyond lesson 05: inpainting whose known codes are re-noised at every step, as RePaint does.

Paper: A. Lugmayr, M. Danelljan, A. Romero, F. Yu, R. Timofte, L. Van Gool, "RePaint: Inpainting
using Denoising Diffusion Probabilistic Models" (arXiv:2201.09865), Sec. 4.1: at each reverse step
the known region is taken from the forward process, x_s^known ~ q(x_s | x_0), not held clean.

Idea. Lesson 05 inpaints by holding the given codes clean at every step (`vqd.keep`), so the
network sees a mixture it never saw in training: clean codes around a corrupted region. Here the
given codes are corrupted as the forward chain would corrupt them at step s, so x_s looks like a
training input everywhere; at s = 0 they are clean again. The network then fills the hidden
region from a context as noisy as its own. (RePaint also jumps back and forth in t, its
"resampling"; that part is not here.)

Run: python 05_vq_diffusion.py, then
     python beyond/repaint.py                   (repaint.png in runs/05_vq_diffusion, beside inpaint.png)
     python benchmarks/inpaint_renoise.py       (both, over the hidden codes of 128 images)
Builds on: 05_vq_diffusion.py
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lessons and `common`
import common
import stage1
from common import stage2

vqd = common.lesson("05_vq_diffusion")  # the chain, q_sample, inpaint


def renoised(sched):
    """known (B, N, D) (-1 where a code is to be generated) -> hold(x, s): the known codes drawn
    from q(x_s | x_0 = known) (clean at s = 0), the rest of x as the chain left it."""

    def hold_for(known: torch.Tensor):
        given = known.clamp_min(0)

        def hold(x, s):
            noisy = (
                vqd.q_sample(given, sched, torch.full((len(given),), s, device=given.device))
                if s > 0
                else given
            )
            return torch.where(known >= 0, noisy, x)

        return hold

    return hold_for


@dataclass
class Config(vqd.Config):
    pass


def draw(cfg: Config) -> None:
    """repaint.png in --out from the lesson-05 prior trained there: inpaint.png's images and hidden
    square, completed with the known codes re-noised (the sampling flags are this command's)."""
    s, model, sched = stage2.load_trained(cfg, vqd.build, vqd.__name__, stage1.tokenizer)
    vqd.inpaint(model, sched, s, cfg, renoised(sched), "repaint.png")
    common.echo(f"wrote {s.run.dir / 'repaint.png'}")


if __name__ == "__main__":
    common.main(draw, Config)
