"""beyond/repaint.py: at step s the network sees the known codes drawn from q(x_s | x_0) and the
result holds them exactly; the command writes repaint.png."""

import importlib

import numpy as np
import pytest
import torch
from PIL import Image
from test_05_vq_diffusion import K, schedule, small_model

import common
import stage1
from common import stage2


@pytest.fixture(scope="module")
def repaint():
    return importlib.import_module("beyond.repaint")


def test_renoised_inpainting_shows_the_network_noised_known_codes_and_ends_clean(repaint):
    """Masked about as often as gammabar_t says at each step t, every known code in the end."""
    vqd, seen = common.lesson("05_vq_diffusion"), []
    m = small_model(vqd)
    forward = m.forward
    m.forward = lambda x_t, t, c: seen.append((x_t.clone(), int(t[0]))) or forward(x_t, t, c)
    known = torch.randint(K, (64, 9, 2))  # every code given
    sched = schedule(vqd, "mask")
    torch.manual_seed(4)
    x = vqd.sample(m, sched, torch.zeros(64, dtype=torch.long), hold=repaint.renoised(sched)(known))
    assert (x == known).all()
    for x_t, t in seen[1:]:  # the first call sees x_T, drawn before any step
        masked = (x_t == K).double().mean().item()
        assert abs(masked - sched.gammabar[t].item()) < 0.08, (t, masked)


def test_the_command_completes_inpaint_pngs_images_keeping_every_known_code(
    repaint, prior05_here, monkeypatch
):
    """repaint.png: inpaint.png's 8 validation images and hidden square (its first two rows, pixel
    for pixel), then completions whose codes outside the square are the images' own codes."""
    vqd, drawn, sample = common.lesson("05_vq_diffusion"), [], common.lesson("05_vq_diffusion").sample
    monkeypatch.setattr(vqd, "sample", lambda *a: drawn.append(sample(*a)) or drawn[-1])
    repaint.draw(repaint.Config(out=str(prior05_here)))
    s, _, _ = stage2.load_trained(
        repaint.Config(out=str(prior05_here)), vqd.build, vqd.__name__, stage1.tokenizer
    )
    codes, _ = vqd.ar.encode(s.tok, common.first_images(s.val_set, 8)[0])
    known = ~stage2.centre_square(s.H, "cpu").flatten()
    assert len(drawn) == 2 and all(torch.equal(x[:, known], codes[:, known]) and x.max() < 16 for x in drawn)
    rows = [
        np.asarray(Image.open(prior05_here / name))[: 2 * 34 * 2] for name in ("repaint.png", "inpaint.png")
    ]
    assert np.array_equal(*rows)  # 2 rows of 32-pixel tiles with 2-pixel gaps, enlarged 2x
