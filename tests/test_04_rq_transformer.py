"""Lesson 04: causality, cached sampling, soft and stochastic codes, sampling filters, NLL, checkpoints."""

import itertools
import json
import math
from pathlib import Path

import oracles
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from priors import small_prior

import common
import stage1
from common import stage2


@pytest.fixture(scope="module")
def ar():
    return common.lesson("04_rq_transformer")


# --- causality and the cache ---


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("t, d", [(0, 0), (2, 1), (3, 0), (5, 2)])
def test_later_codes_do_not_change_earlier_logits(ar, flatten, t, d):
    m = small_prior(flatten)
    codes, c = torch.randint(7, (2, 6, 3)), torch.tensor([0, 2])
    changed = codes.clone().view(2, -1)
    changed[:, t * 3 + d :] = torch.randint(7, changed[:, t * 3 + d :].shape)  # at and after (t, d)
    a, b = m(codes, c).view(2, 18, 7), m(changed.view(2, 6, 3), c).view(2, 18, 7)
    torch.testing.assert_close(a[:, : t * 3 + d + 1], b[:, : t * 3 + d + 1])  # up to and including (t, d)


@pytest.mark.parametrize("flatten", [False, True])
def test_cached_sampling_gives_the_logits_of_a_full_forward_pass(ar, flatten):
    m = small_prior(flatten)
    c = torch.tensor([1, 0, 2])
    torch.manual_seed(3)
    codes, logits = m.sample(c)
    torch.testing.assert_close(logits, m(codes, c), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flatten", [False, True])
def test_guided_sampling_draws_from_the_guided_logits_of_full_forward_passes(ar, flatten):
    """Classifier-free guidance: every drawn code's logits are l_u + s (l_c - l_u), with l_c and
    l_u the full forward pass on the drawn codes with the class and with "no class"."""
    m = small_prior(flatten)
    c = torch.tensor([0, 2, 1])
    codes, logits = m.sample(c, guidance=2.5)
    with torch.no_grad():
        l_c, l_u = m(codes, c), m(codes, torch.full_like(c, m.null))
    torch.testing.assert_close(logits, l_u + 2.5 * (l_c - l_u), atol=1e-4, rtol=1e-4)


@pytest.mark.exercise("04_rq_transformer.guide")
@pytest.mark.parametrize("scale", [0.0, 0.5, 3.0])
def test_guidance_moves_from_the_unconditional_logits_by_scale_times_the_difference(ar, scale):
    g = torch.Generator().manual_seed(0)
    l_c, l_u = torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    guided = ar.guide(torch.cat([l_c, l_u]), scale)
    torch.testing.assert_close(guided, l_u + scale * (l_c - l_u))
    if scale == 0.0:
        torch.testing.assert_close(guided, l_u)  # s = 0: the unconditional model alone


@pytest.mark.exercise("04_rq_transformer.guide")
def test_guidance_of_scale_one_is_the_conditioned_batch_itself(ar):
    logits = torch.randn(3, 4, 5)  # no second half at scale 1
    assert torch.equal(ar.guide(logits, 1.0), logits)


@pytest.mark.exercise("04_rq_transformer.KVCache.append")
def test_the_cache_returns_every_position_so_far_in_order(ar):
    cache = ar.KVCache(B=2, heads=3, max_len=5, head_dim=4, device="cpu")
    steps = [torch.randn(2, 3, n, 4) for n in (1, 2, 1)]
    for i, x in enumerate(steps):
        k, v = cache.append(x, -x)
        want = torch.cat(steps[: i + 1], 2)
        assert torch.equal(k, want) and torch.equal(v, -want)


@pytest.mark.exercise("04_rq_transformer.KVCache.append")
def test_cached_attention_one_position_at_a_time_equals_causal_attention(ar):
    torch.manual_seed(0)
    block = ar.Block(width=8, heads=2, dropout=0.0).eval()
    x = torch.randn(2, 6, 8)
    full = block(x)
    cache = ar.KVCache(2, 2, 6, 4, "cpu")
    steps = torch.cat([block(x[:, i : i + 1], cache) for i in range(6)], 1)
    torch.testing.assert_close(steps, full, atol=1e-6, rtol=1e-5)


def test_label_dropout_replaces_the_class_by_no_class_at_its_rate(ar):
    s = stage2.Stage2(*[None] * 8, num_classes=8, H=8, size=32, condition="class")
    s.device = torch.device("cpu")
    torch.manual_seed(0)
    c = s.labels(torch.zeros(20000, dtype=torch.long), drop=0.1)
    assert set(c.tolist()) == {0, 8} and abs((c == 8).double().mean().item() - 0.1) < 0.01
    assert (s.labels(torch.arange(8)) == torch.arange(8)).all()  # no dropout: the classes


def test_the_class_changes_the_logits(ar):
    m = small_prior()
    codes = torch.randint(7, (1, 6, 3))
    assert not torch.allclose(m(codes, torch.tensor([0])), m(codes, torch.tensor([1])))


@pytest.mark.exercise("04_rq_transformer.nll")
def test_flat_and_rq_models_compute_the_same_nll_definition(ar):
    codes, c = torch.randint(7, (2, 6, 3)), torch.tensor([0, 1])
    for flatten in (False, True):
        logits = small_prior(flatten)(codes, c)
        explicit = -torch.stack(
            [
                logits[b, t, d].log_softmax(-1)[codes[b, t, d]]
                for b in range(2)
                for t in range(6)
                for d in range(3)
            ]
        ).mean()
        torch.testing.assert_close(ar.nll(logits, codes), explicit)


@pytest.mark.exercise("04_rq_transformer.nll")
def test_nll_against_soft_labels_is_the_cross_entropy_and_one_hot_labels_give_the_hard_nll(ar):
    g = torch.Generator().manual_seed(0)
    logits, codes = torch.randn(2, 3, 2, 5, generator=g), torch.randint(5, (2, 3, 2), generator=g)
    soft = torch.rand(6, 2, 5, generator=g)
    soft /= soft.sum(-1, keepdim=True)
    logp = logits.log_softmax(-1).view(6, 2, 5)
    torch.testing.assert_close(ar.nll(logits, codes, soft), -(soft * logp).sum(-1).mean())
    one_hot = torch.nn.functional.one_hot(codes, 5).float().view(6, 2, 5)
    torch.testing.assert_close(ar.nll(logits, codes, one_hot), ar.nll(logits, codes))


# --- soft labels and stochastic codes (RQ Eq. 15) ---


@pytest.fixture
def plain_rq(ar, monkeypatch):
    """soft_codes runs lesson 02's residual_quantize, an exercise of its own: a plain loop instead."""
    monkeypatch.setattr(ar.rq, "residual_quantize", oracles.residual_quantize)


@pytest.mark.exercise("04_rq_transformer.soft_codes")
def test_soft_labels_are_distributions_over_codes(ar, plain_rq):
    z, codebook = torch.randn(10, 4), torch.randn(6, 4)
    _, probs = ar.soft_codes(z, codebook, depth=3, tau=0.5)
    assert probs.shape == (10, 3, 6) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(10, 3))


