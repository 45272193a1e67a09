"""Lesson 05: the transition matrices, closed form, posteriors and losses against explicit matrix
algebra in float64; sampling, truncation, inpainting, training and checkpoints."""

import dataclasses
import json
import math

import oracles
import pytest
import torch
import torch.nn.functional as F

import common
import stage1


@pytest.fixture(scope="module")
def vqd():
    return common.lesson("05_vq_diffusion")


K, T = 5, 6
ENDS = {"mask-replace": (0.9, 0.1), "uniform": (0.0, 1.0), "mask": (1.0, 0.0)}  # gammabar_T, K*betabar_T
NOISES = list(ENDS)


def schedule(vqd, noise="mask-replace", K=K, T=T):
    return vqd.noise_schedule(T, K, *ENDS[noise])


def one_hot_log(x, K):
    return F.one_hot(x, K).double().clamp_min(1e-300).log().clamp_min(-70)


# --- the forward process ---


@pytest.mark.parametrize("noise", NOISES)
def test_every_one_step_matrix_is_column_stochastic_and_mask_absorbing(vqd, noise):
    sched = schedule(vqd, noise)
    for t in range(1, T + 1):
        Q = oracles.transition_matrix(vqd, sched, t)  # [Q]_mn = q(x_t = m | x_{t-1} = n)
        assert (Q >= 0).all()
        torch.testing.assert_close(Q.sum(0), torch.ones(K + 1, dtype=torch.float64))  # axis 0
        assert Q[K, K] == 1 and (Q[:K, K] == 0).all()  # [MASK] stays [MASK]


def test_the_noise_types_give_the_matrices_they_name(vqd):
    mask, uniform, both = (schedule(vqd, n) for n in ("mask", "uniform", "mask-replace"))
    Qm, Qu, Qb = (oracles.transition_matrix(vqd, s, 3) for s in (mask, uniform, both))
    off = ~torch.eye(K, dtype=torch.bool)
    assert (Qm[:K, :K][off] == 0).all() and (Qm[K, :K] > 0).all()  # mask only: never redrawn
    assert (Qu[K, :K] == 0).all() and (Qu[:K, :K][off] > 0).all()  # uniform: never masked
    assert torch.allclose(Qu[:K, :K][off], Qu[0, 1])  # ... and redrawn uniformly
    assert (Qb[K, :K] > 0).all() and (Qb[:K, :K][off] > 0).all()  # mask-and-replace: both
    # the cumulative schedule ends where gamma_end / beta_end say (VQD: 0.9 and 0.1)
    assert both.gammabar[-1].item() == pytest.approx(0.9)
    assert (K * both.betabar[-1]).item() == pytest.approx(0.1)
    assert both.alphabar[-1].item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.exercise("05_vq_diffusion.log_q_xt_given_x0")
@pytest.mark.parametrize("noise", NOISES)
def test_closed_form_equals_the_product_of_one_step_matrices(vqd, noise):
    sched = schedule(vqd, noise)
    Qbar = torch.eye(K + 1, dtype=torch.float64)
    for t in range(1, T + 1):
        Qbar = oracles.transition_matrix(vqd, sched, t) @ Qbar  # Q_t ... Q_1
        closed = vqd.log_q_xt_given_x0(one_hot_log(torch.arange(K), K), sched, t).exp()  # (K, K+1)
        torch.testing.assert_close(closed, Qbar[:, :K].t(), atol=1e-12, rtol=1e-9)


@pytest.mark.exercise("05_vq_diffusion.log_q_xt_given_x0")
@pytest.mark.parametrize("noise", NOISES)
def test_closed_form_is_linear_in_x0_and_takes_a_step_per_element(vqd, noise):
    """Any non-negative weights map like a distribution does (the posterior relies on it), and a
    tensor t gives each row its own step."""
    sched = schedule(vqd, noise)
    g = torch.Generator().manual_seed(1)
    w = torch.rand(T, K, dtype=torch.float64, generator=g) * 3  # not normalised
    t = torch.arange(1, T + 1)
    got = vqd.log_q_xt_given_x0(w.log(), sched, t).exp()
    for i in range(T):
        want = w[i] @ oracles.transition_matrix(vqd, sched, int(t[i]), 0)[:, :K].t()
        torch.testing.assert_close(got[i], want, atol=1e-12, rtol=1e-9)


