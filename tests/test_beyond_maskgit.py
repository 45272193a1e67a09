"""beyond/maskgit.py: the cosine schedule counts, one step re-masks exactly the least confident
draws (never a known code), the annealed noise reorders early steps only, the sampler ends at x_0
for a network certain of it in `calls` network calls and keeps inpainted codes; the command."""

import importlib
import itertools
import math

import pytest
import torch
from PIL import Image
from test_05_vq_diffusion import K, Oracle, schedule

import common


@pytest.fixture(scope="module")
def maskgit():
    return importlib.import_module("beyond.maskgit")


@pytest.fixture(scope="module")
def vqd():
    return common.lesson("05_vq_diffusion")


def test_the_cosine_schedule_starts_all_masked_ends_unmasked_and_never_rises(maskgit):
    for n, calls in ((64, 10), (128, 25), (7, 3)):
        left = [maskgit.masked_after(i, calls, n) for i in range(calls + 1)]
        assert left[0] == n and left[-1] == 0 and all(a >= b for a, b in itertools.pairwise(left))
        assert left[calls // 2] == math.floor(n * math.cos(math.pi / 2 * (calls // 2) / calls) + 1e-9)


def test_one_step_remasks_the_least_confident_draws_and_keeps_known_codes(maskgit):
    """Without noise: of the [MASK] codes the n least likely draws stay [MASK], the others take
    their draws; a known code keeps its value though its draw is the least likely of all."""
    x_t = torch.full((1, 6, 1), K)
    x_t[0, 2, 0] = 4  # known
    x0 = torch.tensor([1, 2, 3, 0, 1, 2])[None, :, None]
    p_drawn = torch.tensor([0.9, 0.2, 0.01, 0.5, 0.7, 0.3])  # probability of each position's draw
    log_x0 = torch.full((1, 6, 1, K), -30.0)
    log_x0[0, torch.arange(6), 0, x0[0, :, 0]] = p_drawn.log()
    x_s = maskgit.remask_least_confident(x_t, x0, log_x0, 2, temperature=0.0)
    assert x_s[0, :, 0].tolist() == [1, K, 4, 0, 1, K]  # 0.2 and 0.3 stay masked, 0.01 is known
    everything = maskgit.remask_least_confident(x_t, x0, log_x0, 10, temperature=0.0)
    assert everything[0, :, 0].tolist() == [K, K, 4, K, K, K]  # more than there are: the known code stays


def test_the_choice_noise_changes_which_codes_stay_masked_and_zero_noise_does_not(maskgit):
    x_t = torch.full((64, 16, 1), K)
    x0 = torch.randint(K, (64, 16, 1))
    log_x0 = torch.randn(64, 16, 1, K).log_softmax(-1)
    picks = lambda temp: maskgit.remask_least_confident(x_t, x0, log_x0, 8, temp) == K
    torch.manual_seed(0)
    plain = picks(0.0)
    assert (plain == picks(0.0)).all() and (plain.sum((1, 2)) == 8).all()
    assert (plain != picks(100.0)).any()


@pytest.mark.parametrize("calls", [1, 4, 10])
def test_a_network_certain_of_x0_is_sampled_exactly_in_calls_network_calls(maskgit, vqd, calls):
    target = torch.randint(K, (1, 9, 2), generator=torch.Generator().manual_seed(4))
    seen = []

    class Counted(Oracle):
        def forward(self, x_t, t, c):
            seen.append(t[0].item())
            return super().forward(x_t, t, c)

    x = maskgit.sample_maskgit(
        Counted(target), schedule(vqd, "mask"), torch.zeros(3, dtype=torch.long), calls
    )
    assert (x == target).all() and len(seen) == calls
    assert seen[0] == schedule(vqd, "mask").T and all(a >= b for a, b in itertools.pairwise(seen))


def test_inpainting_keeps_the_known_codes(maskgit, vqd):
    target = torch.zeros(2, 9, 2, dtype=torch.long)
    known = torch.full_like(target, -1)
    known[:, :3] = 3
    x = maskgit.sample_maskgit(Oracle(target), schedule(vqd, "mask"), torch.zeros(2, dtype=torch.long), 5,
                               hold=vqd.keep(known))  # fmt: skip
    assert (x[:, :3] == 3).all() and (x[:, 3:] == 0).all()


def test_noise_without_mask_is_refused_and_bad_flags_are_one_line(maskgit, vqd):
    with pytest.raises(common.UserError, match=r"reveals \[MASK\] codes"):
        maskgit.sample_maskgit(
            Oracle(torch.zeros(1, 9, 2, dtype=torch.long)),
            vqd.noise_schedule(6, K, 0.0, 1.0),
            torch.tensor([0]),
        )
    for flags, message in (
        ({"calls": 0}, "--calls must be >= 1"),
        ({"choice_temperature": -1.0}, "--choice-temperature"),
    ):
        with pytest.raises(ValueError, match=message):
            maskgit.Config(**flags)


def test_the_command_draws_maskgit_png_in_calls_network_calls_and_judges_it(
    maskgit, vqd, prior05_here, monkeypatch
):
    """One row per class of --samples-per-class images, each batch in --calls network calls."""
    tmp_path = prior05_here
    calls, p_x0 = [], vqd.p_x0
    monkeypatch.setattr(vqd, "p_x0", lambda *a: calls.append(len(a[1])) or p_x0(*a))
    quality = maskgit.draw(maskgit.Config(out=str(tmp_path), samples_per_class=2, calls=3))
    classes = len(common.SHAPE_CLASSES)
    assert calls == [classes * 2] * 3  # one batch of 8 classes x 2, three calls
    with Image.open(tmp_path / "maskgit.png") as im:  # 32-pixel tiles, 2-pixel gaps, enlarged 2x
        assert im.size == (2 * (2 * 34 + 2), 2 * (classes * 34 + 2))
    assert 0 <= quality["sample_class_acc"] <= 1 and quality["sample_shapes_fd"] > 0