@pytest.mark.exercise("04_rq_transformer.soft_codes")
def test_soft_labels_tend_to_the_one_hot_code_as_tau_goes_to_zero(ar, plain_rq):
    z, codebook = torch.randn(10, 4), torch.randn(6, 4)
    codes, probs = ar.soft_codes(z, codebook, depth=2, tau=1e-4)
    hard, _ = oracles.residual_quantize(z, codebook, 2)
    assert torch.equal(codes, hard)  # the argmin codes of lesson 02
    torch.testing.assert_close(probs, torch.nn.functional.one_hot(hard, 6).float(), atol=1e-3, rtol=0)


@pytest.mark.exercise("04_rq_transformer.soft_codes")
def test_soft_labels_follow_squared_distances(ar, plain_rq):
    z, codebook = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    _, probs = ar.soft_codes(z, codebook, depth=1, tau=0.5)
    expected = torch.softmax(torch.tensor([-1.0, -4.0]) / 0.5, 0)  # -||z - e||^2 / tau
    torch.testing.assert_close(probs[0, 0], expected)


@pytest.mark.exercise("04_rq_transformer.soft_codes")
def test_stochastic_codes_match_q_tau_frequencies(ar, plain_rq):
    torch.manual_seed(0)
    z, codebook = torch.zeros(20000, 2), torch.tensor([[1.0, 0.0], [0.0, 1.2], [-0.9, 0.0]])
    codes, probs = ar.soft_codes(z, codebook, depth=1, tau=1.0, stochastic=True)
    freq = torch.bincount(codes[:, 0], minlength=3).float() / len(z)
    torch.testing.assert_close(freq, probs[0, 0], atol=0.015, rtol=0)