def test_the_jump_matrix_from_any_s_is_the_product_of_one_step_matrices(vqd):
    for noise in NOISES:
        sched = schedule(vqd, noise)
        for t in range(1, T + 1):
            for s in range(t):
                prod = torch.eye(K + 1, dtype=torch.float64)
                for i in range(s + 1, t + 1):
                    prod = oracles.transition_matrix(vqd, sched, i) @ prod
                torch.testing.assert_close(oracles.transition_matrix(vqd, sched, t, s), prod)


@pytest.mark.exercise("05_vq_diffusion.log_q_xt_given_x0")
@pytest.mark.parametrize("noise", ["mask-replace", "mask"])
def test_q_xT_given_x0_is_the_prior(vqd, noise):
    sched = schedule(vqd, noise)
    qT = vqd.log_q_xt_given_x0(one_hot_log(torch.arange(K), K), sched, T).exp()
    prior = vqd.log_prior(sched).double().exp()
    torch.testing.assert_close(qT, prior.expand(K, K + 1), atol=1e-12, rtol=1e-6)
    assert vqd.loss_T(torch.arange(K), sched).abs().max() < 1e-6


@pytest.fixture
def dense_closed_form(vqd, monkeypatch):
    """log_q_posterior runs log_q_xt_given_x0 and log_q_xt_given_xs, exercises of their own:
    explicit matrices instead."""
    monkeypatch.setattr(vqd, "log_q_xt_given_x0", oracles.dense_closed_form(vqd))
    monkeypatch.setattr(vqd, "log_q_xt_given_xs", oracles.dense_likelihood(vqd))


def bayes_posterior(vqd, sched, x0, x_t, t, s):
    """q(x_s | x_t, x_0) from explicit matrices: Qbar_{t|s}[x_t, :] * Qbar_{s|0}[:, x_0], normalised."""

    def prod(a, b):  # Q_b ... Q_{a+1}, the identity when a = b
        out = torch.eye(K + 1, dtype=torch.float64)
        for i in range(a + 1, b + 1):
            out = oracles.transition_matrix(vqd, sched, i) @ out
        return out

    p = prod(s, t)[x_t, :] * prod(0, s)[:, x0]
    return p / p.sum()


@pytest.mark.exercise("05_vq_diffusion.log_q_xt_given_xs")
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("t, s", [(1, 0), (4, 3), (6, 2)])
def test_the_likelihood_is_row_x_t_of_the_jump_matrix(vqd, noise, t, s):
    """log_q_xt_given_xs(x_t, s, t) = row x_t of Qbar_{t|s}, for every x_t and also with a tensor t."""
    sched = schedule(vqd, noise)
    Q = oracles.transition_matrix(vqd, sched, t, s)  # [m, n] = q(x_t = m | x_s = n)
    x_t = torch.arange(K + 1)
    row = vqd.log_q_xt_given_xs(x_t, sched, s, t, torch.float64, exact=True).exp()
    torch.testing.assert_close(row, Q, atol=1e-12, rtol=1e-9)
    per_image = vqd.log_q_xt_given_xs(
        x_t[None].expand(2, -1), sched, s, torch.tensor([[t], [t]]), torch.float64
    )
    torch.testing.assert_close(per_image[1].exp(), Q.clamp_min(math.exp(vqd.LOG_EPS)), atol=1e-12, rtol=1e-9)


