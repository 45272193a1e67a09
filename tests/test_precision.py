"""--precision bf16 on a CPU: a few training steps of every lesson under bf16 autocast, so that the
mixed-precision paths a GPU takes (what runs in bf16, what stays float32, where casts happen) are
exercised where the tests run."""

import collections
import json
import warnings

import pytest
import torch

import common

SMALL = {  # a few steps of each lesson, small; every step logged
    "01_vq": dict(batch_size=8, eval_images=8),
    "02_rq": dict(batch_size=8, eval_images=8, depth=2),
    "03_vqgan": dict(batch_size=8, eval_images=8, depth=2, ch=8, disc_ch=8, perceptual_weight=0.0,
                     disc_start=0, disc_warmup=0),  # D and the adaptive weight from step 1
    "04_rq_transformer": dict(batch_size=8, eval_images=8, width=16, heads=2, samples_per_class=1),
    "05_vq_diffusion": dict(batch_size=8, eval_images=8, width=16, heads=2, layers=2, steps_T=4,
                            stride=2, samples_per_class=1),
}  # fmt: skip
NETWORK = ("Linear", "Conv2d")  # what autocast runs in bf16
QUANTIZER = ("VectorQuantizer", "ResidualQuantizer")  # what must stay float32


def run(name, precision, tmp_path, tokenizer):
    """Train 3 steps; -> (losses of each step, {module class: output dtypes seen})."""
    lesson = common.lesson(name)
    kw = {**SMALL[name], "steps": 3, "log_every": 1, "precision": precision, "out": str(tmp_path / precision)}
    if name in ("04_rq_transformer", "05_vq_diffusion"):
        kw["tokenizer"] = str(tokenizer)
    seen = collections.defaultdict(set)

    def hook(module, args, out):
        out = out[0] if isinstance(out, tuple) else out
        if torch.is_tensor(out) and out.is_floating_point():
            seen[type(module).__name__].add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        lesson.train(lesson.Config(**kw))
    finally:
        handle.remove()
    log = [json.loads(line) for line in open(tmp_path / precision / "metrics.jsonl")]
    key = {"01_vq": "rec", "02_rq": "rec", "03_vqgan": "pixel"}.get(name, "loss")  # L_rec or the NLL
    return torch.tensor([r[key] for r in log if key in r and not r.get("final")]), seen


@pytest.mark.parametrize("name", list(SMALL))
def test_training_steps_under_cpu_bf16_autocast_run_the_network_in_bf16_and_the_quantizer_in_float32(
    name, tmp_path, tokenizer
):
    fp32, seen32 = run(name, "fp32", tmp_path, tokenizer)
    bf16, seen16 = run(name, "bf16", tmp_path, tokenizer)
    assert all(seen32[m] <= {torch.float32} for m in NETWORK)  # fp32: no bf16 anywhere
    assert torch.bfloat16 in seen16["Linear"] | seen16["Conv2d"]  # bf16: the network ran in it
    for m in QUANTIZER:  # the code search and z_q stay float32 under autocast
        assert seen16[m] <= {torch.float32}
    if name in ("01_vq", "02_rq", "03_vqgan"):
        assert seen16["VectorQuantizer"] | seen16["ResidualQuantizer"]  # (and it did run)
    assert len(bf16) == 3 and bf16.isfinite().all()
    assert bf16[0] != fp32[0]  # autocast changed the arithmetic of the first step ...
    assert abs(bf16[0] - fp32[0]) < 0.05 * abs(fp32[0])  # ... by a bf16 rounding, not more


def test_precision_auto_is_float32_on_a_cpu_and_bf16_on_cuda():
    x = torch.randn(4, 4)
    with common.autocast(torch.device("cpu")):
        assert (x @ x).dtype == torch.float32
    with common.autocast(torch.device("cpu"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with warnings.catch_warnings():  # "CUDA is not available": the context is built, not entered
        warnings.simplefilter("ignore")
        cuda = common.autocast(torch.device("cuda"), "auto")
    assert (cuda.device, cuda.fast_dtype) == ("cuda", torch.bfloat16)  # bf16 autocast on the GPU
    with common.autocast(torch.device("cuda"), "fp32"):  # off: nothing changes the arithmetic
        assert (x @ x).dtype == torch.float32 and not torch.is_autocast_enabled("cuda")