# --- sampling filters ---


@pytest.mark.exercise("04_rq_transformer.filter_logits")
@given(
    K=st.integers(2, 12), top_k=st.integers(0, 12), top_p=st.floats(0.01, 1.0), seed=st.integers(0, 2**31 - 1)
)
def test_filters_agree_with_a_row_by_row_oracle(ar, K, top_k, top_p, seed):
    logits = torch.randn(3, K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    got = ar.filter_logits(logits, top_k, top_p)
    assert torch.equal(torch.isfinite(got), torch.isfinite(oracles.filter_logits(logits, top_k, top_p)))
    kept = torch.isfinite(got)
    assert torch.equal(got[kept], logits[kept])  # the kept logits are unchanged
    assert kept.gather(1, logits.argmax(1, keepdim=True)).all()  # the most likely code always stays


@pytest.mark.exercise("04_rq_transformer.filter_logits")
def test_top_p_over_many_codes_agrees_with_the_oracle_on_both_paths(ar):
    """K = 1024: peaked rows keep a few codes (decided within their 64 largest), flat rows keep
    hundreds (decided over all K); both agree with the row-by-row oracle (float64: no rounding)."""
    g = torch.Generator().manual_seed(3)
    scales = torch.tensor([8.0, 4.0, 0.1, 0.5, 2.0, 0.05]).double()[:, None]
    logits = torch.randn(6, 1024, generator=g, dtype=torch.float64) * scales
    kept = torch.isfinite(ar.filter_logits(logits, top_p=0.9))
    sizes = kept.sum(1)
    assert sizes.min() < 64 < sizes.max()  # both paths taken
    assert torch.equal(kept, torch.isfinite(oracles.filter_logits(logits, top_p=0.9)))
    assert torch.equal(torch.isfinite(ar.filter_logits(logits[None], top_p=0.9))[0], kept)  # (1, 6, K)


@pytest.fixture
def plain_filters(ar, monkeypatch):
    """sample_logits runs filter_logits, an exercise of its own: the oracle's instead."""
    monkeypatch.setattr(ar, "filter_logits", oracles.filter_logits)


@pytest.mark.exercise("04_rq_transformer.filter_logits")
def test_top_k_keeps_the_k_largest_logits(ar):
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    kept = torch.isfinite(ar.filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False]]


@pytest.mark.exercise("04_rq_transformer.filter_logits")
def test_top_p_keeps_the_smallest_set_reaching_p(ar):
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.1, 0.3, 0.05]]))
    assert torch.isfinite(ar.filter_logits(logits, top_p=0.75)).tolist() == [
        [False, True, False, True, False]
    ]
    assert torch.isfinite(ar.filter_logits(logits, top_p=0.79)).tolist() == [
        [False, True, False, True, False]
    ]
    assert torch.isfinite(ar.filter_logits(logits, top_p=0.81)).sum() == 3


@pytest.mark.exercise("04_rq_transformer.sample_logits")
def test_samples_respect_top_k_and_top_p(ar, plain_filters):
    torch.manual_seed(0)
    logits = torch.randn(1, 50).expand(4000, 50)
    draws = ar.sample_logits(logits, top_k=5)
    assert set(draws.tolist()) == set(logits[0].topk(5).indices.tolist())
    draws = ar.sample_logits(logits, top_p=0.3)
    allowed = torch.isfinite(oracles.filter_logits(logits[:1], top_p=0.3))[0]
    assert allowed[draws].all()


@pytest.mark.exercise("04_rq_transformer.sample_logits")
def test_inverse_cdf_sampling_matches_the_softmax(ar, plain_filters):
    torch.manual_seed(1)
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(30000, 3)
    freq = torch.bincount(ar.sample_logits(logits), minlength=3).float() / 30000
    torch.testing.assert_close(freq, logits[0].softmax(0), atol=0.012, rtol=0)


