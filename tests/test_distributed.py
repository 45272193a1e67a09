"""Two processes on the CPU (torchrun, gloo): both ranks end with the same weights and codebook,
and the EMA statistics equal those of one process that sees the two ranks' batches at once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common

pytestmark = pytest.mark.slow  # each test starts torchrun and two processes

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def torchrun(lesson: str, out: Path, stop_at: int = 0, **flags) -> tuple[dict, dict]:
    """Both ranks' state dicts after training; stop_at = n: SIGTERM during step n (then None)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STOP_AT": str(stop_at)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), lesson, str(out), json.dumps(flags)]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)  # also the working folder: no runs/ to reuse there
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=out)
    assert r.returncode == 0 and "terminate called" not in r.stderr, r.stderr[-3000:]  # a clean exit
    return None if stop_at else tuple(torch.load(out / f"rank{i}.pt") for i in (0, 1))


def timesteps(out: Path) -> tuple[list, list]:
    """The t that lesson 05's q_sample drew at each step, on rank 0 and rank 1."""
    return tuple(torch.load(out / f"rank{i}_t.pt") for i in (0, 1))


SMALL = dict(steps=3, batch_size=8, eval_images=8, log_every=1)


def test_both_ranks_hold_the_same_weights_and_codebook_with_restarts_on(tmp_path):
    """01 (02 restarts its shared codebook with the same function, 01's restart_dead_codes)."""
    a, b = torchrun("01_vq", tmp_path, **SMALL, codebook_size=64)  # default dead_threshold: restarts happen
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert sum(r.get("restarted", 0) for r in log) > 0  # the restart path was exercised
    assert (tmp_path / "ckpt.pt").exists() and common.load_checkpoint(tmp_path / "ckpt.pt")["step"] == 3


def test_ema_statistics_equal_one_process_over_the_concatenated_batch(tmp_path):
    """02 at depth 4, whose shared codebook is updated by 01's ema_update."""
    flags = dict(SMALL, steps=2, dead_threshold=0.0)  # no restarts: they pick random vectors
    a, b = torchrun("02_rq", tmp_path / "ddp", **flags)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    mod = common.lesson("02_rq")
    one = mod.train(mod.Config(**dict(flags, batch_size=16), out=str(tmp_path / "one"))).state_dict()
    for key in a:
        if "cluster_size" in key or "embed_sum" in key or "codebook" in key:
            torch.testing.assert_close(a[key], one[key], atol=1e-5, rtol=1e-4, msg=key)
    # the weights too: DDP's mean of two half-batch gradients is the full batch's gradient
    w = (
        "encoder.net.0.weight"
        if "encoder.net.0.weight" in a
        else next(k for k in a if k.startswith("encoder"))
    )
    torch.testing.assert_close(a[w], one[w], atol=1e-5, rtol=1e-4)


def test_vqgan_both_players_stay_in_sync(tmp_path):
    """03: G and D are both DistributedDataParallel; lambda uses autograd.grad inside G's step."""
    a, b = torchrun("03_vqgan", tmp_path, **SMALL, disc_start=0, disc_warmup=1, perceptual_weight=0.0)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert any(r.get("lam", 0) > 0 for r in log)  # the GAN term reached G on both ranks


PRIOR = dict(SMALL, steps=4, width=16, heads=2, layers=1, steps_T=50)  # lesson 05, tiny


@pytest.fixture(scope="module")
def whole05(tokenizer, tmp_path_factory):
    """One uninterrupted torchrun run of lesson 05 -> (its folder, both ranks' state dicts)."""
    out = tmp_path_factory.mktemp("whole05")
    return out, torchrun("05_vq_diffusion", out, **PRIOR, tokenizer=str(tokenizer))


def test_stage_two_priors_stay_in_sync(whole05):
    """05 (04 shares its training loop, stage2.fit): both ranks end with the same weights."""
    out, (a, b) = whole05
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (out / "samples.png").exists() and (out / "inpaint.png").exists()


def test_each_rank_draws_its_own_noise_and_a_resumed_run_is_bit_identical(whole05, tokenizer, tmp_path):
    """05 under torchrun: rank 1 draws other timesteps than rank 0 (W ranks, W*B noise draws per
    step); stopped by SIGTERM at step 2 and resumed, both ranks end with the uninterrupted run's
    weights exactly (each rank's RNG state is in the checkpoint)."""
    (out, whole), flags = whole05, dict(PRIOR, tokenizer=str(tokenizer))
    t0, t1 = timesteps(out)
    assert not torch.equal(t0[0], t1[0]) and not torch.equal(torch.stack(t0[:4]), torch.stack(t1[:4]))
    torchrun("05_vq_diffusion", tmp_path / "cut", stop_at=2, **flags)
    assert common.load_checkpoint(tmp_path / "cut" / "ckpt.pt")["step"] == 2
    resumed = torchrun("05_vq_diffusion", tmp_path / "cut", **flags, resume=True)
    for rank in (0, 1):
        for k in whole[rank]:
            assert torch.equal(whole[rank][k], resumed[rank][k]), (rank, k)