@pytest.mark.exercise("05_vq_diffusion.log_q_posterior")
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("t, s", [(1, 0), (2, 1), (4, 3), (6, 5), (6, 3), (5, 0), (6, 0)])
def test_posterior_equals_bayes_rule_with_explicit_matrices(vqd, dense_closed_form, noise, t, s):
    sched = schedule(vqd, noise)
    for x0 in range(K):
        for x_t in range(K + 1):
            q_t = oracles.transition_matrix(vqd, sched, t, 0)[x_t, x0]
            if q_t < 1e-12:
                continue  # x_t cannot follow from this x_0
            want = bayes_posterior(vqd, sched, x0, x_t, t, s)
            got = vqd.log_q_posterior(one_hot_log(torch.tensor([x0]), K), torch.tensor([x_t]), sched, t, s)
            torch.testing.assert_close(got.exp()[0], want, atol=1e-12, rtol=1e-9)


@pytest.mark.exercise("05_vq_diffusion.log_q_posterior")
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("zeros", [False, True])
def test_x0_parameterization_is_the_mixture_of_posteriors(vqd, dense_closed_form, noise, zeros):
    """p(x_s | x_t) = sum_x0 q(x_s | x_t, x0) p(x0 | x_t) over the x0 that x_t can follow from
    (p renormalised over them), for a random p(x0), with and without exact zeros in it."""
    sched = schedule(vqd, noise)
    g = torch.Generator().manual_seed(0)
    p_x0 = torch.rand(K, dtype=torch.float64, generator=g)
    if zeros:
        p_x0[2:] = 0.0  # the example: p(x0) = [.5, .5, 0, 0, 0] up to scale
    p_x0 /= p_x0.sum()
    for t, s in [(3, 2), (6, 2), (1, 0), (6, 5)]:
        for x_t in range(K + 1):
            possible = [x0 for x0 in range(K) if oracles.transition_matrix(vqd, sched, t, 0)[x_t, x0] > 0]
            if sum(p_x0[x0] for x0 in possible) == 0:
                continue  # x_t cannot follow from any x0 this p allows
            want = sum(p_x0[x0] * bayes_posterior(vqd, sched, x0, x_t, t, s) for x0 in possible)
            got = vqd.log_q_posterior(p_x0.log()[None], torch.tensor([x_t]), sched, t, s).exp()[0]
            torch.testing.assert_close(got, want / want.sum(), atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("noise", NOISES)
def test_the_losses_and_their_gradients_are_finite_for_every_noise(vqd, noise):
    """The exact zeros of the posterior must not turn into NaN gradients (e.g. logaddexp of two
    log 0 = -inf terms), at every t including t = 1 and t = T."""
    sched = schedule(vqd, noise)
    g = torch.Generator().manual_seed(3)
    x0, t = torch.randint(K, (T, 6, 2), generator=g), torch.arange(1, T + 1)
    logits = torch.randn(T, 6, 2, K, generator=g, requires_grad=True)
    l_prev, l_x0 = vqd.losses(logits, x0, vqd.q_sample(x0, sched, t), sched, t)
    (l_prev.mean() + l_x0.mean()).backward()
    assert l_prev.isfinite().all() and logits.grad.isfinite().all()


@pytest.mark.exercise("05_vq_diffusion.log_q_posterior")
def test_mask_only_posterior_keeps_an_unmasked_code(vqd, dense_closed_form):
    """Mask-only noise never unmasks back and never redraws: x_t = code 1 means x_s = code 1."""
    sched = vqd.noise_schedule(10, K, *ENDS["mask"])
    p_x0 = torch.tensor([[0.5, 0.5, 0, 0, 0]], dtype=torch.float64)
    got = vqd.log_q_posterior(p_x0.log(), torch.tensor([1]), sched, 9, 8).exp()[0]
    torch.testing.assert_close(got, F.one_hot(torch.tensor(1), K + 1).double(), atol=1e-12, rtol=0)


def test_the_training_loss_of_a_mask_only_model_has_no_term_at_unmasked_codes(vqd):
    """L_{t-1} = KL(q || p_theta) is 0 at codes that are not masked, whatever the network says."""
    sched = vqd.noise_schedule(T, K, *ENDS["mask"])
    g = torch.Generator().manual_seed(2)
    x0 = torch.randint(K, (3, 6, 2), generator=g)
    t = torch.tensor([2, 4, 6])
    x_t = vqd.q_sample(x0, sched, t)
    logits = torch.randn(3, 6, 2, K, generator=g) * 3
    l_prev, _ = vqd.losses(logits, x0, x_t, sched, t)
    assert (x_t < K).any() and l_prev[x_t < K].abs().max() < 1e-6
    assert (l_prev[x_t == K] > 1e-3).all()


def test_L_t_minus_1_is_zero_for_an_exact_x0_prediction_and_positive_otherwise(vqd):
    sched = schedule(vqd)
    torch.manual_seed(1)
    x0 = torch.randint(K, (4, 6, 2))
    t = torch.tensor([2, 3, 5, 6])
    x_t = vqd.q_sample(x0, sched, t)
    exact = F.one_hot(x0, K).float() * 200 - 100  # logits whose softmax is one-hot(x_0)
    l_vlb, l_x0 = vqd.losses(exact, x0, x_t, sched, t)
    assert l_vlb.abs().max() < 1e-5 and l_x0.abs().max() < 1e-5
    l_vlb, l_x0 = vqd.losses(torch.zeros_like(exact), x0, x_t, sched, t)
    assert l_vlb.mean() > 1e-3 and l_x0.mean() == pytest.approx(torch.log(torch.tensor(K * 1.0)).item())


@pytest.mark.exercise("05_vq_diffusion.q_sample")
def test_q_sample_draws_the_closed_form(vqd):
    sched = schedule(vqd)
    torch.manual_seed(2)
    x0 = torch.full((200_000,), 3)
    x_t = vqd.q_sample(x0, sched, torch.full((200_000,), 4))
    freq = torch.bincount(x_t, minlength=K + 1).double() / len(x_t)
    want = oracles.transition_matrix(vqd, sched, 4, 0)[:, 3]  # column x_0 = 3 of Qbar_4
    torch.testing.assert_close(freq, want, atol=4e-3, rtol=0)


@pytest.mark.exercise("05_vq_diffusion.q_sample")
def test_q_sample_takes_each_images_own_step(vqd):
    """t = 0 is x_0 itself; at t = T of mask-only noise every code is [MASK]; t is per image."""
    sched = vqd.noise_schedule(T, K, *ENDS["mask"])
    x0 = torch.randint(K, (3, 50, 2), generator=torch.Generator().manual_seed(0))
    x_t = vqd.q_sample(x0, sched, torch.tensor([0, T, 0]))
    assert x_t.shape == x0.shape and x_t.dtype == x0.dtype
    assert torch.equal(x_t[[0, 2]], x0[[0, 2]]) and (x_t[1] == K).all()


def test_kl_is_p_against_q_in_that_order_as_a_hand_computed_sum():
    """KL(p || q) = sum_k p_k log(p_k / q_k), with p the true posterior and q the model's (L_{t-1})."""
    import math

    vqd = common.lesson("05_vq_diffusion")
    p, q = [0.7, 0.2, 0.1], [0.2, 0.5, 0.3]
    want = sum(a * math.log(a / b) for a, b in zip(p, q))  # 0.5838...; KL(q || p) is 0.5372...
    got = vqd.kl(torch.tensor(p, dtype=torch.float64).log(), torch.tensor(q, dtype=torch.float64).log())
    assert got.item() == pytest.approx(want, rel=1e-12)


# --- network, sampling ---


def small_model(vqd, K=K, H=3, D=2, classes=3):
    torch.manual_seed(0)
    cfg = vqd.Config(width=16, heads=2, layers=2, steps_T=T)
    return vqd.DiffusionTransformer(K, H, D, cfg, classes).eval()


def test_network_sees_every_position_and_the_timestep(vqd):
    m = small_model(vqd)
    with torch.no_grad():  # AdaLN starts at zero; give it weights so that t and c matter
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randint(K + 1, (1, 9, 2))
    y = x.clone()
    y[0, 8, 1] = (x[0, 8, 1] + 1) % (K + 1)  # change the LAST code only
    t, c = torch.tensor([3]), torch.tensor([1])
    a, b = m(x, t, c), m(y, t, c)
    assert a.shape == (1, 9, 2, K)
    assert not torch.allclose(a[0, 0], b[0, 0])  # bidirectional: the first position sees it
    assert not torch.allclose(m(x, torch.tensor([4]), c), a)
    assert not torch.allclose(m(x, t, torch.tensor([2])), a)


@pytest.mark.exercise("04_rq_transformer.filter_logits")
def test_truncation_keeps_the_smallest_set_of_mass_r(vqd):
    ar = common.lesson("04_rq_transformer")
    p = torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])
    kept = lambda r: torch.isfinite(ar.filter_logits(p.log(), top_p=r)).sum().item()
    assert kept(0.5) == 1 and kept(0.79) == 2 and kept(0.86) == 3 and kept(0.9) == 3 and kept(0.91) == 4