@pytest.mark.exercise("04_rq_transformer.sample_logits")
def test_temperature_divides_the_logits(ar, plain_filters):
    torch.manual_seed(2)
    logits = torch.tensor([[0.0, 1.0, 3.0]]).expand(30000, 3)
    freq = torch.bincount(ar.sample_logits(logits, temperature=2.0), minlength=3).float() / 30000
    torch.testing.assert_close(freq, (logits[0] / 2.0).softmax(0), atol=0.012, rtol=0)


def test_a_draw_at_u_zero_never_picks_a_filtered_code(ar, monkeypatch):
    """At u = 0 the inverse CDF must skip the leading codes of probability 0 (top-k removed them)."""
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]]).expand(8, 4)
    monkeypatch.setattr(torch, "rand", lambda *a, **kw: torch.zeros(*a, device=kw.get("device")))
    assert (ar.sample_logits(logits, top_k=2) == 1).all()  # code 0 has cdf 0 = u: not drawn


def test_codes_are_the_same_under_bf16_autocast_and_in_float32(ar, tokenizer):
    """Training encodes under the lesson's autocast, validation without: the codes must match."""
    tok, _ = stage1.load_tokenizer(tokenizer)
    x = common.first_images(common.Shapes("val"), 32)[0]
    plain, _ = ar.encode(tok, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = ar.encode(tok, x)
    assert torch.equal(plain, mixed)


def test_code_distances_run_in_true_float32_also_where_tf32_is_on(ar, tokenizer, monkeypatch, tf32_on):
    tok, _ = stage1.load_tokenizer(tokenizer)
    seen, soft = [], ar.soft_codes
    monkeypatch.setattr(
        ar, "soft_codes", lambda *a: seen.append(torch.get_float32_matmul_precision()) or soft(*a)
    )
    ar.encode(tok, torch.zeros(2, 3, 32, 32))
    assert seen == ["highest"] and torch.get_float32_matmul_precision() == "high"


def test_the_tokenizers_convolutions_in_encode_run_without_tf32(ar, tokenizer, tf32_on):
    tok, _ = stage1.load_tokenizer(tokenizer)
    seen = []
    hook = lambda module, args: seen.append(
        (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    )
    handle = tok.encoder.register_forward_pre_hook(hook)
    ar.encode(tok, torch.zeros(2, 3, 32, 32))
    handle.remove()
    assert seen == [(False, "highest")]  # inside: cuDNN convolutions and matmuls in true float32
    assert torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "high"  # restored


# --- training, sampling and checkpoints end to end ---


def small(ar, tokenizer, tmp_path, **kw):
    base = dict(tokenizer=str(tokenizer), steps=3, batch_size=8, eval_images=8, width=16, heads=2)
    return ar.Config(**{**base, "samples_per_class": 1, "out": str(tmp_path), **kw})


def test_training_writes_samples_and_round_trips_its_checkpoint(ar, tokenizer, tmp_path):
    cfg = small(ar, tokenizer, tmp_path)
    trained = ar.train(cfg)
    assert (tmp_path / "samples.png").exists()
    ckpt = common.load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 3 and ckpt["lesson"] == "04_rq_transformer"
    fresh = ar.RQTransformer(trained.codebook, trained.T, trained.D, cfg, num_classes=8)
    fresh.load_state_dict(ckpt["model"])
    codes, c = torch.randint(trained.K, (2, trained.T, trained.D)), torch.tensor([0, 5])
    torch.testing.assert_close(fresh.eval()(codes, c), trained.eval()(codes, c))


def read_losses(path):
    return torch.tensor([json.loads(line)["loss"] for line in open(path) if '"loss"' in line])


def test_the_training_loss_falls(ar, tokenizer, tmp_path):
    cfg = small(ar, tokenizer, tmp_path, steps=40, batch_size=16, log_every=1, width=32)
    ar.train(cfg)
    losses = read_losses(tmp_path / "metrics.jsonl")
    assert losses[-5:].mean() < 0.8 * losses[:5].mean()


def test_wrong_image_size_for_the_tokenizer_is_an_error(ar, tokenizer, tmp_path):
    with pytest.raises(common.UserError, match="trained on 32 px images, not --image-size 64"):
        ar.train(ar.Config(tokenizer=str(tokenizer), image_size=64, steps=1, out=str(tmp_path)))


def test_without_a_flag_a_matching_tokenizer_is_reused(ar, tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "02_rq").mkdir(parents=True)
    for name in ("ckpt.pt", "metrics.jsonl"):  # a finished run: its log holds the final record
        (tmp_path / "runs" / "02_rq" / name).write_bytes((tokenizer.parent / name).read_bytes())
    assert stage1.tokenizer_path(ar.Config(out="elsewhere", dataset="shapes")) == Path("runs/02_rq/ckpt.pt")
    assert stage1.tokenizer_path(ar.Config(tokenizer="given.pt")) == Path("given.pt")


def test_a_reused_tokenizer_is_announced_with_its_steps_and_psnr(
    ar, tokenizer, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "02_rq").mkdir(parents=True)
    for name in ("ckpt.pt", "metrics.jsonl"):
        (tmp_path / "runs" / "02_rq" / name).write_bytes((tokenizer.parent / name).read_bytes())
    psnr = common.read_log(tokenizer.parent)[-1]["val_psnr"]
    stage1.tokenizer_path(ar.Config(out="elsewhere", dataset="shapes"))
    said = capsys.readouterr()
    assert f"reusing runs/02_rq/ckpt.pt (4 steps, validation PSNR {psnr:.2f} dB)" in said.out + said.err
    assert "python 02_rq.py --dataset shapes --overwrite" in said.out + said.err


def test_a_lesson_01_checkpoint_is_not_a_tokenizer(ar, vq, tmp_path):
    vq.train(vq.Config(steps=1, batch_size=8, eval_images=8, out=str(tmp_path / "vq")))
    with pytest.raises(common.UserError, match="holds no tokenizer"):
        ar.train(ar.Config(tokenizer=str(tmp_path / "vq" / "ckpt.pt"), steps=1, out=str(tmp_path / "ar")))


def test_command_line_with_a_missing_tokenizer_exits_2(script, tmp_path):
    code, _, err = script("04_rq_transformer.py", "--tokenizer", "nope.pt", "--steps", "1", cwd=tmp_path)
    assert code == 2 and "checkpoint nope.pt does not exist" in err and len(err.splitlines()) == 1
    (tmp_path / "runs" / "02_rq").mkdir(parents=True)
    errors = {}
    for flags in (["--tokenizer", "runs/02_rq"], ["--heads", "0"], ["--dropout", "2"]):
        code, _, err = script("04_rq_transformer.py", *flags, "--steps", "1", cwd=tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        errors[flags[0]] = err
    assert "runs/02_rq is a folder; pass the file in it, runs/02_rq/ckpt.pt" in errors["--tokenizer"]


@pytest.mark.parametrize("lesson", ["04_rq_transformer", "05_vq_diffusion"])
@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(heads=0), "must be a positive multiple of --heads 0"),
        (dict(dropout=2.0), r"--dropout must be in \[0, 1\) \(got 2.0\)"),
        (dict(dropout=-0.5), r"--dropout must be in \[0, 1\) \(got -0.5\)"),
        (dict(samples_per_class=0), r"--samples-per-class >= 1 \(got 0\)"),
        (dict(label_dropout=1.0), r"--label-dropout must be in \[0, 1\) \(got 1.0\)"),
        (dict(guidance=-1.0), r"--guidance must be a finite number >= 0 \(got -1.0\)"),
        (dict(guidance=float("inf")), r"--guidance must be a finite number >= 0 \(got inf\)"),
        (dict(guidance=float("nan")), r"--guidance must be a finite number >= 0 \(got nan\)"),
    ],
)
def test_bad_prior_flags_are_one_line_errors_before_training(lesson, flags, message):
    with pytest.raises(ValueError, match=message):
        common.lesson(lesson).Config(**flags)


