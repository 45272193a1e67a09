"""beyond/fsq.py: the implicit codebook against brute-force enumeration, rounding against a
nearest-point search, the straight-through gradient, residual FSQ against lesson 02's residual
quantization with explicit grids (tests/oracles.py), lessons 04-05's encode and decode on an FSQ
tokenizer, and short runs of both training loops (lesson 02's and lesson 03's) end to end."""

import importlib
import itertools
import math
from pathlib import Path

import pytest
import torch
from einops import rearrange

import common
import stage1
from common.samples import decode
from tests.oracles import nearest, residual_quantize

ROOT = Path(__file__).resolve().parent.parent
LEVELS = [(8, 5, 5, 5), (4, 4), (2, 3, 7), (6,)]  # odd, even (the half-step offset), mixed, one channel


@pytest.fixture(scope="module")
def fsq():
    return importlib.import_module("beyond.fsq")


@pytest.mark.parametrize("levels", LEVELS)
def test_the_implicit_codebook_holds_every_combination_of_levels_once(fsq, levels):
    L = torch.tensor(levels)
    C = fsq.grid(L)
    assert C.shape == (math.prod(levels), len(levels)) and len(torch.unique(C, dim=0)) == len(C)
    per_channel = [sorted(set(C[:, i].tolist())) for i in range(len(levels))]
    assert [len(v) for v in per_channel] == list(levels)  # L_i evenly spaced values in [-1, 1]
    for v, n in zip(per_channel, levels):
        assert v[0] == -1 and all(abs(b - a - 1 / (n // 2)) < 1e-6 for a, b in itertools.pairwise(v))
    brute = torch.tensor(list(itertools.product(*per_channel)))  # the same set, by enumeration
    assert torch.equal(torch.unique(brute, dim=0), torch.unique(C, dim=0))
    k = torch.arange(len(C))
    assert torch.equal(fsq.codes_to_index(fsq.index_to_codes(k, L), L), k)  # index -> code -> index
    assert torch.equal(fsq.index_to_codes(fsq.codes_to_index(C, L), L), C)  # code -> index -> code


@pytest.mark.parametrize("levels", LEVELS)
def test_rounding_the_bounded_input_gives_the_nearest_grid_point(fsq, levels):
    torch.manual_seed(0)
    L = torch.tensor(levels)
    z = fsq.bound(3 * torch.randn(4000, len(levels)), L)
    C = fsq.grid(L)
    assert torch.equal(fsq.snap(z, L), C[nearest(z, C)])  # brute force over all prod L_i points
    assert torch.all(fsq.bound(torch.zeros(len(levels)), L).abs() < 1e-6)  # f(0) = 0, also for even L
    reached = fsq.snap(fsq.bound(torch.linspace(-8, 8, 4001)[:, None].expand(-1, len(levels)), L), L)
    assert [len(torch.unique(c)) for c in reached.T] == list(levels)  # every level is reachable


def test_the_straight_through_gradient_is_the_identity(fsq):
    torch.manual_seed(1)
    L = torch.tensor((8, 5, 5, 5))
    z = fsq.bound(torch.randn(50, 4), L).detach().requires_grad_()
    w = torch.randn(50, 4)
    (fsq.fsq(z, L) * w).sum().backward()
    assert torch.equal(z.grad, w)
    q = fsq.FSQuantizer((4, 4), depth=3)  # at any depth: one straight-through step on the final sum
    z_e = torch.rand(2, 2, 3, 3).mul(2).sub(1).requires_grad_()
    w = torch.randn(2, 2, 3, 3)
    (q(z_e)[0] * w).sum().backward()
    assert torch.equal(z_e.grad, w)


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (4, 4)])
def test_residual_fsq_is_lesson_02s_rq_with_shrinking_grids_and_its_error_never_grows(fsq, levels):
    torch.manual_seed(2)
    L = torch.tensor(levels)
    z = fsq.bound(2 * torch.randn(3000, len(levels)), L)
    codes1, partial1 = fsq.residual_fsq(z, L, 1)
    assert torch.equal(partial1[:, 0], fsq.snap(z, L))  # depth 1 is FSQ
    assert torch.equal(codes1[:, 0], fsq.codes_to_index(fsq.snap(z, L), L))
    D = 4
    codes, partial = fsq.residual_fsq(z, L, D)
    assert torch.equal(codes[:, :1], codes1) and torch.equal(partial[:, :1], partial1)
    books = [fsq.grid(L) * fsq.scale(L, d) for d in range(D)]  # explicit grids, nearest by search
    ref_codes, ref_partial = residual_quantize(z, books, D)
    same = (codes == ref_codes).all(1)
    assert same.float().mean() > 0.999 and torch.allclose(partial[same], ref_partial[same], atol=1e-6)
    err, ref_err = ((z[:, None] - p).pow(2).sum(-1) for p in (partial, ref_partial))  # (N, D)
    assert torch.allclose(err, ref_err, atol=1e-6)  # where the codes differ, a tie: equally near
    assert torch.all(err[:, 1:] <= err[:, :-1] + 1e-7)  # never grows, for every vector
    assert torch.all(err.mean(0)[1:] < err.mean(0)[:-1] / 4)  # and falls a lot on average


def test_lessons_04_and_05_encode_and_decode_an_fsq_tokenizer_as_it_does_itself(fsq):
    ar = common.lesson("04_rq_transformer")
    torch.manual_seed(3)
    for levels, depth in (((8, 5, 5, 5), 1), ((4, 4), 3)):
        cfg = fsq.Config(dataset="shapes-plain", levels=levels, depth=depth)
        tok = fsq.Tokenizer(cfg).eval()
        x = torch.rand(4, 3, 32, 32) * 2 - 1
        x_hat, codes, _ = tok(x)
        mine, _ = ar.encode(tok, x)  # lesson 04's nearest code over the explicit grid of each depth
        assert (
            mine.shape == (4, 64, depth)
            and (mine == rearrange(codes, "b h w d -> b (h w) d")).float().mean() > 0.999
        )
        assert torch.allclose(decode(tok, mine, 8), x_hat, atol=1e-5)  # what a prior draws, decoded


def test_a_short_run_of_lesson_02s_loop_then_stage_1_loads_it(fsq, script, tmp_path):
    flags = (
        "--dataset shapes-plain --levels 5 5 --depth 2 --steps 40 --batch-size 16 --eval-images 64".split()
    )
    code, _, err = script("beyond/fsq.py", *flags, "--out", "f", cwd=tmp_path)
    assert code == 0, err
    final = common.read_log(tmp_path / "f")[-1]
    assert final["final"] and final["val_usage"] > 0
    depth = final["partial_depth"]  # lesson 02's report, run unchanged
    assert depth[1]["psnr"] > depth[0]["psnr"] and abs(depth[1]["psnr"] - final["val_psnr"]) < 0.05
    assert (tmp_path / "f" / "coarse_to_fine.png").exists() and (tmp_path / "f" / "recon.png").exists()
    tok, cfg = stage1.load_tokenizer(tmp_path / "f" / "ckpt.pt")  # as lessons 04-05 load it
    assert isinstance(tok, fsq.Tokenizer) and cfg.codebook_size == 25 and cfg.code_dim == 2
    x = common.first_images(common.load_data(cfg)[1], 8)[0]
    assert common.psnr(x, tok(x)[0]).mean() == pytest.approx(final["val_psnr"], abs=3)


def test_lesson_03s_loop_trains_fsq_and_bad_flags_are_one_line_errors(fsq, script, tmp_path):
    flags = "--steps 6 --disc-start 2 --disc-warmup 2 --perceptual-weight 0 --log-every 3".split()
    small = "--batch-size 8 --eval-images 8 --ch 8 --disc-ch 8".split()  # only the files are needed
    code, _, err = script(
        "beyond/fsq.py", "vqgan", *flags, *small, "--levels", "4", "4", "--out", "g", cwd=tmp_path
    )
    assert code == 0, err
    log = common.read_log(tmp_path / "g")
    assert log[-1]["final"] and log[-1]["val_usage"] > 0 and "d_loss" in log[-2]  # the discriminator ran
    tok, cfg = stage1.load_tokenizer(tmp_path / "g" / "ckpt.pt")
    assert isinstance(tok, fsq.GanTokenizer) and cfg.codebook_size == 16
    for bad, says in (
        (("--levels", "1", "4"), "--levels must be numbers >= 2"),
        (("--code-dim", "8"), "--code-dim is len(--levels) = 4"),
        (("--beta", "1", "--decay", "0.5"), "FSQ learns no codebook: --beta --decay does not apply"),
        (("--codebook-size", "64"), "--codebook-size is prod(--levels) = 1000"),
        (("--depth", "2", "--codebooks", "separate"), "FSQ has one grid for every depth"),
    ):
        code, _, err = script("beyond/fsq.py", *bad, "--out", "bad", cwd=tmp_path)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()