@pytest.mark.parametrize("stride", [1, 4, 6])
def test_sampling_returns_codes_and_calls_the_network_ceil_T_over_stride_times(vqd, stride):
    m = small_model(vqd)
    calls = []
    m.register_forward_hook(lambda *a: calls.append(1))
    x = vqd.sample(m, schedule(vqd), torch.tensor([0, 2]), stride=stride, truncation=0.86)
    assert x.shape == (2, 9, 2) and x.dtype == torch.long
    assert ((x >= 0) & (x < K)).all()  # no [MASK] left
    assert len(calls) == -(-T // stride)


def test_inpainting_keeps_the_known_codes(vqd):
    m = small_model(vqd)
    torch.manual_seed(3)
    known = torch.randint(K, (2, 9, 2))
    keep = torch.rand(2, 9, 2) < 0.5
    x = vqd.sample(
        m, schedule(vqd), torch.tensor([1, 1]), stride=2, hold=vqd.keep(known.masked_fill(~keep, -1))
    )
    assert (x[keep] == known[keep]).all()
    assert ((x >= 0) & (x < K)).all()


def test_guided_sampling_equals_sampling_a_model_that_outputs_the_guided_distribution(vqd):
    """CFG on log p_theta(x_0 | x_t): a model with log p_c (class) and log p_u ("no class") sampled
    at scale s draws exactly what a model outputting log_softmax(log p_u + s (log p_c - log p_u))
    draws with the same noise; at s = 1 that is the conditional model."""
    g = torch.Generator().manual_seed(5)
    log_c, log_u = (torch.randn(1, 9, 2, K, generator=g).log_softmax(-1) for _ in range(2))

    class Pair(torch.nn.Module):
        H, D, null = 3, 2, 3

        def __init__(self, fixed=None):
            super().__init__()
            self.fixed = fixed

        def forward(self, x_t, t, c):
            if self.fixed is not None:
                return self.fixed.expand(len(c), -1, -1, -1)
            return torch.where((c == self.null).view(-1, 1, 1, 1), log_u, log_c)

    c = torch.tensor([0, 1, 2, 0])
    for s in (1.0, 3.0):
        want = (log_u + s * (log_c - log_u)).log_softmax(-1)
        torch.manual_seed(6)
        guided = vqd.sample(Pair(), schedule(vqd), c, truncation=0.9, guidance=s)
        torch.manual_seed(6)
        plain = vqd.sample(Pair(want), schedule(vqd), c, truncation=0.9)
        assert torch.equal(guided, plain), s


class Oracle(torch.nn.Module):
    """A network certain of one fixed x_0 (B, 9, 2), whatever x_t."""

    H, D = 3, 2

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, x_t, t, c):
        return (F.one_hot(self.target, K).float() * 50).expand(len(c), -1, -1, -1)


