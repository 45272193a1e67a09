"""beyond/var.py: the multi-scale residual tokenizer against lesson 02's RQ and against itself
restarted from a residual, the block-causal mask against a brute-force one and against the
network (a later scale cannot move an earlier logit), cached sampling against the full forward
pass (with and without guidance), and a short run end to end (reconstruction that improves with
every scale, samples.png, one-line errors)."""

import importlib
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import common

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def var():
    return importlib.import_module("beyond.var")


def quantizer(var, scales, K=12, d=6, blend=0.5, seed=0):
    torch.manual_seed(seed)
    q = var.MultiScaleQuantizer(K, d, scales, blend)
    for phi in q.phis:  # phi away from its zero-ish start, so that it matters
        torch.nn.init.normal_(phi.weight, std=0.3)
    return q.eval()


def test_one_scale_at_full_resolution_is_lesson_02s_rq_at_depth_1(var):
    rq = common.lesson("02_rq")
    q = quantizer(var, (5,), blend=0.0)  # no phi: the paper's phi is the only difference
    ref = rq.ResidualQuantizer(12, 6, depth=1).eval()
    ref.books[0].codebook.copy_(q.codebook)
    z_e = torch.randn(3, 6, 5, 5)
    z_q, seq, losses = q(z_e)
    z_ref, codes_ref, losses_ref = ref(z_e)
    assert torch.equal(seq, codes_ref.flatten(1)) and torch.allclose(z_q, z_ref)
    assert torch.allclose(losses["commit"], losses_ref["commit"])
    q.phis[0].blend = 0.5  # with phi the codes are the same (phi acts after the choice), z_q is not
    assert torch.equal(q(z_e)[1], seq) and not torch.allclose(q(z_e)[0], z_q)


def test_the_codes_of_scale_k_depend_only_on_the_residual_left_by_coarser_scales(var):
    scales = (1, 2, 3, 5)
    q = quantizer(var, scales)
    f = torch.randn(4, 6, 5, 5)
    with torch.no_grad():
        codes, maps, _ = var.multiscale_quantize(f, q.codebook, scales, q.phis)
        for k in range(1, len(scales)):  # quantize what scales < k left, with the scales from k on
            rest = f - maps[k - 1]
            again, _, _ = var.multiscale_quantize(rest, q.codebook, scales[k:], q.phis[k:])
            assert all(torch.equal(a, b) for a, b in zip(again, codes[k:]))
        # and scale 1's code is the nearest code to the mean of f (area down to 1 x 1), by brute force
        mean = f.mean((2, 3))  # (B, d)
        brute = torch.cdist(mean, q.codebook).argmin(1)
        assert torch.equal(codes[0].flatten(), brute)


def test_the_straight_through_gradient_reaches_the_encoder_and_phi_learns_from_its_loss(var):
    q = quantizer(var, (1, 2, 4))
    q.train()
    z_e = torch.randn(2, 6, 4, 4, requires_grad=True)
    z_q, _, losses = q(z_e)
    g = torch.randn_like(z_q)
    (z_q * g).sum().backward(retain_graph=True)
    assert torch.allclose(z_e.grad, g)  # dz_q / dz_e = I
    assert all(phi.weight.grad is None for phi in q.phis)  # the decoder's gradient skips phi...
    losses["loss"].backward()
    assert all(phi.weight.grad.abs().sum() > 0 for phi in q.phis)  # ...its own loss reaches every phi


def test_the_block_causal_mask_equals_a_brute_force_one(var):
    scales = (1, 2, 3)
    level = [k for k, s in enumerate(scales) for _ in range(s * s)]
    brute = torch.tensor([[level[j] <= level[i] for j in range(14)] for i in range(14)])
    assert torch.equal(var.block_causal_mask(scales), brute)


def prior(var, scales=(1, 2, 3), K=12, d=6, classes=3, seed=0):
    q = quantizer(var, scales, K, d, seed=seed)
    cfg = var.Config(width=16, heads=2, layers=2)
    torch.manual_seed(seed + 1)
    return var.NextScaleTransformer(q, cfg, classes).eval()


def test_no_logit_sees_a_later_scale_and_every_logit_sees_its_own(var):
    model = prior(var)
    L, level = model.L, model.levels
    inputs, c = torch.randn(2, L - 1, 6), torch.tensor([0, 2])
    base = model(inputs, c)
    for k in (1, 2):  # change the input tokens of scale k: positions of level k in the sequence
        changed = inputs.clone()
        changed[:, (level[1:] == k)] += 1.0
        out = model(changed, c)
        assert torch.equal(out[:, level < k], base[:, level < k])
        assert not torch.isclose(out[:, level == k], base[:, level == k]).all(-1).any()