def test_a_tokenizer_trained_from_the_command_line_loads(script, tmp_path):
    """Run as a script, a lesson's module is __main__; its checkpoints must still name the lesson."""
    flags = ["--steps", "2", "--batch-size", "4", "--eval-images", "4", "--depth", "2"]
    code, _, err = script("02_rq.py", *flags, "--out", "tok", cwd=tmp_path)
    assert code == 0, err
    assert common.load_checkpoint(tmp_path / "tok" / "ckpt.pt")["lesson"] == "02_rq"
    tok, cfg = stage1.load_tokenizer(tmp_path / "tok" / "ckpt.pt")
    assert cfg.depth == 2 and tok.quantizer.depth == 2


def test_two_accumulated_micro_batches_equal_one_batch_of_twice_the_size(ar, tokenizer, tmp_path):
    one = ar.train(small(ar, tokenizer, tmp_path / "one", steps=1, batch_size=16))
    two = ar.train(small(ar, tokenizer, tmp_path / "two", steps=1, batch_size=8, grad_accum=2))
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    half = ar.train(small(ar, tokenizer, tmp_path / "half", steps=1, batch_size=8))  # micro-batch 1 only
    # Adam's first step is -lr * sign(g): the two differ where the gradients' signs differ
    differ = [not torch.allclose(a, b, atol=1e-7) for a, b in zip(half.parameters(), two.parameters())]
    assert any(differ)