@pytest.mark.parametrize("noise", ["mask", "mask-replace"])
def test_a_model_that_knows_x0_samples_it(vqd, noise):
    """With a network that always predicts one fixed x_0, the reverse chain ends exactly at that
    x_0, at any stride (with mask-and-replace too: its uniform codes of p(x_T) are revisited)."""
    target = torch.randint(K, (1, 9, 2), generator=torch.Generator().manual_seed(3))
    for stride in (1, 3):
        torch.manual_seed(stride)
        x = vqd.sample(Oracle(target), schedule(vqd, noise), torch.zeros(8, dtype=torch.long), stride)
        assert (x == target).all(), (stride, (x != target).float().mean().item())


# --- config, training, checkpoints ---


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(gamma_end=1.5), r"--gamma-end must be in \[0, 1\], got 1.5"),
        (dict(gamma_end=-0.1), r"--gamma-end must be in \[0, 1\], got -0.1"),
        (dict(truncation=0.0), "--truncation"),
        (dict(stride=0), "--stride"),
    ],
)
def test_bad_flags_are_errors(vqd, flags, message):
    with pytest.raises(ValueError, match=message):
        vqd.Config(**flags)


def test_the_default_tokenizer_is_a_depth_1_vq_with_128_codes(vqd, tokenizer, tmp_path, monkeypatch):
    """A depth-2 tokenizer in runs/02_rq is not reused: lesson 05 trains the paper's kind of VQ."""
    ar = common.lesson("04_rq_transformer")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "02_rq").mkdir(parents=True)
    (tmp_path / "runs" / "02_rq" / "ckpt.pt").write_bytes(tokenizer.read_bytes())  # depth 2
    train = ar.rq.train  # lesson 02's own loop, shortened: a tokenizer of the shape asked for
    monkeypatch.setattr(
        ar.rq, "train", lambda c: train(dataclasses.replace(c, steps=2, batch_size=8, eval_images=8))
    )
    path = stage1.tokenizer_path(vqd.Config(dataset="shapes", out="r05"))
    tok, cfg = stage1.load_tokenizer(path)
    assert str(path) == "r05/tokenizer/ckpt.pt" and cfg.depth == tok.quantizer.depth == 1
    assert tok.quantizer.codebook.shape[0] == cfg.codebook_size == 128


