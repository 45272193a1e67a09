"""beyond/purity_sampler.py: one purity step reveals the purest [MASK] codes, as many as the chain
unmasks; the sampler ends at x_0 for a network certain of it (from all [MASK], also under
mask-and-replace), ranks by the untruncated probabilities, refuses noise without [MASK]; the command."""

import importlib

import pytest
import torch
from PIL import Image
from test_05_vq_diffusion import K, Oracle, schedule

import common


@pytest.fixture(scope="module")
def purity():
    return importlib.import_module("beyond.purity_sampler")


@pytest.fixture(scope="module")
def vqd():
    return common.lesson("05_vq_diffusion")


def test_one_purity_step_reveals_the_purest_codes_as_many_as_the_chain_unmasks(purity, vqd):
    """round(n * gammabar_s / gammabar_t) codes stay masked, the masked codes of highest
    max-probability are revealed (with their draws), and a code already known is never touched."""
    sched = schedule(vqd, "mask", T=10)
    x_t = torch.full((2, 8, 1), K)
    x_t[0, 0, 0] = 3  # known: must stay 3 though its purity is the highest
    logit = torch.tensor([9.0, 1, 7, 2, 8, 3, 6, 4])  # the logit of code 0 at each position
    logits = torch.zeros(2, 8, 1, K)
    logits[..., 0] = logit[None, :, None]
    x0 = torch.randint(K, (2, 8, 1))
    x_s = purity.reveal_purest(x_t, x0, logits, sched, 10, 6)
    for b in range(2):
        masked = (x_t[b, :, 0] == K).nonzero().flatten()
        stay = round(len(masked) * float(sched.gammabar[6] / sched.gammabar[10]))
        order = masked[logit[masked].argsort(descending=True)]
        assert (x_s[b, order[: len(masked) - stay], 0] == x0[b, order[: len(masked) - stay], 0]).all()
        assert (x_s[b, order[len(masked) - stay :], 0] == K).all()
    assert x_s[0, 0, 0] == 3 and (purity.reveal_purest(x_t, x0, logits, sched, 3, 0) != K).all()


@pytest.mark.parametrize("noise", ["mask", "mask-replace"])
def test_a_model_that_knows_x0_samples_it_from_all_mask(purity, vqd, noise):
    """From p(x_T), mask-and-replace's uniform codes would stay to the end (an oracle network got
    9.9 % of the codes wrong that way); from all [MASK] none is wrong, at any stride."""
    target = torch.randint(K, (1, 9, 2), generator=torch.Generator().manual_seed(3))
    for stride in (1, 4):
        torch.manual_seed(stride)
        x = purity.sample_purest(
            Oracle(target), schedule(vqd, noise), torch.zeros(8, dtype=torch.long), stride
        )
        assert (x == target).all(), (stride, (x != target).float().mean().item())


def test_the_purity_sampler_ranks_by_the_untruncated_probabilities(purity, vqd):
    """Top probabilities 0.87 / 0.90 / 0.95 / 0.999 at four [MASK] codes, one to reveal in the
    first step: the 0.999 one, though truncation to r = 0.86 leaves each of them a lone code of
    probability 1 (the first of a tie would be position 0)."""
    top = torch.tensor([0.87, 0.90, 0.95, 0.999])
    p = torch.stack([top, *(((1 - top) / (K - 1)),) * (K - 1)], -1)  # (4, K): code 0 on top
    seen = []

    class Net(torch.nn.Module):
        H, D = 2, 1

        def forward(self, x_t, t, c):
            seen.append(x_t.clone())
            return p.log()[None, :, None].expand(len(c), -1, -1, -1)

    purity.sample_purest(Net(), schedule(vqd, "mask", T=4), torch.tensor([0]), truncation=0.86)
    assert (seen[0] == K).all()  # from all [MASK]: round(4 * 3/4) = 3 stay masked at s = 3
    assert (seen[1][0, :, 0] != K).tolist() == [False, False, False, True]


def test_noise_without_mask_is_refused_in_one_line(purity, vqd):
    for noise in ("uniform", "mask-replace"):
        sched = vqd.noise_schedule(6, K, 0.0, 1.0)  # --gamma-end 0: no code is ever [MASK]
        with pytest.raises(common.UserError, match=r"reveals \[MASK\] codes; this prior's noise"):
            purity.sample_purest(Oracle(torch.zeros(1, 9, 2, dtype=torch.long)), sched, torch.tensor([0]))


def test_the_command_draws_purity_png_in_t_over_stride_calls_and_leaves_no_mask(
    purity, vqd, prior05_here, monkeypatch
):
    """purity.png from the prior trained in --out: one batch of 8 classes x 2, drawn from all
    [MASK] in ceil(T / stride) = 2 network calls, every code of it a real code, and judged."""
    calls, drawn, p_x0, sample = [], [], vqd.p_x0, purity.sample_purest
    monkeypatch.setattr(vqd, "p_x0", lambda *a: calls.append(a[2]) or p_x0(*a))
    monkeypatch.setattr(purity, "sample_purest", lambda *a: drawn.append(sample(*a)) or drawn[-1])
    quality = purity.draw(purity.Config(out=str(prior05_here), samples_per_class=2, stride=2))
    (x,) = drawn
    assert calls == [4, 2] and x.shape == (16, 64, 2) and x.min() >= 0 and x.max() < 16  # K = 16
    with Image.open(prior05_here / "purity.png") as im:  # a row per class, 32-pixel tiles, enlarged 2x
        assert im.size == (2 * (2 * 34 + 2), 2 * (8 * 34 + 2))
    assert 0 <= quality["sample_class_acc"] <= 1 and quality["sample_shapes_fd"] > 0
