"""Lesson 02: residual quantization against lesson 01 and explicit formulas; the depth figures."""

import json

import oracles
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def rq():
    import common

    return common.lesson("02_rq")


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- residual_quantize (RQ Eq. 3-5) ---
# The tests hand residual_quantize the oracle's nearest code as `pick`, so that they grade this
# exercise alone, also where lesson 01's nearest_code is a student's (exercises/).


@pytest.mark.exercise("02_rq.residual_quantize")
@given(N=st.integers(1, 20), K=st.integers(1, 32), d=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_depth_one_is_the_nearest_code(rq, N, K, d, seed):
    z, codebook = rand(N, d, seed=seed), rand(K, d, seed=seed + 1)
    codes, partial = rq.residual_quantize(z, codebook, 1, oracles.nearest)
    assert torch.equal(codes[:, 0], oracles.nearest(z, codebook))
    assert torch.equal(partial[:, 0], codebook[oracles.nearest(z, codebook)])


@pytest.mark.exercise("02_rq.residual_quantize")
@given(D=st.integers(1, 6), K=st.integers(1, 16), seed=st.integers(0, 2**31 - 1))
def test_quantized_vector_is_the_sum_of_its_code_vectors(rq, D, K, seed):
    z, codebook = rand(10, 3, seed=seed), rand(K, 3, seed=seed + 1)
    codes, partial = rq.residual_quantize(z, codebook, D, oracles.nearest)
    torch.testing.assert_close(partial[:, -1], codebook[codes].sum(1))  # sum_d e(k_d) = z^


@pytest.mark.exercise("02_rq.residual_quantize")
@given(D=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_partial_sums_are_cumulative(rq, D, seed):
    codebook = rand(8, 4, seed=seed + 1)
    codes, partial = rq.residual_quantize(rand(6, 4, seed=seed), codebook, D, oracles.nearest)
    torch.testing.assert_close(partial, codebook[codes].cumsum(1))  # Z^(d) = sum_{d' <= d} e(k_d')


@pytest.mark.exercise("02_rq.residual_quantize")
def test_each_depth_quantizes_the_previous_residual(rq):
    z, codebook = rand(12, 3), rand(10, 3, seed=1)
    codes, partial = rq.residual_quantize(z, codebook, 3, oracles.nearest)
    residual = z[:, None] - torch.nn.functional.pad(partial[:, :-1], (0, 0, 1, 0))  # r_{d-1}
    for d in range(3):
        assert torch.equal(codes[:, d], oracles.nearest(residual[:, d], codebook))


@pytest.mark.exercise("02_rq.residual_quantize")
@given(D=st.integers(1, 8), K=st.integers(1, 20), seed=st.integers(0, 2**31 - 1))
def test_codes_lie_in_range_and_keep_the_leading_shape(rq, D, K, seed):
    z, codebook = rand(2, 3, 4, 5, seed=seed), rand(K, 5, seed=seed + 1)
    codes, partial = rq.residual_quantize(z, codebook, D, oracles.nearest)
    assert codes.shape == (2, 3, 4, D) and partial.shape == (2, 3, 4, D, 5)
    assert codes.min() >= 0 and codes.max() < K


@pytest.mark.exercise("02_rq.residual_quantize")
@given(D=st.integers(2, 8), K=st.integers(1, 20), seed=st.integers(0, 2**31 - 1))
def test_with_zero_in_the_codebook_the_residual_never_grows(rq, D, K, seed):
    codebook = torch.cat([torch.zeros(1, 4, dtype=torch.float64), rand(K, 4, seed=seed + 1)])
    z = rand(30, 4, seed=seed)
    _, partial = rq.residual_quantize(z, codebook, D, oracles.nearest)
    norms = (z[:, None] - partial).norm(dim=-1)  # (N, D): ||r_d||
    norms = torch.cat([z.norm(dim=-1, keepdim=True), norms], 1)  # prepend ||r_0||
    assert (norms[:, 1:] <= norms[:, :-1] + 1e-12).all()


@pytest.mark.exercise("02_rq.residual_quantize")
def test_separate_codebooks_are_used_one_per_depth(rq):
    z, books = rand(9, 3), [rand(5, 3, seed=s) for s in range(1, 4)]
    codes, partial = rq.residual_quantize(z, books, 3, oracles.nearest)
    assert torch.equal(codes[:, 0], oracles.nearest(z, books[0]))
    torch.testing.assert_close(partial[:, -1], sum(books[d][codes[:, d]] for d in range(3)))


@pytest.mark.exercise("02_rq.residual_quantize")
def test_the_lesson_agrees_with_a_plain_loop(rq):
    z, codebook = rand(3, 5, 4), rand(12, 4, seed=1)
    for got, want in zip(
        rq.residual_quantize(z, codebook, 4, oracles.nearest), oracles.residual_quantize(z, codebook, 4)
    ):
        torch.testing.assert_close(got, want)


# --- the commitment loss (RQ Eq. 7) ---


@pytest.mark.exercise("02_rq.rq_commitment_loss")
def test_commitment_loss_averages_every_depth(rq):
    z, partial = rand(7, 3), rand(7, 4, 3, seed=1)
    explicit = sum(((z - partial[:, d]) ** 2).mean() for d in range(4)) / 4
    torch.testing.assert_close(rq.rq_commitment_loss(z, partial), explicit)


@pytest.mark.exercise("02_rq.rq_commitment_loss")
def test_commitment_loss_moves_only_the_encoder(rq):
    z, partial = rand(7, 3).requires_grad_(), rand(7, 2, 3, seed=1).requires_grad_()
    rq.rq_commitment_loss(z, partial).backward()
    assert partial.grad is None
    explicit = 2 * (z[:, None] - partial).detach().mean(1) / z.numel()  # d/dz of the mean over N, D, d
    torch.testing.assert_close(z.grad, explicit)


# --- the module ---


def quantizer(rq, depth=4, codebooks="shared", K=16, d=4, **kw):
    return rq.ResidualQuantizer(K, d, depth, codebooks, **kw)


def test_depth_one_module_equals_lesson_01_module_step_for_step(rq, vq):
    torch.manual_seed(0)
    a = vq.VectorQuantizer(16, 4)
    b = quantizer(rq, depth=1)
    b.books[0].load_state_dict(a.state_dict())
    z_e = torch.randn(2, 4, 3, 3)
    torch.manual_seed(1)
    za, ca, la = a(z_e)
    torch.manual_seed(1)
    zb, cb, lb = b(z_e)
    assert torch.equal(ca, cb[..., 0]) and torch.equal(za, zb)
    torch.testing.assert_close(la["loss"], lb["loss"])
    assert torch.equal(a.codebook, b.codebook) and torch.equal(a.cluster_size, b.books[0].cluster_size)


def test_shared_mode_holds_one_codebook_and_separate_mode_d(rq):
    shared, separate = quantizer(rq, 4, "shared", K=16), quantizer(rq, 4, "separate", K=16)
    assert len(shared.books) == 1 and shared.codebook.shape == (16, 4)
    assert len(separate.books) == 4 and all(b.codebook.shape == (4, 4) for b in separate.books)
    assert separate.codebook.shape == (16, 4)  # the D books, numbered globally


def test_separate_mode_codes_stay_in_their_depths_block(rq):
    q = quantizer(rq, 4, "separate", K=16).eval()
    _, codes, _ = q(torch.randn(2, 4, 5, 5))
    for d in range(4):
        assert ((codes[..., d] >= 4 * d) & (codes[..., d] < 4 * (d + 1))).all()


@pytest.mark.parametrize("codebooks", ["shared", "separate"])
def test_quantizer_output_is_the_sum_of_its_code_vectors(rq, codebooks):
    q = quantizer(rq, 4, codebooks).eval()
    z_q, codes, _ = q(torch.randn(2, 4, 3, 3))
    torch.testing.assert_close(z_q, q.codebook[codes].sum(3).permute(0, 3, 1, 2))


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
def test_encoder_gradient_through_rq_is_the_identity(rq, depth):
    q = quantizer(rq, depth, beta=0.0).eval()
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3)
    q(z_e)[0].backward(upstream)
    torch.testing.assert_close(z_e.grad, upstream)  # not depth x upstream (a known pitfall)


def test_shared_ema_step_uses_the_residuals_of_every_depth(rq, vq):
    torch.manual_seed(0)
    q = quantizer(rq, 3, decay=0.9, dead_threshold=0.0)
    N0, m0 = q.books[0].cluster_size.clone(), q.books[0].embed_sum.clone()
    z_e = torch.randn(2, 4, 3, 3)
    _, codes, _ = q(z_e)
    z = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    K = 16
    n_k = torch.zeros(K)
    s_k = torch.zeros(K, 4)
    r = z.clone()
    for d in range(3):  # hand-computed: every depth's residual counts towards its code
        k = codes.reshape(-1, 3)[:, d]
        for i in range(len(r)):
            n_k[k[i]] += 1
            s_k[k[i]] += r[i]
        r = r - (m0 / N0[:, None])[k]
    torch.testing.assert_close(q.books[0].cluster_size, 0.9 * N0 + 0.1 * n_k)
    torch.testing.assert_close(q.books[0].embed_sum, 0.9 * m0 + 0.1 * s_k)


# --- a short run ---


def test_short_run_writes_both_figures_and_the_depth_table(rq, tmp_path):
    cfg = rq.Config(steps=30, batch_size=16, log_every=10, eval_images=32, depth=3, out=str(tmp_path))
    rq.train(cfg)
    assert (tmp_path / "coarse_to_fine.png").stat().st_size > 0
    assert (tmp_path / "code_usage_by_depth.png").stat().st_size > 0
    final = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")][-1]
    rows = final["partial_depth"]
    assert [r["depth"] for r in rows] == [1, 2, 3]
    assert rows[-1]["mse"] < rows[0]["mse"]  # decoding deeper partial sums reconstructs better
    assert abs(rows[-1]["mse"] - final["val_mse"]) < 1e-6


def test_dataset_presets_fill_only_unset_flags(rq):
    ffhq = rq.Config(dataset="ffhq")
    assert (ffhq.downsample, ffhq.codebook_size, common_size(ffhq)) == (32, 2048, 256)
    assert rq.Config(dataset="ffhq", codebook_size=512).codebook_size == 512


def common_size(cfg):
    import common

    return common.default_image_size(cfg)


def test_separate_books_need_k_divisible_by_depth(rq):
    with pytest.raises(ValueError, match="not divisible by --depth 3"):
        rq.Config(codebooks="separate", codebook_size=64, depth=3)