def test_training_lowers_the_loss_and_writes_everything(vqd, tokenizer, tmp_path):
    cfg = vqd.Config(tokenizer=str(tokenizer), steps=60, batch_size=16, eval_images=16, log_every=10,
                     width=32, heads=2, layers=2, steps_T=10, stride=5, lr=3e-3, out=str(tmp_path))  # fmt: skip
    model = vqd.train(cfg)
    log = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2])
    final = log[-1]
    assert final["final"] and final["val_vlb"] > 0 and final["val_L_T"] < 1e-6
    assert final["val_vlb"] == pytest.approx(10 * final["val_L_t-1"] + final["val_L_T"])
    for name in ("samples.png", "inpaint.png", "ckpt.pt"):
        assert (tmp_path / name).exists()
    ckpt = common.load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["lesson"] == "05_vq_diffusion" and ckpt["step"] == 60
    again = vqd.DiffusionTransformer(16, 8, 2, vqd.Config(**ckpt["config"]), num_classes=8)
    again.load_state_dict(ckpt["model"])  # K = 16 codes, an 8 x 8 grid of depth 2, 8 classes
    x_t, t, c = torch.randint(17, (2, 64, 2)), torch.tensor([3, 9]), torch.tensor([0, 5])
    torch.testing.assert_close(again.eval()(x_t, t, c), model(x_t, t, c))


