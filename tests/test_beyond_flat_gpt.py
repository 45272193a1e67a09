"""beyond/flat_gpt.py: the flat baseline trains through lesson 04's loop (soft labels and stochastic
codes too) and refuses captions. Its causality, cache and guidance are checked with lesson 04's own
model in tests/test_04_rq_transformer.py (the `flatten` parameter), as they share an interface."""

import importlib

import pytest
import torch

import common


@pytest.fixture(scope="module")
def flat():
    return importlib.import_module("beyond.flat_gpt")


def test_soft_labels_and_stochastic_codes_train_the_flat_baseline(flat, tokenizer, tmp_path):
    cfg = flat.Config(tokenizer=str(tokenizer), steps=4, batch_size=8, eval_images=8, width=16, heads=2,
                      samples_per_class=1, log_every=1, soft_labels=True, stochastic_codes=True, out=str(tmp_path))  # fmt: skip
    model = flat.train(cfg)
    log = common.read_log(tmp_path)
    assert isinstance(model, flat.FlatTransformer) and all(
        torch.isfinite(torch.tensor(r["loss"])) for r in log[:-1]
    )
    assert log[-1]["final"] and log[-1]["val_bits_per_code"] > 0
    assert common.load_checkpoint(tmp_path / "ckpt.pt")["lesson"] == "flat_gpt"


def test_the_flat_baseline_refuses_captions(flat):
    with pytest.raises(ValueError, match="the flat baseline is class-conditional only"):
        flat.Config(condition="text")
