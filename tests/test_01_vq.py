"""Lesson 01: each pure function against an independent oracle, then the module and the run."""

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import common

ROOT = Path(__file__).resolve().parent.parent


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- nearest_code (RQ Eq. 1) ---


@pytest.mark.exercise("01_vq.nearest_code")
@given(N=st.integers(1, 40), K=st.integers(1, 64), d=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_nearest_code_is_a_true_nearest_neighbour(vq, N, K, d, seed):
    z, codebook = rand(N, d, seed=seed), rand(K, d, seed=seed + 1)
    idx = vq.nearest_code(z, codebook)
    brute = ((z[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)  # (N, K) by broadcasting
    chosen = brute.gather(1, idx[:, None]).squeeze(1)
    torch.testing.assert_close(chosen, brute.min(1).values)  # distances, so ties pass


@pytest.mark.exercise("01_vq.nearest_code")
def test_nearest_code_keeps_the_leading_shape(vq):
    idx = vq.nearest_code(rand(2, 3, 5, 4), rand(7, 4, seed=1))
    assert idx.shape == (2, 3, 5) and idx.dtype == torch.long
    assert idx.min() >= 0 and idx.max() < 7


@pytest.mark.exercise("01_vq.nearest_code")
def test_code_vectors_are_fixed_points(vq):
    codebook = rand(50, 6)
    assert torch.equal(vq.nearest_code(codebook, codebook), torch.arange(50))


# --- the VQ loss terms ---


def test_commitment_loss_is_the_mean_squared_distance_and_moves_only_the_encoder(vq):
    z_e, z_q = rand(4, 3).requires_grad_(), rand(4, 3, seed=1).requires_grad_()
    loss = vq.commitment_loss(z_e, z_q)
    torch.testing.assert_close(loss, ((z_e - z_q) ** 2).mean())
    loss.backward()
    assert z_q.grad is None and z_e.grad is not None


def test_codebook_loss_moves_only_the_codes(vq):
    z_e, z_q = rand(4, 3).requires_grad_(), rand(4, 3, seed=1).requires_grad_()
    vq.codebook_loss(z_e, z_q).backward()
    assert z_e.grad is None
    torch.testing.assert_close(z_q.grad, 2 * (z_q - z_e).detach() / z_q.numel())


@pytest.mark.exercise("01_vq.vq_loss")
@pytest.mark.parametrize("beta", [0.0, 0.25, 1.0, 3.0])
def test_beta_scales_only_the_encoder_gradient(vq, beta):
    z_e, z_q = rand(5, 4).requires_grad_(), rand(5, 4, seed=1).requires_grad_()
    vq.vq_loss(z_e, z_q, beta).backward()
    diff = (z_e - z_q).detach()
    torch.testing.assert_close(z_e.grad, beta * 2 * diff / diff.numel())  # commitment term only
    torch.testing.assert_close(z_q.grad, -2 * diff / diff.numel())  # codebook term, no beta


# --- straight-through estimator ---


@pytest.mark.exercise("01_vq.straight_through")
def test_straight_through_returns_the_codes_in_the_forward_pass(vq):
    z_e, z_q = rand(3, 4), rand(3, 4, seed=1)
    torch.testing.assert_close(vq.straight_through(z_e, z_q), z_q)


@pytest.mark.exercise("01_vq.straight_through")
def test_straight_through_gradient_is_the_identity(vq):
    z_e, z_q = rand(3, 4).requires_grad_(), rand(3, 4, seed=1).requires_grad_()
    upstream = rand(3, 4, seed=2)
    vq.straight_through(z_e, z_q).backward(upstream)
    torch.testing.assert_close(z_e.grad, upstream)  # dz_q/dz_e = I
    assert z_q.grad is None  # the codes get no gradient through this path


# --- EMA codebook ---


def ema_reference(N, m, z, idx, decay, eps):
    """A loop over codes: the appendix's update written out one code at a time."""
    K = N.shape[0]
    N, m = N.clone(), m.clone()
    for k in range(K):
        members = z[idx == k]
        N[k] = decay * N[k] + (1 - decay) * len(members)
        m[k] = decay * m[k] + (1 - decay) * members.sum(0)
    n = N.sum()
    e = torch.stack([m[k] / ((N[k] + eps) / (n + K * eps) * n) for k in range(K)])
    return N, m, e


@pytest.mark.exercise("01_vq.ema_update")
@given(
    K=st.integers(1, 12),
    N=st.integers(1, 30),
    seed=st.integers(0, 2**31 - 1),
    decay=st.floats(0.5, 0.999),
)
def test_ema_update_equals_a_hand_computed_reference(vq, K, N, seed, decay):
    g = torch.Generator().manual_seed(seed)
    cluster, embed = torch.rand(K, generator=g, dtype=torch.float64) * 3, rand(K, 3, seed=seed)
    z, idx = rand(N, 3, seed=seed + 1), torch.randint(K, (N,), generator=g)
    got = vq.ema_update(cluster, embed, z, idx, decay, eps=1e-5)
    for a, b in zip(got, ema_reference(cluster, embed, z, idx, decay, 1e-5)):
        torch.testing.assert_close(a, b)


@pytest.mark.exercise("01_vq.ema_update")
def test_ema_codebook_converges_to_the_mean_of_its_vectors(vq):
    z, idx = rand(40, 2), torch.arange(40) % 4
    N, m = torch.ones(4, dtype=torch.float64), rand(4, 2, seed=1)
    for _ in range(3000):
        N, m, e = vq.ema_update(N, m, z, idx, decay=0.99)
    means = torch.stack([z[idx == k].mean(0) for k in range(4)])
    torch.testing.assert_close(e, means, atol=1e-4, rtol=1e-4)


@pytest.mark.exercise("01_vq.ema_update")
def test_ema_update_keeps_unused_codes_finite(vq):
    *_, e = vq.ema_update(
        torch.zeros(5), torch.zeros(5, 2), torch.ones(3, 2), torch.zeros(3, dtype=torch.long)
    )
    assert torch.isfinite(e).all() and torch.equal(e[1:], torch.zeros(4, 2))


# --- dead-code restart ---


@pytest.mark.exercise("01_vq.restart_dead_codes")
def test_restart_replaces_exactly_the_dead_codes_with_batch_vectors(vq):
    codebook, embed = rand(6, 3), rand(6, 3, seed=1)
    cluster = torch.tensor([5.0, 0.2, 3.0, 0.0, 0.99, 1.0], dtype=torch.float64)
    z = rand(10, 3, seed=2)
    e, N, m, n_dead = vq.restart_dead_codes(codebook, cluster, embed, z, threshold=1.0)
    dead = cluster < 1.0
    assert n_dead == 3
    assert torch.equal(e[~dead], codebook[~dead]) and torch.equal(N[~dead], cluster[~dead])
    assert torch.equal(m[~dead], embed[~dead])
    for row in e[dead]:  # each restarted code is one of the batch vectors
        assert (z == row).all(1).any()


@pytest.mark.exercise("01_vq.restart_dead_codes")
def test_restarted_codes_are_distinct_and_weigh_the_threshold(vq):
    z = rand(10, 3, seed=2)
    e, N, m, _ = vq.restart_dead_codes(
        rand(4, 3), torch.zeros(4, dtype=torch.float64), rand(4, 3), z, threshold=2.0
    )
    assert len(torch.unique(e, dim=0)) == 4
    torch.testing.assert_close(N, torch.full((4,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(m, 2.0 * e)


@pytest.mark.exercise("01_vq.restart_dead_codes")
def test_no_restart_when_every_code_is_alive(vq):
    codebook, cluster = rand(4, 3), torch.full((4,), 2.0)
    e, N, _, n_dead = vq.restart_dead_codes(codebook, cluster, codebook, rand(5, 3), threshold=1.0)
    assert n_dead == 0 and torch.equal(e, codebook) and torch.equal(N, cluster)


# --- the module ---


def test_quantizer_outputs_codebook_rows_at_the_chosen_codes(vq):
    q = vq.VectorQuantizer(K=16, d=4).eval()
    z_e = torch.randn(2, 4, 3, 5)
    z_q, codes, _ = q(z_e)
    assert codes.shape == (2, 3, 5)
    torch.testing.assert_close(z_q, q.codebook[codes].permute(0, 3, 1, 2))


def test_the_nearest_code_search_runs_in_true_float32_also_where_tf32_is_on(vq, monkeypatch, tf32_on):
    seen, nearest = [], vq.nearest_code
    monkeypatch.setattr(
        vq, "nearest_code", lambda *a: seen.append(torch.get_float32_matmul_precision()) or nearest(*a)
    )
    vq.VectorQuantizer(8, 4)(torch.randn(2, 4, 3, 3))
    assert seen == ["highest"] and torch.get_float32_matmul_precision() == "high"


def test_quantizer_passes_the_decoder_gradient_to_the_encoder_unchanged(vq):
    q = vq.VectorQuantizer(K=16, d=4, beta=0.0).eval()
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3)
    q(z_e)[0].backward(upstream)
    torch.testing.assert_close(z_e.grad, upstream)


def test_ema_codebook_is_a_buffer_and_loss_codebook_a_parameter(vq):
    ema, grad = vq.VectorQuantizer(8, 2, codebook="ema"), vq.VectorQuantizer(8, 2, codebook="loss")
    assert "codebook" in dict(ema.named_buffers()) and not list(ema.parameters())
    z_e = torch.randn(1, 2, 4, 4)
    grad(z_e)[2]["loss"].backward()
    assert grad.codebook.grad is not None and grad.codebook.grad.abs().sum() > 0


def test_training_step_moves_used_codes_towards_their_vectors(vq):
    torch.manual_seed(0)
    q = vq.VectorQuantizer(K=4, d=2, decay=0.5, dead_threshold=0.0)
    z_e = torch.randn(1, 2, 8, 8)
    before = q.codebook.clone()
    _, codes, _ = q(z_e)
    z = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    for k in codes.unique():
        dist_before = (before[k] - z[codes.flatten() == k].mean(0)).norm()
        assert (q.codebook[k] - z[codes.flatten() == k].mean(0)).norm() < dist_before


# --- training runs and the command line ---


def small(vq, tmp_path, **kw):
    base = dict(
        steps=60,
        batch_size=16,
        log_every=20,
        eval_images=32,
        out=str(tmp_path / "run"),
    )
    return vq.Config(**{**base, **kw})


def read_log(path):
    return [json.loads(line) for line in open(path)]


def test_short_cpu_run_lowers_the_loss_and_writes_its_outputs(vq, tmp_path):
    vq.train(small(vq, tmp_path, log_every=1))
    log = read_log(tmp_path / "run" / "metrics.jsonl")
    recs = torch.tensor([r["rec"] for r in log if "rec" in r])
    assert len(recs) == 60 and recs[-10:].mean() < 0.85 * recs[:10].mean()
    final = log[-1]
    assert final["final"] and 0 < final["val_usage"] <= 1 and final["val_psnr"] > 10
    assert (tmp_path / "run" / "recon.png").exists()
    ckpt = common.load_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert ckpt["step"] == 60 and {"model", "opt", "rng", "config"} <= ckpt.keys()


def test_resume_continues_exactly_where_it_stopped(vq, tmp_path):
    straight = vq.train(small(vq, tmp_path / "a", steps=8))
    vq.train(small(vq, tmp_path / "b", steps=4))
    resumed = vq.train(small(vq, tmp_path / "b", steps=8, resume=True))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert common.load_checkpoint(tmp_path / "b" / "run" / "ckpt.pt")["step"] == 8


def test_codebook_loss_mode_trains_too(vq, tmp_path):
    model = vq.train(small(vq, tmp_path, steps=20, codebook="loss"))
    assert isinstance(model.quantizer.codebook, torch.nn.Parameter)
    assert read_log(tmp_path / "run" / "metrics.jsonl")[-1]["val_psnr"] > 8


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--dataset", "nope"],
            "unknown dataset 'nope'; choose one of: shapes, shapes-plain, mnist, cifar10",
        ),
        (["--image-size", "36"], "--image-size must be a multiple of 8"),
        (
            ["--image-size", "40", "--downsample", "16"],
            "--image-size 40 is not divisible by --downsample 16",
        ),
        (["--downsample", "3"], "--downsample must be a power of two"),
        (["--grad-accum", "0"], "--grad-accum must be at least 1, got 0"),
        (["--dataset", "no/such/folder"], "no/such/folder: no such file or folder"),
        (["--resume"], "--resume: no checkpoint at runs/01_vq/ckpt.pt"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(script, args, message, tmp_path):
    code, _, err = script("01_vq.py", *args, "--steps", "1", cwd=tmp_path)
    assert code == 2 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_corrupt_checkpoint_on_resume_exits_2_and_keeps_the_file(script, tmp_path):
    (tmp_path / "runs" / "01_vq").mkdir(parents=True)
    ckpt = tmp_path / "runs" / "01_vq" / "ckpt.pt"
    ckpt.write_bytes(b"half a checkpoint")
    code, _, err = script("01_vq.py", "--resume", "--steps", "1", cwd=tmp_path)
    assert code == 2 and "runs/01_vq/ckpt.pt is corrupt" in err and len(err.splitlines()) == 1
    assert ckpt.read_bytes() == b"half a checkpoint"


def test_help_lists_every_flag(vq, script, tmp_path):
    code, out, _ = script("01_vq.py", "--help", cwd=tmp_path)
    assert code == 0
    for f in dataclasses.fields(vq.Config):
        assert "--" + f.name.replace("_", "-") in out


@pytest.mark.slow
def test_compile_trains_a_compiled_network_to_the_eager_weights(vq, tmp_path):
    """--compile (inductor, C++ on a CPU): graphs are compiled, and two steps end at the weights and
    EMA codebook of eager steps up to float rounding (no restarts: those draw random vectors)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    eager = vq.train(small(vq, tmp_path / "eager", steps=2, dead_threshold=0.0))
    assert not counters["stats"]["unique_graphs"]  # off by default
    compiled = vq.train(small(vq, tmp_path / "compiled", steps=2, dead_threshold=0.0, compile=True))
    assert counters["stats"]["unique_graphs"] > 0
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=name)


# --- runs that go wrong: NaN, signals, resume, overwrite (the loop is the same in every lesson) ---


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "nan"], "--lr must be a finite number > 0 (got nan)"),
        (["--lr", "inf"], "--lr must be a finite number > 0 (got inf)"),
        (["--out", ""], "--out must name a run folder"),
        (["--ckpt-minutes", "0"], "--ckpt-minutes > 0"),
    ],
)
def test_bad_numbers_and_an_empty_out_exit_2(script, args, message, tmp_path):
    code, _, err = script("01_vq.py", *args, cwd=tmp_path)
    assert code == 2 and message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written, not even into the current folder


def test_a_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(script, tmp_path):
    flags = ["--lr", "1e30", "--batch-size", "8", "--ckpt-minutes", "1e-9", "--steps", "50"]
    code, _, err = script("01_vq.py", *flags, cwd=tmp_path)
    assert code == 2 and "the loss became nan at step 2" in err and "keeps step 1; lower --lr" in err
    ckpt = common.load_checkpoint(tmp_path / "runs" / "01_vq" / "ckpt.pt")
    assert ckpt["step"] == 1 and all(v.isfinite().all() for v in ckpt["model"].values())


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_saves_the_current_step_and_the_run_resumes_without_duplicate_logs(
    sig, code, script, tmp_path
):
    import signal as signals

    flags = ["--batch-size", "8", "--log-every", "5", "--eval-images", "8"]
    p = subprocess.Popen([sys.executable, str(ROOT / "01_vq.py"), *flags, "--steps", "100000"],
                         cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    log = tmp_path / "runs" / "01_vq" / "metrics.jsonl"
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert p.poll() is None, p.stderr.read()  # it is still training
        time.sleep(0.1)
    p.send_signal(getattr(signals, sig))
    _, err = p.communicate(timeout=60)
    step = common.load_checkpoint(tmp_path / "runs" / "01_vq" / "ckpt.pt")["step"]
    assert p.returncode == code and f"{sig} at step {step}: saved runs/01_vq/ckpt.pt" in err
    assert "continue with: python" in err and "--resume" in err and step >= 10
    resumed, _, _ = script("01_vq.py", *flags, "--steps", step + 7, "--resume", cwd=tmp_path)
    steps = [rec["step"] for rec in read_log(log) if not rec.get("final")]
    assert resumed == 0 and steps == list(range(5, step + 8, 5))  # each logged step once


def test_a_checkpoint_is_saved_after_ckpt_minutes_without_one(tmp_path, monkeypatch):
    run = common.Run(common.TrainConfig(out=str(tmp_path), steps=5000))
    assert not run.save_due(7)
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 121)
    assert run.save_due(8)


def test_resume_cuts_the_log_back_to_the_checkpoint(vq, tmp_path):
    vq.train(small(vq, tmp_path, steps=4, log_every=1))
    log = tmp_path / "run" / "metrics.jsonl"
    with open(log, "a") as f:  # as if it had logged steps 5 and 6 and then been killed
        f.write('{"step": 5, "rec": 1.0}\n{"step": 6, "rec": 1.0}\n')
    vq.train(small(vq, tmp_path, steps=6, log_every=1, resume=True))
    records = read_log(log)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6, 6] and records[-1]["final"]
    assert records[4]["rec"] != 1.0  # redone, not kept


def test_a_moved_run_folder_resumes(vq, tmp_path):
    vq.train(small(vq, tmp_path / "a", steps=2))
    (tmp_path / "a").rename(tmp_path / "b")
    vq.train(small(vq, tmp_path / "b", steps=4, resume=True))
    assert common.load_checkpoint(tmp_path / "b" / "run" / "ckpt.pt")["step"] == 4


def test_resume_to_fewer_steps_than_the_checkpoint_is_refused(vq, tmp_path):
    vq.train(small(vq, tmp_path, steps=4))
    with pytest.raises(common.UserError, match="is at step 4, past --steps 2; pass --steps above 4"):
        vq.train(small(vq, tmp_path, steps=2, resume=True))


def test_resume_of_another_lessons_run_names_that_lesson(vq, tmp_path):
    vq.train(small(vq, tmp_path, steps=2))
    rq = common.lesson("02_rq")
    with pytest.raises(common.UserError, match="was written by 01_vq, not 02_rq"):
        rq.train(rq.Config(out=str(tmp_path / "run"), resume=True, steps=4, batch_size=8))


def test_overwrite_keeps_the_old_log_until_the_new_run_has_checked_its_data(vq, tmp_path):
    vq.train(small(vq, tmp_path, steps=2))
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    (tmp_path / "empty").mkdir()
    with pytest.raises(common.UserError, match="holds no files"):
        vq.train(small(vq, tmp_path, steps=2, overwrite=True, dataset=str(tmp_path / "empty")))
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