def test_command_line_help_and_a_bad_noise_flag(script, tmp_path):
    code, out, _ = script("05_vq_diffusion.py", "--help", cwd=tmp_path)
    assert code == 0 and "--steps-T" in out and "--truncation" in out
    code, _, err = script("05_vq_diffusion.py", "--gamma-end", "1.1", cwd=tmp_path)
    assert code == 2 and "--gamma-end must be in [0, 1], got 1.1" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "runs").exists()


def tiny(vqd, tokenizer, tmp_path, **kw):
    base = dict(tokenizer=str(tokenizer), steps=2, batch_size=8, eval_images=8, width=16, heads=2,
                layers=1, steps_T=4, stride=2, samples_per_class=1, out=str(tmp_path))  # fmt: skip
    return vqd.Config(**{**base, **kw})


@pytest.mark.parametrize("condition, used", [("class", 2.5), ("none", 1.0)])
def test_samples_and_inpainting_use_one_guidance_and_none_without_a_condition(
    vqd, tokenizer, tmp_path, monkeypatch, condition, used
):
    """samples.png and inpaint.png both sample at --guidance; an unconditional prior (whose "no
    class" row never trained) at 1, whatever --guidance says."""
    seen, sample = [], vqd.sample
    guidance = lambda *a, **k: k.get("guidance", a[5] if len(a) > 5 else 1.0)  # sample()'s 6th argument
    monkeypatch.setattr(vqd, "sample", lambda *a, **k: seen.append(guidance(*a, **k)) or sample(*a, **k))
    vqd.train(tiny(vqd, tokenizer, tmp_path, condition=condition, guidance=2.5))
    assert len(seen) == 3 and set(seen) == {used}  # samples.png, then two inpaint.png completions


def test_under_mask_only_noise_each_kl_term_is_the_weighted_masked_cross_entropy(vqd):
    """docs/equations.md, VQD mask-only weight: L_{t-1} = w_t [x_t = MASK] (-log p_theta(x_0 | x_t)) at
    every t = 1..T, w_t = 1/t for the linear schedule; the KL form is computed by the full posterior."""
    T_ = 20
    sched = vqd.noise_schedule(T_, K, 1.0, 0.0)
    torch.testing.assert_close(
        vqd.mask_only_weight(sched, torch.arange(1, T_ + 1)), 1 / torch.arange(1, T_ + 1.0).double()
    )
    g = torch.Generator().manual_seed(3)
    for t_val in range(1, T_ + 1):
        x0 = torch.randint(K, (4, 16, 2), generator=g)
        t = torch.full((4,), t_val)
        x_t = vqd.q_sample(x0, sched, t)
        logits = torch.randn(4, 16, 2, K, generator=g) * 2
        l_prev, l_x0 = vqd.losses(logits, x0, x_t, sched, t)
        ce = -logits.log_softmax(-1).gather(-1, x0[..., None]).squeeze(-1)
        expected = vqd.mask_only_weight(sched, t_val).item() * (x_t == K) * ce
        torch.testing.assert_close(l_prev, expected.float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(l_x0, ce)


def test_stratified_timesteps_put_one_t_in_each_of_b_equal_strata_and_each_t_is_uniform(vqd):
    """B = T: every t in 1..T exactly once per batch; B < T: one t per stratum of width T/B; over
    many batches each position's t is uniform on 1..T (the loss stays unbiased)."""
    torch.manual_seed(0)
    for _ in range(20):
        assert sorted(vqd.stratified_timesteps(100, 100).tolist()) == list(range(1, 101))
        t = vqd.stratified_timesteps(8, 100).sort().values
        assert ((t - 1) // 12.5).long().tolist() == list(range(8)) and t.min() >= 1 and t.max() <= 100
    first = torch.stack([vqd.stratified_timesteps(4, 10)[0] for _ in range(20000)])
    freq = torch.bincount(first, minlength=11)[1:] / 20000
    assert (freq - 0.1).abs().max() < 0.015  # 4.5 standard errors
