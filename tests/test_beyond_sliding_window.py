"""beyond/sliding_window.py: the window's place in the canvas (brute force), the window sampler
equal to the plain one on the training grid, every canvas code drawn from its window, the command."""

import importlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from priors import small_prior

import common


@pytest.fixture(scope="module")
def window():
    return importlib.import_module("beyond.sliding_window")


@given(size=st.integers(1, 20), n=st.integers(1, 20), data=st.data())
def test_the_window_holds_its_position_inside_the_canvas_as_centred_as_it_can(window, size, n, data):
    n = min(n, size)
    i = data.draw(st.integers(0, size - 1))
    start = window.window_start(i, size, n)
    valid = [s for s in range(size - n + 1) if s <= i < s + n]  # windows in the canvas holding i
    assert start == min(valid, key=lambda s: abs((i - s) - n // 2))  # brute force: most centred


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_on_the_training_grid_the_window_sampler_is_the_plain_sampler(window, flatten, guidance):
    m, c = small_prior(flatten, T=9), torch.tensor([0, 2, 1, 1])
    torch.manual_seed(5)
    codes, logits = m.sample(c, guidance=guidance)
    torch.manual_seed(5)
    w_codes, w_logits = window.sample_window(m, c, (3, 3), guidance=guidance)
    assert w_codes.shape == (4, 3, 3, 3) and torch.equal(w_codes.flatten(1, 2), codes)
    torch.testing.assert_close(w_logits.flatten(1, 2), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flatten", [False, True])
def test_every_code_of_a_larger_canvas_is_drawn_from_its_window_of_the_training_size(window, flatten):
    """Recomputed from the finished canvas: the logits of each code are the guided logits of the
    prior on the 3 x 3 window around its position, at its place in that window (causal attention
    makes the window's later codes irrelevant, so the final canvas gives the same context)."""
    m, c = small_prior(flatten, T=9, D=2), torch.tensor([1, 0])
    codes, logits = window.sample_window(m, c, (5, 4), guidance=2.0)
    assert codes.shape == (2, 5, 4, 2) and logits.shape == (2, 5, 4, 2, 7)
    with torch.no_grad():
        for i in range(5):
            for j in range(4):
                i0, j0 = min(max(i - 1, 0), 2), min(max(j - 1, 0), 1)  # the 3 x 3 window's corner
                patch = codes[:, i0 : i0 + 3, j0 : j0 + 3].reshape(2, 9, 2)
                l_c, l_u = m(patch, c), m(patch, torch.full_like(c, m.null))
                t = (i - i0) * 3 + (j - j0)
                expected = l_u[:, t] + 2.0 * (l_c[:, t] - l_u[:, t])
                torch.testing.assert_close(logits[:, i, j], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("canvas", [(5,), (4, 0), (1, 2, 3)])
def test_a_canvas_that_is_not_two_positive_sizes_is_a_flag_error(window, canvas):
    with pytest.raises(ValueError, match="--canvas takes two positive numbers of codes, H W"):
        window.Config(canvas=canvas)


def test_the_command_draws_a_canvas_from_a_trained_prior_and_refuses_a_smaller_one(
    window, tokenizer, tmp_path
):
    ar = common.lesson("04_rq_transformer")
    flags = dict(
        tokenizer=str(tokenizer), steps=3, batch_size=8, eval_images=8, width=16, heads=2, samples_per_class=1
    )
    ar.train(ar.Config(**flags, out=str(tmp_path)))
    window.draw_canvas(window.Config(out=str(tmp_path), canvas=(10, 12), guidance=1.0))
    from PIL import Image

    # 8 classes x 4 canvases of 10 x 12 codes = 40 x 48 px (4 px per code), pad 2, enlarged 2x
    assert Image.open(tmp_path / "canvas.png").size == (2 * (4 * 50 + 2), 2 * (8 * 42 + 2))
    with pytest.raises(common.UserError, match=r"--canvas 12 7 is smaller than the 8x8 code grid"):
        window.draw_canvas(window.Config(out=str(tmp_path), canvas=(12, 7)))


def test_an_unconditional_prior_draws_the_same_canvas_with_the_default_guidance_and_with_1(
    window, tokenizer, tmp_path
):
    ar = common.lesson("04_rq_transformer")
    flags = dict(
        tokenizer=str(tokenizer), steps=2, batch_size=8, eval_images=8, width=16, heads=2, samples_per_class=1
    )
    ar.train(ar.Config(**flags, condition="none", out=str(tmp_path)))
    canvases = []
    for guidance in (window.Config.guidance, 1.0):
        window.draw_canvas(window.Config(out=str(tmp_path), canvas=(9, 9), guidance=guidance))
        canvases.append((tmp_path / "canvas.png").read_bytes())
    assert window.Config.guidance != 1.0 and canvases[0] == canvases[1]


def test_the_command_line_gives_one_line_and_exit_2_for_a_bad_canvas_or_no_trained_prior(script, tmp_path):
    code, _, err = script("beyond/sliding_window.py", "--canvas", "5", cwd=tmp_path)
    assert code == 2 and "--canvas takes two positive numbers of codes, H W" in err
    code, _, err = script("beyond/sliding_window.py", "--out", tmp_path / "none", cwd=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--sample-only: no checkpoint at" in err


def test_a_canvas_too_large_to_draw_is_refused_before_anything_loads(window):
    with pytest.raises(ValueError, match="--canvas 100000 100000: at most 256 x 256 codes"):
        window.Config(canvas=(100000, 100000))