def test_the_generative_lessons_default_to_the_plain_shapes(ar):
    vqd = common.lesson("05_vq_diffusion")
    assert ar.Config().dataset == vqd.Config().dataset == "shapes-plain"
    assert common.lesson("01_vq").Config().dataset == "shapes"


def test_an_unconditional_prior_samples_the_same_with_the_default_guidance_and_with_1(
    ar, tokenizer, tmp_path
):
    """Its "no class" start token never trained (no label ever dropped): guidance must not act."""
    ar.train(small(ar, tokenizer, tmp_path, condition="none"))
    pictures = []
    for guidance in (ar.Config.guidance, 1.0):
        ar.train(small(ar, tokenizer, tmp_path, condition="none", sample_only=True, guidance=guidance))
        pictures.append((tmp_path / "samples.png").read_bytes())
    assert ar.Config.guidance != 1.0 and pictures[0] == pictures[1]


def test_with_soft_labels_the_log_gives_the_hard_nll_beside_the_soft_loss(
    ar, tokenizer, tmp_path, monkeypatch
):
    """bits_per_code is -log2 p(argmin code), comparable with a hard-label run and the validation
    NLL; loss is the cross-entropy against Q_tau that soft labels train on."""
    calls, nll = [], ar.nll
    monkeypatch.setattr(
        ar, "nll", lambda *a: calls.append((len(a) > 2 and a[2] is not None, nll(*a).item())) or nll(*a)
    )
    ar.train(small(ar, tokenizer, tmp_path, steps=1, log_every=1, soft_labels=True, samples_per_class=1))
    record = common.read_log(tmp_path)[0]
    (soft, soft_value), (hard, hard_value) = calls[:2]  # the step's loss, then what the log reads
    assert soft and not hard and soft_value != pytest.approx(hard_value)
    assert record["loss"] == pytest.approx(soft_value) and record["bits_per_code"] == pytest.approx(
        hard_value / math.log(2)
    )


def lr_schedule(ar, steps: int, at, state=None) -> tuple[list[float], dict]:
    """The lr at each step of `at` of a run with --steps `steps` (resumed from an optimizer state)."""
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    if state:
        opt.load_state_dict(state)
    lrs = []
    for step in at:
        stage2.set_lr(opt, ar.Config(steps=steps, lr=1.0), step)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs, opt.state_dict()


def test_an_extended_resume_goes_on_from_the_lr_reached_with_a_new_cosine(ar):
    """--resume with --steps 2000 at step 600 of a 1000-step run: no jump back up, 0 at the new end,
    the same curve when the extended run is resumed again; the same --steps: the planned cosine."""
    cosine = lambda f: 0.5 * (1 + math.cos(math.pi * f))
    plain, state = lr_schedule(ar, 1000, range(600))
    after, extended = lr_schedule(ar, 2000, range(600, 2000), state)
    assert after[0] == pytest.approx(cosine(0.6)) and after[0] < plain[-1]  # re-stretched: cosine(0.3) = 0.79
    assert all(a > b for a, b in itertools.pairwise(after)) and after[-1] < 1e-5
    assert lr_schedule(ar, 2000, [1500], extended)[0] == pytest.approx([after[900]])
    assert lr_schedule(ar, 1000, [600, 999], state)[0] == pytest.approx([cosine(0.6), cosine(0.999)])