def teacher_inputs(var, q, seq, scales):
    """The inputs the transformer reads for codes seq (B, L): f^ after scales < k, resized to s_k."""
    maps = [q.decode_f(seq, k) for k in range(1, len(scales))]
    tokens = [
        rearrange(F.interpolate(m, size=(s, s), mode="area"), "b d h w -> b (h w) d")
        for m, s in zip(maps, scales[1:])
    ]
    return torch.cat(tokens, 1)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cached_sampling_equals_the_full_forward_pass(var, guidance):
    scales = (1, 2, 3)
    model = prior(var, scales)
    c = torch.tensor([0, 1, 2, 1])
    torch.manual_seed(5)
    seq, logits = model.sample(c, guidance=guidance)
    assert seq.shape == (4, model.L) and logits.shape == (4, model.L, 12)
    inputs = teacher_inputs(var, model.quantizer, seq, scales)
    full = model(inputs, c)
    if guidance != 1.0:  # l_u + s (l_c - l_u), l_u from the "no class" start token
        l_u = model(inputs, torch.full_like(c, model.null))
        full = l_u + guidance * (full - l_u)
    assert torch.allclose(full, logits, atol=1e-5)


def test_one_call_per_scale(var):
    model, calls = prior(var, (1, 2, 3)), []
    model.gpt.register_forward_hook(lambda *a: calls.append(1))
    model.sample(torch.tensor([0, 1]), guidance=2.0)
    assert len(calls) == 3  # three scales, three calls (guidance doubles the batch, not the calls)


@pytest.mark.slow  # 120 tokenizer steps, then the prior
def test_a_short_run_reconstructs_better_with_every_scale_and_draws_its_samples(var, tmp_path):
    cfg = var.Config(steps=6, batch_size=8, eval_images=16, width=16, heads=2, layers=1, samples_per_class=1,
                     log_every=2, out=str(tmp_path / "var"))  # fmt: skip
    tok_cfg = var.TokenizerConfig(steps=120, batch_size=16, eval_images=64, out=str(tmp_path / "var" / "tokenizer"),
                                  log_every=60)  # fmt: skip
    var.train_tokenizer(tok_cfg)
    final = common.read_log(tmp_path / "var" / "tokenizer")[-1]
    psnr = [row["psnr"] for row in final["by_scale"]]
    assert [row["scale"] for row in final["by_scale"]] == [1, 2, 4, 8]
    assert all(a < b for a, b in itertools.pairwise(psnr)), psnr  # coarse to fine, better at every scale
    assert abs(psnr[-1] - final["val_psnr"]) < 0.05  # the last scale is the whole reconstruction
    assert (tmp_path / "var" / "tokenizer" / "coarse_to_fine.png").exists()
    var.train(cfg)  # the prior finds the finished tokenizer in <out>/tokenizer
    log = common.read_log(tmp_path / "var")
    bits = log[-1]["val_bits_per_code"]
    assert log[-1]["final"] and math.isfinite(bits) and bits > 0
    assert 0 <= log[-1]["sample_class_acc"] <= 1
    ckpt = common.load_checkpoint(tmp_path / "var" / "ckpt.pt")
    assert ckpt["lesson"] == "var" and Path(ckpt["tokenizer"]) == tmp_path / "var" / "tokenizer" / "ckpt.pt"


def test_bad_scales_and_a_tokenizer_of_another_script_are_one_line_errors(tokenizer, script, tmp_path):
    code, _, err = script("beyond/var.py", "tokenizer", "--scales", "1", "3", "2", "8", cwd=tmp_path)
    assert code == 2 and "--scales must grow strictly" in err and len(err.splitlines()) == 1
    code, _, err = script("beyond/var.py", "tokenizer", "--scales", "1", "2", "4", cwd=tmp_path)
    assert code == 2 and "must end at the latent side 8" in err
    code, _, err = script(
        "beyond/var.py", "--tokenizer", tokenizer, "--steps", "1", "--out", tmp_path / "o", cwd=tmp_path
    )
    assert code == 2 and "not a VAR tokenizer (written by 02_rq)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o" / "ckpt.pt").exists()


def test_the_tokenizer_trains_in_lesson_03s_adversarial_loop_and_decodes_its_own_codes(var, script, tmp_path):
    flags = "--steps 6 --disc-start 2 --disc-warmup 2 --perceptual-weight 0 --log-every 3".split()
    small = "--batch-size 8 --eval-images 8 --ch 8 --disc-ch 8".split()  # only the files are needed
    code, _, err = script("beyond/var.py", "vqgan", *flags, *small, "--out", "g", cwd=tmp_path)
    assert code == 0, err
    log = common.read_log(tmp_path / "g")
    assert log[-1]["final"] and "d_loss" in log[-2]  # lesson 03's loop: the discriminator ran
    assert (tmp_path / "g" / "coarse_to_fine.png").exists()  # and the report by scale
    tok, cfg = var.load_tokenizer(tmp_path / "g" / "ckpt.pt")
    assert isinstance(tok, var.GanTokenizer) and cfg.scales == (1, 2, 4, 8)
    x = common.first_images(common.load_data(cfg)[1], 4)[0]
    x_hat, seq, _ = tok(x)
    assert seq.shape == (4, 85) and torch.allclose(tok.decode_codes(seq), x_hat, atol=1e-5)
    code, _, err = script("beyond/var.py", "vqgan", "--depth", "2", "--out", "bad", cwd=tmp_path)
    assert code == 2 and "drop --depth" in err and not (tmp_path / "bad").exists()
