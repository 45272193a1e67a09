"""beyond/repaint.py: at step s the network sees the known codes drawn from q(x_s | x_0) and the
result holds them exactly; the command writes repaint.png."""

import importlib

import pytest
import torch
from test_05_vq_diffusion import K, schedule, small_model, tiny

import common


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


def test_the_command_writes_repaint_png_beside_inpaint_png(repaint, tokenizer, tmp_path):
    vqd = common.lesson("05_vq_diffusion")
    vqd.train(tiny(vqd, tokenizer, tmp_path))
    repaint.draw(repaint.Config(out=str(tmp_path)))
    from PIL import Image

    assert Image.open(tmp_path / "repaint.png").size == Image.open(tmp_path / "inpaint.png").size
